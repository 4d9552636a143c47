//! Workflows: `env.MY_WORKFLOW` for a `[[workflows]]` entry (`create`,
//! `createBatch`, `get`, and the instance handle), and the `workflow`
//! event, which runs a `WorkflowEntrypoint`'s `run(event, step)` with its
//! step calls answered by the engine's [`RunJournal`]. The node lends the
//! [`Engine`] through the binding services; the engine keeps the state.

mod ops;
pub(crate) mod steps;

pub(crate) use ops::{IncomingValue, OutgoingValue};

use deno_core::{OpState, Resource};
use outpost_workflows::{Engine, RunJournal};

use super::{install_numbered, Binding, BindingError, BindingServices};

/// One `[[workflows]]` entry: the name on `env` and the workflow it reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkflowBinding {
    pub binding: String,
    /// The workflow's name (node-wide).
    pub workflow: String,
    /// The worker exporting its class (for ownership checks).
    pub script: String,
}

impl Binding for WorkflowBinding {
    fn name(&self) -> &str {
        &self.binding
    }

    fn kind(&self) -> &'static str {
        "workflow"
    }

    fn install(
        &self,
        state: &mut OpState,
        _worker: &str,
        services: &BindingServices,
    ) -> Result<serde_json::Value, BindingError> {
        install_numbered::<_, Engine>(state, self, &self.binding, services, "the workflow engine")
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// A run's journal, as the resource its `step` object holds.
pub(crate) struct JournalResource(pub(crate) RunJournal);

impl Resource for JournalResource {
    fn name(&self) -> std::borrow::Cow<'_, str> {
        "outpostWorkflowJournal".into()
    }
}

deno_core::extension!(
    outpost_binding_workflows,
    deps = [outpost_runtime],
    ops = [
        ops::op_outpost_workflow_create,
        ops::op_outpost_workflow_get,
        ops::op_outpost_workflow_status,
        ops::op_outpost_workflow_control,
        ops::op_outpost_workflow_send_event,
        steps::op_outpost_workflow_step_do,
        steps::op_outpost_workflow_step_end,
        steps::op_outpost_workflow_sleep,
        steps::op_outpost_workflow_wait_event,
    ],
    esm_entry_point = "ext:outpost_binding_workflows/mod.js",
    esm = [dir "src/ext/bindings/workflows", "mod.js", "payload.js", "binding.js", "run.js"],
);
