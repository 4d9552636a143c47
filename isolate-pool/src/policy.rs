//! Pool decisions as plain functions: state and time in, decisions out. No
//! V8, no threads, no clocks, so they are tested in microseconds. The pool's
//! state machine (`state.rs`) applies them to the pool's bookkeeping; a
//! pool thread's CPU meter applies [`CpuAccount`], [`over_cpu_limit`],
//! [`IdleWatch`] and [`work_after_response_expired`] to each slice.

use std::time::{Duration, Instant};

/// Identifies one live isolate in the pool.
pub type IsolateId = u64;

/// What placement needs to know about a live isolate of the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IsolateLoad {
    pub id: IsolateId,
    pub thread: usize,
    pub in_flight: usize,
}

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// An isolate of the worker that already runs.
    Existing(IsolateId),
    /// A new isolate of the worker, on this thread.
    New { thread: usize },
}

/// Placement settings.
#[derive(Debug, Clone, Copy)]
pub struct PlacementRules {
    /// Requests one isolate may have in flight at once.
    pub max_concurrent_per_isolate: usize,
    /// A thread with this many requests in flight is busy: a worker whose
    /// isolates are all on busy threads gets a new isolate on a quieter one.
    pub busy_thread_in_flight: usize,
}

/// The thread with the fewest requests in flight (the lowest index on ties).
pub fn quietest_thread(thread_load: &[usize]) -> usize {
    (0..thread_load.len()).min_by_key(|&t| (thread_load[t], t)).unwrap_or(0)
}

/// Picks the isolate (or thread, for a new isolate) for a request to one
/// worker. `isolates` are the worker's live isolates; `thread_load[t]` is the
/// number of requests in flight on thread `t`, across all workers.
pub fn place(isolates: &[IsolateLoad], thread_load: &[usize], rules: PlacementRules) -> Placement {
    let quietest_thread = quietest_thread(thread_load);
    let open = isolates.iter().filter(|i| i.in_flight < rules.max_concurrent_per_isolate);
    // Affinity first: an isolate of this worker on a thread that is not busy.
    let on_quiet_thread = open
        .clone()
        .filter(|i| thread_load[i.thread] < rules.busy_thread_in_flight)
        .min_by_key(|i| (thread_load[i.thread], i.in_flight, i.id));
    if let Some(isolate) = on_quiet_thread {
        return Placement::Existing(isolate.id);
    }
    // Spread: a quiet thread without an isolate of this worker gets one.
    let has_isolate = |t: usize| isolates.iter().any(|i| i.thread == t);
    if thread_load[quietest_thread] < rules.busy_thread_in_flight && !has_isolate(quietest_thread) {
        return Placement::New { thread: quietest_thread };
    }
    // Everything is busy: share the least loaded isolate, or start one.
    match open.min_by_key(|i| (i.in_flight, thread_load[i.thread], i.id)) {
        Some(isolate) => Placement::Existing(isolate.id),
        None => Placement::New { thread: quietest_thread },
    }
}

/// What eviction needs to know about a live isolate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IsolateUse {
    pub id: IsolateId,
    pub last_used: Instant,
    pub memory_bytes: usize,
    pub in_flight: usize,
}

/// Eviction settings.
#[derive(Debug, Clone, Copy)]
pub struct EvictionRules {
    /// An isolate idle this long is evicted.
    pub idle_timeout: Duration,
    /// Memory all isolates of the node may use together; over it, the least
    /// recently used idle isolates are evicted until under it.
    pub memory_budget_bytes: usize,
}

/// The isolates to evict now. Busy isolates are never evicted.
pub fn evict(now: Instant, isolates: &[IsolateUse], rules: EvictionRules) -> Vec<IsolateId> {
    let mut idle: Vec<&IsolateUse> = isolates.iter().filter(|i| i.in_flight == 0).collect();
    idle.sort_by_key(|i| (i.last_used, i.id));
    let mut total: usize = isolates.iter().map(|i| i.memory_bytes).sum();
    let mut evicted = Vec::new();
    for isolate in idle {
        let expired = now.saturating_duration_since(isolate.last_used) >= rules.idle_timeout;
        if expired || total > rules.memory_budget_bytes {
            total -= isolate.memory_bytes;
            evicted.push(isolate.id);
        }
    }
    evicted
}

/// Whether an isolate has used more CPU than its requests are allowed:
/// `limit` per request in flight (at least one), over the CPU it has used
/// since its budget was last refilled (`charged`, see [`CpuAccount`]) plus
/// the slice running now.
/// Whatever the requests in flight, one slice (a stretch of JavaScript that
/// never yields) may not run past `limit`: it holds the thread, and every
/// other isolate on it waits.
pub fn over_cpu_limit(charged: Duration, running: Duration, in_flight: usize, limit: Duration) -> bool {
    running > limit || charged + running > limit * in_flight.max(1) as u32
}

/// How long an isolate may go on running JavaScript after its last request
/// ended (`waitUntil()` work, timers) with no request in flight and no
/// WebSocket open; as on Cloudflare, work after the response gets 30 s.
pub const WORK_AFTER_RESPONSE: Duration = Duration::from_secs(30);

/// How often work with nothing in flight (timers of an isolate whose
/// WebSockets stay open, say) gets its budget back: such an isolate may use
/// at most its `cpu_ms` per this much wall time.
pub const IDLE_REFILL_EVERY: Duration = Duration::from_secs(1);

/// The CPU an isolate has used since its budget was last refilled.
///
/// Requests interleave on an isolate, so CPU cannot be pinned on one of
/// them. A budget is refilled when a request finishes or another event is
/// delivered (a WebSocket message), and when a request arrives at an
/// isolate that had none: an isolate that keeps answering keeps its budget,
/// while a runaway request finishes nothing and is stopped. Work after the
/// response (nothing in flight: `waitUntil()`, timers, microtasks) shares
/// the budget of the request that started it, refilled at most once per
/// [`IDLE_REFILL_EVERY`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuAccount {
    charged: Duration,
    /// Finished requests and delivered events, as last seen.
    refills_seen: u64,
    /// Whether a request was in flight at the last slice.
    was_busy: bool,
    /// When the budget was last refilled (any clock, as long as it is one).
    refilled_at: Duration,
}

impl CpuAccount {
    /// At the start of a slice, at `now` on a monotonic clock: `refills`
    /// counts the finished requests and delivered events so far. Returns
    /// the CPU already charged.
    pub fn begin_slice(&mut self, in_flight: usize, refills: u64, now: Duration) -> Duration {
        let arrived = in_flight > 0 && !self.was_busy;
        let idle_refill = in_flight == 0 && now.saturating_sub(self.refilled_at) >= IDLE_REFILL_EVERY;
        if refills != self.refills_seen || arrived || idle_refill {
            self.refills_seen = refills;
            self.charged = Duration::ZERO;
            self.refilled_at = now;
        }
        self.was_busy = in_flight > 0;
        self.charged
    }

    /// Charges the CPU a slice used.
    pub fn charge(&mut self, used: Duration) {
        self.charged += used;
    }
}

/// Whether an isolate that is still running JavaScript with nothing in
/// flight and no WebSocket open must be stopped: it has been idle (no
/// request ended, no socket open) for `idle_for`, and its work after the
/// response is over its time.
pub fn work_after_response_expired(in_flight: usize, open_sockets: usize, idle_for: Duration) -> bool {
    in_flight == 0 && open_sockets == 0 && idle_for > WORK_AFTER_RESPONSE
}

/// Since when an isolate has been idle as its slices see it: nothing in
/// flight and no WebSocket open. Idle from the first slice that saw it so;
/// the pool's last-used time alone would count a socket that just closed,
/// or a response just finished, as long idle. Times are on any one
/// monotonic clock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IdleWatch {
    since: Option<Duration>,
}

impl IdleWatch {
    /// At a slice at `now`.
    pub fn observe(&mut self, in_flight: usize, open_sockets: usize, now: Duration) {
        self.since = match (in_flight, open_sockets) {
            (0, 0) => Some(self.since.unwrap_or(now)),
            _ => None,
        };
    }

    /// How long the isolate has been idle at `now` by both the slices'
    /// clock (no socket open either) and the pool's (`since_last_used`: no
    /// request taken or finished); `None` if it was busy at the last slice.
    pub fn idle_for(&self, now: Duration, since_last_used: Duration) -> Option<Duration> {
        self.since.map(|since| now.saturating_sub(since).min(since_last_used))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: PlacementRules = PlacementRules { max_concurrent_per_isolate: 4, busy_thread_in_flight: 2 };

    fn load(id: IsolateId, thread: usize, in_flight: usize) -> IsolateLoad {
        IsolateLoad { id, thread, in_flight }
    }

    #[test]
    fn a_cold_worker_starts_on_the_quietest_thread() {
        assert_eq!(place(&[], &[3, 0, 1], RULES), Placement::New { thread: 1 });
    }

    #[test]
    fn a_live_isolate_on_a_quiet_thread_is_preferred() {
        assert_eq!(place(&[load(7, 2, 1)], &[0, 0, 1], RULES), Placement::Existing(7));
    }

    #[test]
    fn load_spreads_when_the_isolates_thread_is_busy() {
        assert_eq!(place(&[load(7, 0, 2)], &[2, 0], RULES), Placement::New { thread: 1 });
    }

    #[test]
    fn when_every_thread_is_busy_the_least_loaded_isolate_is_shared() {
        assert_eq!(place(&[load(7, 0, 3), load(8, 1, 2)], &[5, 5], RULES), Placement::Existing(8));
    }

    #[test]
    fn a_full_isolate_is_never_chosen() {
        assert_eq!(place(&[load(7, 0, 4)], &[4], RULES), Placement::New { thread: 0 });
    }

    fn usage(id: IsolateId, idle_for: u64, memory_mb: usize, in_flight: usize, now: Instant) -> IsolateUse {
        IsolateUse { id, last_used: now - Duration::from_secs(idle_for), memory_bytes: memory_mb << 20, in_flight }
    }

    #[test]
    fn idle_isolates_expire() {
        let now = Instant::now() + Duration::from_secs(1000);
        let rules = EvictionRules { idle_timeout: Duration::from_secs(60), memory_budget_bytes: 1 << 30 };
        let isolates = [usage(1, 61, 10, 0, now), usage(2, 59, 10, 0, now), usage(3, 500, 10, 1, now)];
        assert_eq!(evict(now, &isolates, rules), vec![1]);
    }

    #[test]
    fn over_budget_the_least_recently_used_go_first() {
        let now = Instant::now() + Duration::from_secs(1000);
        let rules = EvictionRules { idle_timeout: Duration::from_secs(600), memory_budget_bytes: 25 << 20 };
        let isolates =
            [usage(1, 5, 10, 0, now), usage(2, 30, 10, 0, now), usage(3, 50, 10, 2, now), usage(4, 10, 10, 0, now)];
        // 40 MiB in use, 25 allowed: drop the two oldest idle ones (3 is busy).
        assert_eq!(evict(now, &isolates, rules), vec![2, 4]);
    }

    #[test]
    fn work_after_the_response_shares_the_last_budget() {
        let ms = Duration::from_millis;
        let mut account = CpuAccount::default();
        // A request arrives and runs 30 ms; it finishes (a refill).
        assert_eq!(account.begin_slice(1, 0, ms(0)), ms(0));
        account.charge(ms(30));
        // Background slices after it: nothing in flight, nothing refills
        // within a second.
        assert_eq!(account.begin_slice(0, 1, ms(40)), ms(0));
        account.charge(ms(40));
        assert_eq!(account.begin_slice(0, 1, ms(90)), ms(40));
        account.charge(ms(40));
        assert!(over_cpu_limit(account.begin_slice(0, 1, ms(140)), ms(0), 0, ms(50)), "a chain of slices is cut");
        // A new request arriving at the idle isolate gets a whole budget.
        assert_eq!(account.begin_slice(1, 1, ms(150)), ms(0));
        account.charge(ms(10));
        assert_eq!(account.begin_slice(1, 1, ms(160)), ms(10));
        // A WebSocket message (an event) refills too.
        assert_eq!(account.begin_slice(0, 2, ms(170)), ms(0));
        account.charge(ms(45));
        // Idle work gets its budget back once a second, no more often.
        assert_eq!(account.begin_slice(0, 2, ms(900)), ms(45));
        assert_eq!(account.begin_slice(0, 2, ms(1170)), ms(0));
    }

    #[test]
    fn one_slice_never_runs_past_the_limit() {
        let ms = Duration::from_millis;
        assert!(over_cpu_limit(ms(0), ms(51), 999, ms(50)), "parked requests lend a loop no time");
        assert!(!over_cpu_limit(ms(900), ms(40), 999, ms(50)));
    }

    #[test]
    fn idle_isolates_running_javascript_are_stopped_after_the_grace() {
        let s = Duration::from_secs;
        assert!(!work_after_response_expired(0, 0, s(29)));
        assert!(work_after_response_expired(0, 0, s(31)));
        assert!(!work_after_response_expired(1, 0, s(31)), "a request in flight is not idle");
        assert!(!work_after_response_expired(0, 1, s(600)), "an open WebSocket is not idle");
    }

    #[test]
    fn idle_time_counts_from_the_first_idle_slice_and_restarts_when_busy() {
        let s = Duration::from_secs;
        let mut watch = IdleWatch::default();
        watch.observe(1, 0, s(0));
        assert_eq!(watch.idle_for(s(1), s(100)), None);
        watch.observe(0, 0, s(10));
        watch.observe(0, 0, s(20));
        assert_eq!(watch.idle_for(s(25), s(100)), Some(s(15)));
        assert_eq!(watch.idle_for(s(25), s(3)), Some(s(3)), "a request finished since");
        watch.observe(0, 1, s(30));
        assert_eq!(watch.idle_for(s(40), s(100)), None, "an open WebSocket is not idle");
        watch.observe(0, 0, s(50));
        assert_eq!(watch.idle_for(s(80), s(100)), Some(s(30)));
    }

    #[test]
    fn cpu_limit_scales_with_requests_in_flight() {
        let ms = Duration::from_millis;
        assert!(!over_cpu_limit(ms(30), ms(10), 1, ms(50)));
        assert!(over_cpu_limit(ms(30), ms(21), 1, ms(50)));
        assert!(!over_cpu_limit(ms(60), ms(30), 2, ms(50)));
        assert!(over_cpu_limit(ms(0), ms(51), 0, ms(50)));
    }
}
