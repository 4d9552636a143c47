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
//! A leased message is marked so in its record: a node that restarts gives
//! the leases of its dead predecessor back at once ([`release_leases`])
//! instead of waiting for them to run out.
//!
//! This is written over [`ObjectStorage`] (each queue is one object of a
//! reserved namespace), so every backend of that trait stores queues too.
//! Leases of one queue must be taken by one caller at a time (the node's
//! consumer of that queue): two leasing at once could lease a message twice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::objects::{ObjectError, ObjectKey, ObjectListOptions, ObjectStorage, ObjectWrite};

/// The largest message body, as on Cloudflare (128 KB).
pub const MAX_MESSAGE_BYTES: usize = 128_000;

/// The queues of a node as its producers and its consumers share them: the
/// storage, and a wakeup per queue that a send rings, so a consumer waiting
/// for a batch to fill need not poll.
#[derive(Clone)]
pub struct Queues {
    storage: Arc<dyn ObjectStorage>,
    wakeups: Arc<Mutex<HashMap<String, Arc<Notify>>>>,
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
        let ids = send(self.storage(), queue, messages, now_ms).await?;
        self.wakeup(queue).notify_one();
        Ok(ids)
    }

    /// What a send to `queue` rings (a permit is kept if nobody waits).
    pub fn wakeup(&self, queue: &str) -> Arc<Notify> {
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

/// The bit of the stored attempts word that marks a leased message.
const LEASED: u32 = 1 << 31;

/// The record: content type (length-prefixed), timestamp, attempts (with
/// [`LEASED`] for a leased message), body.
fn encode(content_type: &str, timestamp_ms: u64, attempts: u32, leased: bool, body: &[u8]) -> Bytes {
    let mut record = Vec::with_capacity(1 + content_type.len() + 12 + body.len());
    record.push(content_type.len() as u8);
    record.extend_from_slice(content_type.as_bytes());
    record.extend_from_slice(&timestamp_ms.to_be_bytes());
    let word = if leased { attempts | LEASED } else { attempts & !LEASED };
    record.extend_from_slice(&word.to_be_bytes());
    record.extend_from_slice(body);
    record.into()
}

fn encode_message(message: &QueueMessage, leased: bool) -> Bytes {
    encode(&message.content_type, message.timestamp_ms, message.attempts, leased, &message.body)
}

fn id_of(key: &[u8]) -> Result<[u8; 16], QueueError> {
    key.get(8..24).and_then(|id| id.try_into().ok()).ok_or(QueueError::Corrupt)
}

fn hex(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether a stored record is leased.
fn is_leased(record: &[u8]) -> bool {
    let Some(&type_len) = record.first() else { return false };
    let at = 1 + usize::from(type_len) + 8;
    record.get(at..at + 4).is_some_and(|word| word[0] & 0x80 != 0)
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
        attempts: u32::from_be_bytes(attempts.try_into().expect("4 bytes")) & !LEASED,
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
        let record = encode(&message.content_type, now_ms, 0, false, &message.body);
        writes.push(ObjectWrite::Put(message_key(now_ms + message.delay_ms, &id), record));
        ids.push(hex(&id));
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
        let moved = message_key(now_ms + lease_ms, &id_of(&key)?);
        writes.push(ObjectWrite::Delete(key));
        writes.push(ObjectWrite::Put(moved.clone(), encode_message(&message, true)));
        message.lease = moved;
        leased.push(message);
    }
    if !writes.is_empty() {
        storage.object_transaction(&object, writes).await?;
    }
    Ok(leased)
}

/// What becomes of leased messages once their batch ran: each is
/// acknowledged (deleted), retried (visible again at a time, its attempts
/// still counted) or moved to another queue (a dead-letter queue).
#[derive(Debug, Default)]
pub struct Settlement {
    pub acks: Vec<QueueMessage>,
    /// Each with the time it becomes visible again, ms since the epoch.
    pub retries: Vec<(QueueMessage, u64)>,
    pub dead_letters: Vec<QueueMessage>,
}

/// Carries out `settlement` for messages leased from `queue`; resolves
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
            let record = encode(&message.content_type, message.timestamp_ms, 0, false, &message.body);
            moved.push(ObjectWrite::Put(message_key(now_ms, &id_of(&message.lease)?), record));
        }
        storage.object_transaction(&queue_object(dead_letter_queue), moved).await?;
    }
    let mut writes = Vec::with_capacity(acks.len() + 2 * retries.len() + dead_letters.len());
    for message in acks.into_iter().chain(dead_letters) {
        writes.push(ObjectWrite::Delete(message.lease));
    }
    for (message, visible_at_ms) in retries {
        let key = message_key(visible_at_ms, &id_of(&message.lease)?);
        let record = encode_message(&message, false);
        writes.push(ObjectWrite::Delete(message.lease));
        writes.push(ObjectWrite::Put(key, record));
    }
    if !writes.is_empty() {
        storage.object_transaction(&queue_object(queue), writes).await?;
    }
    Ok(())
}

/// Makes every message of `queue` leased before `now_ms + lease_ms` (the
/// leases of a node that died) visible at `now_ms`; their attempts stay
/// counted. Returns how many there were. Call it before the first lease.
pub async fn release_leases(
    storage: &dyn ObjectStorage,
    queue: &str,
    now_ms: u64,
    lease_ms: u64,
) -> Result<usize, QueueError> {
    let object = queue_object(queue);
    let mut released = 0;
    let mut start = None;
    loop {
        let page = storage
            .object_list(
                &object,
                ObjectListOptions {
                    start: start.take(),
                    end: Some((now_ms + lease_ms + 1).to_be_bytes().to_vec()),
                    limit: Some(256),
                    ..Default::default()
                },
            )
            .await?;
        let Some((last, _)) = page.last() else { break };
        let mut next = last.clone();
        next.push(0);
        let full = page.len() == 256;
        let mut writes = Vec::new();
        for (key, record) in page.into_iter().filter(|(_, record)| is_leased(record)) {
            let message = decode(&key, &record)?;
            writes.push(ObjectWrite::Delete(key.clone()));
            writes.push(ObjectWrite::Put(message_key(now_ms, &id_of(&key)?), encode_message(&message, false)));
            released += 1;
        }
        if !writes.is_empty() {
            storage.object_transaction(&object, writes).await?;
        }
        if !full {
            break;
        }
        start = Some(next);
    }
    Ok(released)
}

/// How many messages of `queue` are visible at `now_ms` (counting up to
/// `max`), and since when the first of them has been.
pub async fn due(
    storage: &dyn ObjectStorage,
    queue: &str,
    now_ms: u64,
    max: usize,
) -> Result<(usize, Option<u64>), QueueError> {
    let due = storage
        .object_list(
            &queue_object(queue),
            ObjectListOptions {
                end: Some((now_ms + 1).to_be_bytes().to_vec()),
                limit: Some(max),
                ..Default::default()
            },
        )
        .await?;
    let oldest =
        due.first().and_then(|(key, _)| key.get(..8)).map(|at| u64::from_be_bytes(at.try_into().expect("8 bytes")));
    Ok((due.len(), oldest))
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
        let record = encode("json", 1_000, 3, true, b"{\"a\":1}");
        assert!(is_leased(&record));
        assert!(!is_leased(&encode("json", 1_000, 3, false, b"")));
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
