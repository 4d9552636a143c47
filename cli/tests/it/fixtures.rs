//! The data-driven fixture harness: every `fixtures/<name>/` with a
//! `cases.json` is served with `outpost dev` (with the flags and other
//! workers in its `dev-flags.txt`, if any), sent each case's request, and its response
//! compared with the case's expectation.
//!
//! A case's `response` lists `status`, the `headers` that must match exactly
//! (others are ignored), and the body as `body` (text) or `body_json`
//! (compared as JSON). `BLESS=1` rewrites the expectations from what the
//! worker answered.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::support::{self, Dev};

#[derive(Debug, Serialize, Deserialize)]
struct Case {
    name: String,
    request: CaseRequest,
    response: CaseResponse,
}

#[derive(Debug, Serialize, Deserialize)]
struct CaseRequest {
    #[serde(default = "get")]
    method: String,
    path: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    body: Option<String>,
}

fn get() -> String {
    "GET".into()
}

#[derive(Debug, Serialize, Deserialize)]
struct CaseResponse {
    status: u16,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    headers: BTreeMap<String, Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    body_json: Option<Value>,
}

async fn run_fixture(name: &str) {
    let dir = support::fixture(name);
    let cases_path = dir.join("cases.json");
    let text = std::fs::read_to_string(&cases_path).unwrap_or_else(|err| panic!("{}: {err}", cases_path.display()));
    let mut cases: Vec<Case> =
        serde_json::from_str(&text).unwrap_or_else(|err| panic!("{}: {err}", cases_path.display()));
    let bless = std::env::var_os("BLESS").is_some();
    // `dev-flags.txt`: extra `outpost dev` arguments the fixture needs;
    // those that are not flags are workers, relative to the fixture.
    let flags = std::fs::read_to_string(dir.join("dev-flags.txt")).unwrap_or_default();
    let flags: Vec<String> = flags
        .split_whitespace()
        .map(|arg| if arg.starts_with('-') { arg.to_string() } else { dir.join(arg).display().to_string() })
        .collect();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let dev = Dev::start(&dir, &flags);
    let mut failures = Vec::new();
    for case in &mut cases {
        let headers: Vec<(&str, &str)> = case.request.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let body = case.request.body.as_deref().unwrap_or("").as_bytes();
        let reply = support::send(dev.addr, &case.request.method, &case.request.path, &headers, body).await;
        let actual_headers: BTreeMap<String, Option<String>> =
            case.response.headers.keys().map(|name| (name.clone(), reply.header(name).map(str::to_owned))).collect();
        let text = reply.text();
        if bless {
            case.response.status = reply.status;
            case.response.headers = actual_headers;
            if case.response.body_json.is_some() {
                case.response.body_json = Some(serde_json::from_str(&text).unwrap_or(Value::String(text)));
            } else {
                case.response.body = Some(text);
            }
            continue;
        }
        let mut problems = Vec::new();
        if reply.status != case.response.status {
            problems.push(format!("status {} (expected {})", reply.status, case.response.status));
        }
        if actual_headers != case.response.headers {
            problems.push(format!("headers {actual_headers:?} (expected {:?})", case.response.headers));
        }
        if let Some(expected) = &case.response.body {
            if &text != expected {
                problems.push(format!("body {text:?} (expected {expected:?})"));
            }
        }
        if let Some(expected) = &case.response.body_json {
            match serde_json::from_str::<Value>(&text) {
                Ok(actual) if &actual == expected => {}
                Ok(actual) => problems.push(format!("json body {actual} (expected {expected})")),
                Err(err) => problems.push(format!("body is not JSON ({err}): {text:?}")),
            }
        }
        if !problems.is_empty() {
            failures.push(format!("{name}/{}: {}", case.name, problems.join("; ")));
        }
    }
    if bless {
        let text = serde_json::to_string_pretty(&cases).unwrap() + "\n";
        std::fs::write(&cases_path, text).unwrap();
        return;
    }
    assert!(failures.is_empty(), "fixture cases failed:\n{}\n\nlogs:\n{}", failures.join("\n"), dev.logs());
}

macro_rules! fixtures {
    ($($test:ident => $dir:literal),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $test() {
                run_fixture($dir).await;
            }
        )*

        /// Every fixture with cases has a test above: a new folder cannot be
        /// silently skipped.
        #[test]
        fn every_fixture_is_run() {
            let listed = [$($dir),*];
            for entry in std::fs::read_dir(support::workspace_root().join("fixtures")).unwrap() {
                let entry = entry.unwrap();
                if entry.path().join("cases.json").exists() {
                    let name = entry.file_name().into_string().unwrap();
                    assert!(listed.contains(&name.as_str()), "fixtures/{name} has cases but no test in fixtures.rs");
                }
            }
        }
    };
}

fixtures! {
    hello => "hello",
    router => "router",
    web_crypto => "crypto",
    modules_and_wasm => "modules",
    streams => "streams",
    globals => "globals",
    service_worker => "service-worker",
    worker_errors => "errors",
    kv_namespaces => "kv",
    durable_objects => "durable-objects",
    cron_triggers => "cron",
    service_bindings => "services",
    queues => "queues",
    workflows => "workflows",
}
