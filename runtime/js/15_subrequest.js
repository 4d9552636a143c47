// Outpost's bootstrap: what calls from one worker to another share (a
// Durable Object stub, a service binding): who is calling, the response as
// the caller gets it, and stubs whose unknown properties are RPC methods.

import { core, primordials } from "ext:core/mod.js";
import { op_outpost_rpc_return } from "ext:core/ops";
import { response, streams } from "ext:outpost_runtime/00_prelude.js";
import { countSubrequest, currentRequest, describeError } from "ext:outpost_runtime/01_console.js";
import { makeForwarded, Response } from "ext:outpost_runtime/02_websocket.js";

const {
  Error,
  ArrayPrototypeIncludes,
  FunctionPrototypeBind,
  Proxy,
  ReflectGet,
  ReflectHas,
} = primordials;

/**
 * The calling invocation: its request id and how deeply it is nested. A
 * call to another worker or object is a subrequest: counted here.
 */
export function caller() {
  countSubrequest();
  const current = currentRequest.get();
  return { requestId: current?.id ?? "", depth: current?.depth ?? 0 };
}

const NULL_BODY_STATUSES = [101, 204, 205, 304];

/** The `Response` for what a callee answered (`SubrequestResponse`). */
export async function subrequestResponse(res) {
  if (res.webSocketRid !== null) {
    // The callee accepted a WebSocket: its client end, to return as is.
    return new Response(null, { status: 101, webSocket: makeForwarded(res.webSocketRid), headers: res.headers });
  }
  let stream = res.bodyRid === null ? null : streams.readableStreamForRid(res.bodyRid);
  if (stream !== null && ArrayPrototypeIncludes(NULL_BODY_STATUSES, res.status)) {
    await stream.cancel();
    stream = null;
  }
  return new response.Response(stream, { status: res.status, headers: res.headers });
}

/**
 * `target`, whose other string properties are RPC methods: `call(name,
 * args)`. Not a thenable: `await stub` gives the stub.
 */
export function rpcProxy(target) {
  return new Proxy(target, {
    get(target, property) {
      if (typeof property !== "string" || ReflectHas(target, property)) {
        const value = ReflectGet(target, property, target);
        return typeof value === "function" ? FunctionPrototypeBind(value, target) : value;
      }
      if (property === "then") return undefined;
      return (...args) => target.call(property, args);
    },
  });
}

/**
 * Runs a method call on the callee's side and answers the event `rid` with
 * what it came to: the value, or the error thrown (with its class and
 * message; an error that cannot be cloned goes as its description).
 */
export async function answerCall(rid, call) {
  let threw = false;
  let outcome;
  try {
    outcome = core.serialize(await call());
  } catch (error) {
    threw = true;
    try {
      outcome = core.serialize(error);
    } catch {
      outcome = core.serialize(new Error(describeError(error)));
    }
  }
  op_outpost_rpc_return(rid, threw, outcome);
}
