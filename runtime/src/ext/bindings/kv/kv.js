// Workers KV: `KVNamespace`, registered as the "kv" binding kind.

import { core, primordials } from "ext:core/mod.js";
import { op_outpost_kv_delete, op_outpost_kv_get, op_outpost_kv_list, op_outpost_kv_put } from "ext:core/ops";
import { streams, webidl } from "ext:outpost_runtime/00_prelude.js";
import { countSubrequest } from "ext:outpost_runtime/01_console.js";
import { streamBytes } from "ext:outpost_runtime/10_http.js";
import { registerBindingKind } from "ext:outpost_runtime/04_registry.js";

const {
  ArrayBufferIsView,
  ArrayBufferPrototype,
  ArrayPrototypeIncludes,
  ArrayPrototypeMap,
  JSONParse,
  JSONStringify,
  ObjectPrototypeIsPrototypeOf,
  String,
  SymbolFor,
  TypeError,
  TypedArrayPrototypeGetBuffer,
} = primordials;

const kvConstructorKey = Symbol("KVNamespace");
const KV_GET_TYPES = ["text", "json", "arrayBuffer", "stream"];

function kvValue(bytes, type) {
  switch (type) {
    case "text":
      return core.decode(bytes);
    case "json":
      return JSONParse(core.decode(bytes));
    case "arrayBuffer":
      return TypedArrayPrototypeGetBuffer(bytes);
    case "stream":
      return new streams.ReadableStream({
        start(controller) {
          controller.enqueue(bytes);
          controller.close();
        },
      });
  }
}

function kvGetType(options) {
  const type = typeof options === "string" ? options : (options?.type ?? "text");
  if (!ArrayPrototypeIncludes(KV_GET_TYPES, type)) {
    throw new TypeError(`Unknown response type "${type}"; expected one of ${KV_GET_TYPES.join(", ")}`);
  }
  return type;
}

async function kvBytes(value) {
  if (typeof value === "string") return core.encode(value);
  if (ObjectPrototypeIsPrototypeOf(ArrayBufferPrototype, value)) return new Uint8Array(value);
  if (ArrayBufferIsView(value)) {
    return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  }
  if (ObjectPrototypeIsPrototypeOf(streams.ReadableStreamPrototype, value)) {
    return streamBytes(value);
  }
  throw new TypeError("KV put() accepts a string, ArrayBuffer, ArrayBufferView or ReadableStream");
}

class KVNamespace {
  #binding;
  constructor(key, binding) {
    if (key !== kvConstructorKey) throw new TypeError("Illegal constructor");
    this.#binding = binding;
  }

  async get(key, options) {
    countSubrequest();
    const type = kvGetType(options);
    const found = await op_outpost_kv_get(this.#binding, String(key));
    return found === null ? null : kvValue(found.value, type);
  }

  async getWithMetadata(key, options) {
    countSubrequest();
    const type = kvGetType(options);
    const found = await op_outpost_kv_get(this.#binding, String(key));
    if (found === null) return { value: null, metadata: null, cacheStatus: null };
    return {
      value: kvValue(found.value, type),
      metadata: found.metadata === null ? null : JSONParse(found.metadata),
      cacheStatus: null,
    };
  }

  async put(key, value, options = {}) {
    countSubrequest();
    webidl.requiredArguments(arguments.length, 2, "Failed to execute 'put' on 'KVNamespace'");
    const bytes = await kvBytes(value);
    const metadata = options?.metadata === undefined ? null : JSONStringify(options.metadata);
    await op_outpost_kv_put(this.#binding, String(key), bytes, {
      expiration: options?.expiration ?? null,
      expirationTtl: options?.expirationTtl ?? null,
      metadata,
    });
  }

  async delete(key) {
    countSubrequest();
    await op_outpost_kv_delete(this.#binding, String(key));
  }

  async list(options = {}) {
    countSubrequest();
    const page = await op_outpost_kv_list(this.#binding, {
      prefix: options?.prefix ?? null,
      limit: options?.limit ?? null,
      cursor: options?.cursor ?? null,
    });
    const keys = ArrayPrototypeMap(page.keys, (key) => {
      const entry = { name: key.name };
      if (key.expiration !== null) entry.expiration = key.expiration;
      if (key.metadata !== null) entry.metadata = JSONParse(key.metadata);
      return entry;
    });
    const result = { keys, list_complete: page.list_complete, cacheStatus: null };
    if (page.cursor !== null) result.cursor = page.cursor;
    return result;
  }
}

registerBindingKind("kv", (description) => new KVNamespace(kvConstructorKey, description.index));
