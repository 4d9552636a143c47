//! The calling side: ids from a namespace binding, and a stub's `fetch`
//! and method calls, sent through the [`ObjectRouter`] the node installs.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use deno_core::{op2, JsBuffer, OpState};
use deno_error::JsErrorBox;
use serde::Deserialize;

use super::ids::{id_from_name, id_to_hex, new_unique_id, parse_id};
use super::{DurableObjectBinding, ObjectBindings, ObjectRouter};
use crate::ext::events::{ObjectAddress, RpcCall};
use crate::ext::http::DispatchError;
use crate::ext::subrequest::{self, nested, CallOutcome, OutgoingBody, RequestHead, SubrequestResponse};

fn binding(state: &OpState, index: u32) -> Result<(DurableObjectBinding, Option<Arc<dyn ObjectRouter>>), JsErrorBox> {
    let bindings = state
        .try_borrow::<ObjectBindings>()
        .ok_or_else(|| JsErrorBox::type_error("this worker has no Durable Object bindings"))?;
    let binding = bindings
        .bindings
        .get(index as usize)
        .cloned()
        .ok_or_else(|| JsErrorBox::type_error("no such Durable Object binding"))?;
    Ok((binding, bindings.router.clone()))
}

/// Makes or checks an id: `kind` is `"name"`, `"unique"` or `"string"`.
#[op2]
#[string]
pub fn op_outpost_do_id(
    state: &mut OpState,
    #[smi] index: u32,
    #[string] kind: &str,
    #[string] argument: &str,
) -> Result<String, JsErrorBox> {
    let (binding, _) = binding(state, index)?;
    let namespace = binding.namespace();
    let id = match kind {
        "name" => id_from_name(&namespace, argument),
        "unique" => new_unique_id(&namespace)
            .map_err(|err| JsErrorBox::generic(format!("no randomness for a new id: {err}")))?,
        "string" => parse_id(&namespace, argument).map_err(|err| {
            JsErrorBox::type_error(format!("Invalid Durable Object ID for {}: {err}", binding.binding))
        })?,
        other => return Err(JsErrorBox::type_error(format!("unknown id kind {other}"))),
    };
    Ok(id_to_hex(&id))
}

/// What a stub sends with a `fetch` or a call.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StubTarget {
    id: String,
    name: Option<String>,
    request_id: String,
    /// The calling invocation's depth.
    depth: u32,
}

fn dispatch_error(binding: &DurableObjectBinding, err: DispatchError) -> JsErrorBox {
    let what = format!("Durable Object {} ({})", binding.class_name, binding.binding);
    match err {
        DispatchError::WorkerThrew => JsErrorBox::generic(format!("{what} threw an exception")),
        other => JsErrorBox::generic(format!("{what}: {other}")),
    }
}

/// What a stub's call needs: the binding, its router, the object, the
/// request id and the callee's depth.
struct Addressed {
    binding: DurableObjectBinding,
    router: Arc<dyn ObjectRouter>,
    object: ObjectAddress,
    request_id: String,
    depth: u32,
}

fn address(state: &OpState, index: u32, target: StubTarget) -> Result<Addressed, JsErrorBox> {
    let depth = nested(target.depth)?;
    let (binding, router) = binding(state, index)?;
    let router = router.ok_or_else(|| JsErrorBox::generic("Durable Objects are not available on this node"))?;
    let id = parse_id(&binding.namespace(), &target.id)
        .map_err(|err| JsErrorBox::type_error(format!("Invalid Durable Object ID: {err}")))?;
    let object = ObjectAddress { class_name: binding.class_name.clone(), id, name: target.name };
    Ok(Addressed { binding, router, object, request_id: target.request_id, depth })
}

/// Sends a stub's request to its object and waits for the response head.
#[op2]
#[serde]
pub async fn op_outpost_do_fetch(
    state: Rc<RefCell<OpState>>,
    #[smi] index: u32,
    #[serde] target: StubTarget,
    #[serde] head: RequestHead,
    #[buffer] body: Option<JsBuffer>,
) -> Result<SubrequestResponse, JsErrorBox> {
    let Addressed { binding, router, object, request_id, depth } = address(&state.borrow(), index, target)?;
    // Whole: a stub's calls leave in order, so the body is read first.
    let request = subrequest::request(&state, head, OutgoingBody::Full(body), request_id, depth)?;
    let response = router.fetch(&binding.script, object, request).await.map_err(|err| dispatch_error(&binding, err))?;
    subrequest::response(&state, response, &format!("Durable Object {}", binding.class_name))
}

/// Calls a method of a stub's object by name (JS RPC).
#[op2]
#[serde]
pub async fn op_outpost_do_call(
    state: Rc<RefCell<OpState>>,
    #[smi] index: u32,
    #[serde] target: StubTarget,
    #[string] method: String,
    #[buffer] args: JsBuffer,
) -> Result<CallOutcome, JsErrorBox> {
    let Addressed { binding, router, object, request_id, depth } = address(&state.borrow(), index, target)?;
    let call = RpcCall { method, args: args.to_vec(), request_id, depth };
    let outcome = router.call(&binding.script, object, call).await.map_err(|err| dispatch_error(&binding, err))?;
    Ok(outcome.into())
}
