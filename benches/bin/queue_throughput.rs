//! Queue throughput end to end: messages sent (each send resolving once
//! durable), batched to a consumer, acknowledged (durably deleted), in
//! messages per second from the first send to the last ack. Next to the
//! same pattern on SQLite (WAL, synchronous=FULL) in the same run.
//!
//! - `outpost, JS consumer`: a real node (`outpost_node::Node`) whose
//!   worker's `queue(batch)` decodes every body and returns (implicit ack);
//!   batches of up to 100, `max_batch_timeout = 1` (s), default concurrency.
//!   Producers are tasks calling the node's queue storage, the path the
//!   `send`/`sendBatch` op takes (the JS encoding of a body is left out).
//! - `outpost, Rust consumer`: the same store, the consumer a loop of
//!   `due` (100) and `settle`: the broker without an isolate.
//! - `sqlite`: the same design on SQLite: producers are threads inserting
//!   (one transaction a send), the consumer a thread reading the first 100
//!   due rows and deleting them (one transaction).
//!
//! Each cell is the median of `--runs` runs (default 3); `--shape 64x1`
//! runs one row only, `--systems js,rust,sqlite` some columns only.
//! Run: `cargo run --release -p outpost-benches --bin queue-throughput`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use outpost_kv::queues::{self, NewMessage, Queues, Settlement};
use outpost_node::triggers::queues::Consumer;
use outpost_node::Worker;

const CONSUMER_JS: &str = "let total = 0;\n\
export default {\n\
  async queue(batch) {\n\
    for (const message of batch.messages) total += message.body.n;\n\
  },\n\
};\n";

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// A JSON body of about 100 bytes.
fn body(n: usize) -> Bytes {
    const PAD: &str = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";
    Bytes::from(format!("{{\"n\":{n},\"pad\":\"{PAD}\"}}"))
}

#[derive(Clone, Copy)]
struct Shape {
    producers: usize,
    per_send: usize,
    total: usize,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}

/// Producers send `shape.total` messages to `queue`; resolves when all are durable.
async fn produce(queues: &Queues, queue: &str, shape: Shape) {
    let sends = shape.total / shape.per_send / shape.producers;
    let producers: Vec<_> = (0..shape.producers)
        .map(|p| {
            let (queues, queue) = (queues.clone(), queue.to_string());
            tokio::spawn(async move {
                for s in 0..sends {
                    let batch = (0..shape.per_send)
                        .map(|i| NewMessage {
                            body: body((p * sends + s) * shape.per_send + i),
                            content_type: "json".into(),
                            delay_ms: 0,
                        })
                        .collect();
                    queues.send(&queue, batch, now_ms()).await.unwrap();
                }
            })
        })
        .collect();
    for producer in producers {
        producer.await.unwrap();
    }
}

/// Through a node and its JS consumer: until the queue is empty.
async fn outpost_js(queues: &Queues, queue: &str, shape: Shape) -> f64 {
    let start = Instant::now();
    produce(queues, queue, shape).await;
    while queues::next_visible(queues.storage(), queue).await.unwrap().is_some() {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    shape.total as f64 / start.elapsed().as_secs_f64()
}

/// The broker without an isolate: a Rust loop leasing and acking.
async fn outpost_rust(queues: &Queues, queue: &str, shape: Shape) -> f64 {
    let start = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let consumer = {
        let (queues, queue, done) = (queues.clone(), queue.to_string(), done.clone());
        tokio::spawn(async move {
            let mut acked = 0;
            while acked < shape.total {
                let batch = queues::due(queues.storage(), &queue, now_ms(), 100, &Default::default()).await.unwrap();
                if batch.is_empty() {
                    if done.load(Ordering::Acquire) && acked >= shape.total {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                acked += batch.len();
                let settlement = Settlement { acks: batch, ..Default::default() };
                queues::settle(queues.storage(), &queue, settlement, None, now_ms()).await.unwrap();
            }
        })
    };
    produce(queues, queue, shape).await;
    done.store(true, Ordering::Release);
    consumer.await.unwrap();
    shape.total as f64 / start.elapsed().as_secs_f64()
}

fn sqlite_open(path: &std::path::Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS messages (queue TEXT, visible_at INTEGER, id INTEGER, attempts INTEGER, \
         body BLOB, PRIMARY KEY (queue, visible_at, id)) WITHOUT ROWID",
    )
    .unwrap();
    conn
}

fn sqlite(path: &std::path::Path, queue: &str, shape: Shape) -> f64 {
    let conn = Arc::new(Mutex::new(sqlite_open(path)));
    let next_id = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let sends = shape.total / shape.per_send / shape.producers;
    let producers: Vec<_> = (0..shape.producers)
        .map(|_| {
            let (conn, next_id, queue) = (conn.clone(), next_id.clone(), queue.to_string());
            std::thread::spawn(move || {
                for _ in 0..sends {
                    let mut conn = conn.lock().unwrap();
                    let tx = conn.transaction().unwrap();
                    {
                        let mut insert = tx.prepare_cached("INSERT INTO messages VALUES (?1, ?2, ?3, 0, ?4)").unwrap();
                        for _ in 0..shape.per_send {
                            let id = next_id.fetch_add(1, Ordering::Relaxed);
                            insert.execute((&queue, now_ms() as i64, id as i64, &body(id)[..])).unwrap();
                        }
                    }
                    tx.commit().unwrap();
                }
            })
        })
        .collect();
    let mut acked = 0;
    while acked < shape.total {
        let due: Vec<(i64, i64, Vec<u8>)> = {
            let conn = conn.lock().unwrap();
            let now = now_ms() as i64;
            let rows: Vec<(i64, i64, Vec<u8>)> = conn
                .prepare_cached(
                    "SELECT visible_at, id, body FROM messages WHERE queue = ?1 AND visible_at <= ?2 \
                     ORDER BY visible_at LIMIT 100",
                )
                .unwrap()
                .query_map((queue, now), |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            rows
        };
        if due.is_empty() {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        acked += due.len();
        let mut conn = conn.lock().unwrap();
        let tx = conn.transaction().unwrap();
        for (visible_at, id, _) in &due {
            tx.prepare_cached("DELETE FROM messages WHERE queue = ?1 AND visible_at = ?2 AND id = ?3")
                .unwrap()
                .execute((queue, visible_at, id))
                .unwrap();
        }
        tx.commit().unwrap();
    }
    for producer in producers {
        producer.join().unwrap();
    }
    shape.total as f64 / start.elapsed().as_secs_f64()
}

/// The value after `flag` on the command line.
fn arg(flag: &str) -> Option<String> {
    std::env::args().skip_while(|a| a != flag).nth(1)
}

fn main() {
    let runs: usize = arg("--runs").map_or(3, |n| n.parse().expect("--runs takes a number"));
    // `--shape 64x1`: only that row; `--systems js,sqlite`: only those columns.
    let only = arg("--shape");
    let systems = arg("--systems");
    let measured = |system: &str| systems.as_ref().is_none_or(|list| list.split(',').any(|s| s == system));
    let dir = std::env::temp_dir().join(format!("outpost-queue-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let shapes = [
        Shape { producers: 1, per_send: 1, total: 2_000 },
        Shape { producers: 64, per_send: 1, total: 64_000 },
        Shape { producers: 1, per_send: 100, total: 100_000 },
        Shape { producers: 64, per_send: 100, total: 192_000 },
    ];
    let queue_names: Vec<String> = (0..shapes.len() * runs).map(|i| format!("js-{i}")).collect();

    let node = outpost_benches::bench_node(&dir.join("node"));
    let consumers = queue_names
        .iter()
        .map(|queue| Consumer { max_batch_size: 100, max_batch_timeout_ms: 1_000, ..Consumer::new(queue.clone()) })
        .collect();
    node.deploy(Worker {
        spec: outpost_benches::bench_worker(&dir.join("worker"), "consumer", CONSUMER_JS),
        crons: Vec::new(),
        consumers,
        workflows: Vec::new(),
    })
    .unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let queues = node.queues().clone();
    let _guard = runtime.enter();
    node.spawn_triggers();

    println!(
        "{:<34} {:>14} {:>14} {:>14} {:>8}",
        "producers x messages a send", "outpost JS", "outpost Rust", "sqlite", "JS/sqlite"
    );
    let mut names = queue_names.iter();
    for shape in shapes {
        if only.as_ref().is_some_and(|only| *only != format!("{}x{}", shape.producers, shape.per_send)) {
            names.nth(runs - 1);
            continue;
        }
        let (mut js, mut rust, mut lite) = (vec![f64::NAN], vec![f64::NAN], vec![f64::NAN]);
        for run in 0..runs {
            let queue = names.next().unwrap();
            if measured("js") {
                js.push(runtime.block_on(outpost_js(&queues, queue, shape)));
            }
            if measured("rust") {
                rust.push(runtime.block_on(outpost_rust(&queues, &format!("rust-{}-{run}", shape.producers), shape)));
            }
            if measured("sqlite") {
                let path = dir.join(format!("sqlite-{}-{}-{run}.db", shape.producers, shape.per_send));
                lite.push(sqlite(&path, "bench", shape));
            }
        }
        for values in [&mut js, &mut rust, &mut lite] {
            if values.len() > 1 {
                values.remove(0);
            }
        }
        let (js, rust, lite) = (median(js), median(rust), median(lite));
        println!(
            "{:<34} {:>10.0} m/s {:>10.0} m/s {:>10.0} m/s {:>7.1}x",
            format!("{} x {} ({} messages)", shape.producers, shape.per_send, shape.total),
            js,
            rust,
            lite,
            js / lite
        );
    }
    node.stop();
    drop(runtime);
    let _ = std::fs::remove_dir_all(&dir);
}
