//! Fires Durable Object alarms: the alarms stored in the node's store come
//! due, the object's `alarm()` runs in the isolate hosting it, and the
//! alarm is cleared after it succeeds or moved later (with backoff) after
//! it fails. Alarms live in the store, so one set before a restart fires
//! after it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use outpost_isolate_pool::Pool;
use outpost_kv::objects::{ObjectKey, ObjectStorage};
use outpost_runtime::{split_object_namespace, ObjectAddress};
use tracing::Instrument as _;

/// Failed runs of one alarm before it is dropped (as on Cloudflare: six
/// retries after the first run).
pub const MAX_ALARM_RETRIES: u32 = 6;

/// Longest sleep between two looks at the store: bounds how late an alarm
/// set while the scheduler sleeps can fire.
const POLL: Duration = Duration::from_millis(100);

/// What to do with an alarm after its handler ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlarmOutcome {
    /// It succeeded: clear it.
    Clear,
    /// It failed: run it again at `at_ms`, as failure number `failures`.
    Retry { at_ms: u64, failures: u32 },
    /// It failed too often: clear it and say so.
    GiveUp,
}

/// Retry delay after `attempt` failed runs of an alarm handler (1-based):
/// 2 s doubling up to 1 h.
pub fn alarm_retry_delay_ms(attempt: u32) -> u64 {
    let base: u64 = 2_000;
    base.saturating_mul(1u64 << attempt.saturating_sub(1).min(20)).min(3_600_000)
}

/// Decides an alarm's fate: `failures_before` earlier runs of it failed.
pub fn after_alarm(succeeded: bool, failures_before: u32, now_ms: u64) -> AlarmOutcome {
    if succeeded {
        return AlarmOutcome::Clear;
    }
    let failures = failures_before + 1;
    if failures > MAX_ALARM_RETRIES {
        return AlarmOutcome::GiveUp;
    }
    AlarmOutcome::Retry { at_ms: now_ms + alarm_retry_delay_ms(failures), failures }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Alarms being run, and how often each failed so far.
#[derive(Default)]
struct Tracker {
    running: HashSet<ObjectKey>,
    failures: HashMap<ObjectKey, u32>,
}

/// Runs until the pool stops: fires every due alarm of every deployed
/// worker. Spawn it on the node's tokio runtime.
pub async fn run_alarms(pool: Pool, store: Arc<dyn ObjectStorage>) {
    let tracker = Arc::new(Mutex::new(Tracker::default()));
    while !pool.is_stopping() {
        let now = now_ms();
        match store.due_alarms(now).await {
            Ok(due) => {
                for (object, at_ms) in due {
                    let Some((worker, class_name)) = split_object_namespace(&object.class) else { continue };
                    if !pool.is_deployed(worker) {
                        continue;
                    }
                    let failures = {
                        let mut tracker = tracker.lock().unwrap();
                        if !tracker.running.insert(object.clone()) {
                            continue;
                        }
                        tracker.failures.get(&object).copied().unwrap_or(0)
                    };
                    let span = tracing::info_span!("node.alarm", worker = %worker, class = %class_name);
                    let due = DueAlarm { worker: worker.to_string(), object, at_ms, failures };
                    tokio::spawn(fire(pool.clone(), store.clone(), tracker.clone(), due).instrument(span));
                }
            }
            Err(err) => tracing::warn!("cannot read due alarms: {err}"),
        }
        // Sleep until the next alarm, at most POLL. An alarm already due is
        // running or cannot run (its worker is not deployed): wait POLL
        // rather than spin on it.
        let now = now_ms();
        let next = store.next_alarm().await.ok().flatten();
        let wait = match next {
            Some(at) if at > now => Duration::from_millis(at - now).min(POLL),
            _ => POLL,
        };
        tokio::time::sleep(wait).await;
    }
}

/// An alarm that came due: whose, for when, and how often it failed so far.
struct DueAlarm {
    worker: String,
    object: ObjectKey,
    at_ms: u64,
    failures: u32,
}

async fn fire(pool: Pool, store: Arc<dyn ObjectStorage>, tracker: Arc<Mutex<Tracker>>, due: DueAlarm) {
    let DueAlarm { worker, object, at_ms, failures: retry_count } = due;
    let class_name = split_object_namespace(&object.class).map_or("", |(_, class)| class).to_string();
    let address = ObjectAddress { class_name: class_name.clone(), id: object.id, name: None };
    let request_id = format!("alarm-{:016x}", u64::from_be_bytes(object.id[..8].try_into().expect("8 bytes")));
    let succeeded = match pool.run_alarm(&worker, address, retry_count, request_id.clone()).await {
        Ok(()) => true,
        Err(err) => {
            tracing::warn!(worker = %worker, class = %class_name, request_id, "alarm failed: {err}");
            false
        }
    };
    let failures_before = tracker.lock().unwrap().failures.get(&object).copied().unwrap_or(0);
    let outcome = after_alarm(succeeded, failures_before, now_ms());
    let stored = match outcome {
        AlarmOutcome::Clear => store.replace_alarm_if(&object, at_ms, None).await,
        AlarmOutcome::Retry { at_ms: retry_at, failures } => {
            tracing::info!(worker = %worker, class = %class_name, request_id, failures, "alarm will be retried in {} ms", retry_at.saturating_sub(now_ms()));
            store.replace_alarm_if(&object, at_ms, Some(retry_at)).await
        }
        AlarmOutcome::GiveUp => {
            tracing::error!(worker = %worker, class = %class_name, request_id, "alarm failed {} times; dropped", MAX_ALARM_RETRIES + 1);
            store.replace_alarm_if(&object, at_ms, None).await
        }
    };
    if let Err(err) = stored {
        tracing::error!(worker = %worker, class = %class_name, "cannot update the alarm: {err}");
    }
    let mut tracker = tracker.lock().unwrap();
    match outcome {
        AlarmOutcome::Retry { failures, .. } => {
            tracker.failures.insert(object.clone(), failures);
        }
        AlarmOutcome::Clear | AlarmOutcome::GiveUp => {
            tracker.failures.remove(&object);
        }
    }
    tracker.running.remove(&object);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alarm_backoff_doubles_and_caps() {
        assert_eq!(alarm_retry_delay_ms(1), 2_000);
        assert_eq!(alarm_retry_delay_ms(2), 4_000);
        assert_eq!(alarm_retry_delay_ms(5), 32_000);
        assert_eq!(alarm_retry_delay_ms(30), 3_600_000);
    }

    #[test]
    fn success_clears_and_failures_back_off_then_give_up() {
        assert_eq!(after_alarm(true, 3, 1_000), AlarmOutcome::Clear);
        assert_eq!(after_alarm(false, 0, 1_000), AlarmOutcome::Retry { at_ms: 3_000, failures: 1 });
        assert_eq!(after_alarm(false, 1, 1_000), AlarmOutcome::Retry { at_ms: 5_000, failures: 2 });
        assert_eq!(
            after_alarm(false, MAX_ALARM_RETRIES - 1, 0),
            AlarmOutcome::Retry { at_ms: alarm_retry_delay_ms(MAX_ALARM_RETRIES), failures: MAX_ALARM_RETRIES }
        );
        assert_eq!(after_alarm(false, MAX_ALARM_RETRIES, 0), AlarmOutcome::GiveUp);
    }
}
