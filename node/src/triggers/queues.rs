//! Queue consumers, the deciding part: what a `[[queues.consumers]]` entry
//! says, when a batch closes, and what becomes of each message once its
//! batch ran. Pure functions of time and what the consumer saw; the loop
//! that acts on them is [`super::consumer`].

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use outpost_runtime::{QueueOutcome, RetryRequest};

/// Cloudflare's bounds and defaults for a consumer.
pub const MAX_BATCH_SIZE: usize = 100;
pub const DEFAULT_BATCH_SIZE: usize = 10;
pub const MAX_BATCH_TIMEOUT_SECONDS: u32 = 60;
pub const DEFAULT_BATCH_TIMEOUT_SECONDS: u32 = 5;
pub const MAX_RETRIES: u32 = 100;
pub const DEFAULT_RETRIES: u32 = 3;
/// Also the default: Cloudflare scales a consumer up to 250 batches at once.
pub const MAX_CONCURRENCY: usize = 250;
/// The longest retry delay, in seconds (12 h).
pub const MAX_RETRY_DELAY_SECONDS: u32 = 43_200;

/// One `[[queues.consumers]]` entry, within Cloudflare's bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumer {
    pub queue: String,
    /// A batch closes once it has this many messages…
    pub max_batch_size: usize,
    /// …or its first message has waited this long.
    pub max_batch_timeout_ms: u64,
    /// Deliveries after the first before a message is dead-lettered.
    pub max_retries: u32,
    /// Where messages go once their retries are spent; dropped (with a log
    /// line) if there is none.
    pub dead_letter_queue: Option<String>,
    /// Batches of the queue in flight at once.
    pub max_concurrency: usize,
    /// Seconds before a retried message is delivered again, unless the
    /// retry says.
    pub retry_delay_seconds: u32,
}

impl Consumer {
    /// A consumer of `queue` with Cloudflare's production defaults.
    pub fn new(queue: impl Into<String>) -> Self {
        Consumer {
            queue: queue.into(),
            max_batch_size: DEFAULT_BATCH_SIZE,
            max_batch_timeout_ms: u64::from(DEFAULT_BATCH_TIMEOUT_SECONDS) * 1000,
            max_retries: DEFAULT_RETRIES,
            dead_letter_queue: None,
            max_concurrency: MAX_CONCURRENCY,
            retry_delay_seconds: 0,
        }
    }
}

/// Which worker consumes which queue (one worker a queue), with its
/// settings: what the node's deployments say, what the consumer loops read.
#[derive(Debug, Clone, Default)]
pub struct Consumers(Arc<RwLock<HashMap<String, (String, Consumer)>>>);

impl Consumers {
    /// The worker consuming `queue`, and how.
    pub fn get(&self, queue: &str) -> Option<(String, Consumer)> {
        self.0.read().unwrap().get(queue).cloned()
    }

    pub fn queues(&self) -> Vec<String> {
        self.0.read().unwrap().keys().cloned().collect()
    }

    /// The first of `consumers` whose queue another worker consumes.
    pub fn taken(&self, worker: &str, consumers: &[Consumer]) -> Option<(String, String)> {
        let all = self.0.read().unwrap();
        consumers.iter().find_map(|consumer| match all.get(&consumer.queue) {
            Some((owner, _)) if owner != worker => Some((consumer.queue.clone(), owner.clone())),
            _ => None,
        })
    }

    /// Makes `consumers` the queues `worker` consumes (instead of the ones
    /// it did). Call [`Consumers::taken`] first.
    pub fn replace(&self, worker: &str, consumers: Vec<Consumer>) {
        let mut all = self.0.write().unwrap();
        all.retain(|_, (owner, _)| owner != worker);
        for consumer in consumers {
            all.insert(consumer.queue.clone(), (worker.to_string(), consumer));
        }
    }
}

/// What the consumer of a queue does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Lease a batch and deliver it.
    Deliver,
    /// Wait for a send, or until this time (ms since the epoch), whichever
    /// comes first; with `None`, for a send only.
    Wait(Option<u64>),
}

/// Whether a batch closes now: it does once `max_batch_size` messages are
/// due, or the first due one (`oldest_due_ms`, when it became visible) has
/// waited `max_batch_timeout`. With nothing due, the wait lasts until the
/// next message becomes visible (`next_visible_ms`) or one is sent.
pub fn next_step(
    due: usize,
    oldest_due_ms: Option<u64>,
    next_visible_ms: Option<u64>,
    now_ms: u64,
    consumer: &Consumer,
) -> Next {
    match oldest_due_ms {
        Some(oldest) if due > 0 => {
            let closes_at = oldest.saturating_add(consumer.max_batch_timeout_ms);
            if due >= consumer.max_batch_size || now_ms >= closes_at {
                Next::Deliver
            } else {
                Next::Wait(Some(closes_at))
            }
        }
        _ => Next::Wait(next_visible_ms),
    }
}

/// What becomes of one delivered message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ack,
    /// Delivered again from this time on.
    Retry {
        visible_at_ms: u64,
    },
    /// Its retries are spent: to the dead-letter queue…
    DeadLetter,
    /// …or, without one, dropped.
    Drop,
}

/// A delivered message, as the verdict needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    pub id: String,
    /// Deliveries so far, the one that just ended included.
    pub attempts: u32,
}

/// Cloudflare's rules for what a batch's run came to. A message's own
/// `ack()` or `retry()` decides it, else the batch's `ackAll()` or
/// `retryAll()`; a retry waits its own delay, else the batch's, else the
/// consumer's `retry_delay`. The others are acked if
/// the run succeeded and retried if it failed (threw, or never finished:
/// `outcome` is `Err`). A retry past `max_retries` dead-letters the message
/// instead, or drops it if the consumer has no dead-letter queue.
pub fn verdicts(
    messages: &[Delivered],
    outcome: &Result<QueueOutcome, String>,
    consumer: &Consumer,
    now_ms: u64,
) -> Vec<Verdict> {
    let default_delay =
        |request: Option<&RetryRequest>| request.and_then(|r| r.delay_seconds).unwrap_or(consumer.retry_delay_seconds);
    messages
        .iter()
        .map(|message| {
            let retry_delay = match outcome {
                Err(_) => Some(consumer.retry_delay_seconds),
                Ok(outcome) => {
                    let explicit = outcome.retries.iter().find(|(id, _)| *id == message.id).map(|(_, r)| r);
                    // The runtime records a message's own call only if it
                    // came first, so it outranks the batch's.
                    if outcome.acks.contains(&message.id) {
                        None
                    } else if let Some(retry) = explicit {
                        Some(retry.delay_seconds.unwrap_or_else(|| default_delay(outcome.retry_all.as_ref())))
                    } else if outcome.ack_all {
                        None
                    } else if outcome.retry_all.is_some() || outcome.error.is_some() {
                        Some(default_delay(outcome.retry_all.as_ref()))
                    } else {
                        None
                    }
                }
            };
            match retry_delay {
                None => Verdict::Ack,
                Some(_) if message.attempts > consumer.max_retries => {
                    if consumer.dead_letter_queue.is_some() {
                        Verdict::DeadLetter
                    } else {
                        Verdict::Drop
                    }
                }
                Some(delay) => {
                    // The runtime checks the bound; a forged outcome still cannot park a message for years.
                    let delay = delay.min(MAX_RETRY_DELAY_SECONDS);
                    Verdict::Retry { visible_at_ms: now_ms + u64::from(delay) * 1000 }
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consumer() -> Consumer {
        Consumer { max_batch_size: 3, max_batch_timeout_ms: 1_000, ..Consumer::new("jobs") }
    }

    #[test]
    fn a_batch_closes_when_full_or_when_its_first_message_has_waited_the_timeout() {
        let c = consumer();
        assert_eq!(next_step(3, Some(500), None, 600, &c), Next::Deliver, "full");
        assert_eq!(next_step(1, Some(500), None, 600, &c), Next::Wait(Some(1_500)));
        assert_eq!(next_step(1, Some(500), None, 1_500, &c), Next::Deliver, "timed out");
        assert_eq!(next_step(0, None, Some(9_000), 600, &c), Next::Wait(Some(9_000)), "until a delayed one shows");
        assert_eq!(next_step(0, None, None, 600, &c), Next::Wait(None));
        let eager = Consumer { max_batch_timeout_ms: 0, ..c };
        assert_eq!(next_step(1, Some(600), None, 600, &eager), Next::Deliver, "a timeout of 0 sends at once");
    }

    fn delivered(ids: &[(&str, u32)]) -> Vec<Delivered> {
        ids.iter().map(|(id, attempts)| Delivered { id: id.to_string(), attempts: *attempts }).collect()
    }

    fn retry(delay: Option<u32>) -> RetryRequest {
        RetryRequest { delay_seconds: delay }
    }

    #[test]
    fn a_successful_run_acks_all_but_what_it_retried() {
        let c = Consumer { retry_delay_seconds: 7, ..consumer() };
        let messages = delivered(&[("a", 1), ("b", 1), ("c", 1)]);
        let outcome = QueueOutcome {
            retries: vec![("b".into(), retry(Some(2))), ("c".into(), retry(None))],
            ..Default::default()
        };
        assert_eq!(
            verdicts(&messages, &Ok(outcome), &c, 1_000),
            [Verdict::Ack, Verdict::Retry { visible_at_ms: 3_000 }, Verdict::Retry { visible_at_ms: 8_000 }]
        );
    }

    #[test]
    fn a_failed_run_retries_all_but_what_it_acked() {
        let c = consumer();
        let messages = delivered(&[("a", 1), ("b", 2)]);
        let threw = QueueOutcome { error: Some("Error: boom".into()), acks: vec!["a".into()], ..Default::default() };
        assert_eq!(verdicts(&messages, &Ok(threw), &c, 0), [Verdict::Ack, Verdict::Retry { visible_at_ms: 0 }]);
        let acked_all = QueueOutcome { error: Some("Error: late".into()), ack_all: true, ..Default::default() };
        assert_eq!(verdicts(&messages, &Ok(acked_all), &c, 0), [Verdict::Ack, Verdict::Ack]);
        // A message's own retry (it came before ackAll()) still counts.
        let retried_first =
            QueueOutcome { ack_all: true, retries: vec![("b".into(), retry(Some(3)))], ..Default::default() };
        assert_eq!(
            verdicts(&messages, &Ok(retried_first), &c, 0),
            [Verdict::Ack, Verdict::Retry { visible_at_ms: 3_000 }]
        );
        // A run that never finished (the isolate died) retries everything.
        assert_eq!(
            verdicts(&messages, &Err("worker exceeded its CPU limit".into()), &c, 0),
            [Verdict::Retry { visible_at_ms: 0 }, Verdict::Retry { visible_at_ms: 0 }]
        );
    }

    #[test]
    fn retry_all_uses_its_delay_unless_a_message_has_its_own() {
        let c = consumer();
        let messages = delivered(&[("a", 1), ("b", 1), ("c", 1)]);
        let outcome = QueueOutcome {
            retry_all: Some(retry(Some(10))),
            retries: vec![("b".into(), retry(Some(1))), ("c".into(), retry(None))],
            acks: vec![],
            ..Default::default()
        };
        assert_eq!(
            verdicts(&messages, &Ok(outcome), &c, 0),
            [
                Verdict::Retry { visible_at_ms: 10_000 },
                Verdict::Retry { visible_at_ms: 1_000 },
                Verdict::Retry { visible_at_ms: 10_000 }
            ]
        );
    }

    #[test]
    fn spent_retries_dead_letter_or_drop() {
        let messages = delivered(&[("first", 1), ("last", 4), ("past", 5)]);
        let failed = Ok(QueueOutcome { retry_all: Some(retry(None)), ..Default::default() });
        let c = consumer();
        assert_eq!(c.max_retries, 3);
        assert_eq!(
            verdicts(&messages, &failed, &c, 0),
            [Verdict::Retry { visible_at_ms: 0 }, Verdict::Drop, Verdict::Drop]
        );
        let with_dlq = Consumer { dead_letter_queue: Some("dlq".into()), ..consumer() };
        assert_eq!(
            verdicts(&messages, &failed, &with_dlq, 0),
            [Verdict::Retry { visible_at_ms: 0 }, Verdict::DeadLetter, Verdict::DeadLetter]
        );
        let no_retries = Consumer { max_retries: 0, ..with_dlq };
        assert_eq!(verdicts(&messages[..1], &failed, &no_retries, 0), [Verdict::DeadLetter]);
        // A delay past the bound (the runtime refuses it) is cut to it.
        let forged = Ok(QueueOutcome { retry_all: Some(retry(Some(u32::MAX))), ..Default::default() });
        assert_eq!(verdicts(&messages[..1], &forged, &consumer(), 0), [Verdict::Retry { visible_at_ms: 43_200_000 }]);
        // An ack is an ack whatever the attempts.
        let acked = Ok(QueueOutcome::default());
        assert_eq!(verdicts(&messages, &acked, &no_retries, 0), [Verdict::Ack; 3]);
    }

    #[test]
    fn a_queue_has_one_consumer_and_redeploying_replaces_a_workers_consumers() {
        let consumers = Consumers::default();
        consumers.replace("a", vec![Consumer::new("jobs"), Consumer::new("mail")]);
        assert_eq!(consumers.taken("b", &[Consumer::new("mail")]), Some(("mail".into(), "a".into())));
        assert_eq!(consumers.taken("a", &[Consumer::new("mail")]), None);
        consumers.replace("a", vec![Consumer::new("jobs")]);
        assert_eq!(consumers.taken("b", &[Consumer::new("mail")]), None);
        let mut queues = consumers.queues();
        queues.sort();
        assert_eq!(queues, ["jobs"]);
        assert_eq!(consumers.get("jobs").map(|(worker, _)| worker), Some("a".to_string()));
    }
}
