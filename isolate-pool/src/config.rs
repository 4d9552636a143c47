//! The pool's settings and what it answers with besides responses: its
//! counts and its errors. Plain data.

use std::path::PathBuf;
use std::time::Duration;

use outpost_runtime::{DispatchError, Egress};

use crate::limits::{LimitCaps, LimitError};
use crate::policy::{EvictionRules, PlacementRules};
use crate::snapshots::{SnapshotStoreError, Snapshotter};

/// Node-wide settings.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// OS threads running isolates.
    pub threads: usize,
    /// Where per-worker snapshots are kept.
    pub snapshot_dir: PathBuf,
    /// How snapshots are made (a child process).
    pub snapshotter: Snapshotter,
    /// Whether isolates start from a per-worker snapshot rather than the
    /// bootstrap snapshot plus evaluating the worker's modules.
    ///
    /// Only for a pool that runs **one** worker (as `outpost dev` does): V8
    /// shares one read-only heap per process, taken from the first snapshot
    /// an isolate starts from, and a snapshot made from scratch promotes
    /// objects of its own into read-only space, so isolates from two
    /// different snapshots in one process corrupt each other. Layering the
    /// worker snapshot on the bootstrap one would keep the read-only heap,
    /// but deno_core 0.413 drops the lower layer's external source strings
    /// when it layers (see ARCHITECTURE.md). A second deploy is refused.
    pub worker_snapshots: bool,
    pub placement: PlacementRules,
    pub eviction: EvictionRules,
    /// Ready isolates kept per per-request worker.
    pub warm_spares: usize,
    /// The most any worker's limits may be; a worker asking for more is
    /// refused at deploy.
    pub caps: LimitCaps,
    /// Where workers' outbound `fetch` may connect.
    pub egress: Egress,
    /// What the node lends every worker's bindings (its store, ...); the
    /// pool adds the router of Durable Object calls.
    pub services: outpost_runtime::BindingServices,
}

impl PoolConfig {
    pub fn new(snapshot_dir: PathBuf, snapshotter: Snapshotter) -> Self {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            threads,
            snapshot_dir,
            snapshotter,
            worker_snapshots: false,
            placement: PlacementRules { max_concurrent_per_isolate: 64, busy_thread_in_flight: 8 },
            eviction: EvictionRules { idle_timeout: Duration::from_secs(300), memory_budget_bytes: 2 << 30 },
            warm_spares: 2,
            caps: LimitCaps::default(),
            egress: Egress::PublicOnly,
            services: outpost_runtime::BindingServices::new(),
        }
    }
}

/// Why a worker could not be deployed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeployError {
    /// The worker is broken: syntax error, bad import, no handler, ...
    #[error("{0}")]
    Load(String),
    #[error(transparent)]
    Store(#[from] SnapshotStoreError),
    #[error("the pool has stopped")]
    PoolStopped,
    /// A pool with per-worker snapshots runs one worker, deployed once.
    #[error("this pool runs one worker from its snapshot ({0:?}); start another pool (process) for another worker")]
    OneWorkerPerSnapshotPool(String),
    #[error(transparent)]
    Limits(#[from] LimitError),
}

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    #[error("no worker named {0:?} is deployed")]
    NoSuchWorker(String),
    #[error(transparent)]
    Dispatch(#[from] DispatchError),
}

/// Counts that describe the pool now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub live_isolates: usize,
    pub in_flight: usize,
    pub workers: usize,
}
