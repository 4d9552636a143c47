// Outpost's bootstrap: the `queue` event of Queues consumers, delivered to
// the worker's `queue(batch, env, ctx)` (module syntax) or its `queue`
// listeners (service-worker syntax). As for `scheduled`, the run succeeds
// only if the handler and everything given to `ctx.waitUntil()` do. What
// the handler asked for each message (ack, retry, with delays) goes back to
// the node, which decides what becomes of the messages; of a message's
// `ack()` and `retry()`, and of the batch's `ackAll()` and `retryAll()`,
// the first call counts and later contrary ones are ignored with a warning.

import { core, primordials } from "ext:core/mod.js";
import { op_outpost_event_unhandled, op_outpost_queue_done } from "ext:core/ops";
import { event } from "ext:outpost_runtime/00_prelude.js";
import { describeError, log } from "ext:outpost_runtime/01_console.js";
import { registerEventKind } from "ext:outpost_runtime/04_registry.js";
import { runToCompletion } from "ext:outpost_runtime/20_context.js";
import { handlerFor } from "ext:outpost_runtime/30_fetch.js";

const {
  ArrayPrototypeMap,
  Date,
  JSONParse,
  MapPrototypeHas,
  MapPrototypeSet,
  NumberIsFinite,
  ObjectFreeze,
  RangeError,
  SafeMap,
  SafeMapIterator,
  SafeSet,
  SafeSetIterator,
  SetPrototypeAdd,
  SetPrototypeHas,
  SymbolFor,
  TypeError,
  Uint8Array,
} = primordials;

const constructKey = SymbolFor("outpost.queueBatch");

/** The most a retry may be delayed, in seconds (12 h), as on Cloudflare. */
const MAX_DELAY_SECONDS = 43_200;

function warn(message) {
  log(2, message);
}

function retryRequest(options, what) {
  const delaySeconds = options?.delaySeconds;
  if (delaySeconds === undefined || delaySeconds === null) return { delaySeconds: null };
  if (typeof delaySeconds !== "number" || !NumberIsFinite(delaySeconds) || delaySeconds < 0 || delaySeconds > MAX_DELAY_SECONDS) {
    throw new RangeError(`${what}: delaySeconds must be a number of seconds from 0 to ${MAX_DELAY_SECONDS}`);
  }
  return { delaySeconds: delaySeconds | 0 };
}

/** What the handler asked for a batch's messages, shared by the batch and its messages. */
class Requests {
  ackAll = false;
  retryAll = null;
  acks = new SafeSet();
  retries = new SafeMap();
}

function decodeBody(contentType, bytes) {
  switch (contentType) {
    case "json":
      return JSONParse(core.decode(bytes));
    case "text":
      return core.decode(bytes);
    case "bytes":
      return new Uint8Array(bytes);
    case "v8":
      return core.deserialize(bytes, { forStorage: true });
    default:
      throw new TypeError(`Unsupported queue message content type: ${contentType}`);
  }
}

class Message {
  #id;
  #timestamp;
  #body;
  #attempts;
  #requests;
  constructor(key, delivered, requests) {
    if (key !== constructKey) throw new TypeError("Illegal constructor");
    this.#id = delivered.id;
    this.#timestamp = new Date(delivered.timestamp);
    this.#body = decodeBody(delivered.contentType, delivered.body);
    this.#attempts = delivered.attempts;
    this.#requests = requests;
  }
  get id() {
    return this.#id;
  }
  get timestamp() {
    return this.#timestamp;
  }
  get body() {
    return this.#body;
  }
  get attempts() {
    return this.#attempts;
  }
  ack() {
    const requests = this.#requests;
    if (requests.retryAll !== null) {
      warn(`ack() on message ${this.#id} after retryAll() has no effect`);
    } else if (MapPrototypeHas(requests.retries, this.#id)) {
      warn(`ack() on message ${this.#id} after retry() has no effect`);
    } else {
      SetPrototypeAdd(requests.acks, this.#id);
    }
  }
  retry(options = undefined) {
    const request = retryRequest(options, "retry()");
    const requests = this.#requests;
    if (requests.ackAll) {
      warn(`retry() on message ${this.#id} after ackAll() has no effect`);
    } else if (SetPrototypeHas(requests.acks, this.#id)) {
      warn(`retry() on message ${this.#id} after ack() has no effect`);
    } else if (!MapPrototypeHas(requests.retries, this.#id)) {
      MapPrototypeSet(requests.retries, this.#id, request);
    }
  }
}

class MessageBatch {
  #queue;
  #messages;
  #requests;
  constructor(key, queue, messages, requests) {
    if (key !== constructKey) throw new TypeError("Illegal constructor");
    this.#queue = queue;
    this.#messages = ObjectFreeze(messages);
    this.#requests = requests;
  }
  get queue() {
    return this.#queue;
  }
  get messages() {
    return this.#messages;
  }
  ackAll() {
    const requests = this.#requests;
    if (requests.retryAll !== null) warn("ackAll() after retryAll() has no effect");
    else requests.ackAll = true;
  }
  retryAll(options = undefined) {
    const request = retryRequest(options, "retryAll()");
    const requests = this.#requests;
    if (requests.ackAll) warn("retryAll() after ackAll() has no effect");
    else if (requests.retryAll === null) requests.retryAll = request;
  }
}

/** The service-worker form's event: the batch's parts, and `waitUntil()`. */
class QueueEvent extends event.Event {
  #batch;
  #ctx;
  constructor(batch, ctx) {
    super("queue");
    this.#batch = batch;
    this.#ctx = ctx;
  }
  get queue() {
    return this.#batch.queue;
  }
  get messages() {
    return this.#batch.messages;
  }
  ackAll() {
    this.#batch.ackAll();
  }
  retryAll(options = undefined) {
    this.#batch.retryAll(options);
  }
  waitUntil(promise) {
    this.#ctx.waitUntil(promise);
  }
}

/** The worker's queue handler, as `(batch, ctx) => promise`, or undefined. */
export function queueHandler(namespace, env) {
  return handlerFor(namespace, env, "queue", (batch, ctx) => new QueueEvent(batch, ctx));
}

async function deliverQueue(next, worker) {
  const handler = worker.handlers.queue;
  if (handler === undefined) {
    op_outpost_event_unhandled(next.rid, "Handler does not export a queue() function");
    return;
  }
  const requests = new Requests();
  const error = await runToCompletion(next.requestId, (ctx) => {
    // Decoding a body can throw (a corrupt one): the run fails, as a throw would.
    const messages = ArrayPrototypeMap(next.messages, (delivered) => new Message(constructKey, delivered, requests));
    return handler(new MessageBatch(constructKey, next.queue, messages, requests), ctx);
  });
  op_outpost_queue_done(next.rid, {
    error: error === null ? null : describeError(error),
    ackAll: requests.ackAll,
    retryAll: requests.retryAll,
    acks: [...new SafeSetIterator(requests.acks)],
    retries: [...new SafeMapIterator(requests.retries)],
  });
}

registerEventKind("queue", deliverQueue);
