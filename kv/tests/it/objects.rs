//! Durable Object storage: per-object key spaces, ordered lists, atomic
//! transactions, alarms that survive a reopen.

use bytes::Bytes;
use outpost_kv::objects::{ObjectError, ObjectKey, ObjectLimitError, ObjectListOptions, ObjectWrite};
use outpost_kv::{Store, StoreConfig};

fn open(dir: &tempfile::TempDir) -> Store {
    Store::open(&dir.path().join("kv.redb"), StoreConfig::default()).unwrap()
}

fn object(n: u8) -> ObjectKey {
    ObjectKey { class: "Counter".into(), id: [n; 32] }
}

fn put(key: &str, value: &str) -> ObjectWrite {
    ObjectWrite::Put(key.as_bytes().to_vec(), Bytes::copy_from_slice(value.as_bytes()))
}

fn names(entries: &[(Vec<u8>, Bytes)]) -> Vec<String> {
    entries.iter().map(|(k, _)| String::from_utf8(k.clone()).unwrap()).collect()
}

#[tokio::test]
async fn objects_have_their_own_keys() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.object_transaction(&object(1), vec![put("count", "1"), put("name", "one")]).await.unwrap();
    store.object_transaction(&object(2), vec![put("count", "2")]).await.unwrap();
    let values = store.object_get(&object(1), &[b"count".to_vec(), b"name".to_vec(), b"nope".to_vec()]).unwrap();
    assert_eq!(values, vec![Some(Bytes::from("1")), Some(Bytes::from("one")), None]);
    assert_eq!(store.object_get(&object(2), &[b"name".to_vec()]).unwrap(), vec![None]);
    assert_eq!(store.object_delete(&object(1), &[b"name".to_vec(), b"nope".to_vec()]).await.unwrap(), 1);
    store.object_delete_all(&object(1)).await.unwrap();
    assert!(store.object_list(&object(1), ObjectListOptions::default()).unwrap().is_empty());
    assert_eq!(names(&store.object_list(&object(2), ObjectListOptions::default()).unwrap()), ["count"]);
}

#[tokio::test]
async fn list_orders_and_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let keys = ["a", "b", "ba", "bb", "c", "d"];
    store.object_transaction(&object(1), keys.iter().map(|k| put(k, k)).collect()).await.unwrap();
    let list = |options| names(&store.object_list(&object(1), options).unwrap());
    assert_eq!(list(ObjectListOptions::default()), keys);
    assert_eq!(list(ObjectListOptions { prefix: Some(b"b".to_vec()), ..Default::default() }), ["b", "ba", "bb"]);
    assert_eq!(
        list(ObjectListOptions { start: Some(b"b".to_vec()), end: Some(b"c".to_vec()), ..Default::default() }),
        ["b", "ba", "bb"]
    );
    assert_eq!(list(ObjectListOptions { reverse: true, limit: Some(2), ..Default::default() }), ["d", "c"]);
    assert_eq!(
        list(ObjectListOptions { start: Some(b"c".to_vec()), end: Some(b"b".to_vec()), ..Default::default() }),
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn a_transaction_is_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.object_transaction(&object(1), vec![put("kept", "before")]).await.unwrap();
    let too_big = ObjectWrite::Put(b"big".to_vec(), Bytes::from(vec![0u8; 128 * 1024 + 1]));
    let err =
        store.object_transaction(&object(1), vec![put("kept", "after"), put("new", "x"), too_big]).await.unwrap_err();
    assert!(matches!(err, ObjectError::Limit(ObjectLimitError::ValueTooLarge(_))), "{err}");
    let values = store.object_get(&object(1), &[b"kept".to_vec(), b"new".to_vec()]).unwrap();
    assert_eq!(values, vec![Some(Bytes::from("before")), None]);
}

#[tokio::test]
async fn alarms_persist_and_come_due_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.set_alarm(&object(1), Some(5_000)).await.unwrap();
    store.set_alarm(&object(2), Some(1_000)).await.unwrap();
    store.set_alarm(&object(3), Some(9_000)).await.unwrap();
    store.set_alarm(&object(3), None).await.unwrap();
    drop(store);
    let store = open(&dir);
    assert_eq!(store.get_alarm(&object(1)).unwrap(), Some(5_000));
    assert_eq!(store.get_alarm(&object(3)).unwrap(), None);
    let due: Vec<_> = store.due_alarms(6_000).unwrap().into_iter().map(|(o, at)| (o.id[0], at)).collect();
    assert_eq!(due, vec![(2, 1_000), (1, 5_000)]);
    assert!(store.due_alarms(999).unwrap().is_empty());
    assert_eq!(store.next_alarm().unwrap(), Some(1_000));
}

#[tokio::test]
async fn moving_an_alarm_keeps_one_entry_and_clearing_is_conditional() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.set_alarm(&object(1), Some(1_000)).await.unwrap();
    // The handler of the 1_000 alarm sets a new one: clearing the old one
    // afterwards must not remove it.
    store.set_alarm(&object(1), Some(7_000)).await.unwrap();
    store.replace_alarm_if(&object(1), 1_000, None).await.unwrap();
    assert_eq!(store.get_alarm(&object(1)).unwrap(), Some(7_000));
    assert!(store.due_alarms(6_999).unwrap().is_empty(), "the moved alarm left no stale entry");
    assert_eq!(store.due_alarms(7_000).unwrap().len(), 1);
    store.replace_alarm_if(&object(1), 7_000, Some(9_000)).await.unwrap();
    assert_eq!(store.due_alarms(9_000).unwrap().into_iter().map(|(_, at)| at).collect::<Vec<_>>(), vec![9_000]);
    store.replace_alarm_if(&object(1), 9_000, None).await.unwrap();
    assert_eq!(store.get_alarm(&object(1)).unwrap(), None);
    assert_eq!(store.next_alarm().unwrap(), None);
}
