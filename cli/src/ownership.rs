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

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

use crate::config::ResolvedWorker;

/// One `[[grants]]` entry of node.toml: what a worker may use besides its own.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantConfig {
    /// The worker given access.
    pub worker: String,
    /// KV namespace ids that belong to other workers.
    #[serde(default)]
    pub kv_namespaces: Vec<String>,
    /// Durable Object classes of other workers, as `"worker:Class"`.
    #[serde(default)]
    pub durable_objects: Vec<String>,
}

/// The recorded owners of KV namespace ids.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owners {
    /// Namespace id → worker name.
    pub kv_namespaces: BTreeMap<String, String>,
}

impl Owners {
    /// Checks what `worker` binds against the owners and the grants, and
    /// claims the KV namespace ids nobody owns yet for it.
    pub fn admit(&mut self, worker: &ResolvedWorker, grants: &[GrantConfig]) -> anyhow::Result<()> {
        let granted = |pick: fn(&GrantConfig) -> &Vec<String>, what: &str| {
            grants.iter().filter(|g| g.worker == worker.name).any(|g| pick(g).iter().any(|item| item == what))
        };
        for binding in &worker.kv_namespaces {
            match self.kv_namespaces.get(&binding.id) {
                None => {
                    self.kv_namespaces.insert(binding.id.clone(), worker.name.clone());
                }
                Some(owner) if *owner == worker.name => {}
                Some(_) if granted(|g| &g.kv_namespaces, &binding.id) => {}
                Some(owner) => bail!(
                    "worker {:?}: the KV namespace {:?} (binding {}) belongs to worker {owner:?}; node.toml can grant access with [[grants]] worker = {:?}, kv_namespaces = [{:?}]",
                    worker.name,
                    binding.id,
                    binding.binding,
                    worker.name,
                    binding.id
                ),
            }
        }
        for binding in worker.durable_objects.iter().filter(|b| b.script != worker.name) {
            let class = format!("{}:{}", binding.script, binding.class_name);
            if !granted(|g| &g.durable_objects, &class) {
                bail!(
                    "worker {:?}: the Durable Object binding {} reaches class {} of worker {:?}; node.toml can grant access with [[grants]] worker = {:?}, durable_objects = [{class:?}]",
                    worker.name,
                    binding.binding,
                    binding.class_name,
                    binding.script,
                    worker.name
                );
            }
        }
        Ok(())
    }
}

/// Where a node keeps its owners.
pub fn owners_path(data_dir: &Path) -> PathBuf {
    data_dir.join("owners.json")
}

/// Reads the record; none yet is an empty one.
pub fn read_owners(path: &Path) -> anyhow::Result<Owners> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| format!("{} is corrupt", path.display())),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Owners::default()),
        Err(err) => Err(err).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Writes the record whole or not at all (a new file renamed over the old).
pub fn write_owners(path: &Path, owners: &Owners) -> anyhow::Result<()> {
    let partial = path.with_extension("json.partial");
    let write = || -> std::io::Result<()> {
        use std::io::Write as _;
        let mut file = std::fs::File::create(&partial)?;
        file.write_all(&serde_json::to_vec_pretty(owners).expect("owners serialize"))?;
        file.sync_all()?;
        std::fs::rename(&partial, path)
    };
    write().with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_runtime::{DurableObjectBinding, KvNamespaceBinding};

    fn worker(name: &str, kv: &[&str], objects: &[(&str, &str)]) -> ResolvedWorker {
        ResolvedWorker {
            name: name.into(),
            root: PathBuf::from("/w"),
            main: PathBuf::from("/w/worker.js"),
            vars: Default::default(),
            isolation: Default::default(),
            limits: Default::default(),
            kv_namespaces: kv
                .iter()
                .map(|id| KvNamespaceBinding { binding: format!("B_{id}"), id: id.to_string() })
                .collect(),
            durable_objects: objects
                .iter()
                .map(|(script, class)| DurableObjectBinding {
                    binding: class.to_uppercase(),
                    class_name: class.to_string(),
                    script: script.to_string(),
                })
                .collect(),
        }
    }

    #[test]
    fn the_first_worker_to_declare_a_namespace_owns_it() {
        let mut owners = Owners::default();
        owners.admit(&worker("a", &["sessions"], &[]), &[]).unwrap();
        assert_eq!(owners.kv_namespaces["sessions"], "a");
        owners.admit(&worker("a", &["sessions"], &[]), &[]).unwrap();
        let err = owners.admit(&worker("b", &["sessions"], &[]), &[]).unwrap_err().to_string();
        assert!(err.contains("belongs to worker \"a\""), "{err}");
        let grant = GrantConfig { worker: "b".into(), kv_namespaces: vec!["sessions".into()], ..Default::default() };
        owners.admit(&worker("b", &["sessions"], &[]), &[grant]).unwrap();
        assert_eq!(owners.kv_namespaces["sessions"], "a", "a grant gives access, not ownership");
    }

    #[test]
    fn another_workers_objects_need_a_grant() {
        let mut owners = Owners::default();
        owners.admit(&worker("b", &[], &[("b", "Counter")]), &[]).unwrap();
        let err = owners.admit(&worker("a", &[], &[("b", "Counter")]), &[]).unwrap_err().to_string();
        assert!(err.contains("durable_objects = [\"b:Counter\"]"), "{err}");
        let grant = GrantConfig { worker: "a".into(), durable_objects: vec!["b:Counter".into()], ..Default::default() };
        owners.admit(&worker("a", &[], &[("b", "Counter")]), std::slice::from_ref(&grant)).unwrap();
        // A grant to one worker is not a grant to another.
        assert!(owners.admit(&worker("c", &[], &[("b", "Counter")]), &[grant]).is_err());
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
