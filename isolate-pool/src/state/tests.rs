//! The pool's decisions with a made-up clock and made-up load.

use std::collections::HashMap;

use super::*;

const PLACEMENT: PlacementRules = PlacementRules { max_concurrent_per_isolate: 64, busy_thread_in_flight: 8 };
const EVICTION: EvictionRules = EvictionRules { idle_timeout: Duration::from_secs(300), memory_budget_bytes: 1 << 30 };

/// The counters the pool would read off its atomics, made up.
struct FakeGauges {
    threads: Vec<usize>,
    in_flight: HashMap<IsolateId, usize>,
    sockets: HashMap<IsolateId, usize>,
    last_used: HashMap<IsolateId, Instant>,
    /// The last-used time of an isolate not in `last_used`.
    started: Instant,
}

impl FakeGauges {
    fn new(threads: usize, started: Instant) -> Self {
        FakeGauges {
            threads: vec![0; threads],
            in_flight: HashMap::new(),
            sockets: HashMap::new(),
            last_used: HashMap::new(),
            started,
        }
    }
}

impl Gauges for FakeGauges {
    fn thread_load(&self) -> Vec<usize> {
        self.threads.clone()
    }
    fn in_flight(&self, id: IsolateId) -> usize {
        self.in_flight.get(&id).copied().unwrap_or(0)
    }
    fn open_sockets(&self, id: IsolateId) -> usize {
        self.sockets.get(&id).copied().unwrap_or(0)
    }
    fn last_used(&self, id: IsolateId) -> Instant {
        self.last_used.get(&id).copied().unwrap_or(self.started)
    }
}

/// A version whose `worker` is its generation, so actions say which
/// version they start.
fn version(generation: u64, isolation: Isolation) -> Version<u64> {
    Version { generation, isolation, max_concurrent: 64, worker: generation }
}

/// Deploys `name` as a real deploy does: a first isolate, loaded, then live.
fn deploy(
    state: &mut PoolState<u64>,
    name: &str,
    isolation: Isolation,
    gauges: &FakeGauges,
) -> (u64, Vec<Action<u64>>) {
    let generation = state.next_generation();
    let first = state.start_version(name, &version(generation, isolation), gauges);
    state.isolate_loaded(first.id, 1 << 20);
    (first.id, state.deploy(name, version(generation, isolation)))
}

fn started(actions: &[Action<u64>]) -> Vec<IsolateId> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::Start(new) => Some(new.id),
            _ => None,
        })
        .collect()
}

fn retired(actions: &[Action<u64>]) -> Vec<IsolateId> {
    let mut ids: Vec<IsolateId> = actions
        .iter()
        .filter_map(|action| match action {
            Action::Retire { id, .. } => Some(*id),
            _ => None,
        })
        .collect();
    ids.sort_unstable();
    ids
}

#[test]
fn a_per_request_worker_keeps_its_spares_topped_up() {
    let t0 = Instant::now();
    let gauges = FakeGauges::new(2, t0);
    let mut state = PoolState::new(PLACEMENT, 2);
    let (first, _) = deploy(&mut state, "w", Isolation::PerRequest, &gauges);

    // The deploy's first isolate is the one spare: the request takes it,
    // and two spares start on its thread.
    let route = state.place("w", &gauges).unwrap();
    assert_eq!((route.id, route.take), (first, true));
    let spares = started(&route.actions);
    assert_eq!(spares.len(), 2, "{:?}", route.actions);
    assert!(route
        .actions
        .iter()
        .all(|a| matches!(a, Action::Start(new) if new.thread == route.thread && new.worker == 1)));

    // The next request takes one of them (never the taken isolate again),
    // and one more starts: two ready again.
    let route = state.place("w", &gauges).unwrap();
    assert!(spares.contains(&route.id), "{} is not a spare", route.id);
    assert_eq!(started(&route.actions).len(), 1);

    // The spares were evicted: a request that finds none gets a new
    // isolate of its own, plus the spares.
    let evicted = state.evict(t0 + EVICTION.idle_timeout, EVICTION, &gauges);
    assert_eq!(evicted.len(), 2, "{evicted:?}");
    let route = state.place("w", &gauges).unwrap();
    let new = started(&route.actions);
    assert_eq!(new.len(), 3, "its own isolate and two spares: {:?}", route.actions);
    assert_eq!(route.id, new[0]);
}

#[test]
fn shared_requests_stay_on_the_live_isolate_and_never_on_the_object_host() {
    let t0 = Instant::now();
    let gauges = FakeGauges::new(2, t0);
    let mut state = PoolState::new(PLACEMENT, 2);
    let (first, _) = deploy(&mut state, "w", Isolation::Shared, &gauges);
    let host = state.place_object("w", t0, &gauges).unwrap();
    assert_ne!(host.id, first);
    assert_eq!(started(&host.actions), vec![host.id]);
    for _ in 0..3 {
        let route = state.place("w", &gauges).unwrap();
        assert_eq!((route.id, route.take, route.actions.len()), (first, false, 0));
        assert_eq!(state.place_object("w", t0, &gauges).unwrap().id, host.id);
    }
    assert!(state.place("other", &gauges).is_none());
    assert!(state.place_object("other", t0, &gauges).is_none());
}

#[test]
fn a_new_object_host_waits_until_the_old_one_is_gone() {
    let t0 = Instant::now();
    let gauges = FakeGauges::new(2, t0);
    let mut state = PoolState::new(PLACEMENT, 2);
    deploy(&mut state, "w", Isolation::Shared, &gauges);
    let old = state.place_object("w", t0, &gauges).unwrap().id;

    // A redeploy retires the old host, which may still be running objects.
    let (_, actions) = deploy(&mut state, "w", Isolation::Shared, &gauges);
    assert!(retired(&actions).contains(&old));
    let route = state.place_object("w", t0, &gauges).unwrap();
    let new = route.id;
    assert_ne!(new, old);
    assert!(
        matches!(&route.actions[..], [Action::Park(parked)] if parked.id == new && parked.worker == 2),
        "{:?}",
        route.actions
    );
    // Calls meanwhile queue for the parked host.
    assert_eq!(state.place_object("w", t0, &gauges).unwrap().id, new);
    assert_eq!(state.release_overdue_hosts(t0 + Duration::from_secs(1)), vec![]);

    // The old host goes: the new one starts, once.
    assert_eq!(
        state.isolate_gone(old),
        Some(Action::Launch { id: new, thread: route.thread, waited_for: old, overdue: false })
    );
    assert_eq!(state.isolate_gone(old), None);
    assert_eq!(state.release_overdue_hosts(t0 + Duration::from_secs(60)), vec![]);

    // With no old host left, a replacement starts at once.
    let _ = state.evict(t0 + Duration::from_secs(1000), EVICTION, &gauges);
    assert_eq!(state.isolate_gone(new), None);
    let route = state.place_object("w", t0, &gauges).unwrap();
    assert_eq!(started(&route.actions), vec![route.id]);
}

#[test]
fn a_parked_host_starts_after_the_drain_deadline_and_not_before() {
    let t0 = Instant::now();
    let gauges = FakeGauges::new(1, t0);
    let mut state = PoolState::new(PLACEMENT, 2);
    deploy(&mut state, "w", Isolation::Shared, &gauges);
    let old = state.place_object("w", t0, &gauges).unwrap().id;
    deploy(&mut state, "w", Isolation::Shared, &gauges);
    let parked_at = t0 + Duration::from_secs(5);
    let new = state.place_object("w", parked_at, &gauges).unwrap().id;

    let just_before = parked_at + HOST_DRAIN_DEADLINE - Duration::from_millis(1);
    assert_eq!(state.tick(just_before, EVICTION, &gauges), vec![]);
    let launched = state.tick(parked_at + HOST_DRAIN_DEADLINE, EVICTION, &gauges);
    assert_eq!(launched, vec![Action::Launch { id: new, thread: 0, waited_for: old, overdue: true }]);

    // Launched once: neither a later tick nor the old host going starts it again.
    assert_eq!(state.tick(parked_at + 2 * HOST_DRAIN_DEADLINE, EVICTION, &gauges), vec![]);
    assert_eq!(state.isolate_gone(old), None);
}

#[test]
fn eviction_retires_idle_isolates_and_leaves_busy_ones() {
    let t0 = Instant::now();
    let mut gauges = FakeGauges::new(4, t0);
    let mut state = PoolState::new(PlacementRules { busy_thread_in_flight: 1, ..PLACEMENT }, 2);
    let (idle, _) = deploy(&mut state, "idle", Isolation::Shared, &gauges);
    let (busy, _) = deploy(&mut state, "busy", Isolation::Shared, &gauges);
    let (socket, _) = deploy(&mut state, "socket", Isolation::Shared, &gauges);
    let (recent, _) = deploy(&mut state, "recent", Isolation::Shared, &gauges);
    gauges.in_flight.insert(busy, 1);
    gauges.sockets.insert(socket, 2);
    gauges.last_used.insert(recent, t0 + Duration::from_secs(200));

    let now = t0 + EVICTION.idle_timeout;
    assert_eq!(state.evict(now - Duration::from_secs(1), EVICTION, &gauges), vec![]);
    let actions = state.evict(now, EVICTION, &gauges);
    assert_eq!(actions, vec![Action::Retire { id: idle, why: Retirement::Evicted }]);
    // Retired: no request goes there again, and it is not evicted twice.
    let route = state.place("idle", &gauges).unwrap();
    assert_ne!(route.id, idle);
    assert_eq!(started(&route.actions), vec![route.id]);
    gauges.last_used.insert(route.id, now);
    assert_eq!(state.evict(now, EVICTION, &gauges), vec![]);

    // The socket closes and the request ends: now they go too.
    gauges.in_flight.clear();
    gauges.sockets.clear();
    assert_eq!(retired(&state.evict(now, EVICTION, &gauges)), vec![busy, socket]);
    assert_eq!(state.isolate_count(), 5, "retired isolates stay until they are gone");
}

#[test]
fn a_redeploy_retires_every_older_version_and_routes_to_the_new_one() {
    let t0 = Instant::now();
    let mut gauges = FakeGauges::new(2, t0);
    let mut state = PoolState::new(PLACEMENT, 2);
    let (v1, _) = deploy(&mut state, "w", Isolation::Shared, &gauges);
    // A second isolate of version 1: its first one's thread is busy.
    gauges.threads[0] = PLACEMENT.busy_thread_in_flight;
    let v1_second = state.place("w", &gauges).unwrap().id;
    assert_ne!(v1_second, v1);
    let (other, _) = deploy(&mut state, "other", Isolation::Shared, &gauges);

    // The new version's first isolate loads before it takes traffic.
    let generation = state.next_generation();
    let first = state.start_version("w", &version(generation, Isolation::Shared), &gauges);
    assert_eq!(first.worker, generation);
    assert!([v1, v1_second].contains(&state.place("w", &gauges).unwrap().id));

    let actions = state.deploy("w", version(generation, Isolation::Shared));
    assert_eq!(retired(&actions), vec![v1, v1_second]);
    assert!(actions.iter().all(|a| matches!(a, Action::Retire { why: Retirement::Replaced, .. })));
    assert!(!retired(&actions).contains(&other), "another worker's isolates stay");
    gauges.threads[0] = 0;
    assert_eq!(state.place("w", &gauges).unwrap().id, first.id);
    assert_eq!(state.version("w").unwrap().generation, generation);
}

#[test]
fn a_version_that_fails_to_load_never_takes_traffic() {
    let t0 = Instant::now();
    let gauges = FakeGauges::new(1, t0);
    let mut state = PoolState::new(PLACEMENT, 2);
    let (v1, _) = deploy(&mut state, "w", Isolation::Shared, &gauges);
    let generation = state.next_generation();
    let broken = state.start_version("w", &version(generation, Isolation::Shared), &gauges);
    assert_eq!(state.isolate_gone(broken.id), None);
    assert_eq!(state.place("w", &gauges).unwrap().id, v1);
    assert_eq!(state.isolate_count(), 1);
}

#[test]
fn stopping_retires_every_isolate() {
    let t0 = Instant::now();
    let gauges = FakeGauges::new(1, t0);
    let mut state = PoolState::new(PLACEMENT, 1);
    let (shared, _) = deploy(&mut state, "a", Isolation::Shared, &gauges);
    let (taken, _) = deploy(&mut state, "b", Isolation::PerRequest, &gauges);
    let route = state.place("b", &gauges).unwrap();
    assert_eq!(route.id, taken);
    let spare = started(&route.actions)[0];
    assert_eq!(retired(&state.stop()), vec![shared, taken, spare]);
    assert_eq!(state.evict(t0 + Duration::from_secs(1000), EVICTION, &gauges), vec![]);
}
