//! `outpost serve --config node.toml`: an edge node. Many workers in one
//! isolate pool, routes from hosts and paths to them, cleartext and TLS
//! listeners with a certificate per host name.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use outpost_ingress::tls::Certificates;
use outpost_ingress::ServerConfig;
use outpost_isolate_pool::LimitCaps;
use outpost_node::{Applied, Candidate, Desired, Grant, Node};
use outpost_runtime::Egress;
use serde::Deserialize;

use crate::config;
use crate::front;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// The node's configuration file.
    #[arg(long, default_value = "node.toml")]
    config: PathBuf,
}

/// `node.toml`. Relative paths are relative to the file's directory.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Where the node keeps its state (KV and Durable Object data).
    pub data_dir: Option<PathBuf>,
    /// Threads running isolates (default: cores − 1, at least 1).
    pub threads: Option<usize>,
    #[serde(default)]
    pub listeners: Vec<ListenerConfig>,
    #[serde(default)]
    pub certificates: Vec<CertificateConfig>,
    #[serde(default)]
    pub workers: Vec<WorkerEntry>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    #[serde(default)]
    pub limits: FrontLimits,
    /// Access to KV namespaces and Durable Object classes that belong to
    /// other workers (see `ownership`).
    #[serde(default)]
    pub grants: Vec<Grant>,
    #[serde(default)]
    pub egress: EgressConfig,
}

/// The `[egress]` table: where workers' outbound `fetch` may connect.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressConfig {
    /// Whether workers may reach loopback and private addresses (the node's
    /// own services, its LAN); default false.
    #[serde(default)]
    pub private_networks: bool,
}

impl EgressConfig {
    pub fn egress(&self) -> Egress {
        if self.private_networks {
            Egress::Any
        } else {
            Egress::PublicOnly
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// `host:port` to bind.
    pub address: SocketAddr,
    /// HTTPS with the node's certificates (HTTP/2 and HTTP/1.1 by ALPN);
    /// otherwise cleartext HTTP/1.1 and HTTP/2 with prior knowledge.
    #[serde(default)]
    pub tls: bool,
    /// With `tls`: HTTP/3 on the same port over UDP, advertised with
    /// `Alt-Svc` (default true).
    pub http3: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// Host names the certificate serves (`*.example.com` for subdomains).
    pub hosts: Vec<String>,
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerEntry {
    /// A worker directory (with its `outpost.toml`) or a `.js` file.
    pub path: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// `host/path`, e.g. `api.example.com/*` or `*.example.com/static/*`.
    pub pattern: String,
    /// The worker's name.
    pub worker: String,
}

/// Limits of the front, for every listener.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrontLimits {
    /// Largest request body, in bytes (default 100 MiB).
    pub max_body_bytes: Option<u64>,
    /// Largest request head, in bytes (default 64 KiB).
    pub max_header_bytes: Option<usize>,
    /// Connections open at once (default 10000).
    pub max_connections: Option<usize>,
    /// Time a client may take to send a request head, ms (default 30000).
    pub header_timeout_ms: Option<u64>,
    /// Time a request body may go without sending anything, ms (default 60000).
    pub body_timeout_ms: Option<u64>,
    /// On SIGTERM, how long requests in flight may take to finish, ms
    /// (default 30000).
    pub shutdown_grace_ms: Option<u64>,
    /// The most CPU per request a worker may ask for, ms (default 30000).
    pub max_worker_cpu_ms: Option<u64>,
    /// The longest wall-clock limit a worker may ask for, ms (default 900000).
    pub max_worker_wall_ms: Option<u64>,
    /// The largest heap a worker may ask for, MiB (default 512).
    pub max_worker_memory_mb: Option<u64>,
    /// The most concurrent requests per isolate a worker may ask for
    /// (default 1000).
    pub max_worker_concurrent: Option<usize>,
}

impl FrontLimits {
    /// The caps on every worker's `[limits]`.
    pub fn worker_caps(&self) -> LimitCaps {
        let defaults = LimitCaps::default();
        LimitCaps {
            max_cpu_ms: self.max_worker_cpu_ms.unwrap_or(defaults.max_cpu_ms),
            max_wall_ms: self.max_worker_wall_ms.unwrap_or(defaults.max_wall_ms),
            max_memory_mb: self.max_worker_memory_mb.unwrap_or(defaults.max_memory_mb),
            max_concurrent: self.max_worker_concurrent.unwrap_or(defaults.max_concurrent),
        }
    }

    pub fn server_config(&self) -> ServerConfig {
        let defaults = ServerConfig::default();
        let ms = |value: Option<u64>, default: Duration| value.map_or(default, Duration::from_millis);
        ServerConfig {
            header_read_timeout: ms(self.header_timeout_ms, defaults.header_read_timeout),
            max_header_bytes: self.max_header_bytes.unwrap_or(defaults.max_header_bytes),
            max_body_bytes: self.max_body_bytes.unwrap_or(defaults.max_body_bytes),
            body_read_timeout: ms(self.body_timeout_ms, defaults.body_read_timeout),
            max_connections: self.max_connections.unwrap_or(defaults.max_connections),
            shutdown_grace: ms(self.shutdown_grace_ms, defaults.shutdown_grace),
            ..defaults
        }
    }
}

impl NodeConfig {
    pub fn parse(text: &str, path: &Path) -> anyhow::Result<Self> {
        let config: NodeConfig = toml::from_str(text).with_context(|| format!("invalid {}", path.display()))?;
        if config.listeners.is_empty() {
            bail!("{}: a node needs at least one [[listeners]] entry", path.display());
        }
        if config.listeners.iter().any(|l| l.tls) && config.certificates.is_empty() {
            bail!("{}: a TLS listener needs at least one [[certificates]] entry", path.display());
        }
        if let Some(listener) = config.listeners.iter().find(|l| l.http3 == Some(true) && !l.tls) {
            bail!("{}: listener {}: http3 needs tls = true", path.display(), listener.address);
        }
        config.limits.worker_caps().check().with_context(|| format!("invalid {}", path.display()))?;
        Ok(config)
    }
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(&args.config).with_context(|| format!("cannot read {}", args.config.display()))?;
    let config = NodeConfig::parse(&text, &args.config)?;
    let base = args.config.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
    let resolve = |path: &Path| resolve_in(&base, path);

    // Everything that can be wrong with the file is found before anything
    // listens: workers load, routes name them, certificates parse.
    let mut certificates = Certificates::new();
    for certificate in &config.certificates {
        certificates.add_files(&certificate.hosts, &resolve(&certificate.cert), &resolve(&certificate.key))?;
    }
    let certificates = Arc::new(certificates);

    let data_dir = resolve(config.data_dir.as_deref().unwrap_or(Path::new(".outpost-node")));
    // Many workers in one process: every isolate from the bootstrap snapshot
    // (see ARCHITECTURE.md, "one snapshot blob per process").
    let node =
        front::start_node(&data_dir, false, config.threads, config.limits.worker_caps(), config.egress.egress())?;
    let node = Arc::new(node);
    // At start, every worker of the file must load.
    let applied =
        node.apply(desired(&args.config, &config, &base)).with_context(|| args.config.display().to_string())?;
    if !applied.refused.is_empty() {
        bail!("{}", applied.refused.join("\n"));
    }

    let runtime = front::front_runtime()?;
    runtime.block_on(async move {
        let mut listeners = Vec::new();
        for listener in &config.listeners {
            if listener.tls {
                let http3 = listener.http3.unwrap_or(true);
                let (bound, address) = front::bind_tls(listener.address, certificates.clone(), http3).await?;
                println!("outpost serve: listening on https://{address}");
                if http3 {
                    println!("outpost serve: listening on h3://{address}");
                }
                listeners.extend(bound);
            } else {
                let (bound, address) = front::bind_cleartext(listener.address).await?;
                println!("outpost serve: listening on http://{address}");
                listeners.push(bound);
            }
        }
        node.spawn_control()?;
        let handler = Arc::new(node.routed_handler());
        let reload = Reload { path: args.config.clone(), base, node: node.clone() };
        // Listening for SIGHUP before saying the node is up: a hangup that
        // arrived before would otherwise end the process.
        let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("cannot listen for SIGHUP")?;
        tokio::spawn(reload_on_sighup(reload, hangups));
        println!("outpost serve: {} workers, {} routes", applied.deployed.len(), config.routes.len());
        std::io::stdout().flush()?;
        node.spawn_triggers();
        // WebSockets close (1001) while the front drains.
        front::serve_until_signal(listeners, config.limits.server_config(), handler, || node.close_websockets())
            .await?;
        node.stop();
        tracing::info!("stopped");
        Ok(())
    })
}

/// A path of the file, relative to its directory unless absolute.
fn resolve_in(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

/// What a reload needs: the file, where its paths start, and the node.
struct Reload {
    path: PathBuf,
    base: PathBuf,
    node: Arc<Node>,
}

/// SIGHUP: read the file again and apply its workers and routes to the
/// node (see [`Node::apply`]: each worker stands alone, and one refused
/// keeps its running version). Listeners, certificates and limits stay as
/// they were started. A file that does not parse changes nothing.
async fn reload_on_sighup(reload: Reload, mut hangups: tokio::signal::unix::Signal) {
    let reload = Arc::new(reload);
    while hangups.recv().await.is_some() {
        let reload = reload.clone();
        // Deploying loads workers (and may make snapshots): off the async threads.
        let reloaded = tokio::task::spawn_blocking(move || -> anyhow::Result<Applied> {
            let text = std::fs::read_to_string(&reload.path)
                .with_context(|| format!("cannot read {}", reload.path.display()))?;
            let config = NodeConfig::parse(&text, &reload.path)?;
            let desired = desired(&reload.path, &config, &reload.base);
            reload.node.apply(desired).with_context(|| reload.path.display().to_string())
        })
        .await;
        match reloaded {
            Ok(Ok(Applied { deployed, refused, routes_swapped })) => {
                for refusal in &refused {
                    tracing::error!("reload failed for a worker, which keeps its running version: {refusal}");
                }
                tracing::info!(
                    deployed = deployed.len(),
                    refused = refused.len(),
                    routes_swapped,
                    "reloaded the node's workers and routes"
                );
            }
            Ok(Err(err)) => tracing::error!("reload failed, nothing changed: {err:#}"),
            Err(err) => tracing::error!("reload failed: {err}"),
        }
    }
}

/// What a node file asks the node to run: its workers (each read from its
/// directory's `outpost.toml`, or why it could not be), routes and grants.
fn desired(path: &Path, config: &NodeConfig, base: &Path) -> Desired {
    let workers = config
        .workers
        .iter()
        .map(|entry| {
            let worker_path = resolve_in(base, &entry.path);
            let worker = config::resolve(&worker_path)
                .and_then(front::node_worker)
                .map_err(|err| format!("{}: {err:#}", path.display()));
            Candidate { label: worker_path.display().to_string(), worker }
        })
        .collect();
    Desired {
        workers,
        routes: config.routes.iter().map(|r| (r.pattern.clone(), r.worker.clone())).collect(),
        grants: config.grants.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_files_parse_and_are_checked() {
        let text = r#"
data_dir = "state"
[[listeners]]
address = "127.0.0.1:8080"
[[listeners]]
address = "127.0.0.1:8443"
tls = true
[[certificates]]
hosts = ["example.com", "*.example.com"]
cert = "certs/example.pem"
key = "certs/example-key.pem"
[[workers]]
path = "workers/api"
[[routes]]
pattern = "api.example.com/*"
worker = "api"
[limits]
max_body_bytes = 1024
header_timeout_ms = 500
"#;
        let config = NodeConfig::parse(text, Path::new("node.toml")).unwrap();
        assert_eq!(config.listeners.len(), 2);
        let server = config.limits.server_config();
        assert_eq!((server.max_body_bytes, server.header_read_timeout), (1024, Duration::from_millis(500)));
        let err = NodeConfig::parse("[[listeners]]\naddress = \"127.0.0.1:1\"\ntls = true\n", Path::new("n.toml"))
            .unwrap_err();
        assert!(err.to_string().contains("[[certificates]]"), "{err}");
        let err = NodeConfig::parse("[[listener]]\naddress = \"127.0.0.1:1\"\n", Path::new("n.toml")).unwrap_err();
        assert!(format!("{err:#}").contains("unknown field `listener`"), "{err:#}");
    }
}
