//! Queue consumers, the acting part: one task per consumed queue (the only
//! one handing out its messages on this node) closes batches as
//! [`queues::next_step`] says, hands each to the consuming worker's `queue`
//! handler, up to `max_concurrency` at once, and settles its messages as
//! [`queues::verdicts`] says; and what one worker's batches hold in flight
//! is bounded in bytes. A message leaves the queue only once its ack
//! (or its move to the dead-letter queue) is durable. Which messages are in
//! flight is kept in memory, per queue, for as long as the node runs (a
//! redeployed consumer must not hand out what its predecessor still runs).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use outpost_isolate_pool::{FetchError, Pool};
use outpost_kv::queues::{self, QueueMessage, Queues, Settlement};
use outpost_runtime::{DispatchError, QueueBatch, QueueOutcome};
use tokio::sync::Notify;
use tracing::Instrument as _;

use super::queues::{next_step, verdicts, Consumer, Consumers, Delivered, Next, Verdict};

/// How long a batch may run, as on Cloudflare (15 minutes of wall time).
const RUN_LIMIT: Duration = Duration::from_secs(15 * 60);
/// How long a queue waits before trying a worker that had no `queue`
/// handler again (a new version may have one).
const NO_HANDLER_PAUSE_MS: u64 = 30_000;
/// How often a waiting consumer looks again even if nothing rang (a new
/// version of its settings, a send from outside this process).
const RECHECK: Duration = Duration::from_secs(1);

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The most message bytes one worker's batches may hold in flight, over
/// all the queues it consumes: a slow or stuck consumer cannot make the
/// node hold its whole backlog in memory (one batch may pass it, so a
/// batch of the largest messages always goes).
const WORKER_IN_FLIGHT_BYTES: usize = 64 << 20;

/// Message bytes in flight per consuming worker.
#[derive(Clone, Default)]
struct Budgets(Arc<Mutex<HashMap<String, usize>>>);

impl Budgets {
    fn exhausted(&self, worker: &str) -> bool {
        self.0.lock().unwrap().get(worker).is_some_and(|bytes| *bytes >= WORKER_IN_FLIGHT_BYTES)
    }

    fn take(&self, worker: &str, bytes: usize) {
        *self.0.lock().unwrap().entry(worker.to_string()).or_default() += bytes;
    }

    fn give_back(&self, worker: &str, bytes: usize) {
        let mut all = self.0.lock().unwrap();
        if let Some(held) = all.get_mut(worker) {
            *held = held.saturating_sub(bytes);
            if *held == 0 {
                all.remove(worker);
            }
        }
    }
}

/// What a queue has in flight: the keys of messages handed out and not yet
/// settled, and how many batches they make.
#[derive(Default)]
struct InFlight {
    /// Held by the consumer while it reads the queue (so the look sees a
    /// set that does not change under it), briefly by a settled batch.
    keys: tokio::sync::Mutex<HashSet<Vec<u8>>>,
    batches: AtomicUsize,
    /// Rung when a batch is settled.
    settled: Notify,
    /// While the consuming worker has no `queue` handler: when to try
    /// again (ms since the epoch; 0 if not paused).
    paused_until: AtomicU64,
}

/// Starts a consumer task for every consumed queue, now and whenever the
/// deployments add one; runs until the pool stops.
pub async fn run_consumers(pool: Pool, queues: Queues, consumers: Consumers, changed: Arc<Notify>) {
    // The queues with a consumer task; a task takes its queue out as it
    // ends, so that a later deployment starts it again.
    let running = Arc::new(Mutex::new(HashSet::new()));
    let mut in_flight: HashMap<String, Arc<InFlight>> = HashMap::new();
    let budgets = Budgets::default();
    while !pool.is_stopping() {
        for queue in consumers.queues() {
            if running.lock().unwrap().insert(queue.clone()) {
                let span = tracing::info_span!("node.queue_consumer", queue = %queue);
                let flight = in_flight.entry(queue.clone()).or_default().clone();
                let task =
                    consume(pool.clone(), queues.clone(), consumers.clone(), queue.clone(), flight, budgets.clone());
                let (running, changed) = (running.clone(), changed.clone());
                tokio::spawn(
                    async move {
                        task.await;
                        running.lock().unwrap().remove(&queue);
                        changed.notify_one();
                    }
                    .instrument(span),
                );
            }
        }
        tokio::select! {
            _ = changed.notified() => {}
            _ = tokio::time::sleep(RECHECK) => {}
        }
    }
}

/// The consumer of one queue, until no worker consumes it.
async fn consume(
    pool: Pool,
    queues: Queues,
    consumers: Consumers,
    queue: String,
    in_flight: Arc<InFlight>,
    budgets: Budgets,
) {
    let wakeup = queues.wakeup(&queue);
    // After a look that found a batch not yet full: how many were due, and
    // when that batch closes. Until then, sends only add to the count, and
    // the queue is read again once they could fill it (not on every send).
    let mut filling: Option<(usize, u64)> = None;
    while !pool.is_stopping() {
        let Some((worker, consumer)) = consumers.get(&queue) else { break };
        let paused_until = in_flight.paused_until.load(Ordering::Acquire);
        let wait_until =
            if in_flight.batches.load(Ordering::Acquire) >= consumer.max_concurrency || budgets.exhausted(&worker) {
                None
            } else if now_ms() < paused_until {
                Some(paused_until)
            } else if let Some((_, closes_at)) =
                filling.filter(|(due, at)| *due < consumer.max_batch_size && now_ms() < *at)
            {
                Some(closes_at)
            } else {
                filling = None;
                // Counted from here: sends the look below may not see yet.
                wakeup.take_sent();
                match look(&queues, &consumer, &in_flight).await {
                    Ok((Next::Deliver, batch)) => {
                        in_flight.keys.lock().await.extend(batch.iter().map(|m| m.key.clone()));
                        in_flight.batches.fetch_add(1, Ordering::AcqRel);
                        let bytes = batch.iter().map(|m| m.body.len()).sum();
                        budgets.take(&worker, bytes);
                        let (queues, pool, in_flight, budgets) =
                            (queues.clone(), pool.clone(), in_flight.clone(), budgets.clone());
                        tokio::spawn(
                            async move {
                                let keys: Vec<Vec<u8>> = batch.iter().map(|m| m.key.clone()).collect();
                                if let Delivery::NoHandler = deliver(&pool, &queues, &worker, &consumer, batch).await {
                                    in_flight.paused_until.store(now_ms() + NO_HANDLER_PAUSE_MS, Ordering::Release);
                                }
                                budgets.give_back(&worker, bytes);
                                // Settled (or, if that failed, left to be due again).
                                let mut flying = in_flight.keys.lock().await;
                                for key in &keys {
                                    flying.remove(key);
                                }
                                drop(flying);
                                in_flight.batches.fetch_sub(1, Ordering::AcqRel);
                                in_flight.settled.notify_one();
                            }
                            .in_current_span(),
                        );
                        continue;
                    }
                    Ok((Next::Wait(until), batch)) => {
                        if let (false, Some(closes_at)) = (batch.is_empty(), until) {
                            filling = Some((batch.len(), closes_at));
                        }
                        until
                    }
                    Err(err) => {
                        tracing::warn!("cannot read the queue: {err}");
                        None
                    }
                }
            };
        let wait = match wait_until {
            Some(at) => Duration::from_millis(at.saturating_sub(now_ms())).min(RECHECK),
            None => RECHECK,
        };
        tokio::select! {
            _ = wakeup.notify.notified() => {
                if let Some((due, _)) = &mut filling {
                    *due += wakeup.take_sent();
                }
            }
            _ = in_flight.settled.notified() => filling = None,
            _ = tokio::time::sleep(wait) => filling = None,
        }
    }
}

/// What the consumer does next, from what the queue holds now, with the
/// batch it would deliver.
async fn look(
    queues: &Queues,
    consumer: &Consumer,
    in_flight: &InFlight,
) -> Result<(Next, Vec<QueueMessage>), queues::QueueError> {
    let now = now_ms();
    let flying = in_flight.keys.lock().await;
    let due = queues::due(queues.storage(), &consumer.queue, now, consumer.max_batch_size, &flying).await?;
    let next_visible = if due.is_empty() { next_visible(queues, &consumer.queue, &flying).await? } else { None };
    let oldest = due.first().map(QueueMessage::visible_at_ms);
    Ok((next_step(due.len(), oldest, next_visible, now, consumer), due))
}

/// When the next message not in flight becomes visible. Messages in flight
/// are due already, so with any in flight the answer is "soon": a settled
/// batch rings anyway.
async fn next_visible(
    queues: &Queues,
    queue: &str,
    flying: &HashSet<Vec<u8>>,
) -> Result<Option<u64>, queues::QueueError> {
    if !flying.is_empty() {
        return Ok(None);
    }
    queues::next_visible(queues.storage(), queue).await
}

/// How a batch's delivery ended.
enum Delivery {
    /// Run, and its messages settled (or left due, if that failed).
    Ran,
    /// The worker has no `queue` handler: the messages were left as they
    /// were (nothing written, the attempt not counted), not dropped.
    NoHandler,
}

/// Runs one batch and settles its messages.
async fn deliver(
    pool: &Pool,
    queues: &Queues,
    worker: &str,
    consumer: &Consumer,
    messages: Vec<QueueMessage>,
) -> Delivery {
    let request_id = format!("queue-{}", messages[0].id);
    let batch = QueueBatch { queue: consumer.queue.clone(), messages: messages.clone(), request_id };
    let outcome: Result<QueueOutcome, String> =
        match tokio::time::timeout(RUN_LIMIT, pool.run_queue(worker, batch)).await {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(FetchError::Dispatch(DispatchError::NoHandler(message)))) => {
                tracing::error!(
                    worker,
                    "the worker consumes this queue but cannot take a batch ({message}); its messages stay queued"
                );
                return Delivery::NoHandler;
            }
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err(format!("the batch ran longer than {} minutes", RUN_LIMIT.as_secs() / 60)),
        };
    if let Err(reason) = &outcome {
        tracing::warn!(worker, size = messages.len(), "queue batch failed: {reason}");
    }
    let delivered: Vec<Delivered> =
        messages.iter().map(|m| Delivered { id: m.id.clone(), attempts: m.attempts }).collect();
    let now = now_ms();
    let mut settlement = Settlement::default();
    for (message, verdict) in messages.into_iter().zip(verdicts(&delivered, &outcome, consumer, now)) {
        match verdict {
            Verdict::Ack => settlement.acks.push(message),
            Verdict::Retry { visible_at_ms } => settlement.retries.push((message, visible_at_ms)),
            Verdict::DeadLetter => settlement.dead_letters.push(message),
            Verdict::Drop => {
                tracing::warn!(
                    id = %message.id,
                    attempts = message.attempts,
                    "message dropped: its retries are spent and the queue has no dead-letter queue"
                );
                settlement.acks.push(message);
            }
        }
    }
    let (acked, retried, dead) = (settlement.acks.len(), settlement.retries.len(), settlement.dead_letters.len());
    let dead_letter_queue = consumer.dead_letter_queue.as_deref();
    match queues::settle(queues.storage(), &consumer.queue, settlement, dead_letter_queue, now).await {
        Ok(()) => {
            tracing::debug!(acked, retried, dead, "queue batch settled");
            if let Some(dlq) = dead_letter_queue.filter(|_| dead > 0) {
                queues.wakeup(dlq).ring(dead);
            }
        }
        // The messages stay where they are: due again once no longer in
        // flight.
        Err(err) => tracing::error!("cannot settle a queue batch: {err}"),
    }
    Delivery::Ran
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workers_byte_budget_spans_its_queues_and_comes_back() {
        let budgets = Budgets::default();
        assert!(!budgets.exhausted("a"));
        budgets.take("a", WORKER_IN_FLIGHT_BYTES / 2);
        assert!(!budgets.exhausted("a"), "room for another batch");
        // Another queue of the same worker: one batch may pass the bound.
        budgets.take("a", WORKER_IN_FLIGHT_BYTES);
        assert!(budgets.exhausted("a"));
        assert!(!budgets.exhausted("b"), "other workers are not held back");
        budgets.give_back("a", WORKER_IN_FLIGHT_BYTES);
        assert!(!budgets.exhausted("a"));
        budgets.give_back("a", WORKER_IN_FLIGHT_BYTES / 2);
        assert!(budgets.0.lock().unwrap().is_empty(), "nothing kept for an idle worker");
    }
}
