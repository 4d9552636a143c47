//! Errors every backend shares. No backend's own error type appears in a
//! public one: a backend turns its failures into a [`StorageError`] (the
//! redb one in `engine`), so callers match on the same variants whichever
//! backend stores their data.

/// A failure of the storage underneath (the file, the disk; a server, for a
/// backend that has one), as a kind and a message. Its display is the
/// message alone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct StorageError {
    kind: StorageErrorKind,
    message: String,
}

/// What kind of failure a [`StorageError`] is, for callers that react
/// differently (most only report it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StorageErrorKind {
    /// Reading or writing the medium failed (a disk, a file, a connection).
    Io,
    /// Stored data is damaged, or not what this version writes.
    Corrupt,
    /// The store takes no more writes (or reads) after an earlier failure;
    /// reopening it mends that.
    Stopped,
    /// Anything else.
    Other,
}

impl StorageError {
    /// For backends: a failure of `kind`, described by `message`.
    pub fn new(kind: StorageErrorKind, message: impl Into<String>) -> StorageError {
        StorageError { kind, message: message.into() }
    }

    pub fn kind(&self) -> StorageErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Reads fail once the apply thread failed (or a store thread panicked): the tables may
/// lack an acknowledged write, which only reopening (replaying the log) mends.
#[derive(Debug, thiserror::Error)]
#[error("the store stopped: bringing a logged write into its tables failed ({reason}); reopening it replays the log")]
pub struct Stopped {
    reason: String,
}

impl Stopped {
    pub(crate) fn new(reason: String) -> Stopped {
        Stopped { reason }
    }
}

impl From<Stopped> for StorageError {
    fn from(stopped: Stopped) -> StorageError {
        StorageError::new(StorageErrorKind::Stopped, stopped.to_string())
    }
}

/// Why a store could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    #[error("cannot open the store {path}: {source}")]
    Database { path: String, source: StorageError },
    #[error("cannot prepare the store: {0}")]
    Storage(#[from] StorageError),
    #[error("cannot open the store's log {path}: {source}")]
    Log { path: String, source: std::io::Error },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_errors_show_their_message_and_keep_their_kind() {
        let err = StorageError::new(StorageErrorKind::Io, "I/O error: disk full");
        assert_eq!(err.to_string(), "I/O error: disk full");
        assert_eq!(err.kind(), StorageErrorKind::Io);
        assert_eq!(err.message(), "I/O error: disk full");
        let stopped: StorageError = Stopped::new("boom".into()).into();
        assert_eq!(stopped.kind(), StorageErrorKind::Stopped);
        assert!(stopped.message().contains("(boom)"), "{stopped}");
    }
}
