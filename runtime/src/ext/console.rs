//! `console.*` from workers: each line attributed to its worker and
//! request, cut to a size, and within the worker's log budget.

use std::sync::Arc;

use deno_core::{op2, OpState};

/// The worker's name, for log lines.
#[derive(Clone)]
pub struct WorkerName(pub Arc<str>);

/// The longest console line written, in bytes; longer ones are cut. The
/// bootstrap already cuts lines to 16 Ki characters before they leave V8,
/// which is at most this many bytes of UTF-8 with its note.
pub const MAX_LOG_LINE_BYTES: usize = 64 * 1024 + 64;

/// How much console output one worker may write, across all its isolates:
/// a token bucket for lines and one for bytes. Output past it is dropped and
/// counted, and the count is logged once output is allowed again, so one
/// tenant cannot flood the node's log (or push others' lines out of it).
#[derive(Debug, Clone)]
pub struct LogBudget {
    lines: f64,
    bytes: f64,
    refilled_at: std::time::Instant,
    dropped: u64,
}

/// A worker's log budget, shared by its isolates (on any thread).
#[derive(Debug, Clone)]
pub struct SharedLogBudget(pub Arc<std::sync::Mutex<LogBudget>>);

impl Default for SharedLogBudget {
    fn default() -> Self {
        SharedLogBudget(Arc::new(std::sync::Mutex::new(LogBudget::new(std::time::Instant::now()))))
    }
}

/// Lines a burst may have, and lines per second after it.
const LOG_BURST_LINES: f64 = 1_000.0;
const LOG_LINES_PER_SECOND: f64 = 200.0;
/// Bytes a burst may have, and bytes per second after it.
const LOG_BURST_BYTES: f64 = 1024.0 * 1024.0;
const LOG_BYTES_PER_SECOND: f64 = 256.0 * 1024.0;

/// What the budget says of one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogAdmission {
    /// Write it; `dropped` lines were dropped since the last one written.
    Write {
        dropped: u64,
    },
    Drop,
}

impl LogBudget {
    pub fn new(now: std::time::Instant) -> Self {
        LogBudget { lines: LOG_BURST_LINES, bytes: LOG_BURST_BYTES, refilled_at: now, dropped: 0 }
    }

    /// Decides whether a line of `len` bytes may be written at `now`. Pure
    /// but for the budget itself.
    pub fn admit(&mut self, now: std::time::Instant, len: usize) -> LogAdmission {
        let seconds = now.saturating_duration_since(self.refilled_at).as_secs_f64();
        self.refilled_at = now;
        self.lines = (self.lines + seconds * LOG_LINES_PER_SECOND).min(LOG_BURST_LINES);
        self.bytes = (self.bytes + seconds * LOG_BYTES_PER_SECOND).min(LOG_BURST_BYTES);
        let len = len as f64;
        if self.lines < 1.0 || self.bytes < len {
            self.dropped += 1;
            return LogAdmission::Drop;
        }
        self.lines -= 1.0;
        self.bytes -= len;
        LogAdmission::Write { dropped: std::mem::take(&mut self.dropped) }
    }
}

/// Cuts `message` to at most `max` bytes, at a character boundary.
pub fn truncate_log_line(message: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if message.len() <= max {
        return message.into();
    }
    let mut end = max;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... [cut: {} bytes in all]", &message[..end], message.len()).into()
}

/// `console.*` from the worker, at deno's console levels (0 debug, 1 log and
/// info, 2 warn, 3 error, 4 trace), within the worker's [`LogBudget`].
#[op2(fast)]
pub fn op_outpost_log(state: &mut OpState, #[smi] level: u32, #[string] message: &str, #[string] request_id: &str) {
    let message = message.strip_suffix('\n').unwrap_or(message);
    let message = truncate_log_line(message, MAX_LOG_LINE_BYTES);
    let now = std::time::Instant::now();
    let admission = state
        .try_borrow::<SharedLogBudget>()
        .map_or(LogAdmission::Write { dropped: 0 }, |budget| budget.0.lock().unwrap().admit(now, message.len()));
    let worker = &state.borrow::<WorkerName>().0;
    let LogAdmission::Write { dropped } = admission else { return };
    if dropped > 0 {
        tracing::warn!(target: "worker", worker = %worker, "{dropped} console lines dropped: over the worker's log rate");
    }
    match level {
        0 => tracing::debug!(target: "worker", worker = %worker, request_id, "{message}"),
        1 => tracing::info!(target: "worker", worker = %worker, request_id, "{message}"),
        2 => tracing::warn!(target: "worker", worker = %worker, request_id, "{message}"),
        _ => tracing::error!(target: "worker", worker = %worker, request_id, "{message}"),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn console_output_is_rate_limited_and_counts_what_it_drops() {
        let start = Instant::now();
        let mut budget = LogBudget::new(start);
        for _ in 0..1_000 {
            assert_eq!(budget.admit(start, 10), LogAdmission::Write { dropped: 0 });
        }
        assert_eq!(budget.admit(start, 10), LogAdmission::Drop);
        assert_eq!(budget.admit(start, 10), LogAdmission::Drop);
        // A second later, 200 more lines; the first says what was dropped.
        let later = start + Duration::from_secs(1);
        assert_eq!(budget.admit(later, 10), LogAdmission::Write { dropped: 2 });
        for _ in 0..199 {
            assert_eq!(budget.admit(later, 10), LogAdmission::Write { dropped: 0 });
        }
        assert_eq!(budget.admit(later, 10), LogAdmission::Drop);
    }

    #[test]
    fn bytes_are_budgeted_too() {
        let start = Instant::now();
        let mut budget = LogBudget::new(start);
        assert_eq!(budget.admit(start, 600 * 1024), LogAdmission::Write { dropped: 0 });
        assert_eq!(budget.admit(start, 600 * 1024), LogAdmission::Drop);
        assert_eq!(budget.admit(start + Duration::from_secs(1), 600 * 1024), LogAdmission::Write { dropped: 1 });
    }

    #[test]
    fn long_lines_are_cut_at_a_character() {
        assert_eq!(truncate_log_line("short", 10), "short");
        let cut = truncate_log_line("ééééé", 3);
        assert_eq!(cut, "é... [cut: 10 bytes in all]");
    }
}
