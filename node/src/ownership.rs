//! Who may use which stored data on a node. Tenants write their own
//! configuration, so a name in it proves nothing: a KV namespace id belongs
//! to the first worker that declared it (recorded in
//! `<data_dir>/owners.json`, so the claim survives restarts), a Durable
//! Object class to the worker that exports and declares it. Another worker
//! reaches either only if node.toml grants it (`[[grants]]`).
//!
//! The decision is pure ([`Owners::admit`]); the node reads the record at
//! start and writes it back after a load whose every worker was admitted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use outpost_isolate_pool::WorkerSpec;
use outpost_runtime::{KvNamespaceBinding, QueueProducerBinding, ServiceBinding, WorkflowBinding};
use serde::{Deserialize, Serialize};

use crate::triggers::queues::Consumer;

/// One `[[grants]]` entry of node.toml: what a worker may use besides its own.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// The worker given access.
    pub worker: String,
    /// KV namespace ids that belong to other workers.
    #[serde(default)]
    pub kv_namespaces: Vec<String>,
    /// Durable Object classes of other workers, as `"worker:Class"`.
    #[serde(default)]
    pub durable_objects: Vec<String>,
    /// Other workers it may call through service bindings, by name.
    #[serde(default)]
    pub services: Vec<String>,
    /// Queues that belong to other workers.
    #[serde(default)]
    pub queues: Vec<String>,
    /// Workflows other workers define, by name.
    #[serde(default)]
    pub workflows: Vec<String>,
}

/// The recorded owners of KV namespace ids.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owners {
    /// Namespace id → worker name.
    pub kv_namespaces: BTreeMap<String, String>,
    /// Queue name → worker name (the first that declared it).
    #[serde(default)]
    pub queues: BTreeMap<String, String>,
    /// Workflow name → the worker that first defined it.
    #[serde(default)]
    pub workflows: BTreeMap<String, String>,
}

impl Owners {
    /// Checks what `worker` binds and the queues it consumes (and their
    /// dead-letter queues) against the owners and the grants, and claims the
    /// KV namespace ids and queues nobody owns yet for it.
    pub fn admit(
        &mut self,
        worker: &WorkerSpec,
        consumers: &[Consumer],
        grants: &[Grant],
    ) -> Result<(), OwnershipError> {
        let granted = |pick: fn(&Grant) -> &Vec<String>, what: &str| {
            grants.iter().filter(|g| g.worker == worker.name).any(|g| pick(g).iter().any(|item| item == what))
        };
        let kv_namespaces = worker.bindings.iter().filter_map(|b| b.as_any().downcast_ref::<KvNamespaceBinding>());
        for binding in kv_namespaces {
            match self.kv_namespaces.get(&binding.id) {
                None => {
                    self.kv_namespaces.insert(binding.id.clone(), worker.name.clone());
                }
                Some(owner) if *owner == worker.name => {}
                Some(_) if granted(|g| &g.kv_namespaces, &binding.id) => {}
                Some(owner) => {
                    return Err(OwnershipError::KvNamespace {
                        worker: worker.name.clone(),
                        id: binding.id.clone(),
                        binding: binding.binding.clone(),
                        owner: owner.clone(),
                    })
                }
            }
        }
        for binding in worker.durable_objects().filter(|b| b.script != worker.name) {
            let class = format!("{}:{}", binding.script, binding.class_name);
            if !granted(|g| &g.durable_objects, &class) {
                return Err(OwnershipError::ObjectClass {
                    worker: worker.name.clone(),
                    binding: binding.binding.clone(),
                    class_name: binding.class_name.clone(),
                    script: binding.script.clone(),
                    class,
                });
            }
        }
        let produced = worker.bindings.iter().filter_map(|b| b.as_any().downcast_ref::<QueueProducerBinding>());
        let queues = produced
            .map(|b| &b.queue)
            .chain(consumers.iter().flat_map(|c| std::iter::once(&c.queue).chain(c.dead_letter_queue.as_ref())));
        for queue in queues {
            match self.queues.get(queue) {
                None => {
                    self.queues.insert(queue.clone(), worker.name.clone());
                }
                Some(owner) if *owner == worker.name => {}
                Some(_) if granted(|g| &g.queues, queue) => {}
                Some(owner) => {
                    return Err(OwnershipError::Queue {
                        worker: worker.name.clone(),
                        queue: queue.clone(),
                        owner: owner.clone(),
                    })
                }
            }
        }
        let workflows = worker.bindings.iter().filter_map(|b| b.as_any().downcast_ref::<WorkflowBinding>());
        for binding in workflows {
            let defines = binding.script == worker.name;
            match self.workflows.get(&binding.workflow) {
                None if defines => {
                    self.workflows.insert(binding.workflow.clone(), worker.name.clone());
                }
                Some(owner) if *owner == worker.name => {}
                Some(owner) if !defines && *owner == binding.script && granted(|g| &g.workflows, &binding.workflow) => {
                }
                None if granted(|g| &g.workflows, &binding.workflow) => {}
                owner => {
                    return Err(OwnershipError::Workflow {
                        worker: worker.name.clone(),
                        workflow: binding.workflow.clone(),
                        owner: owner.cloned().unwrap_or_else(|| binding.script.clone()),
                    })
                }
            }
        }
        let services = worker.bindings.iter().filter_map(|b| b.as_any().downcast_ref::<ServiceBinding>());
        for binding in services.filter(|b| b.service != worker.name) {
            if !granted(|g| &g.services, &binding.service) {
                return Err(OwnershipError::Service {
                    worker: worker.name.clone(),
                    binding: binding.binding.clone(),
                    service: binding.service.clone(),
                });
            }
        }
        Ok(())
    }
}

/// Why a worker may not use what it binds, or the record cannot be kept.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OwnershipError {
    #[error("worker {worker:?}: the KV namespace {id:?} (binding {binding}) belongs to worker {owner:?}; node.toml can grant access with [[grants]] worker = {worker:?}, kv_namespaces = [{id:?}]")]
    KvNamespace { worker: String, id: String, binding: String, owner: String },
    #[error("worker {worker:?}: the Durable Object binding {binding} reaches class {class_name} of worker {script:?}; node.toml can grant access with [[grants]] worker = {worker:?}, durable_objects = [{class:?}]")]
    ObjectClass { worker: String, binding: String, class_name: String, script: String, class: String },
    #[error("worker {worker:?}: the service binding {binding} calls worker {service:?}; node.toml can grant access with [[grants]] worker = {worker:?}, services = [{service:?}]")]
    Service { worker: String, binding: String, service: String },
    #[error("worker {worker:?}: the queue {queue:?} belongs to worker {owner:?}; node.toml can grant access with [[grants]] worker = {worker:?}, queues = [{queue:?}]")]
    Queue { worker: String, queue: String, owner: String },
    #[error("worker {worker:?}: the workflow {workflow:?} belongs to worker {owner:?}; node.toml can grant the use of it (not its definition) with [[grants]] worker = {worker:?}, workflows = [{workflow:?}]")]
    Workflow { worker: String, workflow: String, owner: String },
    #[error("{} is corrupt: {source}", path.display())]
    Corrupt { path: PathBuf, source: serde_json::Error },
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
}

/// Where a node keeps its owners.
pub fn owners_path(data_dir: &Path) -> PathBuf {
    data_dir.join("owners.json")
}

/// Reads the record; none yet is an empty one.
pub fn read_owners(path: &Path) -> Result<Owners, OwnershipError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|source| OwnershipError::Corrupt { path: path.to_path_buf(), source }),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Owners::default()),
        Err(source) => Err(OwnershipError::Read { path: path.to_path_buf(), source }),
    }
}

/// Writes the record whole or not at all (a new file renamed over the old).
pub fn write_owners(path: &Path, owners: &Owners) -> Result<(), OwnershipError> {
    let partial = path.with_extension("json.partial");
    let write = || -> std::io::Result<()> {
        use std::io::Write as _;
        let mut file = std::fs::File::create(&partial)?;
        file.write_all(&serde_json::to_vec_pretty(owners).expect("owners serialize"))?;
        file.sync_all()?;
        std::fs::rename(&partial, path)
    };
    write().map_err(|source| OwnershipError::Write { path: path.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use outpost_runtime::{Binding, DurableObjectBinding, WorkerSource};

    use super::*;

    fn worker(name: &str, kv: &[&str], objects: &[(&str, &str)]) -> WorkerSpec {
        let kv = kv.iter().map(|id| {
            Arc::new(KvNamespaceBinding { binding: format!("B_{id}"), id: id.to_string() }) as Arc<dyn Binding>
        });
        let objects = objects.iter().map(|(script, class)| {
            Arc::new(DurableObjectBinding {
                binding: class.to_uppercase(),
                class_name: class.to_string(),
                script: script.to_string(),
            }) as Arc<dyn Binding>
        });
        WorkerSpec {
            name: name.into(),
            source: WorkerSource { root: PathBuf::from("/w"), main: PathBuf::from("/w/worker.js") },
            vars: Default::default(),
            isolation: Default::default(),
            limits: Default::default(),
            bindings: kv.chain(objects).collect(),
        }
    }

    #[test]
    fn the_first_worker_to_declare_a_namespace_owns_it() {
        let mut owners = Owners::default();
        owners.admit(&worker("a", &["sessions"], &[]), &[], &[]).unwrap();
        assert_eq!(owners.kv_namespaces["sessions"], "a");
        owners.admit(&worker("a", &["sessions"], &[]), &[], &[]).unwrap();
        let err = owners.admit(&worker("b", &["sessions"], &[]), &[], &[]).unwrap_err().to_string();
        assert!(err.contains("belongs to worker \"a\""), "{err}");
        let grant = Grant { worker: "b".into(), kv_namespaces: vec!["sessions".into()], ..Default::default() };
        owners.admit(&worker("b", &["sessions"], &[]), &[], &[grant]).unwrap();
        assert_eq!(owners.kv_namespaces["sessions"], "a", "a grant gives access, not ownership");
    }

    #[test]
    fn another_workers_objects_need_a_grant() {
        let mut owners = Owners::default();
        owners.admit(&worker("b", &[], &[("b", "Counter")]), &[], &[]).unwrap();
        let err = owners.admit(&worker("a", &[], &[("b", "Counter")]), &[], &[]).unwrap_err().to_string();
        assert!(err.contains("durable_objects = [\"b:Counter\"]"), "{err}");
        let grant = Grant { worker: "a".into(), durable_objects: vec!["b:Counter".into()], ..Default::default() };
        owners.admit(&worker("a", &[], &[("b", "Counter")]), &[], std::slice::from_ref(&grant)).unwrap();
        // A grant to one worker is not a grant to another.
        assert!(owners.admit(&worker("c", &[], &[("b", "Counter")]), &[], &[grant]).is_err());
    }

    #[test]
    fn calling_another_worker_needs_a_grant() {
        let mut caller = worker("a", &[], &[]);
        caller.bindings.push(Arc::new(ServiceBinding { binding: "B".into(), service: "b".into(), entrypoint: None }));
        let err = Owners::default().admit(&caller, &[], &[]).unwrap_err().to_string();
        assert!(err.contains("services = [\"b\"]"), "{err}");
        let grant = Grant { worker: "a".into(), services: vec!["b".into()], ..Default::default() };
        Owners::default().admit(&caller, &[], &[grant]).unwrap();
        // Itself, it may always call.
        let mut own = worker("b", &[], &[]);
        own.bindings.push(Arc::new(ServiceBinding { binding: "SELF".into(), service: "b".into(), entrypoint: None }));
        Owners::default().admit(&own, &[], &[]).unwrap();
    }

    #[test]
    fn the_first_worker_to_declare_a_queue_owns_it() {
        let producer = |name: &str| {
            let mut spec = worker(name, &[], &[]);
            spec.bindings.push(Arc::new(QueueProducerBinding {
                binding: "Q".into(),
                queue: "jobs".into(),
                delivery_delay: 0,
            }));
            spec
        };
        let mut owners = Owners::default();
        owners.admit(&producer("a"), &[], &[]).unwrap();
        assert_eq!(owners.queues["jobs"], "a");
        let err = owners.admit(&producer("b"), &[], &[]).unwrap_err().to_string();
        assert!(err.contains("queues = [\"jobs\"]"), "{err}");
        let grant = Grant { worker: "b".into(), queues: vec!["jobs".into()], ..Default::default() };
        owners.admit(&producer("b"), &[], &[grant]).unwrap();
        // Consuming a queue, or dead-lettering into one, is using it too.
        let consumer = Consumer { dead_letter_queue: Some("c-dlq".into()), ..Consumer::new("jobs") };
        let err = owners.admit(&worker("c", &[], &[]), std::slice::from_ref(&consumer), &[]).unwrap_err().to_string();
        assert!(err.contains("queue \"jobs\""), "{err}");
        let own = Consumer { dead_letter_queue: Some("jobs".into()), ..Consumer::new("c-own") };
        let err = owners.admit(&worker("c", &[], &[]), &[own], &[]).unwrap_err().to_string();
        assert!(err.contains("queue \"jobs\""), "the dead-letter queue is checked: {err}");
        owners.admit(&worker("a", &[], &[]), &[consumer], &[]).unwrap();
        assert_eq!(owners.queues["c-dlq"], "a", "an unowned dead-letter queue is claimed");
        // An owners.json written before queues existed still reads.
        let old: Owners = serde_json::from_str("{\"kv_namespaces\": {}}").unwrap();
        assert!(old.queues.is_empty());
    }

    #[test]
    fn the_record_survives_a_round_trip_and_corruption_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = owners_path(dir.path());
        assert_eq!(read_owners(&path).unwrap(), Owners::default());
        let mut owners = Owners::default();
        owners.kv_namespaces.insert("x".into(), "a".into());
        write_owners(&path, &owners).unwrap();
        assert_eq!(read_owners(&path).unwrap(), owners);
        std::fs::write(&path, b"{ nope").unwrap();
        assert!(read_owners(&path).unwrap_err().to_string().contains("corrupt"));
    }
}
