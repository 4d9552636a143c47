//! HTTP/3: QUIC (quinn) on UDP, beside a TLS listener's TCP port, with the
//! same certificates, limits, request handling and graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf as _, Bytes};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::handler::{Body, BoxError, Handler, TlsInfo};
use crate::server::{handle, Connection, ServeError, ServerConfig, Shared};
use crate::tls::TlsError;

/// ALPN of HTTP/3.
pub const H3_ALPN: &[&[u8]] = &[b"h3"];

/// A bound QUIC endpoint serving HTTP/3.
pub struct H3Listener {
    endpoint: quinn::Endpoint,
}

impl H3Listener {
    /// Binds UDP `address`. `tls` must offer ALPN `h3` (see [`H3_ALPN`]).
    pub fn bind(address: SocketAddr, tls: Arc<rustls::ServerConfig>) -> Result<Self, H3BindError> {
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|err| {
            H3BindError::Tls(TlsError::Rustls { what: "QUIC".into(), source: rustls::Error::General(err.to_string()) })
        })?;
        let server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let endpoint = quinn::Endpoint::server(server, address).map_err(H3BindError::Bind)?;
        Ok(H3Listener { endpoint })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum H3BindError {
    #[error("cannot bind UDP for HTTP/3: {0}")]
    Bind(#[source] std::io::Error),
    #[error(transparent)]
    Tls(TlsError),
}

/// Serves HTTP/3 until `shutdown`; then refuses new connections, tells the
/// open ones to go away (GOAWAY), lets their requests finish for up to
/// `shutdown_grace`, and closes the endpoint.
pub async fn serve_h3(
    listener: H3Listener,
    config: ServerConfig,
    handler: Arc<dyn Handler>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let endpoint = listener.endpoint;
    let local = endpoint.local_addr().map_err(ServeError::Accept)?;
    let shared = Arc::new(Shared::new(config, handler));
    let (stop, stopped) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                while connections.try_join_next().is_some() {}
                if connections.len() >= shared.config.max_connections {
                    incoming.refuse();
                    continue;
                }
                connections.spawn(serve_connection(incoming, local, shared.clone(), stopped.clone()));
            }
            () = &mut shutdown => break,
        }
    }
    endpoint.set_server_config(None);
    let _ = stop.send(true);
    let drained = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(shared.config.shutdown_grace, drained).await.is_err() {
        tracing::warn!("HTTP/3 connections still open after the shutdown grace; closing them");
    }
    endpoint.close(0u32.into(), b"shutting down");
    endpoint.wait_idle().await;
    Ok(())
}

async fn serve_connection(
    incoming: quinn::Incoming,
    local: SocketAddr,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) {
    let handshake = tokio::time::timeout(shared.config.tls_handshake_timeout, incoming).await;
    let quic = match handshake {
        Ok(Ok(quic)) => quic,
        Ok(Err(err)) => return tracing::debug!("QUIC handshake failed: {err}"),
        Err(_) => return tracing::debug!("QUIC handshake timed out"),
    };
    let client = quic.remote_address();
    let server_name = quic
        .handshake_data()
        .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|data| data.server_name);
    // QUIC is always TLS 1.3.
    let tls = TlsInfo { version: "TLSv1.3".into(), cipher: String::new(), server_name };
    // QUIC connections are counted by the endpoint's loop, not by permits.
    let connection = Arc::new(Connection { client, local, tls: Some(tls), alt_svc: None, _permit: None });
    let built = h3::server::builder()
        .max_field_section_size(u64::try_from(shared.config.max_header_bytes).unwrap_or(u64::MAX))
        .build::<_, Bytes>(h3_quinn::Connection::new(quic))
        .await;
    let mut h3 = match built {
        Ok(h3) => h3,
        Err(err) => return tracing::debug!(%client, "HTTP/3 connection failed: {err}"),
    };
    let mut requests = JoinSet::new();
    let mut going_away = false;
    loop {
        tokio::select! {
            accepted = h3.accept() => match accepted {
                Ok(Some(resolver)) => {
                    // Finished requests leave the set as new ones come.
                    while requests.try_join_next().is_some() {}
                    let connection = connection.clone();
                    let shared = shared.clone();
                    requests.spawn(async move {
                        match resolver.resolve_request().await {
                            Ok((request, stream)) => serve_request(request, stream, &connection, &shared).await,
                            Err(err) => tracing::debug!("HTTP/3 request failed: {err}"),
                        }
                    });
                }
                Ok(None) => break,
                Err(err) => {
                    tracing::debug!(%client, "HTTP/3 connection ended: {err}");
                    break;
                }
            },
            _ = async { stopped.wait_for(|stop| *stop).await.is_ok() }, if !going_away => {
                going_away = true;
                // GOAWAY naming the stream after the last accepted one:
                // requests already accepted finish, and the client knows
                // they were processed.
                if let Err(err) = h3.shutdown(1).await {
                    tracing::debug!(%client, "HTTP/3 shutdown: {err}");
                }
            }
        }
    }
    while requests.join_next().await.is_some() {}
}

type RequestStream<S> = h3::server::RequestStream<S, Bytes>;

async fn serve_request(
    request: http::Request<()>,
    stream: RequestStream<h3_quinn::BidiStream<Bytes>>,
    connection: &Arc<Connection>,
    shared: &Shared,
) {
    let (mut send, recv) = stream.split();
    // A GET or HEAD has no body to wait for.
    let body = if matches!(*request.method(), http::Method::GET | http::Method::HEAD) {
        http_body_util::Empty::new().map_err(|never| match never {}).boxed_unsync()
    } else {
        request_body(recv)
    };
    let head_only = request.method() == http::Method::HEAD;
    let mut request = request.map(|()| body);
    *request.version_mut() = http::Version::HTTP_3;
    let response = handle(request, connection, shared).await;
    let (parts, mut body) = response.into_parts();
    if let Err(err) = send.send_response(http::Response::from_parts(parts, ())).await {
        return tracing::debug!("HTTP/3 response head failed: {err}");
    }
    // A response to HEAD has no body, whatever the handler made.
    while let Some(frame) = if head_only { None } else { body.frame().await } {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    if let Err(err) = send.send_data(data).await {
                        return tracing::debug!("HTTP/3 response body failed: {err}");
                    }
                }
            }
            Err(err) => {
                // Cut short: the client must not take it for a whole body.
                tracing::debug!("response body failed: {err}");
                send.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
                return;
            }
        }
    }
    if let Err(err) = send.finish().await {
        tracing::debug!("HTTP/3 response end failed: {err}");
    }
}

/// The request body as it arrives on the stream.
fn request_body(recv: RequestStream<h3_quinn::RecvStream>) -> Body {
    let chunks = futures::stream::unfold(Some(recv), |state| async move {
        let mut recv = state?;
        match recv.recv_data().await {
            Ok(Some(mut chunk)) => {
                let bytes = chunk.copy_to_bytes(chunk.remaining());
                Some((Ok(Frame::data(bytes)), Some(recv)))
            }
            Ok(None) => None,
            Err(err) => Some((Err(Box::new(err) as BoxError), None)),
        }
    });
    StreamBody::new(chunks).boxed_unsync()
}
