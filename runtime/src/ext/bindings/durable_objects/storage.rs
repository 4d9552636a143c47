//! The hosting side: `state.storage` of the objects an isolate hosts, over
//! the node's store. The storage namespace is always the hosting worker's
//! own `<worker>:<class>`.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use deno_core::{op2, JsBuffer, OpState, ToJsBuffer};
use deno_error::JsErrorBox;
use outpost_kv::objects::{ObjectError, ObjectKey, ObjectListOptions, ObjectStorage, ObjectWrite};
use serde::Deserialize;

use super::ids::parse_id;
use super::{object_namespace, ObjectBindings};
use crate::ext::console::WorkerName;

fn object(state: &OpState, class_name: &str, id: &str) -> Result<(Arc<dyn ObjectStorage>, ObjectKey), JsErrorBox> {
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
pub async fn op_outpost_do_storage_get(
    state: Rc<RefCell<OpState>>,
    #[string] class_name: String,
    #[string] id: String,
    #[serde] keys: Vec<String>,
) -> Result<Vec<Option<ToJsBuffer>>, JsErrorBox> {
    let (store, object) = object(&state.borrow(), &class_name, &id)?;
    let keys: Vec<Vec<u8>> = keys.into_iter().map(String::into_bytes).collect();
    let values = store.object_get(&object, &keys).await.map_err(storage_error)?;
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
pub async fn op_outpost_do_storage_list(
    state: Rc<RefCell<OpState>>,
    #[string] class_name: String,
    #[string] id: String,
    #[serde] options: StorageListOptions,
) -> Result<Vec<(String, ToJsBuffer)>, JsErrorBox> {
    let (store, object) = object(&state.borrow(), &class_name, &id)?;
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
    let entries = store.object_list(&object, list).await.map_err(storage_error)?;
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
pub async fn op_outpost_do_alarm_get(
    state: Rc<RefCell<OpState>>,
    #[string] class_name: String,
    #[string] id: String,
) -> Result<Option<f64>, JsErrorBox> {
    let (store, object) = object(&state.borrow(), &class_name, &id)?;
    Ok(store.get_alarm(&object).await.map_err(storage_error)?.map(|at| at as f64))
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
