// Outpost's bootstrap, last part: the runtime's entry point. It runs once,
// while the startup snapshot is built, after the modules before it; it
// leaves one function, `globalThis.__outpostPrepare`, which the runtime
// takes (and deletes) before any worker code runs.

import { core, primordials } from "ext:core/mod.js";
import { op_outpost_event_unhandled, op_outpost_going_away, op_outpost_next_event } from "ext:core/ops";
import { event, performanceMod } from "ext:outpost_runtime/00_prelude.js";
import { setSubrequestLimit } from "ext:outpost_runtime/01_console.js";
import { goAwayAll } from "ext:outpost_runtime/02_websocket.js";
import "ext:outpost_runtime/03_global_scope.js";
import { bindingKind, eventKind } from "ext:outpost_runtime/04_registry.js";
import { WorkerEntrypoint } from "ext:outpost_runtime/05_entrypoints.js";
import { pendingWaitUntil } from "ext:outpost_runtime/20_context.js";
import { fetchHandler } from "ext:outpost_runtime/30_fetch.js";
import { scheduledHandler } from "ext:outpost_runtime/40_scheduled.js";
import { queueHandler } from "ext:outpost_runtime/45_queue.js";

const {
  ArrayPrototypeFilter,
  ArrayPrototypeJoin,
  JSONParse,
  ObjectDefineProperty,
  ObjectKeys,
  ObjectPrototypeHasOwnProperty,
  ObjectPrototypeIsPrototypeOf,
  ObjectValues,
  PromisePrototypeThen,
  SafePromiseAll,
  SafeSet,
  SafeSetIterator,
  SetPrototypeAdd,
  SetPrototypeDelete,
  TypeError,
} = primordials;

/** Handlers of a worker's own events besides `fetch` (objects' `alarm()` is the object's). */
const OTHER_HANDLERS = ["scheduled", "queue", "email", "tail"];

/**
 * The worker's handlers: methods of its default export (module syntax), or
 * its event listeners (service-worker syntax). `missingFetch` says why a
 * `fetch` event cannot be delivered, for a worker without `fetch`.
 */
function resolveHandlers(namespace, env) {
  const exported = namespace.default;
  const moduleSyntax = exported !== undefined && exported !== null;
  // A class (a WorkerEntrypoint) has its handlers on its prototype.
  const methods = typeof exported === "function" ? exported.prototype : exported;
  const others = ArrayPrototypeFilter(OTHER_HANDLERS, (name) =>
    moduleSyntax ? typeof methods?.[name] === "function" : event.listenerCount(globalThis, name) > 0
  );
  return {
    fetch: fetchHandler(namespace, env),
    scheduled: scheduledHandler(namespace, env),
    queue: queueHandler(namespace, env),
    others,
    missingFetch: moduleSyntax
      ? "the worker's default export has no fetch() handler"
      : "the worker neither has a default export with a fetch() handler nor registers a 'fetch' event listener",
  };
}

/** Whether the module exports a `WorkerEntrypoint` class (reachable through service bindings). */
function exportsEntrypoints(namespace) {
  const values = ObjectValues(namespace);
  for (let i = 0; i < values.length; i++) {
    const value = values[i];
    if (typeof value === "function" && ObjectPrototypeIsPrototypeOf(WorkerEntrypoint.prototype, value.prototype)) {
      return true;
    }
  }
  return false;
}

/**
 * Called once the worker's modules are evaluated: `namespace` is the main
 * module's namespace, `envJson` the worker's plain variables,
 * `limitsJson` what JS enforces of its limits (`{ subrequests }`), and
 * `bindingsJson` its bindings (`[{ name, kind, ... }]`, each made by its
 * kind's registered constructor). Throws if the worker has no handler at
 * all (no event handler, no object class it hosts, no `WorkerEntrypoint`);
 * otherwise returns the function that serves
 * events until the node stops sending them and outstanding `waitUntil()`
 * work has settled (or timed out).
 */
function prepare(namespace, envJson, bindingsJson, limitsJson) {
  performanceMod.setTimeOrigin();
  setSubrequestLimit(JSONParse(limitsJson).subrequests);
  // Not frozen: workerd hands workers a mutable env object too.
  const env = JSONParse(envJson);
  const worker = { namespace, env, hostsObjects: false, handlers: null };
  const bindings = JSONParse(bindingsJson);
  for (let i = 0; i < bindings.length; i++) {
    const description = bindings[i];
    const make = bindingKind(description.kind);
    if (make === undefined) throw new TypeError(`this runtime has no binding kind ${description.kind}`);
    // Own data properties, whatever the name: a binding called "__proto__"
    // must not become env's prototype.
    ObjectDefineProperty(env, description.name, {
      value: make(description, worker),
      writable: true,
      enumerable: true,
      configurable: true,
    });
  }
  const handlers = resolveHandlers(namespace, env);
  if (
    handlers.fetch === undefined && handlers.others.length === 0 && !worker.hostsObjects &&
    !exportsEntrypoints(namespace)
  ) {
    throw new TypeError(
      `${handlers.missingFetch}, nor any other handler (${ArrayPrototypeJoin(OTHER_HANDLERS, ", ")})`,
    );
  }
  worker.handlers = handlers;
  if (namespace.default === undefined || namespace.default === null) exposeAsGlobals(env);
  return () => serve(worker);
}

/**
 * Service-worker syntax: as on Cloudflare, the variables and bindings are
 * globals too (from the first event on; the top level ran before them). A
 * name the global scope already has keeps its meaning.
 */
function exposeAsGlobals(env) {
  const names = ObjectKeys(env);
  for (let i = 0; i < names.length; i++) {
    const name = names[i];
    if (ObjectPrototypeHasOwnProperty(globalThis, name)) continue;
    ObjectDefineProperty(globalThis, name, { value: env[name], writable: true, enumerable: false, configurable: true });
  }
}

async function serve(worker) {
  // Retired or shutting down (not merely out of requests, as a per-request
  // isolate is): WebSockets close so that the isolate can go. The wait does
  // not keep the isolate alive.
  const away = op_outpost_going_away();
  core.unrefOpPromise(away);
  PromisePrototypeThen(away, goAwayAll);
  // Events still being handled when the queue closes (an isolate that
  // served its one request, or was evicted) finish before the isolate goes.
  const handling = new SafeSet();
  while (true) {
    const next = await op_outpost_next_event();
    if (next === null) break;
    const deliver = eventKind(next.kind);
    if (deliver === undefined) {
      op_outpost_event_unhandled(next.rid, `this runtime cannot deliver ${next.kind} events`);
      continue;
    }
    const handled = deliver(next, worker);
    SetPrototypeAdd(handling, handled);
    PromisePrototypeThen(handled, () => SetPrototypeDelete(handling, handled));
  }
  // Each tracked promise settles by itself or at its timeout.
  while (handling.size > 0 || pendingWaitUntil.size > 0) {
    await SafePromiseAll([...new SafeSetIterator(handling), ...new SafeSetIterator(pendingWaitUntil)]);
  }
}

ObjectDefineProperty(globalThis, "__outpostPrepare", {
  value: prepare,
  enumerable: false,
  configurable: true,
  writable: false,
});
