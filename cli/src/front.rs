//! What `outpost dev` and `outpost serve` share: the ingress handler over
//! the isolate pool (one worker, or routes to many), running listeners
//! together, and shutting down on a signal.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, RwLock};

use anyhow::Context as _;
use outpost_ingress::http3::H3Listener;
use outpost_ingress::routes::Routes;
use outpost_ingress::{Body, Handler, HandlerError, Listener, RequestContext, ServerConfig};
use outpost_isolate_pool::{FetchError, LimitCaps, Pool, PoolConfig, Snapshotter, WorkerSpec};
use outpost_runtime::{Binding, DispatchError, Egress, HttpRequest, WorkerSource};

/// Which worker a request goes to.
pub enum Target {
    /// Every request, to one worker (`outpost dev`).
    One(String),
    /// By host and path; the table can be replaced while the node runs.
    Routes(RwLock<Arc<Routes<String>>>),
}

/// Hands requests to the pool's workers.
pub struct PoolHandler {
    pub pool: Pool,
    pub target: Target,
}

impl PoolHandler {
    fn worker_for(&self, url: &str) -> Result<String, HandlerError> {
        match &self.target {
            Target::One(worker) => Ok(worker.clone()),
            Target::Routes(routes) => {
                let uri: http::Uri = url.parse().map_err(|_| HandlerError::NotFound(format!("no route for {url}")))?;
                let host = uri.authority().map_or("", |a| a.as_str());
                let routes = routes.read().unwrap().clone();
                routes
                    .find(host, uri.path())
                    .cloned()
                    .ok_or_else(|| HandlerError::NotFound(format!("no worker is routed for host {host}")))
            }
        }
    }

    /// Replaces the routing table (a node whose routes changed).
    pub fn replace_routes(&self, routes: Routes<String>) {
        if let Target::Routes(current) = &self.target {
            *current.write().unwrap() = Arc::new(routes);
        }
    }
}

impl Handler for PoolHandler {
    fn handle(
        &self,
        request: http::Request<Body>,
        context: RequestContext,
    ) -> Pin<Box<dyn Future<Output = Result<http::Response<Body>, HandlerError>> + Send>> {
        let worker = self.worker_for(&context.url);
        let pool = self.pool.clone();
        Box::pin(async move {
            let worker = worker?;
            let cf = Some(context.cf_json());
            let request = HttpRequest { request, url: context.url, request_id: context.request_id, cf };
            pool.fetch(&worker, request).await.map_err(handler_error)
        })
    }
}

/// The pool's view of a worker from its configuration.
pub fn worker_spec(worker: crate::config::ResolvedWorker) -> anyhow::Result<WorkerSpec> {
    let kv = worker.kv_namespaces.into_iter().map(|b| Arc::new(b) as Arc<dyn Binding>);
    let objects = worker.durable_objects.into_iter().map(|b| Arc::new(b) as Arc<dyn Binding>);
    Ok(WorkerSpec {
        source: WorkerSource::new(&worker.root, &worker.main)?,
        name: worker.name,
        vars: worker.vars,
        isolation: worker.isolation,
        limits: worker.limits,
        bindings: kv.chain(objects).collect(),
    })
}

/// The status a client sees follows from why the worker gave no response.
pub fn handler_error(err: FetchError) -> HandlerError {
    match err {
        FetchError::NoSuchWorker(_) => HandlerError::NotFound(err.to_string()),
        FetchError::Dispatch(DispatchError::WorkerThrew) => HandlerError::WorkerFailed,
        FetchError::Dispatch(DispatchError::NoHandler(message)) => HandlerError::NoHandler(message),
        FetchError::Dispatch(
            limit @ (DispatchError::CpuLimitExceeded { .. }
            | DispatchError::WallLimitExceeded { .. }
            | DispatchError::MemoryLimitExceeded { .. }),
        ) => HandlerError::LimitExceeded(limit.to_string()),
        FetchError::Dispatch(_) => HandlerError::Unavailable,
        _ => HandlerError::Unavailable,
    }
}

/// Starts what `dev` and `serve` share under `data_dir`: the isolate pool
/// (`threads` isolate threads, by default one per core but one, which stays
/// with the HTTP front) and the store. Initialises V8.
pub fn start_pool_and_store(
    data_dir: &Path,
    worker_snapshots: bool,
    threads: Option<usize>,
    caps: LimitCaps,
    egress: Egress,
) -> anyhow::Result<(Pool, outpost_kv::Store)> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    outpost_runtime::init_v8();
    let snapshotter =
        Snapshotter::current_exe(crate::SNAPSHOT_SUBCOMMAND).context("cannot find the outpost executable")?;
    let kv_path = data_dir.join("kv.redb");
    let store = outpost_kv::Store::open(&kv_path, outpost_kv::StoreConfig::default())
        .with_context(|| format!("cannot open the store {}", kv_path.display()))?;
    let mut pool_config = PoolConfig::new(data_dir.join("snapshots"), snapshotter);
    pool_config.worker_snapshots = worker_snapshots;
    pool_config.caps = caps;
    pool_config.egress = egress;
    pool_config.services.insert(store.clone());
    // Measured: on 2 cores, 1 isolate thread + 1 front thread serves more
    // than 2 + 1.
    pool_config.threads = threads.unwrap_or_else(|| pool_config.threads.saturating_sub(1).max(1));
    let pool = Pool::start(pool_config);
    Ok((pool, store))
}

/// The async runtime of the HTTP front: one thread.
pub fn front_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// The store's background work: sweeping expired KV entries and firing
/// Durable Object alarms. Call inside the runtime.
pub fn spawn_store_tasks(pool: &Pool, store: &outpost_kv::Store) {
    store.spawn_sweeper(std::time::Duration::from_secs(60));
    tokio::spawn(outpost_isolate_pool::run_alarms(pool.clone(), store.clone()));
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
