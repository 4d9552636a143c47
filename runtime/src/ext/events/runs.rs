//! The events that run a handler to its end without answering a request
//! (`scheduled`, `queue`, a workflow's pass): what each is given, and the
//! ops reporting how it ended.

use deno_core::{op2, OpState, ResourceId};
use deno_error::JsErrorBox;
use outpost_kv::queues::QueueMessage;
use outpost_workflows::{ErrorInfo, Payload, RunEnd};
use serde::Deserialize;

use super::{take_event, EventInFlight, Pending};

/// A batch of messages for a queue consumer.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueBatch {
    /// The queue's name (`batch.queue`).
    pub queue: String,
    pub messages: Vec<QueueMessage>,
    pub request_id: String,
}

/// How a `queue` handler's run ended, and what it asked for its messages.
/// Of `ack_all` and `retry_all`, and of one message's ack and retry, only
/// the first call counts (the runtime enforces it).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueOutcome {
    /// The first error the handler or its `waitUntil()` work threw.
    pub error: Option<String>,
    pub ack_all: bool,
    /// `retryAll()`, with its options.
    pub retry_all: Option<RetryRequest>,
    /// Ids of messages whose `ack()` counted.
    pub acks: Vec<String>,
    /// Messages whose `retry()` counted, by id.
    pub retries: Vec<(String, RetryRequest)>,
}

/// A call of `retry()` or `retryAll()`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryRequest {
    /// Seconds before the message is delivered again (checked by the
    /// runtime to be 0 to 43,200); else the consumer's `retry_delay`.
    pub delay_seconds: Option<u32>,
}

/// One run of a Cron Trigger.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduledRun {
    /// The expression as configured (`controller.cron`).
    pub cron: String,
    /// Milliseconds since the epoch (`controller.scheduledTime`): the
    /// minute that fired, or now for a run by hand.
    pub scheduled_time_ms: f64,
    pub request_id: String,
}

/// How a run of the `scheduled` handler ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledOutcome {
    /// The first error the handler or its `waitUntil()` work threw, with
    /// its stack.
    pub error: Option<String>,
    /// The handler called `controller.noRetry()`.
    pub no_retry: bool,
}

/// Logs the error a run without a response (`scheduled`, `queue`) ended with.
fn log_run_error(state: &OpState, event: &EventInFlight, handler: &str, error: Option<&String>) {
    if let Some(error) = error {
        let worker = &state.borrow::<super::super::console::WorkerName>().0;
        tracing::error!(worker = %worker, request_id = %event.request_id, "{handler} handler failed: {error}");
    }
}

/// A run of the `scheduled` handler ended; `error` (with its stack) is the
/// first thing it or its `waitUntil()` work threw, and is logged.
#[op2]
pub fn op_outpost_scheduled_done(
    state: &mut OpState,
    #[smi] rid: ResourceId,
    #[string] error: Option<String>,
    no_retry: bool,
) -> Result<(), JsErrorBox> {
    let event = take_event(state, rid)?;
    log_run_error(state, &event, "scheduled", error.as_ref());
    let pick = |pending| match pending {
        Pending::Scheduled(respond) => Ok(respond),
        other => Err(other),
    };
    event.settle(pick, ScheduledOutcome { error, no_retry }, "this event is not a scheduled run")
}

/// A run of the `queue` handler ended: what it asked for its messages, and
/// the first error it or its `waitUntil()` work threw (logged here).
#[op2]
pub fn op_outpost_queue_done(
    state: &mut OpState,
    #[smi] rid: ResourceId,
    #[serde] outcome: QueueOutcome,
) -> Result<(), JsErrorBox> {
    let event = take_event(state, rid)?;
    log_run_error(state, &event, "queue", outcome.error.as_ref());
    let pick = |pending| match pending {
        Pending::Queue(respond) => Ok(respond),
        other => Err(other),
    };
    event.settle(pick, outcome, "this event is not a queue batch")
}

/// How a pass of a workflow's `run()` ended, as JS reports it: `output`
/// (complete), `error` (errored) or neither (halted). Not a tagged enum:
/// serde would buffer its content, which a `JsBuffer` cannot come from.
#[derive(Deserialize)]
pub struct PassEnd {
    output: Option<super::super::bindings::workflows::IncomingValue>,
    error: Option<ErrorInfo>,
}

/// A pass of a workflow's `run()` ended; its journal (`journal`) closes.
#[op2]
pub fn op_outpost_workflow_done(
    state: &mut OpState,
    #[smi] rid: ResourceId,
    #[smi] journal: ResourceId,
    #[serde] end: PassEnd,
) -> Result<(), JsErrorBox> {
    let _ = state.resource_table.take::<super::super::bindings::workflows::JournalResource>(journal);
    let end = match (end.output, end.error) {
        (Some(output), _) => RunEnd::Complete(Payload::from(output)),
        (None, Some(error)) => RunEnd::Errored(ErrorInfo::new(error.name, error.message)),
        (None, None) => RunEnd::Halted,
    };
    let pick = |pending| match pending {
        Pending::Workflow(respond) => Ok(respond),
        other => Err(other),
    };
    take_event(state, rid)?.settle(pick, end, "this event is not a workflow run")
}
