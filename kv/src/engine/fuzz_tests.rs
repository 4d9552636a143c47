//! KV keys, list prefixes and cursors fuzzed against a real store: whatever
//! a worker passes, a list of one namespace returns only that namespace's
//! keys under the prefix, in order, and nothing panics.

use std::sync::OnceLock;

use bytes::Bytes;

use crate::engine::encoding::{decode_header, decode_record, encode_record};
use crate::namespaces::{decode_cursor, encode_cursor};
use crate::{limits, ListOptions, PutOptions, Store, StoreConfig};

/// Keys stored in namespace "a" (and, to tell them apart, "b" and "ab").
const KEYS: &[&[u8]] = &[b"", b"a", b"a/1", b"a/2", b"b", b"user:1", b"user:2", b"\xff\xff", b"\x00", b"zz"];

fn store() -> &'static Store {
    static STORE: OnceLock<(Store, tempfile::TempDir)> = OnceLock::new();
    &STORE
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(&dir.path().join("kv.redb"), StoreConfig::default()).unwrap();
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            for namespace in ["a", "b", "ab"] {
                for key in KEYS.iter().filter(|key| limits::check_key(key).is_ok()) {
                    let value = Bytes::from(format!("{namespace}:{}", String::from_utf8_lossy(key)));
                    runtime.block_on(store.put(namespace, key, value, PutOptions::default())).unwrap();
                }
            }
            (store, dir)
        })
        .0
}

/// Input: `prefix \n cursor \n limit`, any bytes.
fn check(input: &[u8]) -> u64 {
    let mut parts = input.splitn(3, |b| *b == b'\n');
    let prefix = parts.next().unwrap_or_default().to_vec();
    let cursor = parts.next().map(|c| String::from_utf8_lossy(c).into_owned());
    let limit = parts.next().and_then(|l| std::str::from_utf8(l).ok()?.trim().parse::<usize>().ok());

    // Keys: the limits decide, and only they.
    let key_ok = limits::check_key(&prefix).is_ok();
    assert_eq!(key_ok, !prefix.is_empty() && prefix.len() <= 512 && prefix != b"." && prefix != b"..");
    // Cursors round-trip (hex, any case in, lower case out).
    if let Some(cursor) = &cursor {
        if let Some(key) = decode_cursor(cursor) {
            assert_eq!(encode_cursor(&key), cursor.to_ascii_lowercase());
        }
    }
    // Records: what decodes re-encodes to itself.
    if let Some(record) = decode_record(input) {
        assert_eq!(decode_record(&encode_record(&record)), Some(record.clone()));
        let (expiration, metadata) = decode_header(input).expect("a record has a header");
        assert_eq!((expiration, metadata.map(<[u8]>::to_vec)), (record.expiration, record.metadata.clone()));
    }

    let options = ListOptions { prefix: prefix.clone(), limit, cursor: cursor.clone() };
    let page = match store().list("a", options) {
        Ok(page) => page,
        Err(err) => return 1 + (err.to_string().len() as u64 % 7),
    };
    let names: Vec<Vec<u8>> = page.keys().map(|key| key.name.to_vec()).collect();
    for name in &names {
        assert!(KEYS.contains(&name.as_slice()), "a key of another namespace: {name:?}");
        assert!(name.starts_with(&prefix), "{name:?} is not under the prefix {prefix:?}");
        if let Some(after) = cursor.as_deref().and_then(decode_cursor) {
            assert!(*name > after, "{name:?} is not after the cursor's key {after:?}");
        }
    }
    assert!(names.windows(2).all(|pair| pair[0] < pair[1]), "out of order: {names:?}");
    if let Some(limit) = limit {
        assert!(names.len() <= limit);
    }
    100 + names.len() as u64 * 2 + u64::from(page.list_complete)
}

#[test]
fn fuzz_keys_prefixes_and_cursors() {
    let seeds: &[&[u8]] = &[
        b"",
        b"a\n\n",
        b"user:\n\n1",
        b"user:\n757365723a31\n1",
        b"user:\n61\n",
        b"\n61\n2",
        b"\n7a7a7a\n",
        b"a/\nzz\n",
        b".\n\n",
        b"\xff\n\n",
    ];
    let dictionary: &[&[u8]] = &[b"\n", b"user:", b"61", b"7a", b"ff", b"00", b"1000", b"1001", b"0"];
    let report = outpost_fuzz::run(&outpost_fuzz::Target { name: "kv-list", seeds, dictionary }, check);
    assert!(report.outcomes > 1, "{report:?}");
}
