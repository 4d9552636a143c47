// Outpost's bootstrap: HTTP events. The `Request` a `fetch` handler gets,
// and the sending of its `Response`: static bodies in one op, streams chunk
// by chunk with backpressure, WebSockets through the front's pipe.

import { core, primordials } from "ext:core/mod.js";
import { op_outpost_body_close, op_outpost_body_write, op_outpost_respond, op_outpost_respond_forwarded_websocket, op_outpost_respond_stream, op_outpost_respond_websocket } from "ext:core/ops";
import { body, request, response, streams } from "ext:outpost_runtime/00_prelude.js";
import { describeError } from "ext:outpost_runtime/01_console.js";
import { claimForResponse, kAttach, webSocketResponses } from "ext:outpost_runtime/02_websocket.js";

const {
  JSONParse,
  ObjectDefineProperty,
  ObjectPrototypeIsPrototypeOf,
  Promise,
  PromisePrototypeThen,
  TypeError,
  TypedArrayPrototypeGetSymbolToStringTag,
  WeakMapPrototypeGet,
} = primordials;

export function buildRequest(next) {
  const requestBody = next.bodyRid === null
    ? null
    : new body.InnerBody(streams.readableStreamForRid(next.bodyRid));
  const headerList = next.headers;
  const inner = request.newInnerRequest(next.method, next.url, () => headerList, requestBody, false);
  const req = request.fromInnerRequest(inner, "immutable");
  // What the front knows of the connection, as Cloudflare's `request.cf`,
  // parsed only if the worker looks.
  if (next.cf !== null) {
    const json = next.cf;
    let cf;
    ObjectDefineProperty(req, "cf", { get: () => (cf ??= JSONParse(json)), enumerable: false, configurable: true });
  }
  return req;
}

const EMPTY = new Uint8Array(0);

function isUint8Array(value) {
  return TypedArrayPrototypeGetSymbolToStringTag(value) === "Uint8Array";
}

export async function pumpBody(stream, writerRid) {
  const reader = stream.getReader();
  try {
    while (true) {
      const { value, done } = await reader.read();
      if (done) break;
      if (!isUint8Array(value)) {
        throw new TypeError("a response body stream must produce Uint8Array chunks");
      }
      if (!(await op_outpost_body_write(writerRid, value))) {
        // The client went away: stop the producer.
        op_outpost_body_close(writerRid, null);
        await reader.cancel();
        return;
      }
    }
    op_outpost_body_close(writerRid, null);
  } catch (error) {
    op_outpost_body_close(writerRid, describeError(error));
    try {
      await reader.cancel(error);
    } catch { /* already errored */ }
  }
}

/**
 * Sends the response; for a streamed body, resolves once it is sent, and
 * for a WebSocket, once the socket has closed. `req` is the request it
 * answers.
 */
export function sendResponse(rid, value, req) {
  if (!ObjectPrototypeIsPrototypeOf(response.ResponsePrototype, value)) {
    throw new TypeError("Incorrect type for Promise: the Promise did not resolve to 'Response'.");
  }
  const inner = response.toInnerResponse(value);
  const webSocket = WeakMapPrototypeGet(webSocketResponses, value);
  if (webSocket !== undefined) {
    const key = req?.headers.get("sec-websocket-key") ?? "";
    const forwarded = claimForResponse(webSocket);
    if (forwarded === null) throw new TypeError("this WebSocket already went out in a response");
    if (forwarded !== undefined) {
      op_outpost_respond_forwarded_websocket(rid, forwarded, response.wireHeaderList(inner), key);
      return;
    }
    const upgraded = op_outpost_respond_websocket(rid, response.wireHeaderList(inner), key);
    return PromisePrototypeThen(upgraded, (socketRid) => webSocket[kAttach](socketRid));
  }
  if (inner.type === "error") {
    throw new TypeError("the worker returned Response.error()");
  }
  const headerList = response.wireHeaderList(inner);
  const responseBody = inner.body;
  if (responseBody === null) {
    op_outpost_respond(rid, inner.status, headerList, EMPTY);
    return;
  }
  const source = responseBody.streamOrStatic;
  if (!ObjectPrototypeIsPrototypeOf(streams.ReadableStreamPrototype, source)) {
    if (source.consumed) {
      throw new TypeError("the response body was already read");
    }
    source.consumed = true;
    const bytes = typeof source.body === "string" ? core.encode(source.body) : source.body;
    op_outpost_respond(rid, inner.status, headerList, bytes);
    return;
  }
  if (source.locked || streams.isReadableStreamDisturbed(source)) {
    throw new TypeError("the response body was already read");
  }
  const writerRid = op_outpost_respond_stream(rid, inner.status, headerList);
  return pumpBody(source, writerRid);
}

/** Closes the sockets of forwarded WebSockets the request made but did not return. */
export function closeUnreturnedSockets(sockets) {
  if (sockets === null) return;
  for (let i = 0; i < sockets.length; i++) core.tryClose(sockets[i]);
}

/** Every byte of a stream. */
export async function streamBytes(stream) {
  return new Uint8Array(await new response.Response(stream).arrayBuffer());
}
