//! What readers may see: the last acknowledged and the last applied commit,
//! and whether the store stopped.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use crate::error::Stopped;

/// Which commits readers can rely on. The commit thread acknowledges a
/// commit as soon as its log record is durable; the apply thread brings it
/// into redb and then the cache meanwhile, so a writer never waits for the
/// tables. A read first waits until every commit acknowledged before it is
/// applied: usually the apply in progress, a few at most (one per batch the
/// commit thread acknowledged meanwhile); nothing without concurrent writes.
#[derive(Default)]
pub(crate) struct Visibility {
    /// The sequence of the last acknowledged commit.
    acknowledged: AtomicU64,
    /// The sequence of the last commit applied to redb and the cache;
    /// changed only under `lock`.
    applied: AtomicU64,
    /// The apply thread failed or is gone, or a store thread panicked:
    /// reads would miss an acknowledged write.
    stopped: AtomicBool,
    /// The first failure of the log, a checkpoint or an apply: no write
    /// is taken after it, since the log may then hold a record the tables
    /// do not (reopening sorts that out).
    failure: Mutex<Option<String>>,
    /// Threads blocked in [`Visibility::wait_for`] (readers, and the commit
    /// thread before a checkpoint): a publish wakes them only when there
    /// are some.
    waiters: AtomicUsize,
    /// Held to publish (with the cache update that goes with it), to stop,
    /// to fill the cache after a read, and by waiters between checks.
    lock: Mutex<()>,
    changed: Condvar,
}

impl Visibility {
    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Returns once every commit acknowledged before the call is visible.
    pub(crate) fn wait(&self) -> Result<(), Stopped> {
        self.wait_for(self.acknowledged.load(Ordering::Acquire))
    }

    /// Returns once the commit `target` (and every one before) is applied.
    pub(crate) fn wait_for(&self, target: u64) -> Result<(), Stopped> {
        if self.applied.load(Ordering::Acquire) >= target {
            return Ok(());
        }
        let mut guard = self.lock();
        self.waiters.fetch_add(1, Ordering::Relaxed);
        while self.applied.load(Ordering::Acquire) < target && !self.stopped.load(Ordering::Acquire) {
            guard = self.changed.wait(guard).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        self.waiters.fetch_sub(1, Ordering::Relaxed);
        drop(guard);
        if self.applied.load(Ordering::Acquire) < target {
            return Err(Stopped::new(self.failure().unwrap_or_default()));
        }
        Ok(())
    }

    pub(crate) fn acknowledge(&self, sequence: u64) {
        self.acknowledged.store(sequence, Ordering::Release);
    }

    /// The last applied sequence, to pass to [`Visibility::fill`].
    pub(crate) fn applied(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    /// Runs `update_cache` and makes `sequence` visible, as one step for
    /// readers filling the cache.
    pub(crate) fn publish(&self, sequence: u64, update_cache: impl FnOnce()) {
        let _guard = self.lock();
        update_cache();
        self.applied.store(sequence, Ordering::Release);
        if self.waiters.load(Ordering::Relaxed) > 0 {
            self.changed.notify_all();
        }
    }

    /// Runs `fill` (a cache insert of what a read found in redb) unless a
    /// commit was applied since `seen`: the read may have missed it, and
    /// the publish of that commit has already put the newer value (or none)
    /// in the cache, which `fill` must not replace.
    pub(crate) fn fill(&self, seen: u64, fill: impl FnOnce()) {
        let _guard = self.lock();
        if self.applied.load(Ordering::Acquire) == seen {
            fill();
        }
    }

    /// Takes no more writes.
    pub(crate) fn stop_writes(&self, why: &str) {
        let mut failure = self.failure.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        failure.get_or_insert_with(|| why.to_owned());
    }

    /// Takes no more writes, and reads fail: the tables lack a write that
    /// was acknowledged.
    pub(crate) fn stop(&self, why: &str) {
        self.stop_writes(why);
        let _guard = self.lock();
        self.stopped.store(true, Ordering::Release);
        self.changed.notify_all();
    }

    pub(crate) fn failure(&self) -> Option<String> {
        self.failure.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Whether reads fail: see [`Visibility::stop`].
    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }
}

/// Stops the store if the commit or apply thread unwinds: readers (and
/// checkpoints) waiting for an acknowledged commit to be applied would
/// otherwise wait forever.
pub(crate) struct StopOnPanic(pub(crate) Arc<Visibility>, pub(crate) &'static str);

impl Drop for StopOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.stop(self.1);
        }
    }
}
