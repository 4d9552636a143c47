//! Builds the bootstrap snapshot: the isolate state right after
//! `js/bootstrap.js` ran, with every web API loaded. Every isolate of every
//! worker starts from it.

#[allow(dead_code)] // the library uses more of it than the snapshot build
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
    for path in output.files_loaded_during_snapshot {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    println!("cargo:rerun-if-changed=src/ext");
}
