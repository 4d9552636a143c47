//! One isolate running one worker: created from a snapshot, the worker's
//! modules loaded (or restored), then serving requests from a queue.
//!
//! Isolates are *parked* between uses: V8 isolates are entered on creation
//! and must otherwise be dropped in reverse order of creation on a thread.
//! A thread here keeps many isolates and drops them in any order, so every
//! isolate is exited right after creation and entered only while one of its
//! futures is being polled ([`Entered`]), and again for its drop.

use std::cell::Cell;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

use deno_core::{v8, JsRuntime, ModuleSpecifier, PollEventLoopOptions, RuntimeOptions};

use crate::ext::bindings::{install_all, BindingServices, Bindings};
use crate::ext::console::{SharedLogBudget, WorkerName};
use crate::ext::events::{AbortReason, EventQueue};
use crate::ext::http::DispatchError;
use crate::ext::wasm::{allow_wasm_code_generation, WasmSources};
use crate::ext::websocket::IsolateSignals;
use crate::ext::{extensions, ExtensionOptions};
use crate::loader::BundleLoader;

pub(crate) static BOOTSTRAP_SNAPSHOT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/BOOTSTRAP_SNAPSHOT.bin"));

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

    /// The main module's URL as the worker sees it (under
    /// [`crate::loader::BUNDLE_URL`], not the node's path).
    pub(crate) fn main_url(&self) -> ModuleSpecifier {
        crate::loader::bundle_url(self.main.strip_prefix(&self.root).expect("main is inside root"))
    }
}

/// How an isolate gets the worker's code.
#[derive(Clone, Copy)]
pub enum WorkerCode {
    /// Start from the bootstrap snapshot and evaluate the modules.
    Evaluate,
    /// Start from a per-worker snapshot (see [`crate::snapshot`]), in which
    /// the modules are already evaluated.
    Snapshot(&'static [u8]),
}

/// What a worker is started with besides its code.
#[derive(Debug, Clone, Default)]
pub struct WorkerOptions {
    /// The worker's name, in its log lines.
    pub name: String,
    /// Plain variables, the worker's `env`.
    pub vars: serde_json::Map<String, serde_json::Value>,
    /// Largest V8 heap of one isolate, in bytes; `None` is V8's default.
    pub heap_limit_bytes: Option<usize>,
    /// Subrequests one invocation may make; 0 is no limit.
    pub subrequests: u64,
    /// What the worker finds on `env` besides `vars`, in order.
    pub bindings: Bindings,
    /// What the node lends the bindings (the store, the router of object
    /// calls), by type.
    pub services: BindingServices,
    /// Shared with whoever runs the isolate (the pool): open WebSockets and
    /// retirement.
    pub signals: Arc<IsolateSignals>,
    /// How much the worker may log, shared by all its isolates.
    pub log_budget: SharedLogBudget,
    /// Where the worker's `fetch` may connect.
    pub egress: crate::egress::Egress,
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
    #[error(transparent)]
    Binding(#[from] crate::ext::bindings::BindingError),
}

/// Why an isolate stopped serving.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// Execution was terminated from outside (a limit) or the heap ran out.
    #[error("the isolate was terminated")]
    Terminated,
    #[error("the worker's event loop failed: {0}")]
    EventLoop(String),
}

/// Installs the V8 platform. Call once, from the main thread, before any
/// isolate is created.
pub fn init_v8() {
    JsRuntime::init_platform(None);
    // aws-lc (behind WebCrypto) seeds its random generator once per process
    // by sampling CPU jitter, about 50 ms of CPU: paid here, at start, not
    // by the first worker that asks for a random key inside its CPU budget.
    let mut seed_probe = [0u8; 16];
    let _ = aws_lc_rs::rand::fill(&mut seed_probe);
}

/// The receiving end of an isolate's event queue.
pub type EventReceiver = Rc<EventQueue>;

/// A worker's isolate. `!Send`: it lives on the thread that made it.
pub struct WorkerIsolate {
    // Handles into the isolate go before the runtime: fields drop in order.
    prepare: Option<v8::Global<v8::Function>>,
    serve: Option<v8::Global<v8::Function>>,
    runtime: JsRuntime,
    isolate: v8::UnsafeRawIsolatePtr,
    code: WorkerCode,
    main: ModuleSpecifier,
    vars: serde_json::Map<String, serde_json::Value>,
    /// `[{ name, kind, ... }]` for the bootstrap's `prepare`.
    bindings_json: String,
    /// `{ subrequests }` for the bootstrap's `prepare`.
    limits_json: String,
    abort_reason: AbortReason,
    heap_limit_hit: Rc<Cell<bool>>,
    buffer_budget: Option<Arc<crate::memory::BufferBudget>>,
}

/// The internal script that takes the bootstrap's entry point and hides the
/// runtime's globals from the worker. It returns `[prepare, restore]`:
/// `restore` puts them back, which a snapshot needs (deno_core reads
/// `Deno.core` when it restores one).
const TAKE_ENTRY_POINT: &str = r#"(() => {
  const prepare = globalThis.__outpostPrepare;
  const deno = globalThis.Deno;
  delete globalThis.__outpostPrepare;
  delete globalThis.Deno;
  delete globalThis.__bootstrap;
  const restore = () => {
    Object.defineProperty(globalThis, "__outpostPrepare", { value: prepare, configurable: true });
    Object.defineProperty(globalThis, "Deno", { value: deno, configurable: true, writable: true });
  };
  return [prepare, restore];
})()"#;

/// `snapshot: None` builds the runtime from scratch (to snapshot it).
pub(crate) fn runtime_options(
    root: &Path,
    wasm: WasmSources,
    snapshot: Option<&'static [u8]>,
    egress: crate::egress::Egress,
) -> RuntimeOptions {
    let (fetch_resolver, fetch_request_hook) = crate::egress::fetch_checks(egress);
    RuntimeOptions {
        startup_snapshot: snapshot,
        extensions: extensions(ExtensionOptions {
            user_agent: "Outpost-Workers".into(),
            fetch_resolver,
            fetch_request_hook,
        }),
        module_loader: Some(Rc::new(BundleLoader::new(root.to_path_buf(), wasm))),
        ..Default::default()
    }
}

/// Puts what the worker's ops need into a new runtime's state.
pub(crate) fn install_op_state(
    runtime: &mut JsRuntime,
    name: &str,
    wasm: WasmSources,
    queue: Option<EventReceiver>,
    egress: crate::egress::Egress,
) {
    let op_state = runtime.op_state();
    let mut op_state = op_state.borrow_mut();
    op_state.put(WorkerName(Arc::from(name)));
    if let Some(queue) = queue {
        op_state.put(queue);
    }
    op_state.put(wasm);
    op_state.put(AbortReason::default());
    op_state.put(crate::egress::permissions(egress));
}

/// Applies Cloudflare's rules (no code from strings, no wasm from raw bytes)
/// and takes the bootstrap's entry point. Returns `(prepare, restore)`.
pub(crate) fn lock_down(runtime: &mut JsRuntime) -> (v8::Global<v8::Function>, v8::Global<v8::Function>) {
    runtime.v8_isolate().set_allow_wasm_code_generation_callback(allow_wasm_code_generation);
    // A blocked thread uses no CPU, so no CPU limit would ever free it: as
    // on Cloudflare, `Atomics.wait` throws instead of blocking.
    runtime.v8_isolate().set_allow_atomics_wait(false);
    deno_core::scope!(scope, runtime);
    scope.get_current_context().set_allow_generation_from_strings(false);
    let code = v8::String::new(scope, TAKE_ENTRY_POINT).expect("short string");
    let script = v8::Script::compile(scope, code, None).expect("internal script compiles");
    let value = script.run(scope).expect("internal script runs");
    let pair = v8::Local::<v8::Array>::try_from(value).expect("an array");
    let function = |index| {
        let value = pair.get_index(scope, index).expect("two elements");
        v8::Global::new(scope, v8::Local::<v8::Function>::try_from(value).expect("a function"))
    };
    (function(0), function(1))
}

impl WorkerIsolate {
    /// Creates the isolate (synchronously) and leaves it parked. Call
    /// [`load`](Self::load) next. Must run inside a tokio runtime.
    pub fn new(
        source: &WorkerSource,
        code: WorkerCode,
        options: &WorkerOptions,
        queue: EventReceiver,
    ) -> Result<Self, LoadError> {
        let wasm = WasmSources::default();
        let snapshot = match code {
            WorkerCode::Evaluate => BOOTSTRAP_SNAPSHOT,
            WorkerCode::Snapshot(snapshot) => snapshot,
        };
        let mut runtime_options = runtime_options(&source.root, wasm.clone(), Some(snapshot), options.egress);
        let mut buffer_budget = None;
        if let Some(limit) = options.heap_limit_bytes {
            // ArrayBuffer contents live outside the heap: they get a budget
            // of the same size of their own.
            let (allocator, budget) = crate::memory::limited_allocator(limit);
            buffer_budget = Some(budget);
            runtime_options.create_params =
                Some(v8::CreateParams::default().heap_limits(0, limit).array_buffer_allocator(allocator));
        }
        let mut runtime = JsRuntime::try_new(runtime_options).map_err(|err| LoadError::Runtime(err.to_string()))?;
        install_op_state(&mut runtime, &options.name, wasm, Some(queue), options.egress);
        let bindings_json = {
            let op_state = runtime.op_state();
            let mut op_state = op_state.borrow_mut();
            op_state.put(options.signals.clone());
            op_state.put(options.log_budget.clone());
            install_all(&mut op_state, &options.name, &options.bindings, &options.services)?.to_string()
        };
        let abort_reason = runtime.op_state().borrow().borrow::<AbortReason>().clone();

        // Near the heap limit: stop the isolate, and give V8 room to unwind
        // instead of aborting the process.
        let heap_limit_hit = Rc::new(Cell::new(false));
        let handle = runtime.v8_isolate().thread_safe_handle();
        let hit = heap_limit_hit.clone();
        runtime.add_near_heap_limit_callback(move |current, _initial| {
            hit.set(true);
            handle.terminate_execution();
            current + current / 2
        });

        let (prepare, restore) = lock_down(&mut runtime);
        drop(restore);
        // The C++ isolate's address: stable, unlike the Rust handle, which
        // moves with the runtime.
        // SAFETY: the pointer is only used while the runtime is alive.
        let isolate = unsafe { runtime.v8_isolate().as_raw_isolate_ptr() };
        // Park: creation entered the isolate; from now on only polls do.
        // SAFETY: the isolate was entered by its creation on this thread.
        unsafe { exit(isolate) };
        Ok(Self {
            prepare: Some(prepare),
            serve: None,
            runtime,
            isolate,
            code,
            main: source.main_url(),
            vars: options.vars.clone(),
            bindings_json,
            limits_json: serde_json::json!({ "subrequests": options.subrequests }).to_string(),
            abort_reason,
            heap_limit_hit,
            buffer_budget,
        })
    }

    /// Loads (or, from a worker snapshot, finds) the worker's modules and its
    /// handlers. A worker without any handler fails here, not on its first
    /// event.
    pub async fn load(&mut self) -> Result<(), LoadError> {
        let isolate = self.isolate;
        Entered { isolate, inner: Box::pin(self.load_inner()) }.await
    }

    async fn load_inner(&mut self) -> Result<(), LoadError> {
        let runtime = &mut self.runtime;
        // From a worker snapshot, this finds the already evaluated module;
        // evaluating it again is a no-op.
        let module_id =
            runtime.load_main_es_module(&self.main).await.map_err(|err| LoadError::Module(err.to_string()))?;
        if matches!(self.code, WorkerCode::Evaluate) {
            let evaluation = runtime.mod_evaluate(module_id);
            runtime
                .with_event_loop_promise(Box::pin(evaluation), PollEventLoopOptions::default())
                .await
                .map_err(|err| LoadError::Module(err.to_string()))?;
        }
        let namespace = runtime.get_module_namespace(module_id).map_err(|err| LoadError::Module(err.to_string()))?;
        let env_json = serde_json::Value::Object(std::mem::take(&mut self.vars)).to_string();
        let args = {
            deno_core::scope!(scope, runtime);
            let namespace: v8::Local<v8::Value> = v8::Local::new(scope, namespace).into();
            let env_json: v8::Local<v8::Value> = v8::String::new(scope, &env_json).expect("env fits a string").into();
            let bindings_json: v8::Local<v8::Value> =
                v8::String::new(scope, &self.bindings_json).expect("bindings fit a string").into();
            let limits_json: v8::Local<v8::Value> =
                v8::String::new(scope, &self.limits_json).expect("limits fit a string").into();
            [
                v8::Global::new(scope, namespace),
                v8::Global::new(scope, env_json),
                v8::Global::new(scope, bindings_json),
                v8::Global::new(scope, limits_json),
            ]
        };
        let prepare = self.prepare.take().expect("load runs once");
        let serve = runtime
            .call_with_args(&prepare, &args)
            .await
            .map_err(|err| LoadError::NoHandler(err.exception_message.clone()))?;
        let serve = {
            deno_core::scope!(scope, runtime);
            let serve = v8::Local::new(scope, serve);
            v8::Global::new(scope, v8::Local::<v8::Function>::try_from(serve).expect("prepare returns a function"))
        };
        self.serve = Some(serve);
        Ok(())
    }

    /// Serves events from the queue until it closes and outstanding
    /// `waitUntil()` work has settled, or until the isolate is terminated.
    pub async fn serve(&mut self) -> Result<(), ServeError> {
        let isolate = self.isolate;
        Entered { isolate, inner: Box::pin(self.serve_inner()) }.await
    }

    async fn serve_inner(&mut self) -> Result<(), ServeError> {
        let serve = self.serve.take().expect("serve runs once, after load");
        let call = self.runtime.call_with_args(&serve, &[]);
        drop(serve);
        let result = self.runtime.with_event_loop_promise(Box::pin(call), PollEventLoopOptions::default()).await;
        match result {
            Ok(_) => Ok(()),
            Err(_) if self.runtime.v8_isolate().is_execution_terminating() || self.heap_limit_hit.get() => {
                Err(ServeError::Terminated)
            }
            Err(err) => Err(ServeError::EventLoop(err.to_string())),
        }
    }

    /// A handle that stops this isolate's JavaScript from any thread.
    pub fn thread_safe_handle(&mut self) -> v8::IsolateHandle {
        self.runtime.v8_isolate().thread_safe_handle()
    }

    /// Set once the isolate hits its heap limit (and is terminated for it).
    pub fn heap_limit_flag(&self) -> Rc<Cell<bool>> {
        self.heap_limit_hit.clone()
    }

    /// Whether the ArrayBuffer budget refused an allocation within `window`:
    /// V8 answers a refusal with garbage collections, so CPU used right
    /// after one is the memory limit at work.
    pub fn buffers_refused_within(&self, window: std::time::Duration) -> bool {
        self.buffer_budget.as_ref().is_some_and(|budget| budget.refused_within(window))
    }

    /// What requests still in flight are answered with when the isolate is
    /// dropped (instead of the generic [`DispatchError::WorkerGone`]).
    pub fn set_abort_reason(&self, reason: DispatchError) {
        *self.abort_reason.0.borrow_mut() = Some(reason);
    }

    /// Bytes of V8 heap in use.
    pub fn used_heap_bytes(&mut self) -> usize {
        // SAFETY: balanced enter/exit on the isolate's own thread.
        unsafe { enter(self.isolate) };
        let used = self.runtime.v8_isolate().get_heap_statistics().used_heap_size();
        unsafe { exit(self.isolate) };
        used
    }
}

impl Drop for WorkerIsolate {
    fn drop(&mut self) {
        // The runtime's isolate must be the entered one when it is disposed;
        // its own drop exits it again.
        // SAFETY: the isolate is alive (the runtime drops after this) and
        // parked, and this is its thread.
        unsafe { enter(self.isolate) };
        // A termination may still be requested but not yet taken (the
        // watchdog can fire between two slices): the teardown must not run
        // into it.
        self.runtime.v8_isolate().cancel_terminate_execution();
    }
}

/// Polls `inner` with `isolate` entered, so that several parked isolates can
/// take turns on one thread.
pub(crate) struct Entered<F> {
    pub(crate) isolate: v8::UnsafeRawIsolatePtr,
    pub(crate) inner: Pin<Box<F>>,
}

/// # Safety
/// `isolate` must be alive and belong to this thread.
unsafe fn enter(isolate: v8::UnsafeRawIsolatePtr) {
    unsafe { v8::Isolate::from_raw_isolate_ptr(isolate).enter() }
}

/// # Safety
/// `isolate` must be alive, belong to this thread and be entered.
unsafe fn exit(isolate: v8::UnsafeRawIsolatePtr) {
    unsafe { v8::Isolate::from_raw_isolate_ptr(isolate).exit() }
}

impl<F: Future> Future for Entered<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let isolate = self.isolate;
        // SAFETY: the isolate outlives the future (which borrows its owner),
        // and enter/exit are balanced on this thread.
        unsafe { enter(isolate) };
        let result = self.inner.as_mut().poll(cx);
        unsafe { exit(isolate) };
        result
    }
}
