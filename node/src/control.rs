//! The node's control socket: `<data_dir>/control.sock`, a Unix socket
//! only the node's user may open, through which the `outpost` command asks
//! a running node about its workflows (list them, list and describe
//! instances, trigger one) and reads and writes its KV namespaces. One JSON request per connection, one JSON
//! answer: `{"ok": ...}` or `{"error": "..."}`. The admin API (HTTP, with
//! tokens, for remote use) is a separate, later piece.

use std::path::{Path, PathBuf};

use std::sync::Arc;

use base64::Engine as _;
use outpost_kv::{KvStorage, ListOptions, PutOptions};
use outpost_workflows::{json_params, Engine, NewInstance};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::Instrument as _;

/// The socket's file name in the data directory.
pub const CONTROL_SOCKET: &str = "control.sock";
/// The longest request read, in bytes (a trigger's parameters are ≤ 1 MiB).
const MAX_REQUEST_BYTES: u64 = 2 * 1024 * 1024;

/// What the command line asks.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum ControlRequest {
    ListWorkflows,
    ListInstances {
        workflow: String,
    },
    DescribeInstance {
        workflow: String,
        id: String,
    },
    /// Creates an instance; `params` is JSON text.
    Trigger {
        workflow: String,
        id: Option<String>,
        params: Option<String>,
    },
    /// A KV call on namespace `namespace`: [`KvCall`].
    Kv {
        namespace: String,
        call: KvCall,
    },
}

/// One KV call; keys and values travel in base64 (they are bytes).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "kebab-case")]
pub enum KvCall {
    Get { key: String },
    Put { key: String, value: String, expiration: Option<u64>, expiration_ttl: Option<u64>, metadata: Option<String> },
    Delete { key: String },
    List { prefix: String, limit: Option<usize>, cursor: Option<String> },
}

/// What the node lets the control socket reach.
#[derive(Clone)]
pub struct Controlled {
    pub workflows: Engine,
    pub kv: Arc<dyn KvStorage>,
}

/// Why the control socket could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the control socket {}: {source}", path.display())]
pub struct ControlSocketError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// Binds the socket (replacing one a dead node left) with owner-only
/// permissions; serve it with [`serve_control`].
pub fn bind_control(data_dir: &Path) -> Result<UnixListener, ControlSocketError> {
    let path = data_dir.join(CONTROL_SOCKET);
    let fail = |source| ControlSocketError { path: path.clone(), source };
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(fail(err)),
    }
    let listener = UnixListener::bind(&path).map_err(fail)?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(fail)?;
    Ok(listener)
}

/// Answers requests until the runtime stops.
pub async fn serve_control(listener: UnixListener, controlled: Controlled) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        tokio::spawn(answer(stream, controlled.clone()));
    }
}

async fn answer(stream: UnixStream, controlled: Controlled) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let read = BufReader::new(read.take(MAX_REQUEST_BYTES)).read_line(&mut line).await;
    let reply = match read {
        Err(err) => serde_json::json!({ "error": format!("cannot read the request: {err}") }),
        Ok(_) => match serde_json::from_str::<ControlRequest>(&line) {
            Err(err) => serde_json::json!({ "error": format!("not a control request: {err}") }),
            Ok(request) => match handle(&controlled, request).await {
                Ok(value) => serde_json::json!({ "ok": value }),
                Err(message) => serde_json::json!({ "error": message }),
            },
        },
    };
    let mut text = reply.to_string();
    text.push('\n');
    let _ = write.write_all(text.as_bytes()).await;
}

fn json<T: Serialize>(value: T) -> Result<Value, String> {
    serde_json::to_value(value).map_err(|err| err.to_string())
}

impl ControlRequest {
    fn name(&self) -> &'static str {
        match self {
            ControlRequest::ListWorkflows => "list-workflows",
            ControlRequest::ListInstances { .. } => "list-instances",
            ControlRequest::DescribeInstance { .. } => "describe-instance",
            ControlRequest::Trigger { .. } => "trigger",
            ControlRequest::Kv { .. } => "kv",
        }
    }
}

async fn handle(controlled: &Controlled, request: ControlRequest) -> Result<Value, String> {
    let span = tracing::info_span!("node.control", request = request.name());
    let engine = &controlled.workflows;
    async move {
        match request {
            ControlRequest::Kv { namespace, call } => kv(controlled.kv.as_ref(), &namespace, call).await,
            ControlRequest::ListWorkflows => json(engine.list_workflows().await),
            ControlRequest::ListInstances { workflow } => {
                json(engine.list_instances(&workflow).await.map_err(|err| err.to_string())?)
            }
            ControlRequest::DescribeInstance { workflow, id } => {
                json(engine.describe(&workflow, &id).await.map_err(|err| err.to_string())?)
            }
            ControlRequest::Trigger { workflow, id, params } => {
                let params = json_params(params.as_deref().unwrap_or("null"))
                    .map_err(|err| format!("the parameters are not JSON: {err}"))?;
                let new = vec![NewInstance { id, params }];
                let ids = engine.create(&workflow, new).await.map_err(|err| err.to_string())?;
                tracing::info!(workflow = %workflow, instance = %ids[0], "instance created from the command line");
                Ok(Value::String(ids[0].clone()))
            }
        }
    }
    .instrument(span)
    .await
}

fn decode(what: &str, text: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD.decode(text).map_err(|err| format!("the {what} is not base64: {err}"))
}

fn encode(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A KV call on any [`KvStorage`]: the running node's, or (from the command
/// line, no node running) the data directory's store opened directly.
pub async fn kv(storage: &dyn KvStorage, namespace: &str, call: KvCall) -> Result<Value, String> {
    match call {
        KvCall::Get { key } => {
            let record = storage.get(namespace, &decode("key", &key)?).await.map_err(|err| err.to_string())?;
            Ok(record.map_or(Value::Null, |record| Value::String(encode(&record.value))))
        }
        KvCall::Put { key, value, expiration, expiration_ttl, metadata } => {
            if let Some(metadata) = &metadata {
                serde_json::from_str::<Value>(metadata).map_err(|err| format!("the metadata is not JSON: {err}"))?;
            }
            let options = PutOptions { expiration, expiration_ttl, metadata: metadata.map(String::into_bytes) };
            let (key, value) = (decode("key", &key)?, decode("value", &value)?);
            storage.put(namespace, &key, value.into(), options).await.map_err(|err| err.to_string())?;
            Ok(Value::Null)
        }
        KvCall::Delete { key } => {
            storage.delete(namespace, &decode("key", &key)?).await.map_err(|err| err.to_string())?;
            Ok(Value::Null)
        }
        KvCall::List { prefix, limit, cursor } => {
            let options = ListOptions { prefix: prefix.into_bytes(), limit, cursor };
            let page = storage.list(namespace, options).await.map_err(|err| err.to_string())?;
            let keys: Vec<Value> = page
                .keys()
                .map(|key| {
                    let mut entry = serde_json::json!({ "name": String::from_utf8_lossy(key.name) });
                    if let Some(expiration) = key.expiration {
                        entry["expiration"] = expiration.into();
                    }
                    if let Some(metadata) = key.metadata {
                        entry["metadata"] = serde_json::from_slice(metadata).unwrap_or(Value::Null);
                    }
                    entry
                })
                .collect();
            Ok(serde_json::json!({ "keys": keys, "list_complete": page.list_complete, "cursor": page.cursor }))
        }
    }
}
