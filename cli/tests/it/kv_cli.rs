//! `outpost kv key ...` against a running `outpost dev` (its control
//! socket) and against its data directory once it has stopped.

use std::path::Path;

use serde_json::json;

use crate::support::{self, worker, Dev};

const WORKER: &str = r#"export default {
  async fetch(request, env) {
    return new Response((await env.KV.get("greeting")) ?? "-");
  },
};"#;

fn kv(cwd: &Path, data_dir: &Path, args: &[&str]) -> Result<String, String> {
    let mut all: Vec<&std::ffi::OsStr> = vec!["kv".as_ref(), "key".as_ref()];
    all.extend(args.iter().map(std::ffi::OsStr::new));
    all.extend(["--data-dir".as_ref(), data_dir.as_os_str()]);
    support::run_outpost(cwd, all)
}

#[tokio::test]
async fn kv_keys_are_written_and_read_through_a_running_node_or_its_data_dir() {
    let dir = worker(&[
        ("outpost.toml", "name = \"kvcli\"\n[[kv_namespaces]]\nbinding = \"KV\"\nid = \"kv-cli\"\n"),
        ("worker.js", WORKER),
    ]);
    let dev = Dev::start(dir.path(), &[]);
    let data = dev.data_dir().to_path_buf();
    let here = dir.path();
    assert_eq!(support::get(dev.addr, "/").await.text(), "-");

    kv(here, &data, &["put", "greeting", "hello", "--namespace-id", "kv-cli", "--metadata", r#"{"by":"cli"}"#])
        .unwrap();
    assert_eq!(support::get(dev.addr, "/").await.text(), "hello", "the worker sees what the command wrote");
    assert_eq!(kv(here, &data, &["get", "greeting", "--binding", "KV"]).unwrap(), "hello");
    let listed: serde_json::Value =
        serde_json::from_str(&kv(here, &data, &["list", "--prefix", "gr", "--namespace-id", "kv-cli"]).unwrap())
            .unwrap();
    assert_eq!(listed, json!([{ "name": "greeting", "metadata": { "by": "cli" } }]));

    // Values from a file, bytes as they are.
    std::fs::write(here.join("blob.bin"), [0u8, 159, 146, 150]).unwrap();
    kv(here, &data, &["put", "blob", "--path", "blob.bin", "--binding", "KV"]).unwrap();
    let output = std::process::Command::new(support::outpost_binary())
        .args(["kv", "key", "get", "blob", "--binding", "KV", "--data-dir"])
        .arg(&data)
        .current_dir(here)
        .output()
        .unwrap();
    assert_eq!(output.stdout, [0u8, 159, 146, 150]);

    kv(here, &data, &["delete", "greeting", "--namespace-id", "kv-cli"]).unwrap();
    assert_eq!(support::get(dev.addr, "/").await.text(), "-");
    let err = kv(here, &data, &["get", "greeting", "--namespace-id", "kv-cli"]).unwrap_err();
    assert!(err.contains("Value not found"), "{err}");
    let err = kv(here, &data, &["put", "k", "v", "--namespace-id", "kv-cli", "--ttl", "5"]).unwrap_err();
    assert!(err.contains("60"), "Cloudflare's minimum TTL is named: {err}");
    let err = kv(here, &data, &["get", "k", "--binding", "NOPE"]).unwrap_err();
    assert!(err.contains("no KV binding \"NOPE\""), "{err}");

    // No node running: the data directory's store, opened directly.
    kv(here, &data, &["put", "greeting", "again", "--namespace-id", "kv-cli"]).unwrap();
    let data_dir = dev.stop();
    assert_eq!(kv(here, data_dir.path(), &["get", "greeting", "--namespace-id", "kv-cli"]).unwrap(), "again");
    kv(here, data_dir.path(), &["put", "greeting", "offline", "--namespace-id", "kv-cli"]).unwrap();
    let dev = Dev::start_in(here, data_dir, &[]);
    assert_eq!(support::get(dev.addr, "/").await.text(), "offline");
}
