//! The store: one redb file, a commit thread that batches writers (group
//! commit) into the log and acknowledges them, an apply thread that brings
//! logged commits into redb, and a moka cache in front of reads.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use crate::encoding::{
    composite_key, decode_header, decode_record, encode_record, expiry_key, namespace_prefix, prefix_end, Record,
};
use crate::limits::{self, LimitError};
use crate::wal::Wal;

const ENTRIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("entries");
const EXPIRY: TableDefinition<&[u8], &[u8]> = TableDefinition::new("expiry");
/// `wal_sequence`: the last log record applied to the tables. After a crash
/// redb opens at its last durable commit, and the value there says which
/// records of the log to apply again.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const WAL_SEQUENCE: &str = "wal_sequence";

/// How long the commit thread looks for the next write before it sleeps.
const SPIN: Duration = Duration::from_micros(100);

/// Without writes for this long, the log is checkpointed into redb.
const IDLE_CHECKPOINT: Duration = Duration::from_secs(1);

/// Most writes one commit takes: bounds a batch's latency.
const MAX_BATCH: usize = 1024;

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

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    #[error("cannot open the store {path}: {source}")]
    Database { path: String, source: redb::DatabaseError },
    #[error("cannot prepare the store: {0}")]
    Storage(#[from] redb::Error),
    #[error("cannot open the store's log {path}: {source}")]
    Log { path: String, source: std::io::Error },
}

/// Reads fail once the apply thread failed (or a store thread panicked): the tables may
/// lack an acknowledged write, which only reopening (replaying the log) mends.
#[derive(Debug, thiserror::Error)]
#[error("the store stopped: bringing a logged write into its tables failed ({reason}); reopening it replays the log")]
pub struct Stopped {
    reason: String,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GetError {
    #[error(transparent)]
    Limit(#[from] LimitError),
    #[error(transparent)]
    Stopped(#[from] Stopped),
    #[error("storage failed: {0}")]
    Storage(#[from] redb::Error),
    #[error("a stored record is corrupt")]
    Corrupt,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PutError {
    #[error(transparent)]
    Limit(#[from] LimitError),
    #[error("storage failed: {0}")]
    Storage(String),
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
    Storage(#[from] redb::Error),
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

pub(crate) enum Write {
    Put {
        key: Vec<u8>,
        record: Arc<Record>,
    },
    Delete {
        key: Vec<u8>,
    },
    /// Delete `key` if its stored record has expired at `now`.
    DeleteExpired {
        key: Vec<u8>,
        now: u64,
    },
    ObjectPut {
        key: Vec<u8>,
        value: Bytes,
    },
    ObjectDelete {
        key: Vec<u8>,
    },
    Alarm {
        object: Vec<u8>,
        at_ms: Option<u64>,
    },
    /// Moves (or with `None` clears) the object's alarm if it is still set
    /// to `expected_ms`: an alarm handler that set a new alarm keeps it.
    AlarmReplaceIf {
        object: Vec<u8>,
        expected_ms: u64,
        new_ms: Option<u64>,
    },
}

/// Writes that commit together, and who waits for them.
struct Pending {
    writes: Vec<Write>,
    done: oneshot::Sender<Result<(), String>>,
}

/// KV storage for every namespace of a node. Cheap to clone.
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
    cache: moka::sync::Cache<Vec<u8>, Option<Arc<Record>>>,
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

/// Which commits readers can rely on. The commit thread acknowledges a
/// commit as soon as its log record is durable; the apply thread brings it
/// into redb and then the cache meanwhile, so a writer never waits for the
/// tables. A read first waits until every commit acknowledged before it is
/// applied: usually the apply in progress, a few at most (one per batch the
/// commit thread acknowledged meanwhile); nothing without concurrent writes.
#[derive(Default)]
struct Visibility {
    /// The sequence of the last acknowledged commit.
    acknowledged: AtomicU64,
    /// The sequence of the last commit applied to redb and the cache;
    /// changed only under `lock`.
    applied: AtomicU64,
    /// The apply thread failed or is gone, or a store thread panicked:
    /// reads would miss an acknowledged write.
    stopped: AtomicBool,
    /// The first failure of the log, a checkpoint or an apply: no write
    /// is taken after it, since the log may then hold a record the tables
    /// do not (reopening sorts that out).
    failure: Mutex<Option<String>>,
    /// Threads blocked in [`Visibility::wait_for`] (readers, and the commit
    /// thread before a checkpoint): a publish wakes them only when there
    /// are some.
    waiters: AtomicUsize,
    /// Held to publish (with the cache update that goes with it), to stop,
    /// to fill the cache after a read, and by waiters between checks.
    lock: Mutex<()>,
    changed: Condvar,
}

impl Visibility {
    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Returns once every commit acknowledged before the call is visible.
    fn wait(&self) -> Result<(), Stopped> {
        self.wait_for(self.acknowledged.load(Ordering::Acquire))
    }

    /// Returns once the commit `target` (and every one before) is applied.
    fn wait_for(&self, target: u64) -> Result<(), Stopped> {
        if self.applied.load(Ordering::Acquire) >= target {
            return Ok(());
        }
        let mut guard = self.lock();
        self.waiters.fetch_add(1, Ordering::Relaxed);
        while self.applied.load(Ordering::Acquire) < target && !self.stopped.load(Ordering::Acquire) {
            guard = self.changed.wait(guard).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        self.waiters.fetch_sub(1, Ordering::Relaxed);
        drop(guard);
        if self.applied.load(Ordering::Acquire) < target {
            return Err(Stopped { reason: self.failure().unwrap_or_default() });
        }
        Ok(())
    }

    fn acknowledge(&self, sequence: u64) {
        self.acknowledged.store(sequence, Ordering::Release);
    }

    /// The last applied sequence, to pass to [`Visibility::fill`].
    fn applied(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    /// Runs `update_cache` and makes `sequence` visible, as one step for
    /// readers filling the cache.
    fn publish(&self, sequence: u64, update_cache: impl FnOnce()) {
        let _guard = self.lock();
        update_cache();
        self.applied.store(sequence, Ordering::Release);
        if self.waiters.load(Ordering::Relaxed) > 0 {
            self.changed.notify_all();
        }
    }

    /// Runs `fill` (a cache insert of what a read found in redb) unless a
    /// commit was applied since `seen`: the read may have missed it, and
    /// the publish of that commit has already put the newer value (or none)
    /// in the cache, which `fill` must not replace.
    fn fill(&self, seen: u64, fill: impl FnOnce()) {
        let _guard = self.lock();
        if self.applied.load(Ordering::Acquire) == seen {
            fill();
        }
    }

    /// Takes no more writes.
    fn stop_writes(&self, why: &str) {
        let mut failure = self.failure.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        failure.get_or_insert_with(|| why.to_owned());
    }

    /// Takes no more writes, and reads fail: the tables lack a write that
    /// was acknowledged.
    fn stop(&self, why: &str) {
        self.stop_writes(why);
        let _guard = self.lock();
        self.stopped.store(true, Ordering::Release);
        self.changed.notify_all();
    }

    fn failure(&self) -> Option<String> {
        self.failure.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }
}

pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn live(record: &Record, now: u64) -> bool {
    record.expiration.is_none_or(|expiration| expiration > now)
}

impl Store {
    /// Opens (or creates) the store file. A file left by a crash is
    /// repaired by redb on open.
    pub fn open(path: &Path, config: StoreConfig) -> Result<Store, OpenError> {
        let db = Database::create(path)
            .map_err(|source| OpenError::Database { path: path.display().to_string(), source })?;
        let applied = {
            let txn = db.begin_write().map_err(redb::Error::from)?;
            txn.open_table(ENTRIES).map_err(redb::Error::from)?;
            txn.open_table(EXPIRY).map_err(redb::Error::from)?;
            txn.open_table(crate::objects::OBJECTS).map_err(redb::Error::from)?;
            txn.open_table(crate::objects::ALARMS).map_err(redb::Error::from)?;
            txn.open_table(crate::objects::ALARM_TIMES).map_err(redb::Error::from)?;
            crate::objects::index_alarms(&txn)?;
            let applied = txn
                .open_table(META)
                .map_err(redb::Error::from)?
                .get(WAL_SEQUENCE)
                .map_err(redb::Error::from)?
                .map_or(0, |v| v.value());
            txn.commit().map_err(redb::Error::from)?;
            applied
        };
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
            apply(&db, writes.into_iter(), Durability::Immediate, last)?;
        }
        wal.reset().map_err(log_error)?;
        let db = Arc::new(db);
        let cache: moka::sync::Cache<Vec<u8>, Option<Arc<Record>>> = moka::sync::Cache::builder()
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

    /// The live record of `key`, from the cache or the file.
    pub fn get(&self, namespace: &str, key: &[u8]) -> Result<Option<Arc<Record>>, GetError> {
        limits::check_key(key)?;
        let composite = composite_key(namespace, key);
        let now = (self.inner.clock)();
        self.settled()?;
        if let Some(cached) = self.inner.cache.get(&composite) {
            return Ok(cached.filter(|record| live(record, now)));
        }
        let seen = self.inner.visibility.applied();
        let txn = self.inner.db.begin_read().map_err(redb::Error::from)?;
        let table = txn.open_table(ENTRIES).map_err(redb::Error::from)?;
        let record = match table.get(composite.as_slice()).map_err(redb::Error::from)? {
            Some(bytes) => Some(Arc::new(decode_record(bytes.value()).ok_or(GetError::Corrupt)?)),
            None => None,
        };
        self.inner.visibility.fill(seen, || self.inner.cache.insert(composite, record.clone()));
        Ok(record.filter(|record| live(record, now)))
    }

    /// Writes `value`; returns once the write is durable on disk.
    pub async fn put(&self, namespace: &str, key: &[u8], value: Bytes, options: PutOptions) -> Result<(), PutError> {
        limits::check_key(key)?;
        limits::check_value(value.len())?;
        if let Some(metadata) = &options.metadata {
            limits::check_metadata(metadata)?;
        }
        let expiration = limits::resolve_expiration((self.inner.clock)(), options.expiration, options.expiration_ttl)?;
        let record = Arc::new(Record { value, expiration, metadata: options.metadata });
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

    /// Commits `writes` together (one transaction) and durably.
    pub(crate) async fn write_all(&self, writes: Vec<Write>) -> Result<(), PutError> {
        let (done, committed) = oneshot::channel();
        let queue = self.inner.writes.as_ref().ok_or(PutError::Closed)?;
        queue.send(Pending { writes, done }).map_err(|_| PutError::Closed)?;
        committed.await.map_err(|_| PutError::Closed)?.map_err(PutError::Storage)
    }

    /// Waits until every acknowledged write is visible to reads (see
    /// [`Visibility`]); every read calls it first.
    pub(crate) fn settled(&self) -> Result<(), Stopped> {
        self.inner.visibility.wait()
    }

    pub(crate) fn db(&self) -> &Database {
        &self.inner.db
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
        let now = (self.inner.clock)();
        self.settled()?;
        let txn = self.inner.db.begin_read().map_err(redb::Error::from)?;
        let table = txn.open_table(ENTRIES).map_err(redb::Error::from)?;
        let range = match &end {
            Some(end) => table.range(start.as_slice()..end.as_slice()),
            None => table.range(start.as_slice()..),
        }
        .map_err(redb::Error::from)?;
        let mut buffer: Vec<u8> = Vec::with_capacity(limit.min(limits::MAX_LIST_LIMIT) * 24);
        let mut spans: Vec<KeySpan> = Vec::with_capacity(limit.min(limits::MAX_LIST_LIMIT));
        let mut more = false;
        let mut append = |bytes: &[u8]| {
            let start = buffer.len() as u32;
            buffer.extend_from_slice(bytes);
            start..buffer.len() as u32
        };
        for entry in range {
            let (key, value) = entry.map_err(redb::Error::from)?;
            let Some((expiration, metadata)) = decode_header(value.value()) else { continue };
            if expiration.is_some_and(|expiration| expiration <= now) {
                continue;
            }
            if spans.len() == limit {
                more = true;
                break;
            }
            let name = append(&key.value()[ns.len()..]);
            let metadata = metadata.map(&mut append);
            spans.push(KeySpan { name, metadata, expiration });
        }
        let cursor = more.then(|| {
            let last = &spans.last().expect("a full page").name;
            encode_cursor(&buffer[last.start as usize..last.end as usize])
        });
        Ok(ListPage { buffer, spans, list_complete: !more, cursor })
    }

    /// Deletes expired records (they are never returned before that either).
    /// Returns how many went.
    pub async fn sweep_expired(&self) -> Result<usize, PutError> {
        let now = (self.inner.clock)();
        self.settled().map_err(|err| PutError::Storage(err.to_string()))?;
        let expired: Vec<Vec<u8>> = {
            let run = || -> Result<Vec<Vec<u8>>, redb::Error> {
                let txn = self.inner.db.begin_read()?;
                let table = txn.open_table(EXPIRY)?;
                let end = (now + 1).to_be_bytes();
                let mut keys = Vec::new();
                for entry in table.range(..end.as_slice())? {
                    let (key, _) = entry?;
                    keys.push(key.value()[8..].to_vec());
                }
                Ok(keys)
            };
            run().map_err(|err| PutError::Storage(err.to_string()))?
        };
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

/// The commit thread's state: it makes batches durable in the log and
/// acknowledges them; the apply thread ([`Applier`]) brings them into redb.
struct Committer {
    db: Arc<Database>,
    /// Updated here only for commits too large for the log.
    cache: moka::sync::Cache<Vec<u8>, Option<Arc<Record>>>,
    visibility: Arc<Visibility>,
    wal: Wal,
    /// The last log sequence number used.
    sequence: u64,
    /// Logged commits, in order, to the apply thread.
    to_apply: Option<std_mpsc::Sender<(u64, Vec<Write>)>>,
    applier: Option<std::thread::JoinHandle<()>>,
}

impl Committer {
    fn start(
        db: Arc<Database>,
        cache: moka::sync::Cache<Vec<u8>, Option<Arc<Record>>>,
        visibility: Arc<Visibility>,
        wal: Wal,
        sequence: u64,
    ) -> Committer {
        let (to_apply, logged) = std_mpsc::channel();
        let applier = Applier { db: db.clone(), cache: cache.clone(), visibility: visibility.clone() };
        let applier = std::thread::Builder::new()
            .name("kv-apply".into())
            .spawn(move || applier.run(&logged))
            .expect("the apply thread starts");
        Committer { db, cache, visibility, wal, sequence, to_apply: Some(to_apply), applier: Some(applier) }
    }

    /// Takes every write waiting, commits them as one (one log record, one
    /// sync) and acknowledges them all: concurrent writers share the wait.
    fn run(mut self, queue: &std_mpsc::Receiver<Pending>) {
        let _guard = StopOnPanic(self.visibility.clone(), "the commit thread panicked");
        loop {
            let first = match spin_recv(queue).map_or_else(|| queue.recv_timeout(IDLE_CHECKPOINT), Ok) {
                Ok(first) => first,
                Err(std_mpsc::RecvTimeoutError::Timeout) => {
                    self.checkpoint_if(|wal| wal.used() > 0);
                    continue;
                }
                Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            let result = self.commit(&batch);
            if let Err(err) = &result {
                tracing::error!(writes = batch.len(), "KV commit failed: {err}");
            }
            let logged = matches!(result, Ok(Commit::Logged));
            let result = result.map(|_| ());
            if result.is_ok() {
                self.visibility.acknowledge(self.sequence);
            }
            let mut writes = Vec::with_capacity(batch.len());
            for pending in batch {
                let _ = pending.done.send(result.clone());
                writes.extend(pending.writes);
            }
            // The writers go on (and this thread takes the next batch) while
            // the apply thread brings this one into the tables.
            if logged {
                let sent =
                    self.to_apply.as_ref().is_some_and(|to_apply| to_apply.send((self.sequence, writes)).is_ok());
                if !sent {
                    self.visibility.stop("the apply thread is gone");
                }
            }
            // Off the writers' path: keep the log at most half full.
            self.checkpoint_if(|wal| wal.used() >= crate::wal::CAPACITY / 2);
        }
        self.checkpoint_if(|wal| wal.used() > 0);
        drop(self.to_apply.take());
        if let Some(applier) = self.applier.take() {
            let _ = applier.join();
        }
    }

    /// Makes the batch durable. A logged commit is acknowledged before it
    /// is in redb (the apply thread's part); one too large for the log is
    /// applied (durably) here.
    fn commit(&mut self, batch: &[Pending]) -> Result<Commit, String> {
        if let Some(failed) = self.visibility.failure() {
            return Err(format!("the store stopped writing after an earlier failure: {failed}"));
        }
        let writes = || batch.iter().flat_map(|pending| &pending.writes);
        let payload = crate::wal::encode_writes(writes());
        let sequence = self.sequence + 1;
        if !Wal::fits_at_all(payload.len()) {
            // Too large for the log: one durable redb commit, which also
            // makes everything before it durable, once the tables hold
            // everything before it.
            self.visibility.wait_for(self.sequence).map_err(|err| err.to_string())?;
            apply(&self.db, writes(), Durability::Immediate, sequence).map_err(|err| err.to_string())?;
            self.sequence = sequence;
            self.visibility.publish(sequence, || update_cache(&self.cache, writes()));
            // The writes are durable whatever happens to the log now; a
            // failed reset stops later writes only.
            if let Err(err) = self.reset_log() {
                tracing::error!("KV log reset failed; the store takes no more writes: {err}");
            }
            return Ok(Commit::Applied);
        }
        if !self.wal.fits(payload.len()) {
            self.checkpoint()?;
        }
        if let Err(err) = self.wal.append(sequence, &payload) {
            // After a failed synchronous write, what reached the disk is
            // unknown: no later record may follow it.
            return Err(self.fail(format!("cannot write the log {}: {err}", self.wal.path().display())));
        }
        self.sequence = sequence;
        Ok(Commit::Logged)
    }

    fn checkpoint_if(&mut self, due: impl Fn(&Wal) -> bool) {
        if self.visibility.failure().is_none() && due(&self.wal) {
            if let Err(err) = self.checkpoint() {
                tracing::error!("KV checkpoint failed: {err}");
            }
        }
    }

    /// Makes redb durable up to the last record, then starts the log over.
    fn checkpoint(&mut self) -> Result<(), String> {
        self.visibility.wait_for(self.sequence).map_err(|err| err.to_string())?;
        if let Err(err) = apply(&self.db, std::iter::empty(), Durability::Immediate, self.sequence) {
            return Err(self.fail(err.to_string()));
        }
        self.reset_log()
    }

    fn reset_log(&mut self) -> Result<(), String> {
        match self.wal.reset() {
            Ok(()) => Ok(()),
            Err(err) => {
                let message = format!("cannot reset {}: {err}", self.wal.path().display());
                Err(self.fail(message))
            }
        }
    }

    fn fail(&self, message: String) -> String {
        self.visibility.stop_writes(&message);
        message
    }
}

/// How a successful commit reached stable storage.
enum Commit {
    /// In the log; still to be applied to redb.
    Logged,
    /// Straight into a durable redb commit (too large for the log).
    Applied,
}

/// The apply thread: brings logged commits into redb (commits without an
/// fsync: the log holds them) and the cache, in log order, then lets readers
/// see them.
struct Applier {
    db: Arc<Database>,
    cache: moka::sync::Cache<Vec<u8>, Option<Arc<Record>>>,
    visibility: Arc<Visibility>,
}

impl Applier {
    fn run(self, logged: &std_mpsc::Receiver<(u64, Vec<Write>)>) {
        let _guard = StopOnPanic(self.visibility.clone(), "the apply thread panicked");
        while let Ok((mut sequence, mut writes)) = logged.recv() {
            // Commits that queued up meanwhile go into the same transaction.
            while let Ok((next, more)) = logged.try_recv() {
                sequence = next;
                writes.extend(more);
            }
            if self.visibility.stopped.load(Ordering::Acquire) {
                // An earlier apply failed: the tables stay as they were and
                // reopening replays the log.
                continue;
            }
            match apply(&self.db, writes.iter(), Durability::None, sequence) {
                Ok(()) => self.visibility.publish(sequence, || update_cache(&self.cache, writes.iter())),
                Err(err) => {
                    let message = err.to_string();
                    tracing::error!("applying a logged KV commit failed; the store stops: {message}");
                    self.visibility.stop(&message);
                }
            }
        }
    }
}

/// Stops the store if the commit or apply thread unwinds: readers (and
/// checkpoints) waiting for an acknowledged commit to be applied would
/// otherwise wait forever.
struct StopOnPanic(Arc<Visibility>, &'static str);

impl Drop for StopOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.stop(self.1);
        }
    }
}

/// The cache holds what the tables hold once a commit is applied. Object
/// storage is not cached.
fn update_cache<'a>(cache: &moka::sync::Cache<Vec<u8>, Option<Arc<Record>>>, writes: impl Iterator<Item = &'a Write>) {
    for write in writes {
        match write {
            Write::Put { key, record } => cache.insert(key.clone(), Some(record.clone())),
            Write::Delete { key } => cache.insert(key.clone(), None),
            Write::DeleteExpired { key, .. } => cache.invalidate(key),
            Write::ObjectPut { .. }
            | Write::ObjectDelete { .. }
            | Write::Alarm { .. }
            | Write::AlarmReplaceIf { .. } => {}
        }
    }
}

/// Waits a little for the next write without sleeping: a writer that
/// writes again right after its acknowledgement would otherwise pay for
/// waking this thread up (tens of microseconds on a VM) on every write.
fn spin_recv(queue: &std_mpsc::Receiver<Pending>) -> Option<Pending> {
    let deadline = std::time::Instant::now() + SPIN;
    loop {
        match queue.try_recv() {
            Ok(pending) => return Some(pending),
            Err(std_mpsc::TryRecvError::Disconnected) => return None,
            Err(std_mpsc::TryRecvError::Empty) if std::time::Instant::now() >= deadline => return None,
            Err(std_mpsc::TryRecvError::Empty) => std::thread::yield_now(),
        }
    }
}

/// The tables of one write transaction, opened on first use: a commit of
/// one KV put opens two, not all of them.
struct Tables<'t> {
    txn: &'t redb::WriteTransaction,
    entries: Option<redb::Table<'t, &'static [u8], &'static [u8]>>,
    expiry: Option<redb::Table<'t, &'static [u8], &'static [u8]>>,
    objects: Option<redb::Table<'t, &'static [u8], &'static [u8]>>,
    alarms: Option<redb::Table<'t, &'static [u8], u64>>,
    alarm_times: Option<redb::Table<'t, &'static [u8], ()>>,
}

impl<'t> Tables<'t> {
    fn new(txn: &'t redb::WriteTransaction) -> Self {
        Tables { txn, entries: None, expiry: None, objects: None, alarms: None, alarm_times: None }
    }

    #[allow(clippy::type_complexity)]
    fn kv(
        &mut self,
    ) -> Result<
        (&mut redb::Table<'t, &'static [u8], &'static [u8]>, &mut redb::Table<'t, &'static [u8], &'static [u8]>),
        redb::Error,
    > {
        if self.entries.is_none() {
            self.entries = Some(self.txn.open_table(ENTRIES)?);
            self.expiry = Some(self.txn.open_table(EXPIRY)?);
        }
        Ok((self.entries.as_mut().expect("opened"), self.expiry.as_mut().expect("opened")))
    }

    fn objects(&mut self) -> Result<&mut redb::Table<'t, &'static [u8], &'static [u8]>, redb::Error> {
        if self.objects.is_none() {
            self.objects = Some(self.txn.open_table(crate::objects::OBJECTS)?);
        }
        Ok(self.objects.as_mut().expect("opened"))
    }

    #[allow(clippy::type_complexity)]
    fn alarms(
        &mut self,
    ) -> Result<(&mut redb::Table<'t, &'static [u8], u64>, &mut redb::Table<'t, &'static [u8], ()>), redb::Error> {
        if self.alarms.is_none() {
            self.alarms = Some(self.txn.open_table(crate::objects::ALARMS)?);
            self.alarm_times = Some(self.txn.open_table(crate::objects::ALARM_TIMES)?);
        }
        Ok((self.alarms.as_mut().expect("opened"), self.alarm_times.as_mut().expect("opened")))
    }
}

impl Tables<'_> {
    /// Sets (or with `None` clears) an object's alarm, in both tables; with
    /// `expected`, only if the alarm is still set to that time.
    fn replace_alarm(&mut self, object: &[u8], expected: Option<u64>, new: Option<u64>) -> Result<(), redb::Error> {
        let (alarms, alarm_times) = self.alarms()?;
        let current = alarms.get(object)?.map(|at| at.value());
        if expected.is_some() && current != expected {
            return Ok(());
        }
        if let Some(old) = current {
            alarms.remove(object)?;
            alarm_times.remove(crate::objects::alarm_time_key(old, object).as_slice())?;
        }
        if let Some(at) = new {
            alarms.insert(object, at)?;
            alarm_times.insert(crate::objects::alarm_time_key(at, object).as_slice(), ())?;
        }
        Ok(())
    }
}

/// Applies `writes` in one redb transaction. A durable one also records
/// `sequence` as the last log record the tables hold (after a crash, redb
/// opens at its last durable commit, so only those need it).
fn apply<'a>(
    db: &Database,
    writes: impl Iterator<Item = &'a Write>,
    durability: Durability,
    sequence: u64,
) -> Result<(), redb::Error> {
    let durable = matches!(durability, Durability::Immediate);
    let mut txn = db.begin_write()?;
    txn.set_durability(durability).map_err(|err| redb::Error::Corrupted(err.to_string()))?;
    {
        let mut tables = Tables::new(&txn);
        for write in writes {
            match write {
                Write::Put { key, record } => {
                    let (entries, expiry) = tables.kv()?;
                    remove_expiry(entries, expiry, key)?;
                    entries.insert(key.as_slice(), encode_record(record).as_slice())?;
                    if let Some(expiration) = record.expiration {
                        expiry.insert(expiry_key(expiration, key).as_slice(), [].as_slice())?;
                    }
                }
                Write::Delete { key } => {
                    let (entries, expiry) = tables.kv()?;
                    remove_expiry(entries, expiry, key)?;
                    entries.remove(key.as_slice())?;
                }
                Write::DeleteExpired { key, now } => {
                    let (entries, expiry) = tables.kv()?;
                    let expired = entries
                        .get(key.as_slice())?
                        .and_then(|stored| decode_record(stored.value()))
                        .is_some_and(|record| !live(&record, *now));
                    if expired {
                        remove_expiry(entries, expiry, key)?;
                        entries.remove(key.as_slice())?;
                    }
                }
                Write::ObjectPut { key, value } => {
                    tables.objects()?.insert(key.as_slice(), value.as_ref())?;
                }
                Write::ObjectDelete { key } => {
                    tables.objects()?.remove(key.as_slice())?;
                }
                Write::Alarm { object, at_ms } => tables.replace_alarm(object, None, *at_ms)?,
                Write::AlarmReplaceIf { object, expected_ms, new_ms } => {
                    tables.replace_alarm(object, Some(*expected_ms), *new_ms)?
                }
            }
        }
        drop(tables);
        if durable {
            txn.open_table(META)?.insert(WAL_SEQUENCE, sequence)?;
        }
    }
    txn.commit()?;
    Ok(())
}

/// The old record's expiry entry goes with it.
fn remove_expiry(
    entries: &redb::Table<&[u8], &[u8]>,
    expiry: &mut redb::Table<&[u8], &[u8]>,
    key: &[u8],
) -> Result<(), redb::Error> {
    let old_expiration = entries.get(key)?.and_then(|old| decode_record(old.value())).and_then(|r| r.expiration);
    if let Some(old) = old_expiration {
        expiry.remove(expiry_key(old, key).as_slice())?;
    }
    Ok(())
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
}
