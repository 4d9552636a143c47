//! The pool: deployed workers, live isolates, and the threads they run on.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use outpost_runtime::{
    Bindings, Body, DispatchError, DurableObjectBinding, Egress, HttpRequest, IsolateSignals, ObjectAddress,
    ObjectRouter, Responder, RouteFuture, RpcCall, RpcOutcome, SharedLogBudget, WorkerCode, WorkerEvent, WorkerOptions,
    WorkerSource,
};
use tokio::sync::{mpsc, oneshot};

use crate::inflight::{GuardedBody, InFlightGuard, LastUsed};
use crate::limits::{LimitCaps, LimitError, Limits};
use crate::policy::{self, EvictionRules, IsolateId, IsolateLoad, IsolateUse, Placement, PlacementRules};
use crate::snapshots::{SnapshotOutcome, SnapshotStore, SnapshotStoreError, Snapshotter};
use crate::thread::{self, Command, StartIsolate, ThreadHandle};

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

pub(crate) struct DeployedWorker {
    pub(crate) spec: WorkerSpec,
    pub(crate) code: WorkerCode,
    /// How much the worker may log, across its isolates.
    log_budget: SharedLogBudget,
    /// Bumped on every deploy of the same name, so isolates of an older
    /// version are never picked again.
    generation: u64,
}

struct LiveIsolate {
    worker: String,
    generation: u64,
    thread: usize,
    /// `None` once nothing more may be sent: evicted, replaced, or (in
    /// per-request mode) taken by its one request.
    sender: Option<mpsc::UnboundedSender<WorkerEvent>>,
    in_flight: Arc<AtomicUsize>,
    /// Requests answered, for the CPU meter (a completion refills the budget).
    completed: Arc<AtomicU64>,
    /// Open WebSockets (busy for eviction) and retirement, shared with the isolate.
    signals: Arc<IsolateSignals>,
    last_used: LastUsed,
    memory_bytes: usize,
    /// The isolate hosting the worker's Durable Objects: it takes only
    /// object calls, and there is one per worker, so each object has one
    /// live instance on the node.
    hosts_objects: bool,
}

impl LiveIsolate {
    /// Closes the queue for good: the isolate finishes what it has, closes
    /// its WebSockets, and goes.
    fn retire(&mut self) {
        self.signals.go_away();
        self.sender = None;
    }
}

#[derive(Default)]
struct State {
    workers: HashMap<String, Arc<DeployedWorker>>,
    isolates: HashMap<IsolateId, LiveIsolate>,
    /// The live isolates of each worker, so placing a request does not scan
    /// every isolate of the node.
    by_worker: HashMap<String, Vec<IsolateId>>,
    /// Each worker's object-hosting isolate.
    object_hosts: HashMap<String, IsolateId>,
    /// Hosts that start only once the isolate they replace is gone (it may
    /// still be finishing events of the same objects): by the old one's id.
    deferred_starts: HashMap<IsolateId, DeferredStart>,
    generation: u64,
}

impl State {
    fn remove_isolate(&mut self, id: IsolateId) {
        if let Some(isolate) = self.isolates.remove(&id) {
            if self.object_hosts.get(&isolate.worker) == Some(&id) {
                self.object_hosts.remove(&isolate.worker);
            }
            if let Some(ids) = self.by_worker.get_mut(&isolate.worker) {
                ids.retain(|&other| other != id);
                if ids.is_empty() {
                    self.by_worker.remove(&isolate.worker);
                }
            }
        }
    }
}

/// A host waiting for the one it replaces to be gone.
struct DeferredStart {
    thread: usize,
    start: Box<StartIsolate>,
    since: Instant,
}

/// How long a new object host waits for the one it replaces. An old host
/// can be kept busy indefinitely (a streamed response, or an object of it
/// calling an object of the new host, which waits on it): after this the new
/// one starts anyway, so calls never hang; objects still running on the old
/// host may then briefly have a second instance.
const HOST_DRAIN_DEADLINE: Duration = Duration::from_secs(10);

pub(crate) struct Inner {
    /// The origin of `LastUsed` times.
    epoch: Instant,
    config: PoolConfig,
    threads: Vec<ThreadHandle>,
    /// Requests in flight per thread, kept beside the per-isolate counts.
    thread_in_flight: Vec<Arc<AtomicUsize>>,
    state: Mutex<State>,
    store: SnapshotStore,
    next_id: AtomicU64,
    stopping: AtomicBool,
    /// Set by [`Pool::close_websockets`]: isolates started later close
    /// their WebSockets too.
    closing_websockets: AtomicBool,
}

/// Runs workers' isolates on a fixed set of threads. Cheap to clone.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

/// Counts that describe the pool now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub live_isolates: usize,
    pub in_flight: usize,
    pub workers: usize,
}

impl Pool {
    /// Starts the threads. V8 must be initialised (`outpost_runtime::init_v8`).
    pub fn start(config: PoolConfig) -> Pool {
        let store = SnapshotStore::new(config.snapshot_dir.clone(), config.snapshotter.clone());
        let inner = Arc::new_cyclic(|weak: &Weak<Inner>| {
            let threads: Vec<_> = (0..config.threads.max(1)).map(|index| thread::spawn(index, weak.clone())).collect();
            let thread_in_flight = threads.iter().map(|_| Arc::new(AtomicUsize::new(0))).collect();
            Inner {
                epoch: Instant::now(),
                config,
                threads,
                thread_in_flight,
                state: Mutex::new(State::default()),
                store,
                next_id: AtomicU64::new(1),
                stopping: AtomicBool::new(false),
                closing_websockets: AtomicBool::new(false),
            }
        });
        crate::watchdog::spawn(Arc::downgrade(&inner), inner.threads.iter().map(|t| t.slot.clone()).collect());
        Pool { inner }
    }

    /// Loads (or replaces) a worker: makes its snapshot if needed and starts
    /// its first isolate, so that a broken worker fails here. Blocks while
    /// the snapshot is made; call it off the async threads.
    pub fn deploy(&self, spec: WorkerSpec) -> Result<(), DeployError> {
        spec.limits.check(&self.inner.config.caps)?;
        self.check_object_bindings(&spec)?;
        if self.inner.config.worker_snapshots {
            let state = self.inner.state.lock().unwrap();
            if let Some(existing) = state.workers.keys().next() {
                return Err(DeployError::OneWorkerPerSnapshotPool(existing.clone()));
            }
        }
        let code = if self.inner.config.worker_snapshots {
            match self.inner.store.get_or_create(&spec.source) {
                Ok(SnapshotOutcome::Ready { snapshot, digest }) => {
                    tracing::debug!(worker = %spec.name, digest, "using the worker snapshot");
                    WorkerCode::Snapshot(snapshot)
                }
                Ok(SnapshotOutcome::Unsupported { reason }) => {
                    tracing::warn!(worker = %spec.name, "no worker snapshot, isolates will evaluate the modules: {reason}");
                    WorkerCode::Evaluate
                }
                Ok(SnapshotOutcome::LoadFailed { message }) => {
                    tracing::debug!(worker = %spec.name, "the worker failed to load for its snapshot: {message}");
                    WorkerCode::Evaluate
                }
                Err(err) => return Err(err.into()),
            }
        } else {
            WorkerCode::Evaluate
        };
        let (loaded_tx, loaded_rx) = oneshot::channel();
        let worker = {
            let mut state = self.inner.state.lock().unwrap();
            state.generation += 1;
            // A redeploy keeps the worker's log budget: redeploying must not
            // be a way to log more.
            let log_budget = state.workers.get(&spec.name).map(|w| w.log_budget.clone()).unwrap_or_default();
            let worker = Arc::new(DeployedWorker { spec, code, log_budget, generation: state.generation });
            // The new version's first isolate loads before it takes traffic.
            let thread = policy::quietest_thread(&self.inner.thread_load());
            self.inner.start_isolate(&mut state, &worker, thread, Some(loaded_tx));
            worker
        };
        match loaded_rx.blocking_recv() {
            Ok(Ok(())) => {}
            Ok(Err(message)) => return Err(DeployError::Load(message)),
            Err(_) => return Err(DeployError::PoolStopped),
        }
        let mut state = self.inner.state.lock().unwrap();
        let name = worker.spec.name.clone();
        // Older isolates of this worker finish what they have and stop.
        for isolate in state.isolates.values_mut().filter(|i| i.worker == name && i.generation != worker.generation) {
            isolate.retire();
        }
        state.workers.insert(name, worker);
        Ok(())
    }

    /// A binding to a class of another worker (`script_name`) needs that
    /// worker to declare the class itself: a worker hosts only the classes
    /// its own bindings name. Checked when the other worker is deployed
    /// already; otherwise the first call says so.
    fn check_object_bindings(&self, spec: &WorkerSpec) -> Result<(), DeployError> {
        let state = self.inner.state.lock().unwrap();
        for binding in spec.durable_objects().filter(|b| b.script != spec.name) {
            let Some(host) = state.workers.get(&binding.script) else { continue };
            let declared = host
                .spec
                .durable_objects()
                .any(|own| own.script == binding.script && own.class_name == binding.class_name);
            if !declared {
                return Err(DeployError::Load(format!(
                    "the Durable Object binding {} names class {} of worker {:?}, which that worker does not declare in its own [[durable_objects.bindings]]",
                    binding.binding, binding.class_name, binding.script
                )));
            }
        }
        Ok(())
    }

    /// Sends a request to a worker's `fetch` and waits for the response head.
    pub async fn fetch(&self, worker: &str, request: HttpRequest) -> Result<http::Response<Body>, FetchError> {
        let placed = self.place(worker)?;
        let response = dispatch(&placed, |respond| WorkerEvent::Fetch { request, respond }, true).await?;
        Ok(placed.guard_body(response))
    }

    /// Sends a request to a Durable Object of `worker` (one of the classes
    /// it exports) and waits for the response head. Every event for the
    /// worker's objects goes to the one isolate hosting them.
    pub async fn fetch_object(
        &self,
        worker: &str,
        object: ObjectAddress,
        request: HttpRequest,
    ) -> Result<http::Response<Body>, FetchError> {
        let placed = self.place_object(worker)?;
        let event = |respond| WorkerEvent::ObjectFetch { object, request, respond };
        let response = dispatch(&placed, event, true).await?;
        Ok(placed.guard_body(response))
    }

    /// Calls a method of a Durable Object of `worker` (JS RPC).
    pub async fn call_object(
        &self,
        worker: &str,
        object: ObjectAddress,
        call: RpcCall,
    ) -> Result<RpcOutcome, FetchError> {
        let placed = self.place_object(worker)?;
        dispatch(&placed, |respond| WorkerEvent::ObjectCall { object, call, respond }, true).await
    }

    /// Runs the `alarm()` of a Durable Object of `worker`; `Ok` once it ran
    /// to the end. An alarm is not bound by the wall-clock limit: its
    /// handler is waited for until it ends (its CPU is still limited), so a
    /// slow one never runs twice at once.
    pub async fn run_alarm(
        &self,
        worker: &str,
        object: ObjectAddress,
        retry_count: u32,
        request_id: String,
    ) -> Result<(), FetchError> {
        let placed = self.place_object(worker)?;
        dispatch(&placed, |respond| WorkerEvent::Alarm { object, retry_count, request_id, respond }, false).await
    }

    fn place_object(&self, worker: &str) -> Result<Placed, FetchError> {
        let inner = &self.inner;
        let mut state = inner.state.lock().unwrap();
        let deployed =
            state.workers.get(worker).cloned().ok_or_else(|| FetchError::NoSuchWorker(worker.to_string()))?;
        let previous = state.object_hosts.get(worker).copied();
        let current = previous.filter(|id| {
            state.isolates.get(id).is_some_and(|i| i.generation == deployed.generation && i.sender.is_some())
        });
        let id = match current {
            Some(id) => id,
            None => {
                // An old host (evicted, or of the previous version) may still
                // be finishing events: the new one starts after it is gone,
                // so an object never has two live instances.
                let thread = policy::quietest_thread(&inner.thread_load());
                let id = inner.start_isolate_after(&mut state, &deployed, thread, None, previous);
                state.isolates.get_mut(&id).expect("just started").hosts_objects = true;
                state.object_hosts.insert(worker.to_string(), id);
                id
            }
        };
        Ok(inner.admit(&mut state, id, false, deployed.spec.limits))
    }

    fn place(&self, worker: &str) -> Result<Placed, FetchError> {
        let inner = &self.inner;
        let mut state = inner.state.lock().unwrap();
        let deployed =
            state.workers.get(worker).cloned().ok_or_else(|| FetchError::NoSuchWorker(worker.to_string()))?;
        let load = inner.thread_load();
        let candidates: Vec<IsolateLoad> = state
            .by_worker
            .get(worker)
            .into_iter()
            .flatten()
            .filter_map(|id| state.isolates.get(id).map(|i| (*id, i)))
            .filter(|(_, i)| i.generation == deployed.generation && i.sender.is_some() && !i.hosts_objects)
            .map(|(id, i)| IsolateLoad { id, thread: i.thread, in_flight: i.in_flight.load(Ordering::Relaxed) })
            .collect();
        let id = match deployed.spec.isolation {
            Isolation::Shared => {
                let rules = PlacementRules {
                    max_concurrent_per_isolate: deployed.spec.limits.max_concurrent,
                    ..inner.config.placement
                };
                match policy::place(&candidates, &load, rules) {
                    Placement::Existing(id) => id,
                    Placement::New { thread } => inner.start_isolate(&mut state, &deployed, thread, None),
                }
            }
            Isolation::PerRequest => {
                // A ready spare on the quietest thread, else a new isolate;
                // either way, top the spares up again off this request's path.
                let spare = candidates.iter().min_by_key(|c| (load[c.thread], c.id)).map(|c| (c.id, c.thread));
                let (id, thread) = match spare {
                    Some(spare) => spare,
                    None => {
                        let thread = policy::quietest_thread(&load);
                        (inner.start_isolate(&mut state, &deployed, thread, None), thread)
                    }
                };
                let spares_left = candidates.len().saturating_sub(usize::from(spare.is_some()));
                for _ in spares_left..inner.config.warm_spares {
                    inner.start_isolate(&mut state, &deployed, thread, None);
                }
                id
            }
        };
        let per_request = deployed.spec.isolation == Isolation::PerRequest;
        Ok(inner.admit(&mut state, id, per_request, deployed.spec.limits))
    }

    /// Checks limits against this pool's caps, as a deploy would.
    pub fn check_limits(&self, limits: &Limits) -> Result<(), LimitError> {
        limits.check(&self.inner.config.caps)
    }

    /// Whether a worker of that name is deployed.
    pub fn is_deployed(&self, worker: &str) -> bool {
        self.inner.state.lock().unwrap().workers.contains_key(worker)
    }

    /// Whether [`stop`](Self::stop) was called.
    pub fn is_stopping(&self) -> bool {
        self.inner.stopping.load(Ordering::Relaxed)
    }

    /// Counts for monitoring and tests.
    pub fn stats(&self) -> PoolStats {
        let state = self.inner.state.lock().unwrap();
        PoolStats {
            live_isolates: state.isolates.len(),
            in_flight: self.inner.thread_load().iter().sum(),
            workers: state.workers.len(),
        }
    }

    /// Evicts what the eviction rules say should go now. The pool's own
    /// maintenance calls this every second.
    pub fn evict_now(&self) -> usize {
        self.inner.evict(Instant::now(), self.inner.config.eviction)
    }

    /// Evicts every isolate idle for at least `idle_for`, whatever the
    /// configured timeout.
    pub fn evict_idle(&self, idle_for: Duration) -> usize {
        let rules = EvictionRules { idle_timeout: idle_for, ..self.inner.config.eviction };
        self.inner.evict(Instant::now(), rules)
    }

    /// Has every isolate close its WebSockets as going away (1001), now
    /// and for sockets opened later, while requests go on being served: for
    /// the start of a shutdown, so the front can drain.
    pub fn close_websockets(&self) {
        self.inner.closing_websockets.store(true, Ordering::SeqCst);
        let state = self.inner.state.lock().unwrap();
        for isolate in state.isolates.values() {
            isolate.signals.go_away();
        }
    }

    /// Stops every isolate after its in-flight work.
    pub fn stop(&self) {
        self.inner.stopping.store(true, Ordering::Relaxed);
        let mut state = self.inner.state.lock().unwrap();
        for isolate in state.isolates.values_mut() {
            isolate.retire();
        }
        for thread in &self.inner.threads {
            let _ = thread.commands.send(Command::Stop);
        }
    }
}

impl Inner {
    /// Counts a request into isolate `id` and hands out its queue; `take`
    /// closes the queue behind it (the isolate serves this one request).
    fn admit(&self, state: &mut State, id: IsolateId, take: bool, limits: Limits) -> Placed {
        let isolate = state.isolates.get_mut(&id).expect("placement picks a live isolate");
        let sender = if take { isolate.sender.take() } else { isolate.sender.clone() }
            .expect("placement picks an isolate that takes requests");
        isolate.in_flight.fetch_add(1, Ordering::Relaxed);
        let thread_counter = self.thread_in_flight[isolate.thread].clone();
        thread_counter.fetch_add(1, Ordering::Relaxed);
        isolate.last_used.touch();
        let guard = InFlightGuard {
            counter: isolate.in_flight.clone(),
            thread_counter,
            completed: isolate.completed.clone(),
            last_used: isolate.last_used.clone(),
        };
        Placed { sender, guard, limits }
    }

    /// Requests in flight on each thread.
    fn thread_load(&self) -> Vec<usize> {
        self.thread_in_flight.iter().map(|n| n.load(Ordering::Relaxed)).collect()
    }

    /// Orders a new isolate of `worker` on `thread`; returns its id.
    fn start_isolate(
        &self,
        state: &mut State,
        worker: &Arc<DeployedWorker>,
        thread: usize,
        loaded: Option<oneshot::Sender<Result<(), String>>>,
    ) -> IsolateId {
        self.start_isolate_after(state, worker, thread, loaded, None)
    }

    /// Like `start_isolate`; with `after`, the isolate takes its queue (which
    /// fills meanwhile) only once isolate `after` is gone.
    fn start_isolate_after(
        &self,
        state: &mut State,
        worker: &Arc<DeployedWorker>,
        thread: usize,
        loaded: Option<oneshot::Sender<Result<(), String>>>,
        after: Option<IsolateId>,
    ) -> IsolateId {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = mpsc::unbounded_channel();
        state.isolates.insert(
            id,
            LiveIsolate {
                worker: worker.spec.name.clone(),
                generation: worker.generation,
                thread,
                sender: Some(sender),
                in_flight: Arc::new(AtomicUsize::new(0)),
                completed: Arc::new(AtomicU64::new(0)),
                signals: Arc::new(IsolateSignals::default()),
                last_used: LastUsed::new(self.epoch),
                memory_bytes: 0,
                hosts_objects: false,
            },
        );
        state.by_worker.entry(worker.spec.name.clone()).or_default().push(id);
        let in_flight = state.isolates[&id].in_flight.clone();
        let completed = state.isolates[&id].completed.clone();
        let signals = state.isolates[&id].signals.clone();
        let last_used = state.isolates[&id].last_used.clone();
        if self.closing_websockets.load(Ordering::SeqCst) {
            signals.go_away();
        }
        let start = Box::new(StartIsolate {
            id,
            worker: worker.clone(),
            receiver,
            in_flight,
            completed,
            signals,
            last_used,
            loaded,
        });
        if let Some(after) = after.filter(|after| state.isolates.contains_key(after)) {
            state.deferred_starts.insert(after, DeferredStart { thread, start, since: Instant::now() });
            return id;
        }
        // A pool thread only goes away when the pool stops; until then the
        // send succeeds, and after it the isolate's queue is simply closed.
        let _ = self.threads[thread].commands.send(Command::Start(start));
        id
    }

    pub(crate) fn isolate_loaded(&self, id: IsolateId, memory_bytes: usize) {
        if let Some(isolate) = self.state.lock().unwrap().isolates.get_mut(&id) {
            isolate.memory_bytes = memory_bytes;
        }
    }

    /// The isolate stopped (done, evicted, terminated or failed to load).
    pub(crate) fn isolate_gone(&self, id: IsolateId) {
        let mut state = self.state.lock().unwrap();
        state.remove_isolate(id);
        if let Some(deferred) = state.deferred_starts.remove(&id) {
            self.start_deferred(deferred);
        }
    }

    /// Sends a host that waited for its predecessor to its thread.
    fn start_deferred(&self, deferred: DeferredStart) {
        let _ = self.threads[deferred.thread].commands.send(Command::Start(deferred.start));
    }

    fn evict(&self, now: Instant, rules: EvictionRules) -> usize {
        let mut state = self.state.lock().unwrap();
        let usage: Vec<IsolateUse> = state
            .isolates
            .iter()
            .filter(|(_, i)| i.sender.is_some())
            .map(|(&id, i)| IsolateUse {
                id,
                last_used: i.last_used.get(),
                memory_bytes: i.memory_bytes,
                // Open WebSockets keep an isolate as busy as requests do.
                in_flight: i.in_flight.load(Ordering::Relaxed) + i.signals.open_sockets.load(Ordering::Relaxed),
            })
            .collect();
        let evicted = policy::evict(now, &usage, rules);
        for id in &evicted {
            if let Some(isolate) = state.isolates.get_mut(id) {
                tracing::debug!(worker = %isolate.worker, isolate = id, "evicting an idle isolate");
                isolate.retire();
            }
        }
        evicted.len()
    }

    pub(crate) fn maintain(&self) -> bool {
        if self.stopping.load(Ordering::Relaxed) {
            return false;
        }
        self.evict(Instant::now(), self.config.eviction);
        self.release_overdue_hosts(Instant::now());
        true
    }

    /// Starts the object hosts that waited past `HOST_DRAIN_DEADLINE`.
    fn release_overdue_hosts(&self, now: Instant) {
        let mut state = self.state.lock().unwrap();
        let overdue: Vec<IsolateId> = state
            .deferred_starts
            .iter()
            .filter(|(_, deferred)| now.duration_since(deferred.since) >= HOST_DRAIN_DEADLINE)
            .map(|(old, _)| *old)
            .collect();
        for old in overdue {
            if let Some(deferred) = state.deferred_starts.remove(&old) {
                tracing::warn!(
                    isolate = old,
                    "an old object host is still busy after {} s; starting its replacement",
                    HOST_DRAIN_DEADLINE.as_secs()
                );
                self.start_deferred(deferred);
            }
        }
    }
}

/// Where an event goes, and what counts it in flight.
struct Placed {
    sender: mpsc::UnboundedSender<WorkerEvent>,
    guard: InFlightGuard,
    limits: Limits,
}

impl Placed {
    /// The response, counted in flight until its body is done.
    fn guard_body(self, response: http::Response<Body>) -> http::Response<Body> {
        let guard = self.guard;
        response.map(|body| Body::new(GuardedBody { body, _guard: guard }))
    }
}

/// Sends a placed event and waits for its outcome (for a response, its
/// head), within the worker's wall-clock limit if `wall_limit`.
async fn dispatch<T>(
    placed: &Placed,
    event: impl FnOnce(Responder<T>) -> WorkerEvent,
    wall_limit: bool,
) -> Result<T, FetchError> {
    let wall_ms = if wall_limit { placed.limits.wall_ms } else { None };
    let (respond, outcome) = oneshot::channel();
    placed.sender.send(event(respond)).map_err(|_| DispatchError::WorkerGone)?;
    let outcome = match wall_ms {
        Some(limit_ms) => match tokio::time::timeout(Duration::from_millis(limit_ms), outcome).await {
            Ok(outcome) => outcome,
            Err(_) => return Err(DispatchError::WallLimitExceeded { limit_ms }.into()),
        },
        None => outcome.await,
    };
    Ok(outcome.map_err(|_| DispatchError::WorkerGone)??)
}

/// Routes the calls of Durable Object stubs back into the pool.
struct PoolRouter(Weak<Inner>);

impl PoolRouter {
    fn pool(&self) -> Result<Pool, DispatchError> {
        self.0.upgrade().map(|inner| Pool { inner }).ok_or(DispatchError::WorkerGone)
    }
}

/// What a stub is told when the event did not get through.
fn route_error(err: FetchError) -> DispatchError {
    match err {
        FetchError::Dispatch(err) => err,
        // The class's worker is not deployed on this node.
        FetchError::NoSuchWorker(_) => DispatchError::WorkerGone,
    }
}

impl ObjectRouter for PoolRouter {
    fn fetch(&self, script: &str, object: ObjectAddress, request: HttpRequest) -> RouteFuture<http::Response<Body>> {
        let pool = self.pool();
        let script = script.to_string();
        Box::pin(async move { pool?.fetch_object(&script, object, request).await.map_err(route_error) })
    }

    fn call(&self, script: &str, object: ObjectAddress, call: RpcCall) -> RouteFuture<RpcOutcome> {
        let pool = self.pool();
        let script = script.to_string();
        Box::pin(async move { pool?.call_object(&script, object, call).await.map_err(route_error) })
    }
}

pub(crate) fn worker_options(
    worker: &DeployedWorker,
    pool: &Weak<Inner>,
    signals: Arc<IsolateSignals>,
) -> WorkerOptions {
    let config = pool.upgrade().map(|pool| (pool.config.egress, pool.config.services.clone()));
    let (egress, mut services) = config.unwrap_or((Egress::PublicOnly, Default::default()));
    services.insert::<Arc<dyn ObjectRouter>>(Arc::new(PoolRouter(pool.clone())));
    WorkerOptions {
        signals,
        name: worker.spec.name.clone(),
        vars: worker.spec.vars.clone(),
        heap_limit_bytes: Some((worker.spec.limits.memory_mb as usize) << 20),
        bindings: worker.spec.bindings.clone(),
        services,
        log_budget: worker.log_budget.clone(),
        egress,
    }
}
