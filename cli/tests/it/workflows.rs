//! Workflows through a real `outpost dev`: steps and their retries (each
//! backoff, timeouts, `NonRetryableError`), sleeps, events, every instance
//! method and status, ids, the size limit, and the determinism rule (a
//! finished step's callback never runs again, however often `run()`
//! replays). Side effects are counted in KV.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{self, worker, Dev};

pub const WORKER: &str = r#"
import { WorkflowEntrypoint } from "cloudflare:workers";
import { NonRetryableError } from "cloudflare:workflows";

/** Counts a side effect in KV; returns the new count. */
async function effect(env, key) {
  const n = Number((await env.KV.get(key)) ?? 0) + 1;
  await env.KV.put(key, String(n));
  return n;
}
const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export class Steps extends WorkflowEntrypoint {
  async run(event, step) {
    const id = event.instanceId;
    await effect(this.env, `runs:${id}`);
    const a = await step.do("first", async () => effect(this.env, `fx:${id}:first`));
    await step.sleep("breath", event.payload.sleep ?? 50);
    const looped = [];
    for (let i = 0; i < 3; i++) {
      looped.push(await step.do("loop", async () => effect(this.env, `fx:${id}:loop`)));
    }
    const clone = await step.do("clone", async () => ({ when: new Date(86400000), map: new Map([["k", 1]]) }));
    await step.sleep("second breath", "1 second");
    const b = await step.do("last", { retries: { limit: 0, delay: 0 } }, async () => effect(this.env, `fx:${id}:last`));
    return {
      a, b, looped,
      cloneIsDate: clone.when instanceof Date,
      cloneIsMap: clone.map instanceof Map,
      payload: event.payload,
      timestampIsDate: event.timestamp instanceof Date,
      workflowName: event.workflowName,
    };
  }
}

export class Retries extends WorkflowEntrypoint {
  async run(event, step) {
    const { backoff, limit, delay, failTimes, catchIt } = event.payload;
    const id = event.instanceId;
    const attempt = () =>
      step.do("flaky", { retries: { limit, delay, backoff } }, async (ctx) => {
        const n = await effect(this.env, `fx:${id}:flaky`);
        await this.env.KV.put(`at:${id}:${n}`, String(Date.now()));
        if (ctx.attempt !== n) throw new NonRetryableError(`ctx.attempt ${ctx.attempt} is not attempt ${n}`);
        if (n <= failTimes) throw new TypeError(`attempt ${n} failed`);
        return n;
      });
    if (!catchIt) return { succeededOn: await attempt() };
    try {
      return { succeededOn: await attempt() };
    } catch (error) {
      return { caught: `${error.name}: ${error.message}` };
    }
  }
}

export class Timeouts extends WorkflowEntrypoint {
  async run(event, step) {
    try {
      await step.do("slow", { retries: { limit: 1, delay: 10 }, timeout: 100 }, async () => {
        await effect(this.env, `fx:${event.instanceId}:slow`);
        await pause(1000);
        return "too late";
      });
    } catch (error) {
      return { name: error.name, message: error.message };
    }
  }
}

export class Fatal extends WorkflowEntrypoint {
  async run(event, step) {
    await step.do("fatal", { retries: { limit: 5, delay: 10 } }, async () => {
      await effect(this.env, `fx:${event.instanceId}:fatal`);
      throw new NonRetryableError("give up now");
    });
    return "not reached";
  }
}

export class Sleeper extends WorkflowEntrypoint {
  async run(event, step) {
    const id = event.instanceId;
    await step.do("before", async () => effect(this.env, `fx:${id}:before`));
    await step.sleep("nap", event.payload.ms);
    const woke = Date.now();
    await step.sleepUntil("until", new Date(Date.now() + 300));
    let past = null;
    try {
      await step.sleepUntil("past", new Date(Date.now() - 60000));
    } catch (error) {
      past = error.message;
    }
    const after = await step.do("after", async () => effect(this.env, `fx:${id}:after`));
    return { after, past, sleptAtLeast: woke - event.timestamp.getTime() };
  }
}

export class Waiter extends WorkflowEntrypoint {
  async run(event, step) {
    await step.do("ready", async () => effect(this.env, `fx:${event.instanceId}:ready`));
    try {
      const approval = await step.waitForEvent("approval", { type: "approve", timeout: event.payload.timeout ?? "1 hour" });
      const second = event.payload.twice ? await step.waitForEvent("again", { type: "approve" }) : null;
      return {
        payload: approval.payload,
        type: approval.type,
        timestampIsDate: approval.timestamp instanceof Date,
        second: second?.payload ?? null,
      };
    } catch (error) {
      return { timedOut: true, name: error.name };
    }
  }
}

export class Big extends WorkflowEntrypoint {
  async run(event, step) {
    await step.do("huge", async () => "x".repeat(1024 * 1024 + 1));
  }
}

export class Thrower extends WorkflowEntrypoint {
  async run(event, step) {
    await step.do("ok", async () => 1);
    throw new RangeError("run() gave up");
  }
}

let serialInFlight = 0;
let serialMost = 0;
export class Serial extends WorkflowEntrypoint {
  async run(event, step) {
    if (event.payload.nap) await step.sleep("nap", 2000);
    return await step.do("work", async () => {
      serialInFlight++;
      serialMost = Math.max(serialMost, serialInFlight);
      await pause(150);
      serialInFlight--;
      return serialMost;
    });
  }
}

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const q = (name) => url.searchParams.get(name);
    const wf = env[q("wf") ?? "STEPS"];
    try {
      switch (url.pathname) {
        case "/create": {
          const body = await request.text();
          const options = {};
          if (q("id") !== null) options.id = q("id");
          if (body !== "") options.params = JSON.parse(body);
          const instance = await wf.create(options);
          return Response.json({ id: instance.id });
        }
        case "/create-big":
          await wf.create({ params: "y".repeat(1024 * 1024 + 10) });
          return new Response("created");
        case "/batch": {
          const ids = JSON.parse(q("ids"));
          const instances = await wf.createBatch(ids.map((id) => ({ id, params: { ms: 10 } })));
          return Response.json(instances.map((i) => i.id));
        }
        case "/status":
          return Response.json(await (await wf.get(q("id"))).status());
        case "/control":
          await (await wf.get(q("id")))[q("action")]();
          return new Response("ok");
        case "/event":
          await (await wf.get(q("id"))).sendEvent({ type: q("type"), payload: JSON.parse(await request.text()) });
          return new Response("sent");
        case "/count":
          return new Response((await env.KV.get(q("key"))) ?? "0");
        case "/kv": {
          const out = {};
          for (const key of (await env.KV.list({ prefix: q("prefix") })).keys) out[key.name] = await env.KV.get(key.name);
          return Response.json(out);
        }
      }
    } catch (error) {
      return new Response(`${error.name}: ${error.message}`, { status: 400 });
    }
    return new Response("not found", { status: 404 });
  },
};
"#;

pub const CONFIG: &str = r#"
name = "flows"
[[kv_namespaces]]
binding = "KV"
id = "flows-kv"
[[workflows]]
name = "steps"
binding = "STEPS"
class_name = "Steps"
[[workflows]]
name = "retries"
binding = "RETRIES"
class_name = "Retries"
[[workflows]]
name = "timeouts"
binding = "TIMEOUTS"
class_name = "Timeouts"
[[workflows]]
name = "fatal"
binding = "FATAL"
class_name = "Fatal"
[[workflows]]
name = "sleeper"
binding = "SLEEPER"
class_name = "Sleeper"
[[workflows]]
name = "waiter"
binding = "WAITER"
class_name = "Waiter"
[[workflows]]
name = "big"
binding = "BIG"
class_name = "Big"
[[workflows]]
name = "thrower"
binding = "THROWER"
class_name = "Thrower"
[[workflows]]
name = "serial"
binding = "SERIAL"
class_name = "Serial"
max_concurrency = 1
[[workflows]]
name = "ghost"
binding = "GHOST"
class_name = "Ghost"
"#;

pub fn start() -> (tempfile::TempDir, Dev) {
    let dir = worker(&[("outpost.toml", CONFIG), ("worker.js", WORKER)]);
    let dev = Dev::start(dir.path(), &[]);
    (dir, dev)
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

pub async fn create(dev: &Dev, wf: &str, id: Option<&str>, params: Value) -> String {
    let mut path = format!("/create?wf={wf}");
    if let Some(id) = id {
        path += &format!("&id={}", urlencode(id));
    }
    let reply = support::send(dev.addr, "POST", &path, &[], params.to_string().as_bytes()).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    serde_json::from_slice::<Value>(&reply.body).unwrap()["id"].as_str().unwrap().to_string()
}

pub async fn status(dev: &Dev, wf: &str, id: &str) -> Value {
    let reply = support::get(dev.addr, &format!("/status?wf={wf}&id={}", urlencode(id))).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    serde_json::from_slice(&reply.body).unwrap()
}

/// Waits until the instance's status is `wanted`; returns the whole status.
pub async fn wait_status(dev: &Dev, wf: &str, id: &str, wanted: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = status(dev, wf, id).await;
        if status["status"] == wanted {
            return status;
        }
        assert!(Instant::now() < deadline, "{wf}/{id} is {status} rather than {wanted}\n{}", dev.logs());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn control(dev: &Dev, wf: &str, id: &str, action: &str) -> support::Reply {
    support::get(dev.addr, &format!("/control?wf={wf}&id={id}&action={action}")).await
}

async fn event(dev: &Dev, wf: &str, id: &str, kind: &str, payload: Value) -> support::Reply {
    let path = format!("/event?wf={wf}&id={id}&type={}", urlencode(kind));
    support::send(dev.addr, "POST", &path, &[], payload.to_string().as_bytes()).await
}

pub async fn count(dev: &Dev, key: &str) -> u64 {
    support::get(dev.addr, &format!("/count?key={}", urlencode(key))).await.text().parse().unwrap()
}

async fn kv(dev: &Dev, prefix: &str) -> serde_json::Map<String, Value> {
    let reply = support::get(dev.addr, &format!("/kv?prefix={}", urlencode(prefix))).await;
    serde_json::from_slice::<Value>(&reply.body).unwrap().as_object().unwrap().clone()
}

#[tokio::test]
async fn steps_run_once_however_often_run_replays() {
    let (_dir, dev) = start();
    let id = create(&dev, "STEPS", Some("order-1"), json!({ "sleep": 100, "order": 7 })).await;
    assert_eq!(id, "order-1");
    let done = wait_status(&dev, "STEPS", &id, "complete").await;
    let output = &done["output"];
    assert_eq!(output["a"], 1, "{done}");
    assert_eq!(output["b"], 1);
    assert_eq!(output["looped"], json!([1, 2, 3]), "steps in a loop are told apart by occurrence");
    assert_eq!(output["cloneIsDate"], true, "results are structured clones");
    assert_eq!(output["cloneIsMap"], true);
    assert_eq!(output["payload"], json!({ "sleep": 100, "order": 7 }));
    assert_eq!(output["timestampIsDate"], true);
    assert_eq!(output["workflowName"], "steps");
    // run() ran at least three times (start, after each sleep) ...
    assert!(count(&dev, "runs:order-1").await >= 3);
    // ... and each callback exactly once.
    assert_eq!(count(&dev, "fx:order-1:first").await, 1);
    assert_eq!(count(&dev, "fx:order-1:loop").await, 3);
    assert_eq!(count(&dev, "fx:order-1:last").await, 1);
    assert!(done.get("error").is_none(), "{done}");
}

#[tokio::test]
async fn retries_wait_by_their_backoff_and_fail_when_spent() {
    let (_dir, dev) = start();
    let delay = 200u64;
    let mut cases = Vec::new();
    for (backoff, expected) in [("constant", [1, 1, 1]), ("linear", [1, 2, 3]), ("exponential", [1, 2, 4])] {
        let params = json!({ "backoff": backoff, "limit": 3, "delay": delay, "failTimes": 3 });
        cases.push((backoff, expected, create(&dev, "RETRIES", None, params).await));
    }
    for (backoff, expected, id) in &cases {
        let done = wait_status(&dev, "RETRIES", id, "complete").await;
        assert_eq!(done["output"]["succeededOn"], 4, "{backoff}: {done}");
        let times = kv(&dev, &format!("at:{id}:")).await;
        let at = |n: usize| times[&format!("at:{id}:{n}")].as_str().unwrap().parse::<u64>().unwrap();
        for (n, factor) in expected.iter().enumerate() {
            let gap = at(n + 2) - at(n + 1);
            assert!(gap >= delay * factor, "{backoff}: retry {} came {gap} ms after, not {} ms", n + 1, delay * factor);
        }
    }
    // Out of retries: the step's error fails the instance, after limit + 1 attempts.
    let spent = create(
        &dev,
        "RETRIES",
        None,
        json!({ "backoff": "constant", "limit": 1, "delay": "0.1 seconds", "failTimes": 9 }),
    )
    .await;
    let errored = wait_status(&dev, "RETRIES", &spent, "errored").await;
    assert_eq!(errored["error"], json!({ "name": "TypeError", "message": "attempt 2 failed" }), "{errored}");
    assert_eq!(count(&dev, &format!("fx:{spent}:flaky")).await, 2);
    // Caught, the same failure lets the workflow go on.
    let caught = create(
        &dev,
        "RETRIES",
        None,
        json!({ "backoff": "constant", "limit": 0, "delay": 0, "failTimes": 9, "catchIt": true }),
    )
    .await;
    let done = wait_status(&dev, "RETRIES", &caught, "complete").await;
    assert_eq!(done["output"]["caught"], "TypeError: attempt 1 failed");
}

#[tokio::test]
async fn timeouts_and_non_retryable_errors() {
    let (_dir, dev) = start();
    let timed = create(&dev, "TIMEOUTS", None, json!(null)).await;
    let done = wait_status(&dev, "TIMEOUTS", &timed, "complete").await;
    assert_eq!(done["output"]["name"], "WorkflowTimeoutError", "{done}");
    assert_eq!(count(&dev, &format!("fx:{timed}:slow")).await, 2, "one retry after the timed-out attempt");

    let fatal = create(&dev, "FATAL", None, json!(null)).await;
    let errored = wait_status(&dev, "FATAL", &fatal, "errored").await;
    assert_eq!(errored["error"], json!({ "name": "NonRetryableError", "message": "give up now" }));
    assert_eq!(count(&dev, &format!("fx:{fatal}:fatal")).await, 1, "no retry after a NonRetryableError");

    let thrower = create(&dev, "THROWER", None, json!(null)).await;
    let errored = wait_status(&dev, "THROWER", &thrower, "errored").await;
    assert_eq!(errored["error"], json!({ "name": "RangeError", "message": "run() gave up" }));
}

#[tokio::test]
async fn sleeps_hold_no_isolate_and_wake_on_time() {
    let (_dir, dev) = start();
    let id = create(&dev, "SLEEPER", None, json!({ "ms": 800 })).await;
    wait_status(&dev, "SLEEPER", &id, "waiting").await;
    let done = wait_status(&dev, "SLEEPER", &id, "complete").await;
    let output = &done["output"];
    assert!(output["sleptAtLeast"].as_u64().unwrap() >= 800, "{done}");
    assert_eq!(output["past"], "step.sleepUntil(\"past\"): cannot sleep until a time in the past");
    assert_eq!(output["after"], 1);
    assert_eq!(count(&dev, &format!("fx:{id}:before")).await, 1);
}

#[tokio::test]
async fn events_sent_before_or_during_the_wait_arrive_and_the_wait_times_out() {
    let (_dir, dev) = start();
    // Sent during the wait.
    let during = create(&dev, "WAITER", None, json!({})).await;
    wait_status(&dev, "WAITER", &during, "waiting").await;
    assert_eq!(event(&dev, "WAITER", &during, "approve", json!({ "by": "ann" })).await.text(), "sent");
    let done = wait_status(&dev, "WAITER", &during, "complete").await;
    assert_eq!(done["output"]["payload"], json!({ "by": "ann" }), "{done}");
    assert_eq!(done["output"]["type"], "approve");
    assert_eq!(done["output"]["timestampIsDate"], true);

    // Sent before the wait begins (the instance is paused so it cannot have
    // started): kept, in order, by type; other types wait for theirs.
    let before = create(&dev, "WAITER", Some("early"), json!({ "twice": true })).await;
    let paused = control(&dev, "WAITER", &before, "pause").await;
    assert_eq!(paused.status, 200, "{}", paused.text());
    for (kind, payload) in [("other", json!("ignored")), ("approve", json!(1)), ("approve", json!(2))] {
        assert_eq!(event(&dev, "WAITER", &before, kind, payload).await.text(), "sent");
    }
    assert_eq!(control(&dev, "WAITER", &before, "resume").await.status, 200);
    let done = wait_status(&dev, "WAITER", &before, "complete").await;
    assert_eq!(done["output"]["payload"], 1, "{done}");
    assert_eq!(done["output"]["second"], 2);

    // Nobody sends: the wait times out with WorkflowTimeoutError.
    let lonely = create(&dev, "WAITER", None, json!({ "timeout": 300 })).await;
    let done = wait_status(&dev, "WAITER", &lonely, "complete").await;
    assert_eq!(done["output"], json!({ "timedOut": true, "name": "WorkflowTimeoutError" }));

    // An event for a finished instance is dropped without an error (as
    // Cloudflare's engine does); a bad event type is refused.
    let reply = event(&dev, "WAITER", &lonely, "approve", json!(null)).await;
    assert_eq!(reply.text(), "sent");
    let reply = event(&dev, "WAITER", &during, "bad type!", json!(null)).await;
    assert!(reply.text().starts_with("TypeError"), "{}", reply.text());
}

#[tokio::test]
async fn instance_methods_move_the_status_as_on_cloudflare() {
    let (_dir, dev) = start();
    let id = create(&dev, "SLEEPER", Some("nap-1"), json!({ "ms": 60_000 })).await;
    wait_status(&dev, "SLEEPER", &id, "waiting").await;
    // Resuming what is not paused throws.
    assert_eq!(control(&dev, "SLEEPER", &id, "resume").await.status, 400);
    assert_eq!(control(&dev, "SLEEPER", &id, "pause").await.text(), "ok");
    wait_status(&dev, "SLEEPER", &id, "paused").await;
    assert_eq!(control(&dev, "SLEEPER", &id, "resume").await.text(), "ok");
    wait_status(&dev, "SLEEPER", &id, "waiting").await;
    assert_eq!(control(&dev, "SLEEPER", &id, "terminate").await.text(), "ok");
    wait_status(&dev, "SLEEPER", &id, "terminated").await;
    let again = control(&dev, "SLEEPER", &id, "terminate").await;
    assert_eq!(again.status, 400, "terminating a finished instance throws");
    assert!(again.text().contains("terminated"), "{}", again.text());
    // Pausing or resuming it does nothing.
    assert_eq!(control(&dev, "SLEEPER", &id, "pause").await.text(), "ok");
    assert_eq!(control(&dev, "SLEEPER", &id, "resume").await.text(), "ok");
    assert_eq!(status(&dev, "SLEEPER", &id).await["status"], "terminated");
    // Restart runs it from the beginning: its steps run again.
    assert_eq!(count(&dev, "fx:nap-1:before").await, 1);
    assert_eq!(control(&dev, "SLEEPER", &id, "restart").await.text(), "ok");
    wait_status(&dev, "SLEEPER", &id, "waiting").await;
    assert_eq!(count(&dev, "fx:nap-1:before").await, 2);
    assert_eq!(control(&dev, "SLEEPER", &id, "terminate").await.text(), "ok");

    // A pause asked for while a step runs waits for the step (waitingForPause).
    let slow = create(&dev, "TIMEOUTS", Some("slow-1"), json!(null)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(&dev, "fx:slow-1:slow").await == 0 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(control(&dev, "TIMEOUTS", &slow, "pause").await.text(), "ok");
    let pausing = status(&dev, "TIMEOUTS", &slow).await;
    assert!(["waitingForPause", "paused"].contains(&pausing["status"].as_str().unwrap()), "{pausing}");
    wait_status(&dev, "TIMEOUTS", &slow, "paused").await;
    assert_eq!(control(&dev, "TIMEOUTS", &slow, "resume").await.text(), "ok");
    wait_status(&dev, "TIMEOUTS", &slow, "complete").await;
}

#[tokio::test]
async fn ids_batches_and_limits() {
    let (_dir, dev) = start();
    create(&dev, "SLEEPER", Some("dup"), json!({ "ms": 10 })).await;
    let reply = support::send(dev.addr, "POST", "/create?wf=SLEEPER&id=dup", &[], b"{}").await;
    assert_eq!(reply.status, 400);
    assert!(reply.text().contains("instance.already_exists"), "{}", reply.text());
    let reply = support::get(dev.addr, "/status?wf=SLEEPER&id=nobody").await;
    assert!(reply.text().contains("instance.not_found"), "{}", reply.text());
    let reply = support::send(dev.addr, "POST", "/create?wf=SLEEPER&id=-bad", &[], b"{}").await;
    assert!(reply.text().starts_with("TypeError"), "{}", reply.text());

    let ids = json!(["b-1", "b-2", "b-3"]).to_string();
    let reply = support::get(dev.addr, &format!("/batch?wf=SLEEPER&ids={}", urlencode(&ids))).await;
    assert_eq!(reply.text(), ids);
    for id in ["b-1", "b-2", "b-3"] {
        wait_status(&dev, "SLEEPER", id, "complete").await;
    }
    // A batch with a taken id creates nothing.
    let ids = json!(["b-4", "b-1"]).to_string();
    let reply = support::get(dev.addr, &format!("/batch?wf=SLEEPER&ids={}", urlencode(&ids))).await;
    assert!(reply.text().contains("instance.already_exists"), "{}", reply.text());
    assert!(support::get(dev.addr, "/status?wf=SLEEPER&id=b-4").await.text().contains("not_found"));

    // Generated ids are UUIDs.
    let id = create(&dev, "SLEEPER", None, json!({ "ms": 10 })).await;
    assert_eq!(id.len(), 36, "{id}");

    // A step result over 1 MiB fails the step (and the instance); so do params.
    let big = create(&dev, "BIG", None, json!(null)).await;
    let errored = wait_status(&dev, "BIG", &big, "errored").await;
    assert_eq!(errored["error"]["name"], "RangeError", "{errored}");
    assert!(errored["error"]["message"].as_str().unwrap().contains("1 MiB"), "{errored}");
    let reply = support::get(dev.addr, "/create-big?wf=BIG").await;
    assert!(reply.text().starts_with("RangeError") && reply.text().contains("1 MiB"), "{}", reply.text());
}

/// Runs `outpost workflows <args> --data-dir <dev's>`; its stdout, or its stderr if it fails.
fn outpost_workflows(dev: &Dev, args: &[&str]) -> Result<String, String> {
    let mut all: Vec<&std::ffi::OsStr> = vec!["workflows".as_ref()];
    all.extend(args.iter().map(std::ffi::OsStr::new));
    all.extend(["--data-dir".as_ref(), dev.data_dir().as_os_str()]);
    support::run_outpost(Path::new("."), all)
}

#[tokio::test]
async fn the_command_line_lists_describes_and_triggers_instances() {
    let (_dir, dev) = start();
    let listed = outpost_workflows(&dev, &["list"]).unwrap();
    assert!(listed.lines().next().unwrap().starts_with("NAME"), "{listed}");
    assert!(
        listed.lines().any(|l| l.starts_with("retries") && l.contains("flows") && l.contains("Retries")),
        "{listed}"
    );

    // Triggered from the command line with JSON parameters, it runs.
    let params = r#"{"backoff":"constant","limit":2,"delay":10,"failTimes":1}"#;
    let created = outpost_workflows(&dev, &["trigger", "retries", params, "--id", "cli-1"]).unwrap();
    assert_eq!(created.trim(), "created instance cli-1 of workflow retries");
    let done = wait_status(&dev, "RETRIES", "cli-1", "complete").await;
    assert_eq!(done["output"]["succeededOn"], 2);

    let instances = outpost_workflows(&dev, &["instances", "list", "retries"]).unwrap();
    assert!(instances.lines().any(|l| l.starts_with("cli-1") && l.contains("complete")), "{instances}");
    let described = outpost_workflows(&dev, &["instances", "describe", "retries", "cli-1"]).unwrap();
    for needle in [
        "Instance:   cli-1",
        "Status:     complete",
        "Params:     {\"backoff\":\"constant\"",
        "Output:     {\"succeededOn\":2}",
        "Steps:      1",
        "flaky [do]",
        "result: 2",
        "attempt 1 at",
        "TypeError: attempt 1 failed",
        "attempt 2 at",
    ] {
        assert!(described.contains(needle), "{needle:?} missing from:\n{described}");
    }
    let json: Value = serde_json::from_str(
        &outpost_workflows(&dev, &["instances", "describe", "retries", "cli-1", "--json"]).unwrap(),
    )
    .unwrap();
    assert_eq!(json["steps"][0]["attempts"].as_array().unwrap().len(), 2);

    // Errors name what is wrong and change nothing.
    let err = outpost_workflows(&dev, &["trigger", "retries", "{not json"]).unwrap_err();
    assert!(err.contains("not JSON"), "{err}");
    let err = outpost_workflows(&dev, &["trigger", "retries", "{}", "--id", "cli-1"]).unwrap_err();
    assert!(err.contains("instance.already_exists"), "{err}");
    let err = outpost_workflows(&dev, &["instances", "list", "nope"]).unwrap_err();
    assert!(err.contains("workflow \"nope\" is not deployed"), "{err}");
    let err = outpost_workflows(&dev, &["instances", "describe", "retries", "ghost"]).unwrap_err();
    assert!(err.contains("instance.not_found"), "{err}");
    let elsewhere = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(support::outpost_binary())
        .args(["workflows", "list", "--data-dir"])
        .arg(elsewhere.path())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&output.stderr).contains("no node is running"), "{output:?}");
}

#[tokio::test]
async fn a_workflow_runs_at_most_its_concurrency_and_sleepers_hold_no_slot() {
    let (_dir, dev) = start();
    // The first sleeps two seconds: meanwhile the others run, one at a time.
    let sleeper = create(&dev, "SERIAL", None, json!({ "nap": true })).await;
    wait_status(&dev, "SERIAL", &sleeper, "waiting").await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(create(&dev, "SERIAL", None, json!({})).await);
    }
    // Each takes 150 ms: the last waits its turn, queued.
    assert_eq!(status(&dev, "SERIAL", &ids[3]).await["status"], "queued");
    for id in &ids {
        let done = wait_status(&dev, "SERIAL", id, "complete").await;
        assert_eq!(done["output"], 1, "more than one instance ran at once: {done}");
    }
    assert_eq!(status(&dev, "SERIAL", &sleeper).await["status"], "waiting", "finished while asleep");
    wait_status(&dev, "SERIAL", &sleeper, "complete").await;
}

#[tokio::test]
async fn a_class_the_worker_does_not_export_errs_with_its_name() {
    let (_dir, dev) = start();
    let id = create(&dev, "GHOST", None, json!(null)).await;
    let errored = wait_status(&dev, "GHOST", &id, "errored").await;
    let message = errored["error"]["message"].as_str().unwrap();
    assert!(message.contains("does not export a WorkflowEntrypoint class named Ghost"), "{errored}");
}

#[tokio::test]
async fn two_workers_cannot_define_one_workflow() {
    let one = worker(&[
        ("outpost.toml", "name = \"one\"\n[[workflows]]\nname = \"w\"\nbinding = \"W\"\nclass_name = \"A\"\n"),
        ("worker.js", "export class A { run() {} }\nexport default { fetch() { return new Response('1'); } };"),
    ]);
    let two = worker(&[
        ("outpost.toml", "name = \"two\"\n[[workflows]]\nname = \"w\"\nbinding = \"W\"\nclass_name = \"A\"\n"),
        ("worker.js", "export class A { run() {} }\nexport default { fetch() { return new Response('2'); } };"),
    ]);
    let output = std::process::Command::new(support::outpost_binary())
        .arg("dev")
        .arg(one.path())
        .arg(two.path())
        .args(["--port", "0", "--data-dir"])
        .arg(tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    // Whichever loads second is refused, naming the first.
    assert!(stderr.contains("the workflow \"w\" is already defined by worker"), "{stderr}");
}

#[tokio::test]
async fn a_paused_sleeper_wakes_after_resume_whether_or_not_its_time_passed() {
    let (_dir, dev) = start();
    // Its time passes while paused: it goes on once resumed.
    let late = create(&dev, "SLEEPER", None, json!({ "ms": 400 })).await;
    // Resumed before its time: it wakes at its time.
    let early = create(&dev, "SLEEPER", None, json!({ "ms": 1500 })).await;
    for id in [&late, &early] {
        wait_status(&dev, "SLEEPER", id, "waiting").await;
        assert_eq!(control(&dev, "SLEEPER", id, "pause").await.text(), "ok");
        wait_status(&dev, "SLEEPER", id, "paused").await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(status(&dev, "SLEEPER", &late).await["status"], "paused", "a paused instance does not wake");
    for id in [&late, &early] {
        assert_eq!(control(&dev, "SLEEPER", id, "resume").await.text(), "ok");
    }
    for id in [&late, &early] {
        wait_status(&dev, "SLEEPER", id, "complete").await;
        assert_eq!(count(&dev, &format!("fx:{id}:before")).await, 1);
    }
}
