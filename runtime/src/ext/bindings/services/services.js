// Service bindings: `env.SVC` is a Fetcher for another worker of the node
// (`fetch`, and its entrypoint's methods by name); registers the "service"
// binding kind, and the "service-call" event through which a worker's
// `WorkerEntrypoint` answers method calls.

import { core, primordials } from "ext:core/mod.js";
import { op_outpost_body_pipe, op_outpost_svc_call, op_outpost_svc_fetch } from "ext:core/ops";
import { request } from "ext:outpost_runtime/00_prelude.js";
import { currentRequest } from "ext:outpost_runtime/01_console.js";
import { registerBindingKind, registerEventKind } from "ext:outpost_runtime/04_registry.js";
import { closeUnreturnedSockets, pumpBody } from "ext:outpost_runtime/10_http.js";
import { answerCall, caller, rpcProxy, subrequestResponse } from "ext:outpost_runtime/15_subrequest.js";
import { ExecutionContext } from "ext:outpost_runtime/20_context.js";

const {
  ArrayPrototypeIncludes,
  ReflectApply,
  SymbolFor,
  TypeError,
} = primordials;

const fetcherKey = SymbolFor("outpost.fetcher");

/** Names a service's RPC may not call, as on Cloudflare. */
const RESERVED = ["fetch", "connect", "dup", "constructor", "scheduled", "queue", "tail", "trace", "email", "alarm"];

class Fetcher {
  #index;
  constructor(key, index) {
    if (key !== fetcherKey) throw new TypeError("Illegal constructor");
    this.#index = index;
  }
  async fetch(input, init = undefined) {
    const req = new request.Request(input, init);
    const inner = request.toInnerRequest(req);
    const head = { method: inner.method, url: req.url, headers: inner.headerList };
    let bodyRid = null;
    if (req.body !== null) {
      // The body streams to the callee as the caller's stream produces it.
      const [writerRid, rid] = op_outpost_body_pipe();
      bodyRid = rid;
      pumpBody(req.body, writerRid);
    }
    return subrequestResponse(await op_outpost_svc_fetch(this.#index, caller(), head, bodyRid));
  }
  /** A method of the service's entrypoint, called by name (JS RPC). */
  async call(method, args) {
    const outcome = await op_outpost_svc_call(this.#index, caller(), method, core.serialize(args));
    const value = core.deserialize(outcome.value);
    if (outcome.threw) throw value;
    return value;
  }
}

registerBindingKind("service", (description) => rpcProxy(new Fetcher(fetcherKey, description.index)));

/** The receiver of a method call: a new instance of the named entrypoint class. */
function receiver(worker, entrypoint, ctx) {
  const name = entrypoint ?? "default";
  const exported = worker.namespace[name];
  if (typeof exported !== "function") {
    throw new TypeError(`the worker's ${name} export is not a WorkerEntrypoint class, which RPC needs`);
  }
  return new exported(ctx, worker.env);
}

registerEventKind("service-call", async (next, worker) => {
  const request = { id: next.requestId, sockets: null, depth: next.depth };
  const prev = currentRequest.enter(request);
  try {
    await answerCall(next.rid, () => {
      const target = receiver(worker, next.entrypoint, new ExecutionContext(next.requestId));
      const method = ArrayPrototypeIncludes(RESERVED, next.method) ? undefined : target[next.method];
      if (typeof method !== "function") {
        throw new TypeError(`The RPC receiver does not implement the method "${next.method}".`);
      }
      return ReflectApply(method, target, core.deserialize(next.args));
    });
  } finally {
    closeUnreturnedSockets(request.sockets);
    core.setAsyncContext(prev);
  }
});
