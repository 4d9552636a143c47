//! Workers KV: a `KVNamespace` on `env` for each `[[kv_namespaces]]` entry.
//!
//! A worker's namespaces are numbered in the order they are installed; the
//! JS side only ever holds those numbers, so a worker reaches exactly the
//! namespaces bound to it.

mod ops;

use deno_core::OpState;
use std::sync::Arc;

use outpost_kv::KvStorage;

use super::{Binding, BindingError, BindingServices};

/// One `[[kv_namespaces]]` binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvNamespaceBinding {
    /// The name on `env`.
    pub binding: String,
    /// The namespace's id in the store.
    pub id: String,
}

/// The store and the namespaces bound to this isolate's worker, by number.
#[derive(Clone)]
pub(crate) struct KvNamespaces {
    pub(crate) store: Arc<dyn KvStorage>,
    pub(crate) ids: Vec<String>,
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
        if !state.has::<KvNamespaces>() {
            let store = services
                .get::<Arc<dyn KvStorage>>()
                .cloned()
                .ok_or_else(|| BindingError::MissingService { binding: self.binding.clone(), service: "KV storage" })?;
            state.put(KvNamespaces { store, ids: Vec::new() });
        }
        let namespaces = state.borrow_mut::<KvNamespaces>();
        namespaces.ids.push(self.id.clone());
        Ok(serde_json::json!({ "index": namespaces.ids.len() - 1 }))
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
