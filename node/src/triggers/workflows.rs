//! Workflows, the node's part: the [`Runner`] through which the engine
//! (`outpost-workflows`) hands each pass of an instance's `run()` to the
//! isolate pool, and the engine's task. The engine decides what runs when;
//! this only delivers.

use std::sync::Arc;

use outpost_isolate_pool::{FetchError, Pool};
use outpost_kv::BoxFuture;
use outpost_runtime::DispatchError;
use outpost_workflows::{Engine, ErrorInfo, RunEnd, Runner, WorkflowRun};

/// Delivers workflow runs to the pool.
struct PoolRunner(Pool);

impl Runner for PoolRunner {
    fn run(&self, worker: &str, run: WorkflowRun) -> BoxFuture<'static, RunEnd> {
        let pool = self.0.clone();
        let worker = worker.to_string();
        Box::pin(async move {
            match pool.run_workflow(&worker, run).await {
                Ok(end) => end,
                // The class is missing: running again cannot help.
                Err(FetchError::Dispatch(DispatchError::NoHandler(message))) => {
                    RunEnd::Errored(ErrorInfo::new("Error", message))
                }
                Err(other) => RunEnd::Failed(other.to_string()),
            }
        })
    }
}

/// Runs the engine (on the current tokio runtime) with runs going to `pool`.
pub async fn run_workflows(pool: Pool, engine: Engine) {
    engine.run(Arc::new(PoolRunner(pool))).await;
}
