//! Outpost's HTTP front door.
//!
//! What it does: listens on TCP, speaks HTTP/1.1 and HTTP/2 (hyper; over
//! TLS by ALPN, in cleartext with prior knowledge), terminates TLS (rustls,
//! a certificate per host name chosen by SNI), rejects malformed requests
//! with 400 before anything else sees them, enforces limits (head size,
//! body size with 413, head and body read timeouts, connections), gives
//! every request an id (`x-request-id`, generated; a client's is used only
//! where the node trusts its clients), checks the host a request names
//! ([`head`]: one valid authority, nothing else),
//! and hands each request to a [`Handler`] with its body still streaming.
//! HTTP/3 ([`http3`]) runs on QUIC beside a TLS listener, same handling.
//! Responses stream back the same way. An error the handler reports becomes
//! a status with a short plain-text body ([`HandlerError`]). On shutdown it
//! stops accepting and lets requests in flight finish. [`routes`] matches
//! hosts and paths to targets (pure; the node owns the table).
//!
//! What it does not do: run JavaScript or know that V8 exists (the handler
//! does that, behind the trait).

mod body;
#[cfg(test)]
mod fuzz_tests;
mod handler;
pub mod head;
pub mod http3;
pub mod routes;
mod server;
pub mod tls;
mod upgrade;

pub use handler::{Body, BoxError, Handler, HandlerError, Protocol, RequestContext, TlsInfo};
pub use server::{serve, Listener, ServeError, ServerConfig, UpgradePipe};
