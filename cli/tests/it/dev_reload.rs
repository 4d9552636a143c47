//! `outpost dev` reloads a worker when its files change: new requests get
//! the new code, KV state stays, and a change that does not load leaves the
//! previous version serving, with the error in the log.

use std::time::{Duration, Instant};

use crate::support::{self, worker, Dev};

fn version(v: &str) -> String {
    format!(
        r#"export default {{
  async fetch(request, env) {{
    const url = new URL(request.url);
    if (url.pathname === "/put") await env.KV.put("kept", "yes");
    return new Response(`{v} ${{env.GREETING}} ${{(await env.KV.get("kept")) ?? "-"}}`);
  }},
}};
"#
    )
}

const CONFIG: &str = "name = \"live\"\n[vars]\nGREETING = \"hi\"\n[[kv_namespaces]]\nbinding = \"KV\"\nid = \"live\"\n";

async fn wait_for_answer(dev: &Dev, expected: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let reply = support::get(dev.addr, "/").await;
        if reply.text() == expected {
            return;
        }
        assert!(Instant::now() < deadline, "still {:?}, not {expected:?}\n{}", reply.text(), dev.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn dev_reloads_on_change_and_keeps_the_old_version_when_the_new_one_breaks() {
    let dir = worker(&[("outpost.toml", CONFIG), ("worker.js", &version("v1"))]);
    let dev = Dev::start(dir.path(), &[]);
    assert_eq!(support::get(dev.addr, "/put").await.text(), "v1 hi yes");

    std::fs::write(dir.path().join("worker.js"), version("v2")).unwrap();
    wait_for_answer(&dev, "v2 hi yes").await;
    dev.wait_for_log("reloaded worker live in");

    // A syntax error: logged, and v2 goes on answering.
    std::fs::write(dir.path().join("worker.js"), "export default { fetch( {").unwrap();
    dev.wait_for_log("still serving the previous version");
    assert_eq!(support::get(dev.addr, "/").await.text(), "v2 hi yes");

    // Fixed, with a new variable in outpost.toml too.
    std::fs::write(dir.path().join("outpost.toml"), CONFIG.replace("\"hi\"", "\"hello\"")).unwrap();
    std::fs::write(dir.path().join("worker.js"), version("v3")).unwrap();
    wait_for_answer(&dev, "v3 hello yes").await;
}

#[tokio::test]
async fn no_watch_keeps_the_version_it_started_with() {
    let dir = worker(&[("outpost.toml", CONFIG), ("worker.js", &version("v1"))]);
    let dev = Dev::start(dir.path(), &["--no-watch"]);
    std::fs::write(dir.path().join("worker.js"), version("v2")).unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(support::get(dev.addr, "/").await.text(), "v1 hi -");
}

#[tokio::test]
async fn dev_vars_are_on_env_over_vars_and_under_the_command_line() {
    let dir = worker(&[
        ("outpost.toml", CONFIG),
        (
            "worker.js",
            "export default { fetch(r, env) { return new Response(`${env.GREETING} ${env.SECRET} ${env.LOUD}`); } };",
        ),
        (".dev.vars", "# local only\nGREETING=\"from .dev.vars\"\nSECRET=s3cret\nLOUD=quiet\n"),
    ]);
    let dev = Dev::start(dir.path(), &["--var", "LOUD=LOUD"]);
    assert_eq!(support::get(dev.addr, "/").await.text(), "from .dev.vars s3cret LOUD");
    // Edited, it is read again.
    std::fs::write(dir.path().join(".dev.vars"), "SECRET=rotated\n").unwrap();
    wait_for_answer(&dev, "hi rotated LOUD").await;
}

#[tokio::test]
async fn init_makes_a_worker_that_dev_serves_at_once() {
    let parent = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(support::outpost_binary())
        .args(["init", "my-worker"])
        .current_dir(parent.path())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let dir = parent.path().join("my-worker");
    let dev = Dev::start(&dir, &[]);
    assert_eq!(support::get(dev.addr, "/").await.text(), "Hello from my-worker!\n");
    let echoed = support::send(dev.addr, "POST", "/echo", &[], b"hi").await;
    assert_eq!(echoed.text(), r#"{"received":"hi"}"#);
    // A second init into the same directory writes nothing.
    let again = std::process::Command::new(support::outpost_binary())
        .args(["init", "my-worker"])
        .current_dir(parent.path())
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));
}
