//! Queue storage on a real store: sends durable across a reopen, messages
//! in flight left out of the next look (and due again after a crash), acks,
//! retries and dead letters.

use std::collections::HashSet;

use bytes::Bytes;
use outpost_kv::objects::ObjectStorage;
use outpost_kv::queues::{self, NewMessage, QueueError, Settlement, MAX_MESSAGE_BYTES};
use outpost_kv::{Store, StoreConfig};

fn open(dir: &tempfile::TempDir) -> Store {
    Store::open(&dir.path().join("kv.redb"), StoreConfig::default()).unwrap()
}

fn message(body: &str, delay_ms: u64) -> NewMessage {
    NewMessage { body: Bytes::copy_from_slice(body.as_bytes()), content_type: "text".into(), delay_ms }
}

fn keys(messages: &[queues::QueueMessage]) -> HashSet<Vec<u8>> {
    messages.iter().map(|m| m.key.clone()).collect()
}

#[tokio::test]
async fn messages_are_handed_out_acked_and_retried_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let storage: &dyn ObjectStorage = &store;
    let ids = queues::send(storage, "jobs", vec![message("a", 0), message("b", 0), message("later", 5_000)], 1_000)
        .await
        .unwrap();
    assert_eq!(ids.len(), 3);
    assert_ne!(ids[0], ids[1]);
    // Another queue is apart.
    queues::send(storage, "other", vec![message("x", 0)], 1_000).await.unwrap();

    let none = HashSet::new();
    let handed = queues::due(storage, "jobs", 1_000, 10, &none).await.unwrap();
    let bodies: Vec<&[u8]> = handed.iter().map(|m| &m.body[..]).collect();
    assert_eq!(bodies, [b"a", b"b"], "the delayed one is not visible yet");
    assert!(handed.iter().all(|m| m.attempts == 1 && m.timestamp_ms == 1_000 && m.content_type == "text"));
    assert_eq!(handed[0].id, ids[0]);
    // In flight: left out of the next look, which still finds the others.
    assert!(queues::due(storage, "jobs", 2_000, 10, &keys(&handed)).await.unwrap().is_empty());
    let first = HashSet::from([handed[0].key.clone()]);
    assert_eq!(queues::due(storage, "jobs", 2_000, 1, &first).await.unwrap()[0].body, "b");

    let settlement =
        Settlement { acks: vec![handed[0].clone()], retries: vec![(handed[1].clone(), 3_000)], ..Default::default() };
    queues::settle(storage, "jobs", settlement, None, 2_000).await.unwrap();
    drop(store);

    // After a reopen: "a" is gone, "b" comes back at 3 s with its delivery
    // counted, "later" at 6 s.
    let store = open(&dir);
    let storage: &dyn ObjectStorage = &store;
    assert_eq!(queues::next_visible(storage, "jobs").await.unwrap(), Some(3_000));
    assert!(queues::due(storage, "jobs", 2_999, 10, &none).await.unwrap().is_empty());
    let again = queues::due(storage, "jobs", 6_000, 10, &none).await.unwrap();
    let seen: Vec<(&[u8], u32)> = again.iter().map(|m| (&m.body[..], m.attempts)).collect();
    assert_eq!(seen, [(&b"b"[..], 2), (&b"later"[..], 1)]);
    assert_eq!(queues::due(storage, "other", 1_000, 10, &none).await.unwrap().len(), 1);
}

#[tokio::test]
async fn messages_in_flight_at_a_crash_are_due_again_and_dead_letters_keep_their_id() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let storage: &dyn ObjectStorage = &store;
    let none = HashSet::new();
    queues::send(storage, "jobs", vec![message("a", 0), message("b", 0)], 1_000).await.unwrap();
    let handed = queues::due(storage, "jobs", 1_000, 10, &none).await.unwrap();
    assert_eq!(handed.len(), 2);
    // The node dies with both in flight, unsettled.
    drop(store);
    let store = open(&dir);
    let storage: &dyn ObjectStorage = &store;
    let again = queues::due(storage, "jobs", 2_000, 10, &none).await.unwrap();
    assert_eq!(keys(&again), keys(&handed));

    // Without a dead-letter queue, dead letters are refused and nothing moves.
    let settlement = Settlement { dead_letters: vec![again[0].clone()], ..Default::default() };
    assert!(matches!(
        queues::settle(storage, "jobs", settlement, None, 3_000).await,
        Err(QueueError::NoDeadLetterQueue)
    ));
    let settlement =
        Settlement { dead_letters: vec![again[0].clone()], acks: vec![again[1].clone()], ..Default::default() };
    queues::settle(storage, "jobs", settlement, Some("jobs-dlq"), 3_000).await.unwrap();
    let dead = queues::due(storage, "jobs-dlq", 3_000, 10, &none).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].id.as_str(), dead[0].timestamp_ms, dead[0].attempts), (again[0].id.as_str(), 1_000, 1));
    assert_eq!(&dead[0].body[..], b"a");
    assert_eq!(queues::next_visible(storage, "jobs").await.unwrap(), None);
}

#[tokio::test]
async fn an_oversized_message_is_refused_and_nothing_of_its_batch_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let storage: &dyn ObjectStorage = &store;
    let big =
        NewMessage { body: Bytes::from(vec![0; MAX_MESSAGE_BYTES + 1]), content_type: "bytes".into(), delay_ms: 0 };
    let err = queues::send(storage, "jobs", vec![message("fine", 0), big], 0).await.unwrap_err();
    assert!(matches!(err, QueueError::TooLarge(n) if n == MAX_MESSAGE_BYTES + 1));
    assert_eq!(queues::next_visible(storage, "jobs").await.unwrap(), None);
    let max = NewMessage { body: Bytes::from(vec![1; MAX_MESSAGE_BYTES]), content_type: "bytes".into(), delay_ms: 0 };
    queues::send(storage, "jobs", vec![max], 0).await.unwrap();
    assert_eq!(queues::due(storage, "jobs", 0, 1, &HashSet::new()).await.unwrap()[0].body.len(), MAX_MESSAGE_BYTES);
}
