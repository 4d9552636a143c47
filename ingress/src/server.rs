//! The accept loop and per-connection HTTP handling: HTTP/1.1 and HTTP/2
//! (chosen by ALPN over TLS, by the client's preface in cleartext), limits,
//! and graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::body::{FaultSlot, FirstByteDeadline, GuardedBody};
use crate::handler::{Body, BoxError, Handler, HandlerError, Protocol, RequestContext, TlsInfo};
use crate::head;
use crate::upgrade::{is_h2_websocket, is_websocket_upgrade, join_upgraded};

/// Settings of a listener.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// How long a client may take to send a request's head (a slow client
    /// is dropped before any worker sees the request).
    pub header_read_timeout: Duration,
    /// Largest request head (request line and headers) accepted, in bytes.
    pub max_header_bytes: usize,
    /// Largest request body, in bytes: a larger declared length is answered
    /// 413; a body that grows past it fails.
    pub max_body_bytes: u64,
    /// A request body that sends nothing for this long fails.
    pub body_read_timeout: Duration,
    /// Connections open at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// How long a TLS handshake may take.
    pub tls_handshake_timeout: Duration,
    /// On shutdown, how long in-flight requests may take to finish.
    pub shutdown_grace: Duration,
    /// Whether a client's `X-Request-Id` becomes the request's id (for a
    /// developer's own machine); otherwise the front makes every id.
    pub client_request_ids: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(30),
            max_header_bytes: 64 * 1024,
            max_body_bytes: 100 << 20,
            body_read_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            tls_handshake_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(30),
            client_request_ids: false,
        }
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

/// A handler that answers `101 Switching Protocols` puts one end of an
/// in-memory pipe in the response's extensions; the front joins it to the
/// upgraded connection and moves bytes both ways.
pub use outpost_seam::UpgradePipe;

/// A bound TCP socket and, for HTTPS, its TLS settings.
pub struct Listener {
    tcp: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    alt_svc: Option<HeaderValue>,
}

impl Listener {
    /// HTTP/1.1 and HTTP/2 with prior knowledge (h2c), no TLS.
    pub fn cleartext(tcp: TcpListener) -> Self {
        Listener { tcp, tls: None, alt_svc: None }
    }

    /// HTTPS: HTTP/2 or HTTP/1.1 as ALPN decides.
    pub fn tls(tcp: TcpListener, config: Arc<rustls::ServerConfig>) -> Self {
        Listener { tcp, tls: Some(tokio_rustls::TlsAcceptor::from(config)), alt_svc: None }
    }

    /// Advertises HTTP/3 on UDP `port` in every response (`Alt-Svc`).
    pub fn with_http3_on(mut self, port: u16) -> Self {
        self.alt_svc = HeaderValue::from_str(&format!("h3=\":{port}\"; ma=86400")).ok();
        self
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// What every request of a connection shares.
pub(crate) struct Connection {
    pub(crate) client: SocketAddr,
    pub(crate) local: SocketAddr,
    pub(crate) tls: Option<TlsInfo>,
    /// Sent on every response (advertises HTTP/3).
    pub(crate) alt_svc: Option<HeaderValue>,
    /// The connection's place under `max_connections`, held as long as the
    /// connection (or a WebSocket upgraded from it) lives.
    pub(crate) _permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// What every connection of a listener shares.
pub(crate) struct Shared {
    pub(crate) config: ServerConfig,
    handler: Arc<dyn Handler>,
    ids: RequestIds,
}

impl Shared {
    pub(crate) fn new(config: ServerConfig, handler: Arc<dyn Handler>) -> Self {
        Shared { config, handler, ids: RequestIds::new() }
    }
}

/// Serves `listener` until `shutdown` completes; then stops accepting,
/// lets in-flight requests finish for up to `shutdown_grace`, and returns.
pub async fn serve(
    listener: Listener,
    config: ServerConfig,
    handler: Arc<dyn Handler>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let local = listener.local_addr().map_err(ServeError::Accept)?;
    let shared = Arc::new(Shared::new(config, handler));
    let permits = Arc::new(Semaphore::new(shared.config.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, client) = tokio::select! {
            accepted = listener.tcp.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of file descriptors and the like: back off, keep serving.
                Err(err) if is_transient(&err) => {
                    tracing::warn!("accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Err(err) => return Err(ServeError::Accept(err)),
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let accepted =
            Accepted { stream, client, local, tls: listener.tls.clone(), alt_svc: listener.alt_svc.clone(), permit };
        tokio::spawn(serve_stream(accepted, graceful.watcher(), shared.clone()));
    }
    drop(listener);
    let grace = shared.config.shutdown_grace;
    let deadline = tokio::time::Instant::now() + grace;
    // HTTP connections first; then upgraded ones (WebSockets), which hyper
    // no longer tracks but which keep their connection permit: the worker
    // side closes them as the pool retires its isolates.
    let everyone = u32::try_from(shared.config.max_connections.max(1)).unwrap_or(u32::MAX);
    let drained = async {
        graceful.shutdown().await;
        let _ = permits.acquire_many(everyone).await;
    };
    if tokio::time::timeout_at(deadline, drained).await.is_err() {
        tracing::warn!("connections still open {} s after shutdown began; closing them", grace.as_secs());
    }
    Ok(())
}

/// A connection just accepted, with what its listener gives it.
struct Accepted {
    stream: TcpStream,
    client: SocketAddr,
    local: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    alt_svc: Option<HeaderValue>,
    permit: tokio::sync::OwnedSemaphorePermit,
}

async fn serve_stream(accepted: Accepted, watcher: Watcher, shared: Arc<Shared>) {
    let Accepted { stream, client, local, tls, alt_svc, permit } = accepted;
    let first_byte = shared.config.header_read_timeout;
    let Some(acceptor) = tls else {
        let connection = Arc::new(Connection { client, local, tls: None, alt_svc, _permit: Some(permit) });
        let stream = FirstByteDeadline::new(stream, first_byte);
        return serve_io(TokioIo::new(stream), connection, watcher, shared).await;
    };
    let handshake = tokio::time::timeout(shared.config.tls_handshake_timeout, acceptor.accept(stream)).await;
    let stream = match handshake {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => return tracing::debug!(%client, "TLS handshake failed: {err}"),
        Err(_) => return tracing::debug!(%client, "TLS handshake timed out"),
    };
    let session = stream.get_ref().1;
    let tls = TlsInfo {
        // "TLSv1_3" as Cloudflare writes it: "TLSv1.3".
        version: session.protocol_version().and_then(|v| v.as_str()).unwrap_or("TLS").replace('_', "."),
        cipher: session
            .negotiated_cipher_suite()
            .and_then(|suite| suite.suite().as_str())
            .unwrap_or_default()
            .to_string(),
        server_name: session.server_name().map(str::to_owned),
    };
    let connection = Arc::new(Connection { client, local, tls: Some(tls), alt_svc, _permit: Some(permit) });
    serve_io(TokioIo::new(FirstByteDeadline::new(stream, first_byte)), connection, watcher, shared).await;
}

pub(crate) async fn serve_io<I>(io: TokioIo<I>, connection: Arc<Connection>, watcher: Watcher, shared: Arc<Shared>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let config = &shared.config;
    let service_shared = shared.clone();
    let service_connection = connection.clone();
    let service = service_fn(move |request| {
        let shared = service_shared.clone();
        let connection = service_connection.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(request, &connection, &shared).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(config.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256)
        // WebSockets over HTTP/2 (RFC 8441).
        .enable_connect_protocol()
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(config.header_read_timeout);
    let served = builder.serve_connection_with_upgrades(io, service).into_owned();
    if let Err(err) = watcher.watch(served).await {
        tracing::debug!(client = %connection.client, "connection ended with an error: {err}");
    }
}

fn is_transient(err: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(err.kind(), ConnectionAborted | ConnectionReset | Interrupted | WouldBlock)
        || err.raw_os_error() == Some(24)
}

/// Handles one request of any HTTP version: limits, ids, headers about the
/// client, the handler, the access log.
pub(crate) async fn handle<B>(
    request: http::Request<B>,
    connection: &Arc<Connection>,
    shared: &Shared,
) -> http::Response<Body>
where
    B: HttpBody<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
{
    let started = Instant::now();
    let config = &shared.config;
    let protocol = match request.version() {
        http::Version::HTTP_2 => Protocol::Http2,
        http::Version::HTTP_3 => Protocol::Http3,
        http::Version::HTTP_10 => Protocol::Http10,
        _ => Protocol::Http11,
    };
    let request_id = config
        .client_request_ids
        .then(|| request.headers().get(REQUEST_ID).and_then(|value| value.to_str().ok()))
        .flatten()
        .filter(|id| !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| shared.ids.next());
    let path_and_query = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let path_and_query = if path_and_query.starts_with('/') {
        head::normalize_target(path_and_query).into_owned()
    } else {
        path_and_query.to_owned()
    };
    let method = request.method().clone();
    let host =
        head::request_host(request.version(), request.uri().authority().map(|a| a.as_str()), request.headers(), || {
            connection.local.to_string()
        });
    let log = AccessLog {
        method: method.to_string(),
        host: host.as_ref().map_or_else(|_| String::new(), String::clone),
        path: path_and_query.clone(),
        protocol,
        request_id: request_id.clone(),
        started,
    };
    let h2_websocket = is_h2_websocket(&request);
    let host = match host {
        Ok(host) => host,
        Err(err) => return finish(head_error_response(&err, &request_id), log, connection),
    };
    if method == http::Method::CONNECT && !h2_websocket {
        let mut response = head_error_response(&head::HeadError::Connect, &request_id);
        response
            .headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS"));
        return finish(response, log, connection);
    }
    // `OPTIONS *` and the like: a URL needs a path, and "http://host*" is
    // not one a worker can be given.
    if !path_and_query.starts_with('/') {
        return finish(head_error_response(&head::HeadError::NotAPath, &request_id), log, connection);
    }
    // hyper bounds its read buffer, but a head can still fit in it and be
    // larger than we accept.
    if head_size(&request) > config.max_header_bytes {
        let response = plain_response(http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "request headers too large\n");
        return finish(response, log, connection);
    }
    let declared = request.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > config.max_body_bytes) {
        let body = format!("request body too large: the limit is {} bytes\n", config.max_body_bytes);
        return finish(plain_response(http::StatusCode::PAYLOAD_TOO_LARGE, &body), log, connection);
    }
    let scheme = if connection.tls.is_some() { "https" } else { "http" };
    // Built only from checked parts: a valid authority and hyper's parsed
    // path and query.
    let url = format!("{scheme}://{host}{path_and_query}");
    let span = tracing::info_span!("ingress.request", request_id = %request_id);
    let limit = config.max_body_bytes;
    let timeout = config.body_read_timeout;
    let mut request = request;
    // The upgraded connection, if the handler answers 101 (a WebSocket).
    // A WebSocket over HTTP/2 (extended CONNECT) reaches the worker looking
    // like an HTTP/1.1 upgrade, the form workers check for.
    if h2_websocket {
        *request.method_mut() = http::Method::GET;
        let headers = request.headers_mut();
        headers.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(http::header::CONNECTION, HeaderValue::from_static("upgrade"));
        // The key only matters to an HTTP/1.1 handshake's accept header,
        // which HTTP/2 does not send.
        headers.insert(http::header::SEC_WEBSOCKET_KEY, HeaderValue::from_static("b3V0cG9zdC1oMi13ZWJzb2NrZXQ="));
        headers.entry(http::header::SEC_WEBSOCKET_VERSION).or_insert(HeaderValue::from_static("13"));
    }
    let upgrade = (h2_websocket || is_websocket_upgrade(&request)).then(|| hyper::upgrade::on(&mut request));
    let body_fault = FaultSlot::default();
    let mut request = request.map(|body| GuardedBody::new(body, limit, timeout, body_fault.clone()).boxed_unsync());
    // What Cloudflare's edge tells a worker about the client; a client's own
    // values for these headers are replaced, never passed on.
    head::set_client_headers(request.headers_mut(), &host, connection.client.ip(), scheme, &request_id);
    let context = RequestContext {
        request_id: request_id.clone(),
        client: connection.client,
        url,
        protocol,
        tls: connection.tls.clone(),
    };
    let mut response = match shared.handler.handle(request, context).instrument(span.clone()).await {
        Ok(response) => response,
        Err(err) => error_response(&err, &request_id),
    };
    // The worker failed over a body the client broke: the client's fault
    // is the answer (400, 413 or 408), not "the worker threw".
    if let Some(fault) = body_fault.get().filter(|_| response.status().is_server_error()) {
        response = plain_response(fault.status(), &format!("{} (request id {request_id})\n", fault.message()));
    }
    // HTTP/2 takes any 2xx to a CONNECT as an open tunnel: a worker that
    // did not accept the WebSocket must not look as if it had.
    if h2_websocket && response.status().is_success() {
        response = plain_response(
            http::StatusCode::BAD_GATEWAY,
            &format!("the worker did not accept the WebSocket (request id {request_id})\n"),
        );
    }
    if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
        let pipe = response.extensions_mut().remove::<UpgradePipe>().and_then(|slot| slot.take());
        response = match (upgrade, pipe) {
            (Some(upgrade), Some(pipe)) => {
                tokio::spawn(join_upgraded(upgrade, pipe, connection.clone()).instrument(span));
                if h2_websocket {
                    // HTTP/2 accepts an extended CONNECT with 200 and no
                    // HTTP/1.1 handshake headers.
                    *response.status_mut() = http::StatusCode::OK;
                    for name in [http::header::UPGRADE, http::header::CONNECTION, http::header::SEC_WEBSOCKET_ACCEPT] {
                        response.headers_mut().remove(name);
                    }
                }
                response
            }
            _ => plain_response(
                http::StatusCode::BAD_GATEWAY,
                &format!("the worker answered 101 to a request that cannot be upgraded (request id {request_id})\n"),
            ),
        };
    }
    finish(response, log, connection)
}

/// Adds the headers every response gets and logs it once its body is done.
fn finish(mut response: http::Response<Body>, log: AccessLog, connection: &Connection) -> http::Response<Body> {
    if let Ok(value) = HeaderValue::from_str(&log.request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    if let Some(alt_svc) = &connection.alt_svc {
        response.headers_mut().entry(http::header::ALT_SVC).or_insert_with(|| alt_svc.clone());
    }
    let status = response.status().as_u16();
    response.map(|body| LoggedBody { body, bytes: 0, status, log: Some(log) }.boxed_unsync())
}

fn head_error_response(err: &head::HeadError, request_id: &str) -> http::Response<Body> {
    plain_response(err.status(), &format!("bad request: {err} (request id {request_id})\n"))
}

fn error_response(err: &HandlerError, request_id: &str) -> http::Response<Body> {
    plain_response(err.status(), &format!("{err} (request id {request_id})\n"))
}

fn plain_response(status: http::StatusCode, body: &str) -> http::Response<Body> {
    let mut response = http::Response::new(
        http_body_util::Full::from(body.to_string()).map_err(|never| match never {}).boxed_unsync(),
    );
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

/// One access log line, written when the response body is done (or the
/// client went away), with the bytes sent.
struct AccessLog {
    method: String,
    host: String,
    path: String,
    protocol: Protocol,
    request_id: String,
    started: Instant,
}

struct LoggedBody {
    body: Body,
    bytes: u64,
    status: u16,
    log: Option<AccessLog>,
}

impl LoggedBody {
    fn write_log(&mut self, complete: bool) {
        if let Some(log) = self.log.take() {
            tracing::info!(
                target: "access",
                request_id = %log.request_id,
                method = %log.method,
                host = %log.host,
                path = %log.path,
                status = self.status,
                bytes = self.bytes,
                complete,
                duration_ms = log.started.elapsed().as_secs_f64() * 1000.0,
                protocol = log.protocol.as_str(),
            );
        }
    }
}

impl HttpBody for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                }
            }
            Poll::Ready(None) => self.write_log(true),
            Poll::Ready(Some(Err(_))) => self.write_log(false),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        // An empty body may never be polled; a client may leave mid-body.
        let complete = self.body.is_end_stream();
        self.write_log(complete);
    }
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
