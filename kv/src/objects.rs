//! Durable Object storage: each object's private, ordered key space and its
//! alarm, in the same file and through the same commit thread as KV.
//!
//! Values are opaque bytes (the runtime stores structured-clone
//! serializations). A call's writes commit together: `put` of many entries,
//! `delete` of many keys and a transaction's writes are all or nothing.

use bytes::Bytes;
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use crate::encoding::prefix_end;
use crate::store::{PutError, Stopped, Store, Write};

pub(crate) const OBJECTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("objects");
pub(crate) const ALARMS: TableDefinition<&[u8], u64> = TableDefinition::new("alarms");
/// The same alarms ordered by time: `[at_ms: u64 BE][object prefix]`, so the
/// scheduler finds due alarms without scanning every object's.
pub(crate) const ALARM_TIMES: TableDefinition<&[u8], ()> = TableDefinition::new("alarm_times");

pub(crate) fn alarm_time_key(at_ms: u64, object: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + object.len());
    key.extend_from_slice(&at_ms.to_be_bytes());
    key.extend_from_slice(object);
    key
}

/// Builds the time index of a file written before it existed.
pub(crate) fn index_alarms(txn: &redb::WriteTransaction) -> Result<(), redb::Error> {
    let alarms = txn.open_table(ALARMS)?;
    let mut times = txn.open_table(ALARM_TIMES)?;
    if !times.is_empty()? || alarms.is_empty()? {
        return Ok(());
    }
    for entry in alarms.iter()? {
        let (object, at) = entry?;
        times.insert(alarm_time_key(at.value(), object.value()).as_slice(), ())?;
    }
    Ok(())
}

/// Longest key of a Durable Object's storage, in bytes.
pub const MAX_OBJECT_KEY_BYTES: usize = 2048;
/// Largest value, in bytes (128 KiB).
pub const MAX_OBJECT_VALUE_BYTES: usize = 128 * 1024;

/// Identifies one object: its class (the binding's namespace) and its id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectKey {
    pub class: String,
    pub id: [u8; 32],
}

impl ObjectKey {
    /// `[class length: u16 BE][class][id: 32 bytes]`: an object's keys are
    /// contiguous and ordered.
    fn prefix(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + self.class.len() + 32);
        out.extend_from_slice(&(self.class.len() as u16).to_be_bytes());
        out.extend_from_slice(self.class.as_bytes());
        out.extend_from_slice(&self.id);
        out
    }

    fn key(&self, key: &[u8]) -> Vec<u8> {
        let mut out = self.prefix();
        out.extend_from_slice(key);
        out
    }

    fn decode(prefix: &[u8]) -> Option<ObjectKey> {
        let len = u16::from_be_bytes(prefix.get(..2)?.try_into().ok()?) as usize;
        let class = std::str::from_utf8(prefix.get(2..2 + len)?).ok()?.to_string();
        let id = prefix.get(2 + len..2 + len + 32)?.try_into().ok()?;
        Some(ObjectKey { class, id })
    }
}

/// Why a storage call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ObjectLimitError {
    #[error("keys must be at most {MAX_OBJECT_KEY_BYTES} bytes, got {0}")]
    KeyTooLong(usize),
    #[error("values must be at most {MAX_OBJECT_VALUE_BYTES} bytes, got {0}")]
    ValueTooLarge(usize),
}

fn check(key: &[u8], value: Option<&[u8]>) -> Result<(), ObjectLimitError> {
    if key.len() > MAX_OBJECT_KEY_BYTES {
        return Err(ObjectLimitError::KeyTooLong(key.len()));
    }
    if let Some(value) = value {
        if value.len() > MAX_OBJECT_VALUE_BYTES {
            return Err(ObjectLimitError::ValueTooLarge(value.len()));
        }
    }
    Ok(())
}

/// One write of a transaction.
#[derive(Debug, Clone)]
pub enum ObjectWrite {
    Put(Vec<u8>, Bytes),
    Delete(Vec<u8>),
}

/// `list()` options, as `state.storage.list` has them. `start` is
/// inclusive, `end` exclusive.
#[derive(Debug, Clone, Default)]
pub struct ObjectListOptions {
    pub start: Option<Vec<u8>>,
    pub end: Option<Vec<u8>>,
    pub prefix: Option<Vec<u8>>,
    pub reverse: bool,
    pub limit: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ObjectError {
    #[error(transparent)]
    Limit(#[from] ObjectLimitError),
    #[error(transparent)]
    Write(#[from] PutError),
    #[error(transparent)]
    Stopped(#[from] Stopped),
    #[error("storage failed: {0}")]
    Storage(#[from] redb::Error),
}

impl Store {
    /// Values of `keys`, in order (`None` where absent).
    pub fn object_get(&self, object: &ObjectKey, keys: &[Vec<u8>]) -> Result<Vec<Option<Bytes>>, ObjectError> {
        for key in keys {
            check(key, None)?;
        }
        self.settled()?;
        let txn = self.db().begin_read().map_err(redb::Error::from)?;
        let table = txn.open_table(OBJECTS).map_err(redb::Error::from)?;
        keys.iter()
            .map(|key| {
                let value = table.get(object.key(key).as_slice()).map_err(redb::Error::from)?;
                Ok(value.map(|v| Bytes::copy_from_slice(v.value())))
            })
            .collect()
    }

    /// Applies `writes` atomically and durably: all of them or none.
    pub async fn object_transaction(&self, object: &ObjectKey, writes: Vec<ObjectWrite>) -> Result<(), ObjectError> {
        let mut batch = Vec::with_capacity(writes.len());
        for write in writes {
            batch.push(match write {
                ObjectWrite::Put(key, value) => {
                    check(&key, Some(&value))?;
                    Write::ObjectPut { key: object.key(&key), value }
                }
                ObjectWrite::Delete(key) => {
                    check(&key, None)?;
                    Write::ObjectDelete { key: object.key(&key) }
                }
            });
        }
        self.write_all(batch).await?;
        Ok(())
    }

    /// Deletes `keys`; returns how many existed.
    pub async fn object_delete(&self, object: &ObjectKey, keys: &[Vec<u8>]) -> Result<usize, ObjectError> {
        let existing = self.object_get(object, keys)?.iter().filter(|v| v.is_some()).count();
        self.object_transaction(object, keys.iter().cloned().map(ObjectWrite::Delete).collect()).await?;
        Ok(existing)
    }

    /// Deletes every key of the object (its alarm stays, as in workerd).
    pub async fn object_delete_all(&self, object: &ObjectKey) -> Result<(), ObjectError> {
        let keys: Vec<Vec<u8>> =
            self.object_list(object, ObjectListOptions::default())?.into_iter().map(|(k, _)| k).collect();
        self.object_transaction(object, keys.into_iter().map(ObjectWrite::Delete).collect()).await
    }

    /// Entries in key order (or reverse), within the options' bounds.
    pub fn object_list(
        &self,
        object: &ObjectKey,
        options: ObjectListOptions,
    ) -> Result<Vec<(Vec<u8>, Bytes)>, ObjectError> {
        let base = object.prefix();
        let mut low = base.clone();
        let mut high = prefix_end(&base);
        if let Some(prefix) = &options.prefix {
            low = object.key(prefix);
            high = prefix_end(&low);
        }
        if let Some(start) = &options.start {
            low = low.max(object.key(start));
        }
        if let Some(end) = &options.end {
            let end = object.key(end);
            high = Some(high.map_or(end.clone(), |h| h.min(end)));
        }
        self.settled()?;
        let txn = self.db().begin_read().map_err(redb::Error::from)?;
        let table = txn.open_table(OBJECTS).map_err(redb::Error::from)?;
        let range = match &high {
            Some(high) if *high <= low => return Ok(Vec::new()),
            Some(high) => table.range(low.as_slice()..high.as_slice()),
            None => table.range(low.as_slice()..),
        }
        .map_err(redb::Error::from)?;
        let limit = options.limit.unwrap_or(usize::MAX);
        let mut out = Vec::new();
        let entries: Box<dyn Iterator<Item = _>> =
            if options.reverse { Box::new(range.rev()) } else { Box::new(range) };
        for entry in entries {
            if out.len() == limit {
                break;
            }
            let (key, value) = entry.map_err(redb::Error::from)?;
            out.push((key.value()[base.len()..].to_vec(), Bytes::copy_from_slice(value.value())));
        }
        Ok(out)
    }

    /// Sets (milliseconds since the epoch) or clears the object's alarm, durably.
    pub async fn set_alarm(&self, object: &ObjectKey, at_ms: Option<u64>) -> Result<(), ObjectError> {
        self.write_all(vec![Write::Alarm { object: object.prefix(), at_ms }]).await?;
        Ok(())
    }

    pub fn get_alarm(&self, object: &ObjectKey) -> Result<Option<u64>, ObjectError> {
        self.settled()?;
        let txn = self.db().begin_read().map_err(redb::Error::from)?;
        let table = txn.open_table(ALARMS).map_err(redb::Error::from)?;
        Ok(table.get(object.prefix().as_slice()).map_err(redb::Error::from)?.map(|v| v.value()))
    }

    /// Alarms due at `now_ms`, earliest first. They stay set until the
    /// caller clears (or moves) them after `alarm()` succeeded, so an alarm
    /// due before a crash still fires after it.
    pub fn due_alarms(&self, now_ms: u64) -> Result<Vec<(ObjectKey, u64)>, ObjectError> {
        self.settled()?;
        let txn = self.db().begin_read().map_err(redb::Error::from)?;
        let table = txn.open_table(ALARM_TIMES).map_err(redb::Error::from)?;
        let end = now_ms.saturating_add(1).to_be_bytes();
        let mut due = Vec::new();
        for entry in table.range(..end.as_slice()).map_err(redb::Error::from)? {
            let (key, _) = entry.map_err(redb::Error::from)?;
            let key = key.value();
            let at = u64::from_be_bytes(key[..8].try_into().expect("8 bytes of time"));
            if let Some(object) = ObjectKey::decode(&key[8..]) {
                due.push((object, at));
            }
        }
        Ok(due)
    }

    /// When the earliest alarm of the node is set for, if any.
    pub fn next_alarm(&self) -> Result<Option<u64>, ObjectError> {
        self.settled()?;
        let txn = self.db().begin_read().map_err(redb::Error::from)?;
        let table = txn.open_table(ALARM_TIMES).map_err(redb::Error::from)?;
        let first = table.first().map_err(redb::Error::from)?;
        Ok(first.map(|(key, _)| u64::from_be_bytes(key.value()[..8].try_into().expect("8 bytes of time"))))
    }

    /// Moves the object's alarm to `new_ms` (or clears it, with `None`) if
    /// it is still the one set for `expected_ms`: an `alarm()` handler that
    /// set a new alarm keeps it.
    pub async fn replace_alarm_if(
        &self,
        object: &ObjectKey,
        expected_ms: u64,
        new_ms: Option<u64>,
    ) -> Result<(), ObjectError> {
        self.write_all(vec![Write::AlarmReplaceIf { object: object.prefix(), expected_ms, new_ms }]).await?;
        Ok(())
    }
}

/// Retry delay after `attempt` failed runs of an alarm handler (1-based):
/// 2 s doubling up to 1 h, as plain data for the scheduler.
pub fn alarm_retry_delay_ms(attempt: u32) -> u64 {
    let base: u64 = 2_000;
    base.saturating_mul(1u64 << attempt.saturating_sub(1).min(20)).min(3_600_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_keys_round_trip_and_stay_apart() {
        let a = ObjectKey { class: "Counter".into(), id: [1; 32] };
        assert_eq!(ObjectKey::decode(&a.prefix()), Some(a.clone()));
        let b = ObjectKey { class: "Counter".into(), id: [2; 32] };
        assert!(a.key(&[0xff; 10]) < b.key(b""));
    }

    #[test]
    fn limits() {
        assert!(check(&[0; 2048], Some(&[0; 131072])).is_ok());
        assert_eq!(check(&[0; 2049], None), Err(ObjectLimitError::KeyTooLong(2049)));
        assert_eq!(check(b"k", Some(&[0; 131073])), Err(ObjectLimitError::ValueTooLarge(131073)));
    }

    #[test]
    fn alarm_backoff_doubles_and_caps() {
        assert_eq!(alarm_retry_delay_ms(1), 2_000);
        assert_eq!(alarm_retry_delay_ms(2), 4_000);
        assert_eq!(alarm_retry_delay_ms(5), 32_000);
        assert_eq!(alarm_retry_delay_ms(30), 3_600_000);
    }
}
