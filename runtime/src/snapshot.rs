//! Per-worker snapshots: the bootstrap snapshot plus the worker's modules,
//! evaluated once, so an isolate of that worker starts with its top-level
//! code already run.
//!
//! V8 fixes its flags for snapshot creation once per process (deno_core
//! sets `--predictable --random-seed=42` for it), so
//! [`create_worker_snapshot`] must run in a process that serves nothing:
//! the isolate pool spawns one for it.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use deno_core::{v8, Extension, ExtensionFileSource, JsRuntimeForSnapshot, PollEventLoopOptions};

use crate::ext::wasm::WasmSources;
use crate::ext::{extensions, ExtensionOptions};
use crate::worker::{install_op_state, lock_down, runtime_options, WorkerSource};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/ext_sources.rs"));
}

/// The runtime's extensions with their JavaScript taken from the copies in
/// this binary rather than from the cargo registry.
fn extensions_with_embedded_sources() -> Vec<Extension> {
    let embedded =
        |specifier: &str| embedded::EXTENSION_SOURCES.iter().find(|(s, _)| *s == specifier).map(|(_, code)| *code);
    let mut extensions = extensions(ExtensionOptions::default());
    for extension in &mut extensions {
        for list in [
            &mut extension.js_files,
            &mut extension.esm_files,
            &mut extension.lazy_loaded_js_files,
            &mut extension.lazy_loaded_esm_files,
        ] {
            let files: Vec<ExtensionFileSource> = list
                .iter()
                .map(|file| match embedded(file.specifier) {
                    Some(code) => ExtensionFileSource::new_computed(file.specifier, Arc::from(code)),
                    None => file.clone(),
                })
                .collect();
            *list = Cow::Owned(files);
        }
    }
    extensions
}

/// How long top-level code (including top-level `await`) may take.
const EVALUATION_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a worker's snapshot could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The worker's modules failed to load or evaluate: a load error, which
    /// the worker would hit without a snapshot as well.
    #[error("{0}")]
    Module(String),
    /// The worker is fine but its evaluated state cannot be snapshotted; the
    /// caller may load it without a per-worker snapshot instead.
    #[error("cannot snapshot the worker: {0}")]
    Unsupported(String),
    #[error("the runtime failed to start: {0}")]
    Runtime(String),
}

/// Evaluates the worker's modules and snapshots the result. Call it in a
/// process of its own, once; it creates its own tokio runtime.
pub fn create_worker_snapshot(source: &WorkerSource) -> Result<Vec<u8>, SnapshotError> {
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| SnapshotError::Runtime(err.to_string()))?;
    let _guard = tokio.enter();
    let wasm = WasmSources::default();
    // From scratch rather than layered on the bootstrap snapshot: V8
    // snapshots of snapshots lose the external strings of the sources.
    let mut options = runtime_options(&source.root, wasm.clone(), None, crate::egress::Egress::Any);
    options.extensions = extensions_with_embedded_sources();
    let mut runtime = JsRuntimeForSnapshot::try_new(options).map_err(|err| SnapshotError::Runtime(err.to_string()))?;
    // Nothing is fetched while snapshotting (pending I/O makes a worker
    // unsnapshottable), and the snapshot child serves nobody.
    install_op_state(&mut runtime, "snapshot", wasm.clone(), None, crate::egress::Egress::Any);
    let (prepare, restore) = lock_down(&mut runtime);
    drop(prepare);

    // A loop at the top level never yields to the timeout below: the
    // isolate is stopped from another thread instead.
    // `evaluating` goes false once the evaluation is over; the watchdog
    // then leaves the isolate alone.
    let evaluating = std::sync::Arc::new(std::sync::Mutex::new(true));
    let timed_out = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = (runtime.v8_isolate().thread_safe_handle(), timed_out.clone(), evaluating.clone());
    std::thread::spawn(move || {
        std::thread::sleep(EVALUATION_TIMEOUT);
        let (handle, timed_out, evaluating) = watchdog;
        let evaluating = evaluating.lock().unwrap();
        if *evaluating {
            timed_out.store(true, std::sync::atomic::Ordering::SeqCst);
            handle.terminate_execution();
        }
    });
    let too_long = || SnapshotError::Unsupported("top-level code did not finish within 10 s".into());
    let main = source.main_url();
    let checked = tokio.block_on(async {
        let module_id =
            runtime.load_main_es_module(&main).await.map_err(|err| SnapshotError::Module(err.to_string()))?;
        let evaluation = runtime.mod_evaluate(module_id);
        let evaluated = tokio::time::timeout(
            EVALUATION_TIMEOUT,
            runtime.with_event_loop_promise(Box::pin(evaluation), PollEventLoopOptions::default()),
        )
        .await
        .map_err(|_| too_long())?;
        {
            let mut running = evaluating.lock().unwrap();
            if timed_out.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(too_long());
            }
            *running = false;
        }
        evaluated.map_err(|err| SnapshotError::Module(err.to_string()))?;
        // A top-level exception does not always fail the evaluation future
        // here (deno_core reports it as a rejection, which the bootstrap
        // handles); importing the module again surfaces it.
        let import = runtime
            .execute_script("outpost:check-main", format!("import({:?})", main.as_str()))
            .map_err(|err| SnapshotError::Module(err.to_string()))?;
        let imported = runtime.resolve(import);
        runtime
            .with_event_loop_promise(Box::pin(imported), PollEventLoopOptions::default())
            .await
            .map_err(|err| SnapshotError::Module(err.to_string()))?;
        // Anything still pending (a timer, a fetch) would never complete in
        // an isolate restored from the snapshot.
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        match runtime.poll_event_loop(&mut cx, PollEventLoopOptions::default()) {
            // An exception at the top level can surface here, after the
            // evaluation promise itself settled.
            std::task::Poll::Ready(Err(err)) => Err(SnapshotError::Module(err.to_string())),
            std::task::Poll::Ready(Ok(())) => Ok(()),
            std::task::Poll::Pending => Err(SnapshotError::Unsupported(
                "top-level code left work pending (a timer, a fetch or another promise waiting on I/O)".into(),
            )),
        }
    });
    if let Err(err) = checked {
        // The process ends next; dropping an unfinished snapshot runtime
        // would only print a warning.
        std::mem::forget(runtime);
        return Err(err);
    }
    if !wasm.0.borrow().is_empty() {
        std::mem::forget(runtime);
        return Err(SnapshotError::Unsupported("V8 cannot snapshot WebAssembly modules".into()));
    }

    // Put back what deno_core reads when restoring, then let go of every
    // handle: a live handle makes V8 abort the snapshot.
    {
        deno_core::scope!(scope, &mut runtime);
        let restore = v8::Local::new(scope, &restore);
        let undefined = v8::undefined(scope).into();
        restore.call(scope, undefined, &[]).expect("restore runs");
    }
    drop(restore);
    Ok(runtime.snapshot().into_vec())
}
