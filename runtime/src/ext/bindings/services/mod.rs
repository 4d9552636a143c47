//! Service bindings: `env.SVC` for a `[[services]]` entry calls another
//! worker of the node in process, with no network: `env.SVC.fetch(request)`
//! and, on a `WorkerEntrypoint` class, its methods by name (JS RPC).
//!
//! The call leaves the isolate through the [`ServiceRouter`] the node
//! lends, which delivers it to an isolate of the named worker as a
//! [`WorkerEvent::Fetch`](crate::ext::events::WorkerEvent::Fetch) or
//! `ServiceCall` naming the entrypoint.

mod ops;

use std::sync::Arc;

use deno_core::OpState;

use super::durable_objects::RouteFuture;
use super::{install_numbered, Binding, BindingError, BindingServices};
use crate::ext::events::{RpcCall, RpcOutcome};
use crate::ext::http::{Body, HttpRequest};

/// One `[[services]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceBinding {
    /// The name on `env`.
    pub binding: String,
    /// The worker called.
    pub service: String,
    /// A named `WorkerEntrypoint` export of it; `None` is the default export.
    pub entrypoint: Option<String>,
}

/// Delivers service calls to the called worker: the node implements it.
pub trait ServiceRouter: Send + Sync {
    fn fetch(
        &self,
        service: &str,
        entrypoint: Option<String>,
        request: HttpRequest,
    ) -> RouteFuture<http::Response<Body>>;
    fn call(&self, service: &str, entrypoint: Option<String>, call: RpcCall) -> RouteFuture<RpcOutcome>;
}

impl Binding for ServiceBinding {
    fn name(&self) -> &str {
        &self.binding
    }

    fn kind(&self) -> &'static str {
        "service"
    }

    fn install(
        &self,
        state: &mut OpState,
        _worker: &str,
        services: &BindingServices,
    ) -> Result<serde_json::Value, BindingError> {
        install_numbered::<_, Arc<dyn ServiceRouter>>(state, self, &self.binding, services, "service routing")
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

deno_core::extension!(
    outpost_binding_services,
    deps = [outpost_runtime],
    ops = [ops::op_outpost_svc_fetch, ops::op_outpost_svc_call],
    esm_entry_point = "ext:outpost_binding_services/services.js",
    esm = [dir "src/ext/bindings/services", "services.js"],
);
