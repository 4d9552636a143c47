//! `outpost.toml`: a worker's configuration, kept close to `wrangler.toml`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use serde::Deserialize;

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
}

/// Finds the worker at `path`: a `.js` file, or a directory with an
/// `outpost.toml` or a `worker.js`.
pub fn resolve(path: &Path) -> anyhow::Result<ResolvedWorker> {
    let metadata = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if metadata.is_file() {
        let root = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
        let name = path.file_stem().map_or("worker".into(), |stem| stem.to_string_lossy().into_owned());
        return Ok(ResolvedWorker { name, root, main: path.to_path_buf(), vars: Default::default() });
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
    let vars =
        config.vars.into_iter().map(|(key, value)| Ok((key, toml_to_json(value)?))).collect::<anyhow::Result<_>>()?;
    Ok(ResolvedWorker { name, root: path.to_path_buf(), main, vars })
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
