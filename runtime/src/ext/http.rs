//! HTTP events: the request a worker's (or an object's) `fetch` gets, the
//! response it answers with, and the body plumbing both ways. Bodies are
//! never buffered whole: request bodies are read through a resource,
//! response streams go through a bounded channel.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use deno_core::{op2, AsyncResult, BufView, ByteString, JsBuffer, OpState, Resource, ResourceId};
use deno_error::JsErrorBox;
use http_body::{Body as HttpBody, Frame};
use http_body_util::BodyExt;
pub use outpost_seam::{empty_body, full_body, Body, BoxError};
use tokio::sync::{mpsc, Mutex};

use super::console::WorkerName;
use super::events::{take_event, AbortReason};

/// How many chunks a streaming response may run ahead of the client.
/// Small on purpose: the worker's writes wait on the client (backpressure).
pub const RESPONSE_CHANNEL_CHUNKS: usize = 4;

/// The receiving half of a response body streamed out of an isolate.
pub struct ChannelBody {
    rx: mpsc::Receiver<Result<Bytes, BoxError>>,
}

impl ChannelBody {
    pub fn new() -> (mpsc::Sender<Result<Bytes, BoxError>>, Self) {
        let (tx, rx) = mpsc::channel(RESPONSE_CHANNEL_CHUNKS);
        (tx, Self { rx })
    }
}

impl HttpBody for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.rx.poll_recv(cx).map(|chunk| chunk.map(|result| result.map(Frame::data)))
    }
}

/// An HTTP request on its way into an isolate, without the channel its
/// response goes back on.
pub struct HttpRequest {
    /// Method, headers and body; the URI is ignored in favour of `url`.
    pub request: http::Request<Body>,
    /// The absolute URL the worker sees as `request.url`.
    pub url: String,
    /// Correlates the worker's log lines with the request.
    pub request_id: String,
    /// `request.cf` as JSON, if the front knows anything about the request.
    pub cf: Option<String>,
    /// Worker invocations this request is nested in: 0 from the front,
    /// one more for each worker-to-worker call (at most
    /// [`MAX_DEPTH`](super::subrequest::MAX_DEPTH)).
    pub depth: u32,
}

/// Why an event got no outcome from the worker.
#[derive(Debug, thiserror::Error, Clone)]
#[non_exhaustive]
pub enum DispatchError {
    /// The worker's handler threw, rejected or returned something that is
    /// not a `Response`. The message (with stack) is logged by the isolate.
    #[error("the worker threw an exception")]
    WorkerThrew,
    /// The worker has no handler for this kind of event; the message names
    /// the one missing.
    #[error("{0}")]
    NoHandler(String),
    /// The isolate is gone (stopped, or crashed) before it answered.
    #[error("the worker is not running")]
    WorkerGone,
    /// The isolate ran out of CPU time and was stopped.
    #[error("the worker exceeded its CPU time limit of {limit_ms} ms")]
    CpuLimitExceeded { limit_ms: u64 },
    /// The isolate ran out of wall-clock time and was stopped.
    #[error("the worker exceeded its time limit of {limit_ms} ms")]
    WallLimitExceeded { limit_ms: u64 },
    /// The isolate's heap reached its limit and the isolate was stopped.
    #[error("the worker exceeded its memory limit of {limit_mb} MiB")]
    MemoryLimitExceeded { limit_mb: u64 },
}

/// A request body, read by the worker through `readableStreamForRid`.
struct RequestBody {
    body: Mutex<Body>,
    /// Part of a frame that was larger than the reader asked for.
    leftover: RefCell<Option<Bytes>>,
}

impl Resource for RequestBody {
    fn name(&self) -> Cow<'_, str> {
        "outpostRequestBody".into()
    }

    fn read(self: Rc<Self>, limit: usize) -> AsyncResult<BufView> {
        Box::pin(async move {
            let take = |mut bytes: Bytes, this: &Self| {
                if bytes.len() > limit {
                    let rest = bytes.split_off(limit);
                    *this.leftover.borrow_mut() = Some(rest);
                }
                BufView::from(bytes)
            };
            if let Some(bytes) = self.leftover.borrow_mut().take() {
                return Ok(take(bytes, &self));
            }
            let mut body = self.body.lock().await;
            loop {
                match body.frame().await {
                    None => return Ok(BufView::empty()),
                    Some(Err(err)) => return Err(JsErrorBox::generic(format!("request body: {err}"))),
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(bytes) if bytes.is_empty() => continue,
                        Ok(bytes) => return Ok(take(bytes, &self)),
                        // Trailers carry no body bytes.
                        Err(_) => continue,
                    },
                }
            }
        })
    }
}

/// The sending half of a streamed body: a response's, or a request's to
/// another worker.
struct ResponseWriter {
    tx: mpsc::Sender<Result<Bytes, BoxError>>,
    closed: Cell<bool>,
    abort: AbortReason,
}

impl Drop for ResponseWriter {
    fn drop(&mut self) {
        // Dropped before the worker closed it: the isolate is being torn
        // down, and the client must not take the cut body for a whole one.
        if !self.closed.get() {
            let reason = self.abort.get();
            let _ = self.tx.try_send(Err(reason.to_string().into()));
        }
    }
}

impl Resource for ResponseWriter {
    fn name(&self) -> Cow<'_, str> {
        "outpostResponseWriter".into()
    }
}

/// A body a worker streams into (through a [`ResponseWriter`]) for a
/// request it sends to another worker, until that request takes it.
pub(crate) struct PipedBody(RefCell<Option<Body>>);

impl Resource for PipedBody {
    fn name(&self) -> Cow<'_, str> {
        "outpostPipedBody".into()
    }
}

/// Takes the body `rid` made by [`op_outpost_body_pipe`].
pub(crate) fn take_outgoing_body(state: &mut OpState, rid: ResourceId) -> Result<Body, JsErrorBox> {
    let body = state.resource_table.take::<PipedBody>(rid).map_err(JsErrorBox::from_err)?;
    let taken = body.0.borrow_mut().take();
    taken.ok_or_else(|| JsErrorBox::type_error("this body was already sent"))
}

/// A pipe for a request body a worker streams to another worker: returns
/// `[writer, body]`, the writer's rid (written and closed like a streamed
/// response's, with backpressure) and the body's, for the request.
#[op2]
#[serde]
pub fn op_outpost_body_pipe(state: &mut OpState) -> (ResourceId, ResourceId) {
    let (tx, body) = ChannelBody::new();
    let abort = state.borrow::<AbortReason>().clone();
    let writer = state.resource_table.add(ResponseWriter { tx, closed: Cell::new(false), abort });
    let body = state.resource_table.add(PipedBody(RefCell::new(Some(body.boxed_unsync()))));
    (writer, body)
}

/// Makes a body readable by JS (`readableStreamForRid`); `None` for a body
/// that is already known to be empty.
pub(crate) fn incoming_body(state: &mut OpState, body: Body) -> Option<ResourceId> {
    (!body.is_end_stream())
        .then(|| state.resource_table.add(RequestBody { body: Mutex::new(body), leftover: RefCell::new(None) }))
}

/// Headers from JS `(name, value)` pairs; an invalid one is a `TypeError`.
pub(crate) fn header_map(headers: Vec<(ByteString, ByteString)>) -> Result<http::HeaderMap, JsErrorBox> {
    let mut map = http::HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let name = http::HeaderName::from_bytes(&name)
            .map_err(|err| JsErrorBox::type_error(format!("invalid header name: {err}")))?;
        let value = http::HeaderValue::from_bytes(&value)
            .map_err(|err| JsErrorBox::type_error(format!("invalid header value: {err}")))?;
        map.append(name, value);
    }
    Ok(map)
}

/// Headers as JS takes them: `(name, value)` pairs.
pub(crate) fn header_list(headers: &http::HeaderMap) -> Vec<(ByteString, ByteString)> {
    headers.iter().map(|(name, value)| (ByteString::from(name.as_str()), ByteString::from(value.as_bytes()))).collect()
}

fn response_head(status: u32, headers: Vec<(ByteString, ByteString)>) -> Result<http::response::Builder, JsErrorBox> {
    let status = u16::try_from(status)
        .ok()
        .and_then(|status| http::StatusCode::from_u16(status).ok())
        .ok_or_else(|| JsErrorBox::range_error(format!("invalid response status {status}")))?;
    let mut builder = http::Response::builder().status(status);
    *builder.headers_mut().expect("builder has no error yet") = header_map(headers)?;
    Ok(builder)
}

/// Answers a request with a body known in full.
#[op2]
pub fn op_outpost_respond(
    state: &mut OpState,
    #[smi] rid: ResourceId,
    #[smi] status: u32,
    #[serde] headers: Vec<(ByteString, ByteString)>,
    #[buffer] body: JsBuffer,
) -> Result<(), JsErrorBox> {
    let in_flight = take_event(state, rid)?;
    let head = response_head(status, headers);
    in_flight.answer(head.and_then(|head| {
        head.body(full_body(Bytes::copy_from_slice(&body))).map_err(|err| JsErrorBox::type_error(err.to_string()))
    }))
}

/// Answers a request with a streamed body; returns the writer's rid.
#[op2]
#[smi]
pub fn op_outpost_respond_stream(
    state: &mut OpState,
    #[smi] rid: ResourceId,
    #[smi] status: u32,
    #[serde] headers: Vec<(ByteString, ByteString)>,
) -> Result<ResourceId, JsErrorBox> {
    let in_flight = take_event(state, rid)?;
    let (tx, body) = ChannelBody::new();
    in_flight.answer(
        response_head(status, headers)
            .and_then(|head| head.body(body.boxed_unsync()).map_err(|err| JsErrorBox::type_error(err.to_string()))),
    )?;
    let abort = state.borrow::<AbortReason>().clone();
    Ok(state.resource_table.add(ResponseWriter { tx, closed: Cell::new(false), abort }))
}

/// Writes one chunk of a streamed response; resolves to `false` once the
/// client is gone (the worker should stop producing).
#[op2]
pub async fn op_outpost_body_write(
    state: Rc<RefCell<OpState>>,
    #[smi] rid: ResourceId,
    #[buffer] chunk: JsBuffer,
) -> Result<bool, JsErrorBox> {
    let writer = state.borrow().resource_table.get::<ResponseWriter>(rid).map_err(JsErrorBox::from_err)?;
    Ok(writer.tx.send(Ok(Bytes::copy_from_slice(&chunk))).await.is_ok())
}

/// Ends a streamed response; with an error, the client sees the response cut
/// short rather than a body that looks complete.
#[op2]
pub fn op_outpost_body_close(
    state: &mut OpState,
    #[smi] rid: ResourceId,
    #[string] error: Option<String>,
) -> Result<(), JsErrorBox> {
    let writer = state.resource_table.take::<ResponseWriter>(rid).map_err(JsErrorBox::from_err)?;
    writer.closed.set(true);
    if let Some(error) = error {
        let worker = state.borrow::<WorkerName>().0.clone();
        tracing::error!(worker = %worker, "response body stream failed: {error}");
        let _ = writer.tx.try_send(Err(error.into()));
    }
    Ok(())
}
