//! Builds the bootstrap snapshot: the isolate state right after the
//! bootstrap modules (`js/`, then each binding kind's) ran, with every web
//! API loaded. Every isolate of every worker starts from it.

#[allow(dead_code, unused_imports)] // the library uses more of it than the snapshot build
#[path = "src/ext/mod.rs"]
mod ext;

use std::path::PathBuf;

fn main() {
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let output = deno_core::snapshot::create_snapshot(
        deno_core::snapshot::CreateSnapshotOptions {
            cargo_manifest_dir: env!("CARGO_MANIFEST_DIR"),
            startup_snapshot: None,
            skip_op_registration: false,
            extensions: ext::extensions(ext::ExtensionOptions::default()),
            extension_transpiler: None,
            with_runtime_cb: None,
        },
        None,
    )
    .expect("the bootstrap snapshot builds");
    std::fs::write(out_dir.join("BOOTSTRAP_SNAPSHOT.bin"), &output.output).expect("OUT_DIR is writable");
    // FNV-1a of the snapshot, computed here so processes need not hash it.
    let fingerprint = output
        .output
        .iter()
        .fold(0xcbf29ce484222325u64, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x100000001b3));
    std::fs::write(out_dir.join("BOOTSTRAP_FINGERPRINT"), format!("{fingerprint:016x}")).expect("OUT_DIR is writable");
    embed_extension_sources(&out_dir);
    for path in output.files_loaded_during_snapshot {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    println!("cargo:rerun-if-changed=src/ext");
}

/// Per-worker snapshots are made at run time, from scratch, where the cargo
/// registry that `include_js_files!` points into may not exist: keep a copy
/// of every extension source in the binary for them.
fn embed_extension_sources(out_dir: &std::path::Path) {
    use deno_core::ExtensionFileSourceCode;
    let dir = out_dir.join("ext_sources");
    std::fs::create_dir_all(&dir).expect("OUT_DIR is writable");
    let mut table = String::from("pub(crate) static EXTENSION_SOURCES: &[(&str, &str)] = &[\n");
    let mut index = 0;
    for extension in ext::extensions(ext::ExtensionOptions::default()) {
        let lists = [
            &extension.js_files,
            &extension.esm_files,
            &extension.lazy_loaded_js_files,
            &extension.lazy_loaded_esm_files,
        ];
        for file in lists.into_iter().flat_map(|list| list.iter()) {
            #[allow(deprecated, reason = "matching every variant")]
            let text = match &file.code {
                ExtensionFileSourceCode::LoadedFromFsDuringSnapshot(path) => {
                    std::fs::read_to_string(path).expect("extension source readable")
                }
                ExtensionFileSourceCode::LoadedFromMemoryDuringSnapshot(code)
                | ExtensionFileSourceCode::IncludedInBinary(code) => code.as_str().to_string(),
                ExtensionFileSourceCode::Computed(code) => code.to_string(),
            };
            std::fs::write(dir.join(format!("{index}.js")), text).expect("OUT_DIR is writable");
            table.push_str(&format!(
                "    ({:?}, include_str!(concat!(env!(\"OUT_DIR\"), \"/ext_sources/{index}.js\"))),\n",
                file.specifier
            ));
            index += 1;
        }
    }
    table.push_str("];\n");
    std::fs::write(out_dir.join("ext_sources.rs"), table).expect("OUT_DIR is writable");
}
