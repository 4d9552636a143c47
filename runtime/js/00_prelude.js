// Outpost's bootstrap, part 0: the web APIs of the deno extensions, loaded
// once while the startup snapshot is built, and what deno_fetch expects of
// its host. The bootstrap's modules (`00_prelude.js` ... `99_main.js`, then
// one extension per binding kind) are evaluated in that order, and each
// imports only from modules before it.

import { core, internals, primordials } from "ext:core/mod.js";

const {
  Error,
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
export const webidl = load("ext:deno_webidl/00_webidl.js");
export const event = load("ext:deno_web/02_event.js");
export const timers = load("ext:deno_web/02_timers.js");
export const base64 = load("ext:deno_web/05_base64.js");
export const encoding = load("ext:deno_web/08_text_encoding.js");
export const consoleMod = load("ext:deno_web/01_console.js");
export const compression = load("ext:deno_web/14_compression.js");
export const performanceMod = load("ext:deno_web/15_performance.js");
export const url = load("ext:deno_web/00_url.js");
export const urlPattern = load("ext:deno_web/01_urlpattern.js");
export const streams = load("ext:deno_web/06_streams.js");
export const file = load("ext:deno_web/09_file.js");
export const structuredCloneMod = load("ext:deno_web/02_structured_clone.js");
export const { DOMException } = load("ext:deno_web/01_dom_exception.js");
export const abortSignal = load("ext:deno_web/03_abort_signal.js");
export const headers = load("ext:deno_fetch/20_headers.js");
export const formData = load("ext:deno_fetch/21_formdata.js");
export const body = load("ext:deno_fetch/22_body.js");
export const request = load("ext:deno_fetch/23_request.js");
export const response = load("ext:deno_fetch/23_response.js");
export const fetch = load("ext:deno_fetch/26_fetch.js");
export const crypto = load("ext:deno_crypto/00_crypto.js");

// Timer functions insist on being called with no receiver (or the global).
export const { setTimeout, clearTimeout } = timers;

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
