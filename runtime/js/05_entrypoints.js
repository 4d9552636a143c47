// Outpost's bootstrap, part 5: the base classes of `cloudflare:workers`.

import { primordials } from "ext:core/mod.js";

const {
  ObjectDefineProperty,
  ObjectFreeze,
  SymbolFor,
} = primordials;

/** Base classes of `cloudflare:workers`. */
class DurableObject {
  constructor(ctx, env) {
    this.ctx = ctx;
    this.env = env;
  }
}
export class WorkerEntrypoint {
  constructor(ctx, env) {
    this.ctx = ctx;
    this.env = env;
  }
}
class RpcTarget {}

ObjectDefineProperty(globalThis, SymbolFor("outpost.cloudflareWorkers"), {
  value: ObjectFreeze({ DurableObject, WorkerEntrypoint, RpcTarget }),
  enumerable: false,
  configurable: false,
  writable: false,
});
