//! Outpost's storage for workers: KV namespaces and Durable Object storage
//! on one embedded, crash-safe redb file, with a moka cache in front of KV
//! reads.
//!
//! What it does: `get`/`put`/`delete`/`list` with Workers KV's semantics and
//! limits (key ≤ 512 bytes, value ≤ 25 MiB, metadata ≤ 1024 bytes,
//! expirations ≥ 60 s ahead, keys in byte order, lists of at most 1000),
//! namespaces kept apart by key prefix, expired records never returned and
//! swept in the background. Durable Object storage (per-object ordered
//! keys, atomic transactions, persisted alarms in time order) lives in the
//! same file. A write is acknowledged only once committed durably;
//! concurrent writes share one commit (group commit). The layout and
//! guarantees are in `kv/DESIGN.md`.
//!
//! How it is split: the APIs and the engine under them.
//!
//! - The APIs say what callers can ask and what they get back, whatever
//!   stores it: [`namespaces`] (Workers KV: [`KvStorage`], its options,
//!   pages, errors and the limits in [`limits`]) and [`objects`] (Durable
//!   Object storage and alarms: [`ObjectStorage`](objects::ObjectStorage)).
//!   Their errors carry a backend-neutral [`StorageError`], never a
//!   backend's own error type.
//! - The engine (`engine/`, private) is the redb backend: the write-ahead
//!   log, the commit thread (group commit), the apply thread, the tables,
//!   replay on open and the read cache. [`Store`] is its handle; it
//!   implements both traits, and keeps inherent methods of the same names
//!   (KV and object reads are synchronous there; every trait method returns
//!   a future).
//!
//! The traits are the seam for a second backend: a PostgreSQL one (a later
//! change) implements [`KvStorage`] and
//! [`ObjectStorage`](objects::ObjectStorage) with the same semantics, and
//! the runtime can hold either as `Arc<dyn KvStorage>` /
//! `Arc<dyn ObjectStorage>`. [`queues`] keeps queue messages over
//! [`ObjectStorage`](objects::ObjectStorage) (so every backend stores them);
//! so does workflow state (the `outpost-workflows` crate), one object per
//! workflow in a reserved namespace.
//!
//! What it does not do: know about V8 or workers (the runtime's bindings
//! call this API, and the runtime makes object ids and runs alarms),
//! replicate across nodes, or pick a backend (callers open a [`Store`]).

mod engine;
mod error;
pub mod limits;
pub mod namespaces;
pub mod objects;
pub mod queues;

use std::future::Future;
use std::pin::Pin;

pub use engine::{now_secs, Clock, Store, StoreConfig};
pub use error::{OpenError, Stopped, StorageError, StorageErrorKind};
pub use limits::LimitError;
pub use namespaces::{GetError, KvStorage, ListError, ListOptions, ListPage, ListedKey, PutError, PutOptions, Record};

/// A boxed future that can cross threads: what the storage traits' async
/// methods return, so that they stay object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
