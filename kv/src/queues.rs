//! Queue storage: the messages of named queues, durable in the node's store
//! (the same log and group commit as KV), for at-least-once delivery.
//!
//! A message is stored under a key ordered by the time it becomes visible
//! (`visible_at`, then its id), so the messages due now are the first keys.
//! A consumer *leases* due messages: in one atomic transaction each moves to
//! `now + lease` with one more attempt, so a consumer that dies before it
//! acknowledges finds them again once the lease runs out. Acknowledging
//! deletes a message; retrying moves it to a later visible time. A send
//! resolves once its messages are durable, an ack once the delete is.
//!
//! This is written over [`ObjectStorage`] (each queue is one object of a
//! reserved namespace), so every backend of that trait stores queues too.
//! Leases of one queue must be taken by one caller at a time (the node's
//! consumer of that queue): two leasing at once could lease a message twice.

use bytes::Bytes;

use crate::objects::{ObjectError, ObjectKey, ObjectListOptions, ObjectStorage, ObjectWrite};

/// The largest message body, as on Cloudflare (128 KB).
pub const MAX_MESSAGE_BYTES: usize = 128_000;

/// The storage namespace of queue `name` (no worker is named so: the
/// first byte is a control character).
fn queue_object(name: &str) -> ObjectKey {
    ObjectKey { class: format!("\u{1}queue:{name}"), id: [0; 32] }
}

/// A message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    pub body: Bytes,
    /// `json`, `text`, `bytes` or `v8`: how the consumer decodes the body.
    pub content_type: String,
    /// Milliseconds before the message may be delivered.
    pub delay_ms: u64,
}

/// A leased message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueMessage {
    /// 32 hex digits, unique on the node.
    pub id: String,
    pub body: Bytes,
    pub content_type: String,
    /// When it was sent, ms since the epoch.
    pub timestamp_ms: u64,
    /// Deliveries so far, this one included (1 on the first).
    pub attempts: u32,
    /// Where the message is stored now: what `ack` and `retry` take.
    pub lease: Vec<u8>,
}

/// Why a queue operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    #[error("a message body is at most {MAX_MESSAGE_BYTES} bytes, got {0}")]
    TooLarge(usize),
    #[error("a stored message is corrupt")]
    Corrupt,
    #[error(transparent)]
    Storage(#[from] ObjectError),
}

/// `visible_at` (8 bytes, big-endian) then the id (16 bytes).
fn message_key(visible_at_ms: u64, id: &[u8; 16]) -> Vec<u8> {
    let mut key = Vec::with_capacity(24);
    key.extend_from_slice(&visible_at_ms.to_be_bytes());
    key.extend_from_slice(id);
    key
}

/// The record: content type (length-prefixed), timestamp, attempts, body.
fn encode(content_type: &str, timestamp_ms: u64, attempts: u32, body: &[u8]) -> Bytes {
    let mut record = Vec::with_capacity(1 + content_type.len() + 12 + body.len());
    record.push(content_type.len() as u8);
    record.extend_from_slice(content_type.as_bytes());
    record.extend_from_slice(&timestamp_ms.to_be_bytes());
    record.extend_from_slice(&attempts.to_be_bytes());
    record.extend_from_slice(body);
    record.into()
}

fn decode(key: &[u8], record: &Bytes) -> Result<QueueMessage, QueueError> {
    let id: [u8; 16] = key.get(8..24).and_then(|id| id.try_into().ok()).ok_or(QueueError::Corrupt)?;
    let type_len = usize::from(*record.first().ok_or(QueueError::Corrupt)?);
    let content_type = record.get(1..1 + type_len).ok_or(QueueError::Corrupt)?;
    let content_type = String::from_utf8(content_type.to_vec()).map_err(|_| QueueError::Corrupt)?;
    let at = 1 + type_len;
    let timestamp = record.get(at..at + 8).ok_or(QueueError::Corrupt)?;
    let attempts = record.get(at + 8..at + 12).ok_or(QueueError::Corrupt)?;
    Ok(QueueMessage {
        id: id.iter().map(|b| format!("{b:02x}")).collect(),
        body: record.slice(at + 12..),
        content_type,
        timestamp_ms: u64::from_be_bytes(timestamp.try_into().expect("8 bytes")),
        attempts: u32::from_be_bytes(attempts.try_into().expect("4 bytes")),
        lease: key.to_vec(),
    })
}

/// Sends so far in this process: orders messages sent in the same
/// millisecond (a batch) as they were sent.
static SEQUENCE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A new message id: the send time, a sequence number and 4 random bytes
/// (ids stay unique across restarts within one millisecond).
fn new_id(now_ms: u64) -> Result<[u8; 16], QueueError> {
    let mut id = [0; 16];
    id[..8].copy_from_slice(&now_ms.to_be_bytes());
    let sequence = SEQUENCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    id[8..12].copy_from_slice(&sequence.to_be_bytes());
    getrandom::fill(&mut id[12..]).map_err(|_| QueueError::Corrupt)?;
    Ok(id)
}

/// Stores `messages` in `queue` together; resolves once they are durable,
/// with their ids.
pub async fn send(
    storage: &dyn ObjectStorage,
    queue: &str,
    messages: Vec<NewMessage>,
    now_ms: u64,
) -> Result<Vec<String>, QueueError> {
    let mut writes = Vec::with_capacity(messages.len());
    let mut ids = Vec::with_capacity(messages.len());
    for message in messages {
        if message.body.len() > MAX_MESSAGE_BYTES {
            return Err(QueueError::TooLarge(message.body.len()));
        }
        let id = new_id(now_ms)?;
        let record = encode(&message.content_type, now_ms, 0, &message.body);
        writes.push(ObjectWrite::Put(message_key(now_ms + message.delay_ms, &id), record));
        ids.push(id.iter().map(|b| format!("{b:02x}")).collect());
    }
    storage.object_transaction(&queue_object(queue), writes).await?;
    Ok(ids)
}

/// Leases up to `max` messages visible at `now_ms`, oldest first: each is
/// invisible until `now_ms + lease_ms` and counts one more attempt.
pub async fn lease(
    storage: &dyn ObjectStorage,
    queue: &str,
    now_ms: u64,
    max: usize,
    lease_ms: u64,
) -> Result<Vec<QueueMessage>, QueueError> {
    let object = queue_object(queue);
    let due = storage
        .object_list(
            &object,
            ObjectListOptions {
                end: Some((now_ms + 1).to_be_bytes().to_vec()),
                limit: Some(max),
                ..Default::default()
            },
        )
        .await?;
    let mut leased = Vec::with_capacity(due.len());
    let mut writes = Vec::with_capacity(due.len() * 2);
    for (key, record) in due {
        let mut message = decode(&key, &record)?;
        message.attempts += 1;
        let id: [u8; 16] = key[8..24].try_into().expect("decode checked the key");
        let moved = message_key(now_ms + lease_ms, &id);
        writes.push(ObjectWrite::Delete(key));
        writes.push(ObjectWrite::Put(
            moved.clone(),
            encode(&message.content_type, message.timestamp_ms, message.attempts, &message.body),
        ));
        message.lease = moved;
        leased.push(message);
    }
    if !writes.is_empty() {
        storage.object_transaction(&object, writes).await?;
    }
    Ok(leased)
}

/// Deletes leased messages; resolves once that is durable.
pub async fn ack(storage: &dyn ObjectStorage, queue: &str, leases: Vec<Vec<u8>>) -> Result<(), QueueError> {
    let writes = leases.into_iter().map(ObjectWrite::Delete).collect();
    storage.object_transaction(&queue_object(queue), writes).await?;
    Ok(())
}

/// Makes a leased message visible again at `visible_at_ms` (its attempts
/// stay counted).
pub async fn retry(
    storage: &dyn ObjectStorage,
    queue: &str,
    message: &QueueMessage,
    visible_at_ms: u64,
) -> Result<(), QueueError> {
    let id: [u8; 16] = message.lease.get(8..24).and_then(|id| id.try_into().ok()).ok_or(QueueError::Corrupt)?;
    let record = encode(&message.content_type, message.timestamp_ms, message.attempts, &message.body);
    let writes =
        vec![ObjectWrite::Delete(message.lease.clone()), ObjectWrite::Put(message_key(visible_at_ms, &id), record)];
    storage.object_transaction(&queue_object(queue), writes).await?;
    Ok(())
}

/// When the next message of `queue` becomes visible, if it has any.
pub async fn next_visible(storage: &dyn ObjectStorage, queue: &str) -> Result<Option<u64>, QueueError> {
    let first =
        storage.object_list(&queue_object(queue), ObjectListOptions { limit: Some(1), ..Default::default() }).await?;
    Ok(first.first().and_then(|(key, _)| key.get(..8)).map(|at| u64::from_be_bytes(at.try_into().expect("8 bytes"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_bad_ones_are_refused() {
        let id = [7u8; 16];
        let key = message_key(42, &id);
        let record = encode("json", 1_000, 3, b"{\"a\":1}");
        let message = decode(&key, &record).unwrap();
        assert_eq!(message.content_type, "json");
        assert_eq!((message.timestamp_ms, message.attempts), (1_000, 3));
        assert_eq!(&message.body[..], b"{\"a\":1}");
        assert_eq!(message.id, "07".repeat(16));
        assert!(matches!(decode(&key, &Bytes::from_static(&[9, b'x'])), Err(QueueError::Corrupt)));
        assert!(matches!(decode(&key[..10], &record), Err(QueueError::Corrupt)));
        // Keys order by visible time first.
        assert!(message_key(1, &[9; 16]) < message_key(2, &[0; 16]));
    }
}
