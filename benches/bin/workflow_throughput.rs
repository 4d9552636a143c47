//! Workflow throughput and per-step overhead, end to end through a real
//! node (`outpost_node::Node`): instances created through the engine (as
//! `createBatch` does, 100 at a time), run by the worker's isolate, every
//! step's result and every status change durable in the node's store.
//!
//! Two workflows run the same three small callbacks: `ThreeSteps` as three
//! `step.do`s, `Inline` straight in `run()` (the baseline: what the
//! callbacks cost without the engine's steps). Two shapes:
//!
//! - parallel: 2,000 instances, the default concurrency (100): instances
//!   started and completed per second, from the first create to the last
//!   completion;
//! - one at a time: 300 instances with `max_concurrency = 1`: the time one
//!   instance takes, and the per-step overhead, (ThreeSteps − Inline) / 3.
//!
//! Each figure is the median of `--runs` runs (default 3).
//! Run: `cargo run --release -p outpost-benches --bin workflow-throughput`.

use std::time::{Duration, Instant};

use outpost_node::Worker;
use outpost_workflows::{json_params, Definition, Engine, NewInstance, Status};

/// The classes `ThreeSteps` and `Inline` (and a fetch handler this bench
/// leaves alone): the worker `workflows-vs-wrangler.sh` serves too.
const WORKER_JS: &str = include_str!("../workflows/worker.js");

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}

/// The value after `flag` on the command line.
fn arg(flag: &str) -> Option<String> {
    std::env::args().skip_while(|a| a != flag).nth(1)
}

/// Creates `count` instances of `workflow` (100 a call) and waits until all
/// are complete; the seconds it took.
async fn run_instances(engine: &Engine, workflow: &str, run: usize, count: usize) -> f64 {
    let start = Instant::now();
    for chunk in (0..count).collect::<Vec<_>>().chunks(100) {
        let batch = chunk
            .iter()
            .map(|i| NewInstance {
                id: Some(format!("r{run}-{i}")),
                params: json_params(&format!("{{\"n\":{i}}}")).unwrap(),
            })
            .collect();
        engine.create(workflow, batch).await.unwrap();
    }
    loop {
        let instances = engine.list_instances(workflow).await.unwrap();
        let prefix = format!("r{run}-");
        let ours = instances.iter().filter(|i| i.id.starts_with(&prefix));
        let (mut complete, mut total) = (0, 0);
        for instance in ours {
            total += 1;
            match instance.status {
                Status::Complete => complete += 1,
                Status::Errored => panic!("{workflow}/{} errored: {:?}", instance.id, instance.error),
                _ => {}
            }
        }
        if complete == total && total == count {
            return start.elapsed().as_secs_f64();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn bytes_of(i: usize) -> bytes::Bytes {
    bytes::Bytes::from(format!("{{\"n\":{i}}}"))
}

fn definition(name: &str, class: &str, concurrency: u32) -> Definition {
    Definition { name: name.into(), worker: "bench".into(), class_name: class.into(), step_limit: 10_000, concurrency }
}

fn main() {
    let runs: usize = arg("--runs").map_or(3, |n| n.parse().expect("--runs takes a number"));
    let dir = std::env::temp_dir().join(format!("outpost-workflow-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let node = outpost_benches::bench_node(&dir.join("node"));
    node.deploy(Worker {
        spec: outpost_benches::bench_worker(&dir.join("worker"), "bench", WORKER_JS),
        crons: Vec::new(),
        consumers: Vec::new(),
        workflows: vec![
            definition("three-parallel", "ThreeSteps", 100),
            definition("inline-parallel", "Inline", 100),
            definition("three-serial", "ThreeSteps", 1),
            definition("inline-serial", "Inline", 1),
        ],
    })
    .unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let engine = node.workflows().clone();
    let _guard = runtime.enter();
    node.spawn_triggers();

    const PARALLEL: usize = 2_000;
    const SERIAL: usize = 300;
    let (mut three, mut inline, mut three_one, mut inline_one) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        three.push(PARALLEL as f64 / runtime.block_on(run_instances(&engine, "three-parallel", run, PARALLEL)));
        inline.push(PARALLEL as f64 / runtime.block_on(run_instances(&engine, "inline-parallel", run, PARALLEL)));
        three_one.push(runtime.block_on(run_instances(&engine, "three-serial", run, SERIAL)) / SERIAL as f64 * 1e6);
        inline_one.push(runtime.block_on(run_instances(&engine, "inline-serial", run, SERIAL)) / SERIAL as f64 * 1e6);
    }
    // What one durable commit of the node's store costs, one at a time: the
    // floor under a step, which commits its result before `step.do` returns.
    let commit = runtime.block_on(async {
        let storage = outpost_kv::objects::ObjectStorage::object_transaction;
        let store = outpost_kv::Store::open(&dir.join("commit.redb"), Default::default()).unwrap();
        let object = outpost_kv::objects::ObjectKey { class: "bench".into(), id: [0; 32] };
        let start = Instant::now();
        for i in 0..SERIAL {
            let write = outpost_kv::objects::ObjectWrite::Put(format!("k{i}").into_bytes(), bytes_of(i));
            storage(&store, &object, vec![write]).await.unwrap();
        }
        start.elapsed().as_secs_f64() / SERIAL as f64 * 1e6
    });
    let (three, inline, three_one, inline_one) = (median(three), median(inline), median(three_one), median(inline_one));
    println!("workflow bench, median of {runs} runs");
    println!("{:<58} {:>12} {:>12}", "", "3 steps", "inline");
    println!(
        "{:<58} {:>8.0} i/s {:>8.0} i/s",
        format!("parallel: {PARALLEL} instances started and completed"),
        three,
        inline
    );
    println!(
        "{:<58} {:>9.0} µs {:>9.0} µs",
        format!("one at a time: {SERIAL} instances, per instance"),
        three_one,
        inline_one
    );
    println!("per-step overhead (3 steps − inline) / 3: {:.0} µs", (three_one - inline_one) / 3.0);
    println!("one durable commit of the store, one at a time (the floor under a step): {commit:.0} µs");
    node.stop();
    drop(runtime);
    let _ = std::fs::remove_dir_all(&dir);
}
