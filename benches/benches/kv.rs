//! KV store against SQLite (rusqlite, WAL, synchronous=FULL) doing the same
//! work in the same run: cached get, uncached get, durable put with 1 and 64
//! concurrent writers, list of 1000 keys.
//!
//! Our writers are tasks on a current-thread tokio runtime, which is where a
//! worker's writes come from (each isolate thread runs one, see
//! `isolate-pool/src/thread.rs`); SQLite's writers are threads calling it
//! synchronously, as SQLite is used.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use outpost_kv::{ListOptions, PutOptions, Store, StoreConfig};

const KEYS: usize = 10_000;
const VALUE: &[u8] = &[b'v'; 256];

fn key(i: usize) -> String {
    format!("key-{i:08}")
}

struct Sqlite {
    conn: Mutex<rusqlite::Connection>,
}

impl Sqlite {
    fn open(path: &std::path::Path) -> Sqlite {
        let conn = rusqlite::Connection::open(path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.pragma_update(None, "synchronous", "FULL").unwrap();
        conn.execute("CREATE TABLE IF NOT EXISTS kv (ns TEXT, k BLOB, v BLOB, PRIMARY KEY (ns, k))", []).unwrap();
        Sqlite { conn: Mutex::new(conn) }
    }

    fn put(&self, k: &str, v: &[u8]) {
        let conn = self.conn.lock().unwrap();
        conn.prepare_cached("INSERT OR REPLACE INTO kv (ns, k, v) VALUES ('bench', ?1, ?2)")
            .unwrap()
            .execute((k.as_bytes(), v))
            .unwrap();
    }

    fn get(&self, k: &str) -> Option<Vec<u8>> {
        let conn = self.conn.lock().unwrap();
        let mut stmt = conn.prepare_cached("SELECT v FROM kv WHERE ns = 'bench' AND k = ?1").unwrap();
        stmt.query_row([k.as_bytes()], |row| row.get(0)).ok()
    }

    fn list(&self, limit: usize) -> usize {
        let conn = self.conn.lock().unwrap();
        let mut stmt = conn.prepare_cached("SELECT k FROM kv WHERE ns = 'bench' ORDER BY k LIMIT ?1").unwrap();
        stmt.query_map([limit as i64], |row| row.get::<_, Vec<u8>>(0)).unwrap().count()
    }
}

fn setup() -> (tempfile_dir::Dir, Store, Arc<Sqlite>, tokio::runtime::Runtime) {
    let dir = tempfile_dir::Dir::new();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let store = Store::open(&dir.path.join("kv.redb"), StoreConfig::default()).unwrap();
    let sqlite = Arc::new(Sqlite::open(&dir.path.join("kv.sqlite")));
    runtime.block_on(async {
        // Fill both in batches of concurrent writes (group commit for ours).
        for chunk in (0..KEYS).collect::<Vec<_>>().chunks(500) {
            let puts: Vec<_> =
                chunk
                    .iter()
                    .map(|&i| {
                        let store = store.clone();
                        async move {
                            store.put("bench", key(i).as_bytes(), VALUE.to_vec().into(), PutOptions::default()).await
                        }
                    })
                    .collect();
            futures::future::join_all(puts).await.into_iter().for_each(|r| r.unwrap());
        }
    });
    {
        let conn = sqlite.conn.lock().unwrap();
        conn.execute_batch("BEGIN").unwrap();
        for i in 0..KEYS {
            conn.execute("INSERT OR REPLACE INTO kv (ns, k, v) VALUES ('bench', ?1, ?2)", (key(i).as_bytes(), VALUE))
                .unwrap();
        }
        conn.execute_batch("COMMIT").unwrap();
    }
    (dir, store, sqlite, runtime)
}

mod tempfile_dir {
    pub struct Dir {
        pub path: std::path::PathBuf,
    }
    impl Dir {
        pub fn new() -> Dir {
            let path = std::env::temp_dir().join(format!(
                "outpost-kv-bench-{}-{}",
                std::process::id(),
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
            ));
            std::fs::create_dir_all(&path).unwrap();
            Dir { path }
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn gets(c: &mut Criterion) {
    let (_dir, store, sqlite, _runtime) = setup();
    let mut group = c.benchmark_group("kv/get");
    group.bench_function("cached/outpost", |b| {
        let _ = store.get("bench", b"key-00000042").unwrap();
        b.iter(|| store.get("bench", b"key-00000042").unwrap().unwrap())
    });
    group.bench_function("cached/sqlite", |b| b.iter(|| sqlite.get("key-00000042").unwrap()));
    // Uncached: our read cache off (redb's and SQLite's page caches stay).
    drop(store);
    let cold =
        Store::open(&_dir.path.join("kv.redb"), StoreConfig { cache_bytes: 0, ..StoreConfig::default() }).unwrap();
    group.bench_function("uncached/outpost", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % KEYS;
            cold.get("bench", key(i).as_bytes()).unwrap().unwrap()
        })
    });
    group.bench_function("uncached/sqlite", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % KEYS;
            sqlite.get(&key(i)).unwrap()
        })
    });
    group.finish();
}

fn puts(c: &mut Criterion) {
    let (_dir, store, sqlite, runtime) = setup();
    let mut group = c.benchmark_group("kv/put_durable");
    group.sample_size(10).measurement_time(Duration::from_secs(5));
    for writers in [1usize, 64] {
        let batch = if writers == 1 { 20 } else { 640 };
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::new("outpost", writers), &writers, |b, &writers| {
            let mut n = 0usize;
            b.iter(|| {
                runtime.block_on(async {
                    let tasks: Vec<_> = (0..writers)
                        .map(|w| {
                            let store = store.clone();
                            let base = n;
                            tokio::spawn(async move {
                                for i in 0..batch / writers {
                                    let k = key(base + w * 1000 + i);
                                    store
                                        .put("bench", k.as_bytes(), VALUE.to_vec().into(), PutOptions::default())
                                        .await
                                        .unwrap();
                                }
                            })
                        })
                        .collect();
                    for task in tasks {
                        task.await.unwrap();
                    }
                });
                n += 100_000;
            })
        });
        group.bench_with_input(BenchmarkId::new("sqlite", writers), &writers, |b, &writers| {
            let mut n = 0usize;
            b.iter(|| {
                std::thread::scope(|scope| {
                    for w in 0..writers {
                        let sqlite = sqlite.clone();
                        let base = n;
                        scope.spawn(move || {
                            for i in 0..batch / writers {
                                sqlite.put(&key(base + w * 1000 + i), VALUE);
                            }
                        });
                    }
                });
                n += 100_000;
            })
        });
    }
    group.finish();
}

fn lists(c: &mut Criterion) {
    let (_dir, store, sqlite, _runtime) = setup();
    let mut group = c.benchmark_group("kv/list_1000");
    group.bench_function("outpost", |b| {
        b.iter(|| {
            assert_eq!(
                store.list("bench", ListOptions { limit: Some(1000), ..Default::default() }).unwrap().len(),
                1000
            )
        })
    });
    group.bench_function("sqlite", |b| b.iter(|| assert_eq!(sqlite.list(1000), 1000)));
    group.finish();
}

criterion_group!(benches, gets, puts, lists);
criterion_main!(benches);
