//! What every worker-to-worker call shares (a Durable Object stub's, a
//! service binding's): the request built from what JS sends, the response
//! handed back as JS reads it, RPC outcomes, and the bound on how deeply
//! such calls may nest.

use std::cell::RefCell;
use std::rc::Rc;

use bytes::Bytes;
use deno_core::{ByteString, JsBuffer, OpState, ResourceId, ToJsBuffer};
use deno_error::JsErrorBox;
use serde::{Deserialize, Serialize};

use super::events::RpcOutcome;
use super::http::{empty_body, full_body, header_list, header_map, Body, HttpRequest};
use super::websocket::{ForwardedSocket, UpgradePipe};

/// How many worker invocations may nest inside one request (a worker
/// calling a service calling an object ...), as on Cloudflare: a worker
/// calling itself forever ends with an error, not with the node.
pub const MAX_DEPTH: u32 = 32;

/// The depth of a call made from an invocation at `depth`, or the error
/// past the limit.
pub(crate) fn nested(depth: u32) -> Result<u32, JsErrorBox> {
    if depth >= MAX_DEPTH {
        return Err(JsErrorBox::generic(format!(
            "Subrequest depth limit exceeded: this request went through {MAX_DEPTH} nested worker invocations (a worker or Durable Object calling others, or itself, recursively)"
        )));
    }
    Ok(depth + 1)
}

/// The head of a request a worker sends to another.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestHead {
    method: String,
    url: String,
    headers: Vec<(ByteString, ByteString)>,
}

/// The body of a request a worker sends: bytes in full, or a body it
/// streams (the rid of [`op_outpost_body_pipe`](super::http::op_outpost_body_pipe)'s body).
pub(crate) enum OutgoingBody {
    Full(Option<JsBuffer>),
    Streamed(ResourceId),
}

/// Builds the request a worker sends (`depth` is the callee's).
pub(crate) fn request(
    state: &Rc<RefCell<OpState>>,
    head: RequestHead,
    body: OutgoingBody,
    request_id: String,
    depth: u32,
) -> Result<HttpRequest, JsErrorBox> {
    let method = http::Method::from_bytes(head.method.as_bytes())
        .map_err(|_| JsErrorBox::type_error(format!("invalid method {}", head.method)))?;
    let mut request = http::Request::builder().method(method);
    *request.headers_mut().expect("no error yet") = header_map(head.headers)?;
    let body = match body {
        OutgoingBody::Full(Some(bytes)) => full_body(Bytes::copy_from_slice(&bytes)),
        OutgoingBody::Full(None) => empty_body(),
        OutgoingBody::Streamed(rid) => super::http::take_outgoing_body(&mut state.borrow_mut(), rid)?,
    };
    let request = request.body(body).map_err(|err| JsErrorBox::type_error(err.to_string()))?;
    Ok(HttpRequest { request, url: head.url, request_id, cf: None, depth })
}

/// A response as the calling worker reads it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SubrequestResponse {
    status: u16,
    headers: Vec<(ByteString, ByteString)>,
    body_rid: Option<ResourceId>,
    /// A `101` answer: the callee's socket, to return in a response.
    web_socket_rid: Option<ResourceId>,
}

/// Hands a callee's response to the calling worker: its body as a
/// resource, a `101`'s socket as a [`ForwardedSocket`]. `who` names the
/// callee in errors.
pub(crate) fn response(
    state: &Rc<RefCell<OpState>>,
    response: http::Response<Body>,
    who: &str,
) -> Result<SubrequestResponse, JsErrorBox> {
    let (mut head, body) = response.into_parts();
    let headers = header_list(&head.headers);
    if head.status == http::StatusCode::SWITCHING_PROTOCOLS {
        let pipe = head
            .extensions
            .remove::<UpgradePipe>()
            .ok_or_else(|| JsErrorBox::generic(format!("{who} answered 101 without a WebSocket")))?;
        let web_socket_rid = state.borrow_mut().resource_table.add(ForwardedSocket(pipe));
        return Ok(SubrequestResponse { status: 101, headers, body_rid: None, web_socket_rid: Some(web_socket_rid) });
    }
    let body_rid = super::http::incoming_body(&mut state.borrow_mut(), body);
    Ok(SubrequestResponse { status: head.status.as_u16(), headers, body_rid, web_socket_rid: None })
}

/// What a method call came to, for the caller: structured-clone bytes of
/// the value returned or the error thrown.
#[derive(Serialize)]
pub struct CallOutcome {
    threw: bool,
    value: ToJsBuffer,
}

impl From<RpcOutcome> for CallOutcome {
    fn from(outcome: RpcOutcome) -> Self {
        match outcome {
            RpcOutcome::Returned(value) => CallOutcome { threw: false, value: value.into() },
            RpcOutcome::Threw(value) => CallOutcome { threw: true, value: value.into() },
        }
    }
}
