//! The CPU limit as a matrix: every place JavaScript runs on a pool thread
//! × {a plain loop, a microtask loop, a loop after the response}. Each cell
//! must be cut with a 503 or a logged stop, having used at most twice the
//! worker's `cpu_ms` of the isolate thread's CPU (read from /proc, so the
//! bound holds however busy the machine is).

use std::time::Duration;

use futures::SinkExt as _;
use tokio_tungstenite::tungstenite::Message;

use super::{attack, count_in_log, hostile_node, wait_for_more, Bystander};
use crate::support::Node;

const CPU_MS: u64 = 100;

/// The attacker: `/p/<place>/<variant>` runs `variant` in `place`.
const SPINNER: &str = r#"
import { DurableObject } from "cloudflare:workers";

const spin = () => { while (true) {} };
const microSpin = () => { const f = () => Promise.resolve().then(f); f(); };
const burn = (ms) => { const end = Date.now() + ms; while (Date.now() < end) {} };
// Slices of 40 ms, each under the limit, one after another for ever.
const sliceChain = () => { const step = () => { burn(40); setTimeout(step, 1); }; setTimeout(step, 1); };
function run(variant) {
  if (variant === "plain") spin();
  else if (variant === "microtask") microSpin();
  else sliceChain();
}

export class Spinner extends DurableObject {
  constructor(state, env) {
    super(state, env);
    const name = state.id.name ?? "";
    if (name.startsWith("ctor-")) run(name.slice(5));
  }
  ping() { return "pong"; }
  spin(variant) { run(variant); return "returned"; }
  async arm(variant) {
    await this.ctx.storage.put("variant", variant);
    await this.ctx.storage.setAlarm(Date.now());
  }
  async alarm(info) {
    if (info.retryCount === 0) run(await this.ctx.storage.get("variant"));
    else await this.ctx.storage.put("retried", info.retryCount);
  }
  async retried() { return (await this.ctx.storage.get("retried")) ?? 0; }
}

export default {
  async fetch(request, env, ctx) {
    const [, , place, variant] = new URL(request.url).pathname.split("/");
    switch (place) {
      case "warm":
        return new Response(await env.SPIN.get(env.SPIN.idFromName("warm")).ping());
      case "fetch":
        run(variant);
        if (variant === "microtask") await new Promise(() => {});
        return new Response("answered");
      case "timer":
        await new Promise((resolve) => setTimeout(() => { run(variant); resolve(); }, 5));
        if (variant === "microtask") await new Promise(() => {});
        return new Response("answered");
      case "waitUntil":
        ctx.waitUntil((async () => { await new Promise((r) => setTimeout(r, 20)); run(variant); })());
        return new Response("answered");
      case "websocket": {
        const [client, server] = Object.values(new WebSocketPair());
        server.accept();
        server.addEventListener("message", (event) => run(event.data));
        return new Response(null, { status: 101, webSocket: client });
      }
      case "constructor":
        try {
          return new Response(await env.SPIN.get(env.SPIN.idFromName(`ctor-${variant}`)).ping());
        } catch (error) {
          return new Response(`object failed: ${error.message}`, { status: 502 });
        }
      case "rpc":
        try {
          return new Response(await env.SPIN.get(env.SPIN.idFromName("rpc")).spin(variant));
        } catch (error) {
          return new Response(`object failed: ${error.message}`, { status: 502 });
        }
      case "alarm":
        await env.SPIN.get(env.SPIN.idFromName(`alarm-${variant}`)).arm(variant);
        return new Response("armed");
      case "retried":
        return new Response(String(await env.SPIN.get(env.SPIN.idFromName(`alarm-${variant}`)).retried()));
      default:
        return new Response("ok");
    }
  },
};
"#;

const STOPPED: &str = "isolate stopped: the worker exceeded its CPU time limit";

/// CPU time the node's isolate thread has used, in ms (10 ms resolution).
fn isolate_thread_cpu_ms(node: &Node) -> u64 {
    let tasks = format!("/proc/{}/task", node.pid());
    for task in std::fs::read_dir(&tasks).unwrap().map_while(Result::ok) {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() == "isolates-0" {
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap();
            let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split_whitespace().collect();
            let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
            // SAFETY: sysconf has no preconditions.
            let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
            return ticks * 1000 / per_second;
        }
    }
    panic!("no isolates-0 thread in {tasks}");
}

#[tokio::test]
async fn the_cpu_limit_covers_every_place_javascript_runs() {
    let mut node = hostile_node(
        SPINNER,
        &format!(
            "[limits]\ncpu_ms = {CPU_MS}\n[[durable_objects.bindings]]\nname = \"SPIN\"\nclass_name = \"Spinner\"\n"
        ),
        "",
        &[],
    );
    let addr = node.http.unwrap();
    let bystander = Bystander::watch(addr);
    let places = ["fetch", "timer", "waitUntil", "websocket", "constructor", "rpc", "alarm"];
    let mut report = Vec::new();
    for place in places {
        for variant in ["plain", "microtask", "after"] {
            // Both isolates (the worker's and its object host) are live
            // before the clock starts: starting one is not the attack.
            let warm = attack(addr, "GET", "/p/warm", Duration::from_secs(20)).await.expect("the warm-up is answered");
            assert_eq!(warm.text(), "pong");
            let stops_before = count_in_log(&node, STOPPED);
            let cpu_before = isolate_thread_cpu_ms(&node);
            let path = format!("/p/{place}/{variant}");
            let outcome = if place == "websocket" {
                let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
                let (mut socket, _) =
                    tokio_tungstenite::client_async(format!("ws://attacker.test{path}"), tcp).await.unwrap();
                socket.send(Message::text(variant)).await.unwrap();
                wait_for_more(&node, STOPPED, stops_before, Duration::from_secs(20)).await;
                "logged stop".to_string()
            } else {
                let reply = attack(addr, "GET", &path, Duration::from_secs(20))
                    .await
                    .unwrap_or_else(|| panic!("{path}: no answer within 20 s; logs:\n{}", node.logs()));
                if reply.status == 503 && reply.text().contains(&format!("CPU time limit of {CPU_MS} ms")) {
                    "503".to_string()
                } else {
                    wait_for_more(&node, STOPPED, stops_before, Duration::from_secs(20)).await;
                    format!("{} then logged stop", reply.status)
                }
            };
            let used = isolate_thread_cpu_ms(&node) - cpu_before;
            report.push(format!("{path}: {outcome}, {used} ms"));
            assert!(used <= 2 * CPU_MS, "{path} used {used} ms of CPU (limit {CPU_MS} ms): {report:?}");
        }
    }
    eprintln!("{report:#?}");
    // A looping alarm() is retried like a throwing one; its retry (which
    // does not loop) succeeds. (The microtask loop starts after alarm()
    // has returned: that alarm succeeded.)
    for variant in ["plain"] {
        let mut retried = String::new();
        for _ in 0..100 {
            retried =
                attack(addr, "GET", &format!("/p/retried/{variant}"), Duration::from_secs(20)).await.unwrap().text();
            if retried != "0" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(retried, "1", "the {variant} alarm was not retried; logs:\n{}", node.logs());
    }
    // After all that, every worker still answers.
    assert_eq!(attack(addr, "GET", "/p/warm", Duration::from_secs(20)).await.unwrap().text(), "pong");
    bystander.assert_unharmed(&mut node).await;
}
