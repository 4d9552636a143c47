//! `outpost kv key put|get|list|delete`, as `wrangler kv key ...`: a KV
//! namespace of a running node (`outpost dev` or `outpost serve`, through
//! its control socket), or, when none runs, of the data directory's store
//! opened directly.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use base64::Engine as _;
use clap::{Args, Subcommand};
use outpost_node::control::{ControlRequest, KvCall};
use serde_json::Value;

#[derive(Args)]
pub struct KvArgs {
    #[command(subcommand)]
    command: KvCommand,
}

#[derive(Subcommand)]
enum KvCommand {
    /// Keys of a namespace.
    #[command(subcommand)]
    Key(KeyCommand),
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Writes a value (the argument, or the file `--path`).
    Put {
        key: String,
        value: Option<String>,
        /// Read the value from this file.
        #[arg(long)]
        path: Option<PathBuf>,
        /// Seconds until the key expires (at least 60).
        #[arg(long)]
        ttl: Option<u64>,
        /// When the key expires, in seconds since the epoch.
        #[arg(long)]
        expiration: Option<u64>,
        /// Metadata, as JSON.
        #[arg(long)]
        metadata: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Prints a value (its bytes, as stored).
    Get {
        key: String,
        #[command(flatten)]
        target: Target,
    },
    /// Lists keys as JSON: `[{ "name", "expiration"?, "metadata"? }]`.
    List {
        #[arg(long, default_value = "")]
        prefix: String,
        #[command(flatten)]
        target: Target,
    },
    /// Deletes a key.
    Delete {
        key: String,
        #[command(flatten)]
        target: Target,
    },
}

/// Which namespace, of which node.
#[derive(Args)]
struct Target {
    /// The namespace's id (as in `[[kv_namespaces]] id`).
    #[arg(long, conflicts_with = "binding")]
    namespace_id: Option<String>,
    /// The binding's name in the worker of the current directory.
    #[arg(long)]
    binding: Option<String>,
    /// The node's data directory.
    #[arg(long, default_value = ".outpost")]
    data_dir: PathBuf,
}

impl Target {
    fn namespace(&self) -> anyhow::Result<String> {
        match (&self.namespace_id, &self.binding) {
            (Some(id), _) => Ok(id.clone()),
            (None, Some(binding)) => {
                let worker = crate::config::resolve(std::path::Path::new("."))?;
                let found = worker.kv_namespaces.iter().find(|b| b.binding == *binding);
                Ok(found.with_context(|| format!("the worker here has no KV binding {binding:?}"))?.id.clone())
            }
            (None, None) => bail!("name the namespace: --namespace-id <id> or --binding <name>"),
        }
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn run(args: KvArgs) -> anyhow::Result<()> {
    let KvCommand::Key(command) = args.command;
    let (target, call) = match command {
        KeyCommand::Put { key, value, path, ttl, expiration, metadata, target } => {
            let value = match (value, path) {
                (Some(value), None) => value.into_bytes(),
                (None, Some(path)) => {
                    std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?
                }
                _ => bail!("give the value as an argument or with --path, not both"),
            };
            let call =
                KvCall::Put { key: b64(key.as_bytes()), value: b64(&value), expiration, expiration_ttl: ttl, metadata };
            (target, call)
        }
        KeyCommand::Get { key, target } => (target, KvCall::Get { key: b64(key.as_bytes()) }),
        KeyCommand::List { prefix, target } => (target, KvCall::List { prefix, limit: None, cursor: None }),
        KeyCommand::Delete { key, target } => (target, KvCall::Delete { key: b64(key.as_bytes()) }),
    };
    let namespace = target.namespace()?;
    let listing = matches!(call, KvCall::List { .. });
    let getting = matches!(call, KvCall::Get { .. });
    let backend = Backend::find(&target.data_dir)?;
    let answer = if listing { list_all(&backend, &namespace, call)? } else { backend.call(&namespace, call)? };
    if getting {
        let Some(value) = answer.as_str() else { bail!("Value not found") };
        let bytes = base64::engine::general_purpose::STANDARD.decode(value).context("the node's answer")?;
        std::io::stdout().write_all(&bytes)?;
    } else if listing {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    }
    Ok(())
}

/// Every page of a list, as one array of keys.
fn list_all(backend: &Backend, namespace: &str, call: KvCall) -> anyhow::Result<Value> {
    let KvCall::List { prefix, .. } = call else { unreachable!("a list") };
    let (mut keys, mut cursor) = (Vec::new(), None);
    loop {
        let page = backend.call(namespace, KvCall::List { prefix: prefix.clone(), limit: None, cursor })?;
        keys.extend(page["keys"].as_array().cloned().unwrap_or_default());
        if page["list_complete"].as_bool().unwrap_or(true) {
            return Ok(Value::Array(keys));
        }
        cursor = page["cursor"].as_str().map(str::to_string);
    }
}

/// Where the calls go: the running node, or, when none runs, the data
/// directory's store, opened once for the command.
enum Backend {
    Node(PathBuf),
    Store(outpost_kv::Store, tokio::runtime::Runtime),
}

impl Backend {
    fn find(data_dir: &std::path::Path) -> anyhow::Result<Backend> {
        if crate::control_client::is_running(data_dir) {
            return Ok(Backend::Node(data_dir.to_path_buf()));
        }
        let path = data_dir.join("kv.redb");
        if !path.exists() {
            bail!("no node is running with data directory {} and it holds no store", data_dir.display());
        }
        let store = outpost_kv::Store::open(&path, outpost_kv::StoreConfig::default())
            .with_context(|| format!("cannot open the store {}", path.display()))?;
        Ok(Backend::Store(store, tokio::runtime::Builder::new_current_thread().enable_all().build()?))
    }

    fn call(&self, namespace: &str, call: KvCall) -> anyhow::Result<Value> {
        match self {
            Backend::Node(data_dir) => {
                let request = ControlRequest::Kv { namespace: namespace.to_string(), call };
                crate::control_client::ask(data_dir, &request)?
                    .with_context(|| format!("the node with data directory {} has stopped", data_dir.display()))
            }
            Backend::Store(store, runtime) => {
                runtime.block_on(outpost_node::control::kv(store, namespace, call)).map_err(anyhow::Error::msg)
            }
        }
    }
}
