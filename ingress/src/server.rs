//! The accept loop and per-connection HTTP/1.1 handling.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::header::{HeaderValue, CONTENT_TYPE, HOST};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::handler::{Body, BoxError, Handler, HandlerError, RequestContext};

/// Settings of one listener.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// How long a client may take to send a request's headers.
    pub header_read_timeout: Duration,
    /// Largest request head (request line and headers) accepted, in bytes.
    pub max_header_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self { header_read_timeout: Duration::from_secs(30), max_header_bytes: 64 * 1024 }
    }
}

/// Why the server stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    #[error("accepting connections failed: {0}")]
    Accept(#[source] std::io::Error),
}

const REQUEST_ID: &str = "x-request-id";

/// Serves HTTP/1.1 on `listener` until the future is dropped.
pub async fn serve(listener: TcpListener, config: ServerConfig, handler: Arc<dyn Handler>) -> Result<(), ServeError> {
    let local = listener.local_addr().map_err(ServeError::Accept)?;
    let ids = Arc::new(RequestIds::new());
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(accepted) => accepted,
            // Out of file descriptors and the like: back off, keep serving.
            Err(err) if is_transient(&err) => {
                tracing::warn!("accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(err) => return Err(ServeError::Accept(err)),
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let ids = ids.clone();
        let config = config.clone();
        let connection_config = config.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let handler = handler.clone();
                let ids = ids.clone();
                let max_header_bytes = config.max_header_bytes;
                async move {
                    Ok::<_, std::convert::Infallible>(
                        handle(request, client, local, max_header_bytes, &*handler, &ids).await,
                    )
                }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(connection_config.header_read_timeout)
                .max_buf_size(connection_config.max_header_bytes.max(8192))
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            if let Err(err) = connection.await {
                tracing::debug!(%client, "connection ended with an error: {err}");
            }
        });
    }
}

fn is_transient(err: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(err.kind(), ConnectionAborted | ConnectionReset | Interrupted | WouldBlock)
        || err.raw_os_error() == Some(24)
}

async fn handle(
    request: http::Request<Incoming>,
    client: SocketAddr,
    local: SocketAddr,
    max_header_bytes: usize,
    handler: &dyn Handler,
    ids: &RequestIds,
) -> http::Response<Body> {
    let started = Instant::now();
    // hyper bounds its read buffer, but a head can still fit in it and be
    // larger than we accept.
    if head_size(&request) > max_header_bytes {
        return plain_response(http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "request headers too large\n".into());
    }
    let request_id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .filter(|id| !id.is_empty() && id.len() <= 128)
        .map(str::to_owned)
        .unwrap_or_else(|| ids.next());
    let host = request
        .headers()
        .get(HOST)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(|| local.to_string());
    let path_and_query = request.uri().path_and_query().map_or("/", |pq| pq.as_str()).to_owned();
    let url = format!("http://{host}{path_and_query}");
    let method = request.method().clone();
    let span = tracing::info_span!("ingress.request", request_id = %request_id);
    let request = request.map(|body| body.map_err(|err| Box::new(err) as BoxError).boxed_unsync());
    let context = RequestContext { request_id: request_id.clone(), client, url };
    let mut response = match handler.handle(request, context).instrument(span.clone()).await {
        Ok(response) => response,
        Err(err) => error_response(&err, &request_id),
    };
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    span.in_scope(|| {
        tracing::info!(
            target: "access",
            method = %method,
            host = %host,
            path = %path_and_query,
            status = response.status().as_u16(),
            duration_ms = started.elapsed().as_secs_f64() * 1000.0,
            protocol = "HTTP/1.1",
        )
    });
    response
}

fn error_response(err: &HandlerError, request_id: &str) -> http::Response<Body> {
    plain_response(err.status(), format!("{err} (request id {request_id})\n"))
}

fn plain_response(status: http::StatusCode, body: String) -> http::Response<Body> {
    let mut response =
        http::Response::new(http_body_util::Full::from(body).map_err(|never| match never {}).boxed_unsync());
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain;charset=UTF-8"));
    response
}

/// The size of a request's head as it was on the wire, near enough.
fn head_size<B>(request: &http::Request<B>) -> usize {
    // Measured without formatting the URI: this runs on every request.
    let uri = request.uri();
    let target = uri.path_and_query().map_or(1, |pq| pq.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.scheme_str().map_or(0, |s| s.len() + 3);
    let line = request.method().as_str().len() + target + 12;
    let headers: usize = request.headers().iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum();
    line + headers
}

/// Request ids unique within this process and unlikely to collide across
/// processes: a random-ish per-process prefix and a counter.
struct RequestIds {
    prefix: u32,
    counter: AtomicU64,
}

impl RequestIds {
    fn new() -> Self {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let prefix = nanos ^ std::process::id().rotate_left(16);
        Self { prefix, counter: AtomicU64::new(0) }
    }

    fn next(&self) -> String {
        format!("{:08x}{:012x}", self.prefix, self.counter.fetch_add(1, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_distinct() {
        let ids = RequestIds::new();
        let a = ids.next();
        let b = ids.next();
        assert_ne!(a, b);
        assert_eq!(a.len(), 20);
    }

    #[test]
    fn head_size_counts_headers() {
        let request = http::Request::get("/abc").header("x-a", "12345").body(()).unwrap();
        assert_eq!(head_size(&request), 3 + 4 + 12 + (3 + 5 + 4));
    }

    #[test]
    fn errors_map_to_statuses() {
        assert_eq!(HandlerError::WorkerFailed.status(), 500);
        assert_eq!(HandlerError::Unavailable.status(), 503);
        let response = error_response(&HandlerError::WorkerFailed, "abc");
        assert_eq!(response.status(), 500);
        assert_eq!(response.headers()[CONTENT_TYPE], "text/plain;charset=UTF-8");
    }
}
