//! Starts the real `outpost` binary and talks to it over real HTTP.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// The `outpost` binary under test: this build's, or the one
/// `OUTPOST_TEST_BIN` names (to run the same tests against another build,
/// for example the one before a fix).
pub fn outpost_binary() -> PathBuf {
    std::env::var_os("OUTPOST_TEST_BIN").map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_outpost")), PathBuf::from)
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("cli/ is in the workspace").to_path_buf()
}

/// A worker directory made of `(relative path, contents)` files.
pub fn worker(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

pub fn fixture(name: &str) -> PathBuf {
    workspace_root().join("fixtures").join(name)
}

/// What a child process writes to standard error, read line by line on a
/// thread of its own.
pub struct LogCapture {
    lines: Arc<Mutex<String>>,
    /// Cleared to stop reading (the pipe then fills up, as with a stalled
    /// log collector).
    reading: Arc<std::sync::atomic::AtomicBool>,
}

impl LogCapture {
    pub fn start(stderr: std::process::ChildStderr) -> LogCapture {
        let capture = LogCapture {
            lines: Arc::new(Mutex::new(String::new())),
            reading: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        };
        let (sink, reading) = (capture.lines.clone(), capture.reading.clone());
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stderr).lines();
            loop {
                while !reading.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let Some(Ok(line)) = lines.next() else { break };
                let mut sink = sink.lock().unwrap();
                sink.push_str(&line);
                sink.push('\n');
            }
        });
        capture
    }

    /// Everything read so far.
    pub fn text(&self) -> String {
        self.lines.lock().unwrap().clone()
    }

    /// Waits until the log contains `needle` (logs are written asynchronously).
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let logs = self.text();
            if logs.contains(needle) {
                return logs;
            }
            assert!(Instant::now() < deadline, "log never contained {needle:?}; logs:\n{logs}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A running `outpost dev`, killed on drop.
/// Runs `outpost dev` on a worker that must fail to load; returns stderr.
pub fn failed_start(worker_dir: &Path) -> String {
    let output =
        Command::new(outpost_binary()).arg("dev").arg(worker_dir).args(["--port", "0"]).output().expect("outpost runs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "outpost dev should fail; stderr: {stderr}");
    assert!(String::from_utf8_lossy(&output.stdout).is_empty(), "nothing may be served");
    stderr
}

pub struct Dev {
    child: Child,
    pub addr: SocketAddr,
    stderr: LogCapture,
    _data_dir: tempfile::TempDir,
}

impl Dev {
    /// Starts `outpost dev <path> --port 0 <extra...>` and waits until it listens.
    pub fn start(path: &Path, extra: &[&str]) -> Dev {
        Self::start_in(path, tempfile::tempdir().expect("a temp dir"), extra)
    }

    /// Like [`Dev::start`], keeping local state in `data_dir`.
    pub fn start_in(path: &Path, data_dir: tempfile::TempDir, extra: &[&str]) -> Dev {
        let mut child = Command::new(outpost_binary())
            .arg("dev")
            .arg(path)
            .args(["--port", "0", "--data-dir"])
            .arg(data_dir.path())
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the outpost binary starts");
        let stderr = LogCapture::start(child.stderr.take().expect("stderr is piped"));
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("outpost prints a line");
        let url = line
            .split_whitespace()
            .find(|word| word.starts_with("http://"))
            .unwrap_or_else(|| panic!("no URL in {line:?}; stderr: {}", stderr.text()));
        let addr = url.trim_start_matches("http://").trim_end_matches('/').parse().expect("host:port");
        Dev { child, addr, stderr, _data_dir: data_dir }
    }

    /// Everything the process logged so far.
    /// Stops the process and hands back its data directory.
    pub fn stop(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let placeholder = tempfile::tempdir().expect("a temp dir");
        std::mem::replace(&mut self._data_dir, placeholder)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Where the process keeps its state (`--data-dir`).
    pub fn data_dir(&self) -> &Path {
        self._data_dir.path()
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("the child can be waited for") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn logs(&self) -> String {
        self.stderr.text()
    }

    /// Waits until the log contains `needle` (logs are written asynchronously).
    pub fn wait_for_log(&self, needle: &str) -> String {
        self.stderr.wait_for(needle, Duration::from_secs(10))
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response, fully read.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Opens an HTTP/1.1 connection.
pub async fn connect(
    addr: SocketAddr,
) -> hyper::client::conn::http1::SendRequest<http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>> {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("outpost accepts connections");
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(connection);
    sender
}

/// Sends one request on a new connection and reads the whole response.
pub async fn send(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut sender = connect(addr).await;
    let mut builder = http::Request::builder().method(method).uri(path);
    if !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("host")) {
        builder = builder.header("host", addr.to_string());
    }
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let body = Full::new(Bytes::copy_from_slice(body)).map_err(|never| match never {}).boxed_unsync();
    let response = sender.send_request(builder.body(body).unwrap()).await.expect("a response");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("the whole body").to_bytes();
    Reply { status: parts.status.as_u16(), headers: parts.headers, body }
}

pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    send(addr, "GET", path, &[], b"").await
}

/// A running `outpost serve`, killed on drop.
pub struct Node {
    pub child: Option<Child>,
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    stderr: LogCapture,
    _dir: tempfile::TempDir,
}

impl Node {
    /// Writes `node.toml` (and `files`) into a fresh directory and starts it.
    pub fn start(node_toml: &str, files: &[(&str, String)]) -> Node {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("node.toml"), node_toml).unwrap();
        for (name, text) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let mut child = Command::new(outpost_binary())
            .args(["serve", "--config"])
            .arg(dir.path().join("node.toml"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = LogCapture::start(child.stderr.take().unwrap());
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let (mut http, mut https) = (None, None);
        loop {
            let mut line = String::new();
            if stdout.read_line(&mut line).unwrap() == 0 {
                let _ = child.wait();
                panic!("outpost serve exited; stderr:\n{}", stderr.text());
            }
            if let Some(url) = line.split_whitespace().find(|w| w.starts_with("http://")) {
                http = Some(url.trim_start_matches("http://").parse().unwrap());
            }
            if let Some(url) = line.split_whitespace().find(|w| w.starts_with("https://")) {
                https = Some(url.trim_start_matches("https://").parse().unwrap());
            }
            if line.contains(" workers, ") {
                break;
            }
        }
        Node { child: Some(child), http, https, stderr, _dir: dir }
    }

    pub fn logs(&self) -> String {
        self.stderr.text()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// Stops or resumes reading the process's standard error.
    pub fn read_stderr(&self, read: bool) {
        self.stderr.reading.store(read, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|child| child.try_wait().expect("the child can be waited for").is_none())
    }

    /// Waits until the log contains `needle` (logs are written asynchronously).
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        self.stderr.wait_for(needle, timeout)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A GET that may fail (the process is killed under it).
pub async fn try_get(addr: SocketAddr, path: &str) -> Option<(u16, Bytes)> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.ok()?;
    tokio::spawn(connection);
    let request =
        http::Request::get(path).header("host", addr.to_string()).body(http_body_util::Empty::<Bytes>::new()).ok()?;
    let response = sender.send_request(request).await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.into_body().collect().await.ok()?.to_bytes()))
}

/// A small deterministic generator (the seed is printed to replay a run).
pub struct XorShift(pub u64);

impl XorShift {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Runs `outpost <args>` in `cwd` to its end: its standard output, or its
/// standard error if it failed.
pub fn run_outpost<S: AsRef<std::ffi::OsStr>>(cwd: &Path, args: impl IntoIterator<Item = S>) -> Result<String, String> {
    let output = Command::new(outpost_binary()).args(args).current_dir(cwd).output().expect("the outpost binary runs");
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}
