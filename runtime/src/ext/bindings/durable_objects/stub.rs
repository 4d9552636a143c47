//! The calling side: ids from a namespace binding, and a stub's `fetch`
//! and method calls, sent through the [`ObjectRouter`] the node installs.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use deno_core::{op2, ByteString, JsBuffer, OpState, ResourceId, ToJsBuffer};
use deno_error::JsErrorBox;
use serde::{Deserialize, Serialize};

use super::ids::{id_from_name, id_to_hex, new_unique_id, parse_id};
use super::{DurableObjectBinding, ObjectBindings, ObjectRouter};
use crate::ext::events::{ObjectAddress, RpcCall, RpcOutcome};
use crate::ext::http::{empty_body, full_body, header_list, header_map, incoming_body, DispatchError, HttpRequest};
use crate::ext::websocket::{ForwardedSocket, UpgradePipe};

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
}

/// The request of a stub's `fetch`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StubRequest {
    method: String,
    url: String,
    headers: Vec<(ByteString, ByteString)>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StubResponse {
    status: u16,
    headers: Vec<(ByteString, ByteString)>,
    body_rid: Option<ResourceId>,
    /// A `101` answer: the object's socket, to return in a response.
    web_socket_rid: Option<ResourceId>,
}

fn dispatch_error(binding: &DurableObjectBinding, err: DispatchError) -> JsErrorBox {
    let what = format!("Durable Object {} ({})", binding.class_name, binding.binding);
    match err {
        DispatchError::WorkerThrew => JsErrorBox::generic(format!("{what} threw an exception")),
        other => JsErrorBox::generic(format!("{what}: {other}")),
    }
}

/// The binding, its router and the object a stub addresses.
fn address(
    state: &OpState,
    index: u32,
    target: StubTarget,
) -> Result<(DurableObjectBinding, Arc<dyn ObjectRouter>, ObjectAddress, String), JsErrorBox> {
    let (binding, router) = binding(state, index)?;
    let router = router.ok_or_else(|| JsErrorBox::generic("Durable Objects are not available on this node"))?;
    let id = parse_id(&binding.namespace(), &target.id)
        .map_err(|err| JsErrorBox::type_error(format!("Invalid Durable Object ID: {err}")))?;
    let object = ObjectAddress { class_name: binding.class_name.clone(), id, name: target.name };
    Ok((binding, router, object, target.request_id))
}

/// Sends a stub's request to its object and waits for the response head.
#[op2]
#[serde]
pub async fn op_outpost_do_fetch(
    state: Rc<RefCell<OpState>>,
    #[smi] index: u32,
    #[serde] target: StubTarget,
    #[serde] stub: StubRequest,
    #[buffer] body: Option<JsBuffer>,
) -> Result<StubResponse, JsErrorBox> {
    let (binding, router, object, request_id) = address(&state.borrow(), index, target)?;
    let method = http::Method::from_bytes(stub.method.as_bytes())
        .map_err(|_| JsErrorBox::type_error(format!("invalid method {}", stub.method)))?;
    let mut request = http::Request::builder().method(method);
    *request.headers_mut().expect("no error yet") = header_map(stub.headers)?;
    let body = match body {
        Some(bytes) => full_body(Bytes::copy_from_slice(&bytes)),
        None => empty_body(),
    };
    let request = request.body(body).map_err(|err| JsErrorBox::type_error(err.to_string()))?;
    let request = HttpRequest { request, url: stub.url, request_id, cf: None };
    let response = router.fetch(&binding.script, object, request).await.map_err(|err| dispatch_error(&binding, err))?;
    let (mut head, body) = response.into_parts();
    let headers = header_list(&head.headers);
    if head.status == http::StatusCode::SWITCHING_PROTOCOLS {
        let pipe = head.extensions.remove::<UpgradePipe>().ok_or_else(|| {
            JsErrorBox::generic(format!("Durable Object {} answered 101 without a WebSocket", binding.class_name))
        })?;
        let web_socket_rid = state.borrow_mut().resource_table.add(ForwardedSocket(pipe));
        return Ok(StubResponse { status: 101, headers, body_rid: None, web_socket_rid: Some(web_socket_rid) });
    }
    let body_rid = incoming_body(&mut state.borrow_mut(), body);
    Ok(StubResponse { status: head.status.as_u16(), headers, body_rid, web_socket_rid: None })
}

/// What a call came to, for the stub: structured-clone bytes of the value
/// returned or the error thrown.
#[derive(Serialize)]
pub struct CallOutcome {
    threw: bool,
    value: ToJsBuffer,
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
    let (binding, router, object, request_id) = address(&state.borrow(), index, target)?;
    let call = RpcCall { method, args: args.to_vec(), request_id };
    let outcome = router.call(&binding.script, object, call).await.map_err(|err| dispatch_error(&binding, err))?;
    Ok(match outcome {
        RpcOutcome::Returned(value) => CallOutcome { threw: false, value: value.into() },
        RpcOutcome::Threw(value) => CallOutcome { threw: true, value: value.into() },
    })
}
