// Outpost's bootstrap, part 4: the registries that keep the request loop
// and `prepare` free of any particular binding or event kind. A binding
// kind's module registers the constructor of what `env` gets; an event
// kind's module registers the entry that delivers that event.

import { primordials } from "ext:core/mod.js";

const {
  MapPrototypeGet,
  MapPrototypeHas,
  MapPrototypeSet,
  SafeMap,
  TypeError,
} = primordials;

const bindingKinds = new SafeMap();
const eventKinds = new SafeMap();

function register(registry, what, kind, entry) {
  if (MapPrototypeHas(registry, kind)) throw new TypeError(`the ${what} kind ${kind} is registered twice`);
  MapPrototypeSet(registry, kind, entry);
}

/**
 * `make(description, worker)` returns what `env` gets for one binding of
 * this kind: `description` is what the binding's Rust side installed
 * (`{ name, kind, ... }`), `worker` is `{ namespace, env, hostsObjects }`
 * (set `hostsObjects` if the binding makes the worker host something).
 */
export function registerBindingKind(kind, make) {
  register(bindingKinds, "binding", kind, make);
}

/**
 * `deliver(next, worker)` handles one event of this kind (`next.kind`) and
 * settles when it is answered; `worker.handlers` holds the worker's
 * handlers (`fetch`, `scheduled`, ...).
 */
export function registerEventKind(kind, deliver) {
  register(eventKinds, "event", kind, deliver);
}

export function bindingKind(kind) {
  return MapPrototypeGet(bindingKinds, kind);
}

export function eventKind(kind) {
  return MapPrototypeGet(eventKinds, kind);
}
