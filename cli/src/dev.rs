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
}

pub fn run(args: DevArgs) -> anyhow::Result<()> {
    let mut workers = args.paths.iter().map(|path| config::resolve(path)).collect::<anyhow::Result<Vec<_>>>()?;
    for (key, value) in &args.vars {
        workers[0].vars.insert(key.clone(), serde_json::Value::String(value.clone()));
    }
    let data_dir = args.data_dir.clone().unwrap_or_else(|| workers[0].root.join(".outpost"));
    // A broken worker path fails before anything starts.
    for worker in &workers {
        WorkerSource::new(&worker.root, &worker.main)?;
    }
    let names: Vec<&str> = workers.iter().map(|w| w.name.as_str()).collect();
    if let Some(twice) = names.iter().enumerate().find(|(i, name)| names[..*i].contains(name)).map(|(_, n)| n) {
        bail!("two workers are named {twice:?}");
    }
    let name = workers[0].name.clone();
    // One worker: isolates start from its own snapshot. Several share the
    // bootstrap snapshot (one snapshot blob per process, see ARCHITECTURE.md).
    let worker_snapshots = !args.no_worker_snapshot && workers.len() == 1;
    // A developer's own machine: the worker may call services on it.
    let node = front::start_node(&data_dir, worker_snapshots, None, LimitCaps::CEILING, Egress::Any)?;
    // The others first: the served worker may call them as soon as it runs.
    for worker in workers.into_iter().rev() {
        let worker_name = worker.name.clone();
        node.deploy(front::node_worker(worker)?).with_context(|| format!("cannot load worker {worker_name}"))?;
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
