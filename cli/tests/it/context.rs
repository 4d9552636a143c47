//! `env` and `ctx`: variables from config and flags, `waitUntil`,
//! `passThroughOnException`.

use std::time::Duration;

use crate::support::{self, worker, Dev};

#[tokio::test]
async fn var_flags_override_config_vars() {
    let dir = worker(&[
        ("outpost.toml", "name = \"vars\"\n[vars]\nA = \"from config\"\nB = \"kept\"\n"),
        ("worker.js", "export default { fetch(request, env) { return Response.json(env); } };\n"),
    ]);
    let dev = Dev::start(dir.path(), &["--var", "A=from flag", "--var", "C=x=y"]);
    let reply = support::get(dev.addr, "/").await;
    let env: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(env, serde_json::json!({ "A": "from flag", "B": "kept", "C": "x=y" }));
}

#[tokio::test]
async fn wait_until_work_runs_after_the_response() {
    let dir = worker(&[(
        "worker.js",
        r#"
let finished = [];
export default {
  async fetch(request, env, ctx) {
    const path = new URL(request.url).pathname;
    if (path === "/background") {
      ctx.waitUntil(new Promise((resolve) => setTimeout(() => { finished.push("late work"); resolve(); }, 50)));
      return new Response("answered first");
    }
    return Response.json(finished);
  },
};
"#,
    )]);
    let dev = Dev::start(dir.path(), &[]);
    assert_eq!(support::get(dev.addr, "/background").await.text(), "answered first");
    assert_eq!(support::get(dev.addr, "/").await.text(), "[]", "the response did not wait for waitUntil work");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while support::get(dev.addr, "/").await.text() != r#"["late work"]"# {
        assert!(tokio::time::Instant::now() < deadline, "waitUntil work never finished");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn pass_through_on_exception_is_accepted() {
    let dir = worker(&[(
        "worker.js",
        "export default { fetch(request, env, ctx) { ctx.passThroughOnException(); if (request.url.endsWith('/fail')) throw new Error('after passThrough'); return new Response(typeof ctx.waitUntil); } };\n",
    )]);
    let dev = Dev::start(dir.path(), &[]);
    assert_eq!(support::get(dev.addr, "/").await.text(), "function");
    let reply = support::get(dev.addr, "/fail").await;
    assert_eq!(reply.status, 500);
    let logs = dev.wait_for_log("after passThrough");
    assert!(logs.contains("no origin to pass to"), "{logs}");
}

#[tokio::test]
async fn kv_data_survives_a_restart() {
    let dir = worker(&[
        ("outpost.toml", "name = \"kv-restart\"\n[[kv_namespaces]]\nbinding = \"STORE\"\n"),
        (
            "worker.js",
            "export default { async fetch(request, env) { const url = new URL(request.url); if (request.method === 'PUT') { await env.STORE.put('k', await request.text()); return new Response('stored'); } return new Response(await env.STORE.get('k') ?? 'missing'); } };\n",
        ),
    ]);
    let dev = Dev::start(dir.path(), &[]);
    assert_eq!(support::send(dev.addr, "PUT", "/", &[], b"kept across restarts").await.text(), "stored");
    // SIGKILL: the put was acknowledged, so it is on disk.
    let data_dir = dev.stop();
    let dev = Dev::start_in(dir.path(), data_dir, &[]);
    assert_eq!(support::get(dev.addr, "/").await.text(), "kept across restarts");
}
