//! The engine: the shell around the pure parts. It holds every instance's
//! state in memory (loaded from the store when its workflow is defined),
//! answers the binding's and the command line's calls (`control.rs`),
//! starts runs through a [`Runner`] as the [`Agenda`] allows, answers a
//! run's step calls (`journal.rs`) and records how runs end.
//!
//! One instance's changes are serialized by its lock, and each decision's
//! writes commit in one transaction before it is acknowledged, so what a
//! worker was told survives a crash. An instance's run in flight is
//! identified by a sequence number: terminating or restarting it, or
//! giving up on a run, moves the number on, and the old run's step calls
//! are answered with "halt" from then on.

mod control;
mod journal;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use outpost_kv::objects::ObjectStorage;
use outpost_kv::BoxFuture;
use tokio::sync::{Notify, OnceCell};
use tracing::Instrument as _;

pub use control::{json_params, ControlError, Description, NewInstance, WorkflowSummary};
pub use journal::{DoAnswer, EventAnswer, JournalError, RunJournal, SleepAnswer, SleepUntil, StepFailure};

use crate::agenda::Agenda;
use crate::lifecycle::{self, PassEnd};
use crate::model::{preview, ErrorInfo, InstanceRecord, Payload, Status};
use crate::policy::RETENTION_MS;
use crate::store::{self, StoreError};

/// A workflow as a deployment defines it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Definition {
    /// The workflow's name (node-wide).
    pub name: String,
    /// The worker exporting its class.
    pub worker: String,
    pub class_name: String,
    /// Steps an instance may take.
    pub step_limit: u32,
    /// Instances running at once.
    pub concurrency: u32,
}

/// One run of an instance, for the runner to deliver to the class's worker.
pub struct WorkflowRun {
    pub workflow: String,
    pub class_name: String,
    pub instance_id: String,
    pub params: Payload,
    pub created_ms: u64,
    pub request_id: String,
    /// Where the run's step calls go.
    pub journal: RunJournal,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum RunEnd {
    /// `run()` returned this.
    Complete(Payload),
    /// `run()` threw (or a step failed for good and was not caught).
    Errored(ErrorInfo),
    /// The run stopped at a sleep, a wait, a retry delay or a pause.
    Halted,
    /// No answer from the worker: why (an isolate that died, a worker that
    /// is not deployed, a limit).
    Failed(String),
}

/// Delivers runs to workers: the node implements it with the isolate pool.
pub trait Runner: Send + Sync + 'static {
    fn run(&self, worker: &str, run: WorkflowRun) -> BoxFuture<'static, RunEnd>;
}

/// The longest one run may take before it is given up on.
pub const RUN_LIMIT: Duration = Duration::from_secs(3600);
/// How often finished instances past their retention are looked for.
const SWEEP_EVERY_MS: u64 = 3_600_000;

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The node's workflows. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    storage: Arc<dyn ObjectStorage>,
    workflows: Mutex<HashMap<String, Arc<Workflow>>>,
    /// Which workflows each worker defines.
    defined_by: Mutex<HashMap<String, Vec<String>>>,
    agenda: Mutex<Agenda>,
    wakeup: Notify,
    /// Set by `define`: some workflow may not have its instances loaded.
    loads_pending: std::sync::atomic::AtomicBool,
    runner: OnceLock<Arc<dyn Runner>>,
}

struct Workflow {
    name: String,
    definition: Mutex<Option<Definition>>,
    instances: Mutex<HashMap<String, Arc<Instance>>>,
    loaded: OnceCell<()>,
}

struct Instance {
    live: tokio::sync::Mutex<Live>,
}

/// An instance's state in memory.
struct Live {
    record: InstanceRecord,
    /// The run in flight's number (moved on when a run is given up on).
    run_seq: u64,
    in_run: bool,
}

impl Workflow {
    fn definition(&self) -> Option<Definition> {
        self.definition.lock().unwrap().clone()
    }

    fn instance(&self, id: &str) -> Option<Arc<Instance>> {
        self.instances.lock().unwrap().get(id).cloned()
    }
}

impl Engine {
    pub fn new(storage: Arc<dyn ObjectStorage>) -> Self {
        Engine {
            inner: Arc::new(Inner {
                storage,
                workflows: Mutex::default(),
                defined_by: Mutex::default(),
                agenda: Mutex::default(),
                wakeup: Notify::new(),
                loads_pending: Default::default(),
                runner: OnceLock::new(),
            }),
        }
    }

    /// Makes `worker`'s workflows `definitions`, replacing what it defined
    /// before (a workflow it no longer defines keeps its instances, which
    /// wait until some worker defines it again).
    pub fn define(&self, worker: &str, definitions: Vec<Definition>) {
        let names: Vec<String> = definitions.iter().map(|d| d.name.clone()).collect();
        let before =
            self.inner.defined_by.lock().unwrap().insert(worker.to_string(), names.clone()).unwrap_or_default();
        for name in before.iter().filter(|name| !names.contains(name)) {
            if let Some(workflow) = self.inner.workflows.lock().unwrap().get(name) {
                *workflow.definition.lock().unwrap() = None;
            }
        }
        for definition in definitions {
            let workflow = self.inner.workflow(&definition.name);
            *workflow.definition.lock().unwrap() = Some(definition);
        }
        self.inner.loads_pending.store(true, std::sync::atomic::Ordering::Release);
        self.inner.wakeup.notify_one();
    }

    /// The workflow `name` if some worker defines it.
    pub fn definition(&self, name: &str) -> Option<Definition> {
        self.inner.workflows.lock().unwrap().get(name).and_then(|w| w.definition())
    }

    /// Runs the engine until the runtime stops: instances start as their
    /// workflow's concurrency allows, sleeping ones wake on time, finished
    /// ones past their retention are deleted.
    pub async fn run(self, runner: Arc<dyn Runner>) {
        if self.inner.runner.set(runner).is_err() {
            tracing::warn!("the workflow engine is already running");
            return;
        }
        let mut last_sweep = 0;
        loop {
            let now = now_ms();
            if self.inner.loads_pending.swap(false, std::sync::atomic::Ordering::AcqRel) {
                self.inner.load_defined().await;
            }
            if now.saturating_sub(last_sweep) >= SWEEP_EVERY_MS {
                self.inner.sweep_retention(now).await;
                last_sweep = now;
            }
            let inner = &self.inner;
            let taken = inner.agenda.lock().unwrap().take(now, |name| inner.capacity(name));
            for (workflow, id) in taken {
                tokio::spawn(self.inner.clone().run_instance(workflow, id));
            }
            let next = inner.agenda.lock().unwrap().next_timer();
            let wait = next.map_or(SWEEP_EVERY_MS, |at| at.saturating_sub(now_ms())).min(SWEEP_EVERY_MS);
            tokio::select! {
                _ = inner.wakeup.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(wait.max(1))) => {}
            }
        }
    }
}

impl Inner {
    fn workflow(&self, name: &str) -> Arc<Workflow> {
        self.workflows
            .lock()
            .unwrap()
            .entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(Workflow {
                    name: name.to_string(),
                    definition: Mutex::new(None),
                    instances: Mutex::default(),
                    loaded: OnceCell::new(),
                })
            })
            .clone()
    }

    fn capacity(&self, name: &str) -> u32 {
        self.workflows.lock().unwrap().get(name).and_then(|w| w.definition()).map_or(0, |d| d.concurrency)
    }

    fn wake(&self) {
        self.wakeup.notify_one();
    }

    /// Loads (once) the instances of every defined workflow; `run` calls it
    /// after a `define`, not at every turn.
    async fn load_defined(&self) {
        let workflows: Vec<Arc<Workflow>> = self.workflows.lock().unwrap().values().cloned().collect();
        for workflow in workflows {
            if workflow.definition().is_some() {
                if let Err(err) = self.ensure_loaded(&workflow).await {
                    tracing::error!(workflow = %workflow.name, "cannot load the workflow's instances: {err}");
                    // Tried again at the loop's next turn.
                    self.loads_pending.store(true, std::sync::atomic::Ordering::Release);
                }
            }
        }
    }

    /// Reads a workflow's instances from the store the first time it is
    /// needed and puts each unfinished one where it belongs: ready, timed,
    /// or waiting for an event or a resume.
    async fn ensure_loaded(&self, workflow: &Workflow) -> Result<(), StoreError> {
        workflow
            .loaded
            .get_or_try_init(|| async {
                let records = store::load_instances(self.storage.as_ref(), &workflow.name).await?;
                let mut ready = Vec::new();
                let mut pause_fixes = Vec::new();
                for mut record in records {
                    match record.status {
                        // A run cut by the node's end: replayed.
                        Status::Queued | Status::Running if record.wake_at_ms.is_none() => ready.push(record.id.clone()),
                        Status::WaitingForPause => {
                            record.status = Status::Paused;
                            pause_fixes.push(record.clone());
                        }
                        _ => {}
                    }
                    if let (Some(at), Status::Running | Status::Waiting) = (record.wake_at_ms, record.status) {
                        self.agenda.lock().unwrap().set_timer(&workflow.name, &record.id, at);
                    }
                    if record.status == Status::Waiting && !record.waiting_for.is_empty() {
                        // An event may have come before the crash.
                        ready.push(record.id.clone());
                    }
                    let live = Live { record, run_seq: 0, in_run: false };
                    let id = live.record.id.clone();
                    workflow.instances.lock().unwrap().insert(id, Arc::new(Instance { live: tokio::sync::Mutex::new(live) }));
                }
                let mut writes = Vec::new();
                for record in &pause_fixes {
                    store::record_write(record, &mut writes);
                }
                store::commit(self.storage.as_ref(), &workflow.name, writes).await?;
                let mut agenda = self.agenda.lock().unwrap();
                for id in ready {
                    agenda.push_ready(&workflow.name, &id);
                }
                tracing::debug!(workflow = %workflow.name, instances = workflow.instances.lock().unwrap().len(), "workflow loaded");
                Ok(())
            })
            .await
            .map(|_| ())
    }

    /// Deletes finished instances older than the retention.
    async fn sweep_retention(&self, now: u64) {
        let workflows: Vec<Arc<Workflow>> = self.workflows.lock().unwrap().values().cloned().collect();
        for workflow in workflows {
            if !workflow.loaded.initialized() {
                continue;
            }
            let instances: Vec<(String, Arc<Instance>)> =
                workflow.instances.lock().unwrap().iter().map(|(id, i)| (id.clone(), i.clone())).collect();
            for (id, instance) in instances {
                let live = instance.live.lock().await;
                let expired = live.record.status.is_final()
                    && live.record.ended_ms.is_some_and(|ended| ended.saturating_add(RETENTION_MS) <= now);
                if !expired {
                    continue;
                }
                let removed = async {
                    let writes = store::removal_writes(self.storage.as_ref(), &workflow.name, &id, true).await?;
                    store::commit(self.storage.as_ref(), &workflow.name, writes).await
                };
                match removed.await {
                    Ok(()) => {
                        workflow.instances.lock().unwrap().remove(&id);
                    }
                    Err(err) => {
                        tracing::warn!(workflow = %workflow.name, instance = %id, "cannot delete an expired instance: {err}")
                    }
                }
            }
        }
    }

    /// One run of an instance the agenda handed out (it counts against its
    /// workflow's concurrency until this returns).
    async fn run_instance(self: Arc<Self>, workflow_name: String, id: String) {
        let workflow = self.workflow(&workflow_name);
        let span = tracing::info_span!("workflow.run", workflow = %workflow_name, instance = %id);
        async {
            if let Err(err) = self.run_once(&workflow, &id).await {
                tracing::error!("the run's state could not be stored: {err}");
            }
        }
        .instrument(span)
        .await;
        self.agenda.lock().unwrap().finished(&workflow_name);
        self.wake();
    }

    async fn run_once(self: &Arc<Self>, workflow: &Arc<Workflow>, id: &str) -> Result<(), StoreError> {
        let (Some(definition), Some(instance)) = (workflow.definition(), workflow.instance(id)) else {
            return Ok(());
        };
        let Some(runner) = self.runner.get().cloned() else { return Ok(()) };
        let now = now_ms();
        let (run, seq) = {
            let mut live = instance.live.lock().await;
            let record = &live.record;
            if live.in_run || !lifecycle::runnable(record, now) {
                return Ok(());
            }
            let params = store::read_params(self.storage.as_ref(), &workflow.name, record).await?;
            live.in_run = true;
            live.run_seq += 1;
            let record = &mut live.record;
            record.status = Status::Running;
            record.started_ms.get_or_insert(now);
            record.wake_at_ms = None;
            let params = Payload { encoding: record.params_encoding, bytes: params, json: None };
            let journal = RunJournal::new(
                self.clone(),
                workflow.clone(),
                instance.clone(),
                id.to_string(),
                live.run_seq,
                definition.step_limit,
            );
            let run = WorkflowRun {
                workflow: workflow.name.clone(),
                class_name: definition.class_name.clone(),
                instance_id: id.to_string(),
                params,
                created_ms: live.record.created_ms,
                request_id: format!("wf-{}-{}", id, live.run_seq),
                journal: journal.clone(),
            };
            ((run, journal), live.run_seq)
        };
        let (run, journal) = run;
        let end = match tokio::time::timeout(RUN_LIMIT, runner.run(&definition.worker, run)).await {
            Ok(end) => end,
            Err(_) => RunEnd::Failed(format!("the run took longer than {} minutes", RUN_LIMIT.as_secs() / 60)),
        };
        let mut live = instance.live.lock().await;
        if live.run_seq != seq || live.record.status.is_final() {
            // Terminated or restarted meanwhile: this run's end means nothing.
            return Ok(());
        }
        live.in_run = false;
        live.run_seq += 1; // step calls of this run, if any still come, halt
        let now = now_ms();
        let record = &mut live.record;
        let mut writes = Vec::new();
        let outcome = match end {
            RunEnd::Complete(output) => {
                record.output_chunks = store::output_writes(id, &output.bytes, &mut writes);
                record.output_encoding = Some(output.encoding);
                record.output_json = output.json.as_deref().map(preview);
                tracing::info!("instance complete");
                PassEnd::Complete
            }
            RunEnd::Errored(error) => {
                tracing::info!("instance errored: {}: {}", error.name, error.message);
                PassEnd::Errored(error)
            }
            RunEnd::Halted => PassEnd::Halted(journal.halt_state()),
            RunEnd::Failed(reason) => {
                tracing::warn!("the pass got no answer ({reason})");
                PassEnd::Failed(reason)
            }
        };
        let next = lifecycle::after_pass(record, outcome, now);
        {
            let mut agenda = self.agenda.lock().unwrap();
            if let Some(at) = next.timer {
                agenda.set_timer(&workflow.name, id, at);
            }
            if next.run_again {
                agenda.push_ready(&workflow.name, id);
            }
        }
        if next.look_for_events {
            let pending = store::pending_events(self.storage.as_ref(), &workflow.name, id).await?;
            if pending.iter().any(|event| record.waiting_for.contains(&event.event_type)) {
                self.agenda.lock().unwrap().push_ready(&workflow.name, id);
            }
        }
        store::record_write(record, &mut writes);
        store::commit(self.storage.as_ref(), &workflow.name, writes).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::Control;
    use crate::model::Encoding;

    /// Ends every pass as complete, echoing the params: the engine's
    /// bookkeeping without a runtime (the runtime's part is tested through
    /// `outpost` itself).
    struct Echo;

    impl Runner for Echo {
        fn run(&self, _worker: &str, run: WorkflowRun) -> BoxFuture<'static, RunEnd> {
            Box::pin(async move { RunEnd::Complete(run.params) })
        }
    }

    fn store() -> (tempfile::TempDir, Arc<dyn ObjectStorage>) {
        let dir = tempfile::tempdir().unwrap();
        let store = outpost_kv::Store::open(&dir.path().join("kv.redb"), Default::default()).unwrap();
        (dir, Arc::new(store))
    }

    fn definition() -> Definition {
        Definition { name: "w".into(), worker: "worker".into(), class_name: "W".into(), step_limit: 10, concurrency: 4 }
    }

    async fn wait_for(engine: &Engine, id: &str, status: Status) {
        for _ in 0..500 {
            if engine.status("w", id).await.unwrap().status == status {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("{id} never became {status:?}");
    }

    #[tokio::test]
    async fn finished_instances_are_deleted_after_their_retention() {
        let (_dir, storage) = store();
        let engine = Engine::new(storage.clone());
        engine.define("worker", vec![definition()]);
        tokio::spawn(engine.clone().run(Arc::new(Echo)));
        let params = Payload { encoding: Encoding::Json, bytes: b"7".to_vec(), json: Some("7".into()) };
        let ids = engine.create("w", vec![NewInstance { id: Some("old".into()), params }]).await.unwrap();
        wait_for(&engine, &ids[0], Status::Complete).await;
        assert_eq!(engine.status("w", "old").await.unwrap().output.unwrap().bytes, b"7");

        engine.inner.sweep_retention(now_ms() + RETENTION_MS - 60_000).await;
        assert!(engine.exists("w", "old").await.is_ok(), "kept within its retention");
        engine.inner.sweep_retention(now_ms() + RETENTION_MS + 1).await;
        assert!(matches!(engine.exists("w", "old").await, Err(ControlError::NotFound { .. })));
        let left = storage.object_list(&store::workflow_object("w"), Default::default()).await.unwrap();
        assert!(left.is_empty(), "every key of the instance is gone: {left:?}");
    }

    #[tokio::test]
    async fn instances_wait_while_their_workflow_is_not_deployed() {
        let (_dir, storage) = store();
        let engine = Engine::new(storage.clone());
        engine.define("worker", vec![definition()]);
        let params = Payload { encoding: Encoding::Json, bytes: b"1".to_vec(), json: None };
        engine.create("w", vec![NewInstance { id: Some("a".into()), params }]).await.unwrap();
        // Its worker stops defining it before the engine runs: it stays queued.
        engine.define("worker", Vec::new());
        tokio::spawn(engine.clone().run(Arc::new(Echo)));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(matches!(engine.status("w", "a").await, Err(ControlError::NoSuchWorkflow(_))));
        engine.define("worker", vec![definition()]);
        wait_for(&engine, "a", Status::Complete).await;
    }

    #[tokio::test]
    async fn an_instance_holds_at_most_a_thousand_events_no_step_took() {
        let (_dir, storage) = store();
        let engine = Engine::new(storage);
        engine.define("worker", vec![definition()]);
        let params = Payload { encoding: Encoding::Json, bytes: b"1".to_vec(), json: None };
        engine.create("w", vec![NewInstance { id: Some("a".into()), params: params.clone() }]).await.unwrap();
        for _ in 0..crate::policy::MAX_PENDING_EVENTS {
            engine.send_event("w", "a", "ping", params.clone()).await.unwrap();
        }
        let refused = engine.send_event("w", "a", "ping", params.clone()).await.unwrap_err();
        assert!(matches!(refused, ControlError::TooManyEvents { .. }), "{refused}");
        assert_eq!(engine.describe("w", "a").await.unwrap().pending_events.len(), 1000);
        // A restart clears them.
        engine.control("w", "a", Control::Restart).await.unwrap();
        engine.send_event("w", "a", "ping", params).await.unwrap();
    }
}
