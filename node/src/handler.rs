//! The handler the front calls: which worker a request goes to, and the
//! one place where a worker's failure becomes an HTTP status.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};

use outpost_ingress::routes::Routes;
use outpost_ingress::{Body, Handler, HandlerError, RequestContext};
use outpost_isolate_pool::{FetchError, Pool};
use outpost_runtime::{full_body, DispatchError, HttpRequest, ScheduledRun};
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
    pool: Pool,
    target: Target,
    /// Whether `/__scheduled` and `/cdn-cgi/handler/scheduled` run the
    /// worker's `scheduled` handler (`outpost dev --test-scheduled`).
    test_scheduled: bool,
}

/// What `/__scheduled` answers on success, as wrangler's does.
const RAN_SCHEDULED: &str = "Ran scheduled event";

impl NodeHandler {
    pub(crate) fn new(pool: Pool, target: Target) -> Self {
        NodeHandler { pool, target, test_scheduled: false }
    }

    /// Lets requests run the worker's `scheduled` handler by hand, as
    /// `wrangler dev --test-scheduled` does: `GET /__scheduled?cron=<expr>`
    /// answers `Ran scheduled event`, `GET /cdn-cgi/handler/scheduled?cron=`
    /// answers `ok`; either answers 500 with the error if the run failed.
    pub fn with_test_scheduled(mut self) -> Self {
        self.test_scheduled = true;
        self
    }

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
        let by_hand = self.test_scheduled.then(|| scheduled_by_hand(&context.url)).flatten();
        Box::pin(async move {
            let worker = worker?;
            if let Some((cron, success)) = by_hand {
                return run_scheduled_by_hand(&pool, &worker, cron, success, context.request_id).await;
            }
            let span = tracing::debug_span!("node.fetch", worker = %worker, request_id = %context.request_id);
            let cf = Some(context.cf_json());
            let request = HttpRequest { request, url: context.url, request_id: context.request_id, cf, depth: 0 };
            pool.fetch(&worker, request).instrument(span).await.map_err(handler_error)
        })
    }
}

/// For a request to one of the by-hand paths: the `cron` it asks for and
/// what success answers.
fn scheduled_by_hand(url: &str) -> Option<(String, &'static str)> {
    let uri: http::Uri = url.parse().ok()?;
    let success = match uri.path() {
        "/__scheduled" => RAN_SCHEDULED,
        "/cdn-cgi/handler/scheduled" => "ok",
        _ => return None,
    };
    let cron = uri
        .query()
        .into_iter()
        .flat_map(|query| query.split('&'))
        .find_map(|pair| pair.strip_prefix("cron="))
        .map(percent_decode)
        .unwrap_or_default();
    Some((cron, success))
}

/// A query value: `+` is a space, `%XX` a byte; invalid escapes stay as
/// they are, invalid UTF-8 is replaced.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match (escaped, bytes[i]) {
            (Some(byte), _) => {
                out.push(byte);
                i += 3;
                continue;
            }
            (None, b'+') => out.push(b' '),
            (None, byte) => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn run_scheduled_by_hand(
    pool: &Pool,
    worker: &str,
    cron: String,
    success: &'static str,
    request_id: String,
) -> Result<http::Response<Body>, HandlerError> {
    let now_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_millis() as f64);
    let run = ScheduledRun { cron, scheduled_time_ms: now_ms, request_id };
    let outcome = pool.run_scheduled(worker, run).await.map_err(handler_error)?;
    let (status, body) = match outcome.error {
        None => (http::StatusCode::OK, success.to_string()),
        Some(error) => (http::StatusCode::INTERNAL_SERVER_ERROR, error),
    };
    let mut response = http::Response::new(full_body(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain;charset=UTF-8"));
    Ok(response)
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

    #[test]
    fn by_hand_paths_take_the_cron_from_the_query() {
        assert_eq!(
            scheduled_by_hand("http://localhost:8787/__scheduled?cron=*%2F5+*+*+*+*"),
            Some(("*/5 * * * *".to_string(), RAN_SCHEDULED))
        );
        assert_eq!(
            scheduled_by_hand("http://localhost/cdn-cgi/handler/scheduled?x=1&cron=0%20*%20*%20*%20*"),
            Some(("0 * * * *".to_string(), "ok"))
        );
        assert_eq!(scheduled_by_hand("http://localhost/__scheduled"), Some((String::new(), RAN_SCHEDULED)));
        assert_eq!(scheduled_by_hand("http://localhost/other?cron=x"), None);
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
    }
}
