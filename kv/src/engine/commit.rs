//! The commit thread: takes every write waiting, makes them durable as one
//! log record (group commit), acknowledges them, and hands them to the
//! apply thread; checkpoints the log into redb now and then.

use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::Duration;

use redb::{Database, Durability};
use tokio::sync::oneshot;

use super::apply::{update_cache, Applier};
use super::redb_error;
use super::tables::apply;
use super::visibility::{StopOnPanic, Visibility};
use super::wal::{self, Wal};
use super::writes::{encode_writes, Write};
use super::Cache;
use crate::error::{StorageError, StorageErrorKind};

/// How long the commit thread looks for the next write before it sleeps.
const SPIN: Duration = Duration::from_micros(100);

/// Without writes for this long, the log is checkpointed into redb.
const IDLE_CHECKPOINT: Duration = Duration::from_secs(1);

/// Most writes one commit takes: bounds a batch's latency.
const MAX_BATCH: usize = 1024;

/// Writes that commit together, and who waits for them.
pub(crate) struct Pending {
    pub(crate) writes: Vec<Write>,
    pub(crate) done: oneshot::Sender<Result<(), StorageError>>,
}

/// The commit thread's state: it makes batches durable in the log and
/// acknowledges them; the apply thread ([`Applier`]) brings them into redb.
pub(crate) struct Committer {
    db: Arc<Database>,
    /// Updated here only for commits too large for the log.
    cache: Cache,
    visibility: Arc<Visibility>,
    wal: Wal,
    /// The last log sequence number used.
    sequence: u64,
    /// Logged commits, in order, to the apply thread.
    to_apply: Option<std_mpsc::Sender<(u64, Vec<Write>)>>,
    applier: Option<std::thread::JoinHandle<()>>,
}

/// How a successful commit reached stable storage.
enum Commit {
    /// In the log; still to be applied to redb.
    Logged,
    /// Straight into a durable redb commit (too large for the log).
    Applied,
}

impl Committer {
    /// Starts the apply thread; `sequence` is the last commit the tables hold.
    pub(crate) fn start(
        db: Arc<Database>,
        cache: Cache,
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
    /// Returns once the queue is closed and what it held is committed.
    pub(crate) fn run(mut self, queue: &std_mpsc::Receiver<Pending>) {
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
            let writes: usize = batch.iter().map(|pending| pending.writes.len()).sum();
            let span = tracing::info_span!("kv.commit", batch = batch.len(), writes);
            let result = span.in_scope(|| {
                let result = self.commit(&batch);
                if let Err(err) = &result {
                    tracing::error!(writes = batch.len(), "KV commit failed: {err}");
                }
                result
            });
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
            self.checkpoint_if(|wal| wal.used() >= wal::CAPACITY / 2);
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
    fn commit(&mut self, batch: &[Pending]) -> Result<Commit, StorageError> {
        if let Some(failed) = self.visibility.failure() {
            return Err(StorageError::new(
                StorageErrorKind::Stopped,
                format!("the store stopped writing after an earlier failure: {failed}"),
            ));
        }
        let writes = || batch.iter().flat_map(|pending| &pending.writes);
        let payload = encode_writes(writes());
        let sequence = self.sequence + 1;
        if !Wal::fits_at_all(payload.len()) {
            // Too large for the log: one durable redb commit, which also
            // makes everything before it durable, once the tables hold
            // everything before it.
            self.visibility.wait_for(self.sequence)?;
            apply(&self.db, writes(), Durability::Immediate, sequence).map_err(redb_error)?;
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
            let message = format!("cannot write the log {}: {err}", self.wal.path().display());
            return Err(self.fail(StorageError::new(StorageErrorKind::Io, message)));
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
    fn checkpoint(&mut self) -> Result<(), StorageError> {
        self.visibility.wait_for(self.sequence)?;
        if let Err(err) = apply(&self.db, std::iter::empty(), Durability::Immediate, self.sequence) {
            return Err(self.fail(redb_error(err)));
        }
        self.reset_log()
    }

    fn reset_log(&mut self) -> Result<(), StorageError> {
        match self.wal.reset() {
            Ok(()) => Ok(()),
            Err(err) => {
                let message = format!("cannot reset {}: {err}", self.wal.path().display());
                Err(self.fail(StorageError::new(StorageErrorKind::Io, message)))
            }
        }
    }

    /// Takes no more writes after `err`.
    fn fail(&self, err: StorageError) -> StorageError {
        self.visibility.stop_writes(err.message());
        err
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Metadata, Subscriber};

    use super::*;
    use crate::engine::tables;
    use crate::namespaces::Record as KvRecord;

    /// A span's name and fields.
    type Opened = (&'static str, Vec<(String, String)>);

    /// Records the spans opened.
    #[derive(Default)]
    struct Spans(Mutex<Vec<Opened>>);

    struct Fields(Vec<(String, String)>);

    impl Visit for Fields {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            self.0.push((field.name().to_owned(), format!("{value:?}")));
        }
    }

    impl Subscriber for &'static Spans {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, span: &Attributes<'_>) -> Id {
            let mut fields = Fields(Vec::new());
            span.record(&mut fields);
            let mut spans = self.0.lock().unwrap();
            spans.push((span.metadata().name(), fields.0));
            Id::from_u64(spans.len() as u64)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, _: &Event<'_>) {}
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    fn put(key: &[u8]) -> Write {
        let record = Arc::new(KvRecord { value: bytes::Bytes::from_static(b"v"), expiration: None, metadata: None });
        Write::Put { key: key.to_vec(), record }
    }

    /// Writers queued together share one commit, inside a `kv.commit` span
    /// that says how many callers and writes it took.
    #[test]
    fn a_commit_runs_in_a_span_with_its_batch_size() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("kv.redb")).unwrap();
        let applied = tables::prepare(&db).unwrap();
        let (wal, _) = Wal::open(&dir.path().join("kv.wal")).unwrap();
        let visibility = Arc::new(Visibility::default());
        let committer = Committer::start(Arc::new(db), moka::sync::Cache::new(16), visibility.clone(), wal, applied);
        let (queue, receiver) = std_mpsc::channel();
        let mut acknowledgements = Vec::new();
        for writes in [vec![put(b"a"), put(b"b")], vec![put(b"c")]] {
            let (done, acknowledged) = oneshot::channel();
            queue.send(Pending { writes, done }).unwrap();
            acknowledgements.push(acknowledged);
        }
        drop(queue);
        let spans: &'static Spans = Box::leak(Box::default());
        tracing::subscriber::with_default(spans, || committer.run(&receiver));
        for acknowledged in acknowledgements {
            acknowledged.blocking_recv().unwrap().unwrap();
        }
        let spans = spans.0.lock().unwrap();
        let commits: Vec<_> = spans.iter().filter(|(name, _)| *name == "kv.commit").collect();
        let fields = vec![("batch".to_owned(), "2".to_owned()), ("writes".to_owned(), "3".to_owned())];
        assert_eq!(commits, [&("kv.commit", fields)]);
    }
}
