//! What `outpost dev` and `outpost serve` share: turning a worker's
//! configuration into the node's [`Worker`], starting the node, running
//! listeners together, and shutting down on a signal.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use outpost_ingress::http3::H3Listener;
use outpost_ingress::{Handler, Listener, ServerConfig};
use outpost_isolate_pool::{LimitCaps, Snapshotter, WorkerSpec};
use outpost_node::{Node, NodeOptions, Worker};
use outpost_runtime::{Binding, Egress, WorkerSource};

/// The node's view of a worker from its configuration.
pub fn node_worker(worker: crate::config::ResolvedWorker) -> anyhow::Result<Worker> {
    let kv = worker.kv_namespaces.into_iter().map(|b| Arc::new(b) as Arc<dyn Binding>);
    let objects = worker.durable_objects.into_iter().map(|b| Arc::new(b) as Arc<dyn Binding>);
    let services = worker.services.into_iter().map(|b| Arc::new(b) as Arc<dyn Binding>);
    let queues = worker.queue_producers.into_iter().map(|b| Arc::new(b) as Arc<dyn Binding>);
    let workflows = worker.workflows.into_iter().map(|b| Arc::new(b) as Arc<dyn Binding>);
    let spec = WorkerSpec {
        source: WorkerSource::new(&worker.root, &worker.main)?,
        name: worker.name,
        vars: worker.vars,
        isolation: worker.isolation,
        limits: worker.limits,
        bindings: kv.chain(objects).chain(services).chain(queues).chain(workflows).collect(),
    };
    Ok(Worker { spec, crons: worker.crons, consumers: worker.queue_consumers, workflows: worker.workflow_definitions })
}

/// Starts a node keeping its state under `data_dir`, on `threads` isolate
/// threads (by default one per core but one, which stays with the HTTP
/// front). Initialises V8.
pub fn start_node(
    data_dir: &Path,
    worker_snapshots: bool,
    threads: Option<usize>,
    caps: LimitCaps,
    egress: Egress,
) -> anyhow::Result<Node> {
    let snapshotter =
        Snapshotter::current_exe(crate::SNAPSHOT_SUBCOMMAND).context("cannot find the outpost executable")?;
    let options =
        NodeOptions { data_dir: data_dir.to_path_buf(), threads, caps, egress, worker_snapshots, snapshotter };
    Ok(Node::start(options)?)
}

/// The async runtime of the HTTP front: one thread.
pub fn front_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Binds a cleartext listener (HTTP/1.1 and h2c); returns the bound address.
pub async fn bind_cleartext(address: std::net::SocketAddr) -> anyhow::Result<(AnyListener, std::net::SocketAddr)> {
    let tcp = tokio::net::TcpListener::bind(address).await.with_context(|| format!("cannot listen on {address}"))?;
    let bound = tcp.local_addr()?;
    Ok((AnyListener::Tcp(Listener::cleartext(tcp)), bound))
}

/// A TCP listener (HTTP/1.1, HTTP/2) or a QUIC one (HTTP/3).
pub enum AnyListener {
    Tcp(Listener),
    Quic(H3Listener),
}

/// Binds what a TLS listener serves: TCP, and with `http3` the same port
/// over UDP, advertised with `Alt-Svc`. Returns the bound TCP address.
pub async fn bind_tls(
    address: std::net::SocketAddr,
    certificates: Arc<outpost_ingress::tls::Certificates>,
    http3: bool,
) -> anyhow::Result<(Vec<AnyListener>, std::net::SocketAddr)> {
    use outpost_ingress::tls;
    let tcp = tokio::net::TcpListener::bind(address).await.with_context(|| format!("cannot listen on {address}"))?;
    let bound = tcp.local_addr()?;
    let mut listener = Listener::tls(tcp, tls::server_config(certificates.clone(), tls::TCP_ALPN)?);
    let mut listeners = Vec::new();
    if http3 {
        let quic = H3Listener::bind(bound, tls::server_config(certificates, outpost_ingress::http3::H3_ALPN)?)
            .with_context(|| format!("cannot serve HTTP/3 on UDP {bound}"))?;
        listener = listener.with_http3_on(bound.port());
        listeners.push(AnyListener::Quic(quic));
    }
    listeners.insert(0, AnyListener::Tcp(listener));
    Ok((listeners, bound))
}

/// Serves every listener until SIGTERM or SIGINT, then calls `on_shutdown`,
/// lets each listener finish its in-flight requests and WebSockets (up to
/// the configured grace) and returns.
pub async fn serve_until_signal(
    listeners: Vec<AnyListener>,
    config: ServerConfig,
    handler: Arc<dyn Handler>,
    on_shutdown: impl FnOnce(),
) -> anyhow::Result<()> {
    let mut on_shutdown = Some(on_shutdown);
    let mut shut_down = move || {
        if let Some(on_shutdown) = on_shutdown.take() {
            on_shutdown();
        }
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut servers = tokio::task::JoinSet::new();
    for listener in listeners {
        let mut stopped = stopped.clone();
        let shutdown = async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        match listener {
            AnyListener::Tcp(listener) => {
                servers.spawn(outpost_ingress::serve(listener, config.clone(), handler.clone(), shutdown))
            }
            AnyListener::Quic(listener) => {
                servers.spawn(outpost_ingress::http3::serve_h3(listener, config.clone(), handler.clone(), shutdown))
            }
        };
    }
    tokio::select! {
        () = shutdown_signal() => {
            tracing::info!("shutting down: no new connections; finishing requests in flight");
            let _ = stop.send(true);
            shut_down();
        }
        Some(result) = servers.join_next() => {
            // A listener failed on its own: stop the others too.
            let _ = stop.send(true);
            shut_down();
            result??;
        }
    }
    while let Some(result) = servers.join_next().await {
        result??;
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).expect("a SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
