//! Test helper for the crash test: writes keys as fast as it can with many
//! concurrent writers and prints each key once its put is acknowledged, until
//! it is killed.

use std::io::Write as _;
use std::sync::Arc;

use outpost_kv::{PutOptions, Store, StoreConfig};

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("usage: kv-write-storm <file> <first-key-number>");
    let first: u64 = args.next().and_then(|n| n.parse().ok()).expect("a first key number");
    let store = Store::open(std::path::Path::new(&path), StoreConfig::default()).expect("the store opens");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let stdout = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    runtime.block_on(async move {
        let writers = 16;
        let mut tasks = Vec::new();
        for writer in 0..writers {
            let store = store.clone();
            let stdout = stdout.clone();
            tasks.push(tokio::spawn(async move {
                let mut n = first + writer;
                loop {
                    let key = format!("key-{n:012}");
                    let value = format!("value of {n} ").repeat(1 + (n % 50) as usize);
                    store.put("storm", key.as_bytes(), value.into(), PutOptions::default()).await.expect("put");
                    let mut out = stdout.lock().unwrap();
                    writeln!(out, "{n}").unwrap();
                    out.flush().unwrap();
                    n += writers;
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    });
}
