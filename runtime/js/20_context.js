// Outpost's bootstrap: `ctx` (the ExecutionContext) and the `waitUntil()`
// work that may outlive an event's answer.

import { core, primordials } from "ext:core/mod.js";
import { clearTimeout, setTimeout, webidl } from "ext:outpost_runtime/00_prelude.js";
import { currentRequest, describeError, log } from "ext:outpost_runtime/01_console.js";

const {
  ArrayPrototypePush,
  ArrayPrototypeSlice,
  DateNow,
  Error,
  MathMax,
  Promise,
  PromisePrototypeThen,
  SafePromiseAllSettled,
  SafeSet,
  SetPrototypeAdd,
  SetPrototypeDelete,
  SymbolFor,
} = primordials;


/** How long `waitUntil()` work may outlive its response. */
const WAIT_UNTIL_TIMEOUT_MS = 30_000;
export const pendingWaitUntil = new SafeSet();

export function trackWaitUntil(promise, requestId) {
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

export const kPassThrough = SymbolFor("outpost.passThroughOnException");

export class ExecutionContext {
  #requestId;
  #collected;
  /** With `collected` (an array), the promises given to `waitUntil()` are also pushed there. */
  constructor(requestId, collected = null) {
    this.#requestId = requestId;
    this.#collected = collected;
    this[kPassThrough] = false;
  }
  waitUntil(promise) {
    webidl.requiredArguments(arguments.length, 1, "Failed to execute 'waitUntil' on 'ExecutionContext'");
    trackWaitUntil(promise, this.#requestId);
    if (this.#collected !== null) ArrayPrototypePush(this.#collected, promise);
  }
  passThroughOnException() {
    // There is no origin behind a worker here to pass the request to: the
    // flag is kept so the error log can say it was set.
    this[kPassThrough] = true;
  }
}

/** How long a run of an event without a response (`scheduled`, `queue`) may last, as on Cloudflare. */
const RUN_DURATION_MS = 15 * 60_000;

/** `promises`' outcomes, or null if they have not all settled within `ms`. */
function settledWithin(promises, ms) {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(null), MathMax(ms, 0));
    PromisePrototypeThen(SafePromiseAllSettled(promises), (results) => {
      clearTimeout(timer);
      resolve(results);
    });
  });
}

/**
 * Runs an event without a response (`scheduled`, `queue`): `run(ctx)`
 * calls its handler, inside the event's request context; then its
 * `waitUntil()` work is waited for. Returns the first thing either threw,
 * or null.
 */
export async function runToCompletion(requestId, run) {
  const prev = currentRequest.enter({ id: requestId, sockets: null });
  const waited = [];
  let error = null;
  try {
    await run(new ExecutionContext(requestId, waited));
  } catch (thrown) {
    error = thrown;
  }
  try {
    if (error === null) error = await firstFailure(waited, RUN_DURATION_MS);
  } finally {
    core.setAsyncContext(prev);
  }
  return error;
}

/**
 * Waits for the promises given to `waitUntil()` during a run (`waited`,
 * which grows while they run) for up to `limitMs`: the first one's
 * rejection, an Error if some are still running then, or null. As on
 * Cloudflare, a run without a response succeeds only if all of them do.
 */
async function firstFailure(waited, limitMs) {
  const deadline = DateNow() + limitMs;
  for (let settled = 0; settled < waited.length;) {
    const results = await settledWithin(ArrayPrototypeSlice(waited, settled), deadline - DateNow());
    if (results === null) {
      return new Error(`waitUntil() work still running ${limitMs / 60_000} minutes into the run`);
    }
    settled += results.length;
    for (let i = 0; i < results.length; i++) {
      if (results[i].status === "rejected") return results[i].reason;
    }
  }
  return null;
}
