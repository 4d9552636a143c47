//! Outpost's JavaScript runtime: Cloudflare-style workers on V8, through
//! `deno_core` and deno's web API extensions.
//!
//! What it does: starts an isolate from a snapshot (the bootstrap snapshot
//! built by `build.rs`, or a per-worker snapshot made by [`snapshot`]),
//! loads a worker's bundle of modules into it, and delivers the events that
//! arrive on the isolate's queue ([`WorkerEvent`]: HTTP requests, Durable
//! Object requests, calls and alarms) to the worker's handlers, streaming
//! bodies both ways. The worker
//! sees the WinterTC globals, `env` with its variables and bindings (KV
//! namespaces, Durable Object namespaces) and a `ctx` with `waitUntil()`;
//! nothing of Deno, the filesystem or processes. It hosts the Durable
//! Objects of the classes a worker declares (one instance per id in the
//! isolate, input and output gates, `state.storage` over `outpost-kv`) and
//! runs server-side WebSockets (frames here, bytes through a pipe the front
//! joins to the connection).
//!
//! What it does not do: speak HTTP (the `ingress` crate does, and the node
//! hands requests over as [`WorkerEvent::Fetch`]), decide which thread or isolate
//! serves a request or hosts an object (the pool does, through the
//! [`ObjectRouter`] it installs), or watch CPU time (the pool again). It
//! does enforce the heap limit it is given, by terminating the isolate.

mod egress;
mod ext;
#[cfg(test)]
mod fuzz_tests;
mod loader;
mod memory;
pub mod snapshot;
mod worker;

pub use deno_core::v8;
pub use egress::{Egress, PRIVATE_NETWORKS};
pub use ext::bindings::durable_objects::{
    id_from_name, object_namespace, split_object_namespace, DurableObjectBinding, ObjectRouter, RouteFuture,
};
pub use ext::bindings::kv::KvNamespaceBinding;
pub use ext::bindings::queues::{QueueProducerBinding, MAX_DELAY_SECONDS as QUEUE_MAX_DELAY_SECONDS};
pub use ext::bindings::services::{ServiceBinding, ServiceRouter};
pub use ext::bindings::workflows::WorkflowBinding;
pub use ext::bindings::{Binding, BindingError, BindingServices, Bindings};
pub use ext::console::SharedLogBudget;
pub use ext::events::{
    EventQueue, ObjectAddress, QueueBatch, QueueOutcome, Responder, RetryRequest, RpcCall, RpcOutcome,
    ScheduledOutcome, ScheduledRun, WorkerEvent,
};
pub use ext::http::{empty_body, full_body, Body, BoxError, DispatchError, HttpRequest};
pub use ext::subrequest::MAX_DEPTH;
pub use ext::websocket::{IsolateSignals, UpgradePipe};
pub use loader::ModuleKind;
pub use worker::{
    init_v8, EventReceiver, LoadError, ServeError, WorkerCode, WorkerIsolate, WorkerOptions, WorkerSource,
};

/// Identifies this build of the runtime (a digest of its bootstrap snapshot,
/// taken at build time): a worker snapshot made by one build cannot be used
/// by another.
pub fn runtime_fingerprint() -> &'static [u8] {
    concat!(include_str!(concat!(env!("OUT_DIR"), "/BOOTSTRAP_FINGERPRINT")), "-", env!("CARGO_PKG_VERSION")).as_bytes()
}
