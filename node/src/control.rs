//! The node's control socket: `<data_dir>/control.sock`, a Unix socket
//! only the node's user may open, through which the `outpost` command asks
//! a running node about its workflows (list them, list and describe
//! instances, trigger one). One JSON request per connection, one JSON
//! answer: `{"ok": ...}` or `{"error": "..."}`. The admin API (HTTP, with
//! tokens, for remote use) is a separate, later piece.

use std::path::{Path, PathBuf};

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
pub async fn serve_control(listener: UnixListener, engine: Engine) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        tokio::spawn(answer(stream, engine.clone()));
    }
}

async fn answer(stream: UnixStream, engine: Engine) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let read = BufReader::new(read.take(MAX_REQUEST_BYTES)).read_line(&mut line).await;
    let reply = match read {
        Err(err) => serde_json::json!({ "error": format!("cannot read the request: {err}") }),
        Ok(_) => match serde_json::from_str::<ControlRequest>(&line) {
            Err(err) => serde_json::json!({ "error": format!("not a control request: {err}") }),
            Ok(request) => match handle(&engine, request).await {
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
        }
    }
}

async fn handle(engine: &Engine, request: ControlRequest) -> Result<Value, String> {
    let span = tracing::info_span!("node.control", request = request.name());
    async move {
        match request {
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
