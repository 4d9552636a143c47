//! The `outpost_runtime` deno extension (the ops and the bootstrap modules
//! that turn a bare deno_core isolate into a Cloudflare-style worker) and
//! one extension per binding kind (`bindings/`).
//!
//! This module is compiled twice: into the library, and into `build.rs`,
//! which evaluates the bootstrap once and writes the startup snapshot. Both
//! sides must register the same extensions with the same ops in the same
//! order (V8 external references are indexed by position), so the list lives
//! here, in one place, and this module depends on nothing else in the crate.

pub mod bindings;
pub mod console;
pub mod events;
pub mod http;
pub mod subrequest;
pub mod wasm;
pub mod websocket;

use std::sync::Arc;

use deno_core::Extension;

/// Options a runtime gives the extensions when it starts. The snapshot build
/// uses `Default`: none of these values end up in the snapshot.
#[derive(Clone, Default)]
pub struct ExtensionOptions {
    /// `navigator.userAgent` and the user agent of outbound `fetch`.
    pub user_agent: String,
    /// How outbound `fetch` resolves names (the default: the system's).
    pub fetch_resolver: Option<deno_fetch::dns::Resolver>,
    /// Checks every outbound request before it is sent.
    #[allow(clippy::type_complexity)]
    pub fetch_request_hook: Option<fn(&mut ::http::Request<deno_fetch::ReqBody>) -> Result<(), deno_error::JsErrorBox>>,
}

deno_core::extension!(
    outpost_runtime,
    deps = [deno_webidl, deno_web, deno_crypto, deno_fetch],
    ops = [
        events::op_outpost_next_event,
        events::op_outpost_event_done,
        events::op_outpost_event_unhandled,
        events::op_outpost_rpc_return,
        events::op_outpost_scheduled_done,
        events::op_outpost_queue_done,
        events::op_outpost_workflow_done,
        http::op_outpost_respond,
        http::op_outpost_respond_stream,
        http::op_outpost_body_write,
        http::op_outpost_body_close,
        http::op_outpost_body_pipe,
        console::op_outpost_log,
        wasm::op_outpost_wasm_module,
        websocket::op_outpost_respond_websocket,
        websocket::op_outpost_ws_next,
        websocket::op_outpost_ws_send_text,
        websocket::op_outpost_ws_send_binary,
        websocket::op_outpost_ws_close,
        websocket::op_outpost_respond_forwarded_websocket,
        websocket::op_outpost_going_away,
    ],
    // Evaluated in this order: each module imports only from those before
    // it. The binding kinds' modules come with their own extensions.
    esm_entry_point = "ext:outpost_runtime/99_main.js",
    esm = [
        dir "js",
        "00_prelude.js",
        "01_console.js",
        "02_websocket.js",
        "03_global_scope.js",
        "04_registry.js",
        "05_entrypoints.js",
        "10_http.js",
        "15_subrequest.js",
        "20_context.js",
        "30_fetch.js",
        "40_scheduled.js",
        "45_queue.js",
        "99_main.js",
    ],
    lazy_loaded_js = [
        // deno_fetch's HTTP client module loads this at its top level to get at
        // client certificates, which workers cannot configure.
        "ext:deno_net/02_tls.js" = "js/tls_stub.js",
    ],
);

/// The extensions of every Outpost isolate, in their fixed order.
pub fn extensions(options: ExtensionOptions) -> Vec<Extension> {
    let mut fetch_options = deno_fetch::Options { user_agent: options.user_agent, ..Default::default() };
    if let Some(resolver) = options.fetch_resolver {
        fetch_options.resolver = resolver;
    }
    fetch_options.request_builder_hook = options.fetch_request_hook;
    vec![
        deno_webidl::deno_webidl::init(),
        deno_web::deno_web::init(
            Arc::new(deno_web::BlobStore::default()),
            None,
            false,
            deno_web::InMemoryBroadcastChannel::default(),
        ),
        deno_crypto::deno_crypto::init(None),
        deno_fetch::deno_fetch::init(fetch_options),
        outpost_runtime::init(),
    ]
    .into_iter()
    .chain(bindings::extensions())
    .collect()
}
