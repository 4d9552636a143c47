//! A pool thread: a current-thread tokio runtime whose tasks are isolates.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use outpost_runtime::{DispatchError, IsolateSignals, RequestQueue, ServeError, WorkerIsolate, WorkerRequest};
use tokio::sync::{mpsc, oneshot};

use crate::policy::IsolateId;
use crate::pool::{worker_options, DeployedWorker, Inner};
use crate::watchdog::{thread_cpu_time, Running, Slot};

pub(crate) struct StartIsolate {
    pub(crate) id: IsolateId,
    pub(crate) worker: Arc<DeployedWorker>,
    pub(crate) receiver: mpsc::UnboundedReceiver<WorkerRequest>,
    pub(crate) in_flight: Arc<AtomicUsize>,
    pub(crate) completed: Arc<AtomicU64>,
    pub(crate) signals: Arc<IsolateSignals>,
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

pub(crate) fn spawn(index: usize, pool: Weak<Inner>) -> ThreadHandle {
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
                            tokio::task::spawn_local(run_isolate(*start, thread_slot.clone(), pool.clone()));
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
async fn run_isolate(start: StartIsolate, slot: Arc<Slot>, pool: Weak<Inner>) {
    let StartIsolate { id, worker, receiver, in_flight, completed, signals, mut loaded } = start;
    let name = worker.spec.name.clone();
    let limits = worker.spec.limits;
    let report_load = |loaded: &mut Option<oneshot::Sender<Result<(), String>>>, result: Result<(), String>| {
        if let Some(loaded) = loaded.take() {
            let _ = loaded.send(result);
        } else if let Err(message) = result {
            tracing::error!(worker = %name, isolate = id, "isolate failed to load: {message}");
        }
    };
    let queue = Rc::new(RequestQueue::new(receiver));
    let mut isolate =
        match WorkerIsolate::new(&worker.spec.source, worker.code, &worker_options(&worker, &pool, signals), queue) {
            Ok(isolate) => isolate,
            Err(err) => {
                report_load(&mut loaded, Err(err.to_string()));
                gone(&pool, id);
                return;
            }
        };
    let meter =
        Meter::new(slot, isolate.thread_safe_handle(), in_flight, completed, Duration::from_millis(limits.cpu_ms));
    let load = meter.run(isolate.load()).await;
    if let Err(err) = load {
        let message = if meter.tripped() {
            format!("top-level code exceeded the CPU limit of {} ms", limits.cpu_ms)
        } else {
            err.to_string()
        };
        report_load(&mut loaded, Err(message));
        gone(&pool, id);
        return;
    }
    if let Some(pool) = pool.upgrade() {
        pool.isolate_loaded(id, isolate.used_heap_bytes());
    }
    report_load(&mut loaded, Ok(()));

    let served = meter.run(isolate.serve()).await;
    // No new requests for this isolate from here on.
    gone(&pool, id);
    // A terminated isolate can end in any error (V8 unwinds wherever it
    // was), so the meter and the heap flag say why, not the error's kind.
    let limit = if meter.tripped() {
        Some(DispatchError::CpuLimitExceeded { limit_ms: limits.cpu_ms })
    } else if isolate.heap_limit_hit() {
        Some(DispatchError::MemoryLimitExceeded { limit_mb: limits.memory_mb })
    } else {
        None
    };
    match (served, limit) {
        (_, Some(reason)) => {
            tracing::warn!(worker = %name, isolate = id, "isolate stopped: {reason}");
            isolate.set_abort_reason(reason);
        }
        (Ok(()), None) => {}
        (Err(ServeError::Terminated), None) => tracing::warn!(worker = %name, isolate = id, "isolate terminated"),
        (Err(err), None) => tracing::error!(worker = %name, isolate = id, "isolate failed: {err}"),
    }
    drop(isolate);
}

fn gone(pool: &Weak<Inner>, id: IsolateId) {
    if let Some(pool) = pool.upgrade() {
        pool.isolate_gone(id);
    }
}

/// Charges an isolate's CPU time slice by slice and lets the watchdog see
/// the slice that is running.
///
/// Requests interleave on an isolate, so CPU cannot be pinned on one of
/// them. The budget is `limit` per request in flight, for the CPU used since
/// the isolate last finished a request (or was idle): a runaway request
/// finishes nothing and is stopped, while an isolate that keeps answering
/// keeps its budget.
struct Meter {
    slot: Arc<Slot>,
    handle: outpost_runtime::v8::IsolateHandle,
    in_flight: Arc<AtomicUsize>,
    completed: Arc<AtomicU64>,
    completed_seen: Cell<u64>,
    limit: Duration,
    charged: Cell<Duration>,
    tripped: Arc<AtomicBool>,
}

impl Meter {
    fn new(
        slot: Arc<Slot>,
        handle: outpost_runtime::v8::IsolateHandle,
        in_flight: Arc<AtomicUsize>,
        completed: Arc<AtomicU64>,
        limit: Duration,
    ) -> Self {
        Self {
            slot,
            handle,
            in_flight,
            completed,
            completed_seen: Cell::new(0),
            limit,
            charged: Cell::new(Duration::ZERO),
            tripped: Arc::new(AtomicBool::new(false)),
        }
    }

    fn tripped(&self) -> bool {
        self.tripped.load(Ordering::Relaxed)
    }

    fn run<'a, F: Future + 'a>(&'a self, inner: F) -> Metered<'a, F> {
        Metered { meter: self, inner: Box::pin(inner) }
    }
}

struct Metered<'a, F> {
    meter: &'a Meter,
    inner: Pin<Box<F>>,
}

impl<F: Future> Future for Metered<'_, F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let meter = self.meter;
        let in_flight = meter.in_flight.load(Ordering::Relaxed);
        let completed = meter.completed.load(Ordering::Relaxed);
        if in_flight == 0 || completed != meter.completed_seen.get() {
            // Idle, or a request finished since the last slice: a new budget.
            meter.completed_seen.set(completed);
            meter.charged.set(Duration::ZERO);
        }
        let started = thread_cpu_time();
        meter.slot.begin(Running {
            handle: meter.handle.clone(),
            slice_started: started,
            charged: meter.charged.get(),
            in_flight,
            limit: meter.limit,
            tripped: meter.tripped.clone(),
        });
        let result = self.inner.as_mut().poll(cx);
        meter.slot.end();
        meter.charged.set(meter.charged.get() + thread_cpu_time().saturating_sub(started));
        result
    }
}
