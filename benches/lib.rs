//! What the benches share: [`bench_node`]. The benchmarks live in
//! `benches/` (criterion), `bin/` and the scripts beside this file.

use std::path::Path;

use outpost_isolate_pool::{LimitCaps, Snapshotter};
use outpost_node::{Node, NodeOptions};
use outpost_runtime::Egress;

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
