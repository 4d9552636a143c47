//! Queue storage: the messages of named queues, durable in the node's store
//! (the same log and group commit as KV), for at-least-once delivery.
//!
//! A message is stored under a key ordered by the time it becomes visible
//! (`visible_at`, then its id), so the messages due now are the first keys.
//! Its record counts its deliveries so far. A consumer reads due messages
//! ([`due`]) and keeps the ones it handed out in memory (in flight) until
//! it settles them ([`settle`]): acknowledging deletes a message, retrying
//! moves it to a later visible time with its delivery counted, a dead
//! letter moves to another queue. Handing out writes nothing, so a message
//! costs the store one write to send and one to settle; a node killed with
//! messages in flight finds them due again when it restarts (that delivery
//! uncounted), which is the at-least-once window. A send resolves once its
//! messages are durable, a settlement once it is.
//!
//! This is written over [`ObjectStorage`] (each queue is one object of a
//! reserved namespace), so every backend of that trait stores queues too.
//! One consumer per queue reads and settles it (the node's consumer task):
//! two at once would hand out the same message twice.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::objects::{ObjectError, ObjectKey, ObjectListOptions, ObjectStorage, ObjectWrite};

/// The largest message body, as on Cloudflare (128 KB).
pub const MAX_MESSAGE_BYTES: usize = 128_000;

/// The queues of a node as its producers and its consumers share them: the
/// storage, and a [`Wakeup`] per queue that sends ring, so a consumer
/// waiting for a batch to fill need not poll.
#[derive(Clone)]
pub struct Queues {
    storage: Arc<dyn ObjectStorage>,
    wakeups: Arc<Mutex<HashMap<String, Arc<Wakeup>>>>,
}

/// What a send to a queue tells its consumer: that it happened, and how
/// many messages it brought.
#[derive(Debug, Default)]
pub struct Wakeup {
    /// Rung by every send (a permit is kept if nobody waits).
    pub notify: Notify,
    sent: AtomicUsize,
}

impl Wakeup {
    /// Messages sent since the last call.
    pub fn take_sent(&self) -> usize {
        self.sent.swap(0, Ordering::AcqRel)
    }

    /// Rings as if `count` messages had been sent (a retry, a dead letter).
    pub fn ring(&self, count: usize) {
        self.sent.fetch_add(count, Ordering::AcqRel);
        self.notify.notify_one();
    }
}

impl Queues {
    pub fn new(storage: Arc<dyn ObjectStorage>) -> Self {
        Queues { storage, wakeups: Arc::default() }
    }

    pub fn storage(&self) -> &dyn ObjectStorage {
        self.storage.as_ref()
    }

    /// [`send`], then wakes the queue's consumer.
    pub async fn send(&self, queue: &str, messages: Vec<NewMessage>, now_ms: u64) -> Result<Vec<String>, QueueError> {
        let count = messages.len();
        let ids = send(self.storage(), queue, messages, now_ms).await?;
        self.wakeup(queue).ring(count);
        Ok(ids)
    }

    /// What a send to `queue` rings.
    pub fn wakeup(&self, queue: &str) -> Arc<Wakeup> {
        self.wakeups.lock().unwrap().entry(queue.to_string()).or_default().clone()
    }
}

impl std::fmt::Debug for Queues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queues").finish_non_exhaustive()
    }
}

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

/// A message handed to a consumer.
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
    /// Where the message is stored: what [`settle`] takes, and what the
    /// consumer keeps in flight.
    pub key: Vec<u8>,
}

impl QueueMessage {
    /// Since when it has been visible (due), ms since the epoch.
    pub fn visible_at_ms(&self) -> u64 {
        self.key.get(..8).map_or(0, |at| u64::from_be_bytes(at.try_into().expect("8 bytes")))
    }
}

/// Why a queue operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    #[error("a message body is at most {MAX_MESSAGE_BYTES} bytes, got {0}")]
    TooLarge(usize),
    #[error("a stored message is corrupt")]
    Corrupt,
    #[error("messages are to be dead-lettered but there is no dead-letter queue")]
    NoDeadLetterQueue,
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

/// The record: content type (length-prefixed), timestamp, deliveries so
/// far, body.
fn encode(content_type: &str, timestamp_ms: u64, deliveries: u32, body: &[u8]) -> Bytes {
    let mut record = Vec::with_capacity(1 + content_type.len() + 12 + body.len());
    record.push(content_type.len() as u8);
    record.extend_from_slice(content_type.as_bytes());
    record.extend_from_slice(&timestamp_ms.to_be_bytes());
    record.extend_from_slice(&deliveries.to_be_bytes());
    record.extend_from_slice(body);
    record.into()
}

fn id_of(key: &[u8]) -> Result<[u8; 16], QueueError> {
    key.get(8..24).and_then(|id| id.try_into().ok()).ok_or(QueueError::Corrupt)
}

fn hex(id: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(id.len() * 2);
    for byte in id {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
    text
}

fn decode(key: &[u8], record: &Bytes) -> Result<QueueMessage, QueueError> {
    let id = id_of(key)?;
    let type_len = usize::from(*record.first().ok_or(QueueError::Corrupt)?);
    let content_type = record.get(1..1 + type_len).ok_or(QueueError::Corrupt)?;
    let content_type = String::from_utf8(content_type.to_vec()).map_err(|_| QueueError::Corrupt)?;
    let at = 1 + type_len;
    let timestamp = record.get(at..at + 8).ok_or(QueueError::Corrupt)?;
    let attempts = record.get(at + 8..at + 12).ok_or(QueueError::Corrupt)?;
    Ok(QueueMessage {
        id: hex(&id),
        body: record.slice(at + 12..),
        content_type,
        timestamp_ms: u64::from_be_bytes(timestamp.try_into().expect("8 bytes")),
        // This delivery counts.
        attempts: u32::from_be_bytes(attempts.try_into().expect("4 bytes")).saturating_add(1),
        key: key.to_vec(),
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
        ids.push(hex(&id));
    }
    storage.object_transaction(&queue_object(queue), writes).await?;
    Ok(ids)
}

/// Up to `max` messages of `queue` visible at `now_ms`, oldest first,
/// leaving out those whose keys are `in_flight` (handed out, not settled).
/// Writes nothing.
pub async fn due(
    storage: &dyn ObjectStorage,
    queue: &str,
    now_ms: u64,
    max: usize,
    in_flight: &HashSet<Vec<u8>>,
) -> Result<Vec<QueueMessage>, QueueError> {
    // Messages in flight were due when handed out, so they are among the
    // first keys: reading that many more finds `max` others if there are.
    let listed = storage
        .object_list(
            &queue_object(queue),
            ObjectListOptions {
                end: Some((now_ms + 1).to_be_bytes().to_vec()),
                limit: Some(max + in_flight.len()),
                ..Default::default()
            },
        )
        .await?;
    listed
        .into_iter()
        .filter(|(key, _)| !in_flight.contains(key))
        .take(max)
        .map(|(key, record)| decode(&key, &record))
        .collect()
}

/// What becomes of handed-out messages once their batch ran: each is
/// acknowledged (deleted), retried (visible again at a time, its delivery
/// counted) or moved to another queue (a dead-letter queue).
#[derive(Debug, Default)]
pub struct Settlement {
    pub acks: Vec<QueueMessage>,
    /// Each with the time it becomes visible again, ms since the epoch.
    pub retries: Vec<(QueueMessage, u64)>,
    pub dead_letters: Vec<QueueMessage>,
}

/// Carries out `settlement` for messages handed out from `queue`; resolves
/// once it is durable. Dead letters are stored in `dead_letter_queue`
/// (keeping their id and timestamp, attempts from 0) before they leave
/// `queue`: a crash in between delivers them again, never loses them.
pub async fn settle(
    storage: &dyn ObjectStorage,
    queue: &str,
    settlement: Settlement,
    dead_letter_queue: Option<&str>,
    now_ms: u64,
) -> Result<(), QueueError> {
    let Settlement { acks, retries, dead_letters } = settlement;
    if !dead_letters.is_empty() {
        let dead_letter_queue = dead_letter_queue.ok_or(QueueError::NoDeadLetterQueue)?;
        let mut moved = Vec::with_capacity(dead_letters.len());
        for message in &dead_letters {
            let record = encode(&message.content_type, message.timestamp_ms, 0, &message.body);
            moved.push(ObjectWrite::Put(message_key(now_ms, &id_of(&message.key)?), record));
        }
        storage.object_transaction(&queue_object(dead_letter_queue), moved).await?;
    }
    let mut writes = Vec::with_capacity(acks.len() + 2 * retries.len() + dead_letters.len());
    for message in acks.into_iter().chain(dead_letters) {
        writes.push(ObjectWrite::Delete(message.key));
    }
    for (message, visible_at_ms) in retries {
        let key = message_key(visible_at_ms, &id_of(&message.key)?);
        let record = encode(&message.content_type, message.timestamp_ms, message.attempts, &message.body);
        writes.push(ObjectWrite::Delete(message.key));
        writes.push(ObjectWrite::Put(key, record));
    }
    if !writes.is_empty() {
        storage.object_transaction(&queue_object(queue), writes).await?;
    }
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
        assert_eq!((message.timestamp_ms, message.attempts), (1_000, 4), "this delivery counts");
        assert_eq!(&message.body[..], b"{\"a\":1}");
        assert_eq!(message.id, "07".repeat(16));
        assert_eq!(hex(&[0x00, 0x9f, 0xa0, 0xff]), "009fa0ff");
        assert!(matches!(decode(&key, &Bytes::from_static(&[9, b'x'])), Err(QueueError::Corrupt)));
        assert!(matches!(decode(&key[..10], &record), Err(QueueError::Corrupt)));
        // Keys order by visible time first.
        assert!(message_key(1, &[9; 16]) < message_key(2, &[0; 16]));
    }
}
