//! `outpost`: run Cloudflare-style workers locally (`dev`), or run a node (`serve`).

mod config;
mod control_client;
mod dev;
mod dev_tls;
mod dev_vars;
mod dev_watch;
mod front;
#[cfg(test)]
mod fuzz_tests;
mod init;
mod kv;
mod node;
mod workflows;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "outpost", version, about = "An edge runtime for Cloudflare-style workers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a worker on 127.0.0.1 for local development.
    Dev(dev::DevArgs),
    /// Run a node: the listeners, certificates, workers and routes of a
    /// node.toml.
    Serve(node::ServeArgs),
    /// A new worker directory that `outpost dev` runs at once.
    Init(init::InitArgs),
    /// KV namespaces of a running node, or of a data directory.
    Kv(kv::KvArgs),
    /// Workflows of a running node: list them, their instances, describe
    /// one, trigger one.
    Workflows(workflows::WorkflowsArgs),
    /// Internal: evaluate a worker and write its V8 snapshot (run by the
    /// isolate pool in a process of its own).
    #[command(name = "snapshot-worker", hide = true)]
    SnapshotWorker { root: PathBuf, main: PathBuf, out: PathBuf },
}

/// The hidden subcommand the pool runs to make a worker snapshot.
pub const SNAPSHOT_SUBCOMMAND: &str = "snapshot-worker";

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Held until the end of main: dropping it writes out the lines still queued.
    let _log_writer;
    let result = match cli.command {
        Command::Dev(args) => {
            _log_writer = install_tracing();
            dev::run(args)
        }
        Command::Serve(args) => {
            _log_writer = install_tracing();
            node::run(args)
        }
        // No subscriber: the parent reads this process's stderr as the error.
        Command::Workflows(args) => workflows::run(args),
        Command::Init(args) => init::run(args),
        Command::Kv(args) => kv::run(args),
        Command::SnapshotWorker { root, main, out } => return snapshot_worker(&root, &main, &out),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn snapshot_worker(root: &std::path::Path, main: &std::path::Path, out: &std::path::Path) -> ExitCode {
    match outpost_isolate_pool::snapshots::run_snapshot_process(root, main, out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("{}", failure.message);
            ExitCode::from(u8::try_from(failure.status).unwrap_or(1))
        }
    }
}

/// Human-readable lines on a terminal, JSON lines otherwise; `RUST_LOG`
/// filters (default: info). Lines go through a bounded queue to a writer
/// thread: an isolate thread never waits for standard error (a stalled log
/// reader would otherwise stall every worker), and when the queue is full
/// lines are dropped rather than queued without end.
fn install_tracing() -> tracing_appender::non_blocking::WorkerGuard {
    use tracing_subscriber::EnvFilter;
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("outpost-log")
        .finish(std::io::stderr());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    if std::io::stderr().is_terminal() {
        builder.init();
    } else {
        builder.json().flatten_event(true).with_current_span(true).init();
    }
    guard
}

/// Log lines waiting for standard error at most.
const LOG_QUEUE_LINES: usize = 64 * 1024;
