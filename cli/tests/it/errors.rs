//! What a worker author sees when their worker is broken.

use crate::support::{self, failed_start, worker, Dev};

#[test]
fn syntax_error_names_file_line_and_column() {
    let dir = worker(&[("worker.js", "export default {\n  fetch() {\n    return new Response(\"x\" +);\n  }\n};\n")]);
    let stderr = failed_start(dir.path());
    assert!(stderr.contains("SyntaxError"), "{stderr}");
    assert!(stderr.contains("worker.js:3:30"), "{stderr}");
}

#[test]
fn syntax_error_in_an_imported_module() {
    let dir = worker(&[
        ("worker.js", "import { x } from \"./lib/x.js\";\nexport default { fetch() { return new Response(x); } };\n"),
        ("lib/x.js", "export const x = ;\n"),
    ]);
    let stderr = failed_start(dir.path());
    assert!(stderr.contains("SyntaxError"), "{stderr}");
    assert!(stderr.contains("lib/x.js:1:18"), "{stderr}");
}

#[test]
fn missing_import_names_the_importer() {
    let dir = worker(&[(
        "worker.js",
        "import x from \"./missing.js\";\nexport default { fetch() { return new Response(x); } };\n",
    )]);
    let stderr = failed_start(dir.path());
    assert!(stderr.contains("missing.js (imported at worker.js:1:15): module not found"), "{stderr}");
}

#[test]
fn remote_and_builtin_imports_are_refused() {
    for specifier in ["https://example.com/x.js", "node:fs", "lodash", "../outside.js"] {
        let dir = worker(&[(
            "worker.js",
            &format!("import x from \"{specifier}\";\nexport default {{ fetch() {{ return new Response(x); }} }};\n"),
        )]);
        let stderr = failed_start(dir.path());
        assert!(stderr.contains(&format!("cannot import \"{specifier}\"")), "{specifier}: {stderr}");
    }
}

#[test]
fn top_level_exception_fails_the_load() {
    let dir = worker(&[("worker.js", "\nthrow new RangeError(\"bad config\");\nexport default {};\n")]);
    let stderr = failed_start(dir.path());
    assert!(stderr.contains("RangeError: bad config"), "{stderr}");
    assert!(stderr.contains("worker.js:2:7"), "{stderr}");
}

#[test]
fn worker_without_a_handler_fails_the_load() {
    let dir = worker(&[("worker.js", "export const notAHandler = 1;\n")]);
    let stderr = failed_start(dir.path());
    assert!(stderr.contains("neither has a default export with a fetch() handler"), "{stderr}");
    let dir = worker(&[("worker.js", "export default { notFetch() {} };\n")]);
    let stderr = failed_start(dir.path());
    assert!(stderr.contains("default export has no fetch() handler"), "{stderr}");
}

/// A worker may handle only other events (cron's `scheduled`, a queue):
/// it loads, and an HTTP request to it fails with a 500 that says which
/// handler is missing, in both syntaxes.
#[tokio::test]
async fn a_worker_without_fetch_loads_and_answers_http_with_a_clear_500() {
    for (code, missing) in [
        ("export default { scheduled(controller, env, ctx) {} };\n", "default export has no fetch() handler"),
        (
            "addEventListener('scheduled', (event) => {});\n",
            "neither has a default export with a fetch() handler nor registers a 'fetch' event listener",
        ),
    ] {
        let dir = worker(&[("worker.js", code)]);
        let dev = Dev::start(dir.path(), &[]);
        let reply = support::get(dev.addr, "/").await;
        assert_eq!(reply.status, 500, "{code}");
        assert!(reply.text().contains(missing), "{code}: {}", reply.text());
    }
}

#[test]
fn config_errors_name_the_key() {
    let dir = worker(&[
        ("outpost.toml", "name = \"x\"\nmian = \"worker.js\"\n"),
        ("worker.js", "export default { fetch() {} };\n"),
    ]);
    let stderr = failed_start(dir.path());
    assert!(stderr.contains("unknown field `mian`"), "{stderr}");
    assert!(stderr.contains("outpost.toml"), "{stderr}");
}

#[test]
fn durable_object_binding_to_a_class_not_exported_fails_the_load() {
    let dir = worker(&[
        ("outpost.toml", "[[durable_objects.bindings]]\nname = \"ROOMS\"\nclass_name = \"Room\"\n"),
        ("worker.js", "export class Lobby {}\nexport default { fetch() { return new Response('x'); } };\n"),
    ]);
    let stderr = failed_start(dir.path());
    assert!(stderr.contains("ROOMS") && stderr.contains("Room"), "{stderr}");
    assert!(stderr.contains("does not export"), "{stderr}");
}

#[test]
fn invalid_json_module_fails_the_load() {
    let dir = worker(&[
        ("worker.js", "import c from \"./c.json\";\nexport default { fetch() { return Response.json(c); } };\n"),
        ("c.json", "{ nope }"),
    ]);
    let stderr = failed_start(dir.path());
    assert!(stderr.contains("c.json is not valid JSON"), "{stderr}");
}

#[tokio::test]
async fn uncaught_exception_is_logged_with_its_stack() {
    let dev = Dev::start(&support::fixture("errors"), &[]);
    let reply = support::send(dev.addr, "GET", "/throw", &[("x-request-id", "trace-me")], b"").await;
    assert_eq!(reply.status, 500);
    let logs = dev.wait_for_log("thrown on purpose");
    let line = logs.lines().find(|line| line.contains("thrown on purpose")).unwrap();
    // The line is JSON (stderr is not a terminal): the worker, the request
    // and the stack down to the worker's own source position.
    let entry: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
    assert_eq!(entry["worker"], "errors");
    assert_eq!(entry["request_id"], "trace-me");
    assert_eq!(entry["level"], "ERROR");
    let message = entry["message"].as_str().unwrap();
    assert!(message.contains("Error: thrown on purpose"), "{message}");
    // Positions are given in the bundle, never at the node's own paths.
    assert!(message.contains("file:///bundle/worker.js:8:15"), "{message}");
    assert!(!message.contains(support::workspace_root().to_str().unwrap()), "{message}");
    assert!(!message.contains("ext:"), "runtime frames are noise to the author: {message}");
}

#[tokio::test]
async fn console_output_goes_to_the_log_with_worker_and_request() {
    let dir = worker(&[(
        "worker.js",
        "export default { async fetch(request) {\n  console.log('log', { a: 1 });\n  await new Promise((r) => setTimeout(r, 5));\n  console.warn('warned after an await');\n  console.error('an error');\n  console.debug('hidden at info');\n  return new Response('ok');\n} };\n",
    )]);
    let dev = Dev::start(dir.path(), &[]);
    let reply = support::send(dev.addr, "GET", "/", &[("x-request-id", "console-1")], b"").await;
    assert_eq!(reply.text(), "ok");
    let logs = dev.wait_for_log("an error");
    let entries: Vec<serde_json::Value> = logs.lines().filter_map(|line| serde_json::from_str(line).ok()).collect();
    let find =
        |needle: &str| entries.iter().find(|e| e["message"].as_str().is_some_and(|m| m.contains(needle))).cloned();
    let log = find("log { a: 1 }").expect("console.log is logged");
    assert_eq!(log["level"], "INFO");
    assert_eq!(log["request_id"], "console-1");
    let warned = find("warned after an await").expect("console.warn is logged");
    assert_eq!(warned["level"], "WARN");
    assert_eq!(warned["request_id"], "console-1", "the request id follows the code across awaits");
    assert_eq!(find("an error").unwrap()["level"], "ERROR");
    assert!(find("hidden at info").is_none());
}

#[tokio::test]
async fn errors_outside_handlers_are_logged_and_not_fatal() {
    let dir = worker(&[(
        "worker.js",
        "export default { async fetch(request) {\n  const path = new URL(request.url).pathname;\n  if (path === '/timer') setTimeout(() => { throw new Error('timer failed'); }, 1);\n  if (path === '/rejection') Promise.reject(new Error('nobody caught me'));\n  if (path === '/wait-until') { const ctx = arguments[2]; ctx.waitUntil(Promise.reject(new Error('background failed'))); }\n  return new Response('fine');\n} };\n",
    )]);
    let dev = Dev::start(dir.path(), &[]);
    for path in ["/timer", "/rejection", "/wait-until"] {
        assert_eq!(support::get(dev.addr, path).await.text(), "fine");
    }
    dev.wait_for_log("timer failed");
    dev.wait_for_log("nobody caught me");
    dev.wait_for_log("background failed");
    assert_eq!(support::get(dev.addr, "/").await.text(), "fine");
}

#[tokio::test]
async fn array_buffers_past_the_memory_limit_fail_the_request_not_the_node() {
    let dir = worker(&[
        ("outpost.toml", "[limits]\nmemory_mb = 32\n"),
        (
            "worker.js",
            r#"
            export default {
              fetch(request) {
                if (new URL(request.url).pathname !== "/hoard") return new Response("still here");
                // ArrayBuffer contents live outside the V8 heap: 100 MiB of
                // them must still hit the worker's memory limit.
                const kept = [];
                try {
                  for (let i = 0; i < 100; i++) kept.push(new ArrayBuffer(1 << 20));
                  return new Response(`allocated ${kept.length} MiB`);
                } catch (error) {
                  return new Response(`${error.name} after ${kept.length} MiB`);
                }
              },
            };
            "#,
        ),
    ]);
    let dev = Dev::start(dir.path(), &[]);
    let reply = support::get(dev.addr, "/hoard").await;
    // Refused buffers make V8 collect and then stop the isolate at its limit
    // (or, with room left to unwind, throw a RangeError in the worker).
    let text = reply.text();
    let stopped = reply.status == 503 && text.contains("memory limit of 32 MiB");
    let thrown = text.starts_with("RangeError after ");
    assert!(stopped || thrown, "{} {text}", reply.status);
    assert!(!text.contains("CPU"), "the memory limit is named, not the CPU one: {text}");
    // The node goes on (a fresh isolate if the old one was stopped).
    assert_eq!(support::get(dev.addr, "/").await.text(), "still here");
}
