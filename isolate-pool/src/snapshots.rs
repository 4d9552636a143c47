//! Per-worker snapshots, made in a child process and kept on disk by content.

use std::ffi::OsString;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use outpost_runtime::{ModuleKind, WorkerSource};
use sha2::{Digest, Sha256};

/// Exit status of the snapshot process when the worker fails to load.
pub const EXIT_LOAD_ERROR: i32 = 2;
/// Exit status of the snapshot process when the worker loads but cannot be
/// snapshotted.
pub const EXIT_UNSUPPORTED: i32 = 3;

/// Why the snapshot process made no snapshot: the exit status the pool
/// reads ([`EXIT_LOAD_ERROR`], [`EXIT_UNSUPPORTED`], 1 for anything else)
/// and the message, which the process writes to standard error.
#[derive(Debug)]
pub struct SnapshotFailure {
    pub status: i32,
    pub message: String,
}

/// The snapshot process's whole job, for the binary that is the pool's
/// snapshotter (`outpost snapshot-worker`, the pool bench): evaluates the
/// worker at `main` in `root` and writes its snapshot to `out`. The binary
/// reports a failure (its message on standard error, its exit status).
pub fn run_snapshot_process(root: &Path, main: &Path, out: &Path) -> Result<(), SnapshotFailure> {
    use outpost_runtime::snapshot::{create_worker_snapshot, SnapshotError};
    let fail = |status, message: String| SnapshotFailure { status, message };
    let source = WorkerSource::new(root, main).map_err(|err| fail(EXIT_LOAD_ERROR, err.to_string()))?;
    match create_worker_snapshot(&source) {
        Ok(bytes) => {
            std::fs::write(out, bytes).map_err(|err| fail(1, format!("cannot write {}: {err}", out.display())))
        }
        Err(SnapshotError::Module(message)) => Err(fail(EXIT_LOAD_ERROR, message)),
        Err(SnapshotError::Unsupported(message)) => Err(fail(EXIT_UNSUPPORTED, message)),
        Err(err) => Err(fail(1, err.to_string())),
    }
}

/// How to run the snapshot process: `program args... <root> <main> <out>`.
#[derive(Debug, Clone)]
pub struct Snapshotter {
    pub program: PathBuf,
    pub args: Vec<OsString>,
}

impl Snapshotter {
    /// This executable, with `subcommand` as its first argument.
    pub fn current_exe(subcommand: &str) -> std::io::Result<Self> {
        Ok(Self { program: std::env::current_exe()?, args: vec![subcommand.into()] })
    }
}

/// What snapshotting a worker gave.
pub enum SnapshotOutcome {
    /// The worker's snapshot (kept for the life of the process: isolates
    /// borrow it for as long as they live).
    Ready { snapshot: &'static [u8], digest: String },
    /// The worker cannot be snapshotted; it is loaded by evaluating its
    /// modules in each isolate instead.
    Unsupported { reason: String },
    /// The worker failed to load in the snapshot process. Loading it the
    /// ordinary way reports the same failure, with the full source position.
    LoadFailed { message: String },
}

/// Why the snapshot store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotStoreError {
    #[error("snapshot store {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

/// Snapshots on disk, named by the digest of what they were made from.
pub struct SnapshotStore {
    dir: PathBuf,
    snapshotter: Snapshotter,
}

impl SnapshotStore {
    pub fn new(dir: PathBuf, snapshotter: Snapshotter) -> Self {
        Self { dir, snapshotter }
    }

    /// Returns the worker's snapshot, making it if the store has none for
    /// exactly these sources and this runtime.
    pub fn get_or_create(&self, source: &WorkerSource) -> Result<SnapshotOutcome, SnapshotStoreError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SnapshotStoreError::Io { path, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let digest = bundle_digest(source).map_err(io(&source.root))?;
        let path = self.dir.join(format!("{digest}.snapshot"));
        if let Ok(bytes) = std::fs::read(&path) {
            tracing::debug!(digest, "worker snapshot found");
            return Ok(SnapshotOutcome::Ready { snapshot: Box::leak(bytes.into_boxed_slice()), digest });
        }
        let partial = self.dir.join(format!("{digest}.{}.partial", std::process::id()));
        let started = std::time::Instant::now();
        let mut child = Command::new(&self.snapshotter.program)
            .args(&self.snapshotter.args)
            .arg(&source.root)
            .arg(&source.main)
            .arg(&partial)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io(&self.snapshotter.program))?;
        let mut stderr = String::new();
        let _ = child.stderr.take().expect("piped").read_to_string(&mut stderr);
        let status = child.wait().map_err(io(&self.snapshotter.program))?;
        let stderr = stderr.trim().to_string();
        match status.code() {
            Some(0) => {
                std::fs::rename(&partial, &path).map_err(io(&path))?;
                let bytes = std::fs::read(&path).map_err(io(&path))?;
                tracing::info!(
                    digest,
                    bytes = bytes.len(),
                    ms = started.elapsed().as_millis() as u64,
                    "worker snapshot made"
                );
                Ok(SnapshotOutcome::Ready { snapshot: Box::leak(bytes.into_boxed_slice()), digest })
            }
            Some(EXIT_LOAD_ERROR) => Ok(SnapshotOutcome::LoadFailed { message: stderr }),
            Some(EXIT_UNSUPPORTED) => Ok(SnapshotOutcome::Unsupported { reason: stderr }),
            _ => {
                let _ = std::fs::remove_file(&partial);
                // A crash here is V8 refusing the heap (for example a
                // CryptoKey made at the top level): the worker still runs
                // without a snapshot.
                Ok(SnapshotOutcome::Unsupported { reason: format!("the snapshot process failed ({status}): {stderr}") })
            }
        }
    }
}

/// The digest of a worker's module files and of the runtime they run on.
pub fn bundle_digest(source: &WorkerSource) -> std::io::Result<String> {
    let mut files = Vec::new();
    collect_module_files(&source.root, &mut files)?;
    files.sort();
    let mut hasher = Sha256::new();
    hasher.update(outpost_runtime::runtime_fingerprint());
    // Module URLs in a snapshot are absolute: the same files elsewhere are a
    // different snapshot.
    hasher.update(source.root.to_string_lossy().as_bytes());
    hasher.update([0]);
    hasher.update(source.main.to_string_lossy().as_bytes());
    for file in files {
        let bytes = std::fs::read(&file)?;
        let relative = file.strip_prefix(&source.root).unwrap_or(&file);
        hasher.update((relative.as_os_str().len() as u64).to_le_bytes());
        hasher.update(relative.to_string_lossy().as_bytes());
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn collect_module_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        // Local state and dependencies are not part of the bundle.
        if name.to_string_lossy().starts_with('.') || name == "node_modules" {
            continue;
        }
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            collect_module_files(&path, out)?;
        } else if ModuleKind::from_path(&path).is_some() {
            out.push(path);
        }
    }
    Ok(())
}
