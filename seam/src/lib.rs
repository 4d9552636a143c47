//! The types that cross the seam between Outpost's HTTP front (`ingress`)
//! and what answers its requests (the runtime, through the node): a
//! streaming body, the error box inside it, and the in-memory pipe a
//! WebSocket upgrade hands over.
//!
//! Each is defined once, here, because the two sides find some of them by
//! type identity (a response's extensions map is keyed by type): a second,
//! drifting definition would not fail to compile, it would silently turn
//! every upgrade into a 502.
//!
//! What it does not do: depend on hyper's server, V8 or anything else of
//! either side.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use tokio::io::DuplexStream;

/// Errors carried inside bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A streaming HTTP body, for requests and responses alike; it can cross
/// threads.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// An empty body.
pub fn empty_body() -> Body {
    http_body_util::Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A body of one chunk that is known up front (so `content-length` is exact).
pub fn full_body(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

/// How a `101` response hands the front its end of an in-memory byte pipe:
/// put in the response's extensions by whoever serves the WebSocket, taken
/// (once) by the front, which copies bytes between it and the upgraded
/// connection. Cloning shares the one slot.
#[derive(Clone, Debug)]
pub struct UpgradePipe(Arc<Mutex<Option<DuplexStream>>>);

impl UpgradePipe {
    /// A slot holding the front's end of the pipe.
    pub fn new(front_end: DuplexStream) -> Self {
        Self(Arc::new(Mutex::new(Some(front_end))))
    }

    /// The front's end, for whoever takes it first.
    pub fn take(&self) -> Option<DuplexStream> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipe_is_taken_once_whoever_holds_a_clone() {
        let (front, _socket) = tokio::io::duplex(16);
        let pipe = UpgradePipe::new(front);
        let clone = pipe.clone();
        let mut extensions = http::Extensions::new();
        extensions.insert(clone);
        assert!(extensions.remove::<UpgradePipe>().and_then(|slot| slot.take()).is_some());
        assert!(pipe.take().is_none());
    }
}
