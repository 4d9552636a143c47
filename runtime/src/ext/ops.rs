//! Ops behind the worker's request loop, console and bundled wasm.
//!
//! The request loop is pull-based: the bootstrap script awaits
//! `op_outpost_next_request` in a loop and hands each request to the
//! worker's handler without awaiting it, so concurrent requests interleave on
//! the isolate while they wait on I/O.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use deno_core::error::ResourceError;
use deno_core::{op2, v8, AsyncResult, BufView, ByteString, JsBuffer, OpState, Resource, ResourceId};
use deno_error::JsErrorBox;
use http_body::Body as _;
use http_body_util::BodyExt;
use serde::Serialize;
use tokio::sync::{mpsc, Mutex};

use super::http::{Body, BoxError, ChannelBody, DispatchError, Responder, WorkerRequest};
use super::objects::{id_to_hex, ObjectCall, ObjectEvent};

/// The worker's name, for log lines.
#[derive(Clone)]
pub struct WorkerName(pub Arc<str>);

/// Requests waiting for the isolate.
pub struct RequestQueue(pub Mutex<mpsc::UnboundedReceiver<WorkerRequest>>);

impl RequestQueue {
    pub fn new(receiver: mpsc::UnboundedReceiver<WorkerRequest>) -> Self {
        Self(Mutex::new(receiver))
    }
}

/// The bytes of the bundle's `.wasm` modules, by URL, filled in by the module
/// loader and compiled on import by [`op_outpost_wasm_module`].
#[derive(Clone, Default)]
pub struct WasmSources(pub Rc<RefCell<HashMap<String, Bytes>>>);

thread_local! {
    /// Whether wasm may be compiled from bytes right now. Workers may not do
    /// it (as on Cloudflare); only the runtime does, for bundled modules.
    static WASM_CODEGEN_ALLOWED: Cell<bool> = const { Cell::new(false) };
}

/// V8 asks this before compiling wasm from bytes.
pub unsafe extern "C" fn allow_wasm_code_generation(
    _context: v8::Local<v8::Context>,
    _source: v8::Local<v8::String>,
) -> bool {
    WASM_CODEGEN_ALLOWED.with(Cell::get)
}

/// What in-flight requests are told if the isolate goes away under them.
#[derive(Clone, Default)]
pub struct AbortReason(pub Rc<RefCell<Option<DispatchError>>>);

/// A request the worker has not answered yet.
pub(crate) struct InFlight {
    request_id: String,
    respond: RefCell<Option<Responder>>,
    abort: AbortReason,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // Dropped unanswered: the isolate is being torn down.
        if let Some(respond) = self.respond.get_mut().take() {
            let reason = self.abort.0.borrow().clone().unwrap_or(DispatchError::WorkerGone);
            let _ = respond.send(Err(reason));
        }
    }
}

impl Resource for InFlight {
    fn name(&self) -> Cow<'_, str> {
        "outpostInFlightRequest".into()
    }
}

impl InFlight {
    pub(crate) fn send(&self, result: Result<http::Response<Body>, DispatchError>) {
        if let Some(respond) = self.respond.borrow_mut().take() {
            // The client may have gone away; nothing to do then.
            let _ = respond.send(result);
        }
    }

    /// Answers with `response`, or, if the worker's answer could not be
    /// made into one, with a worker error (a 500) and gives that error back
    /// to the worker.
    pub(crate) fn answer(&self, response: Result<http::Response<Body>, JsErrorBox>) -> Result<(), JsErrorBox> {
        match response {
            Ok(response) => {
                self.send(Ok(response));
                Ok(())
            }
            Err(err) => {
                self.send(Err(DispatchError::WorkerThrew));
                Err(err)
            }
        }
    }
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

/// The sending half of a streamed response body.
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
            let reason = self.abort.0.borrow().clone().unwrap_or(DispatchError::WorkerGone);
            let _ = self.tx.try_send(Err(reason.to_string().into()));
        }
    }
}

impl Resource for ResponseWriter {
    fn name(&self) -> Cow<'_, str> {
        "outpostResponseWriter".into()
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NextRequest {
    rid: ResourceId,
    method: String,
    url: String,
    headers: Vec<(ByteString, ByteString)>,
    body_rid: Option<ResourceId>,
    request_id: String,
    object: Option<ObjectTarget>,
    cf: Option<String>,
}

/// The object a request is for, as the bootstrap reads it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectTarget {
    class_name: String,
    id: String,
    name: Option<String>,
    /// `"fetch"`, `"call"` or `"alarm"`.
    kind: &'static str,
    method: Option<String>,
    /// The arguments of a call, structured-clone bytes.
    args: Option<deno_core::ToJsBuffer>,
    retry_count: u32,
}

impl From<ObjectCall> for ObjectTarget {
    fn from(call: ObjectCall) -> Self {
        let (kind, method, args, retry_count) = match call.event {
            ObjectEvent::Fetch => ("fetch", None, None, 0),
            ObjectEvent::Call { method, args } => ("call", Some(method), Some(args.into()), 0),
            ObjectEvent::Alarm { retry_count } => ("alarm", None, None, retry_count),
        };
        ObjectTarget {
            class_name: call.class_name,
            id: id_to_hex(&call.id),
            name: call.name,
            kind,
            method,
            args,
            retry_count,
        }
    }
}

/// Makes a body readable by JS (`readableStreamForRid`); `None` for a body
/// that is already known to be empty.
pub(crate) fn incoming_body(state: &mut OpState, body: Body) -> Option<ResourceId> {
    (!body.is_end_stream())
        .then(|| state.resource_table.add(RequestBody { body: Mutex::new(body), leftover: RefCell::new(None) }))
}

/// Waits for the next request; `null` once the node stops sending.
#[op2]
#[serde]
pub async fn op_outpost_next_request(state: Rc<RefCell<OpState>>) -> Option<NextRequest> {
    let queue = state.borrow().try_borrow::<Rc<RequestQueue>>()?.clone();
    let next = queue.0.lock().await.recv().await?;
    let WorkerRequest { request, url, request_id, respond, object, cf } = next;
    let (parts, body) = request.into_parts();
    let headers = header_list(&parts.headers);
    let mut state = state.borrow_mut();
    let body_rid = incoming_body(&mut state, body);
    let abort = state.borrow::<AbortReason>().clone();
    let rid = state.resource_table.add(InFlight {
        request_id: request_id.clone(),
        respond: RefCell::new(Some(respond)),
        abort,
    });
    Some(NextRequest {
        rid,
        method: parts.method.to_string(),
        url,
        headers,
        body_rid,
        request_id,
        object: object.map(ObjectTarget::from),
        cf,
    })
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

pub(crate) fn take_in_flight(state: &mut OpState, rid: ResourceId) -> Result<Rc<InFlight>, ResourceError> {
    state.resource_table.take::<InFlight>(rid)
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
    let in_flight = take_in_flight(state, rid).map_err(JsErrorBox::from_err)?;
    let head = response_head(status, headers);
    in_flight.answer(head.and_then(|head| {
        head.body(super::http::full_body(Bytes::copy_from_slice(&body)))
            .map_err(|err| JsErrorBox::type_error(err.to_string()))
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
    let in_flight = take_in_flight(state, rid).map_err(JsErrorBox::from_err)?;
    let (tx, body) = ChannelBody::new();
    in_flight.answer(
        response_head(status, headers)
            .and_then(|head| head.body(body.boxed_unsync()).map_err(|err| JsErrorBox::type_error(err.to_string()))),
    )?;
    let abort = state.borrow::<AbortReason>().clone();
    Ok(state.resource_table.add(ResponseWriter { tx, closed: Cell::new(false), abort }))
}

/// The worker failed to produce a response: log why, answer 500.
#[op2(fast)]
pub fn op_outpost_respond_error(state: &mut OpState, #[smi] rid: ResourceId, #[string] error: &str) {
    let worker = state.borrow::<WorkerName>().0.clone();
    if let Ok(in_flight) = take_in_flight(state, rid) {
        tracing::error!(worker = %worker, request_id = %in_flight.request_id, "uncaught exception: {error}");
        in_flight.send(Err(DispatchError::WorkerThrew));
    }
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

/// The longest console line written, in bytes; longer ones are cut. The
/// bootstrap already cuts lines to 16 Ki characters before they leave V8,
/// which is at most this many bytes of UTF-8 with its note.
pub const MAX_LOG_LINE_BYTES: usize = 64 * 1024 + 64;

/// How much console output one worker may write, across all its isolates:
/// a token bucket for lines and one for bytes. Output past it is dropped and
/// counted, and the count is logged once output is allowed again, so one
/// tenant cannot flood the node's log (or push others' lines out of it).
#[derive(Debug, Clone)]
pub struct LogBudget {
    lines: f64,
    bytes: f64,
    refilled_at: std::time::Instant,
    dropped: u64,
}

/// A worker's log budget, shared by its isolates (on any thread).
#[derive(Debug, Clone)]
pub struct SharedLogBudget(pub Arc<std::sync::Mutex<LogBudget>>);

impl Default for SharedLogBudget {
    fn default() -> Self {
        SharedLogBudget(Arc::new(std::sync::Mutex::new(LogBudget::new(std::time::Instant::now()))))
    }
}

/// Lines a burst may have, and lines per second after it.
const LOG_BURST_LINES: f64 = 1_000.0;
const LOG_LINES_PER_SECOND: f64 = 200.0;
/// Bytes a burst may have, and bytes per second after it.
const LOG_BURST_BYTES: f64 = 1024.0 * 1024.0;
const LOG_BYTES_PER_SECOND: f64 = 256.0 * 1024.0;

/// What the budget says of one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogAdmission {
    /// Write it; `dropped` lines were dropped since the last one written.
    Write {
        dropped: u64,
    },
    Drop,
}

impl LogBudget {
    pub fn new(now: std::time::Instant) -> Self {
        LogBudget { lines: LOG_BURST_LINES, bytes: LOG_BURST_BYTES, refilled_at: now, dropped: 0 }
    }

    /// Decides whether a line of `len` bytes may be written at `now`. Pure
    /// but for the budget itself.
    pub fn admit(&mut self, now: std::time::Instant, len: usize) -> LogAdmission {
        let seconds = now.saturating_duration_since(self.refilled_at).as_secs_f64();
        self.refilled_at = now;
        self.lines = (self.lines + seconds * LOG_LINES_PER_SECOND).min(LOG_BURST_LINES);
        self.bytes = (self.bytes + seconds * LOG_BYTES_PER_SECOND).min(LOG_BURST_BYTES);
        let len = len as f64;
        if self.lines < 1.0 || self.bytes < len {
            self.dropped += 1;
            return LogAdmission::Drop;
        }
        self.lines -= 1.0;
        self.bytes -= len;
        LogAdmission::Write { dropped: std::mem::take(&mut self.dropped) }
    }
}

/// Cuts `message` to at most `max` bytes, at a character boundary.
pub fn truncate_log_line(message: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if message.len() <= max {
        return message.into();
    }
    let mut end = max;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... [cut: {} bytes in all]", &message[..end], message.len()).into()
}

/// `console.*` from the worker, at deno's console levels (0 debug, 1 log and
/// info, 2 warn, 3 error, 4 trace), within the worker's [`LogBudget`].
#[op2(fast)]
pub fn op_outpost_log(state: &mut OpState, #[smi] level: u32, #[string] message: &str, #[string] request_id: &str) {
    let message = message.strip_suffix('\n').unwrap_or(message);
    let message = truncate_log_line(message, MAX_LOG_LINE_BYTES);
    let now = std::time::Instant::now();
    let admission = state
        .try_borrow::<SharedLogBudget>()
        .map_or(LogAdmission::Write { dropped: 0 }, |budget| budget.0.lock().unwrap().admit(now, message.len()));
    let worker = &state.borrow::<WorkerName>().0;
    let LogAdmission::Write { dropped } = admission else { return };
    if dropped > 0 {
        tracing::warn!(target: "worker", worker = %worker, "{dropped} console lines dropped: over the worker's log rate");
    }
    match level {
        0 => tracing::debug!(target: "worker", worker = %worker, request_id, "{message}"),
        1 => tracing::info!(target: "worker", worker = %worker, request_id, "{message}"),
        2 => tracing::warn!(target: "worker", worker = %worker, request_id, "{message}"),
        _ => tracing::error!(target: "worker", worker = %worker, request_id, "{message}"),
    }
}

/// Compiles a `.wasm` module of the bundle into a `WebAssembly.Module`.
#[op2]
pub fn op_outpost_wasm_module<'s>(
    scope: &mut v8::PinScope<'s, '_>,
    #[string] url: &str,
) -> Result<v8::Local<'s, v8::Value>, JsErrorBox> {
    let state = deno_core::JsRuntime::op_state_from(scope);
    let bytes = state
        .borrow()
        .try_borrow::<WasmSources>()
        .and_then(|sources| sources.0.borrow().get(url).cloned())
        .ok_or_else(|| JsErrorBox::type_error(format!("no wasm module {url} in this worker's bundle")))?;
    WASM_CODEGEN_ALLOWED.with(|allowed| allowed.set(true));
    let module = v8::WasmModuleObject::compile(scope, &bytes);
    WASM_CODEGEN_ALLOWED.with(|allowed| allowed.set(false));
    module
        .map(Into::into)
        .ok_or_else(|| JsErrorBox::new("CompileError", format!("{url} is not a valid WebAssembly module")))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn console_output_is_rate_limited_and_counts_what_it_drops() {
        let start = Instant::now();
        let mut budget = LogBudget::new(start);
        for _ in 0..1_000 {
            assert_eq!(budget.admit(start, 10), LogAdmission::Write { dropped: 0 });
        }
        assert_eq!(budget.admit(start, 10), LogAdmission::Drop);
        assert_eq!(budget.admit(start, 10), LogAdmission::Drop);
        // A second later, 200 more lines; the first says what was dropped.
        let later = start + Duration::from_secs(1);
        assert_eq!(budget.admit(later, 10), LogAdmission::Write { dropped: 2 });
        for _ in 0..199 {
            assert_eq!(budget.admit(later, 10), LogAdmission::Write { dropped: 0 });
        }
        assert_eq!(budget.admit(later, 10), LogAdmission::Drop);
    }

    #[test]
    fn bytes_are_budgeted_too() {
        let start = Instant::now();
        let mut budget = LogBudget::new(start);
        assert_eq!(budget.admit(start, 600 * 1024), LogAdmission::Write { dropped: 0 });
        assert_eq!(budget.admit(start, 600 * 1024), LogAdmission::Drop);
        assert_eq!(budget.admit(start + Duration::from_secs(1), 600 * 1024), LogAdmission::Write { dropped: 1 });
    }

    #[test]
    fn long_lines_are_cut_at_a_character() {
        assert_eq!(truncate_log_line("short", 10), "short");
        let cut = truncate_log_line("ééééé", 3);
        assert_eq!(cut, "é... [cut: 10 bytes in all]");
    }
}
