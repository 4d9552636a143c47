//! `outpost dev`: one worker, served on loopback, through the same isolate
//! pool (and limits) a node uses.

use std::future::Future;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::Context as _;
use outpost_ingress::{Body, Handler, HandlerError, RequestContext, ServerConfig};
use outpost_isolate_pool::{FetchError, Pool, PoolConfig, Snapshotter, WorkerSpec};
use outpost_runtime::{DispatchError, WorkerSource};

use crate::config;

#[derive(clap::Args)]
pub struct DevArgs {
    /// The worker: a `.js` file, or a directory with an `outpost.toml` or a `worker.js`.
    path: PathBuf,
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
}

pub fn run(args: DevArgs) -> anyhow::Result<()> {
    let mut worker = config::resolve(&args.path)?;
    for (key, value) in args.vars {
        worker.vars.insert(key, serde_json::Value::String(value));
    }
    let data_dir = args.data_dir.unwrap_or_else(|| worker.root.join(".outpost"));
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;

    outpost_runtime::init_v8();
    let source = WorkerSource::new(&worker.root, &worker.main)?;
    let snapshotter =
        Snapshotter::current_exe(crate::SNAPSHOT_SUBCOMMAND).context("cannot find the outpost executable")?;
    let mut pool_config = PoolConfig::new(data_dir.join("snapshots"), snapshotter);
    pool_config.worker_snapshots = !args.no_worker_snapshot;
    // One core stays with the HTTP front (measured: on 2 cores, 1 isolate
    // thread + 1 front thread serves more than 2 + 1).
    pool_config.threads = pool_config.threads.saturating_sub(1).max(1);
    let pool = Pool::start(pool_config);
    let kv_path = data_dir.join("kv.redb");
    let kv_store = outpost_kv::Store::open(&kv_path, outpost_kv::StoreConfig::default())
        .with_context(|| format!("cannot open the KV store {}", kv_path.display()))?;
    pool.deploy(WorkerSpec {
        name: worker.name.clone(),
        source,
        vars: worker.vars,
        isolation: worker.isolation,
        limits: worker.limits,
        kv_namespaces: worker.kv_namespaces,
        kv_store: Some(kv_store.clone()),
        durable_objects: worker.durable_objects,
    })
    .with_context(|| format!("cannot load worker {}", worker.name))?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, args.port));
        let listener =
            tokio::net::TcpListener::bind(address).await.with_context(|| format!("cannot listen on {address}"))?;
        let address = listener.local_addr()?;
        println!("outpost dev: serving worker {:?} on http://{address}", worker.name);
        std::io::stdout().flush()?;
        kv_store.spawn_sweeper(std::time::Duration::from_secs(60));
        tokio::spawn(outpost_isolate_pool::run_alarms(pool.clone(), kv_store.clone()));
        let handler = Arc::new(PoolHandler { pool: pool.clone(), worker: worker.name });
        tokio::select! {
            result = outpost_ingress::serve(listener, ServerConfig::default(), handler) => result?,
            _ = shutdown_signal() => tracing::info!("shutting down"),
        }
        pool.stop();
        Ok(())
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).expect("a SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

/// Hands every request to one worker of the pool.
struct PoolHandler {
    pool: Pool,
    worker: String,
}

impl Handler for PoolHandler {
    fn handle(
        &self,
        request: http::Request<Body>,
        context: RequestContext,
    ) -> Pin<Box<dyn Future<Output = Result<http::Response<Body>, HandlerError>> + Send>> {
        let pool = self.pool.clone();
        let worker = self.worker.clone();
        Box::pin(
            async move { pool.fetch(&worker, request, context.url, context.request_id).await.map_err(handler_error) },
        )
    }
}

/// The status a client sees follows from why the worker gave no response.
pub fn handler_error(err: FetchError) -> HandlerError {
    match err {
        FetchError::NoSuchWorker(_) => HandlerError::NotFound(err.to_string()),
        FetchError::Dispatch(DispatchError::WorkerThrew) => HandlerError::WorkerFailed,
        FetchError::Dispatch(
            limit @ (DispatchError::CpuLimitExceeded { .. }
            | DispatchError::WallLimitExceeded { .. }
            | DispatchError::MemoryLimitExceeded { .. }),
        ) => HandlerError::LimitExceeded(limit.to_string()),
        FetchError::Dispatch(_) => HandlerError::Unavailable,
        _ => HandlerError::Unavailable,
    }
}
