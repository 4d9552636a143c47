//! The KV API: semantics, limits, namespaces, expiration, persistence.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use outpost_kv::{LimitError, ListOptions, PutError, PutOptions, Store, StoreConfig};

fn open(dir: &tempfile::TempDir) -> Store {
    Store::open(&dir.path().join("kv.redb"), StoreConfig::default()).unwrap()
}

fn put_opts() -> PutOptions {
    PutOptions::default()
}

#[tokio::test]
async fn put_get_delete_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store
        .put("ns", b"a", "one".into(), PutOptions { metadata: Some(br#"{"m":1}"#.to_vec()), ..put_opts() })
        .await
        .unwrap();
    let record = store.get("ns", b"a").unwrap().unwrap();
    assert_eq!(&record.value[..], b"one");
    assert_eq!(record.metadata.as_deref(), Some(&br#"{"m":1}"#[..]));
    store.put("ns", b"a", "two".into(), put_opts()).await.unwrap();
    assert_eq!(&store.get("ns", b"a").unwrap().unwrap().value[..], b"two");
    store.put("ns", b"gone", "x".into(), put_opts()).await.unwrap();
    store.delete("ns", b"gone").await.unwrap();
    assert!(store.get("ns", b"gone").unwrap().is_none());
    drop(store);
    // A fresh process-like open (empty cache) sees the same data.
    let store = open(&dir);
    assert_eq!(&store.get("ns", b"a").unwrap().unwrap().value[..], b"two");
    assert!(store.get("ns", b"gone").unwrap().is_none());
}

#[tokio::test]
async fn values_too_large_for_the_log_and_the_log_filling_up() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.put("ns", b"before", "small".into(), put_opts()).await.unwrap();
    // Larger than the whole log: committed to redb directly.
    let big = vec![7u8; 9 << 20];
    store.put("ns", b"big", big.clone().into(), put_opts()).await.unwrap();
    store.put("ns", b"after", "small".into(), put_opts()).await.unwrap();
    // Enough 100 KiB writes to fill the 8 MiB log more than twice over.
    for i in 0..200u32 {
        store.put("ns", format!("fill-{i:03}").as_bytes(), vec![i as u8; 100 << 10].into(), put_opts()).await.unwrap();
    }
    drop(store);
    let store = open(&dir);
    assert_eq!(store.get("ns", b"big").unwrap().unwrap().value.len(), big.len());
    assert_eq!(&store.get("ns", b"before").unwrap().unwrap().value[..], b"small");
    assert_eq!(&store.get("ns", b"after").unwrap().unwrap().value[..], b"small");
    for i in 0..200u32 {
        let record = store.get("ns", format!("fill-{i:03}").as_bytes()).unwrap().unwrap();
        assert!(record.value.len() == 100 << 10 && record.value[0] == i as u8);
    }
}

#[tokio::test]
async fn namespaces_are_separate() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.put("a", b"k", "from a".into(), put_opts()).await.unwrap();
    store.put("ab", b"k", "from ab".into(), put_opts()).await.unwrap();
    assert_eq!(&store.get("a", b"k").unwrap().unwrap().value[..], b"from a");
    assert!(store.get("b", b"k").unwrap().is_none());
    let listed = store.list("a", ListOptions::default()).unwrap();
    assert_eq!(listed.len(), 1);
}

#[tokio::test]
async fn limits_are_enforced_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let err = store.put("ns", b"", "v".into(), put_opts()).await.unwrap_err();
    assert!(matches!(err, PutError::Limit(LimitError::EmptyKey)), "{err}");
    let err = store.put("ns", &[b'k'; 513], "v".into(), put_opts()).await.unwrap_err();
    assert_eq!(err.to_string(), "key names must be at most 512 bytes long, got 513");
    let big = bytes::Bytes::from(vec![0u8; 25 * 1024 * 1024 + 1]);
    assert!(matches!(store.put("ns", b"k", big, put_opts()).await, Err(PutError::Limit(LimitError::ValueTooLarge(_)))));
    let meta = PutOptions { metadata: Some(vec![b'x'; 1025]), ..put_opts() };
    assert!(matches!(
        store.put("ns", b"k", "v".into(), meta).await,
        Err(PutError::Limit(LimitError::MetadataTooLarge(1025)))
    ));
    let ttl = PutOptions { expiration_ttl: Some(30), ..put_opts() };
    assert!(matches!(store.put("ns", b"k", "v".into(), ttl).await, Err(PutError::Limit(LimitError::TtlTooShort(30)))));
    assert!(store.list("ns", ListOptions { limit: Some(1001), ..Default::default() }).is_err());
    assert!(store.list("ns", ListOptions { cursor: Some("not hex".into()), ..Default::default() }).is_err());
    // Nothing was written by the refused puts.
    assert!(store.get("ns", b"k").unwrap().is_none());
    // The largest allowed value goes through.
    let max = bytes::Bytes::from(vec![7u8; 25 * 1024 * 1024]);
    store.put("ns", b"max", max, put_opts()).await.unwrap();
    assert_eq!(store.get("ns", b"max").unwrap().unwrap().value.len(), 25 * 1024 * 1024);
}

#[tokio::test]
async fn list_pages_in_byte_order_with_prefix_and_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    for key in ["b/2", "a/1", "b/1", "b/10", "c", "b/\u{e9}"] {
        store.put("ns", key.as_bytes(), "v".into(), put_opts()).await.unwrap();
    }
    let all: Vec<String> = store
        .list("ns", ListOptions::default())
        .unwrap()
        .keys()
        .map(|k| String::from_utf8(k.name.to_vec()).unwrap())
        .collect();
    assert_eq!(all, ["a/1", "b/1", "b/10", "b/2", "b/\u{e9}", "c"]);
    let first = store.list("ns", ListOptions { prefix: b"b/".to_vec(), limit: Some(2), cursor: None }).unwrap();
    assert_eq!(first.len(), 2);
    assert!(!first.list_complete);
    let second =
        store.list("ns", ListOptions { prefix: b"b/".to_vec(), limit: Some(2), cursor: first.cursor }).unwrap();
    let names: Vec<_> = second.keys().map(|k| String::from_utf8(k.name.to_vec()).unwrap()).collect();
    assert_eq!(names, ["b/2", "b/\u{e9}"]);
    assert!(second.list_complete && second.cursor.is_none());
}

#[tokio::test]
async fn expired_records_are_never_returned_and_are_swept() {
    let dir = tempfile::tempdir().unwrap();
    let now = Arc::new(AtomicU64::new(1_000_000));
    let clock = now.clone();
    let config = StoreConfig { clock: Arc::new(move || clock.load(Ordering::Relaxed)), ..StoreConfig::default() };
    let store = Store::open(&dir.path().join("kv.redb"), config).unwrap();
    store.put("ns", b"short", "v".into(), PutOptions { expiration_ttl: Some(60), ..put_opts() }).await.unwrap();
    store.put("ns", b"fixed", "v".into(), PutOptions { expiration: Some(1_000_120), ..put_opts() }).await.unwrap();
    store.put("ns", b"forever", "v".into(), put_opts()).await.unwrap();
    assert_eq!(store.get("ns", b"short").unwrap().unwrap().expiration, Some(1_000_060));
    now.store(1_000_060, Ordering::Relaxed);
    assert!(store.get("ns", b"short").unwrap().is_none(), "expired at its expiration second");
    let names: Vec<_> = store.list("ns", ListOptions::default()).unwrap().keys().map(|k| k.name.to_vec()).collect();
    assert_eq!(names, [b"fixed".to_vec(), b"forever".to_vec()]);
    assert_eq!(store.sweep_expired().await.unwrap(), 1);
    now.store(1_000_200, Ordering::Relaxed);
    assert_eq!(store.sweep_expired().await.unwrap(), 1);
    // A key re-put without expiration loses its old expiry entry.
    store.put("ns", b"again", "v".into(), PutOptions { expiration_ttl: Some(60), ..put_opts() }).await.unwrap();
    store.put("ns", b"again", "v".into(), put_opts()).await.unwrap();
    now.store(1_001_000, Ordering::Relaxed);
    assert_eq!(store.sweep_expired().await.unwrap(), 0);
    assert!(store.get("ns", b"again").unwrap().is_some());
    assert!(store.get("ns", b"fixed").unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_are_all_durable() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let tasks: Vec<_> = (0..64)
        .map(|writer| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..20 {
                    store
                        .put(
                            "ns",
                            format!("{writer}-{i}").as_bytes(),
                            format!("{writer}:{i}").into(),
                            PutOptions::default(),
                        )
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    drop(store);
    let store = open(&dir);
    for writer in 0..64 {
        for i in 0..20 {
            let record = store.get("ns", format!("{writer}-{i}").as_bytes()).unwrap().unwrap();
            assert_eq!(record.value, format!("{writer}:{i}").as_bytes());
        }
    }
}

/// Writes are acknowledged before they reach redb (the apply thread brings
/// them there meanwhile): a read that follows the acknowledgement must still
/// see the write, from the tables (a cache of size zero keeps almost
/// nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_write_is_visible_to_the_next_read() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        Store::open(&dir.path().join("kv.redb"), StoreConfig { cache_bytes: 0, ..StoreConfig::default() }).unwrap();
    let object = outpost_kv::objects::ObjectKey { class: "Counter".into(), id: [7; 32] };
    let tasks: Vec<_> = (0..8)
        .map(|writer| {
            let store = store.clone();
            let object = object.clone();
            tokio::spawn(async move {
                let key = format!("w{writer}");
                for i in 0..200u32 {
                    let value = i.to_string();
                    store.put("ns", key.as_bytes(), value.clone().into(), PutOptions::default()).await.unwrap();
                    assert_eq!(store.get("ns", key.as_bytes()).unwrap().unwrap().value, value.as_bytes());
                    let listed = store.list("ns", ListOptions::default()).unwrap();
                    assert!(listed.keys().any(|k| k.name == key.as_bytes()), "list misses {key} after its put");
                    let write = outpost_kv::objects::ObjectWrite::Put(key.clone().into_bytes(), value.clone().into());
                    store.object_transaction(&object, vec![write]).await.unwrap();
                    let read = store.object_get(&object, &[key.clone().into_bytes()]).unwrap();
                    assert_eq!(read[0].as_deref(), Some(value.as_bytes()));
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

/// Readers that miss the cache fill it with what they read while writers
/// replace the same keys: a fill must never put back a value older than an
/// applied write. A small cache makes misses (and so fills) frequent; every
/// reader checks that each key's value never goes backwards, and every
/// writer that it reads its own write.
#[test]
fn cache_fills_never_bring_back_older_values() {
    const KEYS: u64 = 48;
    let dir = tempfile::tempdir().unwrap();
    let store =
        Store::open(&dir.path().join("kv.redb"), StoreConfig { cache_bytes: 2048, ..StoreConfig::default() }).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let store = store.clone();
            let done = done.clone();
            std::thread::spawn(move || {
                let mut last = vec![0u64; KEYS as usize];
                let mut reads = 0u64;
                while !done.load(Ordering::Relaxed) {
                    for key in 0..KEYS {
                        let Some(record) = store.get("ns", format!("k{key}").as_bytes()).unwrap() else { continue };
                        let value: u64 = std::str::from_utf8(&record.value).unwrap().parse().unwrap();
                        assert!(value >= last[key as usize], "k{key} went back from {} to {value}", last[key as usize]);
                        last[key as usize] = value;
                        reads += 1;
                    }
                }
                reads
            })
        })
        .collect();
    runtime.block_on(async {
        let writers: Vec<_> = (0..2u64)
            .map(|writer| {
                let store = store.clone();
                tokio::spawn(async move {
                    // Each writer owns half the keys and counts up.
                    for round in 1..=150u64 {
                        for key in (writer..KEYS).step_by(2) {
                            let name = format!("k{key}");
                            let value = round.to_string();
                            store
                                .put("ns", name.as_bytes(), value.clone().into(), PutOptions::default())
                                .await
                                .unwrap();
                            let read = store.get("ns", name.as_bytes()).unwrap().unwrap();
                            assert_eq!(read.value, value.as_bytes(), "{name} after its put");
                        }
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.await.unwrap();
        }
    });
    done.store(true, Ordering::Relaxed);
    for reader in readers {
        assert!(reader.join().unwrap() > 0);
    }
}
