//! Queue storage on a real store: sends durable across a reopen, leases
//! that hide messages until they run out or a restart releases them, acks,
//! retries and dead letters.

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

#[tokio::test]
async fn messages_are_leased_acked_and_retried_and_survive_a_reopen() {
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

    let leased = queues::lease(storage, "jobs", 1_000, 10, 30_000).await.unwrap();
    let bodies: Vec<&[u8]> = leased.iter().map(|m| &m.body[..]).collect();
    assert_eq!(bodies, [b"a", b"b"], "the delayed one is not visible yet");
    assert!(leased.iter().all(|m| m.attempts == 1 && m.timestamp_ms == 1_000 && m.content_type == "text"));
    // Leased: invisible to the next lease.
    assert!(queues::lease(storage, "jobs", 2_000, 10, 30_000).await.unwrap().is_empty());

    let settlement =
        Settlement { acks: vec![leased[0].clone()], retries: vec![(leased[1].clone(), 3_000)], ..Default::default() };
    queues::settle(storage, "jobs", settlement, None, 2_000).await.unwrap();
    drop(store);

    // After a reopen: "a" is gone, "b" comes back at 3 s with its attempt
    // counted, "later" at 6 s.
    let store = open(&dir);
    let storage: &dyn ObjectStorage = &store;
    assert_eq!(queues::next_visible(storage, "jobs").await.unwrap(), Some(3_000));
    let again = queues::lease(storage, "jobs", 6_000, 10, 30_000).await.unwrap();
    let seen: Vec<(&[u8], u32)> = again.iter().map(|m| (&m.body[..], m.attempts)).collect();
    assert_eq!(seen, [(&b"b"[..], 2), (&b"later"[..], 1)]);
    // A lease that runs out gives the message back.
    let expired = queues::lease(storage, "jobs", 36_001, 10, 30_000).await.unwrap();
    assert_eq!(expired.len(), 2);
    assert!(expired.iter().all(|m| m.attempts >= 2));
    assert_eq!(queues::lease(storage, "other", 1_000, 10, 1_000).await.unwrap().len(), 1);
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
    assert_eq!(queues::lease(storage, "jobs", 0, 1, 1).await.unwrap()[0].body.len(), MAX_MESSAGE_BYTES);
}

#[tokio::test]
async fn a_restart_releases_leases_but_not_delays_and_dead_letters_keep_their_id() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let storage: &dyn ObjectStorage = &store;
    queues::send(storage, "jobs", vec![message("a", 0), message("b", 0), message("delayed", 10_000)], 1_000)
        .await
        .unwrap();
    assert_eq!(queues::due(storage, "jobs", 1_000, 10).await.unwrap(), (2, Some(1_000)));
    assert_eq!(queues::due(storage, "jobs", 1_000, 1).await.unwrap(), (1, Some(1_000)));
    let leased = queues::lease(storage, "jobs", 1_000, 10, 60_000).await.unwrap();
    assert_eq!(leased.len(), 2);
    assert_eq!(queues::due(storage, "jobs", 2_000, 10).await.unwrap(), (0, None));
    drop(store);

    // The node died holding the lease: its successor gives both back now,
    // attempts counted; the delayed message keeps its time.
    let store = open(&dir);
    let storage: &dyn ObjectStorage = &store;
    assert_eq!(queues::release_leases(storage, "jobs", 2_000, 60_000).await.unwrap(), 2);
    assert_eq!(queues::release_leases(storage, "jobs", 2_000, 60_000).await.unwrap(), 0);
    let again = queues::lease(storage, "jobs", 2_000, 10, 60_000).await.unwrap();
    let seen: Vec<(&[u8], u32)> = again.iter().map(|m| (&m.body[..], m.attempts)).collect();
    assert_eq!(seen, [(&b"a"[..], 2), (&b"b"[..], 2)]);

    // Without a dead-letter queue, dead letters are refused and nothing moves.
    let settlement = Settlement { dead_letters: vec![again[0].clone()], ..Default::default() };
    assert!(matches!(
        queues::settle(storage, "jobs", settlement, None, 3_000).await,
        Err(QueueError::NoDeadLetterQueue)
    ));
    let settlement =
        Settlement { dead_letters: vec![again[0].clone()], acks: vec![again[1].clone()], ..Default::default() };
    queues::settle(storage, "jobs", settlement, Some("jobs-dlq"), 3_000).await.unwrap();
    let dead = queues::lease(storage, "jobs-dlq", 3_000, 10, 1_000).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].id.as_str(), dead[0].timestamp_ms, dead[0].attempts), (again[0].id.as_str(), 1_000, 1));
    assert_eq!(&dead[0].body[..], b"a");
    // Only the delayed message is left.
    assert_eq!(queues::next_visible(storage, "jobs").await.unwrap(), Some(11_000));
}
