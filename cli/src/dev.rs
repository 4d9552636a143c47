//! `outpost dev`: one worker, served on loopback, through the same isolate
//! pool (and limits) a node uses.

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use outpost_ingress::ServerConfig;
use outpost_isolate_pool::LimitCaps;
use outpost_runtime::Egress;
use outpost_runtime::WorkerSource;

use crate::front;
use crate::{config, dev_tls};

#[derive(clap::Args)]
pub struct DevArgs {
    /// The worker: a `.js` file, or a directory with an `outpost.toml` or a
    /// `worker.js`. More workers after it run beside it, reachable through
    /// service bindings (by name) but not served on the port.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 8787)]
    port: u16,
    /// A variable for the worker's `env`, overriding `[vars]` (repeatable).
    #[arg(long = "var", value_name = "KEY=VALUE", value_parser = config::parse_var)]
    vars: Vec<(String, String)>,
    /// Where local state (snapshots, KV data) is kept; default `.outpost/`
    /// in the worker's directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Evaluate the worker's modules in every new isolate instead of
    /// starting isolates from the worker's snapshot (for comparison).
    #[arg(long)]
    no_worker_snapshot: bool,
    /// Serve HTTPS (HTTP/2 and HTTP/1.1) with a certificate for localhost
    /// signed by a local CA, made once under the data directory.
    #[arg(long)]
    https: bool,
    /// Run the worker's `scheduled` handler by hand: `GET /__scheduled?cron=<expr>`
    /// or `GET /cdn-cgi/handler/scheduled?cron=<expr>`, as with wrangler.
    #[arg(long)]
    test_scheduled: bool,
    /// Do not reload a worker when its files change (then one worker runs
    /// from its own snapshot, as a node would).
    #[arg(long)]
    no_watch: bool,
}

pub fn run(args: DevArgs) -> anyhow::Result<()> {
    let mut workers = Vec::with_capacity(args.paths.len());
    for (i, path) in args.paths.iter().enumerate() {
        workers.push(resolve(path, if i == 0 { &args.vars } else { &[] })?);
    }
    let data_dir = args.data_dir.clone().unwrap_or_else(|| workers[0].root.join(".outpost"));
    std::fs::create_dir_all(&data_dir).with_context(|| format!("cannot create {}", data_dir.display()))?;
    // A broken worker path fails before anything starts.
    for worker in &workers {
        WorkerSource::new(&worker.root, &worker.main)?;
    }
    let names: Vec<&str> = workers.iter().map(|w| w.name.as_str()).collect();
    if let Some(twice) = names.iter().enumerate().find(|(i, name)| names[..*i].contains(name)).map(|(_, n)| n) {
        bail!("two workers are named {twice:?}");
    }
    let name = workers[0].name.clone();
    // One worker, not reloaded on change: isolates start from its own
    // snapshot. Otherwise from the bootstrap snapshot: one snapshot blob per
    // process (see ARCHITECTURE.md), and a reloaded worker's new snapshot
    // would be a second one.
    let worker_snapshots = !args.no_worker_snapshot && workers.len() == 1 && args.no_watch;
    // A developer's own machine: the worker may call services on it.
    let node = Arc::new(front::start_node(&data_dir, worker_snapshots, None, LimitCaps::CEILING, Egress::Any)?);
    let roots: Vec<PathBuf> = workers.iter().map(|w| w.root.clone()).collect();
    // The others first: the served worker may call them as soon as it runs.
    for worker in workers.into_iter().rev() {
        let worker_name = worker.name.clone();
        node.deploy(front::node_worker(worker)?).with_context(|| format!("cannot load worker {worker_name}"))?;
    }
    if !args.no_watch {
        let watched = Watched {
            node: node.clone(),
            paths: args.paths.clone(),
            roots,
            vars: args.vars.clone(),
            data_dir: data_dir.clone(),
        };
        std::thread::Builder::new().name("outpost-watch".into()).spawn(move || watch(watched))?;
    }

    let runtime = front::front_runtime()?;
    let tls = if args.https {
        let certificate = dev_tls::ensure(&data_dir.join("tls"))?;
        let mut certificates = outpost_ingress::tls::Certificates::new();
        let hosts: Vec<String> = dev_tls::DEV_HOSTS.iter().map(|h| h.to_string()).collect();
        certificates.add_pem(&hosts, &certificate.cert_pem, &certificate.key_pem, "the development certificate")?;
        Some((Arc::new(certificates), certificate))
    } else {
        None
    };
    runtime.block_on(async move {
        node.spawn_control()?;
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, args.port));
        let listeners = match tls {
            Some((certificates, certificate)) => {
                // HTTPS on TCP, HTTP/3 on the same port over UDP.
                let (listeners, address) = front::bind_tls(address, certificates, true).await?;
                println!("outpost dev: serving worker {name:?} on https://localhost:{}", address.port());
                if certificate.created {
                    eprintln!("{}", dev_tls::trust_hint(&certificate.ca_path));
                }
                listeners
            }
            None => {
                let (listener, address) = front::bind_cleartext(address).await?;
                println!("outpost dev: serving worker {name:?} on http://{address}");
                vec![listener]
            }
        };
        std::io::stdout().flush()?;
        node.spawn_triggers();
        let mut handler = node.handler_for(&name);
        if args.test_scheduled {
            handler = handler.with_test_scheduled();
        }
        let handler = Arc::new(handler);
        // WebSockets close (1001) while the front drains.
        // A developer's own machine: a client's X-Request-Id is the request's id.
        let config = ServerConfig { client_request_ids: true, ..ServerConfig::default() };
        front::serve_until_signal(listeners, config, handler, || node.close_websockets()).await?;
        node.stop();
        Ok(())
    })
}

/// What the watcher needs: the node, each worker's path as given and its
/// directory, the command line's variables (for the first worker), and the
/// data directory (never looked at: it changes as the node runs).
struct Watched {
    node: Arc<outpost_node::Node>,
    paths: Vec<PathBuf>,
    roots: Vec<PathBuf>,
    vars: Vec<(String, String)>,
    data_dir: PathBuf,
}

/// How often the watcher looks at the workers' files.
const WATCH_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// Reloads a worker whose files changed: its configuration read again and
/// the new version deployed in place (state in KV and Durable Objects kept,
/// in-flight requests finishing on the old version). A change that does not
/// load leaves the previous version serving; the error is logged.
fn watch(watched: Watched) {
    let data_dir = std::fs::canonicalize(&watched.data_dir).unwrap_or(watched.data_dir.clone());
    let look = |root: &std::path::Path| crate::dev_watch::fingerprint(root, &data_dir);
    let mut seen: Vec<_> = watched.roots.iter().map(|root| look(root)).collect();
    loop {
        std::thread::sleep(WATCH_EVERY);
        for (i, path) in watched.paths.iter().enumerate() {
            let now = look(&watched.roots[i]);
            if now == seen[i] {
                continue;
            }
            seen[i] = now;
            let started = std::time::Instant::now();
            let vars = if i == 0 { watched.vars.as_slice() } else { &[] };
            match reload(&watched.node, path, vars) {
                Ok(name) => {
                    let ms = started.elapsed().as_millis();
                    tracing::info!(worker = %name, ms, "reloaded worker {name} in {ms} ms");
                }
                Err(err) => tracing::error!(
                    path = %path.display(),
                    "the change does not load; still serving the previous version: {err:#}"
                ),
            }
        }
    }
}

/// A worker as `outpost dev` runs it: its configuration, its `.dev.vars`
/// over its `[vars]`, and the command line's `--var`s over both.
fn resolve(path: &std::path::Path, vars: &[(String, String)]) -> anyhow::Result<config::ResolvedWorker> {
    let mut worker = config::resolve(path)?;
    let dev_vars = crate::dev_vars::read(&worker.root)?;
    for (key, value) in dev_vars.iter().chain(vars) {
        worker.vars.insert(key.clone(), serde_json::Value::String(value.clone()));
    }
    Ok(worker)
}

fn reload(node: &outpost_node::Node, path: &std::path::Path, vars: &[(String, String)]) -> anyhow::Result<String> {
    let worker = resolve(path, vars)?;
    let name = worker.name.clone();
    node.deploy(front::node_worker(worker)?)?;
    Ok(name)
}
