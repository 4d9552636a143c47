//! Sending a placed event to its isolate and waiting for the outcome,
//! within the worker's wall-clock limit; the response body carries the
//! event's in-flight guard.

use std::time::Duration;

use outpost_runtime::{Body, DispatchError, Responder, WorkerEvent};
use tokio::sync::{mpsc, oneshot};

use crate::config::FetchError;
use crate::inflight::{GuardedBody, InFlightGuard};
use crate::limits::Limits;

/// Where an event goes, and what counts it in flight.
pub(crate) struct Placed {
    pub(crate) sender: mpsc::UnboundedSender<WorkerEvent>,
    pub(crate) guard: InFlightGuard,
    pub(crate) limits: Limits,
}

impl Placed {
    /// The response, counted in flight until its body is done.
    pub(crate) fn guard_body(self, response: http::Response<Body>) -> http::Response<Body> {
        let guard = self.guard;
        response.map(|body| Body::new(GuardedBody { body, _guard: guard }))
    }
}

/// Sends a placed event and waits for its outcome (for a response, its
/// head), within the worker's wall-clock limit if `wall_limit`.
pub(crate) async fn dispatch<T>(
    placed: &Placed,
    event: impl FnOnce(Responder<T>) -> WorkerEvent,
    wall_limit: bool,
) -> Result<T, FetchError> {
    let wall_ms = if wall_limit { placed.limits.wall_ms } else { None };
    let (respond, outcome) = oneshot::channel();
    placed.sender.send(event(respond)).map_err(|_| DispatchError::WorkerGone)?;
    let outcome = match wall_ms {
        Some(limit_ms) => match tokio::time::timeout(Duration::from_millis(limit_ms), outcome).await {
            Ok(outcome) => outcome,
            Err(_) => return Err(DispatchError::WallLimitExceeded { limit_ms }.into()),
        },
        None => outcome.await,
    };
    Ok(outcome.map_err(|_| DispatchError::WorkerGone)??)
}
