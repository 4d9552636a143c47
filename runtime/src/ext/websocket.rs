//! Ops behind the server end of a `WebSocketPair`.
//!
//! A worker answers `101` with the client end; the response carries one
//! end of an in-memory byte pipe (`tokio::io::DuplexStream`, in the
//! response's extensions) that the front joins to the upgraded connection.
//! The WebSocket protocol runs here, on the other end of the pipe, so the
//! front only moves bytes and knows nothing of frames.
//!
//! A Durable Object can answer a stub's `fetch` with such a response; the
//! calling worker then holds the pipe's front end as a [`ForwardedSocket`]
//! and returns it in its own 101 response, so the client talks straight to
//! the object's socket.

use std::borrow::Cow;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use deno_core::futures::stream::{SplitSink, SplitStream};
use deno_core::futures::{SinkExt as _, StreamExt as _};
use deno_core::{op2, ByteString, CancelFuture as _, JsBuffer, OpState, Resource, ResourceId};
use deno_error::JsErrorBox;
use serde::Serialize;
use tokio::io::DuplexStream;
use tokio_tungstenite::tungstenite::error::{Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub use outpost_seam::UpgradePipe;

use super::events::take_event;
use super::http::{empty_body, header_map};

/// What an isolate and the pool that runs it tell each other besides
/// requests.
#[derive(Debug, Default)]
pub struct IsolateSignals {
    /// WebSockets the isolate serves now. Their requests are answered (the
    /// `101` went out), so they do not count as in flight, yet an isolate
    /// with open sockets is busy: evicting it would cut them, and for an
    /// object host would let a second instance of its objects start.
    pub open_sockets: std::sync::atomic::AtomicUsize,
    /// Events delivered to the isolate other than requests (WebSocket
    /// messages). Each one refills the isolate's CPU budget, as a finished
    /// request does.
    pub events: std::sync::atomic::AtomicU64,
    /// Set (with [`IsolateSignals::go_away`]) when the isolate is retired
    /// (a redeploy, an eviction) or the node shuts down, as opposed to a
    /// per-request isolate that got its one request: the isolate then
    /// closes its WebSockets (1001, going away), those open and any opened
    /// later, instead of serving them until the clients leave.
    going_away: std::sync::atomic::AtomicBool,
    going_away_changed: tokio::sync::Notify,
}

impl IsolateSignals {
    pub fn go_away(&self) {
        self.going_away.store(true, Ordering::SeqCst);
        self.going_away_changed.notify_waiters();
    }

    /// Whether the isolate was retired or the node is shutting down.
    pub fn is_going_away(&self) -> bool {
        self.going_away.load(Ordering::SeqCst)
    }

    async fn gone_away(&self) {
        loop {
            let changed = self.going_away_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.is_going_away() {
                return;
            }
            changed.await;
        }
    }
}

/// Bytes the pipe between the front and the socket buffers each way.
const PIPE_BYTES: usize = 64 * 1024;
/// Largest message a worker is sent (as on Cloudflare: 1 MiB).
const MAX_MESSAGE_BYTES: usize = 1 << 20;

struct ServerSocket {
    sink: tokio::sync::Mutex<SplitSink<WebSocketStream<DuplexStream>, Message>>,
    stream: tokio::sync::Mutex<SplitStream<WebSocketStream<DuplexStream>>>,
    /// Closing the resource ends a wait for the next message.
    cancel: deno_core::CancelHandle,
    _open: OpenSocket,
}

/// Counts a socket in [`IsolateSignals::open_sockets`] while it lives.
struct OpenSocket(Option<Arc<IsolateSignals>>);

impl OpenSocket {
    fn new(state: &OpState) -> OpenSocket {
        let signals = state.try_borrow::<Arc<IsolateSignals>>().cloned();
        if let Some(signals) = &signals {
            signals.open_sockets.fetch_add(1, Ordering::Relaxed);
        }
        OpenSocket(signals)
    }
}

impl Drop for OpenSocket {
    fn drop(&mut self) {
        if let Some(signals) = &self.0 {
            signals.open_sockets.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Resolves when the isolate must close its WebSockets (see
/// [`IsolateSignals::go_away`]); never, without signals.
#[op2]
pub async fn op_outpost_going_away(state: Rc<RefCell<OpState>>) {
    let signals = state.borrow().try_borrow::<Arc<IsolateSignals>>().cloned();
    match signals {
        Some(signals) => signals.gone_away().await,
        None => std::future::pending().await,
    }
}

impl Resource for ServerSocket {
    fn name(&self) -> Cow<'_, str> {
        "outpostWebSocket".into()
    }

    fn close(self: Rc<Self>) {
        self.cancel.cancel();
    }
}

/// Answers a request with `101 Switching Protocols` and returns the rid of
/// the server end of the socket.
#[op2]
#[smi]
pub async fn op_outpost_respond_websocket(
    state: Rc<RefCell<OpState>>,
    #[smi] rid: ResourceId,
    #[serde] headers: Vec<(ByteString, ByteString)>,
    #[string] key: String,
) -> Result<ResourceId, JsErrorBox> {
    let in_flight = take_event(&mut state.borrow_mut(), rid)?;
    let (front, ours) = tokio::io::duplex(PIPE_BYTES);
    let pipe = UpgradePipe::new(front);
    // Counted before the 101 goes out: the request stops counting as in
    // flight then, and the isolate must not look idle meanwhile.
    let open = OpenSocket::new(&state.borrow());
    in_flight.answer(upgrade_response(headers, &key, pipe))?;
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES));
    let socket = WebSocketStream::from_raw_socket(ours, Role::Server, Some(config)).await;
    let (sink, stream) = socket.split();
    let mut state = state.borrow_mut();
    let socket = ServerSocket {
        sink: tokio::sync::Mutex::new(sink),
        stream: tokio::sync::Mutex::new(stream),
        cancel: deno_core::CancelHandle::new(),
        _open: open,
    };
    Ok(state.resource_table.add(socket))
}

/// A `101` response carrying `pipe`, its accept header derived from `key`
/// (the answered request's `Sec-WebSocket-Key`; the front makes one up for
/// HTTP/2).
fn upgrade_response(
    headers: Vec<(ByteString, ByteString)>,
    key: &str,
    pipe: UpgradePipe,
) -> Result<http::Response<super::http::Body>, JsErrorBox> {
    if key.is_empty() {
        return Err(JsErrorBox::type_error("a WebSocket response needs a request with a Sec-WebSocket-Key header"));
    }
    let mut map = header_map(headers)?;
    map.insert(http::header::UPGRADE, http::HeaderValue::from_static("websocket"));
    map.insert(http::header::CONNECTION, http::HeaderValue::from_static("upgrade"));
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    map.insert(
        http::header::SEC_WEBSOCKET_ACCEPT,
        http::HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
    );
    let mut response = http::Response::new(empty_body());
    *response.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
    *response.headers_mut() = map;
    response.extensions_mut().insert(pipe);
    Ok(response)
}

/// The front end of a socket that another isolate serves: a Durable
/// Object's answer to a stub's `fetch`, held until the worker returns it in
/// a response (or drops it, which closes the object's socket).
pub(crate) struct ForwardedSocket(pub(crate) UpgradePipe);

impl Resource for ForwardedSocket {
    fn name(&self) -> Cow<'_, str> {
        "outpostForwardedWebSocket".into()
    }
}

/// Answers a request with `101 Switching Protocols` joined to a socket a
/// Durable Object serves (`socket`, from a stub's `fetch`).
#[op2]
pub fn op_outpost_respond_forwarded_websocket(
    state: &mut OpState,
    #[smi] rid: ResourceId,
    #[smi] socket: ResourceId,
    #[serde] headers: Vec<(ByteString, ByteString)>,
    #[string] key: String,
) -> Result<(), JsErrorBox> {
    // The socket first: whatever fails next, it is not left behind.
    let forwarded = state.resource_table.take::<ForwardedSocket>(socket).map_err(JsErrorBox::from_err)?;
    let in_flight = take_event(state, rid)?;
    in_flight.answer(upgrade_response(headers, &key, forwarded.0.clone()))
}

/// What arrived on a socket.
#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Incoming {
    Text { data: String },
    Binary { data: deno_core::ToJsBuffer },
    Close { code: u16, reason: String, clean: bool },
}

/// Waits for the next message (pings are answered underneath). A close
/// from the client is echoed; a protocol violation, a text message that is
/// not UTF-8 or one over the size limit closes the socket with 1002, 1007
/// or 1009, as RFC 6455 says.
#[op2]
#[serde]
pub async fn op_outpost_ws_next(state: Rc<RefCell<OpState>>, #[smi] rid: ResourceId) -> Result<Incoming, JsErrorBox> {
    let socket = state.borrow().resource_table.get::<ServerSocket>(rid).map_err(JsErrorBox::from_err)?;
    let mut stream = socket.stream.lock().await;
    loop {
        let next = match stream.next().or_cancel(deno_core::RcRef::map(socket.clone(), |s| &s.cancel)).await {
            Ok(next) => next,
            Err(_) => return Ok(Incoming::Close { code: 1006, reason: "closed".into(), clean: false }),
        };
        let incoming = match next {
            Some(Ok(Message::Text(text))) => Incoming::Text { data: text.to_string() },
            Some(Ok(Message::Binary(bytes))) => Incoming::Binary { data: bytes.to_vec().into() },
            Some(Ok(Message::Close(frame))) => {
                // tungstenite has queued the echo of the client's close
                // frame; it leaves with the next flush.
                socket.flush_for_close().await;
                match frame {
                    Some(frame) => {
                        Incoming::Close { code: frame.code.into(), reason: frame.reason.to_string(), clean: true }
                    }
                    None => Incoming::Close { code: 1005, reason: String::new(), clean: true },
                }
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Err(err)) => {
                let code = close_code_for(&err);
                if let Some(code) = code {
                    let frame = CloseFrame { code, reason: close_reason(&err).into() };
                    socket.send_for_close(Message::Close(Some(frame))).await;
                }
                Incoming::Close { code: code.map_or(1006, u16::from), reason: err.to_string(), clean: false }
            }
            None => Incoming::Close { code: 1006, reason: "the connection closed".into(), clean: false },
        };
        if matches!(incoming, Incoming::Text { .. } | Incoming::Binary { .. }) {
            if let Some(signals) = state.borrow().try_borrow::<Arc<IsolateSignals>>() {
                signals.events.fetch_add(1, Ordering::Relaxed);
            }
        }
        return Ok(incoming);
    }
}

/// How long the runtime waits to send a close frame of its own (an echo, or
/// a protocol error's) to a client that may have stopped reading.
const CLOSE_SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl ServerSocket {
    async fn flush_for_close(&self) {
        let flushed = async { self.sink.lock().await.flush().await };
        let _ = tokio::time::timeout(CLOSE_SEND_TIMEOUT, flushed).await;
    }

    async fn send_for_close(&self, message: Message) {
        let sent = async { self.sink.lock().await.send(message).await };
        let _ = tokio::time::timeout(CLOSE_SEND_TIMEOUT, sent).await;
    }
}

/// The close code RFC 6455 gives a client's error; `None` where the
/// connection itself failed and no frame can be sent.
fn close_code_for(err: &WsError) -> Option<CloseCode> {
    match err {
        WsError::Capacity(_) => Some(CloseCode::Size),
        WsError::Utf8(_) => Some(CloseCode::Invalid),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => None,
        WsError::Protocol(_) => Some(CloseCode::Protocol),
        _ => None,
    }
}

/// A close reason, short enough for a control frame (123 bytes).
fn close_reason(err: &WsError) -> &'static str {
    match err {
        WsError::Capacity(_) => "message too big",
        WsError::Utf8(_) => "invalid UTF-8 in a text message",
        _ => "protocol error",
    }
}

async fn send(state: &Rc<RefCell<OpState>>, rid: ResourceId, message: Message) -> Result<(), JsErrorBox> {
    let socket = state.borrow().resource_table.get::<ServerSocket>(rid).map_err(JsErrorBox::from_err)?;
    let cancel = deno_core::RcRef::map(socket.clone(), |s| &s.cancel);
    // Closing the socket also ends a send stuck on a client that stopped reading.
    let sent = async {
        let mut sink = socket.sink.lock().await;
        sink.send(message).await
    }
    .or_cancel(cancel)
    .await;
    match sent {
        Ok(result) => result.map_err(|err| JsErrorBox::generic(format!("WebSocket send failed: {err}"))),
        Err(_) => Err(JsErrorBox::generic("WebSocket send failed: the socket is closed")),
    }
}

#[op2]
pub async fn op_outpost_ws_send_text(
    state: Rc<RefCell<OpState>>,
    #[smi] rid: ResourceId,
    #[string] text: String,
) -> Result<(), JsErrorBox> {
    send(&state, rid, Message::text(text)).await
}

#[op2]
pub async fn op_outpost_ws_send_binary(
    state: Rc<RefCell<OpState>>,
    #[smi] rid: ResourceId,
    #[buffer] data: JsBuffer,
) -> Result<(), JsErrorBox> {
    send(&state, rid, Message::Binary(Bytes::copy_from_slice(&data))).await
}

/// Starts the closing handshake.
#[op2]
pub async fn op_outpost_ws_close(
    state: Rc<RefCell<OpState>>,
    #[smi] rid: ResourceId,
    #[smi] code: u16,
    #[string] reason: String,
) -> Result<(), JsErrorBox> {
    let frame = CloseFrame { code: CloseCode::from(code), reason: reason.into() };
    match send(&state, rid, Message::Close(Some(frame))).await {
        // Closing a socket the other side already closed is not an error.
        Ok(()) | Err(_) => Ok(()),
    }
}
