//! Cron Triggers: `scheduled()` run by the clock and, with
//! `--test-scheduled`, by hand.

use std::time::Duration;

use crate::support::{self, worker, Dev};

/// A worker that records each run in KV and throws for `cron=boom`.
const RECORDER: &str = r#"
export default {
  async fetch(request, env) {
    return new Response((await env.STATE.get("last")) ?? "none");
  },
  async scheduled(controller, env, ctx) {
    if (controller.cron === "boom") throw new RangeError("the boom schedule fails");
    if (controller.cron === "late") {
      ctx.waitUntil(Promise.reject(new TypeError("waitUntil work failed")));
      return;
    }
    await env.STATE.put("last", JSON.stringify({
      cron: controller.cron,
      time: controller.scheduledTime,
      type: controller.type,
    }));
  },
};
"#;

const RECORDER_TOML: &str = "name = \"recorder\"\n[[kv_namespaces]]\nbinding = \"STATE\"\n";

#[tokio::test]
async fn test_scheduled_runs_the_handler_by_hand() {
    let dir = worker(&[("outpost.toml", RECORDER_TOML), ("worker.js", RECORDER)]);
    let dev = Dev::start(dir.path(), &["--test-scheduled"]);
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as f64;
    let reply = support::get(dev.addr, "/__scheduled?cron=*%2F5+*+*+*+*").await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "Ran scheduled event"));
    let last: serde_json::Value = serde_json::from_str(&support::get(dev.addr, "/").await.text()).unwrap();
    assert_eq!(last["cron"], "*/5 * * * *");
    assert_eq!(last["type"], "scheduled");
    assert!(last["time"].as_f64().unwrap() >= before, "{last}");

    let reply = support::get(dev.addr, "/cdn-cgi/handler/scheduled?cron=0+3+*+*+MON").await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "ok"));
    let last: serde_json::Value = serde_json::from_str(&support::get(dev.addr, "/").await.text()).unwrap();
    assert_eq!(last["cron"], "0 3 * * MON");

    // A run that throws, or whose waitUntil() work fails, is a 500 with the error.
    let reply = support::get(dev.addr, "/cdn-cgi/handler/scheduled?cron=boom").await;
    assert_eq!(reply.status, 500);
    assert!(reply.text().contains("RangeError: the boom schedule fails"), "{}", reply.text());
    let reply = support::get(dev.addr, "/__scheduled?cron=late").await;
    assert_eq!(reply.status, 500);
    assert!(reply.text().contains("waitUntil work failed"), "{}", reply.text());
    dev.wait_for_log("the boom schedule fails");
}

#[tokio::test]
async fn without_the_flag_the_paths_are_the_workers() {
    let dir = worker(&[("outpost.toml", RECORDER_TOML), ("worker.js", RECORDER)]);
    let dev = Dev::start(dir.path(), &[]);
    let reply = support::get(dev.addr, "/__scheduled?cron=x").await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "none"), "the worker's fetch answered");
}

#[tokio::test]
async fn service_worker_syntax_and_missing_handlers() {
    let dir = worker(&[(
        "worker.js",
        r#"
addEventListener("scheduled", (event) => {
  if (event.cron === "boom") throw new Error("listener failed");
  event.waitUntil(Promise.resolve(event.scheduledTime));
});
"#,
    )]);
    let dev = Dev::start(dir.path(), &["--test-scheduled"]);
    let reply = support::get(dev.addr, "/cdn-cgi/handler/scheduled?cron=*+*+*+*+*").await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "ok"));
    let reply = support::get(dev.addr, "/cdn-cgi/handler/scheduled?cron=boom").await;
    assert_eq!(reply.status, 500);
    assert!(reply.text().contains("listener failed"), "{}", reply.text());
    // No fetch handler here: a request gets a 500 that says so.
    let reply = support::get(dev.addr, "/").await;
    assert_eq!(reply.status, 500);

    let dir = worker(&[("worker.js", "export default { fetch() { return new Response('hi'); } };\n")]);
    let dev = Dev::start(dir.path(), &["--test-scheduled"]);
    let reply = support::get(dev.addr, "/__scheduled").await;
    assert_eq!(reply.status, 500);
    assert!(reply.text().contains("Handler does not export a scheduled() function"), "{}", reply.text());
}

#[test]
fn a_bad_expression_fails_the_load_naming_it() {
    let dir = worker(&[
        ("outpost.toml", "name = \"bad\"\n[triggers]\ncrons = [\"*/5 * * * *\", \"0 0 * * 0\"]\n"),
        ("worker.js", "export default { scheduled() {} };\n"),
    ]);
    let stderr = support::failed_start(dir.path());
    assert!(stderr.contains("\"0 0 * * 0\""), "{stderr}");
    assert!(stderr.contains("1 = Sunday to 7 = Saturday"), "{stderr}");
}

/// The clock fires `* * * * *` at the start of the next minute, with the
/// minute as `scheduledTime`. Takes up to a minute.
#[tokio::test]
async fn the_clock_fires_each_matching_minute() {
    let dir = worker(&[
        ("outpost.toml", "name = \"ticker\"\n[triggers]\ncrons = [\"* * * * *\"]\n"),
        (
            "worker.js",
            "export default { scheduled(controller) { console.log(`tick ${controller.cron} at ${controller.scheduledTime}`); } };\n",
        ),
    ]);
    let dev = Dev::start(dir.path(), &[]);
    let deadline = std::time::Instant::now() + Duration::from_secs(75);
    let line = loop {
        let logs = dev.logs();
        if let Some(line) = logs.lines().find(|line| line.contains("tick * * * * * at ")) {
            break line.to_string();
        }
        assert!(std::time::Instant::now() < deadline, "no scheduled run within 75 s: {logs}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let entry: serde_json::Value = serde_json::from_str(&line).unwrap();
    let message = entry["message"].as_str().unwrap();
    let time: u64 = message.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(time % 60_000, 0, "scheduledTime is on the minute: {message}");
}
