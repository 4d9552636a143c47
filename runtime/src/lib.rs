//! Outpost's JavaScript runtime: Cloudflare-style workers on V8, through
//! `deno_core` and deno's web API extensions.
//!
//! What it does: starts an isolate from the bootstrap snapshot (built by
//! `build.rs`), loads a worker's bundle of modules into it, and serves the
//! requests that arrive on the worker's queue, streaming bodies both ways.
//! The worker sees the WinterTC globals, `env` with its variables and a
//! `ctx` with `waitUntil()`; nothing of Deno, the filesystem or processes.
//!
//! What it does not do: speak HTTP (the `ingress` crate does, and hands
//! requests over as [`WorkerRequest`]s), decide which thread or isolate
//! serves a request, or enforce CPU and memory limits (the isolate pool's
//! job). [`host`] runs one isolate on one thread, which is all `outpost dev`
//! needs until the pool exists.

mod ext;
pub mod host;
mod loader;
mod worker;

pub use ext::http::{empty_body, full_body, Body, BoxError, DispatchError, WorkerRequest};
pub use loader::ModuleKind;
pub use worker::{
    init_v8, request_queue, LoadError, RequestReceiver, ServeError, WorkerIsolate, WorkerOptions, WorkerSource,
};
