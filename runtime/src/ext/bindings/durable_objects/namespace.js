// Durable Objects, the calling side: `env.X` is a DurableObjectNamespace;
// its stubs send requests (and RPC calls) out through the node, which
// delivers them to the one isolate hosting the object.

import { core, primordials } from "ext:core/mod.js";
import { op_outpost_do_call, op_outpost_do_fetch, op_outpost_do_id } from "ext:core/ops";
import { request, response, streams, webidl } from "ext:outpost_runtime/00_prelude.js";
import { caller, rpcProxy, subrequestResponse } from "ext:outpost_runtime/15_subrequest.js";

const {
  ObjectPrototypeIsPrototypeOf,
  Promise,
  PromiseResolve,
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
    return { id: this.#id.toString(), name: this.#id.name ?? null, ...caller() };
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
    return subrequestResponse(res);
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
  return rpcProxy(new DurableObjectStub(objectKey, binding, id));
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
