// Outpost's bootstrap, part 3: the global scope a Cloudflare worker sees
// (and nothing else).

import { core, primordials } from "ext:core/mod.js";
import { op_outpost_wasm_module } from "ext:core/ops";
import { DOMException, abortSignal, base64, compression, crypto, encoding, event, fetch, file, formData, headers, performanceMod, request, streams, structuredCloneMod, timers, url, urlPattern, webidl } from "ext:outpost_runtime/00_prelude.js";
import { console, countSubrequest, onUncaughtError, reportError } from "ext:outpost_runtime/01_console.js";
import { Response, WebSocket, WebSocketPair } from "ext:outpost_runtime/02_websocket.js";

const {
  PromiseReject,
  ObjectDefineProperties,
  ObjectDefineProperty,
  ObjectSetPrototypeOf,
  SymbolFor,
  TypeError,
} = primordials;


class ServiceWorkerGlobalScope extends event.EventTarget {
  constructor() {
    throw new TypeError("Illegal constructor");
  }
}

class Navigator {
  constructor() {
    throw new TypeError("Illegal constructor");
  }
  get userAgent() {
    return "Outpost-Workers";
  }
}
const navigator = ObjectSetPrototypeOf({}, Navigator.prototype);

/** `fetch`, counted as a subrequest of the invocation that makes it. */
function countedFetch(input, init = undefined) {
  try {
    countSubrequest();
  } catch (error) {
    return PromiseReject(error);
  }
  return fetch.fetch(input, init);
}
ObjectDefineProperty(countedFetch, "name", { value: "fetch" });

const globalScope = {
  AbortController: core.propNonEnumerable(abortSignal.AbortController),
  AbortSignal: core.propNonEnumerable(abortSignal.AbortSignal),
  Blob: core.propNonEnumerable(file.Blob),
  ByteLengthQueuingStrategy: core.propNonEnumerable(streams.ByteLengthQueuingStrategy),
  CompressionStream: core.propNonEnumerable(compression.CompressionStream),
  CountQueuingStrategy: core.propNonEnumerable(streams.CountQueuingStrategy),
  Crypto: core.propNonEnumerable(crypto.Crypto),
  CryptoKey: core.propNonEnumerable(crypto.CryptoKey),
  CustomEvent: core.propNonEnumerable(event.CustomEvent),
  DecompressionStream: core.propNonEnumerable(compression.DecompressionStream),
  DOMException: core.propNonEnumerable(DOMException),
  ErrorEvent: core.propNonEnumerable(event.ErrorEvent),
  Event: core.propNonEnumerable(event.Event),
  EventTarget: core.propNonEnumerable(event.EventTarget),
  File: core.propNonEnumerable(file.File),
  FormData: core.propNonEnumerable(formData.FormData),
  Headers: core.propNonEnumerable(headers.Headers),
  Navigator: core.propNonEnumerable(Navigator),
  Performance: core.propNonEnumerable(performanceMod.Performance),
  PromiseRejectionEvent: core.propNonEnumerable(event.PromiseRejectionEvent),
  ReadableByteStreamController: core.propNonEnumerable(streams.ReadableByteStreamController),
  ReadableStream: core.propNonEnumerable(streams.ReadableStream),
  ReadableStreamBYOBReader: core.propNonEnumerable(streams.ReadableStreamBYOBReader),
  ReadableStreamBYOBRequest: core.propNonEnumerable(streams.ReadableStreamBYOBRequest),
  ReadableStreamDefaultController: core.propNonEnumerable(streams.ReadableStreamDefaultController),
  ReadableStreamDefaultReader: core.propNonEnumerable(streams.ReadableStreamDefaultReader),
  Request: core.propNonEnumerable(request.Request),
  Response: core.propNonEnumerable(Response),
  ServiceWorkerGlobalScope: core.propNonEnumerable(ServiceWorkerGlobalScope),
  SubtleCrypto: core.propNonEnumerable(crypto.SubtleCrypto),
  TextDecoder: core.propNonEnumerable(encoding.TextDecoder),
  TextDecoderStream: core.propNonEnumerable(encoding.TextDecoderStream),
  TextEncoder: core.propNonEnumerable(encoding.TextEncoder),
  TextEncoderStream: core.propNonEnumerable(encoding.TextEncoderStream),
  TransformStream: core.propNonEnumerable(streams.TransformStream),
  TransformStreamDefaultController: core.propNonEnumerable(streams.TransformStreamDefaultController),
  URL: core.propNonEnumerable(url.URL),
  URLPattern: core.propNonEnumerable(urlPattern.URLPattern),
  URLSearchParams: core.propNonEnumerable(url.URLSearchParams),
  WritableStream: core.propNonEnumerable(streams.WritableStream),
  WritableStreamDefaultController: core.propNonEnumerable(streams.WritableStreamDefaultController),
  WritableStreamDefaultWriter: core.propNonEnumerable(streams.WritableStreamDefaultWriter),
  WebSocket: core.propNonEnumerable(WebSocket),
  WebSocketPair: core.propNonEnumerable(WebSocketPair),
  MessageEvent: core.propNonEnumerable(event.MessageEvent),
  CloseEvent: core.propNonEnumerable(event.CloseEvent),
  atob: core.propWritable(base64.atob),
  btoa: core.propWritable(base64.btoa),
  clearInterval: core.propWritable(timers.clearInterval),
  clearTimeout: core.propWritable(timers.clearTimeout),
  console: core.propNonEnumerable(console),
  // The crypto object is backed by Rust (cppgc) and cannot exist in a
  // snapshot: it is made on first use.
  crypto: core.propGetterOnly(() => crypto.crypto),
  fetch: core.propWritable(countedFetch),
  navigator: core.propReadOnly(navigator),
  performance: core.propWritable(performanceMod.performance),
  reportError: core.propWritable(reportError),
  self: core.propGetterOnly(() => globalThis),
  setInterval: core.propWritable(timers.setInterval),
  setTimeout: core.propWritable(timers.setTimeout),
  structuredClone: core.propWritable(structuredCloneMod.structuredClone),
  // Brands the global scope as a WebIDL object, so EventTarget methods accept it.
  [webidl.brand]: core.propNonEnumerable(webidl.brand),
};

ObjectDefineProperties(globalThis, globalScope);
ObjectSetPrototypeOf(globalThis, ServiceWorkerGlobalScope.prototype);
event.setEventTargetData(globalThis);
event.saveGlobalThisReference(globalThis);
globalThis.addEventListener("error", onUncaughtError);

// Bundled `.wasm` imports become `WebAssembly.Module`s through this hook; the
// module loader generates the call. It only hands out the worker's own
// bundled modules, so leaving it reachable grants nothing.
ObjectDefineProperty(globalThis, SymbolFor("outpost.wasmModule"), {
  value: (moduleUrl) => op_outpost_wasm_module(moduleUrl),
  enumerable: false,
  configurable: false,
  writable: false,
});
