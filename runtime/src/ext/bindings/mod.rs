//! Bindings: what a worker finds on `env` besides its plain variables.
//!
//! Each kind lives in a folder of its own (`kv/`, `durable_objects/`): its
//! configuration type (a [`Binding`]), its ops and its JavaScript, which is
//! a deno extension of its own whose entry module registers the kind's
//! constructor with the bootstrap (`registerBindingKind` in
//! `js/04_registry.js`). Its module line and its extension's line in
//! [`extensions`] register it; nothing else in the runtime names a kind.
//!
//! When an isolate starts, every binding of the worker [`Binding::install`]s
//! what its ops need into the isolate's `OpState` and returns the
//! description its constructor gets; the bootstrap's `prepare` then puts
//! `new <Kind>(description)` on `env` under the binding's name.

// A binding kind is registered by its module line here and its line in
// `extensions`.
pub mod durable_objects;
pub mod kv;
pub mod queues;
pub mod services;
pub mod workflows;

use std::sync::Arc;

use deno_core::{Extension, OpState};

/// The binding kinds' extensions, after `outpost_runtime` in the one
/// extension list (`ext/mod.rs`): one line per kind.
pub(crate) fn extensions() -> Vec<Extension> {
    vec![
        kv::outpost_binding_kv::init(),
        durable_objects::outpost_binding_durable_objects::init(),
        services::outpost_binding_services::init(),
        queues::outpost_binding_queues::init(),
        workflows::outpost_binding_workflows::init(),
    ]
}

/// What the node lends bindings: the store, the router of object calls,
/// and whatever a kind to come needs (a queue broker, ...), by type.
pub type BindingServices = http::Extensions;

/// One binding of a worker, of some kind.
pub trait Binding: Send + Sync + std::fmt::Debug + 'static {
    /// The name on `env`.
    fn name(&self) -> &str;

    /// The kind, as the bootstrap's binding registry knows it.
    fn kind(&self) -> &'static str;

    /// Puts what this binding's ops need into a new isolate's state (`worker`
    /// is the worker's name), and returns the description (JSON) its
    /// JavaScript constructor gets. Errors name what the node lacks.
    fn install(
        &self,
        state: &mut OpState,
        worker: &str,
        services: &BindingServices,
    ) -> Result<serde_json::Value, BindingError>;

    /// For checks across a deployment (a Durable Object binding names a
    /// class of another worker) that need the concrete type.
    fn as_any(&self) -> &dyn std::any::Any;
}

/// A worker's bindings, in the order of its configuration.
pub type Bindings = Vec<Arc<dyn Binding>>;

/// Why a binding cannot be set up in an isolate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindingError {
    /// The node gives the worker no service this binding needs.
    #[error("the binding {binding} needs {service}, which this node does not provide")]
    MissingService { binding: String, service: &'static str },
}

/// A kind's bindings in one isolate, numbered in the order they were
/// installed (the JS side holds only the numbers, so a worker reaches
/// exactly what is bound to it), and the node service they use.
pub(crate) struct Numbered<B, S> {
    pub(crate) bindings: Vec<B>,
    pub(crate) service: S,
}

/// Adds `binding` to its kind's [`Numbered`] list in `state` (made on the
/// first, with the service from `services`, which `missing` names if the
/// node lends none); returns `{ index }` for its JS constructor.
pub(crate) fn install_numbered<B: Clone + 'static, S: Clone + Send + Sync + 'static>(
    state: &mut OpState,
    binding: &B,
    name: &str,
    services: &BindingServices,
    missing: &'static str,
) -> Result<serde_json::Value, BindingError> {
    if !state.has::<Numbered<B, S>>() {
        let service = services
            .get::<S>()
            .cloned()
            .ok_or_else(|| BindingError::MissingService { binding: name.to_string(), service: missing })?;
        state.put(Numbered::<B, S> { bindings: Vec::new(), service });
    }
    let numbered = state.borrow_mut::<Numbered<B, S>>();
    numbered.bindings.push(binding.clone());
    Ok(serde_json::json!({ "index": numbered.bindings.len() - 1 }))
}

/// Binding `index` of a kind, with its service; the errors name the kind.
pub(crate) fn numbered<B: Clone + 'static, S: Clone + 'static>(
    state: &OpState,
    index: u32,
    kind: &str,
) -> Result<(B, S), deno_error::JsErrorBox> {
    let numbered = state
        .try_borrow::<Numbered<B, S>>()
        .ok_or_else(|| deno_error::JsErrorBox::type_error(format!("this worker has no {kind} bindings")))?;
    let binding = numbered
        .bindings
        .get(index as usize)
        .cloned()
        .ok_or_else(|| deno_error::JsErrorBox::type_error(format!("no such {kind} binding")))?;
    Ok((binding, numbered.service.clone()))
}

/// Installs every binding; returns `[{ name, kind, ...description }]` for
/// the bootstrap's `prepare`.
pub(crate) fn install_all(
    state: &mut OpState,
    worker: &str,
    bindings: &[Arc<dyn Binding>],
    services: &BindingServices,
) -> Result<serde_json::Value, BindingError> {
    let mut described = Vec::with_capacity(bindings.len());
    for binding in bindings {
        let mut description = binding.install(state, worker, services)?;
        if let Some(fields) = description.as_object_mut() {
            fields.insert("name".into(), binding.name().into());
            fields.insert("kind".into(), binding.kind().into());
        }
        described.push(description);
    }
    Ok(serde_json::Value::Array(described))
}
