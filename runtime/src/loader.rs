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

use crate::ext::ops::WasmSources;

/// The one built-in module workers may import: the base classes of
/// Cloudflare's runtime API (`DurableObject`, `WorkerEntrypoint`,
/// `RpcTarget`), which the bootstrap leaves under a symbol.
const CLOUDFLARE_WORKERS: &str = "cloudflare:workers";
const CLOUDFLARE_WORKERS_SOURCE: &str = r#"const api = globalThis[Symbol.for("outpost.cloudflareWorkers")];
export const DurableObject = api.DurableObject;
export const WorkerEntrypoint = api.WorkerEntrypoint;
export const RpcTarget = api.RpcTarget;
"#;

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

/// Loads modules from the bundle directory.
pub struct BundleLoader {
    root: PathBuf,
    root_url: ModuleSpecifier,
    wasm: WasmSources,
}

impl BundleLoader {
    /// `root` must be canonical (absolute, symlinks resolved).
    pub fn new(root: PathBuf, wasm: WasmSources) -> Self {
        let root_url = ModuleSpecifier::from_directory_path(&root).expect("the bundle root is absolute");
        Self { root, root_url, wasm }
    }

    fn load_file(
        &self,
        url: &ModuleSpecifier,
        referrer: Option<&ModuleLoadReferrer>,
    ) -> Result<ModuleSource, JsErrorBox> {
        let path = url
            .to_file_path()
            .map_err(|()| JsErrorBox::generic(format!("cannot load {url}: not a file of the bundle")))?;
        let kind = ModuleKind::from_path(&path).ok_or_else(|| {
            JsErrorBox::type_error(format!(
                "cannot import {}: unsupported module type (supported: {})",
                self.display(&path),
                ModuleKind::SUPPORTED
            ))
        })?;
        let bytes = std::fs::read(&path).map_err(|err| {
            let what = if err.kind() == std::io::ErrorKind::NotFound {
                "module not found".to_string()
            } else {
                err.to_string()
            };
            let imported_at = referrer.map_or(String::new(), |referrer| {
                let file =
                    referrer.specifier.to_file_path().map_or(referrer.specifier.to_string(), |p| self.display(&p));
                format!(" (imported at {file}:{}:{})", referrer.line_number, referrer.column_number)
            });
            JsErrorBox::new("NotFound", format!("cannot load {}{imported_at}: {what}", self.display(&path)))
        })?;
        let source = data_module_source(kind, url.as_str(), &bytes).map_err(JsErrorBox::type_error)?;
        if kind == ModuleKind::Wasm {
            self.wasm.0.borrow_mut().insert(url.to_string(), Bytes::from(bytes));
        }
        Ok(ModuleSource::new(ModuleType::JavaScript, ModuleSourceCode::String(source.into()), url, None))
    }

    /// A path as the worker's author knows it: relative to the bundle.
    fn display(&self, path: &Path) -> String {
        path.strip_prefix(&self.root).unwrap_or(path).display().to_string()
    }
}

impl ModuleLoader for BundleLoader {
    fn resolve(&self, specifier: &str, referrer: &str, _kind: ResolutionKind) -> Result<ModuleSpecifier, JsErrorBox> {
        if specifier == CLOUDFLARE_WORKERS {
            return Ok(ModuleSpecifier::parse(CLOUDFLARE_WORKERS).expect("a valid URL"));
        }
        let relative = specifier.starts_with("./") || specifier.starts_with("../") || specifier.starts_with('/');
        if !relative {
            // The main module itself arrives as an absolute file URL.
            if let Ok(url) = ModuleSpecifier::parse(specifier) {
                if url.scheme() == "file" && url.as_str().starts_with(self.root_url.as_str()) {
                    return Ok(url);
                }
            }
            return Err(JsErrorBox::type_error(format!(
                "cannot import \"{specifier}\": a worker imports only files of its bundle by relative path (\"./x.js\"); remote URLs, packages and runtime built-ins are not available"
            )));
        }
        let url = deno_core::resolve_import(specifier, referrer).map_err(JsErrorBox::from_err)?;
        if !url.as_str().starts_with(self.root_url.as_str()) {
            return Err(JsErrorBox::type_error(format!(
                "cannot import \"{specifier}\": it is outside the worker's directory"
            )));
        }
        Ok(url)
    }

    fn load(
        &self,
        specifier: &ModuleSpecifier,
        referrer: Option<&ModuleLoadReferrer>,
        _options: ModuleLoadOptions,
    ) -> ModuleLoadResponse {
        if specifier.as_str() == CLOUDFLARE_WORKERS {
            return ModuleLoadResponse::Sync(Ok(ModuleSource::new(
                ModuleType::JavaScript,
                ModuleSourceCode::String(CLOUDFLARE_WORKERS_SOURCE.to_string().into()),
                specifier,
                None,
            )));
        }
        ModuleLoadResponse::Sync(self.load_file(specifier, referrer))
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
        let loader = BundleLoader::new(PathBuf::from("/w/app"), WasmSources::default());
        let main = "file:///w/app/index.js";
        assert!(loader.resolve("./lib/x.js", main, ResolutionKind::Import).is_ok());
        assert!(loader.resolve("../app2/x.js", main, ResolutionKind::Import).is_err());
        assert!(loader.resolve("https://example.com/x.js", main, ResolutionKind::Import).is_err());
        assert!(loader.resolve("node:fs", main, ResolutionKind::Import).is_err());
        assert!(loader.resolve("cloudflare:workers", main, ResolutionKind::Import).is_ok());
        assert!(loader.resolve("cloudflare:sockets", main, ResolutionKind::Import).is_err());
        assert!(loader.resolve("lodash", main, ResolutionKind::Import).is_err());
        assert!(loader.resolve("file:///etc/passwd", main, ResolutionKind::Import).is_err());
    }
}
