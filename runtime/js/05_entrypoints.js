// Outpost's bootstrap, part 5: the base classes of `cloudflare:workers`,
// and `cloudflare:workflows`' `NonRetryableError`.

import { primordials } from "ext:core/mod.js";

const {
  Error,
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
/** A workflow's class: `run(event, step)` is the workflow. */
export class WorkflowEntrypoint {
  constructor(ctx, env) {
    this.ctx = ctx;
    this.env = env;
  }
}

/** `cloudflare:workflows`: thrown in a step, it fails the step at once, without retries. */
export class NonRetryableError extends Error {
  constructor(message, name = "NonRetryableError") {
    super(message);
    this.name = name;
  }
}

ObjectDefineProperty(globalThis, SymbolFor("outpost.cloudflareWorkers"), {
  value: ObjectFreeze({ DurableObject, WorkerEntrypoint, RpcTarget, WorkflowEntrypoint, NonRetryableError }),
  enumerable: false,
  configurable: false,
  writable: false,
});
