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
//! parse configuration files.
//!
//! # How it is built
//!
//! Decisions are data. [`policy`] has the single decisions as plain
//! functions (which isolate or thread takes a request, which isolates to
//! evict, the CPU budget, when idle work is over). `state` is the pool's
//! bookkeeping as a state machine that applies them: `(now, event) →
//! actions` (place a request, place an object call, an isolate gone, the
//! periodic tick with evictions and the object-host drain deadline, a
//! deploy, a stop), time and load passed in, never read. `pool` is the
//! shell: it takes the lock, asks the machine, and carries the actions out
//! (queues, commands to threads, signals). `thread` runs isolates and
//! meters their CPU, and knows the pool only through its `IsolateHost`
//! trait.
//!
//! Modules depend downwards only:
//!
//! ```text
//! pool ─┬─▶ thread ───┬─▶ watchdog ─▶ policy
//!       │             ├─▶ worker ─▶ limits
//!       │             └─▶ inflight, policy
//!       ├─▶ state ────┬─▶ policy
//!       │             └─▶ worker
//!       ├─▶ dispatch ─┬─▶ config ─▶ policy, limits, snapshots
//!       │             └─▶ inflight, limits
//!       └─▶ config, worker, snapshots, watchdog
//! ```
//!
//! The pool's maintenance (eviction, the drain deadline) rides on the
//! watchdog thread as a closure the pool hands it, once a second.

mod config;
mod dispatch;
mod inflight;
mod limits;
pub mod policy;
mod pool;
pub mod snapshots;
mod state;
mod thread;
mod watchdog;
mod worker;

pub use config::{DeployError, FetchError, PoolConfig, PoolStats};
pub use limits::{LimitCaps, LimitError, Limits};
pub use pool::Pool;
pub use snapshots::{Snapshotter, EXIT_LOAD_ERROR, EXIT_UNSUPPORTED};
pub use worker::{Isolation, WorkerSpec};
