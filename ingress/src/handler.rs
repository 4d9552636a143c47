//! The seam between the HTTP front and whatever answers requests.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

pub use outpost_seam::{Body, BoxError};

/// The HTTP version a request came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http10,
    Http11,
    Http2,
    Http3,
}

impl Protocol {
    /// As Cloudflare's `request.cf.httpProtocol` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http10 => "HTTP/1.0",
            Protocol::Http11 => "HTTP/1.1",
            Protocol::Http2 => "HTTP/2",
            Protocol::Http3 => "HTTP/3",
        }
    }
}

/// The TLS session a request came over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// `TLSv1.3`, `TLSv1.2`.
    pub version: String,
    pub cipher: String,
    /// The SNI name the client asked for.
    pub server_name: Option<String>,
}

/// What the front knows about a request beyond its method, URI and headers.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// From the client's `x-request-id`, or generated. Echoed on the response.
    pub request_id: String,
    /// The client's address.
    pub client: SocketAddr,
    /// The absolute URL of the request, as a worker sees it.
    pub url: String,
    pub protocol: Protocol,
    /// `None` for cleartext.
    pub tls: Option<TlsInfo>,
}

impl RequestContext {
    /// The `request.cf` object a worker sees, as JSON: the fields this node
    /// knows (`httpProtocol`, `tlsVersion`, `tlsCipher`, `clientIp`).
    pub fn cf_json(&self) -> String {
        let mut cf = serde_json::Map::new();
        cf.insert("httpProtocol".into(), self.protocol.as_str().into());
        cf.insert("clientIp".into(), self.client.ip().to_string().into());
        if let Some(tls) = &self.tls {
            cf.insert("tlsVersion".into(), tls.version.clone().into());
            cf.insert("tlsCipher".into(), tls.cipher.clone().into());
            if let Some(name) = &tls.server_name {
                cf.insert("tlsServerName".into(), name.clone().into());
            }
        }
        serde_json::Value::Object(cf).to_string()
    }
}

/// Why a handler produced no response. The kind decides the status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandlerError {
    /// The code answering the request failed (a worker threw). 500.
    #[error("the worker threw an exception")]
    WorkerFailed,
    /// The worker cannot take this kind of request: it has no handler for
    /// it (the message names the one missing). 500.
    #[error("{0}")]
    NoHandler(String),
    /// Nothing is able to answer right now. 503.
    #[error("the worker is unavailable")]
    Unavailable,
    /// The worker went over one of its limits (the message names it). 503.
    #[error("{0}")]
    LimitExceeded(String),
    /// No worker serves this request. 404.
    #[error("{0}")]
    NotFound(String),
}

impl HandlerError {
    pub fn status(&self) -> http::StatusCode {
        match self {
            Self::WorkerFailed | Self::NoHandler(_) => http::StatusCode::INTERNAL_SERVER_ERROR,
            Self::Unavailable | Self::LimitExceeded(_) => http::StatusCode::SERVICE_UNAVAILABLE,
            Self::NotFound(_) => http::StatusCode::NOT_FOUND,
        }
    }
}

/// Answers requests. Implemented by the node on top of its workers.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        request: http::Request<Body>,
        context: RequestContext,
    ) -> Pin<Box<dyn Future<Output = Result<http::Response<Body>, HandlerError>> + Send>>;
}
