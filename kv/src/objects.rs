//! Durable Object storage: each object's private, ordered key space and its
//! alarm. The types, limits and errors of the API, and [`ObjectStorage`],
//! the trait a backend implements to serve it; the redb-backed
//! [`Store`](crate::Store) implements it in `engine/objects.rs`, in the same
//! file and through the same commit thread as KV.
//!
//! Values are opaque bytes (the runtime stores structured-clone
//! serializations). A call's writes commit together: `put` of many entries,
//! `delete` of many keys and a transaction's writes are all or nothing.

use bytes::Bytes;

use crate::error::{Stopped, StorageError};
use crate::namespaces::PutError;
use crate::BoxFuture;

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

/// Why a storage call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ObjectLimitError {
    #[error("keys must be at most {MAX_OBJECT_KEY_BYTES} bytes, got {0}")]
    KeyTooLong(usize),
    #[error("values must be at most {MAX_OBJECT_VALUE_BYTES} bytes, got {0}")]
    ValueTooLarge(usize),
}

/// Checks a key (and the value to store under it) against the limits.
pub(crate) fn check(key: &[u8], value: Option<&[u8]>) -> Result<(), ObjectLimitError> {
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
    Storage(#[from] StorageError),
}

/// Durable Object storage and alarms for every object of a node: the seam
/// between the runtime (and the alarm scheduler) and a backend. The
/// redb-backed [`Store`](crate::Store) implements it; a PostgreSQL backend
/// is meant to implement it too.
///
/// Every method has the semantics of the `Store` method of the same name:
/// keys checked against the limits before anything is written, one call's
/// writes all or nothing, acknowledged only once durable, alarms kept until
/// the caller clears or moves them (so one due before a crash fires after
/// it). All return boxed futures, so the trait can be held as
/// `Arc<dyn ObjectStorage>`.
pub trait ObjectStorage: Send + Sync + 'static {
    /// Values of `keys`, in order (`None` where absent).
    fn object_get<'a>(
        &'a self,
        object: &'a ObjectKey,
        keys: &'a [Vec<u8>],
    ) -> BoxFuture<'a, Result<Vec<Option<Bytes>>, ObjectError>>;

    /// Applies `writes` atomically and durably: all of them or none.
    fn object_transaction<'a>(
        &'a self,
        object: &'a ObjectKey,
        writes: Vec<ObjectWrite>,
    ) -> BoxFuture<'a, Result<(), ObjectError>>;

    /// Deletes `keys`; resolves to how many existed.
    fn object_delete<'a>(
        &'a self,
        object: &'a ObjectKey,
        keys: &'a [Vec<u8>],
    ) -> BoxFuture<'a, Result<usize, ObjectError>>;

    /// Deletes every key of the object (its alarm stays, as in workerd).
    fn object_delete_all<'a>(&'a self, object: &'a ObjectKey) -> BoxFuture<'a, Result<(), ObjectError>>;

    /// Entries in key order (or reverse), within the options' bounds.
    #[allow(clippy::type_complexity)] // the `Store` method's result, boxed
    fn object_list<'a>(
        &'a self,
        object: &'a ObjectKey,
        options: ObjectListOptions,
    ) -> BoxFuture<'a, Result<Vec<(Vec<u8>, Bytes)>, ObjectError>>;

    /// Sets (milliseconds since the epoch) or clears the object's alarm, durably.
    fn set_alarm<'a>(&'a self, object: &'a ObjectKey, at_ms: Option<u64>) -> BoxFuture<'a, Result<(), ObjectError>>;

    /// The object's alarm, if set.
    fn get_alarm<'a>(&'a self, object: &'a ObjectKey) -> BoxFuture<'a, Result<Option<u64>, ObjectError>>;

    /// Alarms due at `now_ms`, earliest first.
    fn due_alarms(&self, now_ms: u64) -> BoxFuture<'_, Result<Vec<(ObjectKey, u64)>, ObjectError>>;

    /// When the earliest alarm of the node is set for, if any.
    fn next_alarm(&self) -> BoxFuture<'_, Result<Option<u64>, ObjectError>>;

    /// Moves the object's alarm to `new_ms` (or clears it, with `None`) if
    /// it is still the one set for `expected_ms`.
    fn replace_alarm_if<'a>(
        &'a self,
        object: &'a ObjectKey,
        expected_ms: u64,
        new_ms: Option<u64>,
    ) -> BoxFuture<'a, Result<(), ObjectError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits() {
        assert!(check(&[0; 2048], Some(&[0; 131072])).is_ok());
        assert_eq!(check(&[0; 2049], None), Err(ObjectLimitError::KeyTooLong(2049)));
        assert_eq!(check(b"k", Some(&[0; 131073])), Err(ObjectLimitError::ValueTooLarge(131073)));
    }
}
