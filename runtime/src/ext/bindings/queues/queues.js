// Queues, the producing side: `env.Q.send(body, options)` and
// `sendBatch(messages, options)`, registered as the "queue" binding kind.
// Bodies are encoded here by content type: `json` (the default), `text`
// (a string), `bytes` (an ArrayBufferView) or `v8` (structured clone).

import { core, primordials } from "ext:core/mod.js";
import { op_outpost_queue_send } from "ext:core/ops";
import { countSubrequest } from "ext:outpost_runtime/01_console.js";
import { registerBindingKind } from "ext:outpost_runtime/04_registry.js";

const {
  ArrayBufferIsView,
  ArrayFrom,
  JSONStringify,
  RangeError,
  SymbolFor,
  TypeError,
  TypedArrayPrototypeSlice,
  Uint8Array,
} = primordials;

const queueKey = SymbolFor("outpost.queue");

/** Cloudflare's limits: a message, and a batch. */
const MAX_MESSAGE_BYTES = 128_000;
const MAX_BATCH_MESSAGES = 100;
const MAX_BATCH_BYTES = 256_000;

function encode(body, contentType = "json") {
  if (body === undefined) throw new TypeError("Message body cannot be undefined");
  switch (contentType) {
    case "json":
      return core.encode(JSONStringify(body));
    case "text":
      if (typeof body !== "string") throw new TypeError("a \"text\" message body must be a string");
      return core.encode(body);
    case "bytes":
      if (!ArrayBufferIsView(body)) throw new TypeError("a \"bytes\" message body must be an ArrayBufferView");
      return TypedArrayPrototypeSlice(new Uint8Array(body.buffer, body.byteOffset, body.byteLength));
    case "v8":
      return core.serialize(body, { forStorage: true });
    default:
      throw new TypeError(`Unsupported queue message content type: ${contentType}`);
  }
}

function outgoing(body, options, batchDelay) {
  const contentType = options?.contentType ?? "json";
  const bytes = encode(body, contentType);
  if (bytes.byteLength > MAX_MESSAGE_BYTES) {
    throw new RangeError(`a queue message is at most ${MAX_MESSAGE_BYTES} bytes, this one is ${bytes.byteLength}`);
  }
  return { body: bytes, contentType, delaySeconds: options?.delaySeconds ?? batchDelay ?? null };
}

class Queue {
  #index;
  constructor(key, index) {
    if (key !== queueKey) throw new TypeError("Illegal constructor");
    this.#index = index;
  }

  async send(body, options = undefined) {
    countSubrequest();
    await op_outpost_queue_send(this.#index, [outgoing(body, options, undefined)]);
  }

  async sendBatch(messages, options = undefined) {
    countSubrequest();
    const list = ArrayFrom(messages ?? []);
    if (list.length === 0) throw new TypeError("sendBatch() requires at least one message");
    if (list.length > MAX_BATCH_MESSAGES) {
      throw new RangeError(`sendBatch() takes at most ${MAX_BATCH_MESSAGES} messages, got ${list.length}`);
    }
    const encoded = [];
    let total = 0;
    for (let i = 0; i < list.length; i++) {
      const message = outgoing(list[i]?.body, list[i], options?.delaySeconds);
      total += message.body.byteLength;
      encoded[i] = message;
    }
    if (total > MAX_BATCH_BYTES) {
      throw new RangeError(`a batch is at most ${MAX_BATCH_BYTES} bytes, this one is ${total}`);
    }
    await op_outpost_queue_send(this.#index, encoded);
  }
}

registerBindingKind("queue", (description) => new Queue(queueKey, description.index));
