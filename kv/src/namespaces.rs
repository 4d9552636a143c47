//! The Workers KV API: what a `KVNamespace` binding can ask of storage
//! (`get`, `put`, `delete`, `list`), its options, pages and errors, and
//! [`KvStorage`], the trait a backend implements to serve it.
//!
//! The semantics every backend shares live here too: the limits a put is
//! checked against and how its expiration is resolved (`new_record`), when
//! a record counts as expired (`live`), list cursors and how a page is
//! built (`PageBuilder`). The redb-backed [`Store`](crate::Store)
//! implements the trait in `engine/kv.rs`.

use std::sync::Arc;

use bytes::Bytes;

use crate::error::{Stopped, StorageError};
use crate::limits::{self, LimitError};
use crate::BoxFuture;

/// A stored record: the value and what Workers KV keeps beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub value: Bytes,
    /// Seconds since the epoch; `None` never expires.
    pub expiration: Option<u64>,
    /// Metadata as the caller serialized it (JSON for workers).
    pub metadata: Option<Vec<u8>>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GetError {
    #[error(transparent)]
    Limit(#[from] LimitError),
    #[error(transparent)]
    Stopped(#[from] Stopped),
    #[error("storage failed: {0}")]
    Storage(#[from] StorageError),
    #[error("a stored record is corrupt")]
    Corrupt,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PutError {
    #[error(transparent)]
    Limit(#[from] LimitError),
    #[error("storage failed: {0}")]
    Storage(#[from] StorageError),
    #[error("the store is closed")]
    Closed,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListError {
    #[error(transparent)]
    Limit(#[from] LimitError),
    #[error("invalid cursor")]
    BadCursor,
    #[error(transparent)]
    Stopped(#[from] Stopped),
    #[error("storage failed: {0}")]
    Storage(#[from] StorageError),
}

/// Options of a put, as Workers KV has them.
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    /// Absolute expiration, seconds since the epoch.
    pub expiration: Option<u64>,
    /// Seconds from now.
    pub expiration_ttl: Option<u64>,
    /// Serialized metadata (JSON from workers).
    pub metadata: Option<Vec<u8>>,
}

/// Options of a list.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    pub prefix: Vec<u8>,
    /// Default 1000.
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

/// One key of a list, borrowed from its [`ListPage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListedKey<'a> {
    pub name: &'a [u8],
    pub expiration: Option<u64>,
    pub metadata: Option<&'a [u8]>,
}

/// Where one key's name and metadata are in a page's buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KeySpan {
    name: std::ops::Range<u32>,
    metadata: Option<std::ops::Range<u32>>,
    expiration: Option<u64>,
}

/// A page of keys. Names and metadata of the whole page share one buffer:
/// one allocation per page rather than one or two per key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPage {
    buffer: Vec<u8>,
    spans: Vec<KeySpan>,
    pub list_complete: bool,
    /// Present when `list_complete` is false.
    pub cursor: Option<String>,
}

impl ListPage {
    /// The keys, in order.
    pub fn keys(&self) -> impl ExactSizeIterator<Item = ListedKey<'_>> {
        let slice = |range: &std::ops::Range<u32>| &self.buffer[range.start as usize..range.end as usize];
        self.spans.iter().map(move |span| ListedKey {
            name: slice(&span.name),
            expiration: span.expiration,
            metadata: span.metadata.as_ref().map(slice),
        })
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }
}

/// Builds a [`ListPage`] from live keys in order, for any backend: it takes
/// keys until the page is full, then says the page is incomplete and makes
/// its cursor.
pub(crate) struct PageBuilder {
    limit: usize,
    buffer: Vec<u8>,
    spans: Vec<KeySpan>,
    more: bool,
}

impl PageBuilder {
    /// A page of at most `limit` keys (checked by the caller).
    pub(crate) fn new(limit: usize) -> PageBuilder {
        let capacity = limit.min(limits::MAX_LIST_LIMIT);
        PageBuilder {
            limit,
            buffer: Vec::with_capacity(capacity * 24),
            spans: Vec::with_capacity(capacity),
            more: false,
        }
    }

    /// Adds the next key; `false` once the page is full (the key is not
    /// added, and the page is marked incomplete): stop scanning then.
    pub(crate) fn push(&mut self, name: &[u8], expiration: Option<u64>, metadata: Option<&[u8]>) -> bool {
        if self.spans.len() == self.limit {
            self.more = true;
            return false;
        }
        let name = self.append(name);
        let metadata = metadata.map(|metadata| self.append(metadata));
        self.spans.push(KeySpan { name, metadata, expiration });
        true
    }

    fn append(&mut self, bytes: &[u8]) -> std::ops::Range<u32> {
        let start = self.buffer.len() as u32;
        self.buffer.extend_from_slice(bytes);
        start..self.buffer.len() as u32
    }

    pub(crate) fn finish(self) -> ListPage {
        let PageBuilder { buffer, spans, more, .. } = self;
        let cursor = more.then(|| {
            let last = &spans.last().expect("a full page").name;
            encode_cursor(&buffer[last.start as usize..last.end as usize])
        });
        ListPage { buffer, spans, list_complete: !more, cursor }
    }
}

/// Whether `record` has not expired at `now` (seconds since the epoch): a
/// record expires at its expiration second.
pub(crate) fn live(record: &Record, now: u64) -> bool {
    record.expiration.is_none_or(|expiration| expiration > now)
}

/// The record a put stores, once its key, value, metadata and expiration
/// pass Workers KV's limits; `now` resolves a TTL.
pub(crate) fn new_record(key: &[u8], value: Bytes, options: PutOptions, now: u64) -> Result<Record, LimitError> {
    limits::check_key(key)?;
    limits::check_value(value.len())?;
    if let Some(metadata) = &options.metadata {
        limits::check_metadata(metadata)?;
    }
    let expiration = limits::resolve_expiration(now, options.expiration, options.expiration_ttl)?;
    Ok(Record { value, expiration, metadata: options.metadata })
}

/// A list cursor: the last key of the page, in hex.
pub(crate) fn encode_cursor(key: &[u8]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn decode_cursor(cursor: &str) -> Option<Vec<u8>> {
    // Hex digits only: from_str_radix alone would take a sign.
    if !cursor.len().is_multiple_of(2) || !cursor.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..cursor.len()).step_by(2).map(|i| u8::from_str_radix(cursor.get(i..i + 2)?, 16).ok()).collect()
}

/// Workers KV storage for every namespace of a node: the seam between the
/// bindings and a backend. The redb-backed [`Store`](crate::Store)
/// implements it; a PostgreSQL backend is meant to implement it too.
///
/// Every method has the semantics of the `Store` method of the same name
/// (limits checked before anything is written, expired records never
/// returned, keys in byte order, a write acknowledged only once durable).
/// All return boxed futures, so the trait can be held as
/// `Arc<dyn KvStorage>` and a backend that reads over a network need not
/// block; the redb store answers reads without waiting for I/O of another
/// thread (a read may wait briefly for the apply thread).
pub trait KvStorage: Send + Sync + 'static {
    /// The live record of `key` in `namespace`.
    fn get<'a>(&'a self, namespace: &'a str, key: &'a [u8]) -> BoxFuture<'a, Result<Option<Arc<Record>>, GetError>>;

    /// Writes `value`; resolves once the write is durable.
    fn put<'a>(
        &'a self,
        namespace: &'a str,
        key: &'a [u8],
        value: Bytes,
        options: PutOptions,
    ) -> BoxFuture<'a, Result<(), PutError>>;

    /// Removes `key`; resolves once the removal is durable.
    fn delete<'a>(&'a self, namespace: &'a str, key: &'a [u8]) -> BoxFuture<'a, Result<(), PutError>>;

    /// Live keys of `namespace` in byte order, a page at a time.
    fn list<'a>(&'a self, namespace: &'a str, options: ListOptions) -> BoxFuture<'a, Result<ListPage, ListError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip() {
        assert_eq!(decode_cursor(&encode_cursor(&[0, 1, 0xfe])), Some(vec![0, 1, 0xfe]));
        assert_eq!(decode_cursor("zz"), None);
        assert_eq!(decode_cursor("abc"), None);
    }

    #[test]
    fn pages_stop_at_their_limit_with_a_cursor_to_the_last_key() {
        let mut page = PageBuilder::new(2);
        assert!(page.push(b"a", None, Some(b"{}")));
        assert!(page.push(b"b", Some(9), None));
        assert!(!page.push(b"c", None, None));
        let page = page.finish();
        assert!(!page.list_complete);
        assert_eq!(page.cursor.as_deref().and_then(decode_cursor), Some(b"b".to_vec()));
        let keys: Vec<_> = page.keys().collect();
        assert_eq!(
            keys,
            [
                ListedKey { name: b"a", expiration: None, metadata: Some(b"{}") },
                ListedKey { name: b"b", expiration: Some(9), metadata: None },
            ]
        );

        let mut page = PageBuilder::new(2);
        assert!(page.push(b"a", None, None));
        let page = page.finish();
        assert!(page.list_complete && page.cursor.is_none() && page.len() == 1);
    }

    #[test]
    fn records_expire_at_their_second_and_puts_are_checked() {
        let record = Record { value: Bytes::new(), expiration: Some(100), metadata: None };
        assert!(live(&record, 99));
        assert!(!live(&record, 100));
        let ttl = PutOptions { expiration_ttl: Some(60), ..PutOptions::default() };
        assert_eq!(new_record(b"k", Bytes::new(), ttl, 1_000).unwrap().expiration, Some(1_060));
        assert_eq!(new_record(b"", Bytes::new(), PutOptions::default(), 0), Err(LimitError::EmptyKey));
    }
}
