// Outpost's bootstrap: the `fetch` event, delivered to the worker's
// `fetch` handler (module syntax) or its `fetch` listeners (service-worker
// syntax).

import { core, primordials } from "ext:core/mod.js";
import { op_outpost_event_done, op_outpost_event_unhandled } from "ext:core/ops";
import { DOMException, event } from "ext:outpost_runtime/00_prelude.js";
import { collectErrors, currentRequest, describeError, log } from "ext:outpost_runtime/01_console.js";
import { ExecutionContext, kPassThrough } from "ext:outpost_runtime/20_context.js";
import { buildRequest, closeUnreturnedSockets, sendResponse } from "ext:outpost_runtime/10_http.js";
import { registerEventKind } from "ext:outpost_runtime/04_registry.js";

const {
  Error,
  FunctionPrototypeCall,
  Promise,
} = primordials;

class FetchEvent extends event.Event {
  #request;
  #respondWith;
  #ctx;
  #responded = false;
  constructor(type, init, respondWith, ctx) {
    super(type);
    this.#request = init.request;
    this.#respondWith = respondWith;
    this.#ctx = ctx;
  }
  get request() {
    return this.#request;
  }
  respondWith(responseOrPromise) {
    if (this.#responded) {
      throw new DOMException("respondWith() was already called", "InvalidStateError");
    }
    this.#responded = true;
    this.#respondWith(responseOrPromise);
  }
  waitUntil(promise) {
    this.#ctx.waitUntil(promise);
  }
  passThroughOnException() {
    this.#ctx.passThroughOnException();
  }
}

/** Delivers a `fetch` event to the worker's handler and sends its response. */
async function deliverFetch(next, worker) {
  // A service binding may name another export than the default.
  const handler = next.entrypoint === null
    ? worker.handlers.fetch
    : exportedHandler(worker.namespace[next.entrypoint], "fetch", worker.env);
  if (handler === undefined) {
    if (next.bodyRid !== null) core.tryClose(next.bodyRid);
    const missing = next.entrypoint === null
      ? worker.handlers.missingFetch
      : `the worker's export ${next.entrypoint} has no fetch() handler`;
    op_outpost_event_unhandled(next.rid, missing);
    return;
  }
  const request = { id: next.requestId, sockets: null, depth: next.depth };
  const prev = currentRequest.enter(request);
  const ctx = new ExecutionContext(next.requestId);
  try {
    const req = buildRequest(next);
    const result = await handler(req, ctx);
    await sendResponse(next.rid, result, req);
  } catch (error) {
    const note = ctx[kPassThrough] ? " (passThroughOnException() was set, but there is no origin to pass to)" : "";
    op_outpost_event_done(next.rid, describeError(error) + note);
  } finally {
    // The response is complete: a request body the worker left unread is
    // released now rather than held by the isolate forever.
    if (next.bodyRid !== null) core.tryClose(next.bodyRid);
    closeUnreturnedSockets(request.sockets);
    core.setAsyncContext(prev);
  }
}

registerEventKind("fetch", deliverFetch);

/**
 * Handler `name` of an export, as `(argument, ctx) => result`: the method
 * of an object (called as `(argument, env, ctx)`), or of a class such as a
 * `WorkerEntrypoint` (an instance made per event as `new Class(ctx, env)`,
 * its method called with the argument alone); undefined if it has none.
 */
export function exportedHandler(exported, name, env) {
  if (typeof exported === "function") {
    if (typeof exported.prototype?.[name] !== "function") return undefined;
    return (argument, ctx) => {
      const instance = new exported(ctx, env);
      return FunctionPrototypeCall(instance[name], instance, argument);
    };
  }
  if (exported === undefined || exported === null) return undefined;
  const method = exported[name];
  if (typeof method !== "function") return undefined;
  return (argument, ctx) => FunctionPrototypeCall(method, exported, argument, env, ctx);
}

/**
 * The worker's handler of an event without a response (`scheduled`,
 * `queue`), as `(argument, ctx) => promise`: the `name` method of its
 * default export (module syntax), else its `name` event listeners, each
 * given `makeEvent(argument, ctx)` (service-worker syntax), else undefined.
 */
export function handlerFor(namespace, env, name, makeEvent) {
  const exported = namespace.default;
  if (exported !== undefined && exported !== null) return exportedHandler(exported, name, env);
  if (event.listenerCount(globalThis, name) === 0) return undefined;
  return (argument, ctx) => {
    const errors = collectErrors(() => globalThis.dispatchEvent(makeEvent(argument, ctx)));
    if (errors.length > 0) throw errors[0];
  };
}

/**
 * The worker's fetch handler, as `(request, ctx) => response`: the `fetch`
 * method of its default export (module syntax), else its `fetch` event
 * listeners (service-worker syntax), else undefined.
 */
export function fetchHandler(namespace, env) {
  const exported = namespace.default;
  if (exported !== undefined && exported !== null) return exportedHandler(exported, "fetch", env);
  if (event.listenerCount(globalThis, "fetch") === 0) return undefined;
  return (req, ctx) =>
    new Promise((resolve, reject) => {
      let responded = false;
      const respondWith = (value) => {
        responded = true;
        resolve(value);
      };
      const errors = collectErrors(() =>
        globalThis.dispatchEvent(new FetchEvent("fetch", { request: req }, respondWith, ctx))
      );
      if (responded) {
        for (let i = 0; i < errors.length; i++) log(3, `uncaught exception: ${describeError(errors[i])}`);
      } else if (errors.length > 0) {
        reject(errors[0]);
      } else {
        reject(new Error("no 'fetch' event listener called respondWith()"));
      }
    });
}
