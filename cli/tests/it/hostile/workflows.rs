//! Workflows between tenants: a workflow belongs to the worker that first
//! defined it. Another worker can neither define a workflow of that name
//! nor drive its instances (create, read, pause, send events) unless
//! node.toml grants it; with a grant, it can.

use std::time::Duration;

use super::{attack, hostile_node, reload, Bystander};
use crate::support;

/// Defines (or binds) the workflow "billing"; `/start` creates an instance
/// and waits for its output.
const BILLING: &str = r#"
import { WorkflowEntrypoint } from "cloudflare:workers";
export class Billing extends WorkflowEntrypoint {
  async run(event, step) {
    return await step.do("bill", async () => `billed ${event.payload.who}`);
  }
}
export default {
  async fetch(request, env) {
    if (new URL(request.url).pathname !== "/start") return new Response("innocent ok");
    const instance = await env.BILLING.create({ params: { who: "someone" } });
    for (let i = 0; i < 200; i++) {
      const status = await instance.status();
      if (status.status === "complete") return new Response(status.output);
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
    return new Response("not complete", { status: 500 });
  },
};
"#;

const DEFINES: &str = "[[workflows]]\nname = \"billing\"\nbinding = \"BILLING\"\nclass_name = \"Billing\"\n";
const BINDS: &str =
    "[[workflows]]\nname = \"billing\"\nbinding = \"BILLING\"\nclass_name = \"Billing\"\nscript_name = \"innocent\"\n";

fn innocent_files() -> [(&'static str, String); 2] {
    [
        ("workers/innocent/outpost.toml", format!("name = \"innocent\"\n{DEFINES}")),
        ("workers/innocent/worker.js", BILLING.to_string()),
    ]
}

#[tokio::test]
async fn a_worker_cannot_take_or_drive_another_workers_workflow() {
    let files = innocent_files();
    let files: Vec<(&str, &str)> = files.iter().map(|(name, text)| (*name, text.as_str())).collect();
    let mut node = hostile_node(super::INNOCENT, "", "", &files);
    let addr = node.http.unwrap();
    let started = support::send(addr, "GET", "/start", &[("host", "innocent.test")], b"").await;
    assert_eq!(started.text(), "billed someone", "{}", node.logs());
    let bystander = Bystander::watch(addr);
    for attacker_toml in [DEFINES, BINDS] {
        std::fs::write(
            node.dir().join("workers/attacker/outpost.toml"),
            format!("name = \"attacker\"\n{attacker_toml}"),
        )
        .unwrap();
        std::fs::write(node.dir().join("workers/attacker/worker.js"), BILLING).unwrap();
        reload(&node, "reload failed").await;
        let logs = node.logs();
        let last = logs.lines().rev().find(|line| line.contains("reload failed")).unwrap();
        assert!(last.contains("the workflow \\\"billing\\\" belongs to worker \\\"innocent\\\""), "{last}");
        assert!(last.contains("workflows = [\\\"billing\\\"]"), "{last}");
        let reply = attack(addr, "GET", "/start", Duration::from_secs(20)).await.unwrap();
        assert_eq!(reply.text(), "innocent ok", "the attacker's old version (no workflow) answers");
    }
    bystander.assert_unharmed(&mut node).await;
    // The innocent worker's workflow still runs its own class.
    let started = support::send(addr, "GET", "/start", &[("host", "innocent.test")], b"").await;
    assert_eq!(started.text(), "billed someone");
}

#[tokio::test]
async fn a_grant_lets_another_worker_start_instances() {
    let grant = "[[grants]]\nworker = \"attacker\"\nworkflows = [\"billing\"]\n";
    let files = innocent_files();
    let files: Vec<(&str, &str)> = files.iter().map(|(name, text)| (*name, text.as_str())).collect();
    let node = hostile_node(BILLING, BINDS, grant, &files);
    let addr = node.http.unwrap();
    let reply = attack(addr, "GET", "/start", Duration::from_secs(20)).await.unwrap();
    assert_eq!(reply.text(), "billed someone", "{}", node.logs());
}
