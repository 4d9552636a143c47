//! The isolate pool with real isolates: isolation modes, limits, eviction
//! and randomness. Several workers share one pool in this process; worker
//! snapshots are made by the real `outpost` binary.

use std::path::Path;
use std::sync::Once;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use outpost_isolate_pool::{FetchError, Isolation, Limits, Pool, PoolConfig, Snapshotter, WorkerSpec};
use outpost_runtime::{DispatchError, WorkerSource};

use crate::support::{self, Dev};

/// An in-process pool. Isolates start from the bootstrap snapshot: this
/// test process runs many workers at once, and per-worker snapshots allow
/// one per process (see `PoolConfig::worker_snapshots`); those are tested
/// through `outpost dev` below.
fn pool(dir: &Path) -> Pool {
    pool_with_store(dir, None)
}

/// A pool whose workers' bindings use `store`.
fn pool_with_store(dir: &Path, store: Option<&outpost_kv::Store>) -> Pool {
    static V8: Once = Once::new();
    V8.call_once(outpost_runtime::init_v8);
    let snapshotter =
        Snapshotter { program: env!("CARGO_BIN_EXE_outpost").into(), args: vec!["snapshot-worker".into()] };
    let mut config = PoolConfig::new(dir.join("snapshots"), snapshotter);
    config.threads = 2;
    config.worker_snapshots = false;
    if let Some(store) = store {
        let kv: std::sync::Arc<dyn outpost_kv::KvStorage> = std::sync::Arc::new(store.clone());
        let objects: std::sync::Arc<dyn outpost_kv::objects::ObjectStorage> = std::sync::Arc::new(store.clone());
        config.services.insert(kv);
        config.services.insert(objects);
    }
    Pool::start(config)
}

fn write_worker(root: &Path, name: &str, code: &str) -> WorkerSource {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("worker.js"), code).unwrap();
    WorkerSource::new(&dir, &dir.join("worker.js")).unwrap()
}

fn spec(name: &str, source: WorkerSource, isolation: Isolation, limits: Limits) -> WorkerSpec {
    WorkerSpec { name: name.into(), source, vars: Default::default(), isolation, limits, bindings: Vec::new() }
}

async fn call(pool: &Pool, worker: &str, path: &str) -> Result<(u16, String), FetchError> {
    let request = http::Request::get(path).body(outpost_runtime::empty_body()).unwrap();
    let parts = outpost_runtime::HttpRequest {
        request,
        url: format!("http://{worker}.test{path}"),
        request_id: "test".into(),
        cf: None,
        depth: 0,
    };
    let response = pool.fetch(worker, parts).await?;
    let status = response.status().as_u16();
    let body: Bytes = response.into_body().collect().await.expect("a whole body").to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

async fn deploy(pool: &Pool, spec: WorkerSpec) {
    let pool = pool.clone();
    tokio::task::spawn_blocking(move || pool.deploy(spec)).await.unwrap().expect("the worker deploys");
}

const COUNTER: &str = "let count = 0;\nexport default { fetch() { count++; return new Response(String(count)); } };\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_isolates_keep_module_state_and_per_request_isolates_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool(dir.path());
    let shared = write_worker(dir.path(), "shared", COUNTER);
    let fresh = write_worker(dir.path(), "fresh", COUNTER);
    deploy(&pool, spec("shared", shared, Isolation::Shared, Limits::default())).await;
    deploy(&pool, spec("fresh", fresh, Isolation::PerRequest, Limits::default())).await;
    for expected in 1..=5 {
        assert_eq!(call(&pool, "shared", "/").await.unwrap(), (200, expected.to_string()));
        assert_eq!(call(&pool, "fresh", "/").await.unwrap(), (200, "1".to_string()), "request {expected}");
    }
    // Concurrent per-request calls never see each other either.
    let calls: Vec<_> = (0..16).map(|_| call(&pool, "fresh", "/")).collect();
    for result in futures::future::join_all(calls).await {
        assert_eq!(result.unwrap(), (200, "1".to_string()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infinite_loop_is_cut_at_the_cpu_limit_while_other_workers_serve() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool(dir.path());
    let looping = write_worker(
        dir.path(),
        "a",
        "export default { fetch(request) { if (request.url.endsWith('/loop')) { while (true) {} } return new Response('a ok'); } };\n",
    );
    let b = write_worker(
        dir.path(),
        "b",
        "export default { async fetch() { await null; return new Response('b ok'); } };\n",
    );
    let c = write_worker(
        dir.path(),
        "c",
        "export default { fetch(r) { return Response.json({ c: new URL(r.url).pathname }); } };\n",
    );
    let limits = Limits { cpu_ms: 50, ..Limits::default() };
    deploy(&pool, spec("a", looping, Isolation::Shared, limits)).await;
    deploy(&pool, spec("b", b, Isolation::Shared, limits)).await;
    deploy(&pool, spec("c", c, Isolation::Shared, limits)).await;

    let hammer = |worker: &'static str, expected: &'static str| {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut answered = 0;
            for i in 0..200 {
                let path = format!("/{i}");
                let (status, body) = call(&pool, worker, &path).await.unwrap_or_else(|err| panic!("{worker}: {err}"));
                assert_eq!(status, 200, "{worker}");
                let expected = expected.replace("{i}", &i.to_string());
                assert_eq!(body, expected, "{worker}");
                answered += 1;
            }
            answered
        })
    };
    let b_task = hammer("b", "b ok");
    let c_task = hammer("c", r#"{"c":"/{i}"}"#);
    let started = std::time::Instant::now();
    let looped = call(&pool, "a", "/loop").await;
    let took = started.elapsed();
    match looped {
        Err(FetchError::Dispatch(DispatchError::CpuLimitExceeded { limit_ms: 50 })) => {}
        other => panic!("expected the CPU limit, got {other:?}"),
    }
    assert!(took < Duration::from_secs(10), "the loop ran for {took:?}");
    assert_eq!(b_task.await.unwrap(), 200);
    assert_eq!(c_task.await.unwrap(), 200);
    // The worker's next request gets a fresh isolate.
    assert_eq!(call(&pool, "a", "/").await.unwrap(), (200, "a ok".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allocation_bomb_is_stopped_and_the_process_survives() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool(dir.path());
    let bomb = write_worker(
        dir.path(),
        "bomb",
        "export default { fetch(request) { if (request.url.endsWith('/bomb')) { const keep = []; while (true) keep.push(new Array(100000).fill({ x: keep.length })); } return new Response('fine'); } };\n",
    );
    let limits = Limits { memory_mb: 64, cpu_ms: 30_000, ..Limits::default() };
    deploy(&pool, spec("bomb", bomb, Isolation::Shared, limits)).await;
    match call(&pool, "bomb", "/bomb").await {
        Err(FetchError::Dispatch(DispatchError::MemoryLimitExceeded { limit_mb: 64 })) => {}
        other => panic!("expected the memory limit, got {other:?}"),
    }
    assert_eq!(call(&pool, "bomb", "/").await.unwrap(), (200, "fine".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_worker_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool(dir.path());
    let source = write_worker(
        dir.path(),
        "evicted",
        "const loadedAt = 'top level ran';\nlet count = 0;\nexport default { fetch() { count++; return new Response(`${loadedAt} ${count}`); } };\n",
    );
    deploy(&pool, spec("evicted", source, Isolation::Shared, Limits::default())).await;
    assert_eq!(call(&pool, "evicted", "/").await.unwrap().1, "top level ran 1");
    assert_eq!(call(&pool, "evicted", "/").await.unwrap().1, "top level ran 2");
    // Nothing is idle long enough yet under the default rules.
    assert_eq!(pool.evict_now(), 0);
    assert!(pool.evict_idle(Duration::ZERO) >= 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while pool.stats().live_isolates > 0 {
        assert!(std::time::Instant::now() < deadline, "the isolate never went away");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Back: top-level state as deployed, nothing of the old isolate.
    assert_eq!(call(&pool, "evicted", "/").await.unwrap().1, "top level ran 1");
    assert_eq!(pool.stats().live_isolates, 1);
}

#[tokio::test]
async fn outpost_dev_enforces_limits_from_outpost_toml() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("outpost.toml"),
        "name = \"limited\"\nisolation = \"per-request\"\n[limits]\ncpu_ms = 20\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("worker.js"),
        "let n = 0;\nexport default { fetch(request) { if (request.url.endsWith('/spin')) { for (;;) {} } n++; return new Response(String(n)); } };\n",
    )
    .unwrap();
    let dev = Dev::start(dir.path(), &[]);
    let reply = support::get(dev.addr, "/spin").await;
    assert_eq!(reply.status, 503);
    assert!(reply.text().contains("exceeded its CPU time limit of 20 ms"), "{}", reply.text());
    for _ in 0..3 {
        assert_eq!(support::get(dev.addr, "/").await.text(), "1", "per-request isolation: no state carried over");
    }
}

/// `outpost dev --no-watch` runs its one worker from a per-worker snapshot.
fn dev_worker(config: &str, code: &str) -> (tempfile::TempDir, Dev) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("outpost.toml"), config).unwrap();
    std::fs::write(dir.path().join("worker.js"), code).unwrap();
    let dev = Dev::start(dir.path(), &["--no-watch"]);
    (dir, dev)
}

#[tokio::test]
async fn isolates_from_one_snapshot_get_their_own_randomness() {
    let (_dir, dev) = dev_worker(
        "name = \"random\"\nisolation = \"per-request\"\n",
        "const atLoad = Math.random();\nexport default { fetch() { return Response.json({ math: Math.random(), bytes: [...crypto.getRandomValues(new Uint8Array(8))], uuid: crypto.randomUUID(), atLoad }); } };\n",
    );
    assert!(dev.logs().contains("worker snapshot made"), "{}", dev.logs());
    let mut seen = std::collections::HashSet::new();
    let mut at_load = std::collections::HashSet::new();
    for _ in 0..5 {
        let value: serde_json::Value = serde_json::from_slice(&support::get(dev.addr, "/").await.body).unwrap();
        for key in ["math", "bytes", "uuid"] {
            assert!(seen.insert(format!("{key}:{}", value[key])), "{key} repeated across isolates: {value}");
        }
        at_load.insert(value["atLoad"].to_string());
    }
    // Top-level values are computed once, at snapshot time, as documented.
    assert_eq!(at_load.len(), 1);
}

#[tokio::test]
async fn per_request_isolation_from_a_snapshot_keeps_no_state_and_shared_does() {
    let counter = "let count = 0;\nexport default { fetch() { count++; return new Response(String(count)); } };\n";
    let (_fresh_dir, fresh) = dev_worker("name = \"fresh\"\nisolation = \"per-request\"\n", counter);
    let (_shared_dir, shared) = dev_worker("name = \"shared\"\n", counter);
    for expected in 1..=4 {
        assert_eq!(support::get(fresh.addr, "/").await.text(), "1");
        assert_eq!(support::get(shared.addr, "/").await.text(), expected.to_string());
    }
}

#[tokio::test]
async fn top_level_pending_work_falls_back_to_evaluating_in_each_isolate() {
    let (_dir, dev) = dev_worker(
        "name = \"timer\"\n",
        // Long enough to be still pending when the snapshot is taken (a
        // 1 ms timer could fire while the snapshot child checks the module).
        "let ready = false;\nsetTimeout(() => { ready = true; }, 200);\nexport default { fetch() { return new Response(String(ready)); } };\n",
    );
    let logs = dev.wait_for_log("no worker snapshot");
    assert!(logs.contains("top-level code left work pending"), "{logs}");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(support::get(dev.addr, "/").await.text(), "true");
}

/// A worker whose object takes 300 ms per event and reports when it ran.
const SLOW_OBJECT: &str = r#"
export class Slow {
  async fetch() {
    const start = Date.now();
    await new Promise((resolve) => setTimeout(resolve, 300));
    return Response.json({ start, end: Date.now() });
  }
}
export default {
  fetch(request, env) {
    return env.SLOW.get(env.SLOW.idFromName("one")).fetch(request);
  },
};
"#;

/// A shared-isolation worker with one Durable Object binding
/// `(binding, class, worker that exports it)`, on `store`.
fn object_spec(root: &Path, name: &str, code: &str, (binding, class, script): (&str, &str, &str)) -> WorkerSpec {
    let mut spec = spec(name, write_worker(root, name, code), Isolation::Shared, Limits::default());
    spec.bindings = vec![std::sync::Arc::new(outpost_runtime::DurableObjectBinding {
        binding: binding.into(),
        class_name: class.into(),
        script: script.into(),
    })];
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redeploy_never_runs_an_object_twice_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = outpost_kv::Store::open(&dir.path().join("kv.redb"), Default::default()).unwrap();
    let pool = pool_with_store(dir.path(), Some(&store));
    let slow = || object_spec(dir.path(), "slow", SLOW_OBJECT, ("SLOW", "Slow", "slow"));
    deploy(&pool, slow()).await;
    let first = tokio::spawn({
        let pool = pool.clone();
        async move { call(&pool, "slow", "/").await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A new version while the old one's object is mid-event.
    deploy(&pool, slow()).await;
    let (status, second) = call(&pool, "slow", "/").await.unwrap();
    assert_eq!(status, 200, "{second}");
    let (_, first) = first.await.unwrap().unwrap();
    let first: serde_json::Value = serde_json::from_str(&first).unwrap();
    let second: serde_json::Value = serde_json::from_str(&second).unwrap();
    assert!(
        second["start"].as_u64() >= first["end"].as_u64(),
        "the new version's instance started before the old one finished: {first} {second}"
    );
    pool.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_of_another_worker_must_be_declared_by_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = outpost_kv::Store::open(&dir.path().join("kv.redb"), Default::default()).unwrap();
    let pool = pool_with_store(dir.path(), Some(&store));
    deploy(&pool, object_spec(dir.path(), "host", SLOW_OBJECT, ("SLOW", "Slow", "host"))).await;
    let caller_code = "export default { fetch(request, env) { return env.REMOTE.get(env.REMOTE.idFromName('x')).fetch(request); } };\n";
    // A class the host declares: reachable from another worker.
    deploy(&pool, object_spec(dir.path(), "caller", caller_code, ("REMOTE", "Slow", "host"))).await;
    let (status, body) = call(&pool, "caller", "/").await.unwrap();
    assert_eq!(status, 200, "{body}");
    // An export the host does not declare as a Durable Object: refused.
    let sneaky = object_spec(dir.path(), "sneaky", caller_code, ("REMOTE", "default", "host"));
    let refused = {
        let pool = pool.clone();
        tokio::task::spawn_blocking(move || pool.deploy(sneaky)).await.unwrap()
    };
    let message = refused.expect_err("an undeclared class is refused").to_string();
    assert!(message.contains("does not declare"), "{message}");
    pool.stop();
}

/// An isolate serving a WebSocket is busy: idle eviction leaves it alone
/// (for an object host, evicting it would let a second instance of its
/// objects start) until the socket closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolate_with_an_open_websocket_is_not_evicted() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool(dir.path());
    let source = write_worker(
        dir.path(),
        "sockets",
        r#"export default {
          fetch() {
            const [client, server] = Object.values(new WebSocketPair());
            server.accept();
            return new Response(null, { status: 101, webSocket: client });
          },
        };"#,
    );
    deploy(&pool, spec("sockets", source, Isolation::Shared, Limits::default())).await;
    let request = http::Request::get("/")
        .header("upgrade", "websocket")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .body(outpost_runtime::empty_body())
        .unwrap();
    let parts = outpost_runtime::HttpRequest {
        request,
        url: "http://sockets.test/".into(),
        request_id: "test".into(),
        cf: None,
        depth: 0,
    };
    let response = pool.fetch("sockets", parts).await.unwrap();
    assert_eq!(response.status(), 101);
    let pipe = response
        .extensions()
        .get::<outpost_runtime::UpgradePipe>()
        .expect("a 101 carries the pipe")
        .take()
        .expect("the front end of the pipe");
    // As the front does: the (empty) body goes, and with it the request's
    // in-flight count; only the socket remains.
    drop(response);
    // The server end registers once the socket is set up.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(pool.evict_idle(Duration::ZERO), 0, "the socket is open");
    drop(pipe);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while pool.evict_idle(Duration::ZERO) == 0 {
        assert!(std::time::Instant::now() < deadline, "the isolate stayed busy after its socket closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
