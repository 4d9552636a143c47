//! Where workflows keep their state: one object per workflow in the node's
//! [`ObjectStorage`] (a reserved namespace), so every backend of that trait
//! stores workflows too. Keys, for instance `<id>`:
//!
//! - `i/<id>`: the [`InstanceRecord`] (JSON);
//! - `p/<id>/<n>`, `o/<id>/<n>`: its parameters and output, in chunks;
//! - `s/<id>/<step>`: a [`StepRecord`] (JSON), `<step>` being the SHA-256
//!   of the step's name and its occurrence; `v/<id>/<step>/<n>` its value;
//! - `e/<id>/<seq>`: an event sent and not yet taken ([`EventHeader`]),
//!   `f/<id>/<seq>/<n>` its payload.
//!
//! Values up to [`MAX_VALUE_BYTES`](crate::policy::MAX_VALUE_BYTES) are cut
//! into chunks below the storage's value limit. Functions here read or
//! build writes; the engine decides which to make, and commits one
//! instance's writes of a decision in one transaction.

use bytes::Bytes;
use outpost_kv::objects::{
    ObjectError, ObjectKey, ObjectListOptions, ObjectStorage, ObjectWrite, MAX_OBJECT_VALUE_BYTES,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::{Encoding, InstanceRecord, StepRecord};

/// Why the store could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error(transparent)]
    Storage(#[from] ObjectError),
    #[error("stored workflow state is corrupt: {0}")]
    Corrupt(String),
}

const CHUNK: usize = MAX_OBJECT_VALUE_BYTES;

/// The object holding one workflow's instances.
pub fn workflow_object(workflow: &str) -> ObjectKey {
    ObjectKey { class: format!("\u{1}workflow:{workflow}"), id: [0; 32] }
}

/// The key of a step: its name and which occurrence of it in a run.
pub fn step_key(name: &str, occurrence: u32) -> String {
    let digest = Sha256::digest(name.as_bytes());
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("{hex}-{occurrence}")
}

fn record_key(id: &str) -> Vec<u8> {
    format!("i/{id}").into_bytes()
}

fn step_record_key(id: &str, step: &str) -> Vec<u8> {
    format!("s/{id}/{step}").into_bytes()
}

fn chunk_key(prefix: &str, n: u32) -> Vec<u8> {
    format!("{prefix}/{n:02}").into_bytes()
}

fn json<T: Serialize>(value: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(value).expect("records serialize"))
}

fn parse<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|err| StoreError::Corrupt(format!("{what}: {err}")))
}

/// Writes storing `bytes` in chunks under `prefix`; and how many.
fn blob_writes(prefix: &str, bytes: &[u8], writes: &mut Vec<ObjectWrite>) -> u32 {
    let mut n = 0;
    for chunk in bytes.chunks(CHUNK) {
        writes.push(ObjectWrite::Put(chunk_key(prefix, n), Bytes::copy_from_slice(chunk)));
        n += 1;
    }
    n
}

async fn read_blob(
    storage: &dyn ObjectStorage,
    object: &ObjectKey,
    prefix: &str,
    chunks: u32,
) -> Result<Vec<u8>, StoreError> {
    let keys: Vec<Vec<u8>> = (0..chunks).map(|n| chunk_key(prefix, n)).collect();
    let mut bytes = Vec::new();
    for (n, chunk) in storage.object_get(object, &keys).await?.into_iter().enumerate() {
        let chunk = chunk.ok_or_else(|| StoreError::Corrupt(format!("{prefix}: chunk {n} of {chunks} is missing")))?;
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// Every instance record of a workflow.
pub async fn load_instances(storage: &dyn ObjectStorage, workflow: &str) -> Result<Vec<InstanceRecord>, StoreError> {
    let options = ObjectListOptions { prefix: Some(b"i/".to_vec()), ..Default::default() };
    let entries = storage.object_list(&workflow_object(workflow), options).await?;
    entries.iter().map(|(_, value)| parse("instance record", value)).collect()
}

pub fn record_write(record: &InstanceRecord, writes: &mut Vec<ObjectWrite>) {
    writes.push(ObjectWrite::Put(record_key(&record.id), json(record)));
}

/// Stores an instance's parameters; returns the chunk count for its record.
pub fn params_writes(id: &str, bytes: &[u8], writes: &mut Vec<ObjectWrite>) -> u32 {
    blob_writes(&format!("p/{id}"), bytes, writes)
}

pub async fn read_params(
    storage: &dyn ObjectStorage,
    workflow: &str,
    record: &InstanceRecord,
) -> Result<Vec<u8>, StoreError> {
    read_blob(storage, &workflow_object(workflow), &format!("p/{}", record.id), record.params_chunks).await
}

pub fn output_writes(id: &str, bytes: &[u8], writes: &mut Vec<ObjectWrite>) -> u32 {
    blob_writes(&format!("o/{id}"), bytes, writes)
}

pub async fn read_output(
    storage: &dyn ObjectStorage,
    workflow: &str,
    record: &InstanceRecord,
) -> Result<Vec<u8>, StoreError> {
    read_blob(storage, &workflow_object(workflow), &format!("o/{}", record.id), record.output_chunks).await
}

pub fn step_write(id: &str, step: &str, record: &StepRecord, writes: &mut Vec<ObjectWrite>) {
    writes.push(ObjectWrite::Put(step_record_key(id, step), json(record)));
}

/// Stores a step's value; returns the chunk count for its record.
pub fn step_value_writes(id: &str, step: &str, bytes: &[u8], writes: &mut Vec<ObjectWrite>) -> u32 {
    blob_writes(&format!("v/{id}/{step}"), bytes, writes)
}

pub async fn read_step_value(
    storage: &dyn ObjectStorage,
    workflow: &str,
    id: &str,
    step: &str,
    chunks: u32,
) -> Result<Vec<u8>, StoreError> {
    read_blob(storage, &workflow_object(workflow), &format!("v/{id}/{step}"), chunks).await
}

/// Every step of an instance, in no particular order.
pub async fn list_steps(storage: &dyn ObjectStorage, workflow: &str, id: &str) -> Result<Vec<StepRecord>, StoreError> {
    let options = ObjectListOptions { prefix: Some(format!("s/{id}/").into_bytes()), ..Default::default() };
    let entries = storage.object_list(&workflow_object(workflow), options).await?;
    entries.iter().map(|(_, value)| parse("step record", value)).collect()
}

/// An event sent to an instance and not yet taken by a `waitForEvent`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventHeader {
    pub seq: u64,
    #[serde(rename = "type")]
    pub event_type: String,
    pub timestamp_ms: u64,
    pub encoding: Encoding,
    pub chunks: u32,
    pub json: Option<String>,
}

fn event_key(id: &str, seq: u64) -> Vec<u8> {
    format!("e/{id}/{seq:016x}").into_bytes()
}

pub fn event_writes(id: &str, header: &mut EventHeader, payload: &[u8], writes: &mut Vec<ObjectWrite>) {
    header.chunks = blob_writes(&format!("f/{id}/{:016x}", header.seq), payload, writes);
    writes.push(ObjectWrite::Put(event_key(id, header.seq), json(header)));
}

/// The events waiting for an instance, oldest first.
pub async fn pending_events(
    storage: &dyn ObjectStorage,
    workflow: &str,
    id: &str,
) -> Result<Vec<EventHeader>, StoreError> {
    let options = ObjectListOptions { prefix: Some(format!("e/{id}/").into_bytes()), ..Default::default() };
    let entries = storage.object_list(&workflow_object(workflow), options).await?;
    entries.iter().map(|(_, value)| parse("event", value)).collect()
}

pub async fn read_event_payload(
    storage: &dyn ObjectStorage,
    workflow: &str,
    id: &str,
    header: &EventHeader,
) -> Result<Vec<u8>, StoreError> {
    read_blob(storage, &workflow_object(workflow), &format!("f/{id}/{:016x}", header.seq), header.chunks).await
}

/// Writes removing a taken event.
pub fn event_removal(id: &str, header: &EventHeader, writes: &mut Vec<ObjectWrite>) {
    writes.push(ObjectWrite::Delete(event_key(id, header.seq)));
    for n in 0..header.chunks {
        writes.push(ObjectWrite::Delete(chunk_key(&format!("f/{id}/{:016x}", header.seq), n)));
    }
}

/// Writes deleting an instance's progress: its steps, their values, its
/// output and pending events; with `everything`, its record and
/// parameters too.
pub async fn removal_writes(
    storage: &dyn ObjectStorage,
    workflow: &str,
    id: &str,
    everything: bool,
) -> Result<Vec<ObjectWrite>, StoreError> {
    let object = workflow_object(workflow);
    let mut prefixes = vec!["s", "v", "o", "e", "f"];
    if everything {
        prefixes.extend(["i", "p"]);
    }
    let mut writes = Vec::new();
    for prefix in prefixes {
        let prefix = if prefix == "i" { format!("i/{id}") } else { format!("{prefix}/{id}/") };
        let options = ObjectListOptions { prefix: Some(prefix.into_bytes()), ..Default::default() };
        for (key, _) in storage.object_list(&object, options).await? {
            // `i/<id>` as a prefix also matches `i/<id>x`: only the exact key.
            if key.starts_with(b"i/") && key != record_key(id) {
                continue;
            }
            writes.push(ObjectWrite::Delete(key));
        }
    }
    Ok(writes)
}

/// Commits one decision's writes of a workflow together.
pub async fn commit(storage: &dyn ObjectStorage, workflow: &str, writes: Vec<ObjectWrite>) -> Result<(), StoreError> {
    if writes.is_empty() {
        return Ok(());
    }
    storage.object_transaction(&workflow_object(workflow), writes).await?;
    Ok(())
}
