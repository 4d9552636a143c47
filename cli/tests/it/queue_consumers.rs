//! Queues, the consuming side, through a real `outpost dev`: batches that
//! close on size or timeout, bodies of every content type, acks, retries
//! with their delays, dead letters, drops, first-call-wins, concurrency,
//! and the configuration errors.

use std::time::{Duration, Instant};

use crate::support::{self, worker, Dev};

const CONSUMER: &str = r#"
let inFlight = 0;
let mostInFlight = 0;
const shown = (body) =>
  body instanceof Uint8Array ? { bytes: [...body] } : body instanceof Map ? { map: Object.fromEntries(body) } : body;
const put = (env, key, value) => env.SEEN.put(key, JSON.stringify(value));

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    if (url.pathname === "/send") {
      const queue = url.searchParams.get("queue");
      const bodies = JSON.parse(url.searchParams.get("bodies"));
      await env[queue].sendBatch(bodies.map((body) => ({ body })));
      return new Response("sent");
    }
    if (url.pathname === "/send-kinds") {
      await env.basic.sendBatch([
        { body: { a: 1 } },
        { body: "text body", contentType: "text" },
        { body: new Uint8Array([1, 2, 3]), contentType: "bytes" },
        { body: new Map([["k", 1]]), contentType: "v8" },
      ]);
      return new Response("sent");
    }
    if (url.pathname === "/seen") {
      const seen = {};
      let cursor;
      do {
        const page = await env.SEEN.list({ prefix: url.searchParams.get("prefix"), cursor });
        for (const key of page.keys) seen[key.name] = JSON.parse(await env.SEEN.get(key.name));
        cursor = page.list_complete ? undefined : page.cursor;
      } while (cursor);
      return Response.json(seen);
    }
    return new Response("not found", { status: 404 });
  },

  async queue(batch, env, ctx) {
    const first = batch.messages[0];
    switch (batch.queue) {
      case "basic":
        await put(env, `basic:${first.id}`, batch.messages.map((m) => ({
          queue: batch.queue,
          id: m.id,
          body: shown(m.body),
          attempts: m.attempts,
          isDate: m.timestamp instanceof Date,
          age: Date.now() - m.timestamp.getTime(),
        })));
        return;
      case "sizes":
        ctx.waitUntil(put(env, `sizes:${first.id}`, batch.messages.map((m) => m.body)));
        return;
      case "flaky":
        for (const m of batch.messages) {
          await put(env, `flaky:${m.body}:${m.attempts}`, m.id);
          if (m.body === "ack-me") m.ack();
        }
        throw new Error("flaky consumer");
      case "dead":
        for (const m of batch.messages) await put(env, `dead:${m.body}`, { id: m.id, attempts: m.attempts });
        return;
      case "drops":
        for (const m of batch.messages) await put(env, `drops:${m.body}:${m.attempts}`, 1);
        batch.retryAll();
        return;
      case "first":
        for (const m of batch.messages) {
          await put(env, `first:${m.body}:${m.attempts}`, 1);
          if (m.body === "ack-then-retry") {
            m.ack();
            m.retry();
          } else if (m.attempts === 1) {
            m.retry({ delaySeconds: 0 });
          }
        }
        // After retry(), the message's own call stands; the batch's second call is ignored.
        batch.ackAll();
        batch.retryAll();
        return;
      case "delayed":
        for (const m of batch.messages) {
          await put(env, `delayed:${m.body}:${m.attempts}`, Date.now());
          if (m.attempts === 1) m.retry();
        }
        return;
      case "waits":
        ctx.waitUntil(Promise.reject(new Error("waitUntil work failed")));
        for (const m of batch.messages) await put(env, `waits:${m.body}:${m.attempts}`, 1);
        return;
      case "slow":
        inFlight++;
        mostInFlight = Math.max(mostInFlight, inFlight);
        await new Promise((resolve) => setTimeout(resolve, 100));
        inFlight--;
        await put(env, `slow:${first.body}`, mostInFlight);
        return;
    }
  },
};
"#;

const QUEUES: [&str; 9] = ["basic", "sizes", "flaky", "dead", "drops", "first", "delayed", "waits", "slow"];

fn config() -> String {
    let mut toml = String::from("name = \"consumer\"\n[[kv_namespaces]]\nbinding = \"SEEN\"\nid = \"seen\"\n");
    for queue in QUEUES {
        toml += &format!("[[queues.producers]]\nqueue = \"{queue}\"\nbinding = \"{queue}\"\n");
    }
    toml += r#"
[[queues.consumers]]
queue = "basic"
max_batch_timeout = 0
[[queues.consumers]]
queue = "sizes"
max_batch_size = 3
max_batch_timeout = 1
[[queues.consumers]]
queue = "flaky"
max_batch_timeout = 0
max_retries = 2
dead_letter_queue = "dead"
[[queues.consumers]]
queue = "dead"
max_batch_timeout = 0
[[queues.consumers]]
queue = "drops"
max_batch_timeout = 0
max_retries = 1
[[queues.consumers]]
queue = "first"
max_batch_timeout = 0
[[queues.consumers]]
queue = "delayed"
max_batch_timeout = 0
retry_delay = 1
[[queues.consumers]]
queue = "waits"
max_batch_timeout = 0
max_retries = 1
[[queues.consumers]]
queue = "slow"
max_batch_size = 1
max_batch_timeout = 0
max_concurrency = 1
"#;
    toml
}

async fn send(dev: &Dev, queue: &str, bodies: &[&str]) {
    let bodies = serde_json::to_string(bodies).unwrap();
    let path = format!("/send?queue={queue}&bodies={}", urlencode(&bodies));
    assert_eq!(support::get(dev.addr, &path).await.text(), "sent");
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

async fn seen(dev: &Dev, prefix: &str) -> serde_json::Map<String, serde_json::Value> {
    let reply = support::get(dev.addr, &format!("/seen?prefix={prefix}")).await;
    serde_json::from_slice::<serde_json::Value>(&reply.body).unwrap().as_object().unwrap().clone()
}

/// Waits until the consumer recorded `count` keys under `prefix`.
async fn seen_at_least(dev: &Dev, prefix: &str, count: usize) -> serde_json::Map<String, serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seen = seen(dev, prefix).await;
        if seen.len() >= count {
            return seen;
        }
        assert!(Instant::now() < deadline, "only {} of {count} under {prefix}: {seen:?}\n{}", seen.len(), dev.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn start() -> (tempfile::TempDir, Dev) {
    let dir = worker(&[("outpost.toml", &config()), ("worker.js", CONSUMER)]);
    let dev = Dev::start(dir.path(), &[]);
    (dir, dev)
}

#[tokio::test]
async fn batches_carry_every_content_type_and_close_on_size_or_timeout() {
    let (_dir, dev) = start();
    assert_eq!(support::get(dev.addr, "/send-kinds").await.text(), "sent");
    let batches = seen_at_least(&dev, "basic:", 1).await;
    let messages: Vec<&serde_json::Value> =
        batches.values().flat_map(|batch| batch.as_array().unwrap().iter()).collect();
    let bodies: Vec<&serde_json::Value> = messages.iter().map(|m| &m["body"]).collect();
    assert_eq!(
        bodies,
        [
            &serde_json::json!({ "a": 1 }),
            &serde_json::json!("text body"),
            &serde_json::json!({ "bytes": [1, 2, 3] }),
            &serde_json::json!({ "map": { "k": 1 } }),
        ]
    );
    for message in &messages {
        assert_eq!(message["queue"], "basic");
        assert_eq!(message["attempts"], 1);
        assert_eq!(message["isDate"], true);
        assert!(message["age"].as_i64().unwrap() < 10_000, "{message}");
        assert_eq!(message["id"].as_str().unwrap().len(), 32);
    }
    // Acked: never delivered again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(seen(&dev, "basic:").await.len(), batches.len());

    // Seven messages, batches of at most three: two full batches, then the
    // last one once it has waited max_batch_timeout (1 s).
    send(&dev, "sizes", &["1", "2", "3", "4", "5", "6", "7"]).await;
    let batches = seen_at_least(&dev, "sizes:", 3).await;
    let mut sizes: Vec<usize> = batches.values().map(|b| b.as_array().unwrap().len()).collect();
    sizes.sort();
    assert_eq!(sizes, [1, 3, 3], "{batches:?}");
    let mut all: Vec<String> =
        batches.values().flat_map(|b| b.as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string())).collect();
    all.sort();
    assert_eq!(all, ["1", "2", "3", "4", "5", "6", "7"]);
}

#[tokio::test]
async fn failures_retry_what_was_not_acked_then_dead_letter_or_drop() {
    let (_dir, dev) = start();
    send(&dev, "flaky", &["ack-me", "doomed"]).await;
    send(&dev, "drops", &["gone"]).await;
    // max_retries = 2: three deliveries, then the dead-letter queue, whose
    // consumer sees the same id from attempt 1.
    let dead = seen_at_least(&dev, "dead:", 1).await;
    let flaky = seen(&dev, "flaky:").await;
    let mut deliveries: Vec<&str> = flaky.keys().map(String::as_str).collect();
    deliveries.sort();
    assert_eq!(deliveries, ["flaky:ack-me:1", "flaky:doomed:1", "flaky:doomed:2", "flaky:doomed:3"]);
    assert_eq!(dead["dead:doomed"]["id"], flaky["flaky:doomed:1"]);
    assert_eq!(dead["dead:doomed"]["attempts"], 1);
    assert!(!dead.contains_key("dead:ack-me"));
    // max_retries = 1 and no dead-letter queue: two deliveries, then a log line.
    dev.wait_for_log("message dropped: its retries are spent and the queue has no dead-letter queue");
    let drops: Vec<String> = seen(&dev, "drops:").await.keys().cloned().collect();
    assert_eq!(drops, ["drops:gone:1", "drops:gone:2"]);
    // The handler's error is logged with the queue's batch.
    assert!(dev.logs().contains("flaky consumer"), "{}", dev.logs());

    // waitUntil() work that fails fails the batch: retried once, then dropped.
    send(&dev, "waits", &["w"]).await;
    let waits = seen_at_least(&dev, "waits:", 2).await;
    assert_eq!(waits.keys().cloned().collect::<Vec<_>>(), ["waits:w:1", "waits:w:2"]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(seen(&dev, "waits:").await.len(), 2);
    assert_eq!(seen(&dev, "flaky:").await.len(), 4, "nothing delivered after its verdict");
}

#[tokio::test]
async fn the_first_call_wins_and_retries_wait_their_delay() {
    let (_dir, dev) = start();
    send(&dev, "first", &["ack-then-retry", "retry-then-ack"]).await;
    let first = seen_at_least(&dev, "first:", 3).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut keys: Vec<String> = seen(&dev, "first:").await.keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, ["first:ack-then-retry:1", "first:retry-then-ack:1", "first:retry-then-ack:2"], "{first:?}");
    assert!(dev.logs().contains("retry() on message"), "the ignored call is warned about: {}", dev.logs());
    assert!(dev.logs().contains("retryAll() after ackAll() has no effect"), "{}", dev.logs());

    // retry_delay = 1: the second delivery comes a second after the first.
    send(&dev, "delayed", &["d"]).await;
    let delayed = seen_at_least(&dev, "delayed:", 2).await;
    let gap = delayed["delayed:d:2"].as_i64().unwrap() - delayed["delayed:d:1"].as_i64().unwrap();
    assert!(gap >= 1_000, "retried after {gap} ms");
}

#[tokio::test]
async fn max_concurrency_bounds_batches_in_flight() {
    let (_dir, dev) = start();
    send(&dev, "slow", &["1", "2", "3", "4", "5"]).await;
    let slow = seen_at_least(&dev, "slow:", 5).await;
    assert!(slow.values().all(|most| most == 1), "one batch at a time: {slow:?}");
}

#[test]
fn consumer_settings_out_of_bounds_fail_the_load_naming_them() {
    for (entry, message) in [
        ("queue = \"q\"\nmax_batch_size = 101", "max_batch_size is 1 to 100, got 101"),
        ("queue = \"q\"\nmax_batch_size = 0", "max_batch_size is 1 to 100, got 0"),
        ("queue = \"q\"\nmax_batch_timeout = 61", "max_batch_timeout is 0 to 60 seconds"),
        ("queue = \"q\"\nmax_retries = 101", "max_retries is 0 to 100"),
        ("queue = \"q\"\nmax_concurrency = 251", "max_concurrency is 1 to 250"),
        ("queue = \"q\"\nretry_delay = 43201", "retry_delay is 0 to 43200 seconds"),
        ("queue = \"q\"\ndead_letter_queue = \"q\"", "must be another queue's name"),
        ("queue = \"q\"\ntype = \"http_pull\"", "pull consumers (type = \"http_pull\") are not supported"),
        ("queue = \"q\"\n[[queues.consumers]]\nqueue = \"q\"", "the queue \"q\" is consumed twice"),
        ("queue = \"q\"\nmax_wait = 3", "unknown field `max_wait`"),
    ] {
        let toml = format!("name = \"c\"\n[[queues.consumers]]\n{entry}\n");
        let dir = worker(&[("outpost.toml", &toml), ("worker.js", "export default { queue() {} };\n")]);
        let stderr = support::failed_start(dir.path());
        assert!(stderr.contains(message), "{entry}: {stderr}");
    }
}

#[test]
fn two_workers_cannot_consume_one_queue() {
    let consumer = |name: &str| {
        worker(&[
            ("outpost.toml", &format!("name = \"{name}\"\n[[queues.consumers]]\nqueue = \"jobs\"\n")),
            ("worker.js", "export default { queue() {}, fetch() { return new Response('x'); } };\n"),
        ])
    };
    let (a, b) = (consumer("a"), consumer("b"));
    let output = std::process::Command::new(support::outpost_binary())
        .arg("dev")
        .args([a.path(), b.path()])
        .args(["--port", "0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("the queue \"jobs\" already has a consumer"), "{stderr}");
}

const SERVICE_WORKER_CONSUMER: &str = r#"
addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  event.respondWith((async () => {
    if (url.pathname === "/send") {
      await JOBS.send("hello", { contentType: "text" });
      return new Response("sent");
    }
    const seen = await SEEN.get("seen");
    return new Response(seen ?? "(nothing yet)");
  })());
});

addEventListener("queue", (event) => {
  const message = event.messages[0];
  let badDelay;
  try {
    message.retry({ delaySeconds: 43_201 });
  } catch (error) {
    badDelay = `${error.name}: ${error.message}`;
  }
  event.waitUntil(SEEN.put("seen", JSON.stringify({
    queue: event.queue,
    body: message.body,
    attempts: message.attempts,
    badDelay,
  })));
  event.ackAll();
});
"#;

#[tokio::test]
async fn service_worker_syntax_consumes_and_bad_retry_delays_throw() {
    let toml = "name = \"sw\"\n[[kv_namespaces]]\nbinding = \"SEEN\"\n\
                [[queues.producers]]\nqueue = \"sw-jobs\"\nbinding = \"JOBS\"\n\
                [[queues.consumers]]\nqueue = \"sw-jobs\"\nmax_batch_timeout = 0\n";
    let dir = worker(&[("outpost.toml", toml), ("worker.js", SERVICE_WORKER_CONSUMER)]);
    let dev = Dev::start(dir.path(), &[]);
    assert_eq!(support::get(dev.addr, "/send").await.text(), "sent");
    let deadline = Instant::now() + Duration::from_secs(20);
    let seen = loop {
        let text = support::get(dev.addr, "/seen").await.text();
        if text != "(nothing yet)" {
            break serde_json::from_str::<serde_json::Value>(&text).unwrap();
        }
        assert!(Instant::now() < deadline, "never consumed: {}", dev.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(seen["queue"], "sw-jobs");
    assert_eq!(seen["body"], "hello");
    assert_eq!(seen["attempts"], 1);
    assert_eq!(seen["badDelay"], "RangeError: retry(): delaySeconds must be a number of seconds from 0 to 43200");
}

const NODE_PRODUCER: &str = r#"export default {
  async fetch(request, env) {
    const n = new URL(request.url).searchParams.get("n");
    await env.JOBS.send({ n: Number(n) });
    return new Response("sent");
  },
};"#;

const NODE_CONSUMER: &str = r#"export default {
  async fetch(request, env) {
    const list = await env.SEEN.list();
    return Response.json(list.keys.map((key) => key.name).sort());
  },
  async queue(batch, env) {
    for (const message of batch.messages) await env.SEEN.put(`n${message.body.n}`, "");
  },
};"#;

fn consumer_toml(consuming: bool) -> String {
    let consumer = if consuming { "[[queues.consumers]]\nqueue = \"jobs\"\nmax_batch_timeout = 0\n" } else { "" };
    format!("name = \"consumer\"\n[[kv_namespaces]]\nbinding = \"SEEN\"\nid = \"seen\"\n{consumer}")
}

async fn consumed(addr: std::net::SocketAddr) -> Vec<String> {
    let reply = support::send(addr, "GET", "/", &[("host", "consumer.test")], b"").await;
    serde_json::from_slice(&reply.body).unwrap()
}

async fn consumed_eventually(addr: std::net::SocketAddr, expected: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seen = consumed(addr).await;
        if seen == expected {
            return;
        }
        assert!(Instant::now() < deadline, "consumed {seen:?}, expected {expected:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Under `outpost serve`: another worker consumes what one produces (with a
/// grant); a reload that drops the consumer leaves new messages queued, one
/// that brings it back delivers them.
#[tokio::test]
async fn a_node_consumes_across_workers_and_reloads_keep_unconsumed_messages() {
    let node_toml = r#"threads = 1
[[listeners]]
address = "127.0.0.1:0"
[[workers]]
path = "workers/producer"
[[workers]]
path = "workers/consumer"
[[routes]]
pattern = "producer.test/*"
worker = "producer"
[[routes]]
pattern = "consumer.test/*"
worker = "consumer"
[[grants]]
worker = "consumer"
queues = ["jobs"]
"#;
    let node = support::Node::start(
        node_toml,
        &[
            (
                "workers/producer/outpost.toml",
                "name = \"producer\"\n[[queues.producers]]\nqueue = \"jobs\"\nbinding = \"JOBS\"\n".to_string(),
            ),
            ("workers/producer/worker.js", NODE_PRODUCER.to_string()),
            ("workers/consumer/outpost.toml", consumer_toml(true)),
            ("workers/consumer/worker.js", NODE_CONSUMER.to_string()),
        ],
    );
    let addr = node.http.unwrap();
    let send = |n: u32| async move {
        let reply = support::send(addr, "GET", &format!("/?n={n}"), &[("host", "producer.test")], b"").await;
        assert_eq!(reply.text(), "sent");
    };
    send(1).await;
    consumed_eventually(addr, &["n1"]).await;

    std::fs::write(node.dir().join("workers/consumer/outpost.toml"), consumer_toml(false)).unwrap();
    crate::hostile::reload(&node, "reloaded the node's workers").await;
    send(2).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(consumed(addr).await, ["n1"], "no consumer: the message waits");

    std::fs::write(node.dir().join("workers/consumer/outpost.toml"), consumer_toml(true)).unwrap();
    crate::hostile::reload(&node, "reloaded the node's workers").await;
    consumed_eventually(addr, &["n1", "n2"]).await;
}

/// A worker configured to consume a queue without a `queue` handler loses
/// nothing: the error is logged and the message stays, its attempt uncounted.
#[tokio::test]
async fn a_consumer_without_a_queue_handler_keeps_its_messages() {
    let toml = "name = \"nohandler\"\n[[queues.producers]]\nqueue = \"kept\"\nbinding = \"JOBS\"\n\
                [[queues.consumers]]\nqueue = \"kept\"\nmax_batch_timeout = 0\n";
    let js = "export default { async fetch(request, env) { await env.JOBS.send('keep me', { contentType: 'text' }); \
              return new Response('sent'); } };";
    let dir = worker(&[("outpost.toml", toml), ("worker.js", js)]);
    let dev = Dev::start(dir.path(), &[]);
    assert_eq!(support::get(dev.addr, "/").await.text(), "sent");
    dev.wait_for_log("Handler does not export a queue() function");
    assert!(dev.logs().contains("its messages stay queued"), "{}", dev.logs());
    let data = dev.stop();
    let store = outpost_kv::Store::open(&data.path().join("kv.redb"), Default::default()).unwrap();
    let storage: &dyn outpost_kv::objects::ObjectStorage = &store;
    let kept = outpost_kv::queues::due(storage, "kept", u64::MAX / 2, 10, &Default::default()).await.unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!((&kept[0].body[..], kept[0].attempts), (&b"keep me"[..], 1), "no delivery counted");
}
