//! A run's step ops: each asks the run's journal (a resource the `step`
//! object holds) and hands JS its answer: a stored value, an error to
//! throw, an attempt to run, or halt.

use std::cell::RefCell;
use std::rc::Rc;

use deno_core::{op2, OpState, ResourceId};
use deno_error::JsErrorBox;
use outpost_workflows::duration::{self, DurationInput};
use outpost_workflows::policy::StepConfigInput;
use outpost_workflows::{
    DoAnswer, ErrorInfo, EventAnswer, JournalError, RunJournal, SleepAnswer, SleepUntil, StepFailure,
};
use serde::{Deserialize, Serialize};

use super::ops::{IncomingValue, OutgoingValue};
use super::JournalResource;

fn journal(state: &Rc<RefCell<OpState>>, rid: ResourceId) -> Result<RunJournal, JsErrorBox> {
    let state = state.borrow();
    let resource = state
        .resource_table
        .get::<JournalResource>(rid)
        .map_err(|_| JsErrorBox::generic("this workflow run is over: its steps can no longer be called"))?;
    Ok(resource.0.clone())
}

fn thrown(err: JournalError) -> JsErrorBox {
    match err {
        JournalError::InvalidName(_) => JsErrorBox::type_error(err.to_string()),
        JournalError::SleepTooLong(_) => JsErrorBox::range_error(err.to_string()),
        other => JsErrorBox::generic(other.to_string()),
    }
}

/// What `step.do` is told, as JS reads it.
#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum DoReply {
    Done {
        value: OutgoingValue,
    },
    Failed {
        error: ErrorInfo,
    },
    #[serde(rename_all = "camelCase")]
    Run {
        key: String,
        attempt: u32,
        timeout_ms: f64,
    },
    Halt,
}

impl From<DoAnswer> for DoReply {
    fn from(answer: DoAnswer) -> Self {
        match answer {
            DoAnswer::Done(value) => DoReply::Done { value: value.into() },
            DoAnswer::Failed(error) => DoReply::Failed { error },
            DoAnswer::Run { key, attempt, timeout_ms } => DoReply::Run { key, attempt, timeout_ms: timeout_ms as f64 },
            DoAnswer::Halt => DoReply::Halt,
        }
    }
}

/// `step.do(name, config, callback)` begins; `config` is the JS object.
#[op2]
#[serde]
pub async fn op_outpost_workflow_step_do(
    state: Rc<RefCell<OpState>>,
    #[smi] rid: ResourceId,
    #[string] name: String,
    #[serde] config: StepConfigInput,
) -> Result<DoReply, JsErrorBox> {
    let journal = journal(&state, rid)?;
    let config = config.resolve().map_err(|err| JsErrorBox::type_error(format!("step {name:?}: {err}")))?;
    Ok(journal.begin_do(&name, config).await.map_err(thrown)?.into())
}

/// How an attempt ended, as JS reports it: a `value` it returned, or the
/// error it threw. (A struct, not a tagged enum: serde would buffer a
/// tagged enum's content, which a `JsBuffer` cannot come from.)
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttemptEnd {
    value: Option<IncomingValue>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    non_retryable: bool,
}

/// An attempt of step `key` ended.
#[op2]
#[serde]
pub async fn op_outpost_workflow_step_end(
    state: Rc<RefCell<OpState>>,
    #[smi] rid: ResourceId,
    #[string] key: String,
    #[serde] end: AttemptEnd,
) -> Result<DoReply, JsErrorBox> {
    let journal = journal(&state, rid)?;
    let outcome = match end.value {
        Some(value) => Ok(value.into()),
        None => Err(StepFailure { error: ErrorInfo::new(end.name, end.message), non_retryable: end.non_retryable }),
    };
    Ok(journal.end_do(&key, outcome).await.map_err(thrown)?.into())
}

/// How long a sleep is: `{ duration }` for `step.sleep`, `{ at }` (ms since
/// the epoch) for `step.sleepUntil`.
#[derive(Deserialize)]
pub struct SleepLength {
    duration: Option<DurationInput>,
    at: Option<f64>,
}

/// `step.sleep` or `step.sleepUntil`: `"done"`, `"halt"` or `"past"`.
#[op2]
#[string]
pub async fn op_outpost_workflow_sleep(
    state: Rc<RefCell<OpState>>,
    #[smi] rid: ResourceId,
    #[string] name: String,
    #[serde] length: SleepLength,
) -> Result<&'static str, JsErrorBox> {
    let journal = journal(&state, rid)?;
    let until = match (length.duration, length.at) {
        (Some(duration), _) => SleepUntil::For(
            duration::parse(&duration).map_err(|err| JsErrorBox::type_error(format!("step.sleep({name:?}): {err}")))?,
        ),
        (None, Some(at)) if at.is_finite() && at >= 0.0 => SleepUntil::At(at as u64),
        (None, _) => return Err(JsErrorBox::type_error(format!("step.sleepUntil({name:?}): not a valid date"))),
    };
    Ok(match journal.sleep(&name, until).await.map_err(thrown)? {
        SleepAnswer::Done => "done",
        SleepAnswer::Halt => "halt",
        SleepAnswer::InPast => "past",
    })
}

/// What `step.waitForEvent` is told, as JS reads it.
#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum EventReply {
    Event {
        payload: OutgoingValue,
        #[serde(rename = "type")]
        event_type: String,
        timestamp: f64,
    },
    Timeout,
    Halt,
}

/// `step.waitForEvent(name, { type, timeout })`.
#[op2]
#[serde]
pub async fn op_outpost_workflow_wait_event(
    state: Rc<RefCell<OpState>>,
    #[smi] rid: ResourceId,
    #[string] name: String,
    #[string] event_type: String,
    #[serde] timeout: Option<DurationInput>,
) -> Result<EventReply, JsErrorBox> {
    let journal = journal(&state, rid)?;
    let timeout_ms = match timeout {
        Some(timeout) => duration::parse(&timeout)
            .map_err(|err| JsErrorBox::type_error(format!("step.waitForEvent({name:?}): timeout: {err}")))?,
        None => outpost_workflows::policy::DEFAULT_EVENT_TIMEOUT_MS,
    };
    Ok(match journal.wait_for_event(&name, &event_type, timeout_ms).await.map_err(thrown)? {
        EventAnswer::Event { payload, event_type, timestamp_ms } => {
            EventReply::Event { payload: payload.into(), event_type, timestamp: timestamp_ms as f64 }
        }
        EventAnswer::TimedOut => EventReply::Timeout,
        EventAnswer::Halt => EventReply::Halt,
    })
}
