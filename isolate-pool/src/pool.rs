//! The pool: the shell around the state machine (`state.rs`). It takes the
//! lock, asks [`PoolState`] what to do, and carries the answer out: makes
//! isolates' queues and counters, sends isolates to their threads, hands
//! an event its isolate's queue and counts it in flight, tells retired
//! isolates to go away. Deploys (the snapshot, waiting for the first
//! isolate to load) and dispatch (the wall-clock limit) are here too.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use outpost_runtime::{Egress, IsolateSignals, ObjectRouter, ServiceRouter, WorkerCode, WorkerEvent, WorkerOptions};
use tokio::sync::{mpsc, oneshot};

use crate::config::{DeployError, PoolConfig, PoolStats};
use crate::dispatch::Placed;
use crate::inflight::{InFlightGuard, LastUsed};
use crate::limits::{LimitError, Limits};
use crate::policy::{EvictionRules, IsolateId};
use crate::snapshots::{SnapshotOutcome, SnapshotStore};
use crate::state::{Action, Gauges, NewIsolate, PoolState, Retirement, Route, Version, HOST_DRAIN_DEADLINE};
use crate::thread::{self, Command, IsolateHost, StartIsolate, ThreadHandle};
use crate::worker::{DeployedWorker, WorkerSpec};

mod events;

use events::PoolRouter;

/// What the pool starts isolates from.
type Worker = Arc<DeployedWorker>;

/// How the pool reaches one isolate: its queue and the counters it shares
/// with it. Which isolates exist is the machine's to say; these live and go
/// with its isolates.
struct Handles {
    /// `None` once nothing more may be sent: retired, or taken by its one
    /// request (the machine decides both).
    sender: Option<mpsc::UnboundedSender<WorkerEvent>>,
    in_flight: Arc<AtomicUsize>,
    /// Requests answered, for the CPU meter (a completion refills the budget).
    completed: Arc<AtomicU64>,
    /// Open WebSockets (busy for eviction) and retirement, shared with the isolate.
    signals: Arc<IsolateSignals>,
    last_used: LastUsed,
    /// The isolate itself while it is parked (a host waiting for the one it
    /// replaces); its queue fills meanwhile.
    parked: Option<Box<StartIsolate>>,
}

/// What the pool's lock guards.
struct Shared {
    machine: PoolState<Worker>,
    /// By isolate, for every isolate the machine knows.
    handles: HashMap<IsolateId, Handles>,
}

impl Shared {
    /// The machine, with the counters it reads.
    fn split<'a>(&'a mut self, threads: &'a [Arc<AtomicUsize>]) -> (&'a mut PoolState<Worker>, Meters<'a>) {
        (&mut self.machine, Meters { handles: &self.handles, threads })
    }
}

/// The pool's atomics, read for the machine.
struct Meters<'a> {
    handles: &'a HashMap<IsolateId, Handles>,
    threads: &'a [Arc<AtomicUsize>],
}

impl Gauges for Meters<'_> {
    fn thread_load(&self) -> Vec<usize> {
        self.threads.iter().map(|n| n.load(Ordering::Relaxed)).collect()
    }

    fn in_flight(&self, id: IsolateId) -> usize {
        self.handles.get(&id).map_or(0, |h| h.in_flight.load(Ordering::Relaxed))
    }

    fn open_sockets(&self, id: IsolateId) -> usize {
        self.handles.get(&id).map_or(0, |h| h.signals.open_sockets.load(Ordering::Relaxed))
    }

    fn last_used(&self, id: IsolateId) -> Instant {
        self.handles.get(&id).map_or_else(Instant::now, |h| h.last_used.get())
    }
}

pub(crate) struct Inner {
    /// The origin of `LastUsed` times.
    epoch: Instant,
    config: PoolConfig,
    threads: Vec<ThreadHandle>,
    /// Requests in flight per thread, kept beside the per-isolate counts.
    thread_in_flight: Vec<Arc<AtomicUsize>>,
    state: Mutex<Shared>,
    store: SnapshotStore,
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

impl Pool {
    /// Starts the threads. V8 must be initialised (`outpost_runtime::init_v8`).
    pub fn start(config: PoolConfig) -> Pool {
        let store = SnapshotStore::new(config.snapshot_dir.clone(), config.snapshotter.clone());
        let inner = Arc::new_cyclic(|weak: &Weak<Inner>| {
            let host: Arc<dyn IsolateHost> = Arc::new(Host(weak.clone()));
            let threads: Vec<_> = (0..config.threads.max(1)).map(|index| thread::spawn(index, host.clone())).collect();
            let thread_in_flight = threads.iter().map(|_| Arc::new(AtomicUsize::new(0))).collect();
            let machine = PoolState::new(config.placement, config.warm_spares);
            Inner {
                epoch: Instant::now(),
                config,
                threads,
                thread_in_flight,
                state: Mutex::new(Shared { machine, handles: HashMap::new() }),
                store,
                stopping: AtomicBool::new(false),
                closing_websockets: AtomicBool::new(false),
            }
        });
        let weak = Arc::downgrade(&inner);
        let maintain = move || weak.upgrade().is_some_and(|pool| pool.maintain());
        crate::watchdog::spawn(maintain, inner.threads.iter().map(|t| t.slot.clone()).collect());
        Pool { inner }
    }

    /// Loads (or replaces) a worker: makes its snapshot if needed and starts
    /// its first isolate, so that a broken worker fails here. Blocks while
    /// the snapshot is made; call it off the async threads.
    pub fn deploy(&self, spec: WorkerSpec) -> Result<(), DeployError> {
        let inner = &self.inner;
        spec.limits.check(&inner.config.caps)?;
        self.check_object_bindings(&spec)?;
        if inner.config.worker_snapshots {
            if let Some(existing) = inner.lock().machine.worker_names().next() {
                return Err(DeployError::OneWorkerPerSnapshotPool(existing.to_string()));
            }
        }
        let code = inner.worker_code(&spec)?;
        let (loaded_tx, loaded_rx) = oneshot::channel();
        let version = {
            let mut state = inner.lock();
            let (machine, meters) = state.split(&inner.thread_in_flight);
            let generation = machine.next_generation();
            // A redeploy keeps the worker's log budget: redeploying must not
            // be a way to log more.
            let log_budget = machine.version(&spec.name).map(|v| v.worker.log_budget.clone()).unwrap_or_default();
            let version = Version {
                generation,
                isolation: spec.isolation,
                max_concurrent: spec.limits.max_concurrent,
                worker: Arc::new(DeployedWorker { spec, code, log_budget }),
            };
            // The new version's first isolate loads before it takes traffic.
            let first = machine.start_version(&version.worker.spec.name, &version, &meters);
            let thread = first.thread;
            let start = inner.make_isolate(&mut state.handles, first, Some(loaded_tx));
            inner.send(thread, start);
            version
        };
        match loaded_rx.blocking_recv() {
            Ok(Ok(())) => {}
            Ok(Err(message)) => return Err(DeployError::Load(message)),
            Err(_) => return Err(DeployError::PoolStopped),
        }
        let mut state = inner.lock();
        let name = version.worker.spec.name.clone();
        // Older isolates of this worker finish what they have and stop.
        let actions = state.machine.deploy(&name, version);
        inner.carry_out(&mut state, actions);
        Ok(())
    }

    /// A binding to a class of another worker (`script_name`) needs that
    /// worker to declare the class itself: a worker hosts only the classes
    /// its own bindings name. Checked when the other worker is deployed
    /// already; otherwise the first call says so.
    fn check_object_bindings(&self, spec: &WorkerSpec) -> Result<(), DeployError> {
        let state = self.inner.lock();
        for binding in spec.durable_objects().filter(|b| b.script != spec.name) {
            let Some(host) = state.machine.version(&binding.script) else { continue };
            let declared = host
                .worker
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

    /// Checks limits against this pool's caps, as a deploy would.
    pub fn check_limits(&self, limits: &Limits) -> Result<(), LimitError> {
        limits.check(&self.inner.config.caps)
    }

    /// Whether a worker of that name is deployed.
    pub fn is_deployed(&self, worker: &str) -> bool {
        self.inner.lock().machine.version(worker).is_some()
    }

    /// Whether [`stop`](Self::stop) was called.
    pub fn is_stopping(&self) -> bool {
        self.inner.stopping.load(Ordering::Relaxed)
    }

    /// Counts for monitoring and tests.
    pub fn stats(&self) -> PoolStats {
        let state = self.inner.lock();
        PoolStats {
            live_isolates: state.machine.isolate_count(),
            in_flight: self.inner.thread_in_flight.iter().map(|n| n.load(Ordering::Relaxed)).sum(),
            workers: state.machine.worker_count(),
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
        let state = self.inner.lock();
        for isolate in state.handles.values() {
            isolate.signals.go_away();
        }
    }

    /// Stops every isolate after its in-flight work.
    pub fn stop(&self) {
        self.inner.stopping.store(true, Ordering::Relaxed);
        let mut state = self.inner.lock();
        let actions = state.machine.stop();
        self.inner.carry_out(&mut state, actions);
        for thread in &self.inner.threads {
            let _ = thread.commands.send(Command::Stop);
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.state.lock().unwrap()
    }

    /// How the isolates of a worker being deployed get its code.
    fn worker_code(&self, spec: &WorkerSpec) -> Result<WorkerCode, DeployError> {
        if !self.config.worker_snapshots {
            return Ok(WorkerCode::Evaluate);
        }
        Ok(match self.store.get_or_create(&spec.source)? {
            SnapshotOutcome::Ready { snapshot, digest } => {
                tracing::debug!(worker = %spec.name, digest, "using the worker snapshot");
                WorkerCode::Snapshot(snapshot)
            }
            SnapshotOutcome::Unsupported { reason } => {
                tracing::warn!(worker = %spec.name, "no worker snapshot, isolates will evaluate the modules: {reason}");
                WorkerCode::Evaluate
            }
            SnapshotOutcome::LoadFailed { message } => {
                tracing::debug!(worker = %spec.name, "the worker failed to load for its snapshot: {message}");
                WorkerCode::Evaluate
            }
        })
    }

    /// Carries out a route's actions, then counts the event into its
    /// isolate and hands out the queue (taking it, if the route says so).
    fn admit(&self, state: &mut Shared, route: Route<Worker>) -> Placed {
        let Route { id, thread, take, worker, actions } = route;
        self.carry_out(state, actions);
        let isolate = state.handles.get_mut(&id).expect("routes go to isolates the pool has");
        let sender = if take { isolate.sender.take() } else { isolate.sender.clone() }
            .expect("routes go to isolates that take events");
        isolate.in_flight.fetch_add(1, Ordering::Relaxed);
        let thread_counter = self.thread_in_flight[thread].clone();
        thread_counter.fetch_add(1, Ordering::Relaxed);
        isolate.last_used.touch();
        let guard = InFlightGuard {
            counter: isolate.in_flight.clone(),
            thread_counter,
            completed: isolate.completed.clone(),
            last_used: isolate.last_used.clone(),
        };
        Placed { sender, guard, limits: worker.spec.limits }
    }

    /// Does what the machine decided, in order.
    fn carry_out(&self, state: &mut Shared, actions: Vec<Action<Worker>>) {
        for action in actions {
            match action {
                Action::Start(new) => {
                    let thread = new.thread;
                    let start = self.make_isolate(&mut state.handles, new, None);
                    self.send(thread, start);
                }
                Action::Park(new) => {
                    let id = new.id;
                    let start = self.make_isolate(&mut state.handles, new, None);
                    state.handles.get_mut(&id).expect("just made").parked = Some(start);
                }
                Action::Launch { id, thread, waited_for, overdue } => {
                    if overdue {
                        tracing::warn!(
                            isolate = waited_for,
                            "an old object host is still busy after {} s; starting its replacement",
                            HOST_DRAIN_DEADLINE.as_secs()
                        );
                    }
                    if let Some(start) = state.handles.get_mut(&id).and_then(|isolate| isolate.parked.take()) {
                        self.send(thread, start);
                    }
                }
                Action::Retire { id, why } => {
                    if why == Retirement::Evicted {
                        let worker = state.machine.worker_of(id).unwrap_or_default();
                        tracing::debug!(worker, isolate = id, "evicting an idle isolate");
                    }
                    if let Some(isolate) = state.handles.get_mut(&id) {
                        isolate.signals.go_away();
                        isolate.sender = None;
                    }
                }
            }
        }
    }

    /// Makes a new isolate's queue and counters; returns what its thread
    /// starts it from.
    fn make_isolate(
        &self,
        handles: &mut HashMap<IsolateId, Handles>,
        new: NewIsolate<Worker>,
        loaded: Option<oneshot::Sender<Result<(), String>>>,
    ) -> Box<StartIsolate> {
        let NewIsolate { id, worker, .. } = new;
        let (sender, receiver) = mpsc::unbounded_channel();
        let in_flight = Arc::new(AtomicUsize::new(0));
        let completed = Arc::new(AtomicU64::new(0));
        let signals = Arc::new(IsolateSignals::default());
        let last_used = LastUsed::new(self.epoch);
        if self.closing_websockets.load(Ordering::SeqCst) {
            signals.go_away();
        }
        let isolate = Handles {
            sender: Some(sender),
            in_flight: in_flight.clone(),
            completed: completed.clone(),
            signals: signals.clone(),
            last_used: last_used.clone(),
            parked: None,
        };
        handles.insert(id, isolate);
        Box::new(StartIsolate { id, worker, receiver, in_flight, completed, signals, last_used, loaded })
    }

    /// Sends an isolate to its thread. A pool thread only goes away when
    /// the pool stops; until then the send succeeds, and after it the
    /// isolate's queue is simply closed.
    fn send(&self, thread: usize, start: Box<StartIsolate>) {
        let _ = self.threads[thread].commands.send(Command::Start(start));
    }

    fn isolate_loaded(&self, id: IsolateId, memory_bytes: usize) {
        self.lock().machine.isolate_loaded(id, memory_bytes);
    }

    /// The isolate stopped (done, evicted, terminated or failed to load).
    fn isolate_gone(&self, id: IsolateId) {
        let mut state = self.lock();
        let launch = state.machine.isolate_gone(id);
        state.handles.remove(&id);
        self.carry_out(&mut state, launch.into_iter().collect());
    }

    fn evict(&self, now: Instant, rules: EvictionRules) -> usize {
        let mut state = self.lock();
        let (machine, meters) = state.split(&self.thread_in_flight);
        let actions = machine.evict(now, rules, &meters);
        let evicted = actions.len();
        self.carry_out(&mut state, actions);
        evicted
    }

    /// The watchdog's call, once a second: evictions, and object hosts
    /// that waited past the drain deadline. `false` once the pool stops.
    fn maintain(&self) -> bool {
        if self.stopping.load(Ordering::Relaxed) {
            return false;
        }
        let mut state = self.lock();
        let (machine, meters) = state.split(&self.thread_in_flight);
        let actions = machine.tick(Instant::now(), self.config.eviction, &meters);
        self.carry_out(&mut state, actions);
        true
    }
}

/// The pool as its threads see it. Holds the pool weakly: threads (and the
/// isolates on them) may outlive it briefly.
struct Host(Weak<Inner>);

impl IsolateHost for Host {
    fn worker_options(&self, worker: &DeployedWorker, signals: Arc<IsolateSignals>) -> WorkerOptions {
        let config = self.0.upgrade().map(|pool| (pool.config.egress, pool.config.services.clone()));
        let (egress, mut services) = config.unwrap_or((Egress::PublicOnly, Default::default()));
        services.insert::<Arc<dyn ObjectRouter>>(Arc::new(PoolRouter(self.0.clone())));
        services.insert::<Arc<dyn ServiceRouter>>(Arc::new(PoolRouter(self.0.clone())));
        WorkerOptions {
            signals,
            name: worker.spec.name.clone(),
            vars: worker.spec.vars.clone(),
            heap_limit_bytes: Some((worker.spec.limits.memory_mb as usize) << 20),
            subrequests: worker.spec.limits.subrequests,
            bindings: worker.spec.bindings.clone(),
            services,
            log_budget: worker.log_budget.clone(),
            egress,
        }
    }

    fn isolate_loaded(&self, id: IsolateId, memory_bytes: usize) {
        if let Some(pool) = self.0.upgrade() {
            pool.isolate_loaded(id, memory_bytes);
        }
    }

    fn isolate_gone(&self, id: IsolateId) {
        if let Some(pool) = self.0.upgrade() {
            pool.isolate_gone(id);
        }
    }
}
