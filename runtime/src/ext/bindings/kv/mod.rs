//! Workers KV: a `KVNamespace` on `env` for each `[[kv_namespaces]]` entry.
//!
//! A worker's namespaces are numbered in the order they are installed; the
//! JS side only ever holds those numbers, so a worker reaches exactly the
//! namespaces bound to it.

mod ops;

use deno_core::OpState;
use std::sync::Arc;

use outpost_kv::KvStorage;

use super::{install_numbered, Binding, BindingError, BindingServices};

/// One `[[kv_namespaces]]` binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvNamespaceBinding {
    /// The name on `env`.
    pub binding: String,
    /// The namespace's id in the store.
    pub id: String,
}

impl Binding for KvNamespaceBinding {
    fn name(&self) -> &str {
        &self.binding
    }

    fn kind(&self) -> &'static str {
        "kv"
    }

    fn install(
        &self,
        state: &mut OpState,
        _worker: &str,
        services: &BindingServices,
    ) -> Result<serde_json::Value, BindingError> {
        install_numbered::<_, Arc<dyn KvStorage>>(state, self, &self.binding, services, "KV storage")
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

deno_core::extension!(
    outpost_binding_kv,
    deps = [outpost_runtime],
    ops = [ops::op_outpost_kv_get, ops::op_outpost_kv_put, ops::op_outpost_kv_delete, ops::op_outpost_kv_list],
    esm_entry_point = "ext:outpost_binding_kv/kv.js",
    esm = [dir "src/ext/bindings/kv", "kv.js"],
);
