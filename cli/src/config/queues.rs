//! `[queues]` of `outpost.toml`: producers and consumers, as in wrangler.toml.

use anyhow::bail;
use serde::Deserialize;

use super::{is_namespace_id, MAX_NAMESPACE_ID_BYTES};

/// The `queues` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueuesConfig {
    #[serde(default)]
    pub producers: Vec<QueueProducerConfig>,
    #[serde(default)]
    pub consumers: Vec<QueueConsumerConfig>,
}

/// One `[[queues.consumers]]` entry; unset keys take Cloudflare's
/// production defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConsumerConfig {
    /// The queue's name.
    pub queue: String,
    /// `worker` (the default); `http_pull` is refused.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// 1 to 100 messages (default 10).
    pub max_batch_size: Option<usize>,
    /// 0 to 60 seconds (default 5).
    pub max_batch_timeout: Option<f64>,
    /// 0 to 100 (default 3).
    pub max_retries: Option<u32>,
    pub dead_letter_queue: Option<String>,
    /// 1 to 250 batches at once (default 250).
    pub max_concurrency: Option<usize>,
    /// 0 to 43200 seconds (default 0).
    pub retry_delay: Option<u32>,
}

/// One `[[queues.producers]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueProducerConfig {
    /// The queue's name.
    pub queue: String,
    /// The name on `env`.
    pub binding: String,
    /// Seconds before a message may be delivered (0 to 43200, default 0).
    #[serde(default)]
    pub delivery_delay: u32,
}

/// Checks `[[queues.consumers]]` against Cloudflare's bounds.
pub(super) fn queue_consumers(
    entries: &[QueueConsumerConfig],
) -> anyhow::Result<Vec<outpost_node::triggers::queues::Consumer>> {
    use outpost_node::triggers::queues::{
        Consumer, MAX_BATCH_SIZE, MAX_BATCH_TIMEOUT_SECONDS, MAX_CONCURRENCY, MAX_RETRIES, MAX_RETRY_DELAY_SECONDS,
    };
    let mut consumers: Vec<Consumer> = Vec::new();
    for entry in entries {
        let queue = &entry.queue;
        if !is_namespace_id(queue) {
            bail!("the queue name {queue:?} must be 1 to {MAX_NAMESPACE_ID_BYTES} bytes, without control characters");
        }
        if consumers.iter().any(|c| c.queue == *queue) {
            bail!("the queue {queue:?} is consumed twice");
        }
        match entry.kind.as_deref() {
            None | Some("worker") => {}
            Some("http_pull") => bail!("queue {queue:?}: pull consumers (type = \"http_pull\") are not supported"),
            Some(other) => bail!("queue {queue:?}: unknown consumer type {other:?} (expected \"worker\")"),
        }
        let mut consumer = Consumer::new(queue.clone());
        if let Some(size) = entry.max_batch_size {
            if !(1..=MAX_BATCH_SIZE).contains(&size) {
                bail!("queue {queue:?}: max_batch_size is 1 to {MAX_BATCH_SIZE}, got {size}");
            }
            consumer.max_batch_size = size;
        }
        if let Some(timeout) = entry.max_batch_timeout {
            if !(0.0..=f64::from(MAX_BATCH_TIMEOUT_SECONDS)).contains(&timeout) {
                bail!("queue {queue:?}: max_batch_timeout is 0 to {MAX_BATCH_TIMEOUT_SECONDS} seconds, got {timeout}");
            }
            consumer.max_batch_timeout_ms = (timeout * 1000.0) as u64;
        }
        if let Some(retries) = entry.max_retries {
            if retries > MAX_RETRIES {
                bail!("queue {queue:?}: max_retries is 0 to {MAX_RETRIES}, got {retries}");
            }
            consumer.max_retries = retries;
        }
        if let Some(dlq) = &entry.dead_letter_queue {
            if !is_namespace_id(dlq) || dlq == queue {
                bail!("queue {queue:?}: the dead_letter_queue {dlq:?} must be another queue's name");
            }
            consumer.dead_letter_queue = Some(dlq.clone());
        }
        if let Some(concurrency) = entry.max_concurrency {
            if !(1..=MAX_CONCURRENCY).contains(&concurrency) {
                bail!("queue {queue:?}: max_concurrency is 1 to {MAX_CONCURRENCY}, got {concurrency}");
            }
            consumer.max_concurrency = concurrency;
        }
        if let Some(delay) = entry.retry_delay {
            if delay > MAX_RETRY_DELAY_SECONDS {
                bail!("queue {queue:?}: retry_delay is 0 to {MAX_RETRY_DELAY_SECONDS} seconds, got {delay}");
            }
            consumer.retry_delay_seconds = delay;
        }
        consumers.push(consumer);
    }
    Ok(consumers)
}
