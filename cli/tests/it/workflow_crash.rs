//! The workflow crash storm: instances of a five-phase workflow (a step, a
//! sleep, a step, a wait for an event, a step) in a real `outpost dev`
//! killed with SIGKILL at random moments, again and again, while a driver
//! creates instances and sends their events. After the last restart every
//! instance created completes with the right output, and every step's
//! callback ran exactly once after the attempt that finished it: each step
//! returns the count of its side effects (kept in KV) at its end, so a
//! callback run again after its step finished would leave the count above
//! what the step returned. Attempts cut by a kill before their step was
//! stored run again (the at-least-once window) and are counted.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{self, try_get, Dev, XorShift};

const PIPELINE: &str = r#"
import { WorkflowEntrypoint } from "cloudflare:workers";

async function effect(env, key) {
  const n = Number((await env.KV.get(key)) ?? 0) + 1;
  await env.KV.put(key, String(n));
  return n;
}
const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export class Pipeline extends WorkflowEntrypoint {
  async run(event, step) {
    const id = event.instanceId;
    const { nap, work } = event.payload;
    // A step returns its side effects' count as of its end.
    const counted = (name) => step.do(name, { retries: { limit: 3, delay: 50 } }, async () => {
      await effect(this.env, `fx:${id}:${name}`);
      await pause(work);
      return Number(await this.env.KV.get(`fx:${id}:${name}`));
    });
    const s1 = await counted("s1");
    await step.sleep("nap", nap);
    const s2 = await counted("s2");
    const go = await step.waitForEvent("go", { type: "go", timeout: "1 hour" });
    const s3 = await counted("s3");
    return { s1, s2, s3, go: go.payload };
  }
}

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const id = url.searchParams.get("id");
    try {
      if (url.pathname === "/create") {
        const params = { nap: Number(url.searchParams.get("nap")), work: Number(url.searchParams.get("work")) };
        await env.PIPELINE.create({ id, params });
        return new Response("created");
      }
      if (url.pathname === "/go") {
        await (await env.PIPELINE.get(id)).sendEvent({ type: "go", payload: id });
        return new Response("sent");
      }
      if (url.pathname === "/status") {
        return Response.json(await (await env.PIPELINE.get(id)).status());
      }
      if (url.pathname === "/effects") {
        const out = {};
        for (const key of (await env.KV.list({ prefix: `fx:${id}:` })).keys) out[key.name] = Number(await env.KV.get(key.name));
        return Response.json(out);
      }
    } catch (error) {
      return new Response(`${error.name}: ${error.message}`, { status: 409 });
    }
    return new Response("not found", { status: 404 });
  },
};
"#;

const CONFIG: &str = r#"
name = "pipeline"
[[kv_namespaces]]
binding = "KV"
id = "pipeline-kv"
[[workflows]]
name = "pipeline"
binding = "PIPELINE"
class_name = "Pipeline"
"#;

const KILLS: usize = 12;
const INSTANCES: usize = 40;

#[derive(Default)]
struct Driven {
    created: BTreeSet<usize>,
    sent: BTreeSet<usize>,
}

/// Creates the instances not yet created and sends the events not yet
/// sent (each once answered), until the process dies under it.
async fn drive(addr: SocketAddr, driven: Arc<Mutex<Driven>>, seed: u64) {
    let mut random = XorShift(seed);
    loop {
        let (to_create, to_send) = {
            let driven = driven.lock().unwrap();
            let create = (0..INSTANCES).find(|i| !driven.created.contains(i));
            let send = driven.created.iter().copied().find(|i| !driven.sent.contains(i));
            (create, send)
        };
        if let Some(i) = to_create {
            let path = format!("/create?id=i-{i}&nap={}&work={}", 100 + random.below(700), 20 + random.below(200));
            match try_get(addr, &path).await {
                Some((200, _)) => {
                    driven.lock().unwrap().created.insert(i);
                }
                // Created before a kill cut the answer.
                Some((409, body)) if String::from_utf8_lossy(&body).contains("already_exists") => {
                    driven.lock().unwrap().created.insert(i);
                }
                Some((status, body)) => panic!("create i-{i}: {status} {}", String::from_utf8_lossy(&body)),
                None => return,
            }
        }
        if let Some(i) = to_send.filter(|_| random.below(3) == 0) {
            match try_get(addr, &format!("/go?id=i-{i}")).await {
                Some((200, _)) => {
                    driven.lock().unwrap().sent.insert(i);
                }
                Some((status, body)) => panic!("event for i-{i}: {status} {}", String::from_utf8_lossy(&body)),
                None => return,
            }
        }
        if to_create.is_none() && to_send.is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(random.below(40))).await;
    }
}

async fn status(addr: SocketAddr, i: usize) -> Value {
    let reply = support::get(addr, &format!("/status?id=i-{i}")).await;
    serde_json::from_slice(&reply.body).unwrap_or_else(|err| panic!("{err}: {}", reply.text()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_survive_a_sigkill_storm_and_finished_steps_never_run_again() {
    let dir = support::worker(&[("outpost.toml", CONFIG), ("worker.js", PIPELINE)]);
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    println!("workflow crash storm seed {seed}");
    let mut random = XorShift(seed);
    let driven = Arc::new(Mutex::new(Driven::default()));
    let mut phases_at_kills: BTreeMap<String, usize> = BTreeMap::new();
    let mut data = tempfile::tempdir().unwrap();
    for kill in 0..KILLS {
        let dev = Dev::start_in(dir.path(), data, &[]);
        let driver = tokio::spawn(drive(dev.addr, driven.clone(), seed.wrapping_add(kill as u64) | 1));
        tokio::time::sleep(Duration::from_millis(300 + random.below(1_200))).await;
        // What the newest instances were doing just before the kill.
        let created: Vec<usize> = driven.lock().unwrap().created.iter().copied().collect();
        for i in created.iter().rev().take(12) {
            if let Some((200, body)) = try_get(dev.addr, &format!("/status?id=i-{i}")).await {
                let status: Value = serde_json::from_slice(&body).unwrap();
                *phases_at_kills.entry(status["status"].as_str().unwrap().to_string()).or_default() += 1;
            }
        }
        data = dev.stop();
        driver.await.unwrap();
    }

    // The last life: drive to the end, then every instance completes.
    let dev = Dev::start_in(dir.path(), data, &[]);
    drive(dev.addr, driven.clone(), seed).await;
    assert_eq!(driven.lock().unwrap().created.len(), INSTANCES);
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut reruns = 0;
    for i in 0..INSTANCES {
        let done = loop {
            let status = status(dev.addr, i).await;
            if status["status"] == "complete" {
                break status;
            }
            assert!(
                ["queued", "running", "waiting"].contains(&status["status"].as_str().unwrap()),
                "i-{i}: {status}\n{}",
                dev.logs()
            );
            assert!(Instant::now() < deadline, "i-{i} is still {status}\n{}", dev.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let output = &done["output"];
        assert_eq!(output["go"], format!("i-{i}"), "{done}");
        let reply = support::get(dev.addr, &format!("/effects?id=i-{i}")).await;
        let effects: BTreeMap<String, u64> = serde_json::from_slice(&reply.body).unwrap();
        for step in ["s1", "s2", "s3"] {
            let ran = effects[&format!("fx:i-{i}:{step}")];
            let finished_at = output[step].as_u64().unwrap();
            assert_eq!(
                ran, finished_at,
                "i-{i}: step {step}'s callback ran {ran} times, the last attempt saw {finished_at}"
            );
            reruns += ran - 1;
        }
    }
    println!(
        "workflow crash storm: {KILLS} SIGKILLs, {INSTANCES} instances complete; statuses seen just before kills \
         {phases_at_kills:?}; {reruns} step attempts cut by a kill ran again; no finished step ran again"
    );
    for phase in ["running", "waiting"] {
        assert!(phases_at_kills.contains_key(phase), "no kill found an instance {phase}: {phases_at_kills:?}");
    }
}
