//! The CPU watchdog: a thread that looks at every pool thread's running
//! slice and terminates an isolate that is over its CPU limit. A JS loop
//! that never yields is stopped this way; nothing else could interrupt it.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost_runtime::v8::IsolateHandle;

use crate::policy::over_cpu_limit;

/// How often the watchdog looks.
const TICK: Duration = Duration::from_millis(1);

/// The slice of JavaScript running on a pool thread right now.
pub(crate) struct Running {
    pub(crate) handle: IsolateHandle,
    /// The thread's CPU clock when the slice started.
    pub(crate) slice_started: Duration,
    /// CPU the isolate used before this slice (since it was last idle).
    pub(crate) charged: Duration,
    pub(crate) in_flight: usize,
    pub(crate) limit: Duration,
    pub(crate) tripped: Arc<AtomicBool>,
    /// The slice's CPU time when termination was last requested.
    pub(crate) last_interrupt: Option<Duration>,
}

/// How often a tripped slice that is still running is asked again to
/// terminate: V8 forgets a termination once the script it interrupted has
/// unwound, and the same poll may start another one (the next timer or
/// microtask) before it returns to the meter.
const TERMINATE_AGAIN_AFTER: Duration = Duration::from_millis(5);

/// One pool thread's view for the watchdog.
#[derive(Default)]
pub(crate) struct Slot {
    running: Mutex<Option<Running>>,
    /// The thread's CPU clock id, readable from another thread.
    clock: AtomicI32,
    registered: AtomicBool,
}

impl Slot {
    /// Called on the pool thread itself, once.
    pub(crate) fn register_current_thread(&self) {
        let mut clock: libc::clockid_t = 0;
        // SAFETY: pthread_self is this thread; clock is a valid out pointer.
        if unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) } == 0 {
            self.clock.store(clock, Ordering::Relaxed);
            self.registered.store(true, Ordering::Release);
        }
    }

    pub(crate) fn begin(&self, running: Running) {
        *self.running.lock().unwrap() = Some(running);
    }

    pub(crate) fn end(&self) {
        *self.running.lock().unwrap() = None;
    }

    fn check(&self) {
        if !self.registered.load(Ordering::Acquire) {
            return;
        }
        let mut running = self.running.lock().unwrap();
        let Some(running) = running.as_mut() else { return };
        let now = clock_time(self.clock.load(Ordering::Relaxed));
        let elapsed = now.saturating_sub(running.slice_started);
        if !over_cpu_limit(running.charged, elapsed, running.in_flight, running.limit) {
            return;
        }
        if running.last_interrupt.is_some_and(|at| elapsed.saturating_sub(at) < TERMINATE_AGAIN_AFTER) {
            return;
        }
        running.tripped.store(true, Ordering::Relaxed);
        running.last_interrupt = Some(elapsed);
        // Terminate from inside the isolate's own execution, at its next
        // interrupt check, rather than from this thread: the isolate may
        // be between two slices by the time the request lands, with
        // another isolate running on its thread.
        running.handle.request_interrupt(terminate_from_inside, std::ptr::null_mut());
    }
}

unsafe extern "C" fn terminate_from_inside(
    isolate: outpost_runtime::v8::UnsafeRawIsolatePtr,
    _data: *mut std::ffi::c_void,
) {
    // SAFETY: V8 calls this on the isolate's thread while it runs.
    let isolate = unsafe { outpost_runtime::v8::Isolate::from_raw_isolate_ptr(isolate) };
    isolate.terminate_execution();
}

/// CPU time of the calling thread.
pub(crate) fn thread_cpu_time() -> Duration {
    clock_time(libc::CLOCK_THREAD_CPUTIME_ID)
}

fn clock_time(clock: libc::clockid_t) -> Duration {
    let mut spec = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: spec is a valid out pointer; an invalid clock leaves it zero.
    unsafe { libc::clock_gettime(clock, &mut spec) };
    Duration::new(spec.tv_sec as u64, spec.tv_nsec as u32)
}

/// Starts the watchdog over `slots`; once a second it also calls
/// `maintain` (the pool's eviction and deadlines), and stops when that
/// returns false (the pool is gone or stopping).
pub(crate) fn spawn(maintain: impl Fn() -> bool + Send + 'static, slots: Vec<Arc<Slot>>) {
    std::thread::Builder::new()
        .name("isolate-watchdog".into())
        .spawn(move || {
            let mut ticks: u64 = 0;
            loop {
                std::thread::sleep(TICK);
                for slot in &slots {
                    slot.check();
                }
                ticks += 1;
                // Eviction is not urgent: once a second is enough.
                if ticks.is_multiple_of(1000) && !maintain() {
                    return;
                }
            }
        })
        .expect("the watchdog thread starts");
}
