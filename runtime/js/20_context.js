// Outpost's bootstrap: `ctx` (the ExecutionContext) and the `waitUntil()`
// work that may outlive an event's answer.

import { core, primordials } from "ext:core/mod.js";
import { clearTimeout, setTimeout, webidl } from "ext:outpost_runtime/00_prelude.js";
import { currentRequest, describeError, log } from "ext:outpost_runtime/01_console.js";

const {
  ArrayPrototypePush,
  Promise,
  PromisePrototypeThen,
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
