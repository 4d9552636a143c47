// Workflows: registers the "workflow" binding kind; `run.js` registers the
// `workflow` event as it loads.

import { registerBindingKind } from "ext:outpost_runtime/04_registry.js";
import { makeWorkflow } from "ext:outpost_binding_workflows/binding.js";
import "ext:outpost_binding_workflows/run.js";

registerBindingKind("workflow", (description) => makeWorkflow(description));
