//! The binding's ops: creating instances and calling their methods.

use std::cell::RefCell;
use std::rc::Rc;

use deno_core::{op2, JsBuffer, OpState, ToJsBuffer};
use deno_error::JsErrorBox;
use outpost_workflows::{Control, ControlError, Encoding, Engine, NewInstance, Payload};
use serde::{Deserialize, Serialize};

use super::WorkflowBinding;
use crate::ext::bindings::numbered;

/// A value as JS hands it over: structured-clone bytes and, if it has one,
/// its JSON text (for people reading `outpost workflows` output).
#[derive(Deserialize)]
pub struct IncomingValue {
    bytes: JsBuffer,
    json: Option<String>,
}

impl From<IncomingValue> for Payload {
    fn from(value: IncomingValue) -> Self {
        Payload { encoding: Encoding::V8, bytes: value.bytes.to_vec(), json: value.json }
    }
}

/// A value as JS reads it back.
#[derive(Serialize)]
pub struct OutgoingValue {
    bytes: ToJsBuffer,
    encoding: Encoding,
}

impl From<Payload> for OutgoingValue {
    fn from(payload: Payload) -> Self {
        OutgoingValue { bytes: payload.bytes.into(), encoding: payload.encoding }
    }
}

#[derive(Deserialize)]
pub struct CreateOptions {
    id: Option<String>,
    params: IncomingValue,
}

/// What a refused call throws: a TypeError for what the caller got wrong,
/// an Error otherwise.
fn thrown(err: ControlError) -> JsErrorBox {
    match err {
        ControlError::InvalidId(_) | ControlError::BatchSize(_) | ControlError::InvalidEventType(_) => {
            JsErrorBox::type_error(err.to_string())
        }
        ControlError::TooLarge { .. } => JsErrorBox::range_error(err.to_string()),
        other => JsErrorBox::generic(other.to_string()),
    }
}

fn binding(state: &Rc<RefCell<OpState>>, index: u32) -> Result<(WorkflowBinding, Engine), JsErrorBox> {
    numbered::<WorkflowBinding, Engine>(&state.borrow(), index, "workflow")
}

/// `create()` and `createBatch()`: the new instances' ids.
#[op2]
#[serde]
pub async fn op_outpost_workflow_create(
    state: Rc<RefCell<OpState>>,
    #[smi] index: u32,
    #[serde] batch: Vec<CreateOptions>,
) -> Result<Vec<String>, JsErrorBox> {
    let (binding, engine) = binding(&state, index)?;
    let batch = batch.into_iter().map(|new| NewInstance { id: new.id, params: new.params.into() }).collect();
    engine.create(&binding.workflow, batch).await.map_err(thrown)
}

/// `get(id)`: refuses an unknown id.
#[op2]
pub async fn op_outpost_workflow_get(
    state: Rc<RefCell<OpState>>,
    #[smi] index: u32,
    #[string] id: String,
) -> Result<(), JsErrorBox> {
    let (binding, engine) = binding(&state, index)?;
    engine.exists(&binding.workflow, &id).await.map_err(thrown)
}

#[derive(Serialize)]
pub struct StatusAnswer {
    status: &'static str,
    error: Option<outpost_workflows::ErrorInfo>,
    output: Option<OutgoingValue>,
}

/// `status()`.
#[op2]
#[serde]
pub async fn op_outpost_workflow_status(
    state: Rc<RefCell<OpState>>,
    #[smi] index: u32,
    #[string] id: String,
) -> Result<StatusAnswer, JsErrorBox> {
    let (binding, engine) = binding(&state, index)?;
    let view = engine.status(&binding.workflow, &id).await.map_err(thrown)?;
    Ok(StatusAnswer { status: view.status.as_str(), error: view.error, output: view.output.map(OutgoingValue::from) })
}

/// `pause()`, `resume()`, `terminate()`, `restart()`.
#[op2]
pub async fn op_outpost_workflow_control(
    state: Rc<RefCell<OpState>>,
    #[smi] index: u32,
    #[string] id: String,
    #[string] action: String,
) -> Result<(), JsErrorBox> {
    let action = match action.as_str() {
        "pause" => Control::Pause,
        "resume" => Control::Resume,
        "terminate" => Control::Terminate,
        "restart" => Control::Restart,
        other => return Err(JsErrorBox::type_error(format!("no instance method {other}"))),
    };
    let (binding, engine) = binding(&state, index)?;
    engine.control(&binding.workflow, &id, action).await.map_err(thrown)?;
    Ok(())
}

/// `sendEvent({ type, payload })`.
#[op2]
pub async fn op_outpost_workflow_send_event(
    state: Rc<RefCell<OpState>>,
    #[smi] index: u32,
    #[string] id: String,
    #[string] event_type: String,
    #[serde] payload: IncomingValue,
) -> Result<(), JsErrorBox> {
    let (binding, engine) = binding(&state, index)?;
    engine.send_event(&binding.workflow, &id, &event_type, payload.into()).await.map_err(thrown)
}
