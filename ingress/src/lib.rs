//! Outpost's HTTP front door.
//!
//! What it does: listens on TCP, speaks HTTP/1.1 (hyper), rejects malformed
//! requests with 400 before anything else sees them, gives every request an
//! id (`x-request-id`, taken from the client or generated), and hands each
//! request to a [`Handler`] with its body still streaming. Responses stream
//! back the same way. An error the handler reports becomes a status with a
//! short plain-text body ([`HandlerError`]).
//!
//! What it does not do: run JavaScript or know that V8 exists (the handler
//! does that, behind the trait), or decide which worker serves a request.

mod handler;
mod server;

pub use handler::{Body, BoxError, Handler, HandlerError, RequestContext};
pub use server::{serve, ServeError, ServerConfig};
