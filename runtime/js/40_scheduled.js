// Outpost's bootstrap: the `scheduled` event of Cron Triggers, delivered to
// the worker's `scheduled(controller, env, ctx)` (module syntax) or its
// `scheduled` listeners (service-worker syntax). As on Cloudflare, the
// handler runs inside `waitUntil()`: the run's outcome is the first error
// thrown by the handler or a promise it gave to `ctx.waitUntil()`.

import { primordials } from "ext:core/mod.js";
import { op_outpost_event_unhandled, op_outpost_scheduled_done } from "ext:core/ops";
import { event } from "ext:outpost_runtime/00_prelude.js";
import { describeError } from "ext:outpost_runtime/01_console.js";
import { registerEventKind } from "ext:outpost_runtime/04_registry.js";
import { runToCompletion } from "ext:outpost_runtime/20_context.js";
import { handlerFor } from "ext:outpost_runtime/30_fetch.js";

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

/** The worker's scheduled handler, as `(controller, ctx) => promise`, or undefined. */
export function scheduledHandler(namespace, env) {
  return handlerFor(namespace, env, "scheduled", (controller, ctx) => new ScheduledEvent(controller, ctx));
}

async function deliverScheduled(next, worker) {
  const handler = worker.handlers.scheduled;
  if (handler === undefined) {
    op_outpost_event_unhandled(next.rid, "Handler does not export a scheduled() function");
    return;
  }
  const controller = new ScheduledController(controllerKey, next.cron, next.scheduledTime);
  const error = await runToCompletion(next.requestId, (ctx) => handler(controller, ctx));
  op_outpost_scheduled_done(
    next.rid,
    error === null ? null : describeError(error),
    ScheduledController.noRetryCalled(controller),
  );
}

registerEventKind("scheduled", deliverScheduled);
