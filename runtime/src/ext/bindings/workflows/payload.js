// Workflows: values crossing into the engine. Parameters, event payloads,
// step results and outputs are stored as structured clones (so a Date or
// a Map comes back as one), with a JSON rendering when they have one, for
// people reading `outpost workflows` output. Values from the command line
// are JSON.

import { core, primordials } from "ext:core/mod.js";

const {
  JSONParse,
  JSONStringify,
  StringPrototypeSlice,
} = primordials;

/** The JSON rendering kept for people, at most this long. */
const MAX_PREVIEW = 8192;

/** `{ bytes, json }` for the engine; throws a DataCloneError for what cannot be cloned. */
export function encodeValue(value) {
  const bytes = core.serialize(value, { forStorage: true });
  let json = null;
  try {
    json = JSONStringify(value) ?? null;
  } catch {
    // Not representable as JSON (a BigInt, a cycle): no rendering.
  }
  if (json !== null && json.length > MAX_PREVIEW) json = StringPrototypeSlice(json, 0, MAX_PREVIEW) + "\u2026";
  return { bytes, json };
}

/** The value of `{ bytes, encoding }` as the engine hands it back. */
export function decodeValue(value) {
  if (value.encoding === "json") return JSONParse(core.decode(value.bytes));
  return core.deserialize(value.bytes, { forStorage: true });
}
