//! `outpost init <name>`: a new worker directory that `outpost dev` runs at
//! once: `outpost.toml`, `worker.js`, a `README.md` with a request to try,
//! and a `.gitignore` for local state.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

#[derive(clap::Args)]
pub struct InitArgs {
    /// The worker's name; also the new directory's, unless `--dir` says.
    name: String,
    /// Where to make it (default: `./<name>`).
    #[arg(long)]
    dir: Option<PathBuf>,
}

const WORKER_JS: &str = r#"// A Cloudflare-style worker: `fetch` answers every request.
export default {
  async fetch(request, env, ctx) {
    const url = new URL(request.url);
    if (url.pathname === "/") {
      return new Response(`Hello from ${env.WORKER_NAME}!\n`);
    }
    if (url.pathname === "/echo" && request.method === "POST") {
      return Response.json({ received: await request.text() });
    }
    return new Response("Not found\n", { status: 404 });
  },
};
"#;

/// Whether `name` can name a worker: letters, digits, `-` and `_`.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !name.starts_with('-')
}

/// The files of a new worker named `name`.
fn files(name: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "outpost.toml",
            format!(
                "name = \"{name}\"\nmain = \"worker.js\"\ncompatibility_date = \"2025-11-01\"\n\n[vars]\nWORKER_NAME = \"{name}\"\n"
            ),
        ),
        ("worker.js", WORKER_JS.to_string()),
        (
            "README.md",
            format!(
                "# {name}\n\nA worker for Outpost (and Cloudflare Workers).\n\n```\noutpost dev            # serves it on http://127.0.0.1:8787, reloading on change\ncurl http://127.0.0.1:8787/\n# Hello from {name}!\ncurl -X POST http://127.0.0.1:8787/echo -d hi\n# {{\"received\":\"hi\"}}\n```\n\nLocal secrets go in `.dev.vars` (`KEY=value` lines), which is not committed.\n"
            ),
        ),
        (".gitignore", ".outpost/\n.dev.vars\n".to_string()),
    ]
}

pub fn run(args: InitArgs) -> anyhow::Result<()> {
    if !valid_name(&args.name) {
        bail!("{:?} cannot name a worker: use letters, digits, '-' and '_' (at most 63)", args.name);
    }
    let dir = args.dir.unwrap_or_else(|| PathBuf::from(&args.name));
    create(&dir, &args.name)?;
    println!("created worker {} in {}; run it with: cd {} && outpost dev", args.name, dir.display(), dir.display());
    Ok(())
}

/// Writes the files into `dir`, which must not exist or be empty; nothing
/// is overwritten.
fn create(dir: &Path, name: &str) -> anyhow::Result<()> {
    if dir.exists() {
        let mut entries = std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
        if entries.next().is_some() {
            bail!("{} already exists and is not empty; nothing was written", dir.display());
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (file, text) in files(name) {
        let path = dir.join(file);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_worker_parses_and_an_existing_directory_is_left_alone() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("hello-edge");
        create(&dir, "hello-edge").unwrap();
        let resolved = crate::config::resolve(&dir).unwrap();
        assert_eq!(resolved.name, "hello-edge");
        assert_eq!(resolved.vars["WORKER_NAME"], "hello-edge");
        let err = create(&dir, "hello-edge").unwrap_err().to_string();
        assert!(err.contains("not empty"), "{err}");
        for bad in ["", "-x", "a b", "a/b", "../x"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }
}
