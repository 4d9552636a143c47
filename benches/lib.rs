//! What the benches share: [`bench_node`], [`bench_worker`]. The benchmarks live in
//! `benches/` (criterion), `bin/` and the scripts beside this file.

use std::path::Path;

use outpost_isolate_pool::{Isolation, LimitCaps, Limits, Snapshotter, WorkerSpec};
use outpost_node::{Node, NodeOptions};
use outpost_runtime::{Egress, WorkerSource};

/// A node for the in-process benches (`bin/`): its state under `data_dir`,
/// the default threads, no worker snapshots (so no snapshot process).
pub fn bench_node(data_dir: &Path) -> Node {
    Node::start(NodeOptions {
        data_dir: data_dir.to_path_buf(),
        threads: None,
        caps: LimitCaps::CEILING,
        egress: Egress::Any,
        worker_snapshots: false,
        snapshotter: Snapshotter { program: "/nonexistent".into(), args: Vec::new() },
    })
    .expect("the bench node starts")
}

/// A worker named `name` whose `worker.js` (written into `dir`) is `js`,
/// with no bindings and the default limits.
pub fn bench_worker(dir: &Path, name: &str, js: &str) -> WorkerSpec {
    std::fs::create_dir_all(dir).expect("the bench worker's directory");
    std::fs::write(dir.join("worker.js"), js).expect("the bench worker's file");
    WorkerSpec {
        name: name.into(),
        source: WorkerSource::new(dir, &dir.join("worker.js")).expect("the bench worker loads"),
        vars: Default::default(),
        isolation: Isolation::Shared,
        limits: Limits::default(),
        bindings: Vec::new(),
    }
}
