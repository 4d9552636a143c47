//! Accounting of requests in flight: a guard that counts a request until
//! its response body is done, the body that holds it, and when an isolate
//! was last used. Atomics only: finishing a request takes no lock.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use outpost_runtime::{Body, BoxError};

/// Counts a request as in flight until its response body is done.
pub(crate) struct InFlightGuard {
    pub(crate) counter: Arc<AtomicUsize>,
    pub(crate) thread_counter: Arc<AtomicUsize>,
    pub(crate) completed: Arc<AtomicU64>,
    pub(crate) last_used: LastUsed,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        // Touched first: an isolate never looks idle with a stale time.
        self.last_used.touch();
        self.completed.fetch_add(1, Ordering::Relaxed);
        self.counter.fetch_sub(1, Ordering::Relaxed);
        self.thread_counter.fetch_sub(1, Ordering::Relaxed);
    }
}

/// When an isolate last took or finished a request. Atomic, so finishing a
/// request (every response) does not take the pool's lock.
#[derive(Clone)]
pub(crate) struct LastUsed {
    epoch: Instant,
    /// Milliseconds after `epoch`.
    millis: Arc<AtomicU64>,
}

impl LastUsed {
    pub(crate) fn new(epoch: Instant) -> Self {
        let last_used = LastUsed { epoch, millis: Arc::new(AtomicU64::new(0)) };
        last_used.touch();
        last_used
    }

    pub(crate) fn touch(&self) {
        self.millis.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> Instant {
        self.epoch + Duration::from_millis(self.millis.load(Ordering::Relaxed))
    }

    /// Time since the isolate last took or finished a request.
    pub(crate) fn elapsed(&self) -> Duration {
        self.get().elapsed()
    }
}

/// A response body that holds its request's in-flight guard.
pub(crate) struct GuardedBody {
    pub(crate) body: Body,
    pub(crate) _guard: InFlightGuard,
}

impl HttpBody for GuardedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
