//! One isolate running one worker: created from the bootstrap snapshot, the
//! worker's modules loaded and evaluated, then serving requests from a queue.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use deno_core::{v8, JsRuntime, ModuleSpecifier, PollEventLoopOptions, RuntimeOptions};
use tokio::sync::{mpsc, Mutex};

use crate::ext::http::WorkerRequest;
use crate::ext::ops::{allow_wasm_code_generation, RequestQueue, WasmSources, WorkerName};
use crate::ext::{extensions, ExtensionOptions};
use crate::loader::BundleLoader;

static BOOTSTRAP_SNAPSHOT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/BOOTSTRAP_SNAPSHOT.bin"));

/// Where a worker's code is: a directory and its main module inside it.
#[derive(Debug, Clone)]
pub struct WorkerSource {
    /// The bundle directory; imports cannot leave it.
    pub root: PathBuf,
    /// The main module, inside `root`.
    pub main: PathBuf,
}

impl WorkerSource {
    /// Canonicalizes both paths and checks that `main` is inside `root`.
    pub fn new(root: &Path, main: &Path) -> Result<Self, LoadError> {
        let canonical =
            |path: &Path| path.canonicalize().map_err(|source| LoadError::Io { path: path.to_path_buf(), source });
        let root = canonical(root)?;
        let main = canonical(main)?;
        if !main.starts_with(&root) {
            return Err(LoadError::MainOutsideRoot { main, root });
        }
        Ok(Self { root, main })
    }
}

/// What a worker is started with besides its code.
#[derive(Debug, Clone, Default)]
pub struct WorkerOptions {
    /// The worker's name, in its log lines.
    pub name: String,
    /// Plain variables, the worker's `env`.
    pub vars: serde_json::Map<String, serde_json::Value>,
}

/// Why a worker could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the main module {} is not inside the worker's directory {}", main.display(), root.display())]
    MainOutsideRoot { main: PathBuf, root: PathBuf },
    /// A syntax error, a bad import, or an exception at the module's top
    /// level. The message names the file, line and column.
    #[error("{0}")]
    Module(String),
    /// The modules loaded, but there is nothing to serve requests with.
    #[error("{0}")]
    NoHandler(String),
    #[error("the runtime failed to start: {0}")]
    Runtime(String),
}

/// Why an isolate stopped serving.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    #[error("the worker's event loop failed: {0}")]
    EventLoop(String),
}

/// Installs the V8 platform. Call once, from the main thread, before any
/// isolate is created.
pub fn init_v8() {
    JsRuntime::init_platform(None);
}

/// A worker's isolate, loaded and ready to serve. `!Send`: it lives on the
/// thread that made it.
pub struct WorkerIsolate {
    runtime: JsRuntime,
    serve: v8::Global<v8::Function>,
}

/// The receiving end of a worker's request queue, shared by successive
/// isolates of the same worker.
pub type RequestReceiver = Rc<RequestQueue>;

/// Makes a request queue: the sender goes to whoever routes requests, the
/// receiver to the isolate(s).
pub fn request_queue() -> (mpsc::UnboundedSender<WorkerRequest>, RequestReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    (tx, Rc::new(RequestQueue(Mutex::new(rx))))
}

impl WorkerIsolate {
    /// Creates an isolate from the bootstrap snapshot and evaluates the
    /// worker's modules in it. Must run inside a tokio runtime.
    pub async fn load(
        source: &WorkerSource,
        options: &WorkerOptions,
        queue: RequestReceiver,
    ) -> Result<Self, LoadError> {
        let wasm = WasmSources::default();
        let loader = BundleLoader::new(source.root.clone(), wasm.clone());
        let mut runtime = JsRuntime::try_new(RuntimeOptions {
            startup_snapshot: Some(BOOTSTRAP_SNAPSHOT),
            extensions: extensions(ExtensionOptions { crypto_seed: None, user_agent: "Outpost-Workers".into() }),
            module_loader: Some(Rc::new(loader)),
            ..Default::default()
        })
        .map_err(|err| LoadError::Runtime(err.to_string()))?;

        {
            let op_state = runtime.op_state();
            let mut op_state = op_state.borrow_mut();
            op_state.put(WorkerName(Arc::from(options.name.as_str())));
            op_state.put(queue);
            op_state.put(wasm);
            op_state.put(deno_permissions::PermissionsContainer::allow_all(Arc::new(
                deno_permissions::RuntimePermissionDescriptorParser::new(sys_traits::impls::RealSys),
            )));
        }

        // Cloudflare's rules: no code from strings, no wasm from raw bytes.
        runtime.v8_isolate().set_allow_wasm_code_generation_callback(allow_wasm_code_generation);
        let prepare = {
            deno_core::scope!(scope, &mut runtime);
            scope.get_current_context().set_allow_generation_from_strings(false);
            // Take the bootstrap's entry point and hide the runtime's
            // internals before any worker code can look.
            let code = "(() => { const prepare = globalThis.__outpostPrepare; delete globalThis.__outpostPrepare; \
                        delete globalThis.Deno; delete globalThis.__bootstrap; return prepare; })()";
            let code = v8::String::new(scope, code).expect("short string");
            let script = v8::Script::compile(scope, code, None).expect("internal script compiles");
            let value = script.run(scope).expect("internal script runs");
            let prepare = v8::Local::<v8::Function>::try_from(value).expect("the bootstrap left its entry point");
            v8::Global::new(scope, prepare)
        };

        let main = ModuleSpecifier::from_file_path(&source.main).expect("the main path is absolute");
        let module_id = runtime.load_main_es_module(&main).await.map_err(|err| LoadError::Module(err.to_string()))?;
        let evaluation = runtime.mod_evaluate(module_id);
        runtime
            .with_event_loop_promise(Box::pin(evaluation), PollEventLoopOptions::default())
            .await
            .map_err(|err| LoadError::Module(err.to_string()))?;

        let namespace = runtime.get_module_namespace(module_id).map_err(|err| LoadError::Module(err.to_string()))?;
        let env_json = serde_json::Value::Object(options.vars.clone()).to_string();
        let args = {
            deno_core::scope!(scope, &mut runtime);
            let namespace: v8::Local<v8::Value> = v8::Local::new(scope, namespace).into();
            let env_json: v8::Local<v8::Value> = v8::String::new(scope, &env_json).expect("env fits a string").into();
            [v8::Global::new(scope, namespace), v8::Global::new(scope, env_json)]
        };
        // `prepare` finds the fetch handler synchronously, so a worker without
        // one fails here, at load, rather than on its first request.
        let serve = runtime
            .call_with_args(&prepare, &args)
            .await
            .map_err(|err| LoadError::NoHandler(err.exception_message.clone()))?;
        let serve = {
            deno_core::scope!(scope, &mut runtime);
            let serve = v8::Local::new(scope, serve);
            let serve = v8::Local::<v8::Function>::try_from(serve).expect("prepare returns the serve function");
            v8::Global::new(scope, serve)
        };
        Ok(Self { runtime, serve })
    }

    /// Serves requests from the queue until it closes and outstanding
    /// `waitUntil()` work has settled.
    pub async fn serve(mut self) -> Result<(), ServeError> {
        let call = self.runtime.call_with_args(&self.serve, &[]);
        self.runtime
            .with_event_loop_promise(Box::pin(call), PollEventLoopOptions::default())
            .await
            .map(|_| ())
            .map_err(|err| ServeError::EventLoop(err.to_string()))
    }
}
