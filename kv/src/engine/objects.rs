//! Durable Object storage on the redb engine: the [`Store`]'s object and
//! alarm methods, and its [`ObjectStorage`] implementation. Same file and
//! same commit thread as KV; objects are not cached.

use bytes::Bytes;
use redb::ReadableTable;

use super::encoding::{decode_object_prefix, object_entry_key, object_prefix, prefix_end};
use super::tables::{ALARMS, ALARM_TIMES, OBJECTS};
use super::writes::Write;
use super::{redb_error, Store};
use crate::objects::{check, ObjectError, ObjectKey, ObjectListOptions, ObjectStorage, ObjectWrite};
use crate::BoxFuture;

impl Store {
    /// Values of `keys`, in order (`None` where absent).
    pub fn object_get(&self, object: &ObjectKey, keys: &[Vec<u8>]) -> Result<Vec<Option<Bytes>>, ObjectError> {
        for key in keys {
            check(key, None)?;
        }
        self.settled()?;
        let txn = self.begin_read()?;
        let table = txn.open_table(OBJECTS).map_err(redb_error)?;
        keys.iter()
            .map(|key| {
                let value = table.get(object_entry_key(object, key).as_slice()).map_err(redb_error)?;
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
                    Write::ObjectPut { key: object_entry_key(object, &key), value }
                }
                ObjectWrite::Delete(key) => {
                    check(&key, None)?;
                    Write::ObjectDelete { key: object_entry_key(object, &key) }
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
        let base = object_prefix(object);
        let mut low = base.clone();
        let mut high = prefix_end(&base);
        if let Some(prefix) = &options.prefix {
            low = object_entry_key(object, prefix);
            high = prefix_end(&low);
        }
        if let Some(start) = &options.start {
            low = low.max(object_entry_key(object, start));
        }
        if let Some(end) = &options.end {
            let end = object_entry_key(object, end);
            high = Some(high.map_or(end.clone(), |h| h.min(end)));
        }
        self.settled()?;
        let txn = self.begin_read()?;
        let table = txn.open_table(OBJECTS).map_err(redb_error)?;
        let range = match &high {
            Some(high) if *high <= low => return Ok(Vec::new()),
            Some(high) => table.range(low.as_slice()..high.as_slice()),
            None => table.range(low.as_slice()..),
        }
        .map_err(redb_error)?;
        let limit = options.limit.unwrap_or(usize::MAX);
        let mut out = Vec::new();
        let entries: Box<dyn Iterator<Item = _>> =
            if options.reverse { Box::new(range.rev()) } else { Box::new(range) };
        for entry in entries {
            if out.len() == limit {
                break;
            }
            let (key, value) = entry.map_err(redb_error)?;
            out.push((key.value()[base.len()..].to_vec(), Bytes::copy_from_slice(value.value())));
        }
        Ok(out)
    }

    /// Sets (milliseconds since the epoch) or clears the object's alarm, durably.
    pub async fn set_alarm(&self, object: &ObjectKey, at_ms: Option<u64>) -> Result<(), ObjectError> {
        self.write_all(vec![Write::Alarm { object: object_prefix(object), at_ms }]).await?;
        Ok(())
    }

    pub fn get_alarm(&self, object: &ObjectKey) -> Result<Option<u64>, ObjectError> {
        self.settled()?;
        let txn = self.begin_read()?;
        let table = txn.open_table(ALARMS).map_err(redb_error)?;
        Ok(table.get(object_prefix(object).as_slice()).map_err(redb_error)?.map(|v| v.value()))
    }

    /// Alarms due at `now_ms`, earliest first. They stay set until the
    /// caller clears (or moves) them after `alarm()` succeeded, so an alarm
    /// due before a crash still fires after it.
    pub fn due_alarms(&self, now_ms: u64) -> Result<Vec<(ObjectKey, u64)>, ObjectError> {
        self.settled()?;
        let txn = self.begin_read()?;
        let table = txn.open_table(ALARM_TIMES).map_err(redb_error)?;
        let end = now_ms.saturating_add(1).to_be_bytes();
        let mut due = Vec::new();
        for entry in table.range(..end.as_slice()).map_err(redb_error)? {
            let (key, _) = entry.map_err(redb_error)?;
            let key = key.value();
            let at = u64::from_be_bytes(key[..8].try_into().expect("8 bytes of time"));
            if let Some(object) = decode_object_prefix(&key[8..]) {
                due.push((object, at));
            }
        }
        Ok(due)
    }

    /// When the earliest alarm of the node is set for, if any.
    pub fn next_alarm(&self) -> Result<Option<u64>, ObjectError> {
        self.settled()?;
        let txn = self.begin_read()?;
        let table = txn.open_table(ALARM_TIMES).map_err(redb_error)?;
        let first = table.first().map_err(redb_error)?;
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
        self.write_all(vec![Write::AlarmReplaceIf { object: object_prefix(object), expected_ms, new_ms }]).await?;
        Ok(())
    }
}

/// The trait's methods are the inherent ones; reads run when the future is
/// first polled.
impl ObjectStorage for Store {
    fn object_get<'a>(
        &'a self,
        object: &'a ObjectKey,
        keys: &'a [Vec<u8>],
    ) -> BoxFuture<'a, Result<Vec<Option<Bytes>>, ObjectError>> {
        Box::pin(async move { Store::object_get(self, object, keys) })
    }

    fn object_transaction<'a>(
        &'a self,
        object: &'a ObjectKey,
        writes: Vec<ObjectWrite>,
    ) -> BoxFuture<'a, Result<(), ObjectError>> {
        Box::pin(Store::object_transaction(self, object, writes))
    }

    fn object_delete<'a>(
        &'a self,
        object: &'a ObjectKey,
        keys: &'a [Vec<u8>],
    ) -> BoxFuture<'a, Result<usize, ObjectError>> {
        Box::pin(Store::object_delete(self, object, keys))
    }

    fn object_delete_all<'a>(&'a self, object: &'a ObjectKey) -> BoxFuture<'a, Result<(), ObjectError>> {
        Box::pin(Store::object_delete_all(self, object))
    }

    fn object_list<'a>(
        &'a self,
        object: &'a ObjectKey,
        options: ObjectListOptions,
    ) -> BoxFuture<'a, Result<Vec<(Vec<u8>, Bytes)>, ObjectError>> {
        Box::pin(async move { Store::object_list(self, object, options) })
    }

    fn set_alarm<'a>(&'a self, object: &'a ObjectKey, at_ms: Option<u64>) -> BoxFuture<'a, Result<(), ObjectError>> {
        Box::pin(Store::set_alarm(self, object, at_ms))
    }

    fn get_alarm<'a>(&'a self, object: &'a ObjectKey) -> BoxFuture<'a, Result<Option<u64>, ObjectError>> {
        Box::pin(async move { Store::get_alarm(self, object) })
    }

    fn due_alarms(&self, now_ms: u64) -> BoxFuture<'_, Result<Vec<(ObjectKey, u64)>, ObjectError>> {
        Box::pin(async move { Store::due_alarms(self, now_ms) })
    }

    fn next_alarm(&self) -> BoxFuture<'_, Result<Option<u64>, ObjectError>> {
        Box::pin(async move { Store::next_alarm(self) })
    }

    fn replace_alarm_if<'a>(
        &'a self,
        object: &'a ObjectKey,
        expected_ms: u64,
        new_ms: Option<u64>,
    ) -> BoxFuture<'a, Result<(), ObjectError>> {
        Box::pin(Store::replace_alarm_if(self, object, expected_ms, new_ms))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::objects::ObjectLimitError;
    use crate::StoreConfig;

    fn put(key: &str, value: &str) -> ObjectWrite {
        ObjectWrite::Put(key.as_bytes().to_vec(), Bytes::copy_from_slice(value.as_bytes()))
    }

    /// Through `Arc<dyn ObjectStorage>`, the store behaves as through its
    /// own methods, and both see the same data.
    #[tokio::test]
    async fn the_trait_object_is_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("kv.redb"), StoreConfig::default()).unwrap();
        let objects: Arc<dyn ObjectStorage> = Arc::new(store.clone());
        let counter = ObjectKey { class: "Counter".into(), id: [1; 32] };
        let other = ObjectKey { class: "Counter".into(), id: [2; 32] };
        objects.object_transaction(&counter, vec![put("a", "1"), put("b", "2"), put("c", "3")]).await.unwrap();
        objects.object_transaction(&other, vec![put("a", "other")]).await.unwrap();
        let keys = [b"a".to_vec(), b"z".to_vec()];
        assert_eq!(objects.object_get(&counter, &keys).await.unwrap(), [Some(Bytes::from("1")), None]);
        assert_eq!(store.object_get(&counter, &keys).unwrap(), [Some(Bytes::from("1")), None]);
        let reversed = ObjectListOptions { reverse: true, limit: Some(2), ..ObjectListOptions::default() };
        let listed: Vec<Vec<u8>> =
            objects.object_list(&counter, reversed).await.unwrap().into_iter().map(|(key, _)| key).collect();
        assert_eq!(listed, [b"c".to_vec(), b"b".to_vec()]);
        assert_eq!(objects.object_delete(&counter, &[b"a".to_vec(), b"z".to_vec()]).await.unwrap(), 1);
        objects.object_delete_all(&counter).await.unwrap();
        assert!(store.object_list(&counter, ObjectListOptions::default()).unwrap().is_empty());
        assert_eq!(objects.object_get(&other, &[b"a".to_vec()]).await.unwrap(), [Some(Bytes::from("other"))]);
        let too_long = objects.object_get(&counter, &[vec![0; 2049]]).await.unwrap_err();
        assert!(matches!(too_long, ObjectError::Limit(ObjectLimitError::KeyTooLong(2049))), "{too_long}");

        objects.set_alarm(&counter, Some(5_000)).await.unwrap();
        objects.set_alarm(&other, Some(2_000)).await.unwrap();
        assert_eq!(objects.get_alarm(&counter).await.unwrap(), Some(5_000));
        assert_eq!(objects.next_alarm().await.unwrap(), Some(2_000));
        assert_eq!(objects.due_alarms(5_000).await.unwrap(), [(other.clone(), 2_000), (counter.clone(), 5_000)]);
        objects.replace_alarm_if(&other, 1_999, None).await.unwrap();
        assert_eq!(store.get_alarm(&other).unwrap(), Some(2_000), "not the alarm that ran: kept");
        objects.replace_alarm_if(&other, 2_000, None).await.unwrap();
        assert_eq!(store.due_alarms(5_000).unwrap(), [(counter, 5_000)]);
    }
}
