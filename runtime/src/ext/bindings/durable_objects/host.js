// Durable Objects, the hosting side: the objects of this worker's classes
// live in `liveObjects`, one per id, each behind an input gate that
// delivers its events one at a time, in arrival order, never while one of
// its storage operations is in progress. Registers the object events.

import { core, primordials } from "ext:core/mod.js";
import { op_outpost_event_done } from "ext:core/ops";
import { currentRequest, describeError } from "ext:outpost_runtime/01_console.js";
import { buildRequest, closeUnreturnedSockets, sendResponse } from "ext:outpost_runtime/10_http.js";
import { answerCall } from "ext:outpost_runtime/15_subrequest.js";
import { registerEventKind } from "ext:outpost_runtime/04_registry.js";
import { DurableObjectId, objectKey } from "ext:outpost_binding_durable_objects/namespace.js";
import { DurableObjectState, DurableObjectStorage, InputGate } from "ext:outpost_binding_durable_objects/storage.js";

const {
  DateNow,
  FunctionPrototypeCall,
  MapPrototypeDelete,
  MapPrototypeGet,
  MapPrototypeSet,
  PromisePrototypeThen,
  ReflectApply,
  SafeMap,
  SafeMapIterator,
  SafeSet,
  SetPrototypeAdd,
  SetPrototypeHas,
  TypeError,
} = primordials;

/** The worker's module namespace and env, for the objects it hosts. */
let hostModule = null;
let hostEnv = null;
/** The classes this worker declares as Durable Objects: the only ones it hosts. */
const hostedClasses = new SafeSet();
const liveObjects = new SafeMap();

class LiveObject {
  constructor(target, cls) {
    this.className = target.className;
    this.hex = target.id;
    this.cls = cls;
    this.id = new DurableObjectId(objectKey, target.id, target.name ?? undefined);
    this.gate = new InputGate();
    this.storage = new DurableObjectStorage(objectKey, this);
    this.state = new DurableObjectState(objectKey, this);
    this.instance = null;
    /** Set when the object must be reset: its next event gets a new instance. */
    this.broken = null;
    /** Events delivered or waiting, and when the last one ended. */
    this.active = 0;
    /** Answers (streamed bodies, WebSockets) still going out. */
    this.answering = 0;
    this.lastUsed = DateNow();
  }

  /**
   * Runs `use(instance)` as the object's next event and holds its outcome,
   * value or error, until the object's writes are durable (the output gate).
   */
  async runGated(use) {
    let value;
    try {
      value = await this.run(use);
    } catch (error) {
      try {
        await this.storage.flushed();
      } catch { /* the event's own error is the answer */ }
      throw error;
    }
    await this.storage.flushed();
    return value;
  }

  /** Runs `use(instance)` as the object's next event. */
  run(use) {
    if (this.instance === null && !this.constructing) {
      // Construction is an event of its own, so that a
      // blockConcurrencyWhile() in the constructor holds back the first event.
      this.constructing = true;
      this.gate.enqueue(() => {
        this.constructing = false;
        try {
          this.instance = new this.cls(this.state, hostEnv);
        } catch (error) {
          this.broken = error;
        }
      });
    }
    this.active++;
    const done = () => {
      this.active--;
      this.lastUsed = DateNow();
    };
    const event = this.gate.enqueue(() => {
      if (this.broken !== null) throw this.broken;
      return use(this.instance);
    });
    PromisePrototypeThen(event, done, done);
    return event;
  }
}

/** Objects idle this long are dropped (their storage stays, of course). */
const OBJECT_IDLE_MS = 60_000;
let lastObjectSweep = 0;

function sweepIdleObjects(now) {
  if (now - lastObjectSweep < OBJECT_IDLE_MS / 4) return;
  lastObjectSweep = now;
  for (const { 0: key, 1: object } of new SafeMapIterator(liveObjects)) {
    if (object.active === 0 && object.answering === 0 && now - object.lastUsed > OBJECT_IDLE_MS) {
      MapPrototypeDelete(liveObjects, key);
    }
  }
}

function liveObject(target) {
  const key = `${target.className}\0${target.id}`;
  const live = MapPrototypeGet(liveObjects, key);
  // A broken object is replaced only once its last event has ended, so two
  // instances of one object never run at once (its queued events fail).
  if (live !== undefined && (live.broken === null || live.active > 0)) return live;
  const cls = SetPrototypeHas(hostedClasses, target.className) ? hostModule?.[target.className] : undefined;
  if (typeof cls !== "function") {
    throw new TypeError(`this worker declares no Durable Object class "${target.className}"`);
  }
  const fresh = new LiveObject(target, cls);
  MapPrototypeSet(liveObjects, key, fresh);
  return fresh;
}

function handlerOf(instance, name, className) {
  const method = instance[name];
  if (typeof method !== "function") {
    throw new TypeError(`Durable Object class ${className} has no ${name}() handler`);
  }
  return method;
}

/**
 * Runs an object event: `run(object)` with the event's request current,
 * `fail(message)` if it threw before answering.
 */
async function objectEvent(next, run, fail) {
  const request = { id: next.requestId, sockets: null, depth: next.depth ?? 0 };
  const prev = currentRequest.enter(request);
  try {
    sweepIdleObjects(DateNow());
    await run(liveObject(next));
  } catch (error) {
    fail(describeError(error));
  } finally {
    if (next.bodyRid !== undefined && next.bodyRid !== null) core.tryClose(next.bodyRid);
    closeUnreturnedSockets(request.sockets);
    core.setAsyncContext(prev);
  }
}

registerEventKind("object-fetch", (next) =>
  objectEvent(next, async (object) => {
    const req = buildRequest(next);
    const result = await object.runGated((instance) =>
      FunctionPrototypeCall(handlerOf(instance, "fetch", next.className), instance, req)
    );
    // An answer still going out (a streamed body, a WebSocket) keeps the
    // object from being swept as idle until it ends.
    object.answering++;
    try {
      await sendResponse(next.rid, result, req);
    } finally {
      object.answering--;
      object.lastUsed = DateNow();
    }
  }, (message) => op_outpost_event_done(next.rid, message)));

registerEventKind("alarm", (next) =>
  objectEvent(next, async (object) => {
    const info = { retryCount: next.retryCount, isRetry: next.retryCount > 0 };
    await object.runGated((instance) =>
      FunctionPrototypeCall(handlerOf(instance, "alarm", next.className), instance, info)
    );
    op_outpost_event_done(next.rid, null);
  }, (message) => op_outpost_event_done(next.rid, message)));

registerEventKind("object-call", (next) =>
  objectEvent(next, async (object) => {
    const args = core.deserialize(next.args);
    await answerCall(next.rid, () =>
      object.runGated((instance) => {
        const method = next.method === "constructor" ? undefined : instance[next.method];
        if (typeof method !== "function") {
          throw new TypeError(`The RPC receiver does not implement the method "${next.method}".`);
        }
        return ReflectApply(method, instance, args);
      })
    );
  }, (message) => op_outpost_event_done(next.rid, message)));

/**
 * A Durable Object binding whose class this worker exports itself: the
 * worker hosts that class's objects.
 */
export function hostClass(worker, className, binding) {
  if (typeof worker.namespace[className] !== "function") {
    throw new TypeError(
      `the Durable Object binding ${binding} names class ${className}, which the worker's main module does not export`,
    );
  }
  SetPrototypeAdd(hostedClasses, className);
  hostModule = worker.namespace;
  hostEnv = worker.env;
  worker.hostsObjects = true;
}
