//! A per-isolate budget for ArrayBuffer memory.
//!
//! ArrayBuffer contents live outside the V8 heap, so the heap limit does not
//! bound them: without this, one worker could allocate buffers until the
//! node runs out of memory. Each isolate gets its own allocator that counts
//! the bytes of its live buffers and refuses an allocation past the budget;
//! V8 then throws a `RangeError` in the worker, which fails that request
//! and nothing else.

use std::ffi::c_void;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deno_core::v8;

/// Bytes of live ArrayBuffers of one isolate, and the most it may have.
pub(crate) struct BufferBudget {
    used: AtomicUsize,
    limit: usize,
    /// When an allocation was last refused (ms after `EPOCH`, 0 for never).
    /// V8 answers a refusal with garbage collections, which use CPU: a CPU
    /// limit that trips right after one is really the memory limit.
    last_refusal_ms: AtomicU64,
}

static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

fn now_ms() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

impl BufferBudget {
    fn new(limit: usize) -> Self {
        BufferBudget { used: AtomicUsize::new(0), limit, last_refusal_ms: AtomicU64::new(0) }
    }

    fn reserve(&self, len: usize) -> bool {
        let reserved = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(len).filter(|total| *total <= self.limit)
            })
            .is_ok();
        if !reserved {
            self.last_refusal_ms.store(now_ms(), Ordering::Relaxed);
        }
        reserved
    }

    /// Whether an allocation was refused within `window`.
    pub(crate) fn refused_within(&self, window: Duration) -> bool {
        let at = self.last_refusal_ms.load(Ordering::Relaxed);
        at != 0 && now_ms().saturating_sub(at) <= window.as_millis() as u64
    }

    fn release(&self, len: usize) {
        self.used.fetch_sub(len, Ordering::Relaxed);
    }
}

unsafe extern "C" fn allocate(budget: &BufferBudget, len: usize) -> *mut c_void {
    if !budget.reserve(len) {
        return std::ptr::null_mut();
    }
    // SAFETY: calloc with a non-zero size; null is handled below.
    let data = unsafe { libc::calloc(len.max(1), 1) };
    if data.is_null() {
        budget.release(len);
    }
    data
}

unsafe extern "C" fn allocate_uninitialized(budget: &BufferBudget, len: usize) -> *mut c_void {
    if !budget.reserve(len) {
        return std::ptr::null_mut();
    }
    // SAFETY: malloc with a non-zero size; null is handled below.
    let data = unsafe { libc::malloc(len.max(1)) };
    if data.is_null() {
        budget.release(len);
    }
    data
}

unsafe extern "C" fn free(budget: &BufferBudget, data: *mut c_void, len: usize) {
    // SAFETY: `data` came from `allocate` or `allocate_uninitialized`.
    unsafe { libc::free(data) };
    budget.release(len);
}

unsafe extern "C" fn drop_budget(budget: *const BufferBudget) {
    // SAFETY: the pointer is the one `Arc::into_raw` gave `allocator`, and V8
    // calls this once, when the allocator is destroyed.
    drop(unsafe { Arc::from_raw(budget) });
}

static VTABLE: v8::RustAllocatorVtable<BufferBudget> =
    v8::RustAllocatorVtable { allocate, allocate_uninitialized, free, drop: drop_budget };

/// An ArrayBuffer allocator that refuses to hold more than `limit` bytes,
/// and its budget (to ask about refusals).
pub(crate) fn limited_allocator(limit: usize) -> (v8::UniqueRef<v8::Allocator>, Arc<BufferBudget>) {
    let budget = Arc::new(BufferBudget::new(limit));
    // SAFETY: the vtable is 'static and the handle stays valid until V8
    // calls `drop_budget`, which takes back the reference given here.
    let allocator = unsafe { v8::new_rust_allocator(Arc::into_raw(budget.clone()), &VTABLE) };
    (allocator, budget)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_refuses_past_its_limit_and_frees() {
        let budget = BufferBudget::new(100);
        assert!(budget.reserve(60));
        assert!(!budget.refused_within(Duration::from_secs(1)));
        assert!(!budget.reserve(41));
        assert!(budget.refused_within(Duration::from_secs(1)));
        assert!(budget.reserve(40));
        budget.release(60);
        assert!(budget.reserve(60));
        assert!(!budget.reserve(usize::MAX));
    }
}
