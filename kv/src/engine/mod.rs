//! The redb engine: one redb file, a commit thread that batches writers
//! (group commit) into the log and acknowledges them (`commit`), an apply
//! thread that brings logged commits into redb (`apply`, `tables`), and a
//! moka cache in front of reads. [`Store`] is its handle; it implements the
//! APIs' traits ([`KvStorage`](crate::KvStorage) in `kv.rs`,
//! [`ObjectStorage`](crate::objects::ObjectStorage) in `objects.rs`).
//!
//! Nothing redb-specific leaves this module: redb's errors become
//! [`StorageError`]s here.

mod apply;
mod commit;
mod encoding;
#[cfg(test)]
mod fuzz_tests;
mod kv;
mod objects;
mod tables;
mod visibility;
mod wal;
mod writes;

use std::path::Path;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{Database, Durability, ReadableDatabase};
use tokio::sync::oneshot;

use self::commit::{Committer, Pending};
use self::visibility::Visibility;
use self::wal::Wal;
use self::writes::Write;
use crate::error::{OpenError, Stopped, StorageError, StorageErrorKind};
use crate::namespaces::{PutError, Record};

/// Seconds since the epoch; replaceable so expiration can be tested.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Store settings.
#[derive(Clone)]
pub struct StoreConfig {
    /// Bytes of decoded records the read cache may hold.
    pub cache_bytes: u64,
    /// What "now" is for expirations.
    pub clock: Clock,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self { cache_bytes: 64 << 20, clock: Arc::new(now_secs) }
    }
}

pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The read cache: decoded KV records by composite key, and known-absent
/// keys (`None`).
pub(crate) type Cache = moka::sync::Cache<Vec<u8>, Option<Arc<Record>>>;

/// KV and Durable Object storage for every namespace and object of a node,
/// in one redb file. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

struct Inner {
    clock: Clock,
    db: Arc<Database>,
    visibility: Arc<Visibility>,
    writes: Option<std_mpsc::Sender<Pending>>,
    committer: Option<std::thread::JoinHandle<()>>,
    cache: Cache,
    /// Log records applied again when the store was opened.
    replayed: usize,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the queue ends the commit thread once it has committed
        // what was queued; waiting for it releases the file for reopening.
        drop(self.writes.take());
        if let Some(committer) = self.committer.take() {
            let _ = committer.join();
        }
    }
}

impl Store {
    /// Opens (or creates) the store file. A file left by a crash is
    /// repaired by redb on open.
    pub fn open(path: &Path, config: StoreConfig) -> Result<Store, OpenError> {
        let db = Database::create(path).map_err(|source| OpenError::Database {
            path: path.display().to_string(),
            source: database_error(source),
        })?;
        let applied = tables::prepare(&db).map_err(redb_error)?;
        // Records the last checkpoint does not hold are applied again, in
        // one durable commit; then the log starts over.
        let wal_path = path.with_extension("wal");
        let log_error = |source| OpenError::Log { path: wal_path.display().to_string(), source };
        let (mut wal, recovered) = Wal::open(&wal_path).map_err(log_error)?;
        let replay: Vec<(u64, Vec<Write>)> =
            recovered.records.into_iter().filter(|(sequence, _)| *sequence > applied).collect();
        let replayed = replay.len();
        let mut last = applied;
        if let Some((sequence, _)) = replay.last() {
            last = *sequence;
            let writes: Vec<&Write> = replay.iter().flat_map(|(_, writes)| writes).collect();
            tracing::info!(records = replay.len(), writes = writes.len(), "replaying the store's log");
            tables::apply(&db, writes.into_iter(), Durability::Immediate, last).map_err(redb_error)?;
        }
        wal.reset().map_err(log_error)?;
        let db = Arc::new(db);
        let cache: Cache = moka::sync::Cache::builder()
            .max_capacity(config.cache_bytes)
            .weigher(|key: &Vec<u8>, record: &Option<Arc<Record>>| {
                let size =
                    key.len() + record.as_ref().map_or(0, |r| r.value.len() + r.metadata.as_ref().map_or(0, Vec::len));
                u32::try_from(size + 64).unwrap_or(u32::MAX)
            })
            .build();
        let visibility = Arc::new(Visibility::default());
        visibility.acknowledge(last);
        visibility.publish(last, || {});
        let (writes, queue) = std_mpsc::channel();
        let committer = Committer::start(db.clone(), cache.clone(), visibility.clone(), wal, last);
        let committer = std::thread::Builder::new()
            .name("kv-commit".into())
            .spawn(move || committer.run(&queue))
            .expect("the commit thread starts");
        Ok(Store {
            inner: Arc::new(Inner {
                clock: config.clock,
                db,
                visibility,
                writes: Some(writes),
                committer: Some(committer),
                cache,
                replayed,
            }),
        })
    }

    /// How many log records opening the store applied again: commits that
    /// were acknowledged but not yet checkpointed into redb at a crash.
    pub fn replayed_on_open(&self) -> usize {
        self.inner.replayed
    }

    /// Commits `writes` together (one transaction) and durably.
    pub(crate) async fn write_all(&self, writes: Vec<Write>) -> Result<(), PutError> {
        let (done, committed) = oneshot::channel();
        let queue = self.inner.writes.as_ref().ok_or(PutError::Closed)?;
        queue.send(Pending { writes, done }).map_err(|_| PutError::Closed)?;
        Ok(committed.await.map_err(|_| PutError::Closed)??)
    }

    /// Waits until every acknowledged write is visible to reads (see
    /// [`Visibility`]); every read calls it first.
    pub(crate) fn settled(&self) -> Result<(), Stopped> {
        self.inner.visibility.wait()
    }

    /// A read transaction; call [`Store::settled`] first.
    pub(crate) fn begin_read(&self) -> Result<redb::ReadTransaction, StorageError> {
        self.inner.db.begin_read().map_err(redb_error)
    }

    pub(crate) fn now(&self) -> u64 {
        (self.inner.clock)()
    }
}

/// A redb failure as a [`StorageError`], with the message redb gives it.
pub(crate) fn redb_error(err: impl Into<redb::Error>) -> StorageError {
    let err: redb::Error = err.into();
    let kind = match &err {
        redb::Error::Io(_) | redb::Error::PreviousIo | redb::Error::Backend(_) => StorageErrorKind::Io,
        redb::Error::Corrupted(_) | redb::Error::UpgradeRequired(_) | redb::Error::RepairAborted => {
            StorageErrorKind::Corrupt
        }
        _ => StorageErrorKind::Other,
    };
    StorageError::new(kind, err.to_string())
}

/// A failure to open the redb file, with the message redb gives it.
fn database_error(err: redb::DatabaseError) -> StorageError {
    let message = err.to_string();
    StorageError::new(redb_error(err).kind(), message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redb_errors_keep_their_message_and_get_a_kind() {
        let io = redb_error(redb::StorageError::Io(std::io::Error::other("disk on fire")));
        assert_eq!(io.kind(), StorageErrorKind::Io);
        assert_eq!(io.to_string(), redb::Error::Io(std::io::Error::other("disk on fire")).to_string());
        assert_eq!(redb_error(redb::Error::Corrupted("bad page".into())).kind(), StorageErrorKind::Corrupt);
        let open = database_error(redb::DatabaseError::DatabaseAlreadyOpen);
        assert_eq!(open.kind(), StorageErrorKind::Other);
        assert_eq!(open.to_string(), redb::DatabaseError::DatabaseAlreadyOpen.to_string());
    }
}
