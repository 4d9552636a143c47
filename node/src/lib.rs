//! An Outpost node, between the command line and the isolate pool.
//!
//! What it does: owns the node's deployments (the workers by name, the
//! routes from hosts and paths to them, who owns which stored data) and
//! changes them as a whole ([`Node::apply`]: a SIGHUP today, the admin API
//! next, call the same method); answers the front's requests
//! ([`NodeHandler`]: routing, and the one place where a worker's failure
//! becomes an HTTP status); runs the node's triggers ([`triggers`]:
//! Cron Triggers, Durable Object alarms, queue consumers, workflow
//! instances); and answers the command line on its [`control`] socket.
//!
//! What it does not do: read files or parse configuration (the `outpost`
//! binary reads `outpost.toml` and `node.toml` into [`WorkerSpec`]s and a
//! [`Desired`] state), install a tracing subscriber, speak HTTP (the
//! ingress does), or run JavaScript (the pool and the runtime do).
//!
//! [`WorkerSpec`]: outpost_isolate_pool::WorkerSpec

pub mod control;
mod deployments;
mod handler;
pub mod ownership;
pub mod triggers;

pub use deployments::{Applied, Candidate, DeployError, Desired, Node, NodeOptions, StartError, Worker};
pub use handler::{handler_error, NodeHandler, Target};
pub use ownership::{Grant, OwnershipError};
