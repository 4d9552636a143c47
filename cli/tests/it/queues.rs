//! Queues, the producing side: `send` and `sendBatch` through a real
//! `outpost dev`, their errors and limits, and the messages found durable
//! in the store after the process is killed.

use outpost_kv::objects::ObjectStorage;

use crate::support::{self, worker, Dev};

const PRODUCER: &str = r#"
export default {
  async fetch(request, env) {
    const path = new URL(request.url).pathname;
    const tryIt = async (what) => {
      try {
        await what();
        return "ok";
      } catch (error) {
        return `${error.name}: ${error.message}`;
      }
    };
    if (path === "/send") {
      await env.JOBS.send({ task: "resize", id: 7 });
      await env.JOBS.send("plain", { contentType: "text" });
      await env.JOBS.send(new Uint8Array([1, 2, 3]), { contentType: "bytes", delaySeconds: 60 });
      await env.JOBS.send(new Map([["k", 1]]), { contentType: "v8" });
      await env.JOBS.sendBatch([{ body: 1 }, { body: 2, delaySeconds: 0 }], { delaySeconds: 30 });
      return new Response("sent");
    }
    return Response.json({
      undefinedBody: await tryIt(() => env.JOBS.send(undefined)),
      badType: await tryIt(() => env.JOBS.send("x", { contentType: "xml" })),
      textNeedsString: await tryIt(() => env.JOBS.send(5, { contentType: "text" })),
      tooBig: await tryIt(() => env.JOBS.send("x".repeat(128_001), { contentType: "text" })),
      emptyBatch: await tryIt(() => env.JOBS.sendBatch([])),
      bigBatch: await tryIt(() => env.JOBS.sendBatch(Array.from({ length: 101 }, (_, i) => ({ body: i })))),
      heavyBatch: await tryIt(() =>
        env.JOBS.sendBatch(Array.from({ length: 3 }, () => ({ body: "y".repeat(100_000), contentType: "text" })))
      ),
      badDelay: await tryIt(() => env.JOBS.send(1, { delaySeconds: 43_201 })),
    });
  },
};
"#;

#[tokio::test]
async fn sends_are_durable_and_their_errors_are_cloudflares() {
    let dir = worker(&[
        ("outpost.toml", "name = \"producer\"\n[[queues.producers]]\nqueue = \"jobs\"\nbinding = \"JOBS\"\n"),
        ("worker.js", PRODUCER),
    ]);
    let dev = Dev::start(dir.path(), &[]);
    let errors: serde_json::Value = serde_json::from_slice(&support::get(dev.addr, "/errors").await.body).unwrap();
    assert_eq!(errors["undefinedBody"], "TypeError: Message body cannot be undefined");
    assert_eq!(errors["badType"], "TypeError: Unsupported queue message content type: xml");
    assert!(errors["textNeedsString"].as_str().unwrap().starts_with("TypeError"), "{errors}");
    assert!(errors["tooBig"].as_str().unwrap().starts_with("RangeError: a queue message is at most 128000 bytes"));
    assert_eq!(errors["emptyBatch"], "TypeError: sendBatch() requires at least one message");
    assert!(errors["bigBatch"].as_str().unwrap().contains("at most 100 messages"), "{errors}");
    assert!(errors["heavyBatch"].as_str().unwrap().contains("at most 256000 bytes"), "{errors}");
    assert!(errors["badDelay"].as_str().unwrap().starts_with("RangeError"), "{errors}");
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    assert_eq!(support::get(dev.addr, "/send").await.text(), "sent");
    // SIGKILL: what the sends resolved for must be in the store.
    let data = dev.stop();
    let store = outpost_kv::Store::open(&data.path().join("kv.redb"), Default::default()).unwrap();
    let storage: &dyn ObjectStorage = &store;
    let later = before + 120_000;
    let messages = outpost_kv::queues::due(storage, "jobs", later, 100, &Default::default()).await.unwrap();
    let seen: Vec<(String, String)> = messages
        .iter()
        .filter(|m| m.content_type != "v8")
        .map(|m| (m.content_type.clone(), String::from_utf8_lossy(&m.body).into_owned()))
        .collect();
    assert_eq!(
        seen,
        [
            ("json".to_string(), "{\"task\":\"resize\",\"id\":7}".to_string()),
            ("text".to_string(), "plain".to_string()),
            ("json".to_string(), "2".to_string()),
            ("json".to_string(), "1".to_string()),
            ("bytes".to_string(), "\u{1}\u{2}\u{3}".to_string()),
        ],
        "ordered by when each becomes visible: now, then the batch's 30 s, then 60 s"
    );
    assert_eq!(messages.iter().filter(|m| m.content_type == "v8").count(), 1);
    assert!(messages.iter().all(|m| m.attempts == 1 && m.timestamp_ms >= before));
}
