//! The `outpost_runtime` deno extension: the ops and the bootstrap script that
//! turn a bare deno_core isolate into a Cloudflare-style worker.
//!
//! This module is compiled twice: into the library, and into `build.rs`,
//! which evaluates the bootstrap once and writes the startup snapshot. Both
//! sides must register the same extensions with the same ops in the same
//! order (V8 external references are indexed by position), so the list lives
//! here, in one place, and this module depends on nothing else in the crate.

pub mod http;
pub mod kv;
pub mod objects;
pub mod ops;
pub mod websocket;

use std::sync::Arc;

use deno_core::Extension;

/// Options a runtime gives the extensions when it starts. The snapshot build
/// uses `Default`: none of these values end up in the snapshot.
#[derive(Clone, Default)]
pub struct ExtensionOptions {
    /// Seed for `crypto.getRandomValues` and friends; `None` means the OS RNG.
    pub crypto_seed: Option<u64>,
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
        ops::op_outpost_next_request,
        ops::op_outpost_respond,
        ops::op_outpost_respond_stream,
        ops::op_outpost_respond_error,
        ops::op_outpost_body_write,
        ops::op_outpost_body_close,
        ops::op_outpost_log,
        ops::op_outpost_wasm_module,
        kv::op_outpost_kv_get,
        kv::op_outpost_kv_put,
        kv::op_outpost_kv_delete,
        kv::op_outpost_kv_list,
        objects::op_outpost_do_id,
        objects::op_outpost_do_send,
        objects::op_outpost_do_storage_get,
        objects::op_outpost_do_storage_list,
        objects::op_outpost_do_storage_write,
        objects::op_outpost_do_storage_delete,
        objects::op_outpost_do_storage_delete_all,
        objects::op_outpost_do_alarm_get,
        objects::op_outpost_do_alarm_set,
        websocket::op_outpost_respond_websocket,
        websocket::op_outpost_ws_next,
        websocket::op_outpost_ws_send_text,
        websocket::op_outpost_ws_send_binary,
        websocket::op_outpost_ws_close,
        websocket::op_outpost_respond_forwarded_websocket,
        websocket::op_outpost_going_away,
    ],
    esm_entry_point = "ext:outpost_runtime/bootstrap.js",
    esm = [dir "js", "bootstrap.js"],
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
        deno_crypto::deno_crypto::init(options.crypto_seed),
        deno_fetch::deno_fetch::init(fetch_options),
        outpost_runtime::init(),
    ]
}
