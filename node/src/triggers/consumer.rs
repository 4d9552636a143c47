//! Queue consumers, the acting part: one task per consumed queue (the only
//! one leasing its messages on this node) closes batches as
//! [`queues::next_step`] says, hands each to the consuming worker's `queue`
//! handler, up to `max_concurrency` at once, and settles its messages as
//! [`queues::verdicts`] says. A message leaves the queue only once its ack
//! (or its move to the dead-letter queue) is durable.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use outpost_isolate_pool::Pool;
use outpost_kv::queues::{self, QueueMessage, Queues, Settlement};
use outpost_runtime::{DeliveredMessage, QueueBatch, QueueOutcome};
use tokio::sync::Notify;
use tracing::Instrument as _;

use super::queues::{next_step, verdicts, Consumer, Consumers, Delivered, Next, Verdict};

/// How long a batch may run, as on Cloudflare (15 minutes of wall time).
const RUN_LIMIT: Duration = Duration::from_secs(15 * 60);
/// How long leased messages stay invisible: longer than a run may last, so
/// a message is not delivered twice at once. A restarted node releases its
/// predecessor's leases at once rather than waiting for this.
const LEASE_MS: u64 = 16 * 60_000;
/// How often a waiting consumer looks again even if nothing rang (a new
/// version of its settings, a send from outside this process).
const RECHECK: Duration = Duration::from_secs(1);

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Starts a consumer task for every consumed queue, now and whenever the
/// deployments add one; runs until the pool stops.
pub async fn run_consumers(pool: Pool, queues: Queues, consumers: Consumers, changed: Arc<Notify>) {
    // The queues with a consumer task; a task takes its queue out as it
    // ends, so that a later deployment starts it again.
    let running = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    while !pool.is_stopping() {
        for queue in consumers.queues() {
            if running.lock().unwrap().insert(queue.clone()) {
                let span = tracing::info_span!("node.queue_consumer", queue = %queue);
                let task = consume(pool.clone(), queues.clone(), consumers.clone(), queue.clone());
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
async fn consume(pool: Pool, queues: Queues, consumers: Consumers, queue: String) {
    match queues::release_leases(queues.storage(), &queue, now_ms(), LEASE_MS).await {
        Ok(0) => {}
        Ok(released) => tracing::info!(released, "messages leased before a restart are delivered again"),
        Err(err) => tracing::warn!("cannot release earlier leases: {err}"),
    }
    let sent = queues.wakeup(&queue);
    let in_flight = Arc::new(AtomicUsize::new(0));
    let batch_done = Arc::new(Notify::new());
    while !pool.is_stopping() {
        let Some((worker, consumer)) = consumers.get(&queue) else { break };
        let wait_until = if in_flight.load(Ordering::Acquire) >= consumer.max_concurrency {
            None
        } else {
            match look(&queues, &consumer).await {
                Ok(Next::Deliver) => {
                    let now = now_ms();
                    match queues::lease(queues.storage(), &queue, now, consumer.max_batch_size, LEASE_MS).await {
                        Ok(messages) if !messages.is_empty() => {
                            in_flight.fetch_add(1, Ordering::AcqRel);
                            let (queues, pool, in_flight, batch_done) =
                                (queues.clone(), pool.clone(), in_flight.clone(), batch_done.clone());
                            tokio::spawn(
                                async move {
                                    deliver(&pool, &queues, &worker, &consumer, messages).await;
                                    in_flight.fetch_sub(1, Ordering::AcqRel);
                                    batch_done.notify_one();
                                }
                                .in_current_span(),
                            );
                            continue;
                        }
                        Ok(_) => None,
                        Err(err) => {
                            tracing::warn!("cannot lease a batch: {err}");
                            Some(now + RECHECK.as_millis() as u64)
                        }
                    }
                }
                Ok(Next::Wait(until)) => until,
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
            _ = sent.notified() => {}
            _ = batch_done.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// What the consumer does next, from what the queue holds now.
async fn look(queues: &Queues, consumer: &Consumer) -> Result<Next, queues::QueueError> {
    let now = now_ms();
    let (due, oldest) = queues::due(queues.storage(), &consumer.queue, now, consumer.max_batch_size).await?;
    let next_visible = if due == 0 { queues::next_visible(queues.storage(), &consumer.queue).await? } else { None };
    Ok(next_step(due, oldest, next_visible, now, consumer))
}

/// Runs one batch and settles its messages.
async fn deliver(pool: &Pool, queues: &Queues, worker: &str, consumer: &Consumer, messages: Vec<QueueMessage>) {
    let batch = QueueBatch {
        queue: consumer.queue.clone(),
        messages: messages
            .iter()
            .map(|m| DeliveredMessage {
                id: m.id.clone(),
                timestamp_ms: m.timestamp_ms,
                content_type: m.content_type.clone(),
                body: m.body.clone(),
                attempts: m.attempts,
            })
            .collect(),
        request_id: format!("queue-{}", messages[0].id),
    };
    let outcome: Result<QueueOutcome, String> =
        match tokio::time::timeout(RUN_LIMIT, pool.run_queue(worker, batch)).await {
            Ok(Ok(outcome)) => Ok(outcome),
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
    let mut acked = 0;
    for (message, verdict) in messages.into_iter().zip(verdicts(&delivered, &outcome, consumer, now)) {
        match verdict {
            Verdict::Ack => {
                acked += 1;
                settlement.acks.push(message);
            }
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
    let (retried, dead) = (settlement.retries.len(), settlement.dead_letters.len());
    let dead_letter_queue = consumer.dead_letter_queue.as_deref();
    match queues::settle(queues.storage(), &consumer.queue, settlement, dead_letter_queue, now).await {
        Ok(()) => {
            tracing::debug!(acked, retried, dead, "queue batch settled");
            if dead > 0 {
                if let Some(dlq) = dead_letter_queue {
                    queues.wakeup(dlq).notify_one();
                }
            }
        }
        // The messages stay leased: delivered again once the lease runs
        // out or the node restarts.
        Err(err) => tracing::error!("cannot settle a queue batch: {err}"),
    }
}
