// Outpost's bootstrap, part 1: `console` (lines attributed to the request
// they were written for) and the reporting of errors nobody caught.

import { core, primordials } from "ext:core/mod.js";
import { op_outpost_log } from "ext:core/ops";
import { consoleMod, event, webidl } from "ext:outpost_runtime/00_prelude.js";

const {
  ArrayPrototypeFilter,
  ArrayPrototypeJoin,
  ArrayPrototypePush,
  ErrorPrototype,
  ObjectPrototypeIsPrototypeOf,
  String,
  StringPrototypeIncludes,
  StringPrototypeSlice,
  StringPrototypeSplit,
} = primordials;


// The request a piece of code runs on behalf of follows it across awaits, so
// console lines of interleaved requests are attributed correctly.
/**
 * The request being handled, across awaits: `{ id, sockets }`, `sockets`
 * being the forwarded WebSockets it made (`null` until one is), closed when
 * it ends unless returned.
 */
export const currentRequest = new core.AsyncVariable();

/** Subrequests one invocation may make (0: no limit), set by `prepare`. */
let subrequestLimit = 0;

export function setSubrequestLimit(limit) {
  subrequestLimit = limit;
}

/**
 * Counts a subrequest (an outbound `fetch`, a KV operation, a call to
 * another worker or object) against the current invocation's limit;
 * throws past it.
 */
export function countSubrequest() {
  const current = currentRequest.get();
  if (current === undefined || subrequestLimit === 0) return;
  current.subrequests = (current.subrequests ?? 0) + 1;
  if (current.subrequests > subrequestLimit) {
    throw new Error(
      `Too many subrequests: one invocation may make ${subrequestLimit} (outbound fetch, KV operations and calls to other workers count; [limits] subrequests sets it)`,
    );
  }
}

/**
 * The longest console line that leaves V8, in characters (the runtime also
 * cuts it to as many bytes): a 100 MB string is not copied out whole.
 */
const MAX_LOG_CHARS = 16 * 1024;

export function log(level, message) {
  if (message.length > MAX_LOG_CHARS) {
    message = `${StringPrototypeSlice(message, 0, MAX_LOG_CHARS)}... [cut: ${message.length} characters in all]`;
  }
  op_outpost_log(level, message, currentRequest.get()?.id ?? "");
}

// Log lines are data, not a terminal: no colour codes in them.
consoleMod.setNoColorFns(() => true, () => true);
export const console = new consoleMod.Console((message, level) => log(level, message));

/** An error as a worker author wants to read it: the stack if there is one. */
export function describeError(error) {
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

/** Runs `dispatch`, collecting (rather than logging) the errors its listeners throw. */
export function collectErrors(dispatch) {
  const outer = collectedErrors;
  collectedErrors = [];
  try {
    dispatch();
    return collectedErrors;
  } finally {
    collectedErrors = outer;
  }
}

export function onUncaughtError(errorEvent) {
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

export function reportError(error) {
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
