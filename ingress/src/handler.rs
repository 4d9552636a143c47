//! The seam between the HTTP front and whatever answers requests.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;

/// Errors carried inside bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A streaming body, for requests and responses alike.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// What the front knows about a request beyond its method, URI and headers.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// From the client's `x-request-id`, or generated. Echoed on the response.
    pub request_id: String,
    /// The client's address.
    pub client: SocketAddr,
    /// The absolute URL of the request, as a worker sees it.
    pub url: String,
}

/// Why a handler produced no response. The kind decides the status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandlerError {
    /// The code answering the request failed (a worker threw). 500.
    #[error("the worker threw an exception")]
    WorkerFailed,
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
            Self::WorkerFailed => http::StatusCode::INTERNAL_SERVER_ERROR,
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
