//! The node's deployments: which workers run, which routes lead to them,
//! and who owns which stored data. Changed as a whole by [`Node::apply`].

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use outpost_cron::Schedule;
use outpost_ingress::routes::{RouteError, Routes};
use outpost_isolate_pool::{LimitCaps, Pool, PoolConfig, Snapshotter, WorkerSpec};
use outpost_kv::objects::ObjectStorage;
use outpost_kv::queues::Queues;
use outpost_kv::KvStorage;
use outpost_runtime::Egress;
use outpost_workflows::{Definition, Engine};

use crate::handler::{NodeHandler, Target};
use crate::ownership::{self, Grant, OwnershipError};
use crate::triggers::cron::Crons;
use crate::triggers::queues::{Consumer, Consumers};

/// How a node starts.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// Where the node keeps its state (the store, snapshots, owners).
    pub data_dir: PathBuf,
    /// Threads running isolates (default: cores − 1, at least 1).
    pub threads: Option<usize>,
    /// The most any worker's limits may be.
    pub caps: LimitCaps,
    /// Where workers' outbound `fetch` may connect.
    pub egress: Egress,
    /// Whether isolates start from per-worker snapshots (a one-worker node).
    pub worker_snapshots: bool,
    /// How the pool makes worker snapshots (a child process).
    pub snapshotter: Snapshotter,
}

/// Why a node did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error("cannot create the data directory {}: {source}", path.display())]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("cannot open the store {}: {source}", path.display())]
    Store { path: PathBuf, source: outpost_kv::OpenError },
}

/// Why a worker was not deployed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeployError {
    #[error(transparent)]
    Load(#[from] outpost_isolate_pool::DeployError),
    #[error("the queue {queue:?} already has a consumer, worker {consumer:?} (a queue has one consumer)")]
    QueueConsumed { queue: String, consumer: String },
    #[error("the workflow {workflow:?} is already defined by worker {worker:?} (a workflow has one class)")]
    WorkflowDefined { workflow: String, worker: String },
}

/// A worker as the node runs it: what the pool needs, and what fires it
/// besides requests.
#[derive(Debug)]
pub struct Worker {
    pub spec: WorkerSpec,
    /// Its Cron Triggers.
    pub crons: Vec<Schedule>,
    /// The queues it consumes.
    pub consumers: Vec<Consumer>,
    /// The workflows whose class it exports.
    pub workflows: Vec<Definition>,
}

/// One worker the caller wants running, or why it could not even be read.
#[derive(Debug)]
pub struct Candidate {
    /// How the caller names it in messages (its directory, say).
    pub label: String,
    pub worker: Result<Worker, String>,
}

/// What the node should run: its workers, its routes (`host/path` pattern,
/// worker name) and its grants.
#[derive(Debug, Default)]
pub struct Desired {
    pub workers: Vec<Candidate>,
    pub routes: Vec<(String, String)>,
    pub grants: Vec<Grant>,
}

/// What [`Node::apply`] did.
#[derive(Debug)]
pub struct Applied {
    /// Workers now running the desired version.
    pub deployed: Vec<String>,
    /// Why the others (and, if so, the routes) were not taken: each keeps
    /// what was running before.
    pub refused: Vec<String>,
    /// Whether the new routes are in place.
    pub routes_swapped: bool,
}

/// Why nothing of a desired state was taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    #[error("invalid routes: {0}")]
    Routes(#[from] RouteError),
    #[error(transparent)]
    Ownership(#[from] OwnershipError),
}

/// A running node: the isolate pool, the store and the deployments.
pub struct Node {
    pool: Pool,
    store: outpost_kv::Store,
    data_dir: PathBuf,
    routes: Arc<RwLock<Arc<Routes<String>>>>,
    crons: Crons,
    queues: Queues,
    consumers: Consumers,
    /// Rung when the consumed queues change.
    consumers_changed: Arc<tokio::sync::Notify>,
    workflows: Engine,
}

impl Node {
    /// Opens the store and starts the pool (initialising V8: call it once,
    /// from the main thread).
    pub fn start(options: NodeOptions) -> Result<Node, StartError> {
        let NodeOptions { data_dir, threads, caps, egress, worker_snapshots, snapshotter } = options;
        std::fs::create_dir_all(&data_dir).map_err(|source| StartError::DataDir { path: data_dir.clone(), source })?;
        outpost_runtime::init_v8();
        let kv_path = data_dir.join("kv.redb");
        let store = outpost_kv::Store::open(&kv_path, outpost_kv::StoreConfig::default())
            .map_err(|source| StartError::Store { path: kv_path, source })?;
        let mut config = PoolConfig::new(data_dir.join("snapshots"), snapshotter);
        config.worker_snapshots = worker_snapshots;
        config.caps = caps;
        config.egress = egress;
        let kv: Arc<dyn KvStorage> = Arc::new(store.clone());
        let objects: Arc<dyn ObjectStorage> = Arc::new(store.clone());
        let queues = Queues::new(objects.clone());
        let workflows = Engine::new(objects.clone());
        config.services.insert(workflows.clone());
        config.services.insert(kv);
        config.services.insert(queues.clone());
        config.services.insert(objects);
        // Measured: on 2 cores, 1 isolate thread + 1 front thread serves
        // more than 2 + 1.
        config.threads = threads.unwrap_or_else(|| config.threads.saturating_sub(1).max(1));
        let pool = Pool::start(config);
        Ok(Node {
            pool,
            store,
            queues,
            data_dir,
            routes: Arc::default(),
            crons: Crons::default(),
            consumers: Consumers::default(),
            consumers_changed: Arc::default(),
            workflows,
        })
    }

    /// The pool, for what the node does not wrap.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The node's queues: what producers send to and consumers read.
    pub fn queues(&self) -> &Queues {
        &self.queues
    }

    /// The node's workflows: their instances, and what the command line asks.
    pub fn workflows(&self) -> &Engine {
        &self.workflows
    }

    /// The handler for the front: every request to `worker`.
    pub fn handler_for(&self, worker: &str) -> NodeHandler {
        NodeHandler::new(self.pool.clone(), Target::One(worker.to_string()))
    }

    /// The handler for the front: requests by the node's routes.
    pub fn routed_handler(&self) -> NodeHandler {
        NodeHandler::new(self.pool.clone(), Target::Routes(self.routes.clone()))
    }

    /// Deploys one worker (a new version replaces the running one once it
    /// has loaded, and its Cron Triggers, queue consumers and workflow
    /// definitions the old one's). No ownership checks: for a node of one tenant.
    pub fn deploy(&self, worker: Worker) -> Result<(), DeployError> {
        let Worker { spec, crons, consumers, workflows } = worker;
        let name = spec.name.clone();
        let _span = tracing::info_span!("node.deploy", worker = %name).entered();
        if let Some((queue, consumer)) = self.consumers.taken(&name, &consumers) {
            return Err(DeployError::QueueConsumed { queue, consumer });
        }
        for definition in &workflows {
            if let Some(other) = self.workflows.definition(&definition.name).filter(|d| d.worker != name) {
                return Err(DeployError::WorkflowDefined { workflow: definition.name.clone(), worker: other.worker });
            }
        }
        self.pool.deploy(spec)?;
        self.workflows.define(&name, workflows);
        self.consumers.replace(&name, consumers);
        self.consumers_changed.notify_one();
        let mut all = self.crons.write().unwrap();
        if crons.is_empty() {
            all.remove(&name);
        } else {
            all.insert(name, crons);
        }
        Ok(())
    }

    /// Moves the node towards `desired`, each worker on its own: one that
    /// could not be read, does not load, asks for more than the node's caps
    /// or names data that is not its own is refused (and keeps its running
    /// version, if it has one), and the others are deployed all the same,
    /// so one tenant cannot hold back everyone's updates. Its KV claims are
    /// recorded only if it runs. The routes are swapped in only if every
    /// worker they name runs. Blocks while workers load: call it off the
    /// async threads. Errs, changing nothing, when the routes do not parse
    /// or the ownership record cannot be read or written.
    pub fn apply(&self, desired: Desired) -> Result<Applied, ApplyError> {
        let _span = tracing::info_span!("node.apply", workers = desired.workers.len()).entered();
        let routes = Routes::new(desired.routes.iter().cloned())?;
        let owners_path = ownership::owners_path(&self.data_dir);
        let mut owners = ownership::read_owners(&owners_path)?;
        let before = owners.clone();
        let (mut deployed, mut refused, mut seen) = (Vec::new(), Vec::new(), Vec::new());
        for Candidate { label, worker } in desired.workers {
            let outcome = (|| {
                let worker = worker?;
                let spec = &worker.spec;
                if seen.contains(&spec.name) {
                    return Err(format!("two workers are named {:?}", spec.name));
                }
                seen.push(spec.name.clone());
                let name = spec.name.clone();
                self.pool.check_limits(&spec.limits).map_err(|err| format!("cannot load worker {name}: {err}"))?;
                // Claims count only for a worker that runs.
                let mut trial = owners.clone();
                trial.admit(spec, &worker.consumers, &desired.grants).map_err(|err| err.to_string())?;
                self.deploy(worker).map_err(|err| format!("cannot load worker {name}: {err}"))?;
                owners = trial;
                Ok(name)
            })();
            match outcome {
                Ok(name) => deployed.push(name),
                Err(reason) => refused.push(format!("worker {label}: {reason}")),
            }
        }
        if owners != before {
            ownership::write_owners(&owners_path, &owners)?;
        }
        let missing: Vec<&str> =
            desired.routes.iter().map(|(_, worker)| worker.as_str()).filter(|w| !self.pool.is_deployed(w)).collect();
        let routes_swapped = missing.is_empty();
        if routes_swapped {
            *self.routes.write().unwrap() = Arc::new(routes);
        } else {
            refused.push(format!(
                "routes name workers that are not running ({}); the routes stay as they were",
                missing.join(", ")
            ));
        }
        Ok(Applied { deployed, refused, routes_swapped })
    }

    /// Starts the node's background work on the current tokio runtime:
    /// expired KV entries are swept, due alarms and Cron Triggers fire, and
    /// consumed queues deliver their batches.
    pub fn spawn_triggers(&self) {
        crate::triggers::spawn(
            &self.pool,
            &self.store,
            &self.crons,
            &self.queues,
            &self.consumers,
            &self.consumers_changed,
            &self.workflows,
        );
    }

    /// Opens the control socket in the data directory and answers it on
    /// the current tokio runtime (`outpost workflows ...` talks to it).
    pub fn spawn_control(&self) -> Result<(), crate::control::ControlSocketError> {
        let listener = crate::control::bind_control(&self.data_dir)?;
        let controlled = crate::control::Controlled {
            workflows: self.workflows.clone(),
            kv: Arc::new(self.store.clone()) as Arc<dyn KvStorage>,
        };
        tokio::spawn(crate::control::serve_control(listener, controlled));
        Ok(())
    }

    /// Has every isolate close its WebSockets as going away (1001), for
    /// the start of a shutdown.
    pub fn close_websockets(&self) {
        self.pool.close_websockets();
    }

    /// Stops every isolate after its in-flight work.
    pub fn stop(&self) {
        self.pool.stop();
    }
}
