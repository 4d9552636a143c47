//! A pool thread: a current-thread tokio runtime whose tasks are isolates.
//!
//! A thread knows its pool only as an [`IsolateHost`]: what an isolate is
//! started with, and where to say it loaded and that it is gone. So this
//! module does not depend on `pool.rs`, which depends on it.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use outpost_runtime::{
    DispatchError, EventQueue, IsolateSignals, ServeError, WorkerEvent, WorkerIsolate, WorkerOptions,
};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument as _;

use crate::inflight::LastUsed;
use crate::policy::{over_cpu_limit, work_after_response_expired, CpuAccount, IdleWatch, IsolateId};
use crate::watchdog::{thread_cpu_time, Running, Slot};
use crate::worker::DeployedWorker;

/// What a pool thread needs from its pool (implemented by `pool.rs`).
pub(crate) trait IsolateHost: Send + Sync {
    /// What an isolate of `worker` is started with besides its code.
    fn worker_options(&self, worker: &DeployedWorker, signals: Arc<IsolateSignals>) -> WorkerOptions;
    /// Isolate `id` loaded, using `memory_bytes` of heap.
    fn isolate_loaded(&self, id: IsolateId, memory_bytes: usize);
    /// Isolate `id` takes no more events (done, evicted, terminated or
    /// failed to load).
    fn isolate_gone(&self, id: IsolateId);
}

pub(crate) struct StartIsolate {
    pub(crate) id: IsolateId,
    pub(crate) worker: Arc<DeployedWorker>,
    pub(crate) receiver: mpsc::UnboundedReceiver<WorkerEvent>,
    pub(crate) in_flight: Arc<AtomicUsize>,
    pub(crate) completed: Arc<AtomicU64>,
    pub(crate) signals: Arc<IsolateSignals>,
    pub(crate) last_used: LastUsed,
    pub(crate) loaded: Option<oneshot::Sender<Result<(), String>>>,
}

pub(crate) enum Command {
    Start(Box<StartIsolate>),
    Stop,
}

pub(crate) struct ThreadHandle {
    pub(crate) commands: mpsc::UnboundedSender<Command>,
    pub(crate) slot: Arc<Slot>,
}

pub(crate) fn spawn(index: usize, host: Arc<dyn IsolateHost>) -> ThreadHandle {
    let (commands, mut receiver) = mpsc::unbounded_channel();
    let slot = Arc::new(Slot::default());
    let thread_slot = slot.clone();
    std::thread::Builder::new()
        .name(format!("isolates-{index}"))
        .spawn(move || {
            thread_slot.register_current_thread();
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
            let local = tokio::task::LocalSet::new();
            local.block_on(&runtime, async move {
                while let Some(command) = receiver.recv().await {
                    match command {
                        Command::Start(start) => {
                            tokio::task::spawn_local(run_isolate(*start, thread_slot.clone(), host.clone()));
                        }
                        Command::Stop => break,
                    }
                }
            });
            // Let isolates finish their in-flight work before the thread ends.
            runtime.block_on(local);
        })
        .expect("a pool thread starts");
    ThreadHandle { commands, slot }
}

/// Runs one isolate from creation to drop.
async fn run_isolate(start: StartIsolate, slot: Arc<Slot>, host: Arc<dyn IsolateHost>) {
    let StartIsolate { id, worker, receiver, in_flight, completed, signals, last_used, mut loaded } = start;
    let name = worker.spec.name.clone();
    let limits = worker.spec.limits;
    let report_load = |loaded: &mut Option<oneshot::Sender<Result<(), String>>>, result: Result<(), String>| {
        if let Some(loaded) = loaded.take() {
            let _ = loaded.send(result);
        } else if let Err(message) = result {
            tracing::error!(worker = %name, isolate = id, "isolate failed to load: {message}");
        }
    };
    let span = tracing::debug_span!("pool.isolate_start", worker = %name, isolate = id);
    let queue = Rc::new(EventQueue::new(receiver));
    let options = host.worker_options(&worker, signals.clone());
    let mut isolate = match span.in_scope(|| WorkerIsolate::new(&worker.spec.source, worker.code, &options, queue)) {
        Ok(isolate) => isolate,
        Err(err) => {
            report_load(&mut loaded, Err(err.to_string()));
            host.isolate_gone(id);
            return;
        }
    };
    drop(options);
    let meter = Meter {
        slot,
        handle: isolate.thread_safe_handle(),
        heap_limit_hit: isolate.heap_limit_flag(),
        in_flight,
        completed,
        signals,
        last_used,
        limit: Duration::from_millis(limits.cpu_ms),
        account: Cell::new(CpuAccount::default()),
        tripped: Arc::new(AtomicBool::new(false)),
        epoch: Instant::now(),
        idle: Cell::new(IdleWatch::default()),
    };
    let load = match meter.run(isolate.load()).instrument(span).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(err.to_string()),
        Err(Stop::Cpu) => Err(format!("top-level code exceeded the CPU limit of {} ms", limits.cpu_ms)),
        Err(Stop::Memory) => Err(format!("top-level code exceeded the memory limit of {} MiB", limits.memory_mb)),
        Err(Stop::AfterResponse) => Err("top-level code did not finish".to_string()),
    };
    if let Err(message) = load {
        report_load(&mut loaded, Err(message));
        host.isolate_gone(id);
        return;
    }
    host.isolate_loaded(id, isolate.used_heap_bytes());
    report_load(&mut loaded, Ok(()));

    let served = meter.run(isolate.serve()).await;
    // No new requests for this isolate from here on.
    host.isolate_gone(id);
    // A stopped isolate is dropped at once, whatever it still waits for (a
    // timer, a fetch, a storage write): requests in flight get the reason.
    let reason = match served {
        Ok(Ok(())) => None,
        Ok(Err(ServeError::Terminated)) => {
            tracing::warn!(worker = %name, isolate = id, "isolate terminated");
            None
        }
        Ok(Err(err)) => {
            tracing::error!(worker = %name, isolate = id, "isolate failed: {err}");
            None
        }
        // The CPU went on collecting garbage for a worker at its memory
        // limit: that limit is the one to name.
        Err(Stop::Cpu) if isolate.buffers_refused_within(Duration::from_secs(1)) => {
            Some(DispatchError::MemoryLimitExceeded { limit_mb: limits.memory_mb })
        }
        Err(Stop::Cpu) => Some(DispatchError::CpuLimitExceeded { limit_ms: limits.cpu_ms }),
        Err(Stop::Memory) => Some(DispatchError::MemoryLimitExceeded { limit_mb: limits.memory_mb }),
        Err(Stop::AfterResponse) => {
            tracing::warn!(
                worker = %name,
                isolate = id,
                "isolate stopped: still running JavaScript {} s after its last request (waitUntil() work and timers end with the response's grace)",
                crate::policy::WORK_AFTER_RESPONSE.as_secs()
            );
            None
        }
    };
    if let Some(reason) = reason {
        tracing::warn!(worker = %name, isolate = id, "isolate stopped: {reason}");
        isolate.set_abort_reason(reason);
    }
    drop(isolate);
}

/// Why the meter stopped an isolate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Over its CPU budget (see [`CpuAccount`]).
    Cpu,
    /// At its heap limit.
    Memory,
    /// Still running JavaScript long after its last request.
    AfterResponse,
}

/// Charges an isolate's CPU time slice by slice (every poll of its future
/// is a slice), lets the watchdog see the slice that is running, and stops
/// the isolate for good once a limit trips.
///
/// Every way JavaScript runs on a pool thread (a request, a microtask, a
/// timer, `waitUntil()` work, a WebSocket handler, an object's constructor
/// or alarm) runs inside a poll of the isolate's one future, so this one
/// meter sees all of it. A termination alone is not enough to stop an
/// isolate: V8 forgets it once the script it interrupted has unwound, and
/// deno_core carries on with the next timer or microtask. So once the
/// meter trips, the metered future ends after the poll that tripped it, and
/// the caller drops the isolate.
struct Meter {
    slot: Arc<Slot>,
    handle: outpost_runtime::v8::IsolateHandle,
    heap_limit_hit: Rc<Cell<bool>>,
    in_flight: Arc<AtomicUsize>,
    /// Requests answered: each refills the budget.
    completed: Arc<AtomicU64>,
    signals: Arc<IsolateSignals>,
    last_used: LastUsed,
    limit: Duration,
    account: Cell<CpuAccount>,
    tripped: Arc<AtomicBool>,
    /// The meter's clock.
    epoch: Instant,
    /// Since when (on `epoch`) slices have seen the isolate idle.
    idle: Cell<IdleWatch>,
}

impl Meter {
    fn run<'a, F: Future + 'a>(&'a self, inner: F) -> Metered<'a, F> {
        Metered { meter: self, inner: Box::pin(inner) }
    }

    fn stopped(&self) -> Option<Stop> {
        // The heap first: collecting garbage near the limit uses CPU, so
        // both may have tripped, and memory is the cause.
        if self.heap_limit_hit.get() {
            Some(Stop::Memory)
        } else if self.tripped.load(Ordering::Relaxed) {
            Some(Stop::Cpu)
        } else {
            None
        }
    }
}

struct Metered<'a, F> {
    meter: &'a Meter,
    inner: Pin<Box<F>>,
}

impl<F: Future> Future for Metered<'_, F> {
    type Output = Result<F::Output, Stop>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let meter = self.meter;
        if let Some(stop) = meter.stopped() {
            return Poll::Ready(Err(stop));
        }
        let in_flight = meter.in_flight.load(Ordering::Relaxed);
        let refills =
            meter.completed.load(Ordering::Relaxed).wrapping_add(meter.signals.events.load(Ordering::Relaxed));
        let mut account = meter.account.get();
        let now = meter.epoch.elapsed();
        let charged = account.begin_slice(in_flight, refills, now);
        let open_sockets = meter.signals.open_sockets.load(Ordering::Relaxed);
        let mut idle = meter.idle.get();
        idle.observe(in_flight, open_sockets, now);
        meter.idle.set(idle);
        let started = thread_cpu_time();
        meter.slot.begin(Running {
            handle: meter.handle.clone(),
            slice_started: started,
            charged,
            in_flight,
            limit: meter.limit,
            tripped: meter.tripped.clone(),
            last_interrupt: None,
        });
        let result = self.inner.as_mut().poll(cx);
        meter.slot.end();
        let used = thread_cpu_time().saturating_sub(started);
        account.charge(used);
        meter.account.set(account);
        // The watchdog looks every millisecond; a slice that went over
        // between two looks is caught here, so a stop never depends on it.
        if over_cpu_limit(charged, used, in_flight, meter.limit) {
            meter.tripped.store(true, Ordering::Relaxed);
        }
        if let Some(stop) = meter.stopped() {
            return Poll::Ready(Err(stop));
        }
        match result {
            Poll::Ready(output) => Poll::Ready(Ok(output)),
            // A retired isolate is on its way out already: it ends once its
            // requests and waitUntil() work do, and no timer keeps it.
            Poll::Pending if meter.signals.is_going_away() => Poll::Pending,
            Poll::Pending => {
                let idle_for = idle.idle_for(now, meter.last_used.elapsed());
                let in_flight = meter.in_flight.load(Ordering::Relaxed);
                match idle_for {
                    Some(idle_for) if work_after_response_expired(in_flight, open_sockets, idle_for) => {
                        Poll::Ready(Err(Stop::AfterResponse))
                    }
                    _ => Poll::Pending,
                }
            }
        }
    }
}
