//! The handler the front calls: which worker a request goes to, and the
//! one place where a worker's failure becomes an HTTP status.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};

use outpost_ingress::routes::Routes;
use outpost_ingress::{Body, Handler, HandlerError, RequestContext};
use outpost_isolate_pool::{FetchError, Pool};
use outpost_runtime::{DispatchError, HttpRequest};
use tracing::Instrument as _;

/// Which worker a request goes to.
#[derive(Clone)]
pub enum Target {
    /// Every request, to one worker (`outpost dev`).
    One(String),
    /// By host and path; the node replaces the table as its deployments change.
    Routes(Arc<RwLock<Arc<Routes<String>>>>),
}

/// Hands the front's requests to the pool's workers.
pub struct NodeHandler {
    pub(crate) pool: Pool,
    pub(crate) target: Target,
}

impl NodeHandler {
    fn worker_for(&self, url: &str) -> Result<String, HandlerError> {
        match &self.target {
            Target::One(worker) => Ok(worker.clone()),
            Target::Routes(routes) => {
                let uri: http::Uri = url.parse().map_err(|_| HandlerError::NotFound(format!("no route for {url}")))?;
                let host = uri.authority().map_or("", |a| a.as_str());
                let routes = routes.read().unwrap().clone();
                routes
                    .find(host, uri.path())
                    .cloned()
                    .ok_or_else(|| HandlerError::NotFound(format!("no worker is routed for host {host}")))
            }
        }
    }
}

impl Handler for NodeHandler {
    fn handle(
        &self,
        request: http::Request<Body>,
        context: RequestContext,
    ) -> Pin<Box<dyn Future<Output = Result<http::Response<Body>, HandlerError>> + Send>> {
        let worker = self.worker_for(&context.url);
        let pool = self.pool.clone();
        Box::pin(async move {
            let worker = worker?;
            let span = tracing::debug_span!("node.fetch", worker = %worker, request_id = %context.request_id);
            let cf = Some(context.cf_json());
            let request = HttpRequest { request, url: context.url, request_id: context.request_id, cf };
            pool.fetch(&worker, request).instrument(span).await.map_err(handler_error)
        })
    }
}

/// The status a client sees follows from why the worker gave no response.
pub fn handler_error(err: FetchError) -> HandlerError {
    match err {
        FetchError::NoSuchWorker(_) => HandlerError::NotFound(err.to_string()),
        FetchError::Dispatch(DispatchError::WorkerThrew) => HandlerError::WorkerFailed,
        FetchError::Dispatch(DispatchError::NoHandler(message)) => HandlerError::NoHandler(message),
        FetchError::Dispatch(
            limit @ (DispatchError::CpuLimitExceeded { .. }
            | DispatchError::WallLimitExceeded { .. }
            | DispatchError::MemoryLimitExceeded { .. }),
        ) => HandlerError::LimitExceeded(limit.to_string()),
        FetchError::Dispatch(_) => HandlerError::Unavailable,
        _ => HandlerError::Unavailable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_map_to_statuses() {
        let status = |err: FetchError| handler_error(err).status().as_u16();
        assert_eq!(status(FetchError::NoSuchWorker("x".into())), 404);
        assert_eq!(status(DispatchError::WorkerThrew.into()), 500);
        assert_eq!(status(DispatchError::NoHandler("no fetch".into()).into()), 500);
        assert_eq!(status(DispatchError::CpuLimitExceeded { limit_ms: 5 }.into()), 503);
        assert_eq!(status(DispatchError::WorkerGone.into()), 503);
    }
}
