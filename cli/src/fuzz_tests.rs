//! `outpost.toml` and `node.toml` fuzzed: any text is refused with an error
//! or gives a configuration whose limits are within what no node may pass,
//! and nothing panics.

use std::path::Path;

use outpost_isolate_pool::LimitCaps;

use crate::config::WorkerConfig;
use crate::node::NodeConfig;

/// Input: the file's text; the first byte picks which file it is.
fn check(input: &[u8]) -> u64 {
    let Some((&kind, text)) = input.split_first() else { return 0 };
    let text = String::from_utf8_lossy(text);
    if kind % 2 == 0 {
        let Ok(config) = WorkerConfig::parse(&text, Path::new("outpost.toml")) else { return 1 };
        match config.limits.resolve() {
            Ok(limits) => {
                assert_eq!(limits.check(&LimitCaps::CEILING), Ok(()), "accepted limits {limits:?}");
                2 + u64::from(limits.wall_ms.is_some())
            }
            Err(_) => 4,
        }
    } else {
        match NodeConfig::parse(&text, Path::new("node.toml")) {
            Ok(config) => {
                assert!(!config.listeners.is_empty());
                assert_eq!(config.limits.worker_caps().check(), Ok(()));
                10 + config.workers.len().min(3) as u64 + 4 * config.grants.len().min(3) as u64
            }
            Err(err) => 5 + format!("{err:#}").len() as u64 % 5,
        }
    }
}

#[test]
fn fuzz_worker_and_node_configs() {
    let seeds: &[&[u8]] = &[
        b"\x00name = \"a\"\nmain = \"src/index.js\"\n[vars]\nA = \"b\"\n[limits]\ncpu_ms = 10\nmemory_mb = 64\n",
        b"\x00[limits]\nmemory_mb = 17592186044416\n",
        b"\x00[limits]\ncpu_ms = 9223372036854775807\nwall_ms = 0\n",
        b"\x00[[kv_namespaces]]\nbinding = \"KV\"\nid = \"x\"\n[[durable_objects.bindings]]\nname = \"D\"\nclass_name = \"C\"\nscript_name = \"b\"\n",
        b"\x01[[listeners]]\naddress = \"127.0.0.1:8080\"\n[limits]\nmax_worker_memory_mb = 4096\n[[grants]]\nworker = \"a\"\nkv_namespaces = [\"x\"]\n",
        b"\x01[[listeners]]\naddress = \"127.0.0.1:8443\"\ntls = true\n",
        b"\x01[[listeners]]\naddress = \"127.0.0.1:1\"\n[limits]\nmax_worker_cpu_ms = 18446744073709551615\n",
    ];
    let dictionary: &[&[u8]] = &[
        b"\n",
        b" = ",
        b"[limits]\n",
        b"cpu_ms",
        b"memory_mb",
        b"wall_ms",
        b"max_concurrent",
        b"max_worker_memory_mb",
        b"18446744073709551615",
        b"-1",
        b"0",
        b"\"",
        b"[[",
        b"]]",
        b"{",
        b"}",
    ];
    let report = outpost_fuzz::run(&outpost_fuzz::Target { name: "configs", seeds, dictionary }, check);
    assert!(report.outcomes > 1, "{report:?}");
}
