// Durable Objects, the calling side: `env.X` is a DurableObjectNamespace;
// its stubs send requests (and RPC calls) out through the node, which
// delivers them to the one isolate hosting the object.

import { core, primordials } from "ext:core/mod.js";
import { op_outpost_do_call, op_outpost_do_fetch, op_outpost_do_id } from "ext:core/ops";
import { request, response, streams, webidl } from "ext:outpost_runtime/00_prelude.js";
import { currentRequest } from "ext:outpost_runtime/01_console.js";
import { Response, makeForwarded } from "ext:outpost_runtime/02_websocket.js";

const {
  ArrayPrototypeIncludes,
  FunctionPrototypeBind,
  ObjectPrototypeIsPrototypeOf,
  Promise,
  PromiseResolve,
  Proxy,
  ReflectGet,
  ReflectHas,
  String,
  SymbolFor,
  TypeError,
} = primordials;

export const objectKey = SymbolFor("outpost.durableObject");
/** Most keys one get/put/delete call takes (as on Cloudflare). */
export const MAX_KEYS_PER_CALL = 128;

export class DurableObjectId {
  #hex;
  #name;
  constructor(key, hex, name) {
    if (key !== objectKey) throw new TypeError("Illegal constructor");
    this.#hex = hex;
    this.#name = name;
  }
  toString() {
    return this.#hex;
  }
  equals(other) {
    return ObjectPrototypeIsPrototypeOf(DurableObjectId.prototype, other) && other.toString() === this.#hex;
  }
  /** The name an id came from (`idFromName`), else undefined. */
  get name() {
    return this.#name;
  }
}

const NULL_BODY_STATUSES = [101, 204, 205, 304];

class DurableObjectStub {
  #binding;
  #id;
  /** Settles once the latest call of this stub has been sent: calls leave in call order. */
  #sent = PromiseResolve();
  constructor(key, binding, id) {
    if (key !== objectKey) throw new TypeError("Illegal constructor");
    this.#binding = binding;
    this.#id = id;
  }
  get id() {
    return this.#id;
  }
  get name() {
    return this.#id.name;
  }
  /** Who the call is for, and on behalf of which request. */
  #target() {
    return { id: this.#id.toString(), name: this.#id.name ?? null, requestId: currentRequest.get()?.id ?? "" };
  }
  /**
   * Runs `send(await prepare())` once every earlier call of this stub has
   * been sent, so calls leave in call order.
   */
  #inOrder(prepare, send) {
    const before = this.#sent;
    let sent;
    this.#sent = new Promise((resolve) => {
      sent = resolve;
    });
    return (async () => {
      try {
        await before;
        return send(await prepare());
      } finally {
        sent();
      }
    })();
  }
  async fetch(input, init = undefined) {
    const req = new request.Request(input, init);
    const res = await this.#inOrder(
      async () => (req.body === null ? null : new Uint8Array(await req.arrayBuffer())),
      (body) => {
        const inner = request.toInnerRequest(req);
        const head = { method: inner.method, url: req.url, headers: inner.headerList };
        return op_outpost_do_fetch(this.#binding, this.#target(), head, body);
      },
    );
    if (res.webSocketRid !== null) {
      // The object accepted a WebSocket: its client end, to return as is.
      return new Response(null, { status: 101, webSocket: makeForwarded(res.webSocketRid), headers: res.headers });
    }
    let stream = res.bodyRid === null ? null : streams.readableStreamForRid(res.bodyRid);
    if (stream !== null && ArrayPrototypeIncludes(NULL_BODY_STATUSES, res.status)) {
      await stream.cancel();
      stream = null;
    }
    return new response.Response(stream, { status: res.status, headers: res.headers });
  }
  /** A method of the object, called by name (JS RPC). */
  async call(method, args) {
    const payload = core.serialize(args);
    const outcome = await this.#inOrder(
      () => payload,
      (args) => op_outpost_do_call(this.#binding, this.#target(), method, args),
    );
    const value = core.deserialize(outcome.value);
    if (outcome.threw) throw value;
    return value;
  }
}

/** Stubs answer any other property with an RPC method of that name. */
function makeStub(binding, id) {
  const stub = new DurableObjectStub(objectKey, binding, id);
  return new Proxy(stub, {
    get(target, property) {
      if (typeof property !== "string" || ReflectHas(target, property)) {
        const value = ReflectGet(target, property, target);
        return typeof value === "function" ? FunctionPrototypeBind(value, target) : value;
      }
      // Not a thenable: `await stub` must give the stub.
      if (property === "then") return undefined;
      return (...args) => stub.call(property, args);
    },
  });
}

export class DurableObjectNamespace {
  #binding;
  #name;
  constructor(key, binding, name) {
    if (key !== objectKey) throw new TypeError("Illegal constructor");
    this.#binding = binding;
    this.#name = name;
  }
  idFromName(name) {
    webidl.requiredArguments(arguments.length, 1, "Failed to execute 'idFromName' on 'DurableObjectNamespace'");
    name = String(name);
    return new DurableObjectId(objectKey, op_outpost_do_id(this.#binding, "name", name), name);
  }
  newUniqueId(_options = undefined) {
    return new DurableObjectId(objectKey, op_outpost_do_id(this.#binding, "unique", ""), undefined);
  }
  idFromString(id) {
    webidl.requiredArguments(arguments.length, 1, "Failed to execute 'idFromString' on 'DurableObjectNamespace'");
    return new DurableObjectId(objectKey, op_outpost_do_id(this.#binding, "string", String(id)), undefined);
  }
  get(id, _options = undefined) {
    if (!ObjectPrototypeIsPrototypeOf(DurableObjectId.prototype, id)) {
      throw new TypeError(`${this.#name}.get() expects a DurableObjectId`);
    }
    // An id of another namespace is refused here, not at the first call.
    op_outpost_do_id(this.#binding, "string", id.toString());
    return makeStub(this.#binding, id);
  }
  getByName(name, options = undefined) {
    return this.get(this.idFromName(name), options);
  }
  jurisdiction(_name) {
    return this;
  }
}
