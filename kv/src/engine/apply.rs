//! The apply thread: brings logged commits into redb and the cache, in log
//! order, then lets readers see them.

use std::sync::mpsc as std_mpsc;
use std::sync::Arc;

use redb::{Database, Durability};

use super::tables::apply;
use super::visibility::{StopOnPanic, Visibility};
use super::writes::Write;
use super::Cache;

/// The apply thread's state. Its redb commits skip the fsync: the log holds
/// what they hold until the next checkpoint.
pub(crate) struct Applier {
    pub(crate) db: Arc<Database>,
    pub(crate) cache: Cache,
    pub(crate) visibility: Arc<Visibility>,
}

impl Applier {
    /// Applies what the commit thread logged, `(sequence, writes)` in order,
    /// until the commit thread hangs up.
    pub(crate) fn run(self, logged: &std_mpsc::Receiver<(u64, Vec<Write>)>) {
        let _guard = StopOnPanic(self.visibility.clone(), "the apply thread panicked");
        while let Ok((mut sequence, mut writes)) = logged.recv() {
            // Commits that queued up meanwhile go into the same transaction.
            while let Ok((next, more)) = logged.try_recv() {
                sequence = next;
                writes.extend(more);
            }
            if self.visibility.is_stopped() {
                // An earlier apply failed: the tables stay as they were and
                // reopening replays the log.
                continue;
            }
            let _span = tracing::debug_span!("kv.apply", sequence, writes = writes.len()).entered();
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

/// The cache holds what the tables hold once a commit is applied. Object
/// storage is not cached.
pub(crate) fn update_cache<'a>(cache: &Cache, writes: impl Iterator<Item = &'a Write>) {
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
