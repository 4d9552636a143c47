//! Attacks on a node, made as a hostile tenant or a hostile client would
//! make them. Each runs against a real `outpost serve` whose one isolate
//! thread it shares with an innocent worker: the innocent worker must keep
//! answering correctly all through the attack (no non-2xx, no timeouts),
//! and the node must never exit.

mod client;
mod cpu;
mod tenant;
mod workflows;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::{self, Node, Reply};

const INNOCENT: &str = r#"export default { fetch() { return new Response("innocent ok"); } };"#;

/// A node with two workers on one isolate thread: `innocent` (at
/// `innocent.test`) and `attacker` (at `attacker.test`, with `attacker_js`,
/// its `outpost.toml` lines and more files of its bundle). `node_extra` is
/// appended to node.toml.
pub(crate) fn hostile_node(attacker_js: &str, attacker_toml: &str, node_extra: &str, files: &[(&str, &str)]) -> Node {
    let node_toml = format!(
        r#"threads = 1
[[listeners]]
address = "127.0.0.1:0"
[[workers]]
path = "workers/innocent"
[[workers]]
path = "workers/attacker"
[[routes]]
pattern = "innocent.test/*"
worker = "innocent"
[[routes]]
pattern = "attacker.test/*"
worker = "attacker"
{node_extra}
"#
    );
    let mut all: Vec<(&str, String)> = vec![
        ("workers/innocent/outpost.toml", "name = \"innocent\"\n".to_string()),
        ("workers/innocent/worker.js", INNOCENT.to_string()),
        ("workers/attacker/outpost.toml", format!("name = \"attacker\"\n{attacker_toml}\n")),
        ("workers/attacker/worker.js", attacker_js.to_string()),
    ];
    all.extend(files.iter().map(|(name, text)| (*name, text.to_string())));
    Node::start(&node_toml, &all)
}

/// A request to the attacker, answered within `timeout` or `None`.
pub(crate) async fn attack(addr: SocketAddr, method: &str, path: &str, timeout: Duration) -> Option<Reply> {
    tokio::time::timeout(timeout, support::send(addr, method, path, &[("host", "attacker.test")], b"")).await.ok()
}

/// Keeps asking the innocent worker while an attack runs.
pub(crate) struct Bystander {
    stop: Arc<AtomicBool>,
    /// Requests answered or failed so far.
    rounds: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<(usize, Vec<String>)>,
}

impl Bystander {
    pub(crate) fn watch(addr: SocketAddr) -> Bystander {
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (stopped, counted) = (stop.clone(), rounds.clone());
        let task = tokio::spawn(async move {
            let (mut sent, mut failures) = (0, Vec::new());
            while !stopped.load(Ordering::Relaxed) {
                sent += 1;
                let asked = support::send(addr, "GET", "/", &[("host", "innocent.test")], b"");
                match tokio::time::timeout(Duration::from_secs(5), asked).await {
                    Ok(reply) if reply.status == 200 && reply.text() == "innocent ok" => {}
                    Ok(reply) => failures.push(format!("{} {}", reply.status, reply.text())),
                    Err(_) => failures.push("no answer within 5 s".to_string()),
                }
                counted.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            (sent, failures)
        });
        Bystander { stop, rounds, task }
    }

    /// Stops watching; the innocent worker must have answered every time.
    pub(crate) async fn assert_unharmed(self, node: &mut Node) {
        // At least a few rounds, whatever the test did meanwhile.
        while self.rounds.load(Ordering::Relaxed) < 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.stop.store(true, Ordering::Relaxed);
        let (sent, failures) = self.task.await.unwrap();
        assert!(sent > 0, "the bystander sent nothing");
        assert!(failures.is_empty(), "the innocent worker failed {} of {sent} requests: {failures:?}", failures.len());
        assert!(node.is_running(), "the node exited; logs:\n{}", node.logs());
    }
}

/// Counts the lines of the node's log that contain `needle`.
pub(crate) fn count_in_log(node: &Node, needle: &str) -> usize {
    node.logs().lines().filter(|line| line.contains(needle)).count()
}

/// Waits until the log has more than `before` lines containing `needle`.
pub(crate) async fn wait_for_more(node: &Node, needle: &str, before: usize, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    while count_in_log(node, needle) <= before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the log never had a new line with {needle:?}; logs:\n{}",
            node.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends the node SIGHUP and waits for a new log line with `needle` (the
/// reload's outcome).
pub(crate) async fn reload(node: &Node, needle: &str) {
    let before = count_in_log(node, needle);
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(node.pid(), libc::SIGHUP) };
    wait_for_more(node, needle, before, Duration::from_secs(20)).await;
}
