// Workflows, the running side: the `workflow` event runs one pass of an
// instance's `run(event, step)`. Every step call asks the engine (through
// the run's journal): a finished step is answered from storage and its
// callback not called again, however often `run()` replays. When a step
// must wait (a sleep, a retry delay, an event not sent yet, a pause), the
// engine answers "halt": that call never settles, the run stops once no
// step callback is still going, and the engine runs the instance again
// from the top when it is due.

import { core, primordials } from "ext:core/mod.js";
import {
  op_outpost_event_unhandled,
  op_outpost_workflow_done,
  op_outpost_workflow_sleep,
  op_outpost_workflow_step_do,
  op_outpost_workflow_step_end,
  op_outpost_workflow_wait_event,
} from "ext:core/ops";
import { clearTimeout, setTimeout } from "ext:outpost_runtime/00_prelude.js";
import { currentRequest, describeError, log } from "ext:outpost_runtime/01_console.js";
import { registerEventKind } from "ext:outpost_runtime/04_registry.js";
import { NonRetryableError, WorkflowEntrypoint } from "ext:outpost_runtime/05_entrypoints.js";
import { ExecutionContext } from "ext:outpost_runtime/20_context.js";
import { decodeValue, encodeValue } from "ext:outpost_binding_workflows/payload.js";

const {
  DatePrototypeGetTime,
  Error,
  MathMin,
  ObjectPrototypeIsPrototypeOf,
  Promise,
  PromisePrototypeThen,
  StringPrototypeStartsWith,
  SymbolFor,
  TypeError,
} = primordials;

const constructKey = SymbolFor("outpost.workflowStepConstruct");
/** The longest a timer can wait; longer step timeouts are cut to it. */
const MAX_TIMER_MS = 2 ** 31 - 1;

function errorFields(error) {
  const name = typeof error?.name === "string" ? error.name : "Error";
  const message = typeof error?.message === "string" ? error.message : String(error);
  return { name, message };
}

function rebuildError({ name, message }) {
  const error = name === "NonRetryableError" ? new NonRetryableError(message) : new Error(message);
  error.name = name;
  return error;
}

/** Cloudflare's engine treats a NonRetryableError by its name too (it crosses RPC). */
function isNonRetryable(error) {
  return ObjectPrototypeIsPrototypeOf(NonRetryableError.prototype, error) ||
    (error?.name === "NonRetryableError") ||
    (typeof error?.message === "string" && StringPrototypeStartsWith(error.message, "NonRetryableError"));
}

function timeoutError(ms) {
  const error = new Error(`Execution timed out after ${ms}ms`);
  error.name = "WorkflowTimeoutError";
  return error;
}

/** One attempt of a step's callback, bounded by its timeout. */
function attempt(callback, attemptNumber, timeoutMs) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(timeoutError(timeoutMs)), MathMin(timeoutMs, MAX_TIMER_MS));
    const settle = (then) => (value) => {
      clearTimeout(timer);
      then(value);
    };
    PromisePrototypeThen(new Promise((r) => r(callback({ attempt: attemptNumber }))), settle(resolve), settle(reject));
  });
}

/** One pass of `run()`: its journal, its step callbacks in progress, whether it halts. */
class Pass {
  constructor(journal) {
    this.journal = journal;
    this.active = 0;
    this.halted = false;
    this.onHalted = null;
  }

  /** The step waits: it never settles, and the pass ends once no callback runs. */
  halt() {
    this.halted = true;
    this.check();
    return new Promise(() => {});
  }

  check() {
    if (this.halted && this.active === 0 && this.onHalted !== null) {
      const halted = this.onHalted;
      this.onHalted = null;
      halted();
    }
  }

  async do(name, config, callback) {
    let answer = await op_outpost_workflow_step_do(this.journal, name, config);
    while (answer.kind === "run") {
      this.active++;
      let end;
      try {
        try {
          const value = await attempt(callback, answer.attempt, answer.timeoutMs);
          end = { value: encodeValue(value) };
        } catch (error) {
          const fields = errorFields(error);
          const cloneable = fields.name !== "DataCloneError";
          if (!cloneable) {
            fields.name = "WorkflowFatalError";
            fields.message = `the value returned from step "${name}" cannot be stored: ${fields.message}`;
          } else {
            log(2, `step "${name}" attempt ${answer.attempt} failed: ${describeError(error)}`);
          }
          end = { value: null, ...fields, nonRetryable: !cloneable || isNonRetryable(error) };
        }
        answer = await op_outpost_workflow_step_end(this.journal, answer.key, end);
      } finally {
        this.active--;
      }
    }
    if (answer.kind === "done") {
      const value = decodeValue(answer.value);
      this.check();
      return value;
    }
    this.check();
    if (answer.kind === "failed") throw rebuildError(answer.error);
    return this.halt();
  }

  async sleep(name, duration, at) {
    const answer = await op_outpost_workflow_sleep(this.journal, name, { duration, at });
    if (answer === "done") return;
    if (answer === "past") throw new Error(`step.sleepUntil("${name}"): cannot sleep until a time in the past`);
    return this.halt();
  }

  async waitForEvent(name, type, timeout) {
    const answer = await op_outpost_workflow_wait_event(this.journal, name, type, timeout);
    if (answer.kind === "event") {
      return { payload: decodeValue(answer.payload), timestamp: new Date(answer.timestamp), type: answer.type };
    }
    if (answer.kind === "timeout") {
      throw timeoutError(typeof timeout === "number" ? timeout : String(timeout ?? "24 hours"));
    }
    return this.halt();
  }
}

function checkName(name, what) {
  if (typeof name !== "string") throw new TypeError(`${what}: the step's name must be a string`);
}

/** The `step` a workflow's `run()` gets. */
export class WorkflowStep {
  #pass;
  constructor(key, pass) {
    if (key !== constructKey) throw new TypeError("Illegal constructor");
    this.#pass = pass;
  }
  do(name, configOrCallback, callback = undefined) {
    checkName(name, "step.do");
    let config = configOrCallback;
    if (callback === undefined) {
      callback = configOrCallback;
      config = {};
    }
    if (typeof callback !== "function") throw new TypeError("step.do: the last argument must be the step's callback");
    if (config === null || typeof config !== "object") throw new TypeError("step.do: the config must be an object");
    return this.#pass.do(name, config, callback);
  }
  sleep(name, duration) {
    checkName(name, "step.sleep");
    return this.#pass.sleep(name, duration, null);
  }
  sleepUntil(name, timestamp) {
    checkName(name, "step.sleepUntil");
    const at = ObjectPrototypeIsPrototypeOf(Date.prototype, timestamp) ? DatePrototypeGetTime(timestamp) : timestamp;
    if (typeof at !== "number") throw new TypeError("step.sleepUntil: the time must be a Date or milliseconds");
    return this.#pass.sleep(name, null, at);
  }
  waitForEvent(name, options) {
    checkName(name, "step.waitForEvent");
    if (options === null || typeof options !== "object" || typeof options.type !== "string") {
      throw new TypeError("step.waitForEvent: the options must be { type: string, timeout? }");
    }
    return this.#pass.waitForEvent(name, options.type, options.timeout ?? null);
  }
}

/** The class `className` of the worker's module, if it is a workflow. */
function workflowClass(namespace, className) {
  const cls = namespace[className];
  if (typeof cls !== "function") return null;
  if (ObjectPrototypeIsPrototypeOf(WorkflowEntrypoint.prototype, cls.prototype)) return cls;
  return typeof cls.prototype?.run === "function" ? cls : null;
}

async function deliverWorkflow(next, worker) {
  const cls = workflowClass(worker.namespace, next.className);
  if (cls === null) {
    op_outpost_event_unhandled(
      next.rid,
      `the worker does not export a WorkflowEntrypoint class named ${next.className} with a run() method`,
    );
    return;
  }
  const prev = currentRequest.enter({ id: next.requestId, sockets: null });
  const pass = new Pass(next.journal);
  let outcome;
  try {
    outcome = await new Promise((resolve) => {
      pass.onHalted = () => resolve({ kind: "halted" });
      PromisePrototypeThen(
        new Promise((r) => {
          // Not frozen, as on Cloudflare; changes to it are not kept across passes.
          const event = {
            payload: decodeValue(next.params),
            timestamp: new Date(next.timestamp),
            instanceId: next.instanceId,
            workflowName: next.workflow,
          };
          const instance = new cls(new ExecutionContext(next.requestId), worker.env);
          r(instance.run(event, new WorkflowStep(constructKey, pass)));
        }),
        (output) => resolve({ kind: "complete", output }),
        (error) => resolve({ kind: "errored", error }),
      );
    });
    if (outcome.kind === "complete") {
      try {
        outcome = { output: encodeValue(outcome.output), error: null };
      } catch (error) {
        outcome = { kind: "errored", error };
      }
    }
    if (outcome.kind === "errored") {
      log(3, `workflow run failed: ${describeError(outcome.error)}`);
      outcome = { output: null, error: errorFields(outcome.error) };
    } else if (outcome.kind === "halted") {
      outcome = { output: null, error: null };
    }
  } finally {
    core.setAsyncContext(prev);
  }
  op_outpost_workflow_done(next.rid, next.journal, outcome);
}

registerEventKind("workflow", deliverWorkflow);
