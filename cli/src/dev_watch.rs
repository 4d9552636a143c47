//! `outpost dev`'s reload on change: what a worker's directory looks like
//! (a fingerprint of its files), looked at a few times a second. Polling
//! rather than inotify: nothing to set up, the same on every file system,
//! and a worker's directory is small.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Directories never looked into: state and tools, not the worker's code.
const SKIPPED: &[&str] = &[".outpost", ".git", ".wrangler", "node_modules", "target"];
/// The most files looked at in one worker's directory.
const MAX_FILES: usize = 10_000;

/// Each file's size and modification time, by path under the root.
pub type Fingerprint = BTreeMap<PathBuf, (u64, Option<SystemTime>)>;

/// The fingerprint of the files under `root` (at most [`MAX_FILES`];
/// unreadable entries, and `data_dir`, where the node writes, are left
/// out).
pub fn fingerprint(root: &Path, data_dir: &Path) -> Fingerprint {
    let mut files = Fingerprint::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            if files.len() >= MAX_FILES {
                return files;
            }
            let Ok(kind) = entry.file_type() else { continue };
            let name = entry.file_name();
            if kind.is_dir() {
                let path = entry.path();
                let skipped = SKIPPED.iter().any(|skipped| name == *skipped)
                    || path == data_dir
                    || std::fs::canonicalize(&path).is_ok_and(|canonical| canonical == data_dir);
                if !skipped {
                    pending.push(path);
                }
            } else if let Ok(metadata) = entry.metadata() {
                let path = entry.path();
                let relative = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
                files.insert(relative, (metadata.len(), metadata.modified().ok()));
            }
        }
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_to_a_file_changes_the_fingerprint_and_state_does_not() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("worker.js"), "a").unwrap();
        std::fs::create_dir(dir.path().join("lib")).unwrap();
        std::fs::write(dir.path().join("lib/util.js"), "b").unwrap();
        let data = dir.path().join("state");
        let before = fingerprint(dir.path(), &data);
        assert_eq!(before.len(), 2);
        std::fs::create_dir_all(dir.path().join(".outpost/snapshots")).unwrap();
        std::fs::write(dir.path().join(".outpost/kv.redb"), "state").unwrap();
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("kv.redb"), "state").unwrap();
        assert_eq!(fingerprint(dir.path(), &data), before, "state is not code");
        std::fs::write(dir.path().join("lib/util.js"), "bb").unwrap();
        assert_ne!(fingerprint(dir.path(), &data), before);
    }
}
