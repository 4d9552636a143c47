//! Workers KV on the redb engine: the [`Store`]'s `get`, `put`, `delete`,
//! `list` and the expiry sweeper, and its [`KvStorage`] implementation.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::encoding::{composite_key, decode_header, decode_record, namespace_prefix, prefix_end};
use super::tables::{ENTRIES, EXPIRY};
use super::writes::Write;
use super::{redb_error, Store};
use crate::error::StorageError;
use crate::limits;
use crate::namespaces::{
    decode_cursor, live, new_record, GetError, KvStorage, ListError, ListOptions, ListPage, PageBuilder, PutError,
    PutOptions, Record,
};
use crate::BoxFuture;

impl Store {
    /// The live record of `key`, from the cache or the file.
    pub fn get(&self, namespace: &str, key: &[u8]) -> Result<Option<Arc<Record>>, GetError> {
        limits::check_key(key)?;
        let composite = composite_key(namespace, key);
        let now = self.now();
        self.settled()?;
        if let Some(cached) = self.inner.cache.get(&composite) {
            return Ok(cached.filter(|record| live(record, now)));
        }
        let seen = self.inner.visibility.applied();
        let txn = self.begin_read()?;
        let table = txn.open_table(ENTRIES).map_err(redb_error)?;
        let record = match table.get(composite.as_slice()).map_err(redb_error)? {
            Some(bytes) => Some(Arc::new(decode_record(bytes.value()).ok_or(GetError::Corrupt)?)),
            None => None,
        };
        self.inner.visibility.fill(seen, || self.inner.cache.insert(composite, record.clone()));
        Ok(record.filter(|record| live(record, now)))
    }

    /// Writes `value`; returns once the write is durable on disk.
    pub async fn put(&self, namespace: &str, key: &[u8], value: Bytes, options: PutOptions) -> Result<(), PutError> {
        let record = Arc::new(new_record(key, value, options, self.now())?);
        self.write(Write::Put { key: composite_key(namespace, key), record }).await
    }

    /// Removes `key`; returns once the removal is durable.
    pub async fn delete(&self, namespace: &str, key: &[u8]) -> Result<(), PutError> {
        limits::check_key(key)?;
        self.write(Write::Delete { key: composite_key(namespace, key) }).await
    }

    async fn write(&self, write: Write) -> Result<(), PutError> {
        self.write_all(vec![write]).await
    }

    /// Keys of a namespace in byte order, live ones only.
    pub fn list(&self, namespace: &str, options: ListOptions) -> Result<ListPage, ListError> {
        let limit = options.limit.unwrap_or(limits::MAX_LIST_LIMIT);
        limits::check_list_limit(limit)?;
        let ns = namespace_prefix(namespace);
        let first = composite_key(namespace, &options.prefix);
        let start = match &options.cursor {
            // A cursor from before the prefix (a forged or stale one) must
            // not reach keys outside it: start at whichever comes later.
            Some(cursor) => {
                let after = decode_cursor(cursor).ok_or(ListError::BadCursor)?;
                let mut key = composite_key(namespace, &after);
                key.push(0); // the smallest key after `after`
                key.max(first)
            }
            None => first,
        };
        let end = prefix_end(&composite_key(namespace, &options.prefix));
        let now = self.now();
        self.settled()?;
        let txn = self.begin_read()?;
        let table = txn.open_table(ENTRIES).map_err(redb_error)?;
        let range = match &end {
            Some(end) => table.range(start.as_slice()..end.as_slice()),
            None => table.range(start.as_slice()..),
        }
        .map_err(redb_error)?;
        let mut page = PageBuilder::new(limit);
        for entry in range {
            let (key, value) = entry.map_err(redb_error)?;
            let Some((expiration, metadata)) = decode_header(value.value()) else { continue };
            if expiration.is_some_and(|expiration| expiration <= now) {
                continue;
            }
            if !page.push(&key.value()[ns.len()..], expiration, metadata) {
                break;
            }
        }
        Ok(page.finish())
    }

    /// Deletes expired records (they are never returned before that either).
    /// Returns how many went.
    pub async fn sweep_expired(&self) -> Result<usize, PutError> {
        let now = self.now();
        self.settled().map_err(StorageError::from)?;
        let expired = self.expired_keys(now)?;
        let count = expired.len();
        if count == 0 {
            return Ok(0);
        }
        // One commit for the whole sweep; the commit re-checks each record,
        // so a key put again since the scan above keeps its new value.
        let writes = expired.into_iter().map(|key| Write::DeleteExpired { key, now }).collect();
        self.write_all(writes).await?;
        Ok(count)
    }

    /// Composite keys whose records expire at or before `now`.
    fn expired_keys(&self, now: u64) -> Result<Vec<Vec<u8>>, StorageError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(EXPIRY).map_err(redb_error)?;
        let end = (now + 1).to_be_bytes();
        let mut keys = Vec::new();
        for entry in table.range(..end.as_slice()).map_err(redb_error)? {
            let (key, _) = entry.map_err(redb_error)?;
            keys.push(key.value()[8..].to_vec());
        }
        Ok(keys)
    }

    /// Starts a background task (on the current tokio runtime) that sweeps
    /// expired records every `every`.
    pub fn spawn_sweeper(&self, every: Duration) {
        let store = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match store.sweep_expired().await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(swept = n, "expired KV entries deleted"),
                    Err(err) => tracing::warn!("sweeping expired KV entries failed: {err}"),
                }
            }
        });
    }
}

/// The trait's methods are the inherent ones; reads run when the future is
/// first polled.
impl KvStorage for Store {
    fn get<'a>(&'a self, namespace: &'a str, key: &'a [u8]) -> BoxFuture<'a, Result<Option<Arc<Record>>, GetError>> {
        Box::pin(async move { Store::get(self, namespace, key) })
    }

    fn put<'a>(
        &'a self,
        namespace: &'a str,
        key: &'a [u8],
        value: Bytes,
        options: PutOptions,
    ) -> BoxFuture<'a, Result<(), PutError>> {
        Box::pin(Store::put(self, namespace, key, value, options))
    }

    fn delete<'a>(&'a self, namespace: &'a str, key: &'a [u8]) -> BoxFuture<'a, Result<(), PutError>> {
        Box::pin(Store::delete(self, namespace, key))
    }

    fn list<'a>(&'a self, namespace: &'a str, options: ListOptions) -> BoxFuture<'a, Result<ListPage, ListError>> {
        Box::pin(async move { Store::list(self, namespace, options) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreConfig;

    /// Through `Arc<dyn KvStorage>`, the store behaves as through its own
    /// methods, and both see the same data.
    #[tokio::test]
    async fn the_trait_object_is_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("kv.redb"), StoreConfig::default()).unwrap();
        let kv: Arc<dyn KvStorage> = Arc::new(store.clone());
        let options = PutOptions { metadata: Some(b"{}".to_vec()), ..PutOptions::default() };
        kv.put("ns", b"b", Bytes::from_static(b"two"), options).await.unwrap();
        kv.put("ns", b"a", Bytes::from_static(b"one"), PutOptions::default()).await.unwrap();
        kv.put("other", b"c", Bytes::from_static(b"three"), PutOptions::default()).await.unwrap();
        assert_eq!(kv.get("ns", b"a").await.unwrap().unwrap().value, "one");
        assert_eq!(store.get("ns", b"b").unwrap().unwrap().metadata.as_deref(), Some(&b"{}"[..]));

        let page = kv.list("ns", ListOptions { limit: Some(1), ..ListOptions::default() }).await.unwrap();
        assert_eq!(page.keys().map(|key| key.name).collect::<Vec<_>>(), [b"a"]);
        assert!(!page.list_complete);
        let rest = kv.list("ns", ListOptions { cursor: page.cursor, ..ListOptions::default() }).await.unwrap();
        assert_eq!(
            rest.keys().map(|key| (key.name, key.metadata)).collect::<Vec<_>>(),
            [(&b"b"[..], Some(&b"{}"[..]))]
        );
        assert!(rest.list_complete);

        kv.delete("ns", b"a").await.unwrap();
        assert!(store.get("ns", b"a").unwrap().is_none());
        assert!(kv.get("ns", b"a").await.unwrap().is_none());

        let err = kv.put("ns", b"", Bytes::new(), PutOptions::default()).await.unwrap_err();
        assert!(matches!(err, PutError::Limit(limits::LimitError::EmptyKey)), "{err}");
        let err = kv.list("ns", ListOptions { cursor: Some("zz".into()), ..ListOptions::default() }).await.unwrap_err();
        assert!(matches!(err, ListError::BadCursor), "{err}");
    }
}
