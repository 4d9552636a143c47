//! The types a request and its response travel in between the HTTP front
//! (any thread) and an isolate (its own thread), and the body plumbing.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use tokio::sync::{mpsc, oneshot};

/// Errors carried inside bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A streaming HTTP body that can cross threads.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// An empty body.
pub fn empty_body() -> Body {
    http_body_util::Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A body of one chunk that is known up front (so `content-length` is exact).
pub fn full_body(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

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

/// A request on its way into an isolate.
pub struct WorkerRequest {
    /// Method, headers and body; the URI is ignored in favour of `url`.
    pub request: http::Request<Body>,
    /// The absolute URL the worker sees as `request.url`.
    pub url: String,
    /// Correlates the worker's log lines with the request.
    pub request_id: String,
    /// Where the response (or the reason there is none) goes.
    pub respond: Responder,
    /// Set when the request is for a Durable Object hosted by the isolate
    /// rather than for the worker's `fetch` handler.
    pub object: Option<super::objects::ObjectCall>,
    /// `request.cf` as JSON, if the front knows anything about the request.
    pub cf: Option<String>,
}

/// The one-shot channel a request's outcome goes back on.
pub type Responder = oneshot::Sender<Result<http::Response<Body>, DispatchError>>;

/// Why a request got no response from the worker.
#[derive(Debug, thiserror::Error, Clone)]
#[non_exhaustive]
pub enum DispatchError {
    /// The worker's handler threw, rejected or returned something that is
    /// not a `Response`. The message (with stack) is logged by the isolate.
    #[error("the worker threw an exception")]
    WorkerThrew,
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
    /// Too many requests are already waiting for this worker.
    #[error("the worker is overloaded")]
    Overloaded,
}
