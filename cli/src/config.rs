//! `outpost.toml`: a worker's configuration, kept close to `wrangler.toml`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use outpost_isolate_pool::{Isolation, LimitCaps, Limits};
use serde::Deserialize;

mod queues;
mod workflows;

pub use queues::QueuesConfig;
pub use workflows::WorkflowConfig;

/// The file name looked for in a worker's directory.
pub const CONFIG_FILE: &str = "outpost.toml";
/// The main module used when a directory has no `outpost.toml`.
pub const DEFAULT_MAIN: &str = "worker.js";

/// A worker's `outpost.toml`. Unknown keys are an error that names them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// The worker's name; defaults to its directory's name.
    pub name: Option<String>,
    /// The main module, relative to the directory; defaults to `worker.js`.
    pub main: Option<PathBuf>,
    /// Accepted for compatibility with wrangler.toml; Outpost has one
    /// behaviour for every date so far.
    pub compatibility_date: Option<String>,
    /// Plain variables, exposed on `env`. Strings, or any TOML value, which
    /// the worker sees as the equivalent JSON value.
    #[serde(default)]
    pub vars: BTreeMap<String, toml::Value>,
    /// `"shared"` (default): an isolate serves many requests. `"per-request"`:
    /// every request runs in a fresh isolate.
    pub isolation: Option<IsolationConfig>,
    /// Per-worker limits; unset keys take the node's defaults.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// KV namespaces bound on `env`, as in wrangler.toml.
    #[serde(default)]
    pub kv_namespaces: Vec<KvNamespaceConfig>,
    /// Durable Object namespaces bound on `env`, as in wrangler.toml.
    #[serde(default)]
    pub durable_objects: DurableObjectsConfig,
    /// Accepted for wrangler compatibility: Outpost needs no migrations to
    /// create a class (its storage appears on first use).
    #[serde(default)]
    pub migrations: Vec<toml::Value>,
    /// What runs the worker besides requests, as in wrangler.toml.
    #[serde(default)]
    pub triggers: TriggersConfig,
    /// Other workers of the node bound on `env`, as in wrangler.toml.
    #[serde(default)]
    pub services: Vec<ServiceConfig>,
    /// Queues the worker sends to and consumes, as in wrangler.toml.
    #[serde(default)]
    pub queues: QueuesConfig,
    /// Workflows the worker defines or binds, as in wrangler.toml.
    #[serde(default)]
    pub workflows: Vec<WorkflowConfig>,
}

/// One `[[services]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// The name on `env`.
    pub binding: String,
    /// The worker's name.
    pub service: String,
    /// A named `WorkerEntrypoint` export of it (default: the default export).
    pub entrypoint: Option<String>,
}

/// The `[triggers]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggersConfig {
    /// Cron Triggers: Cloudflare's five-field expressions, in UTC.
    #[serde(default)]
    pub crons: Vec<String>,
}

/// The `durable_objects` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DurableObjectsConfig {
    #[serde(default)]
    pub bindings: Vec<DurableObjectBindingConfig>,
}

/// One `[[durable_objects.bindings]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DurableObjectBindingConfig {
    /// The name on `env`.
    pub name: String,
    /// The class, exported by the worker's main module.
    pub class_name: String,
    /// Another worker on the node that exports the class.
    pub script_name: Option<String>,
}

/// One `[[kv_namespaces]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvNamespaceConfig {
    /// The name on `env`.
    pub binding: String,
    /// The namespace's id; defaults to the binding name.
    pub id: Option<String>,
    /// Accepted for wrangler compatibility; Outpost has no preview namespaces.
    pub preview_id: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum IsolationConfig {
    Shared,
    PerRequest,
}

/// The `[limits]` table.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// CPU time per request, in milliseconds (default 50).
    pub cpu_ms: Option<u64>,
    /// Wall-clock time until the response starts, in milliseconds (default: none).
    pub wall_ms: Option<u64>,
    /// V8 heap per isolate, in MiB (default 128).
    pub memory_mb: Option<u64>,
    /// Requests one isolate serves concurrently (default 64).
    pub max_concurrent: Option<usize>,
    /// Subrequests one invocation may make (default 1000, at most 10 M).
    pub subrequests: Option<u64>,
}

impl LimitsConfig {
    pub fn resolve(&self) -> anyhow::Result<Limits> {
        let defaults = Limits::default();
        let limits = Limits {
            cpu_ms: self.cpu_ms.unwrap_or(defaults.cpu_ms),
            wall_ms: self.wall_ms.or(defaults.wall_ms),
            memory_mb: self.memory_mb.unwrap_or(defaults.memory_mb),
            max_concurrent: self.max_concurrent.unwrap_or(defaults.max_concurrent),
            subrequests: self.subrequests.unwrap_or(defaults.subrequests),
        };
        // The node's own caps are checked when the worker is deployed; the
        // ceiling no node may pass is checked here already.
        limits.check(&LimitCaps::CEILING)?;
        Ok(limits)
    }
}

impl WorkerConfig {
    pub fn parse(text: &str, path: &Path) -> anyhow::Result<Self> {
        toml::from_str(text).with_context(|| format!("invalid {}", path.display()))
    }
}

/// A worker ready to load: where its code is, what it is called, its vars.
#[derive(Debug)]
pub struct ResolvedWorker {
    pub name: String,
    pub root: PathBuf,
    pub main: PathBuf,
    pub vars: serde_json::Map<String, serde_json::Value>,
    pub isolation: Isolation,
    pub limits: Limits,
    pub kv_namespaces: Vec<outpost_runtime::KvNamespaceBinding>,
    pub durable_objects: Vec<outpost_runtime::DurableObjectBinding>,
    pub crons: Vec<outpost_cron::Schedule>,
    pub services: Vec<outpost_runtime::ServiceBinding>,
    pub queue_producers: Vec<outpost_runtime::QueueProducerBinding>,
    pub queue_consumers: Vec<outpost_node::triggers::queues::Consumer>,
    pub workflows: Vec<outpost_runtime::WorkflowBinding>,
    /// The workflows whose class this worker exports.
    pub workflow_definitions: Vec<outpost_workflows::Definition>,
}

/// Finds the worker at `path`: a `.js` file, or a directory with an
/// `outpost.toml` or a `worker.js`.
pub fn resolve(path: &Path) -> anyhow::Result<ResolvedWorker> {
    let metadata = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if metadata.is_file() {
        let root = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
        let name = path.file_stem().map_or("worker".into(), |stem| stem.to_string_lossy().into_owned());
        return Ok(ResolvedWorker {
            name,
            root,
            main: path.to_path_buf(),
            vars: Default::default(),
            isolation: Isolation::Shared,
            limits: Limits::default(),
            kv_namespaces: Vec::new(),
            durable_objects: Vec::new(),
            crons: Vec::new(),
            services: Vec::new(),
            queue_producers: Vec::new(),
            queue_consumers: Vec::new(),
            workflows: Vec::new(),
            workflow_definitions: Vec::new(),
        });
    }
    let config_path = path.join(CONFIG_FILE);
    let config = match std::fs::read_to_string(&config_path) {
        Ok(text) => WorkerConfig::parse(&text, &config_path)?,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => WorkerConfig::default(),
        Err(err) => return Err(err).with_context(|| format!("cannot read {}", config_path.display())),
    };
    if let Some(date) = &config.compatibility_date {
        if !is_iso_date(date) {
            bail!("{}: compatibility_date must look like \"2024-09-23\", got {date:?}", config_path.display());
        }
    }
    let main = path.join(config.main.as_deref().unwrap_or(Path::new(DEFAULT_MAIN)));
    if !main.is_file() {
        if config.main.is_some() {
            bail!("{}: main module {} does not exist", config_path.display(), main.display());
        }
        bail!("{} has neither an {CONFIG_FILE} nor a {DEFAULT_MAIN}", path.display());
    }
    let name = match config.name {
        Some(name) => name,
        None => {
            std::fs::canonicalize(path)?.file_name().map_or("worker".into(), |name| name.to_string_lossy().into_owned())
        }
    };
    let vars: serde_json::Map<String, serde_json::Value> =
        config.vars.into_iter().map(|(key, value)| Ok((key, toml_to_json(value)?))).collect::<anyhow::Result<_>>()?;
    let isolation = match config.isolation {
        Some(IsolationConfig::PerRequest) => Isolation::PerRequest,
        Some(IsolationConfig::Shared) | None => Isolation::Shared,
    };
    let limits = config.limits.resolve().with_context(|| format!("invalid {}", config_path.display()))?;
    let mut kv_namespaces = Vec::new();
    for namespace in &config.kv_namespaces {
        if namespace.preview_id.is_some() {
            tracing::debug!(binding = %namespace.binding, "preview_id has no meaning in Outpost; ignored");
        }
        if kv_namespaces.iter().any(|b: &outpost_runtime::KvNamespaceBinding| b.binding == namespace.binding) {
            bail!("{}: the KV binding {:?} is declared twice", config_path.display(), namespace.binding);
        }
        let id = namespace.id.clone().unwrap_or_else(|| namespace.binding.clone());
        if !is_namespace_id(&id) {
            bail!(
                "{}: the KV namespace id {id:?} of binding {:?} must be 1 to {MAX_NAMESPACE_ID_BYTES} bytes, without control characters",
                config_path.display(),
                namespace.binding
            );
        }
        kv_namespaces.push(outpost_runtime::KvNamespaceBinding { binding: namespace.binding.clone(), id });
    }
    if let Some(shadowed) = kv_namespaces.iter().map(|b| &b.binding).find(|name| vars.contains_key(*name)) {
        bail!("{}: the binding {shadowed:?} has the name of a [vars] entry", config_path.display());
    }
    if !config.migrations.is_empty() {
        tracing::debug!("[[migrations]] has no meaning in Outpost (classes need no migration); ignored");
    }
    let mut durable_objects: Vec<outpost_runtime::DurableObjectBinding> = Vec::new();
    for binding in &config.durable_objects.bindings {
        let taken = kv_namespaces.iter().any(|b| b.binding == binding.name)
            || durable_objects.iter().any(|b| b.binding == binding.name)
            || vars.contains_key(&binding.name);
        if taken {
            bail!("{}: the binding {:?} is declared twice", config_path.display(), binding.name);
        }
        if !is_js_identifier(&binding.class_name) {
            bail!(
                "{}: class_name {:?} of binding {:?} is not a JavaScript class name",
                config_path.display(),
                binding.class_name,
                binding.name
            );
        }
        durable_objects.push(outpost_runtime::DurableObjectBinding {
            binding: binding.name.clone(),
            class_name: binding.class_name.clone(),
            script: binding.script_name.clone().unwrap_or_else(|| name.clone()),
        });
    }
    let mut services: Vec<outpost_runtime::ServiceBinding> = Vec::new();
    for service in &config.services {
        let taken = kv_namespaces.iter().any(|b| b.binding == service.binding)
            || durable_objects.iter().any(|b| b.binding == service.binding)
            || services.iter().any(|b| b.binding == service.binding)
            || vars.contains_key(&service.binding);
        if taken {
            bail!("{}: the binding {:?} is declared twice", config_path.display(), service.binding);
        }
        if let Some(entrypoint) = service.entrypoint.as_deref().filter(|e| !is_js_identifier(e)) {
            bail!(
                "{}: entrypoint {entrypoint:?} of service binding {:?} is not a JavaScript export name",
                config_path.display(),
                service.binding
            );
        }
        services.push(outpost_runtime::ServiceBinding {
            binding: service.binding.clone(),
            service: service.service.clone(),
            entrypoint: service.entrypoint.clone(),
        });
    }
    let mut queue_producers: Vec<outpost_runtime::QueueProducerBinding> = Vec::new();
    for producer in &config.queues.producers {
        let taken = kv_namespaces.iter().any(|b| b.binding == producer.binding)
            || durable_objects.iter().any(|b| b.binding == producer.binding)
            || services.iter().any(|b| b.binding == producer.binding)
            || queue_producers.iter().any(|b| b.binding == producer.binding)
            || vars.contains_key(&producer.binding);
        if taken {
            bail!("{}: the binding {:?} is declared twice", config_path.display(), producer.binding);
        }
        if !is_namespace_id(&producer.queue) {
            bail!(
                "{}: the queue name {:?} must be 1 to {MAX_NAMESPACE_ID_BYTES} bytes, without control characters",
                config_path.display(),
                producer.queue
            );
        }
        if producer.delivery_delay > outpost_runtime::QUEUE_MAX_DELAY_SECONDS {
            bail!(
                "{}: delivery_delay of queue binding {:?} is at most {} seconds",
                config_path.display(),
                producer.binding,
                outpost_runtime::QUEUE_MAX_DELAY_SECONDS
            );
        }
        queue_producers.push(outpost_runtime::QueueProducerBinding {
            binding: producer.binding.clone(),
            queue: producer.queue.clone(),
            delivery_delay: producer.delivery_delay,
        });
    }
    let (workflows, workflow_definitions) = workflows::workflows(&config.workflows, &name)
        .with_context(|| format!("invalid [[workflows]] in {}", config_path.display()))?;
    let mut taken: Vec<&str> = vars.keys().map(String::as_str).collect();
    taken.extend(kv_namespaces.iter().map(|b| b.binding.as_str()));
    taken.extend(durable_objects.iter().map(|b| b.binding.as_str()));
    taken.extend(services.iter().map(|b| b.binding.as_str()));
    taken.extend(queue_producers.iter().map(|b| b.binding.as_str()));
    for workflow in &workflows {
        if taken.contains(&workflow.binding.as_str()) {
            bail!("{}: the binding {:?} is declared twice", config_path.display(), workflow.binding);
        }
        taken.push(&workflow.binding);
    }
    let queue_consumers = queues::queue_consumers(&config.queues.consumers)
        .with_context(|| format!("invalid [[queues.consumers]] in {}", config_path.display()))?;
    let crons = config
        .triggers
        .crons
        .iter()
        .map(|expression| outpost_cron::Schedule::parse(expression))
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("invalid [triggers] in {}", config_path.display()))?;
    Ok(ResolvedWorker {
        name,
        root: path.to_path_buf(),
        main,
        vars,
        isolation,
        limits,
        kv_namespaces,
        durable_objects,
        crons,
        services,
        queue_producers,
        queue_consumers,
        workflows,
        workflow_definitions,
    })
}

/// The longest KV namespace id (Cloudflare's are 32 hex digits); the store
/// keeps an id's length in its keys.
const MAX_NAMESPACE_ID_BYTES: usize = 256;

fn is_namespace_id(id: &str) -> bool {
    (1..=MAX_NAMESPACE_ID_BYTES).contains(&id.len()) && !id.chars().any(char::is_control)
}

/// Class names end up in storage namespaces (`worker:Class`): no colons,
/// no surprises.
fn is_js_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
}

fn is_iso_date(date: &str) -> bool {
    let bytes = date.as_bytes();
    bytes.len() == 10
        && bytes.iter().enumerate().all(|(i, b)| if i == 4 || i == 7 { *b == b'-' } else { b.is_ascii_digit() })
}

fn toml_to_json(value: toml::Value) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::to_value(value)?)
}

/// Parses `KEY=VALUE` from the command line.
pub fn parse_var(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {arg:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_named() {
        let err = WorkerConfig::parse("name = \"a\"\nmian = \"x.js\"\n", Path::new("outpost.toml")).unwrap_err();
        let message = format!("{err:#}");
        assert!(message.contains("mian"), "{message}");
        assert!(message.contains("outpost.toml"), "{message}");
    }

    #[test]
    fn wrangler_style_keys_parse() {
        let config = WorkerConfig::parse(
            "name = \"api\"\nmain = \"src/index.js\"\ncompatibility_date = \"2024-09-23\"\n[vars]\nGREETING = \"hi\"\nLIMITS = { max = 3 }\n",
            Path::new("outpost.toml"),
        )
        .unwrap();
        assert_eq!(config.name.as_deref(), Some("api"));
        assert_eq!(config.vars["GREETING"].as_str(), Some("hi"));
        assert_eq!(toml_to_json(config.vars["LIMITS"].clone()).unwrap(), serde_json::json!({ "max": 3 }));
    }

    #[test]
    fn isolation_and_limits_parse() {
        let config = WorkerConfig::parse(
            "isolation = \"per-request\"\n[limits]\ncpu_ms = 10\nmemory_mb = 64\n",
            Path::new("outpost.toml"),
        )
        .unwrap();
        assert_eq!(config.isolation, Some(IsolationConfig::PerRequest));
        let limits = config.limits.resolve().unwrap();
        assert_eq!((limits.cpu_ms, limits.memory_mb, limits.max_concurrent), (10, 64, 64));
        assert!(WorkerConfig::parse("isolation = \"sometimes\"\n", Path::new("outpost.toml")).is_err());
        let err = WorkerConfig::parse("[limits]\ncpu = 1\n", Path::new("outpost.toml")).unwrap_err();
        assert!(format!("{err:#}").contains("unknown field `cpu`"));
        let zero = WorkerConfig::parse("[limits]\ncpu_ms = 0\n", Path::new("outpost.toml")).unwrap();
        assert!(zero.limits.resolve().is_err());
    }

    #[test]
    fn durable_object_bindings_parse_as_in_wrangler() {
        let config = WorkerConfig::parse(
            "[[durable_objects.bindings]]\nname = \"COUNTER\"\nclass_name = \"Counter\"\n\n[[migrations]]\ntag = \"v1\"\nnew_classes = [\"Counter\"]\n",
            Path::new("outpost.toml"),
        )
        .unwrap();
        assert_eq!(config.durable_objects.bindings[0].class_name, "Counter");
        let err = WorkerConfig::parse(
            "[[durable_objects.bindings]]\nname = \"A\"\nclass = \"B\"\n",
            Path::new("outpost.toml"),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("unknown field `class`"), "{err:#}");
        assert!(is_js_identifier("Counter_2$"));
        assert!(!is_js_identifier("a:b"));
        assert!(!is_js_identifier("9lives"));
    }

    #[test]
    fn cron_triggers_parse_as_in_wrangler() {
        let config = WorkerConfig::parse(
            "[triggers]\ncrons = [\"*/5 * * * *\", \"0 3 * * MON-FRI\"]\n",
            Path::new("outpost.toml"),
        )
        .unwrap();
        assert_eq!(config.triggers.crons, ["*/5 * * * *", "0 3 * * MON-FRI"]);
        let err = WorkerConfig::parse("[triggers]\ncron = []\n", Path::new("outpost.toml")).unwrap_err();
        assert!(format!("{err:#}").contains("unknown field `cron`"), "{err:#}");
    }

    #[test]
    fn compatibility_dates_are_checked() {
        assert!(is_iso_date("2024-09-23"));
        assert!(!is_iso_date("2024-9-23"));
        assert!(!is_iso_date("yesterday!"));
    }

    #[test]
    fn vars_from_the_command_line() {
        assert_eq!(parse_var("A=b=c").unwrap(), ("A".into(), "b=c".into()));
        assert!(parse_var("=x").is_err());
        assert!(parse_var("nothing").is_err());
    }
}
