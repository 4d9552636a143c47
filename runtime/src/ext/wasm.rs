//! Bundled `.wasm` modules: compiled by the runtime on import, never from
//! bytes a worker makes (as on Cloudflare).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use bytes::Bytes;
use deno_core::{op2, v8};
use deno_error::JsErrorBox;

/// The bytes of the bundle's `.wasm` modules, by URL, filled in by the module
/// loader and compiled on import by [`op_outpost_wasm_module`].
#[derive(Clone, Default)]
pub struct WasmSources(pub Rc<RefCell<HashMap<String, Bytes>>>);

thread_local! {
    /// Whether wasm may be compiled from bytes right now. Workers may not do
    /// it (as on Cloudflare); only the runtime does, for bundled modules.
    static WASM_CODEGEN_ALLOWED: Cell<bool> = const { Cell::new(false) };
}

/// V8 asks this before compiling wasm from bytes.
pub unsafe extern "C" fn allow_wasm_code_generation(
    _context: v8::Local<v8::Context>,
    _source: v8::Local<v8::String>,
) -> bool {
    WASM_CODEGEN_ALLOWED.with(Cell::get)
}

/// Compiles a `.wasm` module of the bundle into a `WebAssembly.Module`.
#[op2]
pub fn op_outpost_wasm_module<'s>(
    scope: &mut v8::PinScope<'s, '_>,
    #[string] url: &str,
) -> Result<v8::Local<'s, v8::Value>, JsErrorBox> {
    let state = deno_core::JsRuntime::op_state_from(scope);
    let bytes = state
        .borrow()
        .try_borrow::<WasmSources>()
        .and_then(|sources| sources.0.borrow().get(url).cloned())
        .ok_or_else(|| JsErrorBox::type_error(format!("no wasm module {url} in this worker's bundle")))?;
    WASM_CODEGEN_ALLOWED.with(|allowed| allowed.set(true));
    let module = v8::WasmModuleObject::compile(scope, &bytes);
    WASM_CODEGEN_ALLOWED.with(|allowed| allowed.set(false));
    module
        .map(Into::into)
        .ok_or_else(|| JsErrorBox::new("CompileError", format!("{url} is not a valid WebAssembly module")))
}
