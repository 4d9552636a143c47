// Outpost's bootstrap: the `scheduled` event of Cron Triggers, delivered to
// the worker's `scheduled(controller, env, ctx)` (module syntax) or its
// `scheduled` listeners (service-worker syntax). As on Cloudflare, the
// handler runs inside `waitUntil()`: the run's outcome is the first error
// thrown by the handler or a promise it gave to `ctx.waitUntil()`.

import { core, primordials } from "ext:core/mod.js";
import { op_outpost_event_unhandled, op_outpost_scheduled_done } from "ext:core/ops";
import { event } from "ext:outpost_runtime/00_prelude.js";
import { collectErrors, currentRequest, describeError } from "ext:outpost_runtime/01_console.js";
import { registerEventKind } from "ext:outpost_runtime/04_registry.js";
import { ExecutionContext, firstFailure, RUN_DURATION_MS } from "ext:outpost_runtime/20_context.js";
import { exportedHandler } from "ext:outpost_runtime/30_fetch.js";

const {
  SymbolFor,
  TypeError,
} = primordials;

const controllerKey = SymbolFor("outpost.scheduledController");

class ScheduledController {
  #cron;
  #scheduledTime;
  #noRetry = false;
  constructor(key, cron, scheduledTime) {
    if (key !== controllerKey) throw new TypeError("Illegal constructor");
    this.#cron = cron;
    this.#scheduledTime = scheduledTime;
  }
  get cron() {
    return this.#cron;
  }
  get scheduledTime() {
    return this.#scheduledTime;
  }
  get type() {
    return "scheduled";
  }
  noRetry() {
    this.#noRetry = true;
  }
  static noRetryCalled(controller) {
    return controller.#noRetry;
  }
}

/** The service-worker form's event: the controller's facts, and `waitUntil()`. */
class ScheduledEvent extends event.Event {
  #controller;
  #ctx;
  constructor(controller, ctx) {
    super("scheduled");
    this.#controller = controller;
    this.#ctx = ctx;
  }
  get cron() {
    return this.#controller.cron;
  }
  get scheduledTime() {
    return this.#controller.scheduledTime;
  }
  noRetry() {
    this.#controller.noRetry();
  }
  waitUntil(promise) {
    this.#ctx.waitUntil(promise);
  }
}

/**
 * The worker's scheduled handler, as `(controller, ctx) => promise`: the
 * `scheduled` method of its default export, else its `scheduled` listeners,
 * else undefined.
 */
export function scheduledHandler(namespace, env) {
  const exported = namespace.default;
  if (exported !== undefined && exported !== null) return exportedHandler(exported, "scheduled", env);
  if (event.listenerCount(globalThis, "scheduled") === 0) return undefined;
  return (controller, ctx) => {
    const errors = collectErrors(() => globalThis.dispatchEvent(new ScheduledEvent(controller, ctx)));
    if (errors.length > 0) throw errors[0];
  };
}

async function deliverScheduled(next, worker) {
  const handler = worker.handlers.scheduled;
  if (handler === undefined) {
    op_outpost_event_unhandled(next.rid, "Handler does not export a scheduled() function");
    return;
  }
  const prev = currentRequest.enter({ id: next.requestId, sockets: null });
  const waited = [];
  const controller = new ScheduledController(controllerKey, next.cron, next.scheduledTime);
  let error = null;
  try {
    await handler(controller, new ExecutionContext(next.requestId, waited));
  } catch (thrown) {
    error = thrown;
  }
  try {
    if (error === null) error = await firstFailure(waited, RUN_DURATION_MS);
  } finally {
    core.setAsyncContext(prev);
  }
  op_outpost_scheduled_done(
    next.rid,
    error === null ? null : describeError(error),
    ScheduledController.noRetryCalled(controller),
  );
}

registerEventKind("scheduled", deliverScheduled);
