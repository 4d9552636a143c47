//! The ops behind `KVNamespace`.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use deno_core::{op2, JsBuffer, OpState, ToJsBuffer};
use deno_error::JsErrorBox;
use outpost_kv::{GetError, KvStorage, ListError, ListOptions, PutError, PutOptions};
use serde::{Deserialize, Serialize};

use super::KvNamespaceBinding;
use crate::ext::bindings::numbered;

fn namespace(state: &OpState, index: u32) -> Result<(Arc<dyn KvStorage>, String), JsErrorBox> {
    let (binding, store) = numbered::<KvNamespaceBinding, Arc<dyn KvStorage>>(state, index, "KV")?;
    Ok((store, binding.id))
}

fn get_error(err: GetError) -> JsErrorBox {
    match err {
        GetError::Limit(limit) => JsErrorBox::type_error(format!("KV GET failed: {limit}")),
        other => JsErrorBox::generic(format!("KV GET failed: {other}")),
    }
}

fn put_error(operation: &str, err: PutError) -> JsErrorBox {
    match err {
        PutError::Limit(limit) => JsErrorBox::type_error(format!("KV {operation} failed: {limit}")),
        other => JsErrorBox::generic(format!("KV {operation} failed: {other}")),
    }
}

#[derive(Serialize)]
pub struct KvValue {
    value: ToJsBuffer,
    metadata: Option<String>,
}

#[op2]
#[serde]
pub async fn op_outpost_kv_get(
    state: Rc<RefCell<OpState>>,
    #[smi] binding: u32,
    #[string] key: String,
) -> Result<Option<KvValue>, JsErrorBox> {
    let (store, namespace) = namespace(&state.borrow(), binding)?;
    let record = store.get(&namespace, key.as_bytes()).await.map_err(get_error)?;
    Ok(record.map(|record| KvValue {
        value: record.value.to_vec().into(),
        metadata: record.metadata.as_ref().map(|m| String::from_utf8_lossy(m).into_owned()),
    }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KvPutOptions {
    expiration: Option<f64>,
    expiration_ttl: Option<f64>,
    metadata: Option<String>,
}

fn seconds(value: Option<f64>, name: &str) -> Result<Option<u64>, JsErrorBox> {
    match value {
        None => Ok(None),
        Some(v) if v.is_finite() && v >= 0.0 => Ok(Some(v as u64)),
        Some(v) => Err(JsErrorBox::type_error(format!(
            "KV PUT failed: {name} must be a non-negative number of seconds, got {v}"
        ))),
    }
}

#[op2]
pub async fn op_outpost_kv_put(
    state: Rc<RefCell<OpState>>,
    #[smi] binding: u32,
    #[string] key: String,
    #[buffer] value: JsBuffer,
    #[serde] options: KvPutOptions,
) -> Result<(), JsErrorBox> {
    let (store, namespace) = namespace(&state.borrow(), binding)?;
    let options = PutOptions {
        expiration: seconds(options.expiration, "expiration")?,
        expiration_ttl: seconds(options.expiration_ttl, "expirationTtl")?,
        metadata: options.metadata.map(String::into_bytes),
    };
    store
        .put(&namespace, key.as_bytes(), bytes::Bytes::copy_from_slice(&value), options)
        .await
        .map_err(|err| put_error("PUT", err))
}

#[op2]
pub async fn op_outpost_kv_delete(
    state: Rc<RefCell<OpState>>,
    #[smi] binding: u32,
    #[string] key: String,
) -> Result<(), JsErrorBox> {
    let (store, namespace) = namespace(&state.borrow(), binding)?;
    store.delete(&namespace, key.as_bytes()).await.map_err(|err| put_error("DELETE", err))
}

#[derive(Deserialize)]
pub struct KvListOptions {
    prefix: Option<String>,
    limit: Option<f64>,
    cursor: Option<String>,
}

#[derive(Serialize)]
pub struct KvListedKey {
    name: String,
    expiration: Option<u64>,
    metadata: Option<String>,
}

#[derive(Serialize)]
pub struct KvListPage {
    keys: Vec<KvListedKey>,
    list_complete: bool,
    cursor: Option<String>,
}

#[op2]
#[serde]
pub async fn op_outpost_kv_list(
    state: Rc<RefCell<OpState>>,
    #[smi] binding: u32,
    #[serde] options: KvListOptions,
) -> Result<KvListPage, JsErrorBox> {
    let (store, namespace) = namespace(&state.borrow(), binding)?;
    let limit = match options.limit {
        None => None,
        Some(limit) if limit.fract() == 0.0 && limit >= 0.0 => Some(limit as usize),
        Some(limit) => {
            return Err(JsErrorBox::type_error(format!("KV LIST failed: limit must be a whole number, got {limit}")))
        }
    };
    let page = store
        .list(
            &namespace,
            ListOptions { prefix: options.prefix.unwrap_or_default().into_bytes(), limit, cursor: options.cursor },
        )
        .await
        .map_err(|err| match err {
            ListError::Limit(limit) => JsErrorBox::type_error(format!("KV LIST failed: {limit}")),
            ListError::BadCursor => JsErrorBox::type_error("KV LIST failed: invalid cursor"),
            other => JsErrorBox::generic(format!("KV LIST failed: {other}")),
        })?;
    Ok(KvListPage {
        keys: page
            .keys()
            .map(|key| KvListedKey {
                name: String::from_utf8_lossy(key.name).into_owned(),
                expiration: key.expiration,
                metadata: key.metadata.map(|m| String::from_utf8_lossy(m).into_owned()),
            })
            .collect(),
        list_complete: page.list_complete,
        cursor: page.cursor,
    })
}
