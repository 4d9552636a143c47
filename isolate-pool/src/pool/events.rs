//! Sending events to a worker's isolates and waiting for their outcome:
//! requests, service and object calls, alarms, scheduled runs, queue
//! batches and workflow runs; and [`PoolRouter`], through which isolates reach each other.

use std::sync::Weak;
use std::time::Instant;

use outpost_runtime::{
    Body, DispatchError, HttpRequest, ObjectAddress, ObjectRouter, QueueBatch, QueueOutcome, RouteFuture, RpcCall,
    RpcOutcome, ScheduledOutcome, ScheduledRun, ServiceRouter, WorkerEvent,
};
use outpost_workflows::{RunEnd, WorkflowRun};
use tracing::Instrument as _;

use super::{Inner, Pool};
use crate::config::FetchError;
use crate::dispatch::{dispatch, Placed};

impl Pool {
    /// Sends a request to a worker's `fetch` and waits for the response head.
    pub async fn fetch(&self, worker: &str, request: HttpRequest) -> Result<http::Response<Body>, FetchError> {
        async {
            let placed = self.place(worker)?;
            let event = |respond| WorkerEvent::Fetch { request, entrypoint: None, respond };
            let response = dispatch(&placed, event, true).await?;
            Ok(placed.guard_body(response))
        }
        .instrument(tracing::debug_span!("pool.dispatch", worker, event = "fetch"))
        .await
    }

    /// A service binding's request to `worker`: its `fetch`, or that of its
    /// export `entrypoint`.
    pub async fn fetch_service(
        &self,
        worker: &str,
        entrypoint: Option<String>,
        request: HttpRequest,
    ) -> Result<http::Response<Body>, FetchError> {
        async {
            let placed = self.place(worker)?;
            let response =
                dispatch(&placed, |respond| WorkerEvent::Fetch { request, entrypoint, respond }, true).await?;
            Ok(placed.guard_body(response))
        }
        .instrument(tracing::debug_span!("pool.dispatch", worker, event = "service-fetch"))
        .await
    }

    /// A service binding's method call on `worker`'s `WorkerEntrypoint`
    /// (its default export, or the named `entrypoint`).
    pub async fn call_service(
        &self,
        worker: &str,
        entrypoint: Option<String>,
        call: RpcCall,
    ) -> Result<RpcOutcome, FetchError> {
        async {
            let placed = self.place(worker)?;
            dispatch(&placed, |respond| WorkerEvent::ServiceCall { entrypoint, call, respond }, true).await
        }
        .instrument(tracing::debug_span!("pool.dispatch", worker, event = "service-call"))
        .await
    }

    /// Sends a request to a Durable Object of `worker` (one of the classes
    /// it exports) and waits for the response head. Every event for the
    /// worker's objects goes to the one isolate hosting them.
    pub async fn fetch_object(
        &self,
        worker: &str,
        object: ObjectAddress,
        request: HttpRequest,
    ) -> Result<http::Response<Body>, FetchError> {
        async {
            let placed = self.place_object(worker)?;
            let event = |respond| WorkerEvent::ObjectFetch { object, request, respond };
            let response = dispatch(&placed, event, true).await?;
            Ok(placed.guard_body(response))
        }
        .instrument(tracing::debug_span!("pool.dispatch", worker, event = "object_fetch"))
        .await
    }

    /// Calls a method of a Durable Object of `worker` (JS RPC).
    pub async fn call_object(
        &self,
        worker: &str,
        object: ObjectAddress,
        call: RpcCall,
    ) -> Result<RpcOutcome, FetchError> {
        async {
            let placed = self.place_object(worker)?;
            dispatch(&placed, |respond| WorkerEvent::ObjectCall { object, call, respond }, true).await
        }
        .instrument(tracing::debug_span!("pool.dispatch", worker, event = "object_call"))
        .await
    }

    /// Runs the `scheduled` handler of `worker` for a Cron Trigger; the
    /// outcome says whether it threw. Like an alarm, a run is not bound by
    /// the wall-clock limit (its CPU is), and its `waitUntil()` work is
    /// waited for.
    pub async fn run_scheduled(&self, worker: &str, run: ScheduledRun) -> Result<ScheduledOutcome, FetchError> {
        async {
            let placed = self.place(worker)?;
            dispatch(&placed, |respond| WorkerEvent::Scheduled { run, respond }, false).await
        }
        .instrument(tracing::debug_span!("pool.dispatch", worker, event = "scheduled"))
        .await
    }

    /// Runs the `queue` handler of `worker` on a batch of a queue it
    /// consumes; the outcome says what the handler asked for each message
    /// and whether it threw. Like a scheduled run, a batch is bound by CPU,
    /// not by the wall-clock limit, and its `waitUntil()` work is waited for.
    pub async fn run_queue(&self, worker: &str, batch: QueueBatch) -> Result<QueueOutcome, FetchError> {
        let size = batch.messages.len();
        async {
            let placed = self.place(worker)?;
            dispatch(&placed, |respond| WorkerEvent::Queue { batch, respond }, false).await
        }
        .instrument(tracing::debug_span!("pool.dispatch", worker, event = "queue", size))
        .await
    }

    /// Runs one pass of a workflow instance's `run()` on `worker` (the
    /// worker exporting the workflow's class). Like a queue batch, a pass
    /// is bound by CPU, not by the wall-clock limit; the engine bounds it.
    pub async fn run_workflow(&self, worker: &str, run: WorkflowRun) -> Result<RunEnd, FetchError> {
        let span = tracing::debug_span!("pool.dispatch", worker, event = "workflow", instance = %run.instance_id);
        async {
            let placed = self.place(worker)?;
            dispatch(&placed, |respond| WorkerEvent::Workflow { run, respond }, false).await
        }
        .instrument(span)
        .await
    }

    /// Runs the `alarm()` of a Durable Object of `worker`; `Ok` once it ran
    /// to the end. An alarm is not bound by the wall-clock limit: its
    /// handler is waited for until it ends (its CPU is still limited), so a
    /// slow one never runs twice at once.
    pub async fn run_alarm(
        &self,
        worker: &str,
        object: ObjectAddress,
        retry_count: u32,
        request_id: String,
    ) -> Result<(), FetchError> {
        async {
            let placed = self.place_object(worker)?;
            dispatch(&placed, |respond| WorkerEvent::Alarm { object, retry_count, request_id, respond }, false).await
        }
        .instrument(tracing::debug_span!("pool.dispatch", worker, event = "alarm"))
        .await
    }

    /// Places an event for one of `worker`'s Durable Objects: see
    /// [`crate::state::PoolState::place_object`].
    fn place_object(&self, worker: &str) -> Result<Placed, FetchError> {
        let inner = &self.inner;
        let mut state = inner.lock();
        let (machine, meters) = state.split(&inner.thread_in_flight);
        let route = machine.place_object(worker, Instant::now(), &meters);
        let route = route.ok_or_else(|| FetchError::NoSuchWorker(worker.to_string()))?;
        Ok(inner.admit(&mut state, route))
    }

    /// Places a request to `worker`: see [`crate::state::PoolState::place`].
    fn place(&self, worker: &str) -> Result<Placed, FetchError> {
        let inner = &self.inner;
        let mut state = inner.lock();
        let (machine, meters) = state.split(&inner.thread_in_flight);
        let route = machine.place(worker, &meters).ok_or_else(|| FetchError::NoSuchWorker(worker.to_string()))?;
        Ok(inner.admit(&mut state, route))
    }
}

/// Routes the calls of Durable Object stubs back into the pool.
pub(super) struct PoolRouter(pub(super) Weak<Inner>);

impl PoolRouter {
    fn pool(&self) -> Result<Pool, DispatchError> {
        self.0.upgrade().map(|inner| Pool { inner }).ok_or(DispatchError::WorkerGone)
    }
}

/// What a stub is told when the event did not get through.
fn route_error(err: FetchError) -> DispatchError {
    match err {
        FetchError::Dispatch(err) => err,
        // The class's worker is not deployed on this node.
        FetchError::NoSuchWorker(_) => DispatchError::WorkerGone,
    }
}

impl ObjectRouter for PoolRouter {
    fn fetch(&self, script: &str, object: ObjectAddress, request: HttpRequest) -> RouteFuture<http::Response<Body>> {
        let pool = self.pool();
        let script = script.to_string();
        Box::pin(async move { pool?.fetch_object(&script, object, request).await.map_err(route_error) })
    }

    fn call(&self, script: &str, object: ObjectAddress, call: RpcCall) -> RouteFuture<RpcOutcome> {
        let pool = self.pool();
        let script = script.to_string();
        Box::pin(async move { pool?.call_object(&script, object, call).await.map_err(route_error) })
    }
}

impl ServiceRouter for PoolRouter {
    fn fetch(
        &self,
        service: &str,
        entrypoint: Option<String>,
        request: HttpRequest,
    ) -> RouteFuture<http::Response<Body>> {
        let pool = self.pool();
        let service = service.to_string();
        Box::pin(async move { pool?.fetch_service(&service, entrypoint, request).await.map_err(route_error) })
    }

    fn call(&self, service: &str, entrypoint: Option<String>, call: RpcCall) -> RouteFuture<RpcOutcome> {
        let pool = self.pool();
        let service = service.to_string();
        Box::pin(async move { pool?.call_service(&service, entrypoint, call).await.map_err(route_error) })
    }
}
