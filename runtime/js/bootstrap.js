// Outpost's bootstrap: runs once, while the startup snapshot is built.
//
// It loads the web APIs of the deno extensions, installs the globals a
// Cloudflare worker expects (and nothing else), and leaves one function,
// `globalThis.__outpostPrepare`, which the runtime takes (and deletes) before
// any worker code runs.

import { core, internals, primordials } from "ext:core/mod.js";
import {
  op_outpost_respond_forwarded_websocket,
  op_outpost_respond_websocket,
  op_outpost_going_away,
  op_outpost_ws_close,
  op_outpost_ws_next,
  op_outpost_ws_send_binary,
  op_outpost_ws_send_text,
  op_outpost_do_alarm_get,
  op_outpost_do_alarm_set,
  op_outpost_do_id,
  op_outpost_do_send,
  op_outpost_do_storage_delete,
  op_outpost_do_storage_delete_all,
  op_outpost_do_storage_get,
  op_outpost_do_storage_list,
  op_outpost_do_storage_write,
  op_void_async_deferred,
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
  ReflectConstruct,
  SafeFinalizationRegistry,
  SafeWeakMap,
  TypedArrayPrototypeSlice,
  WeakMapPrototypeGet,
  WeakMapPrototypeSet,
  ArrayIsArray,
  ArrayPrototypeFind,
  ArrayPrototypeReverse,
  ArrayPrototypeShift,
  ArrayPrototypeSlice,
  ArrayPrototypeSort,
  DateNow,
  DatePrototype,
  DatePrototypeGetTime,
  FunctionPrototypeBind,
  MapPrototypeDelete,
  MapPrototypeGet,
  MapPrototypeHas,
  MapPrototypeSet,
  MathMax,
  MathMin,
  NumberIsFinite,
  NumberIsInteger,
  ObjectEntries,
  ObjectFreeze,
  PromiseReject,
  PromiseResolve,
  Proxy,
  RangeError,
  ReflectApply,
  ReflectGet,
  ReflectHas,
  SafeArrayIterator,
  SafeMap,
  SafeMapIterator,
  SafePromiseAllSettled,
  StringPrototypeCodePointAt,
  StringPrototypeSlice,
  StringPrototypeStartsWith,
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
  SetPrototypeHas,
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
/**
 * The request being handled, across awaits: `{ id, sockets }`, `sockets`
 * being the forwarded WebSockets it made (`null` until one is), closed when
 * it ends unless returned.
 */
const currentRequest = new core.AsyncVariable();

/**
 * The longest console line that leaves V8, in characters (the runtime also
 * cuts it to as many bytes): a 100 MB string is not copied out whole.
 */
const MAX_LOG_CHARS = 16 * 1024;

function log(level, message) {
  if (message.length > MAX_LOG_CHARS) {
    message = `${StringPrototypeSlice(message, 0, MAX_LOG_CHARS)}... [cut: ${message.length} characters in all]`;
  }
  op_outpost_log(level, message, currentRequest.get()?.id ?? "");
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

// --- WebSockets ------------------------------------------------------------------
//
// Cloudflare's server-side WebSockets: `new WebSocketPair()` gives a client
// end, returned in `new Response(null, { status: 101, webSocket: client })`,
// and a server end the worker `accept()`s and talks on. Frames are handled
// in Rust; the front joins the socket to the upgraded connection.

const wsKey = SymbolFor("outpost.webSocket");
const kAttach = SymbolFor("outpost.webSocket.attach");
/** Closes the socket of a forwarded client end that was dropped (made on first use). */
let forwardedSockets = null;
/** Server ends attached to a client, until closed: closed (1001) when the isolate goes away. */
const openServerSockets = new SafeSet();
/** Set once the isolate is going away (retired, or the node shuts down): sockets attached later close at once. */
let goingAway = false;
// Module-private access to WebSocket internals (set in its static block).
let makeForwarded;
let claimForResponse;
let goAway;
const WS_CONNECTING = 0;
const WS_OPEN = 1;
const WS_CLOSING = 2;
const WS_CLOSED = 3;
/** How long a close handshake may take before the socket is dropped. */
const WS_CLOSE_TIMEOUT_MS = 5_000;

class WebSocket extends event.EventTarget {
  #state = WS_CONNECTING;
  #accepted = false;
  #rid = null;
  #pending = [];
  #peer = null;
  #client = false;
  /** For a client end another isolate serves (a Durable Object's): the rid of its socket, until returned. */
  #forwarded = null;
  /** The client end went out in a response (it can only once). */
  #inResponse = false;
  #closed;
  #onClosed;

  constructor(key) {
    if (key !== wsKey) {
      throw new TypeError("WebSocket clients are not available in workers; use new WebSocketPair() to accept one");
    }
    super();
    this[webidl.brand] = webidl.brand;
    this.#closed = new Promise((resolve) => {
      this.#onClosed = resolve;
    });
  }

  static pair() {
    const client = new WebSocket(wsKey);
    const server = new WebSocket(wsKey);
    client.#peer = server;
    client.#client = true;
    server.#peer = client;
    return [client, server];
  }

  static {
    /** The client end of a socket a Durable Object serves, from a stub's fetch. */
    makeForwarded = (rid) => {
      const client = new WebSocket(wsKey);
      client.#client = true;
      client.#forwarded = rid;
      forwardedSockets ??= new SafeFinalizationRegistry((socketRid) => core.tryClose(socketRid));
      forwardedSockets.register(client, rid, client);
      const request = currentRequest.get();
      if (request !== undefined) ArrayPrototypePush(request.sockets ??= [], rid);
      return client;
    };
    /**
     * Claims a client end for a response, once: `undefined` for an end of
     * a local pair, the socket's rid for a forwarded one; `null` if it
     * already went out in a response.
     */
    claimForResponse = (socket) => {
      if (socket.#inResponse) return null;
      socket.#inResponse = true;
      if (socket.#peer !== null) return undefined;
      const rid = socket.#forwarded;
      socket.#forwarded = null;
      forwardedSockets.unregister(socket);
      return rid;
    };
    /** Closes a server end because its isolate is going away. */
    goAway = (socket) => {
      if (socket.#rid === null || socket.#state === WS_CLOSING || socket.#state === WS_CLOSED) return;
      socket.#state = WS_CLOSING;
      socket.#transmitClose(1001, "the worker is going away");
    };
  }

  get readyState() {
    return this.#state;
  }

  get url() {
    return null;
  }

  get protocol() {
    return "";
  }

  get extensions() {
    return "";
  }

  /** Starts delivering this end's messages to the worker. */
  accept() {
    if (this.#client && this.#peer === null) {
      throw new TypeError("this WebSocket is served by the Durable Object that accepted it; return it in a Response");
    }
    if (this.#client) throw new TypeError("the client end of a WebSocketPair belongs in a Response");
    if (this.#accepted) throw new TypeError("accept() was already called");
    this.#accepted = true;
    this.#state = WS_OPEN;
  }

  send(message) {
    if (this.#client) throw new TypeError("the client end of a WebSocketPair belongs in a Response");
    if (!this.#accepted) throw new TypeError("call accept() before send()");
    if (this.#state !== WS_OPEN) throw new TypeError("the WebSocket is closed");
    let payload;
    if (typeof message === "string") {
      payload = message;
    } else if (ObjectPrototypeIsPrototypeOf(ArrayBufferPrototype, message)) {
      payload = TypedArrayPrototypeSlice(new Uint8Array(message));
    } else if (ArrayBufferIsView(message)) {
      payload = TypedArrayPrototypeSlice(new Uint8Array(message.buffer, message.byteOffset, message.byteLength));
    } else {
      payload = String(message);
    }
    if (this.#rid === null) {
      ArrayPrototypePush(this.#pending, payload);
      return;
    }
    this.#transmit(payload);
  }

  close(code = 1000, reason = "") {
    if (this.#client) throw new TypeError("the client end of a WebSocketPair belongs in a Response");
    // As browsers and workerd: only codes a peer may send, short reasons.
    if (code !== 1000 && !(NumberIsInteger(code) && code >= 3000 && code <= 4999)) {
      throw new DOMException(`close code ${code} is neither 1000 nor in 3000-4999`, "InvalidAccessError");
    }
    reason = String(reason);
    if (core.encode(reason).byteLength > 123) {
      throw new DOMException("a close reason is at most 123 bytes of UTF-8", "SyntaxError");
    }
    if (this.#state === WS_CLOSING || this.#state === WS_CLOSED) return;
    this.#state = WS_CLOSING;
    if (this.#rid === null) {
      ArrayPrototypePush(this.#pending, { close: true, code, reason: String(reason) });
      return;
    }
    this.#transmitClose(code, String(reason));
  }

  #transmit(payload) {
    const sent = typeof payload === "string"
      ? op_outpost_ws_send_text(this.#rid, payload)
      : op_outpost_ws_send_binary(this.#rid, payload);
    PromisePrototypeThen(sent, undefined, (error) => this.#fail(error));
  }

  #transmitClose(code, reason) {
    PromisePrototypeThen(op_outpost_ws_close(this.#rid, code, reason), undefined, () => {});
    // A peer that never answers the close does not keep the socket (and
    // its isolate) forever.
    const rid = this.#rid;
    setTimeout(() => {
      if (this.#state !== WS_CLOSED) core.tryClose(rid);
    }, WS_CLOSE_TIMEOUT_MS);
  }

  #fail(error) {
    if (this.#state === WS_CLOSED) return;
    this.dispatchEvent(new event.ErrorEvent("error", { error, message: error?.message ?? String(error) }));
  }

  /** The client end went out in a response: the server end is live. */
  [kAttach](rid) {
    const server = this.#peer;
    server.#rid = rid;
    SetPrototypeAdd(openServerSockets, server);
    const pending = server.#pending;
    server.#pending = [];
    for (let i = 0; i < pending.length; i++) {
      const item = pending[i];
      if (typeof item === "object" && item !== null && item.close === true) server.#transmitClose(item.code, item.reason);
      else server.#transmit(item);
    }
    server.#receive();
    if (goingAway) goAway(server);
    return server.#closed;
  }

  async #receive() {
    while (true) {
      let incoming;
      try {
        incoming = await op_outpost_ws_next(this.#rid);
      } catch (error) {
        incoming = { kind: "close", code: 1006, reason: String(error?.message ?? error), clean: false };
      }
      if (incoming.kind === "text" || incoming.kind === "binary") {
        const data = incoming.kind === "text" ? incoming.data : TypedArrayPrototypeGetBuffer(incoming.data);
        this.dispatchEvent(new event.MessageEvent("message", { data }));
        continue;
      }
      const wasOpen = this.#state === WS_OPEN;
      this.#state = WS_CLOSED;
      // As browsers do: a close from the peer is answered with the same code.
      if (wasOpen && incoming.clean) this.#transmitClose(incoming.code === 1005 ? 1000 : incoming.code, "");
      this.dispatchEvent(
        new event.CloseEvent("close", { code: incoming.code, reason: incoming.reason, wasClean: incoming.clean }),
      );
      core.tryClose(this.#rid);
      SetPrototypeDelete(openServerSockets, this);
      this.#onClosed();
      return;
    }
  }
}

event.defineEventHandler(WebSocket.prototype, "message");
event.defineEventHandler(WebSocket.prototype, "close");
event.defineEventHandler(WebSocket.prototype, "error");
ObjectDefineProperties(WebSocket, {
  CONNECTING: { value: WS_CONNECTING },
  OPEN: { value: WS_OPEN },
  CLOSING: { value: WS_CLOSING },
  CLOSED: { value: WS_CLOSED },
});

class WebSocketPair {
  constructor() {
    const [client, server] = WebSocket.pair();
    this[0] = client;
    this[1] = server;
  }
}

/** Responses that carry a WebSocket (status 101), by response. */
const webSocketResponses = new SafeWeakMap();

// Cloudflare's Response takes `{ status: 101, webSocket }`, which the
// standard constructor refuses (101 is outside 200-599): such a response
// is made with status 200 and remembered here.
const BaseResponse = response.Response;
const Response = new Proxy(BaseResponse, {
  construct(target, args, newTarget) {
    const init = args[1];
    const webSocket = init?.webSocket;
    if (webSocket === undefined || webSocket === null) return ReflectConstruct(target, args, newTarget);
    if (!ObjectPrototypeIsPrototypeOf(WebSocket.prototype, webSocket)) {
      throw new TypeError("webSocket must be the client end of a WebSocketPair");
    }
    if (init.status !== 101) throw new RangeError("a Response with a webSocket must have status 101");
    const made = ReflectConstruct(target, [null, { headers: init.headers, statusText: init.statusText }], newTarget);
    // What the worker reads is what the client gets.
    ObjectDefineProperties(made, { status: { value: 101 }, ok: { value: false } });
    WeakMapPrototypeSet(webSocketResponses, made, webSocket);
    return made;
  },
});
ObjectDefineProperty(BaseResponse.prototype, "webSocket", {
  get() {
    return WeakMapPrototypeGet(webSocketResponses, this) ?? null;
  },
  configurable: true,
  enumerable: true,
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

/** Every byte of a stream. */
async function streamBytes(stream) {
  return new Uint8Array(await new response.Response(stream).arrayBuffer());
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

// --- Durable Objects -------------------------------------------------------------
//
// The calling side: `env.X` is a DurableObjectNamespace; its stubs send
// requests (and RPC calls) out through the node, which delivers them to the
// one isolate hosting the object. The hosting side: the objects of this
// worker's classes live in `liveObjects`, one per id, each behind an input
// gate that delivers its events one at a time, in arrival order, never
// while one of its storage operations is in progress.

const objectKey = SymbolFor("outpost.durableObject");
/** Most keys one get/put/delete call takes (as on Cloudflare). */
const MAX_KEYS_PER_CALL = 128;

class DurableObjectId {
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

function rpcResult(bytes, kind) {
  const value = core.deserialize(bytes);
  if (kind === "error") throw value;
  return value;
}

async function readAll(bodyRid) {
  if (bodyRid === null) return new Uint8Array(0);
  return streamBytes(streams.readableStreamForRid(bodyRid));
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
  #send(kind, method, req, body) {
    const inner = req === null ? null : request.toInnerRequest(req);
    return op_outpost_do_send(this.#binding, {
      id: this.#id.toString(),
      name: this.#id.name ?? null,
      kind,
      method,
      httpMethod: inner === null ? "POST" : inner.method,
      url: inner === null ? "http://durable-object.invalid/" : req.url,
      headers: inner === null ? [] : inner.headerList,
      requestId: currentRequest.get()?.id ?? "",
    }, body);
  }
  /** Sends once every earlier call of this stub has been sent. */
  #inOrder(prepare) {
    const before = this.#sent;
    let sent;
    this.#sent = new Promise((resolve) => {
      sent = resolve;
    });
    return (async () => {
      try {
        await before;
        const [kind, method, req, body] = await prepare();
        return this.#send(kind, method, req, body);
      } finally {
        sent();
      }
    })();
  }
  async fetch(input, init = undefined) {
    const req = new request.Request(input, init);
    const res = await this.#inOrder(async () => {
      const body = req.body === null ? null : new Uint8Array(await req.arrayBuffer());
      return ["fetch", null, req, body];
    });
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
    const res = await this.#inOrder(() => ["call", method, null, payload]);
    const kind = ArrayPrototypeFind(res.headers, ([name]) => name === "outpost-rpc")?.[1];
    return rpcResult(await readAll(res.bodyRid), kind);
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

class DurableObjectNamespace {
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

/**
 * Delivers an object's events one at a time. A storage operation holds the
 * gate until it completes and the code that awaited it has run; an event is
 * delivered in a later turn of the event loop than the one before, so the
 * previous event's synchronous work and microtasks finish first.
 */
class InputGate {
  #holds = 0;
  #waiting = [];
  #scheduled = false;

  hold() {
    this.#holds++;
  }
  release() {
    this.#holds--;
    if (this.#holds === 0 && this.#waiting.length > 0) this.#schedule();
  }
  /** For reads, which complete at once: held until the next turn. */
  holdForTurn() {
    this.hold();
    PromisePrototypeThen(op_void_async_deferred(), () => this.release());
  }
  /** Runs `event` when its turn comes; settles as it does. */
  enqueue(event) {
    return new Promise((resolve, reject) => {
      ArrayPrototypePush(this.#waiting, () => {
        try {
          resolve(event());
        } catch (error) {
          reject(error);
        }
      });
      this.#schedule();
    });
  }
  #schedule() {
    if (this.#scheduled) return;
    this.#scheduled = true;
    PromisePrototypeThen(op_void_async_deferred(), () => {
      this.#scheduled = false;
      if (this.#holds > 0 || this.#waiting.length === 0) return;
      const next = ArrayPrototypeShift(this.#waiting);
      next();
      if (this.#waiting.length > 0) this.#schedule();
    });
  }
}

/** Code point order, which is the UTF-8 byte order keys are stored in. */
function compareKeys(a, b) {
  let i = 0;
  while (i < a.length && i < b.length) {
    const x = StringPrototypeCodePointAt(a, i);
    const y = StringPrototypeCodePointAt(b, i);
    if (x !== y) return x < y ? -1 : 1;
    i += x > 0xffff ? 2 : 1;
  }
  return a.length === b.length ? 0 : (a.length < b.length ? -1 : 1);
}

function storageKey(key) {
  if (key === undefined) throw new TypeError("a storage key is required");
  return String(key);
}

function storageKeys(keys) {
  if (keys.length > MAX_KEYS_PER_CALL) {
    throw new RangeError(`at most ${MAX_KEYS_PER_CALL} keys can be used in one call, got ${keys.length}`);
  }
  return ArrayPrototypeMap(keys, storageKey);
}

function serializeValue(value) {
  if (value === undefined) throw new TypeError("a storage value is required (undefined cannot be stored)");
  return core.serialize(value, { forStorage: true });
}

function deserializeValue(bytes) {
  return core.deserialize(bytes, { forStorage: true });
}

/** `get()`'s answer: a Map of the keys found, or one value (undefined if absent). */
function gotten(many, names, values) {
  if (!many) return values[0] === null ? undefined : deserializeValue(values[0]);
  const found = new SafeMap();
  for (let i = 0; i < names.length; i++) {
    if (values[i] !== null) MapPrototypeSet(found, names[i], deserializeValue(values[i]));
  }
  return found;
}

/** `get()`/`delete()` arguments: one key or an array of them. */
/** Storage calls answer bad arguments with a rejected promise, as workerd does, not a throw. */
function rejectingBadArguments(call) {
  try {
    return call();
  } catch (error) {
    return PromiseReject(error);
  }
}

function keyArgument(keys) {
  const many = ArrayIsArray(keys);
  return { many, names: many ? storageKeys(keys) : [storageKey(keys)] };
}

/** A transaction's `delete()` answer from what existed: a count, or whether the one key did. */
function deleted(many, existing) {
  const count = ArrayPrototypeFilter(existing, (value) => value !== null).length;
  return many ? count : count > 0;
}

/** `put()` arguments, `(key, value)` or `(entries)`, as serialized `[key, bytes]` pairs. */
function putEntries(keyOrEntries, value) {
  if (typeof keyOrEntries !== "object" || keyOrEntries === null) {
    return [[storageKey(keyOrEntries), serializeValue(value)]];
  }
  const entries = ObjectEntries(keyOrEntries);
  storageKeys(ArrayPrototypeMap(entries, (entry) => entry[0]));
  return ArrayPrototypeMap(entries, ([key, entry]) => [key, serializeValue(entry)]);
}

/** `list()`'s answer from `[key, bytes]` pairs in order. */
function listed(entries) {
  const found = new SafeMap();
  for (let i = 0; i < entries.length; i++) MapPrototypeSet(found, entries[i][0], deserializeValue(entries[i][1]));
  return found;
}

/** Checks list() options, as Cloudflare does, into the op's shape. */
function listOptions(options) {
  if (options === undefined || options === null) options = {};
  if (typeof options !== "object") throw new TypeError("list() options must be an object");
  const text = (name) => {
    const value = options[name];
    if (value === undefined) return null;
    if (typeof value !== "string") throw new TypeError(`list() option ${name} must be a string`);
    return value;
  };
  const result = {
    start: text("start"),
    startAfter: text("startAfter"),
    end: text("end"),
    prefix: text("prefix"),
    reverse: !!options.reverse,
    limit: null,
  };
  if (result.start !== null && result.startAfter !== null) {
    throw new TypeError("list() takes start or startAfter, not both");
  }
  if (options.limit !== undefined) {
    const limit = options.limit;
    if (typeof limit !== "number" || !NumberIsInteger(limit) || limit < 1) {
      throw new RangeError(`list() limit must be a positive integer, got ${limit}`);
    }
    result.limit = limit;
  }
  return result;
}

function inListBounds(key, options) {
  if (options.prefix !== null && !StringPrototypeStartsWith(key, options.prefix)) return false;
  if (options.start !== null && compareKeys(key, options.start) < 0) return false;
  if (options.startAfter !== null && compareKeys(key, options.startAfter) <= 0) return false;
  if (options.end !== null && compareKeys(key, options.end) >= 0) return false;
  return true;
}

/** A storage failure that is not the caller's fault breaks the object. */
function isUsageError(error) {
  return ObjectPrototypeIsPrototypeOf(TypeError.prototype, error) ||
    ObjectPrototypeIsPrototypeOf(RangeError.prototype, error);
}

class DurableObjectStorage {
  #object;
  /** Write calls not yet handed to the store (waiting for their turn). */
  #waiting = 0;
  /** Settles when the latest write call has been handed to the store. */
  #turn = PromiseResolve();
  /** Writes handed to the store and not yet committed. */
  #uncommitted = 0;
  /** Settles (never rejects) once every write handed over so far is committed. */
  #committed = PromiseResolve();

  constructor(key, object) {
    if (key !== objectKey) throw new TypeError("Illegal constructor");
    this.#object = object;
  }

  /**
   * Runs a write call in call order and holds the input gate until it is
   * committed. `submit` hands the writes to the store (calls the op) and
   * returns the op's promise; it runs at once when no earlier call is
   * still waiting, otherwise after them, and with `reads`, only once every
   * earlier write is committed (it reads first). The store commits writes
   * in the order they are handed over.
   */
  #schedule(reads, submit) {
    const object = this.#object;
    object.gate.hold();
    const turn = this.#waiting > 0 ? this.#turn : null;
    this.#waiting++;
    let handedOver;
    this.#turn = new Promise((resolve) => {
      handedOver = resolve;
    });
    const run = async () => {
      let commit;
      try {
        if (turn !== null) await turn;
        while (reads && this.#uncommitted > 0) await this.#committed;
        commit = submit();
      } finally {
        this.#waiting--;
        handedOver();
      }
      this.#uncommitted++;
      const settled = PromisePrototypeThen(commit, () => {}, () => {});
      this.#committed = PromisePrototypeThen(SafePromiseAll([this.#committed, settled]), () => {
        this.#uncommitted--;
      });
      return await commit;
    };
    const result = run();
    PromisePrototypeThen(result, () => object.gate.release(), (error) => {
      object.gate.release();
      if (!isUsageError(error)) object.broken ??= error;
    });
    return result;
  }

  /** Writes handed over so far are committed (reads must see them). */
  async #settled() {
    while (this.#uncommitted > 0 || this.#waiting > 0) {
      await this.#turn;
      await this.#committed;
    }
  }

  /** The output gate: resolves once every write so far is durable. */
  async flushed() {
    await this.#settled();
    if (this.#object.broken) throw this.#object.broken;
  }

  /** Commits `puts` and `deletes` together. */
  write(puts, deletes) {
    const object = this.#object;
    return this.#schedule(false, () => op_outpost_do_storage_write(object.className, object.hex, puts, deletes));
  }

  async #read(read) {
    if (this.#uncommitted > 0 || this.#waiting > 0) await this.#settled();
    this.#object.gate.holdForTurn();
    return read();
  }

  get(keys, _options = undefined) {
    const object = this.#object;
    return rejectingBadArguments(() => {
      const { many, names } = keyArgument(keys);
      return this.#read(() => gotten(many, names, op_outpost_do_storage_get(object.className, object.hex, names)));
    });
  }

  put(keyOrEntries, value = undefined, _options = undefined) {
    return rejectingBadArguments(() => this.write(putEntries(keyOrEntries, value), []));
  }

  delete(keys, _options = undefined) {
    const object = this.#object;
    return rejectingBadArguments(() => {
      const { many, names } = keyArgument(keys);
      // After every earlier write: the count is of keys that existed then.
      const removed = this.#schedule(true, () => op_outpost_do_storage_delete(object.className, object.hex, names));
      return PromisePrototypeThen(removed, (count) => many ? count : count > 0);
    });
  }

  deleteAll(_options = undefined) {
    const object = this.#object;
    // After every earlier write, so none of them survives it.
    return this.#schedule(true, () => op_outpost_do_storage_delete_all(object.className, object.hex));
  }

  list(options = undefined) {
    const object = this.#object;
    return rejectingBadArguments(() => {
      const checked = listOptions(options);
      return this.#read(() => listed(op_outpost_do_storage_list(object.className, object.hex, checked)));
    });
  }

  /**
   * Everything `closure` writes through its `txn` commits together, or
   * nothing does. No other event reaches the object meanwhile.
   */
  async transaction(closure) {
    if (typeof closure !== "function") throw new TypeError("transaction() takes a function");
    const object = this.#object;
    await this.#settled();
    object.gate.hold();
    const txn = new DurableObjectTransaction(objectKey, object);
    try {
      const result = await closure(txn);
      const { puts, deletes } = txn.finish();
      if (puts.length > 0 || deletes.length > 0) await this.write(puts, deletes);
      return result;
    } finally {
      txn.finish();
      object.gate.release();
    }
  }

  async sync() {
    await this.flushed();
  }

  getAlarm(_options = undefined) {
    const object = this.#object;
    return this.#read(() => op_outpost_do_alarm_get(object.className, object.hex));
  }

  setAlarm(scheduledTime, _options = undefined) {
    const object = this.#object;
    let at;
    if (typeof scheduledTime === "number") {
      at = scheduledTime;
    } else if (ObjectPrototypeIsPrototypeOf(DatePrototype, scheduledTime)) {
      at = DatePrototypeGetTime(scheduledTime);
    } else {
      return PromiseReject(new TypeError("setAlarm() takes a Date or milliseconds since the epoch"));
    }
    if (!NumberIsFinite(at)) return PromiseReject(new TypeError("setAlarm() was given an invalid time"));
    if (typeof object.cls.prototype?.alarm !== "function") {
      return PromiseReject(
        new TypeError(`Durable Object class ${object.className} must have an alarm() handler to call setAlarm()`),
      );
    }
    return this.#schedule(false, () => op_outpost_do_alarm_set(object.className, object.hex, MathMax(at, 0)));
  }

  deleteAlarm(_options = undefined) {
    const object = this.#object;
    return this.#schedule(false, () => op_outpost_do_alarm_set(object.className, object.hex, null));
  }
}

class DurableObjectTransaction {
  #object;
  /** Key -> serialized value, or null for a delete. */
  #writes = new SafeMap();
  #rolledBack = false;
  #finished = false;

  constructor(key, object) {
    if (key !== objectKey) throw new TypeError("Illegal constructor");
    this.#object = object;
  }

  #check() {
    if (this.#finished) throw new TypeError("this transaction has already ended");
  }

  #stored(names) {
    const object = this.#object;
    const values = op_outpost_do_storage_get(object.className, object.hex, names);
    return ArrayPrototypeMap(names, (name, i) => MapPrototypeHas(this.#writes, name) ? MapPrototypeGet(this.#writes, name) : values[i]);
  }

  async get(keys, _options = undefined) {
    this.#check();
    const { many, names } = keyArgument(keys);
    return gotten(many, names, this.#stored(names));
  }

  async put(keyOrEntries, value = undefined, _options = undefined) {
    this.#check();
    for (const { 0: key, 1: bytes } of new SafeArrayIterator(putEntries(keyOrEntries, value))) {
      MapPrototypeSet(this.#writes, key, bytes);
    }
  }

  async delete(keys, _options = undefined) {
    this.#check();
    const { many, names } = keyArgument(keys);
    const existing = this.#stored(names);
    for (let i = 0; i < names.length; i++) MapPrototypeSet(this.#writes, names[i], null);
    return deleted(many, existing);
  }

  async list(options = undefined) {
    this.#check();
    const checked = listOptions(options);
    const object = this.#object;
    // The stored entries in bounds, with this transaction's writes over them.
    const merged = new SafeMap();
    const stored = op_outpost_do_storage_list(object.className, object.hex, { ...checked, limit: null });
    for (let i = 0; i < stored.length; i++) MapPrototypeSet(merged, stored[i][0], stored[i][1]);
    for (const { 0: key, 1: value } of new SafeMapIterator(this.#writes)) {
      if (!inListBounds(key, checked)) continue;
      if (value === null) MapPrototypeDelete(merged, key);
      else MapPrototypeSet(merged, key, value);
    }
    const keys = ArrayPrototypeSort(ArrayPrototypeMap([...new SafeMapIterator(merged)], (entry) => entry[0]), compareKeys);
    if (checked.reverse) ArrayPrototypeReverse(keys);
    const count = checked.limit === null ? keys.length : MathMin(checked.limit, keys.length);
    return listed(ArrayPrototypeMap(ArrayPrototypeSlice(keys, 0, count), (key) => [key, MapPrototypeGet(merged, key)]));
  }

  rollback() {
    this.#check();
    this.#rolledBack = true;
  }

  /** Ends the transaction; returns what to commit. */
  finish() {
    this.#finished = true;
    const puts = [];
    const deletes = [];
    if (!this.#rolledBack) {
      for (const { 0: key, 1: value } of new SafeMapIterator(this.#writes)) {
        if (value === null) ArrayPrototypePush(deletes, key);
        else ArrayPrototypePush(puts, [key, value]);
      }
    }
    this.#writes = new SafeMap();
    return { puts, deletes };
  }
}

class DurableObjectState {
  #object;
  constructor(key, object) {
    if (key !== objectKey) throw new TypeError("Illegal constructor");
    this.#object = object;
  }
  get id() {
    return this.#object.id;
  }
  get storage() {
    return this.#object.storage;
  }
  /** No event is delivered to the object until `callback`'s promise settles. */
  async blockConcurrencyWhile(callback) {
    const gate = this.#object.gate;
    gate.hold();
    try {
      return await callback();
    } catch (error) {
      // As on Cloudflare: the object is reset rather than left half set up.
      this.#object.broken ??= error;
      throw error;
    } finally {
      gate.release();
    }
  }
  waitUntil(promise) {
    trackWaitUntil(promise, currentRequest.get()?.id ?? "");
  }
}

/** Base classes of `cloudflare:workers`. */
class DurableObject {
  constructor(ctx, env) {
    this.ctx = ctx;
    this.env = env;
  }
}
class WorkerEntrypoint {
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

/** The worker's module namespace and env, for the objects it hosts. */
let hostModule = null;
let hostEnv = null;
/** The classes this worker declares as Durable Objects: the only ones it hosts. */
const hostedClasses = new SafeSet();
const liveObjects = new SafeMap();

class LiveObject {
  constructor(target, cls) {
    this.className = target.className;
    this.hex = target.id;
    this.cls = cls;
    this.id = new DurableObjectId(objectKey, target.id, target.name ?? undefined);
    this.gate = new InputGate();
    this.storage = new DurableObjectStorage(objectKey, this);
    this.state = new DurableObjectState(objectKey, this);
    this.instance = null;
    /** Set when the object must be reset: its next event gets a new instance. */
    this.broken = null;
    /** Events delivered or waiting, and when the last one ended. */
    this.active = 0;
    /** Answers (streamed bodies, WebSockets) still going out. */
    this.answering = 0;
    this.lastUsed = DateNow();
  }

  /**
   * Runs `use(instance)` as the object's next event and holds its outcome,
   * value or error, until the object's writes are durable (the output gate).
   */
  async runGated(use) {
    let value;
    try {
      value = await this.run(use);
    } catch (error) {
      try {
        await this.storage.flushed();
      } catch { /* the event's own error is the answer */ }
      throw error;
    }
    await this.storage.flushed();
    return value;
  }

  /** Runs `use(instance)` as the object's next event. */
  run(use) {
    if (this.instance === null && !this.constructing) {
      // Construction is an event of its own, so that a
      // blockConcurrencyWhile() in the constructor holds back the first event.
      this.constructing = true;
      this.gate.enqueue(() => {
        this.constructing = false;
        try {
          this.instance = new this.cls(this.state, hostEnv);
        } catch (error) {
          this.broken = error;
        }
      });
    }
    this.active++;
    const done = () => {
      this.active--;
      this.lastUsed = DateNow();
    };
    const event = this.gate.enqueue(() => {
      if (this.broken !== null) throw this.broken;
      return use(this.instance);
    });
    PromisePrototypeThen(event, done, done);
    return event;
  }
}

/** Objects idle this long are dropped (their storage stays, of course). */
const OBJECT_IDLE_MS = 60_000;
let lastObjectSweep = 0;

function sweepIdleObjects(now) {
  if (now - lastObjectSweep < OBJECT_IDLE_MS / 4) return;
  lastObjectSweep = now;
  for (const { 0: key, 1: object } of new SafeMapIterator(liveObjects)) {
    if (object.active === 0 && object.answering === 0 && now - object.lastUsed > OBJECT_IDLE_MS) {
      MapPrototypeDelete(liveObjects, key);
    }
  }
}

function liveObject(target) {
  const key = `${target.className}\0${target.id}`;
  const live = MapPrototypeGet(liveObjects, key);
  // A broken object is replaced only once its last event has ended, so two
  // instances of one object never run at once (its queued events fail).
  if (live !== undefined && (live.broken === null || live.active > 0)) return live;
  const cls = SetPrototypeHas(hostedClasses, target.className) ? hostModule?.[target.className] : undefined;
  if (typeof cls !== "function") {
    throw new TypeError(`this worker declares no Durable Object class "${target.className}"`);
  }
  const fresh = new LiveObject(target, cls);
  MapPrototypeSet(liveObjects, key, fresh);
  return fresh;
}

function handlerOf(instance, name, className) {
  const method = instance[name];
  if (typeof method !== "function") {
    throw new TypeError(`Durable Object class ${className} has no ${name}() handler`);
  }
  return method;
}

async function handleObjectEvent(next) {
  const request = { id: next.requestId, sockets: null };
  const prev = currentRequest.enter(request);
  const target = next.object;
  try {
    sweepIdleObjects(DateNow());
    const object = liveObject(target);
    if (target.kind === "fetch") {
      const req = buildRequest(next);
      const result = await object.runGated((instance) =>
        FunctionPrototypeCall(handlerOf(instance, "fetch", target.className), instance, req)
      );
      // An answer still going out (a streamed body, a WebSocket) keeps the
      // object from being swept as idle until it ends.
      object.answering++;
      try {
        await sendResponse(next.rid, result, req);
      } finally {
        object.answering--;
        object.lastUsed = DateNow();
      }
    } else if (target.kind === "alarm") {
      const info = { retryCount: target.retryCount, isRetry: target.retryCount > 0 };
      await object.runGated((instance) =>
        FunctionPrototypeCall(handlerOf(instance, "alarm", target.className), instance, info)
      );
      op_outpost_respond(next.rid, 204, [], EMPTY);
    } else {
      const args = core.deserialize(target.args);
      let kind = "value";
      let outcome;
      try {
        const value = await object.runGated((instance) => {
          const method = target.method === "constructor" ? undefined : instance[target.method];
          if (typeof method !== "function") {
            throw new TypeError(`The RPC receiver does not implement the method "${target.method}".`);
          }
          return ReflectApply(method, instance, args);
        });
        outcome = core.serialize(value);
      } catch (error) {
        kind = "error";
        try {
          outcome = core.serialize(error);
        } catch {
          outcome = core.serialize(new Error(describeError(error)));
        }
      }
      op_outpost_respond(next.rid, 200, [["outpost-rpc", kind]], outcome);
    }
  } catch (error) {
    op_outpost_respond_error(next.rid, describeError(error));
  } finally {
    if (next.bodyRid !== null) core.tryClose(next.bodyRid);
    closeUnreturnedSockets(request.sockets);
    core.setAsyncContext(prev);
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
      const prev = currentRequest.enter({ id: requestId, sockets: null });
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

/**
 * Sends the response; for a streamed body, resolves once it is sent, and
 * for a WebSocket, once the socket has closed. `req` is the request it
 * answers.
 */
function sendResponse(rid, value, req) {
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
function closeUnreturnedSockets(sockets) {
  if (sockets === null) return;
  for (let i = 0; i < sockets.length; i++) core.tryClose(sockets[i]);
}

async function handleRequest(next, handler) {
  const request = { id: next.requestId, sockets: null };
  const prev = currentRequest.enter(request);
  const ctx = new ExecutionContext(next.requestId);
  try {
    const req = buildRequest(next);
    const result = await handler(req, ctx);
    await sendResponse(next.rid, result, req);
  } catch (error) {
    const note = ctx[kPassThrough] ? " (passThroughOnException() was set, but there is no origin to pass to)" : "";
    op_outpost_respond_error(next.rid, describeError(error) + note);
  } finally {
    // The response is complete: a request body the worker left unread is
    // released now rather than held by the isolate forever.
    if (next.bodyRid !== null) core.tryClose(next.bodyRid);
    closeUnreturnedSockets(request.sockets);
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
 * variables, then the KV and Durable Object bindings (JSON). Throws if the
 * worker has no fetch handler; otherwise returns the function that serves requests until the node stops sending them and
 * outstanding `waitUntil()` work has settled (or timed out).
 */
function prepare(namespace, envJson, kvBindings, objectBindings) {
  performanceMod.setTimeOrigin();
  // Not frozen: workerd hands workers a mutable env object too.
  const env = JSONParse(envJson);
  // Own data properties, whatever the name: a binding called "__proto__"
  // must not become env's prototype.
  const bind = (name, value) =>
    ObjectDefineProperty(env, name, { value, writable: true, enumerable: true, configurable: true });
  const kvNames = JSONParse(kvBindings);
  for (let i = 0; i < kvNames.length; i++) {
    bind(kvNames[i], new KVNamespace(kvConstructorKey, i));
  }
  const objects = JSONParse(objectBindings);
  for (let i = 0; i < objects.length; i++) {
    const { binding, className, hosted } = objects[i];
    if (hosted && typeof namespace[className] !== "function") {
      throw new TypeError(
        `the Durable Object binding ${binding} names class ${className}, which the worker's main module does not export`,
      );
    }
    if (hosted) SetPrototypeAdd(hostedClasses, className);
    bind(binding, new DurableObjectNamespace(objectKey, i, binding));
  }
  hostModule = namespace;
  hostEnv = env;
  const handler = resolveHandler(namespace, env);
  return () => serve(handler);
}

async function serve(handler) {
  // Retired or shutting down (not merely out of requests, as a per-request
  // isolate is): WebSockets close so that the isolate can go. The wait does
  // not keep the isolate alive.
  const away = op_outpost_going_away();
  core.unrefOpPromise(away);
  PromisePrototypeThen(away, () => {
    goingAway = true;
    for (const socket of new SafeSetIterator(openServerSockets)) goAway(socket);
  });
  // Requests still being handled when the queue closes (an isolate that
  // served its one request, or was evicted) finish before the isolate goes.
  const handling = new SafeSet();
  while (true) {
    const next = await op_outpost_next_request();
    if (next === null) break;
    const handled = next.object !== null ? handleObjectEvent(next) : handleRequest(next, handler);
    SetPrototypeAdd(handling, handled);
    PromisePrototypeThen(handled, () => SetPrototypeDelete(handling, handled));
  }
  // Each tracked promise settles by itself or at its timeout.
  while (handling.size > 0 || pendingWaitUntil.size > 0) {
    await SafePromiseAll([...new SafeSetIterator(handling), ...new SafeSetIterator(pendingWaitUntil)]);
  }
}

ObjectDefineProperty(globalThis, "__outpostPrepare", {
  value: prepare,
  enumerable: false,
  configurable: true,
  writable: false,
});
