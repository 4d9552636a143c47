//! What an isolate can be asked to do ([`WorkerEvent`]), how each event
//! reaches JavaScript, and how its outcome comes back.
//!
//! The loop is pull-based: the bootstrap awaits [`op_outpost_next_event`]
//! and hands each event, by its `kind`, to the entry registered for that
//! kind (the worker's `fetch`, an object's `fetch`, an RPC method, `alarm`)
//! without awaiting it, so concurrent events interleave on the isolate while
//! they wait on I/O. Every event carries the channel its outcome goes back
//! on; each kind has an outcome type of its own.

use std::borrow::Cow;
use std::cell::RefCell;
use std::rc::Rc;

use deno_core::{op2, ByteString, OpState, Resource, ResourceId, ToJsBuffer};
use deno_error::JsErrorBox;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, Mutex};

use outpost_kv::queues::QueueMessage;
use outpost_workflows::{RunEnd, WorkflowRun};

mod runs;

pub use runs::{
    op_outpost_queue_done, op_outpost_scheduled_done, op_outpost_workflow_done, QueueBatch, QueueOutcome, RetryRequest,
    ScheduledOutcome, ScheduledRun,
};

use super::bindings::durable_objects::ids::id_to_hex;
use super::http::{header_list, incoming_body, Body, DispatchError, HttpRequest};

/// What an isolate is asked to do. Each kind has its own outcome type and
/// its own entry in the bootstrap's event registry.
pub enum WorkerEvent {
    /// An HTTP request for the worker's `fetch` handler: its default
    /// export's, or with `entrypoint` (a service binding's), the `fetch` of
    /// that named export.
    Fetch { request: HttpRequest, entrypoint: Option<String>, respond: Responder<http::Response<Body>> },
    /// A service binding's method call (JS RPC) on the worker's default
    /// export or its named `entrypoint`, a `WorkerEntrypoint` class.
    ServiceCall { entrypoint: Option<String>, call: RpcCall, respond: Responder<RpcOutcome> },
    /// A stub's `fetch` for one of the Durable Objects the isolate hosts.
    ObjectFetch { object: ObjectAddress, request: HttpRequest, respond: Responder<http::Response<Body>> },
    /// A stub's call of a method by name (JS RPC) on a hosted object.
    ObjectCall { object: ObjectAddress, call: RpcCall, respond: Responder<RpcOutcome> },
    /// A hosted object's alarm is due; `retry_count` earlier runs failed.
    Alarm { object: ObjectAddress, retry_count: u32, request_id: String, respond: Responder<()> },
    /// A Cron Trigger fired: the worker's `scheduled` handler runs.
    Scheduled { run: ScheduledRun, respond: Responder<ScheduledOutcome> },
    /// A batch of a queue the worker consumes: its `queue` handler runs.
    Queue { batch: QueueBatch, respond: Responder<QueueOutcome> },
    /// One pass of a workflow instance's `run()`, its steps answered by the
    /// run's journal.
    Workflow { run: WorkflowRun, respond: Responder<RunEnd> },
}

/// The one-shot channel an event's outcome (or the reason there is none)
/// goes back on.
pub type Responder<T> = oneshot::Sender<Result<T, DispatchError>>;

/// The Durable Object an event is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectAddress {
    pub class_name: String,
    pub id: [u8; 32],
    /// The name the id was derived from, if the caller knows it.
    pub name: Option<String>,
}

/// A method call on an object: the arguments as structured-clone bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcCall {
    pub method: String,
    pub args: Vec<u8>,
    /// The caller's request, for log lines.
    pub request_id: String,
    /// The callee's depth (see [`HttpRequest::depth`]).
    pub depth: u32,
}

/// What a method call came to, as structured-clone bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RpcOutcome {
    Returned(Vec<u8>),
    Threw(Vec<u8>),
}

/// Events waiting for the isolate.
pub struct EventQueue(pub Mutex<mpsc::UnboundedReceiver<WorkerEvent>>);

impl EventQueue {
    pub fn new(receiver: mpsc::UnboundedReceiver<WorkerEvent>) -> Self {
        Self(Mutex::new(receiver))
    }
}

/// What in-flight events are told if the isolate goes away under them.
#[derive(Clone, Default)]
pub struct AbortReason(pub Rc<RefCell<Option<DispatchError>>>);

impl AbortReason {
    pub(crate) fn get(&self) -> DispatchError {
        self.0.borrow().clone().unwrap_or(DispatchError::WorkerGone)
    }
}

/// Where one event's outcome goes.
enum Pending {
    Http(Responder<http::Response<Body>>),
    Rpc(Responder<RpcOutcome>),
    Done(Responder<()>),
    Scheduled(Responder<ScheduledOutcome>),
    Queue(Responder<QueueOutcome>),
    Workflow(Responder<RunEnd>),
}

/// An event the worker has not answered yet, as a resource its JS holds.
pub(crate) struct EventInFlight {
    pub(crate) request_id: String,
    pending: RefCell<Option<Pending>>,
    abort: AbortReason,
}

impl Drop for EventInFlight {
    fn drop(&mut self) {
        // Dropped unanswered: the isolate is being torn down.
        let reason = self.abort.get();
        self.fail(reason);
    }
}

impl Resource for EventInFlight {
    fn name(&self) -> Cow<'_, str> {
        "outpostEventInFlight".into()
    }
}

impl EventInFlight {
    /// Ends the event without an outcome. The other side may have gone
    /// away (a client that hung up); nothing to do then.
    pub(crate) fn fail(&self, reason: DispatchError) {
        match self.pending.borrow_mut().take() {
            Some(Pending::Http(respond)) => drop(respond.send(Err(reason))),
            Some(Pending::Rpc(respond)) => drop(respond.send(Err(reason))),
            Some(Pending::Done(respond)) => drop(respond.send(Err(reason))),
            Some(Pending::Scheduled(respond)) => drop(respond.send(Err(reason))),
            Some(Pending::Queue(respond)) => drop(respond.send(Err(reason))),
            Some(Pending::Workflow(respond)) => drop(respond.send(Err(reason))),
            None => {}
        }
    }

    /// Sends `outcome` on the event's responder if `pick` finds one of its
    /// kind; otherwise leaves the event as it was and errs with `not_this`.
    fn settle<T>(
        &self,
        pick: impl FnOnce(Pending) -> Result<Responder<T>, Pending>,
        outcome: T,
        not_this: &str,
    ) -> Result<(), JsErrorBox> {
        let pending = self.pending.borrow_mut().take();
        match pending.map(pick) {
            Some(Ok(respond)) => {
                let _ = respond.send(Ok(outcome));
                Ok(())
            }
            other => {
                *self.pending.borrow_mut() = other.and_then(Result::err);
                Err(JsErrorBox::type_error(not_this.to_string()))
            }
        }
    }

    /// Answers an HTTP event with `response`, or, if the worker's answer
    /// could not be made into one, fails it (a 500) and gives that error
    /// back to the worker.
    pub(crate) fn answer(&self, response: Result<http::Response<Body>, JsErrorBox>) -> Result<(), JsErrorBox> {
        let pending = self.pending.borrow_mut().take();
        let respond = match pending {
            Some(Pending::Http(respond)) => respond,
            other => {
                *self.pending.borrow_mut() = other;
                return Err(JsErrorBox::type_error("this event is not answered with a Response"));
            }
        };
        match response {
            Ok(response) => {
                let _ = respond.send(Ok(response));
                Ok(())
            }
            Err(err) => {
                let _ = respond.send(Err(DispatchError::WorkerThrew));
                Err(err)
            }
        }
    }
}

/// Takes the event `rid` out of the resource table: it is answered once.
pub(crate) fn take_event(state: &mut OpState, rid: ResourceId) -> Result<Rc<EventInFlight>, JsErrorBox> {
    state.resource_table.take::<EventInFlight>(rid).map_err(JsErrorBox::from_err)
}

/// An event as the bootstrap reads it; `kind` picks its entry.
#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum NextEvent {
    Fetch(NextRequest),
    #[serde(rename_all = "camelCase")]
    ServiceCall {
        rid: ResourceId,
        request_id: String,
        depth: u32,
        entrypoint: Option<String>,
        method: String,
        args: ToJsBuffer,
    },
    ObjectFetch {
        #[serde(flatten)]
        request: NextRequest,
        #[serde(flatten)]
        object: NextObject,
    },
    #[serde(rename_all = "camelCase")]
    ObjectCall {
        rid: ResourceId,
        request_id: String,
        depth: u32,
        #[serde(flatten)]
        object: NextObject,
        method: String,
        args: ToJsBuffer,
    },
    #[serde(rename_all = "camelCase")]
    Scheduled {
        rid: ResourceId,
        request_id: String,
        cron: String,
        scheduled_time: f64,
    },
    #[serde(rename_all = "camelCase")]
    Queue {
        rid: ResourceId,
        request_id: String,
        queue: String,
        messages: Vec<NextMessage>,
    },
    #[serde(rename_all = "camelCase")]
    Workflow {
        rid: ResourceId,
        request_id: String,
        /// The run's journal (a resource the `step` object's ops use).
        journal: ResourceId,
        workflow: String,
        class_name: String,
        instance_id: String,
        params: super::bindings::workflows::OutgoingValue,
        timestamp: f64,
    },
    #[serde(rename_all = "camelCase")]
    Alarm {
        rid: ResourceId,
        request_id: String,
        #[serde(flatten)]
        object: NextObject,
        retry_count: u32,
    },
}

/// An HTTP request as the bootstrap reads it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NextRequest {
    rid: ResourceId,
    method: String,
    url: String,
    headers: Vec<(ByteString, ByteString)>,
    body_rid: Option<ResourceId>,
    request_id: String,
    cf: Option<String>,
    depth: u32,
    /// The named export a service binding addresses (fetch events only).
    entrypoint: Option<String>,
}

/// A queue message as the bootstrap reads it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NextMessage {
    id: String,
    timestamp: f64,
    content_type: String,
    body: ToJsBuffer,
    attempts: u32,
}

impl From<QueueMessage> for NextMessage {
    fn from(message: QueueMessage) -> Self {
        NextMessage {
            id: message.id,
            timestamp: message.timestamp_ms as f64,
            content_type: message.content_type,
            body: message.body.to_vec().into(),
            attempts: message.attempts,
        }
    }
}

/// The object an event is for, as the bootstrap reads it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NextObject {
    class_name: String,
    id: String,
    name: Option<String>,
}

impl From<ObjectAddress> for NextObject {
    fn from(object: ObjectAddress) -> Self {
        NextObject { class_name: object.class_name, id: id_to_hex(&object.id), name: object.name }
    }
}

fn in_flight(state: &mut OpState, request_id: &str, pending: Pending) -> ResourceId {
    let abort = state.borrow::<AbortReason>().clone();
    state.resource_table.add(EventInFlight {
        request_id: request_id.to_string(),
        pending: RefCell::new(Some(pending)),
        abort,
    })
}

fn next_request(
    state: &mut OpState,
    request: HttpRequest,
    entrypoint: Option<String>,
    respond: Responder<http::Response<Body>>,
) -> NextRequest {
    let HttpRequest { request, url, request_id, cf, depth } = request;
    let (parts, body) = request.into_parts();
    let body_rid = incoming_body(state, body);
    let rid = in_flight(state, &request_id, Pending::Http(respond));
    NextRequest {
        rid,
        method: parts.method.to_string(),
        url,
        headers: header_list(&parts.headers),
        body_rid,
        request_id,
        cf,
        depth,
        entrypoint,
    }
}

/// Waits for the next event; `null` once the node stops sending.
#[op2]
#[serde]
pub async fn op_outpost_next_event(state: Rc<RefCell<OpState>>) -> Option<NextEvent> {
    let queue = state.borrow().try_borrow::<Rc<EventQueue>>()?.clone();
    let event = queue.0.lock().await.recv().await?;
    let mut state = state.borrow_mut();
    let state = &mut *state;
    Some(match event {
        WorkerEvent::Fetch { request, entrypoint, respond } => {
            NextEvent::Fetch(next_request(state, request, entrypoint, respond))
        }
        WorkerEvent::ServiceCall { entrypoint, call, respond } => NextEvent::ServiceCall {
            rid: in_flight(state, &call.request_id, Pending::Rpc(respond)),
            request_id: call.request_id,
            depth: call.depth,
            entrypoint,
            method: call.method,
            args: call.args.into(),
        },
        WorkerEvent::ObjectFetch { object, request, respond } => {
            NextEvent::ObjectFetch { request: next_request(state, request, None, respond), object: object.into() }
        }
        WorkerEvent::ObjectCall { object, call, respond } => NextEvent::ObjectCall {
            rid: in_flight(state, &call.request_id, Pending::Rpc(respond)),
            request_id: call.request_id,
            depth: call.depth,
            object: object.into(),
            method: call.method,
            args: call.args.into(),
        },
        WorkerEvent::Scheduled { run, respond } => NextEvent::Scheduled {
            rid: in_flight(state, &run.request_id, Pending::Scheduled(respond)),
            request_id: run.request_id,
            cron: run.cron,
            scheduled_time: run.scheduled_time_ms,
        },
        WorkerEvent::Queue { batch, respond } => NextEvent::Queue {
            rid: in_flight(state, &batch.request_id, Pending::Queue(respond)),
            request_id: batch.request_id,
            queue: batch.queue,
            messages: batch.messages.into_iter().map(NextMessage::from).collect(),
        },
        WorkerEvent::Workflow { run, respond } => {
            let WorkflowRun { workflow, class_name, instance_id, params, created_ms, request_id, journal } = run;
            NextEvent::Workflow {
                rid: in_flight(state, &request_id, Pending::Workflow(respond)),
                journal: state.resource_table.add(super::bindings::workflows::JournalResource(journal)),
                request_id,
                workflow,
                class_name,
                instance_id,
                params: params.into(),
                timestamp: created_ms as f64,
            }
        }
        WorkerEvent::Alarm { object, retry_count, request_id, respond } => NextEvent::Alarm {
            rid: in_flight(state, &request_id, Pending::Done(respond)),
            request_id,
            object: object.into(),
            retry_count,
        },
    })
}

/// An event without an outcome of its own (an alarm) ran to the end; or,
/// with `error`, any event failed: the message is logged and the event
/// fails with [`DispatchError::WorkerThrew`]. An event already answered
/// (a response went out before the failure) is left alone.
#[op2]
pub fn op_outpost_event_done(
    state: &mut OpState,
    #[smi] rid: ResourceId,
    #[string] error: Option<String>,
) -> Result<(), JsErrorBox> {
    let Some(error) = error else {
        let event = take_event(state, rid)?;
        let pending = event.pending.borrow_mut().take();
        return match pending {
            Some(Pending::Done(respond)) => {
                let _ = respond.send(Ok(()));
                Ok(())
            }
            _ => Err(JsErrorBox::type_error("this event has an outcome of its own")),
        };
    };
    let worker = state.borrow::<super::console::WorkerName>().0.clone();
    if let Ok(event) = take_event(state, rid) {
        tracing::error!(worker = %worker, request_id = %event.request_id, "uncaught exception: {error}");
        event.fail(DispatchError::WorkerThrew);
    }
    Ok(())
}

/// The worker has no handler for this kind of event: it fails with a
/// message naming the missing handler.
#[op2(fast)]
pub fn op_outpost_event_unhandled(
    state: &mut OpState,
    #[smi] rid: ResourceId,
    #[string] message: &str,
) -> Result<(), JsErrorBox> {
    take_event(state, rid)?.fail(DispatchError::NoHandler(message.to_string()));
    Ok(())
}

/// A method call returned (`threw` false) or threw: the value or the error,
/// structured-clone bytes.
#[op2(fast)]
pub fn op_outpost_rpc_return(
    state: &mut OpState,
    #[smi] rid: ResourceId,
    threw: bool,
    #[buffer] outcome: &[u8],
) -> Result<(), JsErrorBox> {
    let outcome = if threw { RpcOutcome::Threw(outcome.to_vec()) } else { RpcOutcome::Returned(outcome.to_vec()) };
    let pick = |pending| match pending {
        Pending::Rpc(respond) => Ok(respond),
        other => Err(other),
    };
    take_event(state, rid)?.settle(pick, outcome, "this event is not a method call")
}
