// Workflows, the binding: `env.MY_WORKFLOW.create()`, `createBatch()`,
// `get()`, and the instance handle they give (`status()`, `pause()`,
// `resume()`, `terminate()`, `restart()`, `sendEvent()`). The engine keeps
// every instance; these only carry calls to it.

import { primordials } from "ext:core/mod.js";
import {
  op_outpost_workflow_control,
  op_outpost_workflow_create,
  op_outpost_workflow_get,
  op_outpost_workflow_send_event,
  op_outpost_workflow_status,
} from "ext:core/ops";
import { decodeValue, encodeValue } from "ext:outpost_binding_workflows/payload.js";

const {
  ArrayIsArray,
  ArrayPrototypeMap,
  ObjectFreeze,
  SymbolFor,
  TypeError,
} = primordials;

const constructKey = SymbolFor("outpost.workflowConstruct");

function creation(options, what) {
  if (options === undefined || options === null) options = {};
  if (typeof options !== "object") throw new TypeError(`${what}: the options must be an object`);
  const id = options.id;
  if (id !== undefined && typeof id !== "string") throw new TypeError(`${what}: id must be a string`);
  return { id: id ?? null, params: encodeValue(options.params) };
}

export class WorkflowInstance {
  #index;
  #id;
  constructor(key, index, id) {
    if (key !== constructKey) throw new TypeError("Illegal constructor");
    this.#index = index;
    this.#id = id;
  }
  get id() {
    return this.#id;
  }
  async status() {
    const answer = await op_outpost_workflow_status(this.#index, this.#id);
    const status = { status: answer.status };
    if (answer.error !== null) status.error = { name: answer.error.name, message: answer.error.message };
    if (answer.output !== null) status.output = decodeValue(answer.output);
    return status;
  }
  async pause() {
    await op_outpost_workflow_control(this.#index, this.#id, "pause");
  }
  async resume() {
    await op_outpost_workflow_control(this.#index, this.#id, "resume");
  }
  async terminate() {
    await op_outpost_workflow_control(this.#index, this.#id, "terminate");
  }
  async restart() {
    await op_outpost_workflow_control(this.#index, this.#id, "restart");
  }
  async sendEvent(event) {
    if (event === null || typeof event !== "object" || typeof event.type !== "string") {
      throw new TypeError("sendEvent: the event must be { type: string, payload }");
    }
    await op_outpost_workflow_send_event(this.#index, this.#id, event.type, encodeValue(event.payload));
  }
}

export class Workflow {
  #index;
  constructor(key, index) {
    if (key !== constructKey) throw new TypeError("Illegal constructor");
    this.#index = index;
  }
  async create(options = undefined) {
    const [id] = await op_outpost_workflow_create(this.#index, [creation(options, "create")]);
    return new WorkflowInstance(constructKey, this.#index, id);
  }
  async createBatch(batch) {
    if (!ArrayIsArray(batch)) throw new TypeError("createBatch: expected an array of instance options");
    const ids = await op_outpost_workflow_create(
      this.#index,
      ArrayPrototypeMap(batch, (options) => creation(options, "createBatch")),
    );
    return ArrayPrototypeMap(ids, (id) => new WorkflowInstance(constructKey, this.#index, id));
  }
  async get(id) {
    if (typeof id !== "string") throw new TypeError("get: the instance id must be a string");
    await op_outpost_workflow_get(this.#index, id);
    return new WorkflowInstance(constructKey, this.#index, id);
  }
}

export function makeWorkflow(description) {
  return ObjectFreeze(new Workflow(constructKey, description.index));
}
