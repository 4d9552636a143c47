//! Outpost's storage for workers: KV namespaces on one embedded, crash-safe
//! redb file, with a moka cache in front of reads.
//!
//! What it does: `get`/`put`/`delete`/`list` with Workers KV's semantics and
//! limits (key ≤ 512 bytes, value ≤ 25 MiB, metadata ≤ 1024 bytes,
//! expirations ≥ 60 s ahead, keys in byte order, lists of at most 1000),
//! namespaces kept apart by key prefix, expired records never returned and
//! swept in the background. A write is acknowledged only once committed
//! durably; concurrent writes share one commit (group commit). The layout and
//! guarantees are in `kv/DESIGN.md`.
//!
//! Durable Object storage lives in the same file (`objects`: per-object
//! ordered keys, atomic transactions, persisted alarms in time order). A
//! write-ahead log makes commits durable with one aligned write (`wal`).
//!
//! What it does not do: know about V8 or workers (the runtime's bindings
//! call this API, and the runtime makes object ids and runs alarms), or
//! replicate across nodes.

mod encoding;
#[cfg(test)]
mod fuzz_tests;
pub mod limits;
pub mod objects;
mod store;
mod wal;

pub use encoding::Record;
pub use limits::LimitError;
pub use store::{
    now_secs, Clock, GetError, ListError, ListOptions, ListPage, ListedKey, OpenError, PutError, PutOptions, Stopped,
    Store, StoreConfig,
};
