//! A tenant attacking through its worker's code and configuration.

use std::time::Duration;

use super::{attack, count_in_log, hostile_node, reload, wait_for_more, Bystander};
use crate::support;

#[tokio::test]
async fn atomics_wait_is_refused_instead_of_blocking_a_thread() {
    let mut node = hostile_node(
        r#"export default { fetch() {
          try {
            Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0);
            return new Response("waited");
          } catch (error) {
            return new Response(`${error.name}: ${error.message}`);
          }
        } };"#,
        "",
        "",
        &[],
    );
    let addr = node.http.unwrap();
    let bystander = Bystander::watch(addr);
    let waits: Vec<_> = (0..12).map(|_| tokio::spawn(attack(addr, "GET", "/", Duration::from_secs(20)))).collect();
    for wait in waits {
        let reply = wait.await.unwrap().expect("every Atomics.wait request is answered");
        assert!(reply.text().starts_with("TypeError"), "{}", reply.text());
        assert!(reply.text().contains("Atomics.wait"), "{}", reply.text());
    }
    bystander.assert_unharmed(&mut node).await;
}

/// Imports the specifier in `?s=` and answers what happened.
const IMPORTER: &str = r#"export default { async fetch(request) {
  const specifier = new URL(request.url).searchParams.get("s");
  try {
    const module = await import(specifier);
    return new Response(`imported: ${JSON.stringify(module.default)}`);
  } catch (error) {
    return new Response(`${error.name}: ${error.message}`, { status: 418 });
  }
} };"#;

#[tokio::test]
async fn a_worker_cannot_read_files_outside_its_bundle() {
    let secret = "the innocent worker's secret";
    let mut node = hostile_node(
        IMPORTER,
        "",
        "",
        &[
            ("workers/innocent/config.json", &format!("{{\"secret\": \"{secret}\"}}")),
            ("workers/attacker/mine.json", "{\"mine\": true}"),
        ],
    );
    let addr = node.http.unwrap();
    // A symlink in the bundle to a file outside it.
    let attacker_dir = node.dir().join("workers/attacker");
    std::os::unix::fs::symlink(node.dir().join("workers/innocent/config.json"), attacker_dir.join("link.json"))
        .unwrap();
    let bystander = Bystander::watch(addr);
    let ask = |specifier: &str| {
        let path = format!("/?s={}", specifier.replace('%', "%25").replace('/', "%2F"));
        async move { attack(addr, "GET", &path, Duration::from_secs(20)).await.expect("an answer") }
    };
    assert_eq!(ask("./mine.json").await.text(), "imported: {\"mine\":true}");
    for sneaky in [
        "./..%2finnocent%2fconfig.json",
        "./..%2f..%2fworkers%2finnocent%2fconfig.json",
        "./%2e%2e/innocent/config.json",
        "../innocent/config.json",
        "/etc/passwd",
        "file:///etc/passwd",
        "./..%5cinnocent%5cconfig.json",
    ] {
        let reply = ask(sneaky).await;
        assert_eq!(reply.status, 418, "{sneaky}: {}", reply.text());
        assert!(!reply.text().contains(secret), "{sneaky} leaked: {}", reply.text());
        assert!(!reply.text().contains(node.dir().to_str().unwrap()), "{sneaky} shows a host path: {}", reply.text());
    }
    // A symlink out of the bundle reads like a file that is not there: the
    // answer tells nothing about what exists outside.
    let through_link = ask("./link.json").await;
    let missing = ask("./nothing.json").await;
    assert_eq!(through_link.status, 418);
    assert!(!through_link.text().contains(secret));
    assert_eq!(through_link.text().replace("link.json", "X"), missing.text().replace("nothing.json", "X"));
    bystander.assert_unharmed(&mut node).await;
}

/// Changes the attacker's files on a running node to `files` and reloads:
/// the reload must refuse the attacker (its log naming `refusal`), which
/// keeps its running version, while the innocent worker serves throughout.
async fn assert_reload_refused(files: &[(&str, &str)], refusal: &str) {
    let mut node = hostile_node("export default { fetch() { return new Response('attacker v1'); } };", "", "", &[]);
    let addr = node.http.unwrap();
    let bystander = Bystander::watch(addr);
    for (name, text) in files {
        std::fs::write(node.dir().join("workers/attacker").join(name), text).unwrap();
    }
    reload(&node, "reload failed for a worker").await;
    assert!(node.logs().contains(refusal), "{}", node.logs());
    assert_eq!(attack(addr, "GET", "/", Duration::from_secs(20)).await.unwrap().text(), "attacker v1");
    bystander.assert_unharmed(&mut node).await;
}

#[tokio::test]
async fn a_static_import_out_of_the_bundle_is_refused_on_a_running_node() {
    // The attacker would run the innocent worker's code as its own.
    let worker = "import victim from \"./..%2finnocent%2fworker.js\";\nexport default victim;\n";
    assert_reload_refused(&[("worker.js", worker)], "cannot import").await;
}

#[tokio::test]
async fn array_buffers_past_the_memory_limit_are_named_as_such() {
    let mut node = hostile_node(
        r#"export default { fetch() {
          const kept = [];
          for (let i = 0; i < 100; i++) kept.push(new ArrayBuffer(1 << 20));
          return new Response(`kept ${kept.length} MiB`);
        } };"#,
        "[limits]\nmemory_mb = 32\n",
        "",
        &[],
    );
    let addr = node.http.unwrap();
    let bystander = Bystander::watch(addr);
    for _ in 0..5 {
        let reply = attack(addr, "GET", "/", Duration::from_secs(20)).await.expect("answered");
        let text = reply.text();
        assert!(!text.contains("CPU"), "the memory limit is named, not the CPU one: {text}");
        assert!(reply.status >= 500, "{} {text}", reply.status);
    }
    bystander.assert_unharmed(&mut node).await;
}

#[test]
fn a_static_import_out_of_the_bundle_fails_the_load() {
    let dir = support::worker(&[
        ("victim/worker.js", "export default { fetch() { return new Response('victim'); } };\n"),
        (
            "attacker/worker.js",
            "import victim from \"./..%2fvictim%2fworker.js\";\nexport default { fetch() { return new Response('x'); } };\n",
        ),
    ]);
    let output = std::process::Command::new(support::outpost_binary())
        .arg("dev")
        .arg(dir.path().join("attacker"))
        .args(["--port", "0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "the worker loaded: {stderr}");
    assert!(stderr.contains("cannot import \"./..%2fvictim%2fworker.js\""), "{stderr}");
}

#[tokio::test]
async fn a_limit_kill_with_work_pending_answers_and_the_worker_recovers() {
    // A server that accepts and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut kept = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            kept.push(socket);
        }
    });
    let worker = format!(
        r#"
        import {{ DurableObject }} from "cloudflare:workers";
        export class Filler extends DurableObject {{
          async fill(count) {{
            for (let i = 0; i < count; i += 128) {{
              const batch = {{}};
              for (let j = i; j < Math.min(i + 128, count); j++) batch[`key-${{j}}`] = j;
              await this.ctx.storage.put(batch);
            }}
            return "filled";
          }}
        }}
        export default {{ async fetch(request, env) {{
          const path = new URL(request.url).pathname;
          if (path === "/timer") {{ setTimeout(() => {{}}, 1e9); while (true) {{}} }}
          if (path === "/fetch") {{ fetch("http://{silent_addr}/").catch(() => {{}}); await null; while (true) {{}} }}
          if (path === "/timers") {{ for (let i = 0; i < 30000; i++) setTimeout(() => {{}}, 1e9); while (true) {{}} }}
          if (path === "/fill") {{
            try {{ return new Response(await env.FILL.get(env.FILL.idFromName("f")).fill(100000)); }}
            catch (error) {{ return new Response(`object failed: ${{error.message}}`, {{ status: 502 }}); }}
          }}
          return new Response("recovered");
        }} }};
        "#
    );
    let mut node =
        // The silent server is on loopback, which a node refuses by default.
        hostile_node(
            &worker,
            "[[durable_objects.bindings]]\nname = \"FILL\"\nclass_name = \"Filler\"\n",
            "[egress]\nprivate_networks = true\n",
            &[],
        );
    let addr = node.http.unwrap();
    let bystander = Bystander::watch(addr);
    for path in ["/timer", "/fetch", "/timers"] {
        let reply = attack(addr, "GET", path, Duration::from_secs(20))
            .await
            .unwrap_or_else(|| panic!("{path}: no answer; logs:\n{}", node.logs()));
        assert_eq!(reply.status, 503, "{path}: {}", reply.text());
        assert!(reply.text().contains("CPU time limit"), "{path}: {}", reply.text());
        let next = attack(addr, "GET", "/", Duration::from_secs(20)).await.expect("the next request is answered");
        assert_eq!(next.text(), "recovered", "after {path}");
    }
    // Many storage writes: answered (done, or stopped at a limit), never hung.
    let filled = attack(addr, "GET", "/fill", Duration::from_secs(60)).await.expect("the fill is answered");
    assert!(filled.text() == "filled" || filled.status >= 500, "{} {}", filled.status, filled.text());
    assert_eq!(attack(addr, "GET", "/", Duration::from_secs(20)).await.unwrap().text(), "recovered");
    bystander.assert_unharmed(&mut node).await;
    held.abort();
}

#[test]
fn absurd_limits_are_refused_before_they_reach_v8() {
    for (limits, key) in [("memory_mb = 17592186044416", "memory_mb"), ("cpu_ms = 9223372036854775807", "cpu_ms")] {
        let dir = tempfile::tempdir().unwrap();
        let files = [
            ("node.toml", "[[listeners]]\naddress = \"127.0.0.1:0\"\n[[workers]]\npath = \"w\"\n".to_string()),
            ("w/outpost.toml", format!("name = \"w\"\n[limits]\n{limits}\n")),
            ("w/worker.js", super::INNOCENT.to_string()),
        ];
        for (name, text) in &files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let output = std::process::Command::new(support::outpost_binary())
            .args(["serve", "--config"])
            .arg(dir.path().join("node.toml"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{limits}: {stderr}");
        assert!(stderr.contains(key) && stderr.contains("maximum"), "{limits}: {stderr}");
    }
}

#[tokio::test]
async fn absurd_limits_on_reload_change_nothing() {
    let files = [
        ("outpost.toml", "name = \"attacker\"\n[limits]\nmemory_mb = 17592186044416\n"),
        ("worker.js", "export default { fetch() { return new Response('attacker v2'); } };"),
    ];
    assert_reload_refused(&files, "memory_mb = 17592186044416 is over this node's maximum").await;
}

/// Writes to the KV namespace `vault` and reads it back.
const VAULT: &str = r#"export default { async fetch(request, env) {
  const url = new URL(request.url);
  if (url.pathname === "/put") await env.VAULT.put("secret", url.searchParams.get("v"));
  return new Response((await env.VAULT.get("secret")) ?? "(nothing)");
} };"#;

#[tokio::test]
async fn a_worker_cannot_claim_another_workers_data() {
    // Only the innocent worker at first: it claims the namespace "vault".
    let mut node = hostile_node(super::INNOCENT, "", "", &[]);
    let addr = node.http.unwrap();
    std::fs::write(node.dir().join("workers/innocent/worker.js"), VAULT).unwrap();
    std::fs::write(
        node.dir().join("workers/innocent/outpost.toml"),
        "name = \"innocent\"\n[[kv_namespaces]]\nbinding = \"VAULT\"\nid = \"vault\"\n\
         [[queues.producers]]\nqueue = \"inbox\"\nbinding = \"INBOX\"\n",
    )
    .unwrap();
    reload(&node, "reloaded the node's workers").await;
    let stored = support::send(addr, "GET", "/put?v=innocent%20ok", &[("host", "innocent.test")], b"").await;
    assert_eq!(stored.text(), "innocent ok");
    let bystander = Bystander::watch(addr);

    // The attacker names the same id, or reaches for the innocent worker's
    // objects: the reload is refused and nothing changes.
    for (attacker_toml, refusal) in [
        (
            "name = \"attacker\"\n[[kv_namespaces]]\nbinding = \"VAULT\"\nid = \"vault\"\n",
            "the KV namespace \\\"vault\\\" (binding VAULT) belongs to worker \\\"innocent\\\"",
        ),
        (
            "name = \"attacker\"\n[[durable_objects.bindings]]\nname = \"ROOMS\"\nclass_name = \"Room\"\nscript_name = \"innocent\"\n",
            "durable_objects = [\\\"innocent:Room\\\"]",
        ),
        // Reading the innocent worker's queue, or filling it with dead letters.
        ("name = \"attacker\"\n[[queues.consumers]]\nqueue = \"inbox\"\n", "queues = [\\\"inbox\\\"]"),
        (
            "name = \"attacker\"\n[[queues.consumers]]\nqueue = \"mine\"\ndead_letter_queue = \"inbox\"\n",
            "queues = [\\\"inbox\\\"]",
        ),
        // Calling the innocent worker's entrypoints, around its routes.
        (
            "name = \"attacker\"\n[[services]]\nbinding = \"INNOCENT\"\nservice = \"innocent\"\n",
            "services = [\\\"innocent\\\"]",
        ),
    ] {
        std::fs::write(node.dir().join("workers/attacker/outpost.toml"), attacker_toml).unwrap();
        std::fs::write(node.dir().join("workers/attacker/worker.js"), VAULT).unwrap();
        reload(&node, "reload failed").await;
        let logs = node.logs();
        let last = logs.lines().rev().find(|line| line.contains("reload failed")).unwrap();
        assert!(last.contains(refusal), "{last}");
        // The attacker still runs its old code, which has no binding at all.
        let reply = attack(addr, "GET", "/", Duration::from_secs(20)).await.unwrap();
        assert_eq!(reply.text(), "innocent ok", "the attacker's old version answers");
    }
    bystander.assert_unharmed(&mut node).await;
    // The innocent worker's data is untouched.
    let read = support::send(addr, "GET", "/", &[("host", "innocent.test")], b"").await;
    assert_eq!(read.text(), "innocent ok");
}

#[tokio::test]
async fn a_grant_in_node_toml_shares_a_namespace() {
    let grant = "[[grants]]\nworker = \"attacker\"\nkv_namespaces = [\"vault\"]\n";
    let mut node = hostile_node(
        VAULT,
        "[[kv_namespaces]]\nbinding = \"VAULT\"\nid = \"vault\"\n",
        grant,
        &[
            (
                "workers/innocent/outpost.toml",
                "name = \"innocent\"\n[[kv_namespaces]]\nbinding = \"VAULT\"\nid = \"vault\"\n",
            ),
            ("workers/innocent/worker.js", VAULT),
        ],
    );
    let addr = node.http.unwrap();
    let stored = attack(addr, "GET", "/put?v=shared", Duration::from_secs(20)).await.unwrap();
    assert_eq!(stored.text(), "shared");
    let owners = std::fs::read_to_string(node.dir().join(".outpost-node/owners.json")).unwrap();
    assert!(owners.contains("\"vault\": \"innocent\""), "{owners}");
    let innocent = support::send(addr, "GET", "/", &[("host", "innocent.test")], b"").await;
    assert_eq!(innocent.text(), "shared", "the owner sees what its grantee wrote");
    assert!(node.is_running());
}

/// With a grant, one tenant's worker calls another's through a service
/// binding.
#[tokio::test]
async fn a_grant_in_node_toml_allows_a_service_binding() {
    let mut node = hostile_node(
        "export default { fetch(request, env) { return env.INNOCENT.fetch('https://innocent.test/'); } };",
        "[[services]]\nbinding = \"INNOCENT\"\nservice = \"innocent\"\n",
        "[[grants]]\nworker = \"attacker\"\nservices = [\"innocent\"]\n",
        &[],
    );
    let addr = node.http.unwrap();
    let direct = support::send(addr, "GET", "/", &[("host", "innocent.test")], b"").await;
    let through = attack(addr, "GET", "/", Duration::from_secs(20)).await.unwrap();
    assert_eq!((through.status, through.text()), (direct.status, direct.text()));
    assert!(node.is_running());
}

#[tokio::test]
async fn work_after_the_response_is_bounded() {
    let mut node = hostile_node(
        r#"export default { fetch() {
          const burn = (ms) => { const end = Date.now() + ms; while (Date.now() < end) {} };
          const step = () => { burn(40); setTimeout(step, 1); };
          setTimeout(step, 1);
          return new Response("started");
        } };"#,
        "",
        "",
        &[],
    );
    let addr = node.http.unwrap();
    let bystander = Bystander::watch(addr);
    let stops = count_in_log(&node, "isolate stopped");
    assert_eq!(attack(addr, "GET", "/", Duration::from_secs(20)).await.unwrap().text(), "started");
    wait_for_more(&node, "isolate stopped", stops, Duration::from_secs(10)).await;
    bystander.assert_unharmed(&mut node).await;
}

#[tokio::test]
async fn console_output_is_bounded() {
    let mut node = hostile_node(
        r#"export default { fetch(request) {
          const path = new URL(request.url).pathname;
          if (path === "/huge") console.log("x".repeat(100 * 1024 * 1024));
          if (path === "/many") for (let i = 0; i < 100000; i++) console.log(`line ${i}`);
          return new Response("logged");
        } };"#,
        "[limits]\ncpu_ms = 5000\nmemory_mb = 512\n",
        "",
        &[],
    );
    let addr = node.http.unwrap();
    let bystander = Bystander::watch(addr);
    assert_eq!(attack(addr, "GET", "/huge", Duration::from_secs(60)).await.unwrap().text(), "logged");
    assert_eq!(attack(addr, "GET", "/many", Duration::from_secs(60)).await.unwrap().text(), "logged");
    let logs = node.wait_for_log("console lines dropped", Duration::from_secs(10));
    let longest = logs.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 80 * 1024, "a log line of {longest} bytes");
    let kept = logs.lines().filter(|line| line.contains("\"message\":\"line ")).count();
    assert!((1_000..5_000).contains(&kept), "{kept} of 100000 lines were written");
    bystander.assert_unharmed(&mut node).await;
}

#[tokio::test]
async fn env_is_not_fooled_by_binding_names() {
    let mut node = hostile_node(
        r#"export default { fetch(request, env) {
          return Response.json({
            prototypeIntact: Object.getPrototypeOf(env) === Object.prototype,
            own: Object.hasOwn(env, "__proto__"),
            url: import.meta.url,
          });
        } };"#,
        "[[kv_namespaces]]\nbinding = \"__proto__\"\nid = \"proto\"\n",
        "",
        &[],
    );
    let addr = node.http.unwrap();
    let bystander = Bystander::watch(addr);
    let reply = attack(addr, "GET", "/", Duration::from_secs(20)).await.unwrap();
    let value: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(value["prototypeIntact"], true, "{value}");
    assert_eq!(value["own"], true, "{value}");
    assert_eq!(value["url"], "file:///bundle/worker.js", "{value}");
    bystander.assert_unharmed(&mut node).await;

    // A binding may not hide a [vars] entry.
    let dir = support::worker(&[
        ("outpost.toml", "[vars]\nCACHE = \"text\"\n[[kv_namespaces]]\nbinding = \"CACHE\"\n"),
        ("worker.js", super::INNOCENT),
    ]);
    let output = std::process::Command::new(support::outpost_binary())
        .arg("dev")
        .arg(dir.path())
        .args(["--port", "0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("CACHE"), "{stderr}");
}

#[tokio::test]
async fn a_stalled_log_reader_does_not_stall_the_workers() {
    let mut node = hostile_node(
        r#"export default { fetch() {
          for (let i = 0; i < 5000; i++) console.log(`chatter ${i} ${"x".repeat(200)}`);
          return new Response("chattered");
        } };"#,
        "[limits]\ncpu_ms = 5000\n",
        "",
        &[],
    );
    let addr = node.http.unwrap();
    // Nobody reads the node's standard error any more: its pipe fills up.
    node.read_stderr(false);
    let bystander = Bystander::watch(addr);
    for _ in 0..5 {
        let reply = attack(addr, "GET", "/", Duration::from_secs(20)).await.expect("answered while the log is stalled");
        assert_eq!(reply.text(), "chattered");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    bystander.assert_unharmed(&mut node).await;
    node.read_stderr(true);
}

#[tokio::test]
async fn javascript_still_running_30_s_after_the_last_request_is_stopped() {
    let mut node = hostile_node(
        r#"export default { fetch() {
          // A little work, forever, long after the response.
          setInterval(() => { let x = 0; for (let i = 0; i < 1000; i++) x += i; }, 200);
          return new Response("ticking");
        } };"#,
        "",
        "",
        &[],
    );
    let addr = node.http.unwrap();
    assert_eq!(attack(addr, "GET", "/", Duration::from_secs(20)).await.unwrap().text(), "ticking");
    let bystander = Bystander::watch(addr);
    let needle = "still running JavaScript 30 s after its last request";
    wait_for_more(&node, needle, 0, Duration::from_secs(45)).await;
    let logs = node.logs();
    bystander.assert_unharmed(&mut node).await;
    assert!(!logs.contains("CPU time limit"), "stopped by the CPU meter instead: {logs}");
    // The next request gets a fresh isolate.
    assert_eq!(attack(addr, "GET", "/", Duration::from_secs(20)).await.unwrap().text(), "ticking");
    assert!(node.is_running());
}

#[tokio::test]
async fn an_isolate_pushing_to_its_websockets_keeps_running() {
    use futures::StreamExt as _;
    let mut node = hostile_node(
        r#"export default { fetch() {
          const [client, server] = Object.values(new WebSocketPair());
          server.accept();
          // Server push: 2 ms of work every 100 ms, with no message coming in,
          // for far longer than the 50 ms budget lasts without refills.
          setInterval(() => {
            const end = Date.now() + 2;
            while (Date.now() < end) {}
            server.send("tick");
          }, 100);
          return new Response(null, { status: 101, webSocket: client });
        } };"#,
        "",
        "",
        &[],
    );
    let addr = node.http.unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut socket, _) = tokio_tungstenite::client_async("ws://attacker.test/", tcp).await.unwrap();
    let mut ticks = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
    while let Ok(Some(Ok(message))) = tokio::time::timeout_at(deadline, socket.next()).await {
        assert!(message.is_text(), "{message:?}");
        ticks += 1;
    }
    assert!(ticks >= 25, "only {ticks} ticks in 4 s; logs:\n{}", node.logs());
    assert!(!node.logs().contains("isolate stopped"), "{}", node.logs());
    assert!(node.is_running());
}

#[tokio::test]
async fn a_refused_worker_does_not_hold_back_the_others_reload() {
    let mut node = hostile_node("export default { fetch() { return new Response('attacker v1'); } };", "", "", &[]);
    let addr = node.http.unwrap();
    // The attacker's new configuration is refused; the innocent worker's
    // new version must still go live.
    std::fs::write(
        node.dir().join("workers/attacker/outpost.toml"),
        "name = \"attacker\"\n[limits]\ncpu_ms = 9223372036854775807\n",
    )
    .unwrap();
    std::fs::write(
        node.dir().join("workers/attacker/worker.js"),
        "export default { fetch() { return new Response('attacker v2'); } };",
    )
    .unwrap();
    std::fs::write(
        node.dir().join("workers/innocent/worker.js"),
        "export default { fetch() { return new Response('innocent v2'); } };",
    )
    .unwrap();
    reload(&node, "reloaded the node's workers").await;
    let logs = node.logs();
    assert!(logs.contains("reload failed for a worker") && logs.contains("cpu_ms"), "{logs}");
    let innocent = support::send(addr, "GET", "/", &[("host", "innocent.test")], b"").await;
    assert_eq!(innocent.text(), "innocent v2");
    assert_eq!(attack(addr, "GET", "/", Duration::from_secs(20)).await.unwrap().text(), "attacker v1");
    assert!(node.is_running());
}

#[tokio::test]
async fn fetch_cannot_reach_the_nodes_own_network() {
    // A service on the node's loopback that tenants must not reach.
    let private = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let private_addr = private.local_addr().unwrap();
    let served = tokio::spawn(async move {
        while let Ok((mut socket, _)) = private.accept().await {
            use tokio::io::AsyncWriteExt as _;
            let _ = socket.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsecret").await;
        }
    });
    let worker = r#"export default { async fetch(request) {
      const target = new URL(request.url).searchParams.get("to");
      try {
        const answer = await fetch(target);
        return new Response(`reached: ${await answer.text()}`);
      } catch (error) {
        return new Response(`${error.name}: ${error.message}`, { status: 502 });
      }
    } };"#;
    let mut node = hostile_node(worker, "", "", &[]);
    let addr = node.http.unwrap();
    let bystander = Bystander::watch(addr);
    let port = private_addr.port();
    for target in [
        format!("http://127.0.0.1:{port}/"),
        format!("http://localhost:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
        format!("http://2130706433:{port}/"),
        format!("http://{addr}/"),
    ] {
        let path = format!("/?to={}", target.replace(':', "%3A").replace('/', "%2F"));
        let reply = attack(addr, "GET", &path, Duration::from_secs(20)).await.expect("answered");
        assert_eq!(reply.status, 502, "{target}: {}", reply.text());
        assert!(!reply.text().contains("secret"), "{target}: {}", reply.text());
    }
    // IPv6 unique-local and link-local addresses are refused before any
    // connection is tried.
    for target in ["http://[fd00::1]:8080/", "http://[fe80::1]/"] {
        let path = format!("/?to={}", target.replace(':', "%3A").replace('/', "%2F"));
        let reply = attack(addr, "GET", &path, Duration::from_secs(20)).await.expect("answered");
        assert!(reply.text().contains("may not connect to the private address"), "{target}: {}", reply.text());
    }
    bystander.assert_unharmed(&mut node).await;
    served.abort();
}
