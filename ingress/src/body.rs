//! Wrappers around what a client sends: a request body with a size limit
//! and a read timeout that remembers how the client failed, and a
//! connection that must send its first byte in time.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};

use crate::handler::BoxError;

/// How a request body failed on the client's side. When the worker then
/// fails, the client is told this rather than "the worker threw".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientBodyFault {
    /// Not valid HTTP framing (bad chunked encoding, a short body).
    Malformed,
    /// Past `max_body_bytes`.
    TooLarge,
    /// Nothing arrived for `body_read_timeout`.
    Stalled,
}

impl ClientBodyFault {
    pub(crate) fn status(self) -> http::StatusCode {
        match self {
            ClientBodyFault::Malformed => http::StatusCode::BAD_REQUEST,
            ClientBodyFault::TooLarge => http::StatusCode::PAYLOAD_TOO_LARGE,
            ClientBodyFault::Stalled => http::StatusCode::REQUEST_TIMEOUT,
        }
    }

    pub(crate) fn message(self) -> &'static str {
        match self {
            ClientBodyFault::Malformed => "malformed request body",
            ClientBodyFault::TooLarge => "request body too large",
            ClientBodyFault::Stalled => "request body timed out",
        }
    }
}

/// Where a body records its fault for the request's handling to read.
#[derive(Debug, Clone, Default)]
pub(crate) struct FaultSlot(Arc<OnceLock<ClientBodyFault>>);

impl FaultSlot {
    pub(crate) fn get(&self) -> Option<ClientBodyFault> {
        self.0.get().copied()
    }

    fn set(&self, fault: ClientBodyFault) {
        let _ = self.0.set(fault);
    }
}

/// A request body with a size limit and a read timeout: a client that
/// sends too much, or stops sending, fails its own request without holding
/// a worker forever.
pub(crate) struct GuardedBody<B> {
    body: B,
    fault: FaultSlot,
    limit: u64,
    received: u64,
    timeout: Duration,
    /// Armed the first time the reader has to wait: a body nobody reads (a
    /// GET's) costs no timer.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<B> GuardedBody<B> {
    pub(crate) fn new(body: B, limit: u64, timeout: Duration, fault: FaultSlot) -> Self {
        GuardedBody { body, fault, limit, received: 0, timeout, deadline: None }
    }
}

impl<B> HttpBody for GuardedBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.received += data.len() as u64;
                    if self.received > self.limit {
                        self.fault.set(ClientBodyFault::TooLarge);
                        let limit = self.limit;
                        return Poll::Ready(Some(Err(format!("request body over the limit of {limit} bytes").into())));
                    }
                }
                let timeout = self.timeout;
                if let Some(deadline) = self.deadline.as_mut() {
                    deadline.as_mut().reset(tokio::time::Instant::now() + timeout);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => {
                self.fault.set(ClientBodyFault::Malformed);
                Poll::Ready(Some(Err(err.into())))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let timeout = self.timeout;
                let deadline = self.deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if deadline.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.fault.set(ClientBodyFault::Stalled);
                let seconds = timeout.as_secs_f64();
                Poll::Ready(Some(Err(format!("request body: nothing received for {seconds} s").into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A connection whose reads fail if its first bytes do not arrive within
/// the deadline. hyper's head timeout starts only once a request has begun,
/// and the automatic HTTP/1-or-2 detection waits without one for up to the
/// 24 bytes of the HTTP/2 preface, so a client that connects and says
/// nothing, or a byte or two, would hold its place forever. Once that many
/// bytes (or a whole short request) have come, hyper's own timeouts apply.
pub(crate) struct FirstByteDeadline<I> {
    io: I,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    received: usize,
}

/// The length of the HTTP/2 connection preface, which hyper-util reads
/// whole before it knows which protocol a cleartext connection speaks.
const PREFACE_BYTES: usize = 24;

impl<I> FirstByteDeadline<I> {
    pub(crate) fn new(io: I, timeout: Duration) -> Self {
        FirstByteDeadline { io, deadline: Some(Box::pin(tokio::time::sleep(timeout))), received: 0 }
    }
}

impl<I: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for FirstByteDeadline<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        let Some(deadline) = self.deadline.as_mut() else { return polled };
        match polled {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                self.received += buf.filled().len() - before;
                if self.received >= PREFACE_BYTES {
                    self.deadline = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if deadline.as_mut().poll(cx).is_ready() => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client sent nothing after connecting",
            ))),
            other => other,
        }
    }
}

impl<I: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for FirstByteDeadline<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
