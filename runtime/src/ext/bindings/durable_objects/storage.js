// Durable Objects, the hosting side: the input gate, `state.storage` (with
// its transactions and the output gate) and `state`.

import { core, primordials } from "ext:core/mod.js";
import { op_outpost_do_alarm_get, op_outpost_do_alarm_set, op_outpost_do_storage_delete, op_outpost_do_storage_delete_all, op_outpost_do_storage_get, op_outpost_do_storage_list, op_outpost_do_storage_write, op_void_async_deferred } from "ext:core/ops";
import { currentRequest } from "ext:outpost_runtime/01_console.js";
import { trackWaitUntil } from "ext:outpost_runtime/20_context.js";
import { MAX_KEYS_PER_CALL, objectKey } from "ext:outpost_binding_durable_objects/namespace.js";

const {
  ArrayIsArray,
  ArrayPrototypeFilter,
  ArrayPrototypeMap,
  ArrayPrototypePush,
  ArrayPrototypeReverse,
  ArrayPrototypeShift,
  ArrayPrototypeSlice,
  ArrayPrototypeSort,
  DatePrototype,
  DatePrototypeGetTime,
  MapPrototypeDelete,
  MapPrototypeGet,
  MapPrototypeHas,
  MapPrototypeSet,
  MathMax,
  MathMin,
  NumberIsFinite,
  NumberIsInteger,
  ObjectEntries,
  ObjectPrototypeIsPrototypeOf,
  Promise,
  PromisePrototypeThen,
  PromiseReject,
  PromiseResolve,
  RangeError,
  SafeArrayIterator,
  SafeMap,
  SafeMapIterator,
  SafePromiseAll,
  String,
  StringPrototypeCodePointAt,
  StringPrototypeStartsWith,
  TypeError,
} = primordials;

/**
 * Delivers an object's events one at a time. A storage operation holds the
 * gate until it completes and the code that awaited it has run; an event is
 * delivered in a later turn of the event loop than the one before, so the
 * previous event's synchronous work and microtasks finish first.
 */
export class InputGate {
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
  /** Held until the next turn of the event loop. */
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

export class DurableObjectStorage {
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

  /** Runs `read` (async) after every earlier write is committed, holding the gate until the turn after it. */
  async #read(read) {
    if (this.#uncommitted > 0 || this.#waiting > 0) await this.#settled();
    const gate = this.#object.gate;
    gate.hold();
    try {
      return await read();
    } finally {
      // The code awaiting the read runs before the next event.
      gate.holdForTurn();
      gate.release();
    }
  }

  get(keys, _options = undefined) {
    const object = this.#object;
    return rejectingBadArguments(() => {
      const { many, names } = keyArgument(keys);
      return this.#read(async () =>
        gotten(many, names, await op_outpost_do_storage_get(object.className, object.hex, names))
      );
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
      return this.#read(async () => listed(await op_outpost_do_storage_list(object.className, object.hex, checked)));
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

  async #stored(names) {
    const object = this.#object;
    const values = await op_outpost_do_storage_get(object.className, object.hex, names);
    return ArrayPrototypeMap(names, (name, i) => MapPrototypeHas(this.#writes, name) ? MapPrototypeGet(this.#writes, name) : values[i]);
  }

  async get(keys, _options = undefined) {
    this.#check();
    const { many, names } = keyArgument(keys);
    return gotten(many, names, await this.#stored(names));
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
    const existing = await this.#stored(names);
    for (let i = 0; i < names.length; i++) MapPrototypeSet(this.#writes, names[i], null);
    return deleted(many, existing);
  }

  async list(options = undefined) {
    this.#check();
    const checked = listOptions(options);
    const object = this.#object;
    // The stored entries in bounds, with this transaction's writes over them.
    const merged = new SafeMap();
    const stored = await op_outpost_do_storage_list(object.className, object.hex, { ...checked, limit: null });
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

export class DurableObjectState {
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
