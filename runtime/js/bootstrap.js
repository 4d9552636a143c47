// Outpost's bootstrap: runs once, while the startup snapshot is built.
//
// It loads the web APIs of the deno extensions, installs the globals a
// Cloudflare worker expects (and nothing else), and leaves one function,
// `globalThis.__outpostPrepare`, which the runtime takes (and deletes) before
// any worker code runs.

import { core, internals, primordials } from "ext:core/mod.js";
import {
  op_outpost_kv_delete,
  op_outpost_kv_get,
  op_outpost_kv_list,
  op_outpost_kv_put,
  op_outpost_body_close,
  op_outpost_body_write,
  op_outpost_log,
  op_outpost_next_request,
  op_outpost_respond,
  op_outpost_respond_error,
  op_outpost_respond_stream,
  op_outpost_wasm_module,
} from "ext:core/ops";

const {
  ArrayBufferIsView,
  ArrayBufferPrototype,
  ArrayPrototypeFilter,
  ArrayPrototypeIncludes,
  ArrayPrototypeMap,
  ArrayPrototypePush,
  ArrayPrototypeJoin,
  Error,
  ErrorPrototype,
  FunctionPrototypeCall,
  JSONParse,
  JSONStringify,
  ObjectDefineProperties,
  ObjectDefineProperty,
  ObjectPrototypeIsPrototypeOf,
  ObjectSetPrototypeOf,
  Promise,
  PromisePrototypeThen,
  SafePromiseAll,
  SafeSet,
  SafeSetIterator,
  SetPrototypeAdd,
  SetPrototypeDelete,
  String,
  StringPrototypeIncludes,
  StringPrototypeSplit,
  SymbolFor,
  TypeError,
  TypedArrayPrototypeGetBuffer,
  TypedArrayPrototypeGetSymbolToStringTag,
} = primordials;

// deno_fetch reaches for OpenTelemetry when it is loaded; workers have none.
// These stand-ins keep tracing permanently off.
internals.__telemetry = {
  TRACING_ENABLED: false,
  PROPAGATORS: [],
  builtinTracer() {
    throw new Error("telemetry is not available");
  },
  ContextManager: { active: () => undefined },
  DID_NOT_ENTER: undefined,
  enterSpan() {},
  exitSpan() {},
  restoreSnapshot() {},
};
internals.__telemetryUtil = {
  updateSpanFromClientResponse() {},
  updateSpanFromError() {},
  updateSpanFromRequest() {},
};

const load = (specifier) => core.loadExtScript(specifier);
const webidl = load("ext:deno_webidl/00_webidl.js");
const event = load("ext:deno_web/02_event.js");
const timers = load("ext:deno_web/02_timers.js");
const base64 = load("ext:deno_web/05_base64.js");
const encoding = load("ext:deno_web/08_text_encoding.js");
const consoleMod = load("ext:deno_web/01_console.js");
const compression = load("ext:deno_web/14_compression.js");
const performanceMod = load("ext:deno_web/15_performance.js");
const url = load("ext:deno_web/00_url.js");
const urlPattern = load("ext:deno_web/01_urlpattern.js");
const streams = load("ext:deno_web/06_streams.js");
const file = load("ext:deno_web/09_file.js");
const structuredCloneMod = load("ext:deno_web/02_structured_clone.js");
const { DOMException } = load("ext:deno_web/01_dom_exception.js");
const abortSignal = load("ext:deno_web/03_abort_signal.js");
const headers = load("ext:deno_fetch/20_headers.js");
const formData = load("ext:deno_fetch/21_formdata.js");
const body = load("ext:deno_fetch/22_body.js");
const request = load("ext:deno_fetch/23_request.js");
const response = load("ext:deno_fetch/23_response.js");
const fetch = load("ext:deno_fetch/26_fetch.js");
const crypto = load("ext:deno_crypto/00_crypto.js");

// Timer functions insist on being called with no receiver (or the global).
const { setTimeout, clearTimeout } = timers;

// Ops throw errors by class name; deno_core builds the JS error from a
// registry and throws `undefined` for a name it does not know.
for (const name of [
  "AbortError", "DataError", "IndexSizeError", "InvalidCharacterError", "InvalidStateError", "NetworkError",
  "NotFoundError", "NotSupportedError", "OperationError", "QuotaExceededError", "SyntaxError", "TimeoutError",
  "TypeMismatchError",
]) {
  core.registerErrorBuilder(`DOMException${name}`, (message) => new DOMException(message, name));
}
for (const name of [
  "AddrInUse", "AddrNotAvailable", "AlreadyExists", "BrokenPipe", "Busy", "ConnectionAborted", "ConnectionRefused",
  "ConnectionReset", "FilesystemLoop", "Http", "InvalidData", "IsADirectory", "NetworkUnreachable", "NotADirectory",
  "NotConnected", "NotFound", "NotSupported", "PermissionDenied", "TimedOut", "UnexpectedEof", "WouldBlock",
  "WriteZero",
]) {
  core.registerErrorBuilder(name, (message) => {
    const error = new Error(message);
    error.name = name;
    return error;
  });
}
core.registerErrorBuilder("CompileError", (message) => new WebAssembly.CompileError(message));

// --- console and error reporting -------------------------------------------

// The request a piece of code runs on behalf of follows it across awaits, so
// console lines of interleaved requests are attributed correctly.
const currentRequestId = new core.AsyncVariable();

function log(level, message) {
  op_outpost_log(level, message, currentRequestId.get() ?? "");
}

// Log lines are data, not a terminal: no colour codes in them.
consoleMod.setNoColorFns(() => true, () => true);
const console = new consoleMod.Console((message, level) => log(level, message));

/** An error as a worker author wants to read it: the stack if there is one. */
function describeError(error) {
  if (ObjectPrototypeIsPrototypeOf(ErrorPrototype, error) && error.stack) {
    // The runtime's own frames (ext:...) say nothing to the worker's author.
    const lines = StringPrototypeSplit(String(error.stack), "\n");
    return ArrayPrototypeJoin(
      ArrayPrototypeFilter(lines, (line) => !StringPrototypeIncludes(line, "(ext:") && !StringPrototypeIncludes(line, "at ext:")),
      "\n",
    );
  }
  try {
    return `Uncaught ${consoleMod.inspect(error)}`;
  } catch {
    return "Uncaught (unprintable value)";
  }
}

// Exceptions nobody caught: thrown by event listeners (deno's EventTarget
// reports them as `error` events on the global scope), timers, microtasks,
// or passed to `reportError()`. The runtime's own `error` listener, added
// before any worker code runs, logs them and cancels the event: deno would
// otherwise treat them as fatal, and one bad callback must not stop the
// isolate serving everyone else. While a service-worker `fetch` event is
// dispatched, the errors are also collected so that request fails with them.
let collectedErrors = null;

function onUncaughtError(errorEvent) {
  errorEvent.preventDefault();
  const error = errorEvent.error;
  if (collectedErrors !== null) {
    ArrayPrototypePush(collectedErrors, error);
    return;
  }
  log(3, `uncaught exception: ${describeError(error)}`);
}

function reportException(error) {
  let message = "";
  try {
    message = error?.message ?? String(error);
  } catch { /* keep the empty message */ }
  globalThis.dispatchEvent(new event.ErrorEvent("error", { cancelable: true, message, error }));
}

function reportError(error) {
  webidl.requiredArguments(arguments.length, 1, "Failed to execute 'reportError'");
  reportException(error);
}

core.setReportExceptionCallback(reportException);
core.setUnhandledPromiseRejectionHandler((promise, reason) => {
  const rejectionEvent = new event.PromiseRejectionEvent("unhandledrejection", {
    cancelable: true,
    promise,
    reason,
  });
  let notCancelled = true;
  try {
    notCancelled = globalThis.dispatchEvent(rejectionEvent);
  } catch (listenerError) {
    log(3, `error in an 'unhandledrejection' listener: ${describeError(listenerError)}`);
  }
  if (notCancelled) {
    log(3, `unhandled promise rejection: ${describeError(reason)}`);
  }
  // Handled: deno_core must not turn it into a fatal event loop error.
  return true;
});

// --- the global scope --------------------------------------------------------

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
  Response: core.propNonEnumerable(response.Response),
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
  atob: core.propWritable(base64.atob),
  btoa: core.propWritable(base64.btoa),
  clearInterval: core.propWritable(timers.clearInterval),
  clearTimeout: core.propWritable(timers.clearTimeout),
  console: core.propNonEnumerable(console),
  // The crypto object is backed by Rust (cppgc) and cannot exist in a
  // snapshot: it is made on first use.
  crypto: core.propGetterOnly(() => crypto.crypto),
  fetch: core.propWritable(fetch.fetch),
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

// --- KV bindings ---------------------------------------------------------------

const kvConstructorKey = SymbolFor("outpost.kvNamespace");
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
    return new Uint8Array(await new response.Response(value).arrayBuffer());
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
    const type = kvGetType(options);
    const found = op_outpost_kv_get(this.#binding, String(key));
    return found === null ? null : kvValue(found.value, type);
  }

  async getWithMetadata(key, options) {
    const type = kvGetType(options);
    const found = op_outpost_kv_get(this.#binding, String(key));
    if (found === null) return { value: null, metadata: null, cacheStatus: null };
    return {
      value: kvValue(found.value, type),
      metadata: found.metadata === null ? null : JSONParse(found.metadata),
      cacheStatus: null,
    };
  }

  async put(key, value, options = {}) {
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
    await op_outpost_kv_delete(this.#binding, String(key));
  }

  async list(options = {}) {
    const page = op_outpost_kv_list(this.#binding, {
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

// --- requests ------------------------------------------------------------------

/** How long `waitUntil()` work may outlive its response. */
const WAIT_UNTIL_TIMEOUT_MS = 30_000;
const pendingWaitUntil = new SafeSet();

function trackWaitUntil(promise, requestId) {
  let done = false;
  let timer = 0;
  const settled = new Promise((resolve) => {
    const finish = () => {
      done = true;
      clearTimeout(timer);
      SetPrototypeDelete(pendingWaitUntil, settled);
      resolve();
    };
    PromisePrototypeThen(promise, finish, (error) => {
      const prev = currentRequestId.enter(requestId);
      try {
        log(3, `waitUntil() promise rejected: ${describeError(error)}`);
      } finally {
        core.setAsyncContext(prev);
      }
      finish();
    });
    timer = setTimeout(() => {
      if (done) return;
      log(2, `waitUntil() work still running ${WAIT_UNTIL_TIMEOUT_MS} ms after the response; no longer waiting for it`);
      finish();
    }, WAIT_UNTIL_TIMEOUT_MS);
  });
  SetPrototypeAdd(pendingWaitUntil, settled);
}

const kPassThrough = SymbolFor("outpost.passThroughOnException");

class ExecutionContext {
  #requestId;
  constructor(requestId) {
    this.#requestId = requestId;
    this[kPassThrough] = false;
  }
  waitUntil(promise) {
    webidl.requiredArguments(arguments.length, 1, "Failed to execute 'waitUntil' on 'ExecutionContext'");
    trackWaitUntil(promise, this.#requestId);
  }
  passThroughOnException() {
    // There is no origin behind a worker here to pass the request to: the
    // flag is kept so the error log can say it was set.
    this[kPassThrough] = true;
  }
}

class FetchEvent extends event.Event {
  #request;
  #respondWith;
  #ctx;
  #responded = false;
  constructor(type, init, respondWith, ctx) {
    super(type);
    this.#request = init.request;
    this.#respondWith = respondWith;
    this.#ctx = ctx;
  }
  get request() {
    return this.#request;
  }
  respondWith(responseOrPromise) {
    if (this.#responded) {
      throw new DOMException("respondWith() was already called", "InvalidStateError");
    }
    this.#responded = true;
    this.#respondWith(responseOrPromise);
  }
  waitUntil(promise) {
    this.#ctx.waitUntil(promise);
  }
  passThroughOnException() {
    this.#ctx.passThroughOnException();
  }
}

function buildRequest(next) {
  const requestBody = next.bodyRid === null
    ? null
    : new body.InnerBody(streams.readableStreamForRid(next.bodyRid));
  const headerList = next.headers;
  const inner = request.newInnerRequest(next.method, next.url, () => headerList, requestBody, false);
  return request.fromInnerRequest(inner, "immutable");
}

const EMPTY = new Uint8Array(0);

function isUint8Array(value) {
  return TypedArrayPrototypeGetSymbolToStringTag(value) === "Uint8Array";
}

async function pumpBody(stream, writerRid) {
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

/** Sends the response; for a streamed body, resolves once it is sent. */
function sendResponse(rid, value) {
  if (!ObjectPrototypeIsPrototypeOf(response.ResponsePrototype, value)) {
    throw new TypeError("Incorrect type for Promise: the Promise did not resolve to 'Response'.");
  }
  const inner = response.toInnerResponse(value);
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

async function handleRequest(next, handler) {
  const prev = currentRequestId.enter(next.requestId);
  const ctx = new ExecutionContext(next.requestId);
  try {
    const req = buildRequest(next);
    const result = await handler(req, ctx);
    await sendResponse(next.rid, result);
  } catch (error) {
    const note = ctx[kPassThrough] ? " (passThroughOnException() was set, but there is no origin to pass to)" : "";
    op_outpost_respond_error(next.rid, describeError(error) + note);
  } finally {
    // The response is complete: a request body the worker left unread is
    // released now rather than held by the isolate forever.
    if (next.bodyRid !== null) core.tryClose(next.bodyRid);
    core.setAsyncContext(prev);
  }
}

/** Picks the worker's fetch handler: module syntax first, then service worker. */
function resolveHandler(namespace, env) {
  const exported = namespace.default;
  if (exported !== undefined && exported !== null) {
    const fetchMethod = exported.fetch;
    if (typeof fetchMethod !== "function") {
      throw new TypeError("the worker's default export has no fetch() handler");
    }
    return (req, ctx) => FunctionPrototypeCall(fetchMethod, exported, req, env, ctx);
  }
  if (event.listenerCount(globalThis, "fetch") > 0) {
    return (req, ctx) =>
      new Promise((resolve, reject) => {
        let responded = false;
        const respondWith = (value) => {
          responded = true;
          resolve(value);
        };
        collectedErrors = [];
        let errors;
        try {
          globalThis.dispatchEvent(new FetchEvent("fetch", { request: req }, respondWith, ctx));
        } finally {
          errors = collectedErrors;
          collectedErrors = null;
        }
        if (responded) {
          for (let i = 0; i < errors.length; i++) log(3, `uncaught exception: ${describeError(errors[i])}`);
        } else if (errors.length > 0) {
          reject(errors[0]);
        } else {
          reject(new Error("no 'fetch' event listener called respondWith()"));
        }
      });
  }
  throw new TypeError(
    "the worker neither has a default export with a fetch() handler nor registers a 'fetch' event listener",
  );
}

/**
 * The runtime's entry point, called once the worker's modules are evaluated:
 * `namespace` is the main module's namespace, `envJson` the worker's plain
 * variables. Throws if the worker has no fetch handler; otherwise returns the
 * function that serves requests until the node stops sending them and
 * outstanding `waitUntil()` work has settled (or timed out).
 */
function prepare(namespace, envJson, kvBindings) {
  performanceMod.setTimeOrigin();
  // Not frozen: workerd hands workers a mutable env object too.
  const env = JSONParse(envJson);
  const kvNames = JSONParse(kvBindings);
  for (let i = 0; i < kvNames.length; i++) {
    env[kvNames[i]] = new KVNamespace(kvConstructorKey, i);
  }
  const handler = resolveHandler(namespace, env);
  return () => serve(handler);
}

async function serve(handler) {
  while (true) {
    const next = await op_outpost_next_request();
    if (next === null) break;
    handleRequest(next, handler);
  }
  // Each tracked promise settles by itself or at its timeout.
  while (pendingWaitUntil.size > 0) {
    await SafePromiseAll([...new SafeSetIterator(pendingWaitUntil)]);
  }
}

ObjectDefineProperty(globalThis, "__outpostPrepare", {
  value: prepare,
  enumerable: false,
  configurable: true,
  writable: false,
});
