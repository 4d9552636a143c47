//! Durable Objects: a `DurableObjectNamespace` on `env` for each
//! `[[durable_objects.bindings]]` entry, and the hosting of the objects of
//! the classes a worker declares.
//!
//! The calling side (`stub.rs`): a stub's `fetch` or method call leaves the
//! isolate through the [`ObjectRouter`] the node installs, which delivers
//! it, as a [`WorkerEvent`](crate::ext::events::WorkerEvent), to the one
//! isolate of the class's worker that hosts its objects. The hosting side
//! (`host.js`, `storage.rs`): the object instances, their input and output
//! gates, `state.storage` over the node's store and alarms. Ordering and
//! the gates are the JavaScript's business; these ops only move bytes.

pub(crate) mod ids;
mod storage;
mod stub;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use deno_core::OpState;
pub use ids::id_from_name;
use outpost_kv::objects::ObjectStorage;

use super::{Binding, BindingError, BindingServices};
use crate::ext::events::{ObjectAddress, RpcCall, RpcOutcome};
use crate::ext::http::{Body, DispatchError, HttpRequest};

/// One `[[durable_objects.bindings]]` entry of a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurableObjectBinding {
    /// The name on `env`.
    pub binding: String,
    /// The exported class.
    pub class_name: String,
    /// The worker that exports the class (the binding's own worker unless
    /// `script_name` says otherwise).
    pub script: String,
}

impl DurableObjectBinding {
    /// The namespace the ids and the storage of this class live in.
    pub fn namespace(&self) -> String {
        object_namespace(&self.script, &self.class_name)
    }
}

/// Storage namespace of `class_name` exported by `script`.
pub fn object_namespace(script: &str, class_name: &str) -> String {
    format!("{script}:{class_name}")
}

/// The worker and the class of a storage namespace (class names have no
/// colon; worker names may).
pub fn split_object_namespace(namespace: &str) -> Option<(&str, &str)> {
    namespace.rsplit_once(':')
}

/// A boxed future the router returns.
pub type RouteFuture<T> = Pin<Box<dyn Future<Output = Result<T, DispatchError>> + Send>>;

/// Delivers stubs' calls to the isolate hosting the object: the node
/// implements it (through the isolate pool) and lends it to bindings as a
/// service (`Arc<dyn ObjectRouter>`).
pub trait ObjectRouter: Send + Sync {
    /// A stub's `fetch` for `object`, a class of worker `script`.
    fn fetch(&self, script: &str, object: ObjectAddress, request: HttpRequest) -> RouteFuture<http::Response<Body>>;
    /// A stub's method call.
    fn call(&self, script: &str, object: ObjectAddress, call: RpcCall) -> RouteFuture<RpcOutcome>;
}

impl std::fmt::Debug for dyn ObjectRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ObjectRouter")
    }
}

/// What an isolate needs for Durable Objects.
#[derive(Clone, Default)]
pub(crate) struct ObjectBindings {
    /// The worker's bindings, numbered in order as the JS side knows them.
    pub(crate) bindings: Vec<DurableObjectBinding>,
    /// Where stubs' calls go.
    pub(crate) router: Option<Arc<dyn ObjectRouter>>,
    /// The node's store, for the objects this worker hosts.
    pub(crate) store: Option<Arc<dyn ObjectStorage>>,
}

impl Binding for DurableObjectBinding {
    fn name(&self) -> &str {
        &self.binding
    }

    fn kind(&self) -> &'static str {
        "durable_object"
    }

    fn install(
        &self,
        state: &mut OpState,
        worker: &str,
        services: &BindingServices,
    ) -> Result<serde_json::Value, BindingError> {
        if !state.has::<ObjectBindings>() {
            state.put(ObjectBindings::default());
        }
        let hosted = self.script == worker;
        let objects = state.borrow_mut::<ObjectBindings>();
        // Without a router, stubs' calls fail with a message saying so.
        objects.router = services.get::<Arc<dyn ObjectRouter>>().cloned();
        if hosted {
            let store = services.get::<Arc<dyn ObjectStorage>>().cloned().ok_or_else(|| {
                BindingError::MissingService { binding: self.binding.clone(), service: "Durable Object storage" }
            })?;
            objects.store = Some(store);
        }
        objects.bindings.push(self.clone());
        Ok(serde_json::json!({
            "index": objects.bindings.len() - 1,
            "className": self.class_name,
            "hosted": hosted,
        }))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

deno_core::extension!(
    outpost_binding_durable_objects,
    deps = [outpost_runtime],
    ops = [
        stub::op_outpost_do_id,
        stub::op_outpost_do_fetch,
        stub::op_outpost_do_call,
        storage::op_outpost_do_storage_get,
        storage::op_outpost_do_storage_list,
        storage::op_outpost_do_storage_write,
        storage::op_outpost_do_storage_delete,
        storage::op_outpost_do_storage_delete_all,
        storage::op_outpost_do_alarm_get,
        storage::op_outpost_do_alarm_set,
    ],
    esm_entry_point = "ext:outpost_binding_durable_objects/mod.js",
    esm = [dir "src/ext/bindings/durable_objects", "mod.js", "namespace.js", "storage.js", "host.js"],
);
