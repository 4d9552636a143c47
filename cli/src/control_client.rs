//! The command line's side of a node's control socket
//! (`outpost_node::control`): one JSON request, one JSON answer.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use anyhow::{bail, Context as _};
use outpost_node::control::{ControlRequest, CONTROL_SOCKET};
use serde_json::Value;

/// Whether a node runs with data directory `data_dir` (its socket answers).
pub fn is_running(data_dir: &Path) -> bool {
    UnixStream::connect(data_dir.join(CONTROL_SOCKET)).is_ok()
}

/// Sends `request` to the node whose data directory is `data_dir`: its
/// answer, or `None` when no node is running there.
pub fn ask(data_dir: &Path, request: &ControlRequest) -> anyhow::Result<Option<Value>> {
    let path = data_dir.join(CONTROL_SOCKET);
    let mut stream = match UnixStream::connect(&path) {
        Ok(stream) => stream,
        Err(err) if matches!(err.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
            return Ok(None)
        }
        Err(err) => return Err(err).with_context(|| format!("cannot open {}", path.display())),
    };
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    stream.write_all(line.as_bytes()).context("cannot send the request to the node")?;
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply).context("cannot read the node's answer")?;
    let mut reply: Value = serde_json::from_str(&reply).context("the node's answer is not JSON")?;
    if let Some(error) = reply.get("error").and_then(Value::as_str) {
        bail!("{error}");
    }
    Ok(Some(reply["ok"].take()))
}
