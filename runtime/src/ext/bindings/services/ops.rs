//! The ops behind a service binding's `fetch` and method calls.

use std::cell::RefCell;
use std::rc::Rc;

use deno_core::{op2, JsBuffer, OpState};
use deno_error::JsErrorBox;
use serde::Deserialize;

use super::{ServiceBinding, ServiceRouter};
use crate::ext::bindings::numbered;
use crate::ext::events::RpcCall;
use crate::ext::http::DispatchError;
use crate::ext::subrequest::{self, nested, CallOutcome, OutgoingBody, RequestHead, SubrequestResponse};

/// Who is calling: the calling invocation's request and depth.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Caller {
    request_id: String,
    depth: u32,
}

fn binding(state: &OpState, index: u32) -> Result<(ServiceBinding, std::sync::Arc<dyn ServiceRouter>), JsErrorBox> {
    numbered(state, index, "service")
}

fn dispatch_error(binding: &ServiceBinding, err: DispatchError) -> JsErrorBox {
    let what = format!("service {} ({})", binding.service, binding.binding);
    match err {
        DispatchError::WorkerThrew => JsErrorBox::generic(format!("{what} threw an exception")),
        other => JsErrorBox::generic(format!("{what}: {other}")),
    }
}

/// Sends a request to the bound worker and waits for the response head;
/// its body (`body_rid`, from `op_outpost_body_pipe`) streams while the
/// caller writes it.
#[op2]
#[serde]
pub async fn op_outpost_svc_fetch(
    state: Rc<RefCell<OpState>>,
    #[smi] index: u32,
    #[serde] caller: Caller,
    #[serde] head: RequestHead,
    body_rid: Option<u32>,
) -> Result<SubrequestResponse, JsErrorBox> {
    let depth = nested(caller.depth)?;
    let (binding, router) = binding(&state.borrow(), index)?;
    let body = match body_rid {
        Some(rid) => OutgoingBody::Streamed(rid),
        None => OutgoingBody::Full(None),
    };
    let request = subrequest::request(&state, head, body, caller.request_id, depth)?;
    let response = router
        .fetch(&binding.service, binding.entrypoint.clone(), request)
        .await
        .map_err(|err| dispatch_error(&binding, err))?;
    subrequest::response(&state, response, &format!("service {}", binding.service))
}

/// Calls a method of the bound entrypoint by name (JS RPC).
#[op2]
#[serde]
pub async fn op_outpost_svc_call(
    state: Rc<RefCell<OpState>>,
    #[smi] index: u32,
    #[serde] caller: Caller,
    #[string] method: String,
    #[buffer] args: JsBuffer,
) -> Result<CallOutcome, JsErrorBox> {
    let depth = nested(caller.depth)?;
    let (binding, router) = binding(&state.borrow(), index)?;
    let call = RpcCall { method, args: args.to_vec(), request_id: caller.request_id, depth };
    let outcome = router
        .call(&binding.service, binding.entrypoint.clone(), call)
        .await
        .map_err(|err| dispatch_error(&binding, err))?;
    Ok(outcome.into())
}
