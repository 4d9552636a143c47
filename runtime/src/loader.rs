//! Resolves and loads the modules of a worker's bundle.
//!
//! A bundle is a directory: the main module and whatever it imports by
//! relative path, never outside that directory. Like Cloudflare's module
//! rules, non-JS files are imported as data: `.json` as the parsed value,
//! `.txt`/`.html`/... as a string, `.wasm` as a `WebAssembly.Module`. Every
//! module reaches V8 as JavaScript, so imports need no `with { type }`.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use deno_core::{
    ModuleLoadOptions, ModuleLoadReferrer, ModuleLoadResponse, ModuleLoader, ModuleSource, ModuleSourceCode,
    ModuleSpecifier, ModuleType, ResolutionKind,
};
use deno_error::JsErrorBox;

use crate::ext::wasm::WasmSources;

/// The built-in modules workers may import: the base classes of
/// Cloudflare's runtime API (`DurableObject`, `WorkerEntrypoint`,
/// `RpcTarget`, `WorkflowEntrypoint`), and `cloudflare:workflows`'
/// `NonRetryableError`, which the bootstrap leaves under a symbol.
const CLOUDFLARE_WORKERS: &str = "cloudflare:workers";
const CLOUDFLARE_WORKERS_SOURCE: &str = r#"const api = globalThis[Symbol.for("outpost.cloudflareWorkers")];
export const DurableObject = api.DurableObject;
export const WorkerEntrypoint = api.WorkerEntrypoint;
export const RpcTarget = api.RpcTarget;
export const WorkflowEntrypoint = api.WorkflowEntrypoint;
"#;
const CLOUDFLARE_WORKFLOWS: &str = "cloudflare:workflows";
const CLOUDFLARE_WORKFLOWS_SOURCE: &str = r#"const api = globalThis[Symbol.for("outpost.cloudflareWorkers")];
export const NonRetryableError = api.NonRetryableError;
"#;

/// The source of a built-in module, if `specifier` names one.
fn builtin_source(specifier: &str) -> Option<&'static str> {
    match specifier {
        CLOUDFLARE_WORKERS => Some(CLOUDFLARE_WORKERS_SOURCE),
        CLOUDFLARE_WORKFLOWS => Some(CLOUDFLARE_WORKFLOWS_SOURCE),
        _ => None,
    }
}

/// How a file of the bundle becomes a module, chosen by its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleKind {
    JavaScript,
    Json,
    Text,
    Wasm,
}

impl ModuleKind {
    /// The extensions we know, for error messages.
    pub const SUPPORTED: &'static str = ".js .mjs .json .wasm .txt .html .htm .css .csv .md .svg .xml";

    pub fn from_path(path: &Path) -> Option<Self> {
        let extension = path.extension()?.to_str()?.to_ascii_lowercase();
        Some(match extension.as_str() {
            "js" | "mjs" => Self::JavaScript,
            "json" => Self::Json,
            "wasm" => Self::Wasm,
            "txt" | "html" | "htm" | "css" | "csv" | "md" | "svg" | "xml" => Self::Text,
            _ => return None,
        })
    }
}

/// Turns a non-JS file into the JavaScript module that exports it. Pure, so
/// the rules are testable without V8.
pub fn data_module_source(kind: ModuleKind, url: &str, bytes: &[u8]) -> Result<String, String> {
    let string_literal = |text: &str| serde_json::to_string(text).expect("a string serializes");
    match kind {
        ModuleKind::JavaScript => {
            String::from_utf8(bytes.to_vec()).map_err(|err| format!("{url} is not valid UTF-8: {err}"))
        }
        ModuleKind::Json => {
            let text = std::str::from_utf8(bytes).map_err(|err| format!("{url} is not valid UTF-8: {err}"))?;
            serde_json::from_str::<serde_json::Value>(text).map_err(|err| format!("{url} is not valid JSON: {err}"))?;
            // JSON.parse rather than a literal: a literal would treat a
            // "__proto__" key as the object's prototype.
            Ok(format!("export default JSON.parse({});", string_literal(text)))
        }
        ModuleKind::Text => {
            let text = std::str::from_utf8(bytes).map_err(|err| format!("{url} is not valid UTF-8: {err}"))?;
            Ok(format!("export default {};", string_literal(text)))
        }
        ModuleKind::Wasm => {
            Ok(format!("export default globalThis[Symbol.for(\"outpost.wasmModule\")]({});", string_literal(url)))
        }
    }
}

/// The URL every bundle's modules live under. Workers see these URLs (in
/// `import.meta.url` and stack traces), never the node's own paths.
pub const BUNDLE_URL: &str = "file:///bundle/";

/// Why a module URL names no file of the bundle. Decided from the URL
/// alone, so the answer says nothing about the node's filesystem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundlePathError {
    #[error("it is outside the worker's bundle")]
    Outside,
    #[error("its path has an empty, \".\" or \"..\" segment, a backslash, a colon or a NUL (after decoding)")]
    BadSegment,
}

/// The path, relative to the bundle's directory, that a module URL names:
/// percent-decoded segment by segment, each one a plain file or directory
/// name. An encoded `/`, `..`, backslash or NUL cannot climb out, nor can
/// anything else that decodes to a path separator. Pure.
pub fn bundle_relative_path(url: &ModuleSpecifier) -> Result<PathBuf, BundlePathError> {
    let rest = url.as_str().strip_prefix(BUNDLE_URL).ok_or(BundlePathError::Outside)?;
    // The query and fragment are not part of the file's name.
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let mut path = PathBuf::new();
    for segment in rest.split('/') {
        let decoded = percent_decode(segment).ok_or(BundlePathError::BadSegment)?;
        let bad = decoded.is_empty() || decoded == "." || decoded == ".." || decoded.contains(['/', '\\', '\0', ':']);
        if bad {
            return Err(BundlePathError::BadSegment);
        }
        path.push(decoded);
    }
    Ok(path)
}

/// Decodes `%XX` escapes; `None` for a malformed escape or bytes that are
/// not UTF-8.
fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The URL of a file of the bundle, given its path relative to the
/// bundle's directory.
pub fn bundle_url(relative: &Path) -> ModuleSpecifier {
    let mut url = ModuleSpecifier::parse(BUNDLE_URL).expect("a valid URL");
    url.path_segments_mut()
        .expect("a file URL has segments")
        .pop_if_empty()
        .extend(relative.components().map(|c| c.as_os_str().to_string_lossy().into_owned()));
    url
}

/// Loads modules from the bundle directory.
pub struct BundleLoader {
    root: PathBuf,
    wasm: WasmSources,
}

impl BundleLoader {
    /// `root` must be canonical (absolute, symlinks resolved).
    pub fn new(root: PathBuf, wasm: WasmSources) -> Self {
        Self { root, wasm }
    }

    /// Reads a file of the bundle. Every way of not getting it (no such
    /// file, a symlink leading out of the bundle, a directory, no
    /// permission) gives the same answer, so a worker learns nothing about
    /// what lies outside its bundle.
    fn read(&self, relative: &Path) -> Option<Vec<u8>> {
        let path = self.root.join(relative).canonicalize().ok()?;
        if !path.starts_with(&self.root) || !path.is_file() {
            return None;
        }
        std::fs::read(path).ok()
    }

    fn load_file(
        &self,
        url: &ModuleSpecifier,
        referrer: Option<&ModuleLoadReferrer>,
    ) -> Result<ModuleSource, JsErrorBox> {
        let relative =
            bundle_relative_path(url).map_err(|err| JsErrorBox::type_error(format!("cannot load {url}: {err}")))?;
        let shown = relative.display();
        let kind = ModuleKind::from_path(&relative).ok_or_else(|| {
            JsErrorBox::type_error(format!(
                "cannot import {shown}: unsupported module type (supported: {})",
                ModuleKind::SUPPORTED
            ))
        })?;
        let bytes = self.read(&relative).ok_or_else(|| {
            let imported_at = referrer.map_or(String::new(), |referrer| {
                let file = bundle_relative_path(&referrer.specifier)
                    .map_or(referrer.specifier.to_string(), |p| p.display().to_string());
                format!(" (imported at {file}:{}:{})", referrer.line_number, referrer.column_number)
            });
            JsErrorBox::new("NotFound", format!("cannot load {shown}{imported_at}: module not found"))
        })?;
        let source = data_module_source(kind, url.as_str(), &bytes).map_err(JsErrorBox::type_error)?;
        if kind == ModuleKind::Wasm {
            self.wasm.0.borrow_mut().insert(url.to_string(), Bytes::from(bytes));
        }
        Ok(ModuleSource::new(ModuleType::JavaScript, ModuleSourceCode::String(source.into()), url, None))
    }
}

impl ModuleLoader for BundleLoader {
    fn resolve(&self, specifier: &str, referrer: &str, _kind: ResolutionKind) -> Result<ModuleSpecifier, JsErrorBox> {
        resolve_specifier(specifier, referrer)
    }

    fn load(
        &self,
        specifier: &ModuleSpecifier,
        referrer: Option<&ModuleLoadReferrer>,
        _options: ModuleLoadOptions,
    ) -> ModuleLoadResponse {
        if let Some(source) = builtin_source(specifier.as_str()) {
            return ModuleLoadResponse::Sync(Ok(ModuleSource::new(
                ModuleType::JavaScript,
                ModuleSourceCode::String(source.to_string().into()),
                specifier,
                None,
            )));
        }
        ModuleLoadResponse::Sync(self.load_file(specifier, referrer))
    }
}

/// Where an import leads: a file of the bundle (relative specifiers, and
/// the main module's own URL) or a built-in (`cloudflare:workers`,
/// `cloudflare:workflows`); anything else is refused with a message that
/// names the specifier. Pure.
pub fn resolve_specifier(specifier: &str, referrer: &str) -> Result<ModuleSpecifier, JsErrorBox> {
    if builtin_source(specifier).is_some() {
        return Ok(ModuleSpecifier::parse(specifier).expect("a valid URL"));
    }
    let relative = specifier.starts_with("./") || specifier.starts_with("../") || specifier.starts_with('/');
    let url = if relative {
        // No colons in module paths: the url crate (2.5) panics joining some
        // relative paths with colons onto file URLs (found by fuzzing), and
        // a panic here would end the node, not the import.
        if specifier.contains(':') {
            return Err(JsErrorBox::type_error(format!(
                "cannot import \"{specifier}\": {}",
                BundlePathError::BadSegment
            )));
        }
        let joined = std::panic::catch_unwind(|| deno_core::resolve_import(specifier, referrer));
        joined
            .map_err(|_| JsErrorBox::type_error(format!("cannot import \"{specifier}\": not a valid module path")))?
            .map_err(JsErrorBox::from_err)?
    } else {
        // The main module itself arrives as its bundle URL.
        match ModuleSpecifier::parse(specifier) {
            Ok(url) if url.as_str().starts_with(BUNDLE_URL) => url,
            _ => {
                return Err(JsErrorBox::type_error(format!(
                    "cannot import \"{specifier}\": a worker imports only files of its bundle by relative path (\"./x.js\"); remote URLs, packages and runtime built-ins are not available"
                )))
            }
        }
    };
    match bundle_relative_path(&url) {
        Ok(_) => Ok(url),
        Err(err) => Err(JsErrorBox::type_error(format!("cannot import \"{specifier}\": {err}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_extensions() {
        assert_eq!(ModuleKind::from_path(Path::new("a/b.mjs")), Some(ModuleKind::JavaScript));
        assert_eq!(ModuleKind::from_path(Path::new("x.HTML")), Some(ModuleKind::Text));
        assert_eq!(ModuleKind::from_path(Path::new("x.wasm")), Some(ModuleKind::Wasm));
        assert_eq!(ModuleKind::from_path(Path::new("x.ts")), None);
        assert_eq!(ModuleKind::from_path(Path::new("Makefile")), None);
    }

    #[test]
    fn json_is_validated_and_parsed_at_run_time() {
        let source = data_module_source(ModuleKind::Json, "file:///w/a.json", br#"{"__proto__": 1}"#).unwrap();
        assert_eq!(source, r#"export default JSON.parse("{\"__proto__\": 1}");"#);
        let err = data_module_source(ModuleKind::Json, "file:///w/a.json", b"{oops").unwrap_err();
        assert!(err.contains("not valid JSON"), "{err}");
    }

    #[test]
    fn text_is_escaped_into_a_string_literal() {
        let source =
            data_module_source(ModuleKind::Text, "file:///w/a.txt", "a\"b\n\u{2028}</script>".as_bytes()).unwrap();
        assert_eq!(source, "export default \"a\\\"b\\n\u{2028}</script>\";");
        assert!(data_module_source(ModuleKind::Text, "file:///w/a.txt", &[0xff, 0xfe]).is_err());
    }

    #[test]
    fn bundle_cannot_be_escaped() {
        let main = "file:///bundle/index.js";
        let resolve = |specifier: &str| resolve_specifier(specifier, main);
        assert_eq!(resolve("./lib/x.js").unwrap().as_str(), "file:///bundle/lib/x.js");
        assert!(resolve("../app2/x.js").is_err());
        assert!(resolve("https://example.com/x.js").is_err());
        assert!(resolve("node:fs").is_err());
        assert!(resolve("cloudflare:workers").is_ok());
        assert!(resolve("cloudflare:workflows").is_ok());
        assert!(resolve("cloudflare:sockets").is_err());
        assert!(resolve("lodash").is_err());
        assert!(resolve("file:///etc/passwd").is_err());
        assert!(resolve("/etc/passwd").is_err(), "an absolute path is relative to the host's root");
        // Encoded separators and dots never climb out.
        for sneaky in [
            "./..%2f..%2fother%2fconfig.json",
            "./..%2Fvictim%2Fworker.js",
            "./%2e%2e/x.js",
            "./.%2e/x.js",
            "./a%5c..%5c..%5cx.js",
            "./x%00.js",
            "./a//b.js",
            "./%zz.js",
        ] {
            assert!(resolve(sneaky).is_err(), "{sneaky} resolved");
        }
        assert!(resolve("./caf%C3%A9.js").is_ok(), "an encoded name that is a plain name is fine");
    }

    #[test]
    fn bundle_urls_and_paths_round_trip() {
        for relative in ["worker.js", "src/a b/c.mjs", "café/x.json", "100%.txt", "a#b.js"] {
            let url = bundle_url(Path::new(relative));
            assert!(url.as_str().starts_with(BUNDLE_URL), "{url}");
            assert_eq!(bundle_relative_path(&url).unwrap(), PathBuf::from(relative), "{url}");
        }
        let url = ModuleSpecifier::parse("file:///bundle/x.js?v=1#frag").unwrap();
        assert_eq!(bundle_relative_path(&url).unwrap(), PathBuf::from("x.js"));
    }

    #[test]
    fn a_symlink_out_of_the_bundle_is_not_found() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret.json"), "{\"secret\": 1}").unwrap();
        let bundle = tempfile::tempdir().unwrap();
        let root = bundle.path().canonicalize().unwrap();
        std::fs::write(root.join("inside.json"), "{}").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret.json"), root.join("link.json")).unwrap();
        std::os::unix::fs::symlink(root.join("inside.json"), root.join("alias.json")).unwrap();
        let loader = BundleLoader::new(root, WasmSources::default());
        assert!(loader.read(Path::new("inside.json")).is_some());
        assert!(loader.read(Path::new("alias.json")).is_some(), "a symlink inside the bundle is followed");
        assert!(loader.read(Path::new("link.json")).is_none(), "a symlink out of the bundle is refused");
        assert!(loader.read(Path::new("missing.json")).is_none());
    }
}
