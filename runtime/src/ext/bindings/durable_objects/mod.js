// Durable Objects: registers the "durable_object" binding kind. Its
// modules register the object events (`object-fetch`, `object-call`,
// `alarm`) as they load.

import { registerBindingKind } from "ext:outpost_runtime/04_registry.js";
import { DurableObjectNamespace, objectKey } from "ext:outpost_binding_durable_objects/namespace.js";
import { hostClass } from "ext:outpost_binding_durable_objects/host.js";

registerBindingKind("durable_object", (description, worker) => {
  if (description.hosted) hostClass(worker, description.className, description.name);
  return new DurableObjectNamespace(objectKey, description.index, description.name);
});
