//! Outpost's isolate pool: where and how long each worker's isolates live.
//!
//! What it does: runs isolates of many workers on a fixed set of OS threads
//! (each with a current-thread tokio runtime), places each request on an
//! isolate (affinity to a thread where the worker is live, spreading when
//! that thread is busy), makes per-worker V8 snapshots in a child process
//! and keeps them on disk by content, keeps warm spares for per-request
//! isolation, evicts idle isolates (LRU within a memory budget), and
//! enforces limits: CPU time per request (a watchdog terminates the
//! isolate), V8 heap per isolate, wall time to the response head. Durable
//! Objects: every event for a worker's objects goes to the one isolate that
//! hosts them (so each object has one live instance on the node).
//!
//! What it does not do: speak HTTP, route hosts or paths to workers, or
//! parse configuration files. Its decisions (placement, eviction, CPU
//! budget) are plain functions in [`policy`], testable without V8.

mod inflight;
mod limits;
pub mod policy;
mod pool;
pub mod snapshots;
mod thread;
mod watchdog;

pub use limits::{LimitCaps, LimitError, Limits};
pub use pool::{DeployError, FetchError, Isolation, Pool, PoolConfig, PoolStats, WorkerSpec};
pub use snapshots::{Snapshotter, EXIT_LOAD_ERROR, EXIT_UNSUPPORTED};
