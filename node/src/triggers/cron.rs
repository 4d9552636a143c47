//! Cron Triggers: once a minute, the runs due since the last look, each
//! handed to the pool as a `scheduled` event of its worker. Runs missed
//! while the node was down are not replayed; a failed run is logged and
//! not retried.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use outpost_cron::Schedule;
use outpost_isolate_pool::Pool;
use outpost_runtime::{ScheduledOutcome, ScheduledRun};
use tracing::Instrument as _;

/// Each deployed worker's Cron Triggers, by worker name.
pub type Crons = Arc<RwLock<HashMap<String, Vec<Schedule>>>>;

/// A run to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueRun {
    pub worker: String,
    /// The expression as configured.
    pub cron: String,
    /// The minute that fired (its start), ms since the epoch.
    pub minute_ms: i64,
}

/// The runs due in `(after_ms, upto_ms]`: every minute in it at which one
/// of a worker's expressions fires, once per expression.
pub fn due_runs(crons: &HashMap<String, Vec<Schedule>>, after_ms: i64, upto_ms: i64) -> Vec<DueRun> {
    let mut due = Vec::new();
    for (worker, schedules) in crons {
        for schedule in schedules {
            for minute_ms in schedule.fires_between(after_ms, upto_ms) {
                due.push(DueRun { worker: worker.clone(), cron: schedule.source().to_string(), minute_ms });
            }
        }
    }
    due.sort_by(|a, b| (a.minute_ms, &a.worker, &a.cron).cmp(&(b.minute_ms, &b.worker, &b.cron)));
    due
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Runs until the pool stops. Spawn it on the node's tokio runtime.
pub async fn run_crons(pool: Pool, crons: Crons) {
    // From now on: nothing before the start is replayed.
    let mut last = now_ms();
    while !pool.is_stopping() {
        // Just after the next minute starts.
        let wait = 60_000 - last.rem_euclid(60_000) + 5;
        tokio::time::sleep(Duration::from_millis(wait as u64)).await;
        let now = now_ms().max(last);
        let due = due_runs(&crons.read().unwrap(), last, now);
        last = now;
        for run in due {
            let span = tracing::info_span!("node.cron", worker = %run.worker, cron = %run.cron);
            tokio::spawn(fire(pool.clone(), run).instrument(span));
        }
    }
}

async fn fire(pool: Pool, run: DueRun) {
    let request_id = format!("cron-{}", run.minute_ms / 60_000);
    let scheduled = ScheduledRun { cron: run.cron.clone(), scheduled_time_ms: run.minute_ms as f64, request_id };
    match pool.run_scheduled(&run.worker, scheduled).await {
        Ok(ScheduledOutcome { error: None, .. }) => tracing::debug!("scheduled run finished"),
        Ok(ScheduledOutcome { error: Some(error), no_retry }) => {
            let first_line = error.lines().next().unwrap_or_default();
            tracing::warn!(no_retry, "scheduled run failed: {first_line}");
        }
        Err(err) => tracing::warn!("scheduled run failed: {err}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_matching_minute_runs_once_per_expression() {
        let mut crons = HashMap::new();
        let every = Schedule::parse("* * * * *").unwrap();
        let five = Schedule::parse("*/5 * * * *").unwrap();
        crons.insert("a".to_string(), vec![every, five]);
        crons.insert("b".to_string(), vec![Schedule::parse("0 0 1 1 *").unwrap()]);
        // 2026-11-29 12:03:30 to 12:05:10 UTC.
        let start = 1_795_953_810_000;
        let runs = due_runs(&crons, start, start + 100_000);
        let described: Vec<(String, String, i64)> =
            runs.iter().map(|r| (r.worker.clone(), r.cron.clone(), (r.minute_ms / 60_000) % 60)).collect();
        assert_eq!(
            described,
            vec![
                ("a".into(), "* * * * *".into(), 4),
                ("a".into(), "* * * * *".into(), 5),
                ("a".into(), "*/5 * * * *".into(), 5),
            ]
        );
        assert!(runs.iter().all(|r| r.minute_ms % 60_000 == 0));
        // Looking again from where the last look ended runs nothing twice.
        assert!(due_runs(&crons, start + 100_000, start + 110_000).is_empty());
    }
}
