//! The isolate pool with real isolates, without HTTP.
//!
//! `OUTPOST_BENCH_SNAPSHOT=worker` (default) starts isolates from the
//! worker's own snapshot; `=bootstrap` from the bootstrap snapshot, evaluating
//! the worker's modules in each new isolate. V8 allows one snapshot blob per
//! process, so the two modes run as two processes:
//! `benches/run-pool-benches.sh` runs both.
//!
//! Measured: cold start (a request to a worker with no live isolate, to its
//! last response byte), warm request overhead (hello world on a live
//! isolate), throughput of shared and per-request isolation with 32
//! requests in flight, and resident memory per idle isolate.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput};
use http_body_util::BodyExt;
use outpost_isolate_pool::{Isolation, Limits, Pool, PoolConfig, Snapshotter, WorkerSpec};
use outpost_runtime::WorkerSource;

const SNAPSHOT_SUBCOMMAND: &str = "snapshot-worker";

fn main() {
    // This binary is also the pool's snapshot process.
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(SNAPSHOT_SUBCOMMAND) {
        let (root, main, out) = (Path::new(&args[2]), Path::new(&args[3]), Path::new(&args[4]));
        if let Err(failure) = outpost_isolate_pool::snapshots::run_snapshot_process(root, main, out) {
            eprintln!("{}", failure.message);
            std::process::exit(failure.status);
        }
        std::process::exit(0);
    }
    let mode = std::env::var("OUTPOST_BENCH_SNAPSHOT").unwrap_or_else(|_| "worker".into());
    let worker_snapshots = match mode.as_str() {
        "worker" => true,
        "bootstrap" => false,
        other => panic!("OUTPOST_BENCH_SNAPSHOT must be worker or bootstrap, not {other}"),
    };
    outpost_runtime::init_v8();
    let mut criterion =
        Criterion::default().configure_from_args().sample_size(50).measurement_time(Duration::from_secs(5));
    let tokio = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let work = tempdir();
    if worker_snapshots {
        memory_per_idle_isolate(&work, &tokio);
    }
    let (pool, name) = single_worker_pool(&work.join("main"), worker_snapshots, Isolation::Shared, 2, HELLO);
    cold_start(&mut criterion, &tokio, &pool, &name, &mode);
    if worker_snapshots {
        warm_overhead(&mut criterion, &tokio, &pool, &name);
    }
    throughput(&mut criterion, &tokio, &work, &mode, &pool, &name);
    criterion.final_summary();
}

const HELLO: &str = "export default { fetch() { return new Response('Hello from Outpost!\\n'); } };\n";

fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("outpost-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn single_worker_pool(
    dir: &Path,
    worker_snapshots: bool,
    isolation: Isolation,
    warm_spares: usize,
    code: &str,
) -> (Pool, String) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("worker.js"), code).unwrap();
    let snapshotter = Snapshotter { program: std::env::current_exe().unwrap(), args: vec![SNAPSHOT_SUBCOMMAND.into()] };
    let mut config = PoolConfig::new(dir.join("snapshots"), snapshotter);
    config.worker_snapshots = worker_snapshots;
    config.warm_spares = warm_spares;
    let pool = Pool::start(config);
    let source = WorkerSource::new(dir, &dir.join("worker.js")).unwrap();
    let name = "bench".to_string();
    pool.deploy(WorkerSpec {
        name: name.clone(),
        source,
        vars: Default::default(),
        isolation,
        limits: Limits::default(),
        bindings: Vec::new(),
    })
    .expect("the worker deploys");
    (pool, name)
}

async fn request(pool: &Pool, worker: &str) -> Bytes {
    let request = http::Request::get("/").body(outpost_runtime::empty_body()).unwrap();
    let parts = outpost_runtime::HttpRequest {
        request,
        url: "http://bench.test/".into(),
        request_id: "bench".into(),
        cf: None,
        depth: 0,
    };
    let response = pool.fetch(worker, parts).await.expect("a response");
    response.into_body().collect().await.expect("a body").to_bytes()
}

fn wait_for_no_isolates(pool: &Pool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while pool.stats().live_isolates > 0 {
        assert!(Instant::now() < deadline, "isolates never went away");
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn cold_start(c: &mut Criterion, tokio: &tokio::runtime::Runtime, pool: &Pool, worker: &str, mode: &str) {
    let mut group = c.benchmark_group("pool/cold_start");
    group.bench_function(BenchmarkId::from_parameter(format!("{mode}_snapshot")), |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                pool.evict_idle(Duration::ZERO);
                wait_for_no_isolates(pool);
                let started = Instant::now();
                let body = tokio.block_on(request(pool, worker));
                total += started.elapsed();
                assert_eq!(body.len(), 20);
            }
            total
        })
    });
    group.finish();
}

fn warm_overhead(c: &mut Criterion, tokio: &tokio::runtime::Runtime, pool: &Pool, worker: &str) {
    tokio.block_on(request(pool, worker));
    let mut group = c.benchmark_group("pool/warm_request");
    group.bench_function("hello_world", |b| b.iter(|| tokio.block_on(request(pool, worker))));
    group.finish();
}

fn throughput(
    c: &mut Criterion,
    tokio: &tokio::runtime::Runtime,
    work: &Path,
    mode: &str,
    shared: &Pool,
    worker: &str,
) {
    const IN_FLIGHT: usize = 32;
    const BATCH: usize = 256;
    // Same worker files, so in worker-snapshot mode the same snapshot blob:
    // a process may use only one.
    let (per_request, per_request_name) =
        single_worker_pool(&work.join("main"), mode == "worker", Isolation::PerRequest, 4, HELLO);
    let mut group = c.benchmark_group("pool/throughput");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(10);
    let mut run = |label: String, pool: &Pool, name: &str| {
        group.bench_function(label, |b| {
            b.iter(|| {
                tokio.block_on(async {
                    use futures::stream::StreamExt;
                    futures::stream::iter(0..BATCH)
                        .map(|_| request(pool, name))
                        .buffer_unordered(IN_FLIGHT)
                        .for_each(|_| async {})
                        .await
                })
            })
        });
    };
    run(format!("shared_{mode}_snapshot"), shared, worker);
    run(format!("per_request_{mode}_snapshot"), &per_request, &per_request_name);
    group.finish();
    per_request.stop();
}

/// Resident memory per idle isolate: RSS before and after making many.
fn memory_per_idle_isolate(work: &Path, tokio: &tokio::runtime::Runtime) {
    const SPARES: usize = 50;
    let rss_before = rss_bytes();
    let (pool, name) = single_worker_pool(&work.join("main"), true, Isolation::PerRequest, SPARES, HELLO);
    tokio.block_on(request(&pool, &name));
    let deadline = Instant::now() + Duration::from_secs(30);
    while pool.stats().live_isolates < SPARES {
        assert!(Instant::now() < deadline, "spares never all started");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(500));
    let rss_after = rss_bytes();
    let live = pool.stats().live_isolates;
    println!(
        "memory: {live} idle isolates from the worker snapshot added {} KiB resident: {} KiB per idle isolate",
        (rss_after - rss_before) / 1024,
        (rss_after - rss_before) / 1024 / live as u64
    );
    pool.stop();
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}
