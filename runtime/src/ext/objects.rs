//! Ops behind Durable Objects: ids, stubs (the calling side) and
//! `state.storage` (the side that hosts the objects).
//!
//! A stub's call leaves the isolate as a [`WorkerRequest`] carrying an
//! [`ObjectCall`], through the [`ObjectRouter`] the pool installs; the pool
//! delivers it to the one isolate of the class's worker that hosts its
//! objects. Ordering, the input gate and the output gate are the
//! bootstrap's (JS) business; these ops only move bytes.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use deno_core::{op2, ByteString, JsBuffer, OpState, ResourceId, ToJsBuffer};
use deno_error::JsErrorBox;
use outpost_kv::objects::{ObjectError, ObjectKey, ObjectListOptions, ObjectWrite};
use outpost_kv::Store;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::http::{full_body, Body, DispatchError, WorkerRequest};
use super::ops::{header_list, header_map, incoming_body, WorkerName};
use super::websocket::{ForwardedSocket, UpgradePipe};

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

/// What a stub asks of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectEvent {
    /// `stub.fetch(request)`.
    Fetch,
    /// A call of a method by name (JS RPC): the arguments as structured-clone
    /// bytes (in the event, so it is queued at once, in order); the result
    /// comes back in the response body.
    Call { method: String, args: Vec<u8> },
    /// The object's alarm is due; `retry_count` earlier runs failed.
    Alarm { retry_count: u32 },
}

/// The object a request is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectCall {
    pub class_name: String,
    pub id: [u8; 32],
    /// The name the id was derived from, if the caller knows it.
    pub name: Option<String>,
    pub event: ObjectEvent,
}

/// A boxed future the router returns.
pub type RouteFuture = Pin<Box<dyn Future<Output = Result<http::Response<Body>, DispatchError>> + Send>>;

/// Delivers object calls to the isolate hosting the object: the isolate
/// pool implements it.
pub trait ObjectRouter: Send + Sync {
    /// Sends `request` to object `call` of worker `script`.
    fn route(&self, script: &str, call: ObjectCall, request: WorkerRequestParts) -> RouteFuture;
}

/// A request without its responder (the router makes the channel).
pub struct WorkerRequestParts {
    pub request: http::Request<Body>,
    pub url: String,
    pub request_id: String,
    /// `request.cf` as JSON, from the front.
    pub cf: Option<String>,
}

impl WorkerRequestParts {
    /// Completes the request with the channel its response goes back on.
    pub fn into_request(self, object: Option<ObjectCall>, respond: super::http::Responder) -> WorkerRequest {
        WorkerRequest {
            request: self.request,
            url: self.url,
            request_id: self.request_id,
            respond,
            object,
            cf: self.cf,
        }
    }
}

/// What a worker's isolate needs for Durable Objects.
#[derive(Clone)]
pub struct ObjectBindings {
    /// The worker's bindings, numbered in order as the JS side knows them.
    pub bindings: Vec<DurableObjectBinding>,
    /// Where object calls go.
    pub router: Option<Arc<dyn ObjectRouter>>,
    /// The node's store, for the objects this worker hosts.
    pub store: Option<Store>,
}

// --- ids -------------------------------------------------------------------

/// An id is 32 bytes: 16 that identify the object (derived from a name, or
/// random) and 16 that tie it to its namespace, so an id made by another
/// class (or a typo) is refused by `idFromString` rather than silently
/// addressing an empty object.
fn checksum(namespace: &str, body: &[u8]) -> [u8; 16] {
    let mut hasher = Sha256::new();
    hasher.update(b"outpost-durable-object-id\0");
    hasher.update(namespace.as_bytes());
    hasher.update([0]);
    hasher.update(body);
    hasher.finalize()[..16].try_into().expect("16 bytes")
}

fn make_id(namespace: &str, body: [u8; 16]) -> [u8; 32] {
    let mut id = [0; 32];
    id[..16].copy_from_slice(&body);
    id[16..].copy_from_slice(&checksum(namespace, &body));
    id
}

/// The id `idFromName(name)` gives: the same for the same name, always.
pub fn id_from_name(namespace: &str, name: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"outpost-durable-object-name\0");
    hasher.update(namespace.as_bytes());
    hasher.update([0]);
    hasher.update(name.as_bytes());
    make_id(namespace, hasher.finalize()[..16].try_into().expect("16 bytes"))
}

/// A fresh id from the OS's random source.
pub fn new_unique_id(namespace: &str) -> Result<[u8; 32], getrandom::Error> {
    let mut body = [0; 16];
    getrandom::fill(&mut body)?;
    Ok(make_id(namespace, body))
}

/// Why a string is not an id of a namespace.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("an id is 64 hexadecimal digits, got {0} characters")]
    Length(usize),
    #[error("an id is 64 hexadecimal digits; found a character that is not one")]
    NotHex,
    #[error("the id was not made by this Durable Object namespace")]
    OtherNamespace,
}

/// Parses an id's string form and checks it belongs to `namespace`.
pub fn parse_id(namespace: &str, text: &str) -> Result<[u8; 32], IdError> {
    if text.len() != 64 {
        return Err(IdError::Length(text.chars().count()));
    }
    let mut id = [0; 32];
    for (i, byte) in id.iter_mut().enumerate() {
        let pair = text.get(2 * i..2 * i + 2).ok_or(IdError::NotHex)?;
        if !pair.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(IdError::NotHex);
        }
        *byte = u8::from_str_radix(pair, 16).map_err(|_| IdError::NotHex)?;
    }
    let body: [u8; 16] = id[..16].try_into().expect("16 bytes");
    if id[16..] != checksum(namespace, &body) {
        return Err(IdError::OtherNamespace);
    }
    Ok(id)
}

pub fn id_to_hex(id: &[u8; 32]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

// --- the calling side --------------------------------------------------------

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

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StubRequest {
    id: String,
    name: Option<String>,
    /// `"fetch"` or `"call"`.
    kind: String,
    /// The method of a call.
    method: Option<String>,
    http_method: String,
    url: String,
    headers: Vec<(ByteString, ByteString)>,
    request_id: String,
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

/// Sends a stub's request to its object and waits for the response head.
#[op2]
#[serde]
pub async fn op_outpost_do_send(
    state: Rc<RefCell<OpState>>,
    #[smi] index: u32,
    #[serde] stub: StubRequest,
    #[buffer] body: Option<JsBuffer>,
) -> Result<StubResponse, JsErrorBox> {
    let (binding, router) = binding(&state.borrow(), index)?;
    let router = router.ok_or_else(|| JsErrorBox::generic("Durable Objects are not available on this node"))?;
    let id = parse_id(&binding.namespace(), &stub.id)
        .map_err(|err| JsErrorBox::type_error(format!("Invalid Durable Object ID: {err}")))?;
    let (event, body) = match (stub.kind.as_str(), stub.method) {
        ("fetch", _) => (ObjectEvent::Fetch, body),
        ("call", Some(method)) => {
            (ObjectEvent::Call { method, args: body.map(|args| args.to_vec()).unwrap_or_default() }, None)
        }
        _ => return Err(JsErrorBox::type_error("bad stub request")),
    };
    let method = http::Method::from_bytes(stub.http_method.as_bytes())
        .map_err(|_| JsErrorBox::type_error(format!("invalid method {}", stub.http_method)))?;
    let mut request = http::Request::builder().method(method);
    *request.headers_mut().expect("no error yet") = header_map(stub.headers)?;
    let body = match body {
        Some(bytes) => full_body(Bytes::copy_from_slice(&bytes)),
        None => super::http::empty_body(),
    };
    let request = request.body(body).map_err(|err| JsErrorBox::type_error(err.to_string()))?;
    let call = ObjectCall { class_name: binding.class_name.clone(), id, name: stub.name, event };
    let parts = WorkerRequestParts { request, url: stub.url, request_id: stub.request_id, cf: None };
    let response = router.route(&binding.script, call, parts).await.map_err(|err| dispatch_error(&binding, err))?;
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

// --- the hosting side: state.storage -------------------------------------------

fn object(state: &OpState, class_name: &str, id: &str) -> Result<(Store, ObjectKey), JsErrorBox> {
    let store = state
        .try_borrow::<ObjectBindings>()
        .and_then(|bindings| bindings.store.clone())
        .ok_or_else(|| JsErrorBox::generic("this node has no storage for Durable Objects"))?;
    let worker = state.borrow::<WorkerName>().0.clone();
    let namespace = object_namespace(&worker, class_name);
    let id =
        parse_id(&namespace, id).map_err(|err| JsErrorBox::type_error(format!("Invalid Durable Object ID: {err}")))?;
    Ok((store, ObjectKey { class: namespace, id }))
}

fn storage_error(err: ObjectError) -> JsErrorBox {
    match err {
        ObjectError::Limit(limit) => JsErrorBox::range_error(limit.to_string()),
        other => JsErrorBox::generic(format!("Durable Object storage failed: {other}")),
    }
}

#[op2]
#[serde]
pub fn op_outpost_do_storage_get(
    state: &mut OpState,
    #[string] class_name: &str,
    #[string] id: &str,
    #[serde] keys: Vec<String>,
) -> Result<Vec<Option<ToJsBuffer>>, JsErrorBox> {
    let (store, object) = object(state, class_name, id)?;
    let keys: Vec<Vec<u8>> = keys.into_iter().map(String::into_bytes).collect();
    let values = store.object_get(&object, &keys).map_err(storage_error)?;
    Ok(values.into_iter().map(|value| value.map(|v| v.to_vec().into())).collect())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StorageListOptions {
    start: Option<String>,
    start_after: Option<String>,
    end: Option<String>,
    prefix: Option<String>,
    reverse: bool,
    limit: Option<u32>,
}

#[op2]
#[serde]
pub fn op_outpost_do_storage_list(
    state: &mut OpState,
    #[string] class_name: &str,
    #[string] id: &str,
    #[serde] options: StorageListOptions,
) -> Result<Vec<(String, ToJsBuffer)>, JsErrorBox> {
    let (store, object) = object(state, class_name, id)?;
    // `startAfter` is `start` at the smallest key after it.
    let start = match (options.start, options.start_after) {
        (_, Some(after)) => {
            let mut key = after.into_bytes();
            key.push(0);
            Some(key)
        }
        (start, None) => start.map(String::into_bytes),
    };
    let list = ObjectListOptions {
        start,
        end: options.end.map(String::into_bytes),
        prefix: options.prefix.map(String::into_bytes),
        reverse: options.reverse,
        limit: options.limit.map(|limit| limit as usize),
    };
    let entries = store.object_list(&object, list).map_err(storage_error)?;
    Ok(entries
        .into_iter()
        .map(|(key, value)| (String::from_utf8_lossy(&key).into_owned(), value.to_vec().into()))
        .collect())
}

/// Commits puts and deletes of one object together, durably.
#[op2]
pub async fn op_outpost_do_storage_write(
    state: Rc<RefCell<OpState>>,
    #[string] class_name: String,
    #[string] id: String,
    #[serde] puts: Vec<(String, JsBuffer)>,
    #[serde] deletes: Vec<String>,
) -> Result<(), JsErrorBox> {
    let (store, object) = object(&state.borrow(), &class_name, &id)?;
    let mut writes: Vec<ObjectWrite> = deletes.into_iter().map(|key| ObjectWrite::Delete(key.into_bytes())).collect();
    writes.extend(
        puts.into_iter().map(|(key, value)| ObjectWrite::Put(key.into_bytes(), Bytes::copy_from_slice(&value))),
    );
    store.object_transaction(&object, writes).await.map_err(storage_error)
}

/// Deletes `keys`; resolves to how many existed.
#[op2]
#[smi]
pub async fn op_outpost_do_storage_delete(
    state: Rc<RefCell<OpState>>,
    #[string] class_name: String,
    #[string] id: String,
    #[serde] keys: Vec<String>,
) -> Result<u32, JsErrorBox> {
    let (store, object) = object(&state.borrow(), &class_name, &id)?;
    let keys: Vec<Vec<u8>> = keys.into_iter().map(String::into_bytes).collect();
    let count = store.object_delete(&object, &keys).await.map_err(storage_error)?;
    Ok(count as u32)
}

#[op2]
pub async fn op_outpost_do_storage_delete_all(
    state: Rc<RefCell<OpState>>,
    #[string] class_name: String,
    #[string] id: String,
) -> Result<(), JsErrorBox> {
    let (store, object) = object(&state.borrow(), &class_name, &id)?;
    store.object_delete_all(&object).await.map_err(storage_error)
}

#[op2]
pub fn op_outpost_do_alarm_get(
    state: &mut OpState,
    #[string] class_name: &str,
    #[string] id: &str,
) -> Result<Option<f64>, JsErrorBox> {
    let (store, object) = object(state, class_name, id)?;
    Ok(store.get_alarm(&object).map_err(storage_error)?.map(|at| at as f64))
}

/// Sets (milliseconds since the epoch) or, with `null`, deletes the alarm.
#[op2]
pub async fn op_outpost_do_alarm_set(
    state: Rc<RefCell<OpState>>,
    #[string] class_name: String,
    #[string] id: String,
    at_ms: Option<f64>,
) -> Result<(), JsErrorBox> {
    let (store, object) = object(&state.borrow(), &class_name, &id)?;
    let at_ms = match at_ms {
        None => None,
        Some(at) if at.is_finite() && at >= 0.0 => Some(at as u64),
        Some(at) => return Err(JsErrorBox::type_error(format!("an alarm time must be a valid date, got {at}"))),
    };
    store.set_alarm(&object, at_ms).await.map_err(storage_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_give_the_same_id_and_namespaces_differ() {
        let a = id_from_name("w:Counter", "alice");
        assert_eq!(a, id_from_name("w:Counter", "alice"));
        assert_ne!(a, id_from_name("w:Counter", "bob"));
        assert_ne!(a, id_from_name("w:Other", "alice"));
    }

    #[test]
    fn ids_parse_back_only_in_their_namespace() {
        let id = new_unique_id("w:Counter").unwrap();
        assert_ne!(id, new_unique_id("w:Counter").unwrap());
        let hex = id_to_hex(&id);
        assert_eq!(parse_id("w:Counter", &hex), Ok(id));
        assert_eq!(parse_id("w:Room", &hex), Err(IdError::OtherNamespace));
        assert_eq!(parse_id("w:Counter", &hex.to_uppercase()), Ok(id));
        assert_eq!(parse_id("w:Counter", "abc"), Err(IdError::Length(3)));
        let mut bad = hex.clone();
        bad.replace_range(0..1, "g");
        assert_eq!(parse_id("w:Counter", &bad), Err(IdError::NotHex));
        let mut flipped = hex.into_bytes();
        flipped[0] = if flipped[0] == b'0' { b'1' } else { b'0' };
        assert_eq!(parse_id("w:Counter", std::str::from_utf8(&flipped).unwrap()), Err(IdError::OtherNamespace));
        // Multi-byte characters never panic the slicing.
        assert!(parse_id("w:Counter", &"é".repeat(32)).is_err());
    }
}
