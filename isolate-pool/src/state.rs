//! The pool's bookkeeping as a state machine: which isolates exist, of
//! which worker version, on which thread, whether they host the worker's
//! Durable Objects and still take events, which version of each worker is
//! live, and which object hosts wait for the one they replace (and since
//! when).
//!
//! Every pool decision is made here, as data: the time (`now`) and the
//! current load (a [`Gauges`] snapshot of the pool's atomics) come in as
//! arguments, and what to do comes out as a [`Route`] or [`Action`]s, which
//! `pool.rs` carries out (channels, commands to threads, signals). No
//! channels, threads, V8 or clocks here, so it is tested with a made-up
//! clock (`state/tests.rs`). The single-decision rules (which isolate or
//! thread, which isolates to evict) are the plain functions of
//! [`crate::policy`]; this machine applies them to its state.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::policy::{self, EvictionRules, IsolateId, IsolateLoad, IsolateUse, Placement, PlacementRules};
use crate::worker::Isolation;

#[cfg(test)]
mod tests;

/// How long a new object host waits for the one it replaces. An old host
/// can be kept busy indefinitely (a streamed response, or an object of it
/// calling an object of the new host, which waits on it): after this the new
/// one starts anyway, so calls never hang; objects still running on the old
/// host may then briefly have a second instance.
pub(crate) const HOST_DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// A deployed version of a worker, as far as decisions go. `worker` is what
/// the pool starts the version's isolates from; the machine only hands it
/// back in [`NewIsolate`]s.
#[derive(Debug, Clone)]
pub(crate) struct Version<W> {
    /// Bumped on every deploy (of any worker), so isolates of an older
    /// version of the same worker are never picked again.
    pub(crate) generation: u64,
    pub(crate) isolation: Isolation,
    /// Requests one isolate of the version may have in flight at once.
    pub(crate) max_concurrent: usize,
    pub(crate) worker: W,
}

/// What the machine reads off the counters the pool keeps outside its lock
/// (atomics: finishing a request takes no lock). Read when a decision needs
/// them; in tests, made-up numbers.
pub(crate) trait Gauges {
    /// Requests in flight on each pool thread.
    fn thread_load(&self) -> Vec<usize>;
    /// Requests in flight on isolate `id`.
    fn in_flight(&self, id: IsolateId) -> usize;
    /// WebSockets isolate `id` serves now.
    fn open_sockets(&self, id: IsolateId) -> usize;
    /// When isolate `id` last took or finished a request.
    fn last_used(&self, id: IsolateId) -> Instant;
}

/// An isolate to start: the pool makes its queue, then sends it to
/// `thread`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NewIsolate<W> {
    pub(crate) id: IsolateId,
    pub(crate) thread: usize,
    pub(crate) worker: W,
}

/// Why an isolate is retired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retirement {
    /// A newer version of its worker went live.
    Replaced,
    /// Idle, or the node is over its memory budget.
    Evicted,
    /// The pool stops.
    Stopping,
}

/// What the pool is to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action<W> {
    /// Make the isolate's queue and start it now.
    Start(NewIsolate<W>),
    /// Make the isolate's queue now (events wait in it), but start the
    /// isolate only at a later [`Action::Launch`]: it replaces an object
    /// host that may still be finishing events of the same objects.
    Park(NewIsolate<W>),
    /// Start the parked isolate `id` on `thread`: the host it waited for
    /// (`waited_for`) is gone, or `overdue` (still there after
    /// [`HOST_DRAIN_DEADLINE`]).
    Launch { id: IsolateId, thread: usize, waited_for: IsolateId, overdue: bool },
    /// Close the isolate's queue for good and tell it to go away: it
    /// finishes what it has, closes its WebSockets, and stops.
    Retire { id: IsolateId, why: Retirement },
}

/// Where an event goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Route<W> {
    pub(crate) id: IsolateId,
    pub(crate) thread: usize,
    /// The event takes the isolate's queue with it (per-request isolation):
    /// nothing else is ever sent to that isolate.
    pub(crate) take: bool,
    /// The live version of the worker the event is for.
    pub(crate) worker: W,
    /// To carry out first (new isolates: the one routed to, spares).
    pub(crate) actions: Vec<Action<W>>,
}

/// A live isolate, as the machine knows it.
#[derive(Debug)]
struct Isolate {
    worker: String,
    generation: u64,
    thread: usize,
    /// Whether events may still be sent to it: `false` once retired
    /// (evicted, replaced, stopping) or taken by its one request.
    open: bool,
    /// The isolate hosting the worker's Durable Objects: it takes only
    /// object calls, and there is one per worker, so each object has one
    /// live instance on the node.
    hosts_objects: bool,
    /// V8 heap after loading, for the memory budget.
    memory_bytes: usize,
}

/// A host parked until the one it replaces is gone.
#[derive(Debug)]
struct Deferred {
    new: IsolateId,
    thread: usize,
    since: Instant,
}

/// The pool's state. `W` is what isolates start from (the pool's
/// `Arc<DeployedWorker>`; anything in tests).
pub(crate) struct PoolState<W> {
    placement: PlacementRules,
    /// Ready isolates kept per per-request worker.
    warm_spares: usize,
    /// The live version of each worker.
    workers: HashMap<String, Version<W>>,
    isolates: HashMap<IsolateId, Isolate>,
    /// The isolates of each worker (every version), so placing a request
    /// does not scan every isolate of the node.
    by_worker: HashMap<String, Vec<IsolateId>>,
    /// Each worker's object-hosting isolate.
    object_hosts: HashMap<String, IsolateId>,
    /// Hosts parked until the isolate they replace is gone: by the old one's id.
    deferred: HashMap<IsolateId, Deferred>,
    generation: u64,
    next_id: IsolateId,
}

impl<W: Clone> PoolState<W> {
    pub(crate) fn new(placement: PlacementRules, warm_spares: usize) -> Self {
        PoolState {
            placement,
            warm_spares,
            workers: HashMap::new(),
            isolates: HashMap::new(),
            by_worker: HashMap::new(),
            object_hosts: HashMap::new(),
            deferred: HashMap::new(),
            generation: 0,
            next_id: 1,
        }
    }

    /// The live version of `worker`.
    pub(crate) fn version(&self, worker: &str) -> Option<&Version<W>> {
        self.workers.get(worker)
    }

    /// The names of the deployed workers.
    pub(crate) fn worker_names(&self) -> impl Iterator<Item = &str> {
        self.workers.keys().map(String::as_str)
    }

    pub(crate) fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// Isolates that exist: starting, parked, serving or on their way out.
    pub(crate) fn isolate_count(&self) -> usize {
        self.isolates.len()
    }

    /// The worker isolate `id` runs.
    pub(crate) fn worker_of(&self, id: IsolateId) -> Option<&str> {
        self.isolates.get(&id).map(|isolate| isolate.worker.as_str())
    }

    /// The generation for a version about to be deployed.
    pub(crate) fn next_generation(&mut self) -> u64 {
        self.generation += 1;
        self.generation
    }

    /// The first isolate of a version being deployed, on the quietest
    /// thread. It loads before the version takes traffic: only
    /// [`deploy`](Self::deploy) makes the version live.
    pub(crate) fn start_version(&mut self, name: &str, version: &Version<W>, gauges: &dyn Gauges) -> NewIsolate<W> {
        let thread = policy::quietest_thread(&gauges.thread_load());
        self.add_isolate(name, version, thread, false)
    }

    /// Makes `version` the live one of worker `name`. Isolates of every
    /// other version of it finish what they have and stop.
    pub(crate) fn deploy(&mut self, name: &str, version: Version<W>) -> Vec<Action<W>> {
        let mut actions = Vec::new();
        for id in self.by_worker.get(name).into_iter().flatten() {
            let isolate = self.isolates.get_mut(id).expect("by_worker lists live isolates");
            if isolate.generation != version.generation {
                isolate.open = false;
                actions.push(Action::Retire { id: *id, why: Retirement::Replaced });
            }
        }
        self.workers.insert(name.to_string(), version);
        actions
    }

    /// Where a request to `worker` goes (`None`: no such worker). A shared
    /// worker's request goes where [`policy::place`] says; a per-request
    /// worker's takes a ready spare on the quietest thread (else a new
    /// isolate), and the spares are topped up to `warm_spares` on that
    /// thread, so the next request finds one ready.
    pub(crate) fn place(&mut self, worker: &str, gauges: &dyn Gauges) -> Option<Route<W>> {
        let version = self.workers.get(worker)?.clone();
        let load = gauges.thread_load();
        let candidates: Vec<IsolateLoad> = self
            .by_worker
            .get(worker)
            .into_iter()
            .flatten()
            .filter_map(|id| self.isolates.get(id).map(|isolate| (*id, isolate)))
            .filter(|(_, i)| i.generation == version.generation && i.open && !i.hosts_objects)
            .map(|(id, i)| IsolateLoad { id, thread: i.thread, in_flight: gauges.in_flight(id) })
            .collect();
        let mut actions = Vec::new();
        let (id, thread, take) = match version.isolation {
            Isolation::Shared => {
                let rules = PlacementRules { max_concurrent_per_isolate: version.max_concurrent, ..self.placement };
                let (id, thread) = match policy::place(&candidates, &load, rules) {
                    Placement::Existing(id) => (id, self.isolates[&id].thread),
                    Placement::New { thread } => {
                        let new = self.add_isolate(worker, &version, thread, false);
                        let id = new.id;
                        actions.push(Action::Start(new));
                        (id, thread)
                    }
                };
                (id, thread, false)
            }
            Isolation::PerRequest => {
                let spare = candidates.iter().min_by_key(|c| (load[c.thread], c.id)).map(|c| (c.id, c.thread));
                let (id, thread) = match spare {
                    Some(spare) => spare,
                    None => {
                        let new = self.add_isolate(worker, &version, policy::quietest_thread(&load), false);
                        let spare = (new.id, new.thread);
                        actions.push(Action::Start(new));
                        spare
                    }
                };
                let spares_left = candidates.len().saturating_sub(usize::from(spare.is_some()));
                for _ in spares_left..self.warm_spares {
                    actions.push(Action::Start(self.add_isolate(worker, &version, thread, false)));
                }
                (id, thread, true)
            }
        };
        if take {
            self.isolates.get_mut(&id).expect("a route goes to a live isolate").open = false;
        }
        Some(Route { id, thread, take, worker: version.worker, actions })
    }

    /// Where an event for one of `worker`'s Durable Objects goes (`None`:
    /// no such worker): its object host. A new host (the old one retired,
    /// or of an older version) is parked until the old one is gone, so an
    /// object never has two live instances; events wait in its queue.
    pub(crate) fn place_object(&mut self, worker: &str, now: Instant, gauges: &dyn Gauges) -> Option<Route<W>> {
        let version = self.workers.get(worker)?;
        let previous = self.object_hosts.get(worker).copied();
        let current = previous.and_then(|id| {
            let isolate = self.isolates.get(&id)?;
            (isolate.generation == version.generation && isolate.open).then_some((id, isolate.thread))
        });
        if let Some((id, thread)) = current {
            return Some(Route { id, thread, take: false, worker: version.worker.clone(), actions: Vec::new() });
        }
        let version = version.clone();
        let thread = policy::quietest_thread(&gauges.thread_load());
        let new = self.add_isolate(worker, &version, thread, true);
        let id = new.id;
        self.object_hosts.insert(worker.to_string(), id);
        let action = match previous.filter(|old| self.isolates.contains_key(old)) {
            Some(old) => {
                self.deferred.insert(old, Deferred { new: id, thread, since: now });
                Action::Park(new)
            }
            None => Action::Start(new),
        };
        Some(Route { id, thread, take: false, worker: version.worker, actions: vec![action] })
    }

    /// Isolate `id` loaded, using `memory_bytes` of heap.
    pub(crate) fn isolate_loaded(&mut self, id: IsolateId, memory_bytes: usize) {
        if let Some(isolate) = self.isolates.get_mut(&id) {
            isolate.memory_bytes = memory_bytes;
        }
    }

    /// Isolate `id` stopped (done, evicted, terminated or failed to load):
    /// forgotten, and the host parked behind it (if any) launched.
    pub(crate) fn isolate_gone(&mut self, id: IsolateId) -> Option<Action<W>> {
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
        let deferred = self.deferred.remove(&id)?;
        Some(Action::Launch { id: deferred.new, thread: deferred.thread, waited_for: id, overdue: false })
    }

    /// The periodic look at `now`: evictions by `rules`, then the parked
    /// hosts past their drain deadline.
    pub(crate) fn tick(&mut self, now: Instant, rules: EvictionRules, gauges: &dyn Gauges) -> Vec<Action<W>> {
        let mut actions = self.evict(now, rules, gauges);
        actions.extend(self.release_overdue_hosts(now));
        actions
    }

    /// Retires what [`policy::evict`] says should go at `now`. An isolate
    /// with requests in flight or WebSockets open is busy, and stays.
    pub(crate) fn evict(&mut self, now: Instant, rules: EvictionRules, gauges: &dyn Gauges) -> Vec<Action<W>> {
        let usage: Vec<IsolateUse> = self
            .isolates
            .iter()
            .filter(|(_, isolate)| isolate.open)
            .map(|(&id, isolate)| IsolateUse {
                id,
                last_used: gauges.last_used(id),
                memory_bytes: isolate.memory_bytes,
                // Open WebSockets keep an isolate as busy as requests do.
                in_flight: gauges.in_flight(id) + gauges.open_sockets(id),
            })
            .collect();
        policy::evict(now, &usage, rules)
            .into_iter()
            .map(|id| {
                self.isolates.get_mut(&id).expect("evict picks listed isolates").open = false;
                Action::Retire { id, why: Retirement::Evicted }
            })
            .collect()
    }

    /// Launches the parked hosts that have waited [`HOST_DRAIN_DEADLINE`]
    /// or longer at `now`.
    pub(crate) fn release_overdue_hosts(&mut self, now: Instant) -> Vec<Action<W>> {
        let mut overdue: Vec<IsolateId> = self
            .deferred
            .iter()
            .filter(|(_, deferred)| now.saturating_duration_since(deferred.since) >= HOST_DRAIN_DEADLINE)
            .map(|(old, _)| *old)
            .collect();
        overdue.sort_unstable();
        overdue
            .into_iter()
            .filter_map(|old| self.deferred.remove(&old).map(|deferred| (old, deferred)))
            .map(|(old, deferred)| Action::Launch {
                id: deferred.new,
                thread: deferred.thread,
                waited_for: old,
                overdue: true,
            })
            .collect()
    }

    /// Every isolate finishes what it has and stops.
    pub(crate) fn stop(&mut self) -> Vec<Action<W>> {
        let mut ids: Vec<IsolateId> = self.isolates.keys().copied().collect();
        ids.sort_unstable();
        for isolate in self.isolates.values_mut() {
            isolate.open = false;
        }
        ids.into_iter().map(|id| Action::Retire { id, why: Retirement::Stopping }).collect()
    }

    fn add_isolate(&mut self, name: &str, version: &Version<W>, thread: usize, hosts_objects: bool) -> NewIsolate<W> {
        let id = self.next_id;
        self.next_id += 1;
        let isolate = Isolate {
            worker: name.to_string(),
            generation: version.generation,
            thread,
            open: true,
            hosts_objects,
            memory_bytes: 0,
        };
        self.isolates.insert(id, isolate);
        self.by_worker.entry(name.to_string()).or_default().push(id);
        NewIsolate { id, thread, worker: version.worker.clone() }
    }
}
