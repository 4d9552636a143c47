//! What a worker is to the pool: the spec it is deployed from, how its
//! requests share isolates, and a deployed version that its isolates start
//! from. Plain data, shared by the pool (`pool.rs`), its threads
//! (`thread.rs`) and its state machine (`state.rs`).

use outpost_runtime::{Bindings, DurableObjectBinding, SharedLogBudget, WorkerCode, WorkerSource};

use crate::limits::Limits;

/// How a worker's requests share isolates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Isolation {
    /// One isolate serves many requests; module state survives between them.
    #[default]
    Shared,
    /// Every request gets a fresh isolate from the worker's snapshot.
    PerRequest,
}

/// A worker to deploy.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    pub name: String,
    pub source: WorkerSource,
    pub vars: serde_json::Map<String, serde_json::Value>,
    pub isolation: Isolation,
    pub limits: Limits,
    /// What the worker finds on `env` besides `vars` (KV namespaces,
    /// Durable Object namespaces, ...), in order.
    pub bindings: Bindings,
}

impl WorkerSpec {
    /// The worker's Durable Object bindings.
    pub fn durable_objects(&self) -> impl Iterator<Item = &DurableObjectBinding> {
        self.bindings.iter().filter_map(|binding| binding.as_any().downcast_ref::<DurableObjectBinding>())
    }
}

/// One deployed version of a worker: what its isolates start from. Which
/// version is live, and which isolates belong to which version, is the
/// state machine's business (`state.rs`).
pub(crate) struct DeployedWorker {
    pub(crate) spec: WorkerSpec,
    pub(crate) code: WorkerCode,
    /// How much the worker may log, across its isolates and versions.
    pub(crate) log_budget: SharedLogBudget,
}
