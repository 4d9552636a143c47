//! What workers (through the binding) and people (through the command
//! line) ask of instances: create them, read their status, pause, resume,
//! terminate, restart them, send them events, list and describe them.

use std::collections::HashSet;
use std::sync::Arc;

use super::{now_ms, Engine, Instance, Live, Workflow};
use crate::lifecycle::{self, Control, RefusedControl};
use crate::model::{preview, Encoding, InstanceRecord, Payload, Status, StatusView, StepRecord};
use crate::policy::{check_id, new_id, IdError, MAX_BATCH, MAX_PENDING_EVENTS, MAX_VALUE_BYTES};
use crate::store::{self, EventHeader, StoreError};

/// Why a call about instances was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    #[error("workflow {0:?} is not deployed on this node")]
    NoSuchWorkflow(String),
    #[error("instance.not_found: workflow {workflow:?} has no instance {id:?}")]
    NotFound { workflow: String, id: String },
    #[error("instance.already_exists: workflow {workflow:?} already has an instance {id:?}")]
    AlreadyExists { workflow: String, id: String },
    #[error(transparent)]
    InvalidId(#[from] IdError),
    #[error("{what} is {size} bytes serialized; the limit is 1 MiB")]
    TooLarge { what: &'static str, size: usize },
    #[error("createBatch takes 1 to {MAX_BATCH} instances, got {0}")]
    BatchSize(usize),
    #[error("event types are 1 to 100 characters of letters, digits, '-', '_' and '.', got {0:?}")]
    InvalidEventType(String),
    #[error(transparent)]
    Refused(#[from] RefusedControl),
    #[error("instance {id:?} already holds {MAX_PENDING_EVENTS} events no step has taken")]
    TooManyEvents { id: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An instance to create.
#[derive(Debug, Clone)]
pub struct NewInstance {
    /// Its id; a fresh UUID if none.
    pub id: Option<String>,
    pub params: Payload,
}

/// A workflow, for `outpost workflows list`.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowSummary {
    pub name: String,
    pub worker: Option<String>,
    pub class_name: Option<String>,
    /// Instances by status.
    pub instances: std::collections::BTreeMap<String, usize>,
}

/// An instance with its steps, for `outpost workflows instances describe`.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Description {
    pub instance: InstanceRecord,
    /// Its steps in the order they began.
    pub steps: Vec<StepRecord>,
    /// Events sent and not yet taken.
    pub pending_events: Vec<EventHeader>,
}

fn check_event_type(event_type: &str) -> Result<(), ControlError> {
    let ok = !event_type.is_empty()
        && event_type.len() <= 100
        && event_type.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ControlError::InvalidEventType(event_type.to_string()))
    }
}

fn check_size(what: &'static str, payload: &Payload) -> Result<(), ControlError> {
    if payload.bytes.len() > MAX_VALUE_BYTES {
        return Err(ControlError::TooLarge { what, size: payload.bytes.len() });
    }
    Ok(())
}

impl Engine {
    async fn loaded(&self, workflow: &str) -> Result<Arc<Workflow>, ControlError> {
        let found = self.inner.workflows.lock().unwrap().get(workflow).cloned();
        let workflow = match found {
            Some(found) if found.definition().is_some() => found,
            _ => return Err(ControlError::NoSuchWorkflow(workflow.to_string())),
        };
        self.inner.ensure_loaded(&workflow).await?;
        Ok(workflow)
    }

    async fn instance(&self, workflow: &str, id: &str) -> Result<(Arc<Workflow>, Arc<Instance>), ControlError> {
        let workflow = self.loaded(workflow).await?;
        let instance = workflow
            .instance(id)
            .ok_or_else(|| ControlError::NotFound { workflow: workflow.name.clone(), id: id.to_string() })?;
        Ok((workflow, instance))
    }

    /// Creates instances, all or none; resolves with their ids once they
    /// are durable. They start as the workflow's concurrency allows.
    pub async fn create(&self, workflow: &str, batch: Vec<NewInstance>) -> Result<Vec<String>, ControlError> {
        if batch.is_empty() || batch.len() > MAX_BATCH {
            return Err(ControlError::BatchSize(batch.len()));
        }
        let workflow = self.loaded(workflow).await?;
        let now = now_ms();
        let mut records = Vec::with_capacity(batch.len());
        let mut writes = Vec::new();
        let mut seen = HashSet::new();
        for new in batch {
            let id = match new.id {
                Some(id) => {
                    check_id(&id)?;
                    id
                }
                None => new_id(),
            };
            check_size("the instance's params", &new.params)?;
            if !seen.insert(id.clone()) || workflow.instance(&id).is_some() {
                return Err(ControlError::AlreadyExists { workflow: workflow.name.clone(), id });
            }
            let params_chunks = store::params_writes(&id, &new.params.bytes, &mut writes);
            let record = InstanceRecord::queued(id, now, new.params.encoding, params_chunks, new.params.json);
            store::record_write(&record, &mut writes);
            records.push(record);
        }
        // Claimed before the write, so a concurrent create of the same id
        // is refused rather than overwriting.
        let ids: Vec<String> = records.iter().map(|r| r.id.clone()).collect();
        {
            let mut instances = workflow.instances.lock().unwrap();
            if let Some(id) = ids.iter().find(|id| instances.contains_key(*id)) {
                return Err(ControlError::AlreadyExists { workflow: workflow.name.clone(), id: id.clone() });
            }
            for record in records {
                let live = Live { record, run_seq: 0, in_run: false };
                let id = live.record.id.clone();
                instances.insert(id, Arc::new(Instance { live: tokio::sync::Mutex::new(live) }));
            }
        }
        if let Err(err) = store::commit(self.inner.storage.as_ref(), &workflow.name, writes).await {
            let mut instances = workflow.instances.lock().unwrap();
            for id in &ids {
                instances.remove(id);
            }
            return Err(err.into());
        }
        {
            let mut agenda = self.inner.agenda.lock().unwrap();
            for id in &ids {
                agenda.push_ready(&workflow.name, id);
            }
        }
        self.inner.wake();
        Ok(ids)
    }

    /// Whether the instance exists (`get(id)` refuses unknown ids).
    pub async fn exists(&self, workflow: &str, id: &str) -> Result<(), ControlError> {
        self.instance(workflow, id).await.map(|_| ())
    }

    /// `status()`: the status, the error, the output.
    pub async fn status(&self, workflow: &str, id: &str) -> Result<StatusView, ControlError> {
        let (workflow, instance) = self.instance(workflow, id).await?;
        let live = instance.live.lock().await;
        let record = &live.record;
        let output = match record.output_encoding {
            Some(encoding) if record.status == Status::Complete => {
                let bytes = store::read_output(self.inner.storage.as_ref(), &workflow.name, record).await?;
                Some(Payload { encoding, bytes, json: record.output_json.clone() })
            }
            _ => None,
        };
        Ok(StatusView { status: record.status, error: record.error.clone(), output })
    }

    /// `pause()`, `resume()`, `terminate()` or `restart()`.
    pub async fn control(&self, workflow: &str, id: &str, action: Control) -> Result<Status, ControlError> {
        let (workflow, instance) = self.instance(workflow, id).await?;
        let mut live = instance.live.lock().await;
        let record = &live.record;
        let sleeping = record.wake_at_ms.is_some() || !record.waiting_for.is_empty();
        let status = lifecycle::control(record.status, action, live.in_run, sleeping)?;
        if status == record.status && status.is_final() {
            return Ok(status);
        }
        let now = now_ms();
        let mut writes = Vec::new();
        match action {
            Control::Restart => {
                writes = store::removal_writes(self.inner.storage.as_ref(), &workflow.name, id, false).await?;
                live.record = live.record.restarted();
                live.run_seq += 1;
                live.in_run = false;
            }
            Control::Terminate => {
                live.record.ended_ms = Some(now);
                live.run_seq += 1;
                live.in_run = false;
            }
            Control::Pause | Control::Resume => {}
        }
        live.record.status = status;
        store::record_write(&live.record, &mut writes);
        store::commit(self.inner.storage.as_ref(), &workflow.name, writes).await?;
        let mut agenda = self.inner.agenda.lock().unwrap();
        match (action, status) {
            (Control::Restart, _) | (Control::Resume, Status::Queued) => agenda.push_ready(&workflow.name, id),
            (Control::Resume, Status::Waiting | Status::Running) => {
                // Its timer may have fired while it was paused: set it again.
                // And look now: its time may have passed, or an event come.
                if let Some(at) = live.record.wake_at_ms {
                    agenda.set_timer(&workflow.name, id, at);
                }
                agenda.push_ready(&workflow.name, id);
            }
            _ => {}
        }
        drop(agenda);
        self.inner.wake();
        tracing::info!(workflow = %workflow.name, instance = %id, "{} → {}", action.as_str(), status.as_str());
        Ok(status)
    }

    /// `sendEvent({ type, payload })`: kept for the instance's
    /// `waitForEvent` of that type (now or later); wakes it if it waits.
    /// An event for a finished instance is dropped.
    pub async fn send_event(
        &self,
        workflow: &str,
        id: &str,
        event_type: &str,
        payload: Payload,
    ) -> Result<(), ControlError> {
        check_event_type(event_type)?;
        check_size("the event's payload", &payload)?;
        let (workflow, instance) = self.instance(workflow, id).await?;
        let mut live = instance.live.lock().await;
        if live.record.status.is_final() {
            // No step will ever take it; as Cloudflare's engine, no error.
            tracing::debug!(workflow = %workflow.name, instance = %id, "event for a finished instance dropped");
            return Ok(());
        }
        if live.record.events_pending >= MAX_PENDING_EVENTS {
            return Err(ControlError::TooManyEvents { id: id.to_string() });
        }
        let mut header = EventHeader {
            seq: live.record.events_sent,
            event_type: event_type.to_string(),
            timestamp_ms: now_ms(),
            encoding: payload.encoding,
            chunks: 0,
            json: payload.json.as_deref().map(preview),
        };
        live.record.events_sent += 1;
        live.record.events_pending += 1;
        let mut writes = Vec::new();
        store::event_writes(id, &mut header, &payload.bytes, &mut writes);
        store::record_write(&live.record, &mut writes);
        store::commit(self.inner.storage.as_ref(), &workflow.name, writes).await?;
        if live.record.status == Status::Waiting && live.record.waiting_for.iter().any(|t| t == event_type) {
            self.inner.agenda.lock().unwrap().push_ready(&workflow.name, id);
            self.inner.wake();
        }
        Ok(())
    }

    /// Every workflow this node knows (deployed or with stored instances
    /// loaded), with its instances counted by status.
    pub async fn list_workflows(&self) -> Vec<WorkflowSummary> {
        let workflows: Vec<Arc<Workflow>> = self.inner.workflows.lock().unwrap().values().cloned().collect();
        let mut summaries = Vec::new();
        for workflow in workflows {
            let definition = workflow.definition();
            if definition.is_some() {
                let _ = self.inner.ensure_loaded(&workflow).await;
            }
            let instances: Vec<Arc<Instance>> = workflow.instances.lock().unwrap().values().cloned().collect();
            let mut counts = std::collections::BTreeMap::new();
            for instance in instances {
                let status = instance.live.lock().await.record.status;
                *counts.entry(status.as_str().to_string()).or_default() += 1;
            }
            summaries.push(WorkflowSummary {
                name: workflow.name.clone(),
                worker: definition.as_ref().map(|d| d.worker.clone()),
                class_name: definition.map(|d| d.class_name),
                instances: counts,
            });
        }
        summaries.sort_by(|a, b| a.name.cmp(&b.name));
        summaries
    }

    /// A workflow's instances, newest first.
    pub async fn list_instances(&self, workflow: &str) -> Result<Vec<InstanceRecord>, ControlError> {
        let workflow = self.loaded(workflow).await?;
        let instances: Vec<Arc<Instance>> = workflow.instances.lock().unwrap().values().cloned().collect();
        let mut records = Vec::with_capacity(instances.len());
        for instance in instances {
            records.push(instance.live.lock().await.record.clone());
        }
        records.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then_with(|| a.id.cmp(&b.id)));
        Ok(records)
    }

    /// An instance, its steps and its pending events.
    pub async fn describe(&self, workflow: &str, id: &str) -> Result<Description, ControlError> {
        let (workflow, instance) = self.instance(workflow, id).await?;
        let live = instance.live.lock().await;
        let storage = self.inner.storage.as_ref();
        let mut steps = store::list_steps(storage, &workflow.name, id).await?;
        steps.sort_by(|a, b| a.started_ms.cmp(&b.started_ms).then_with(|| a.occurrence.cmp(&b.occurrence)));
        let pending_events = store::pending_events(storage, &workflow.name, id).await?;
        Ok(Description { instance: live.record.clone(), steps, pending_events })
    }
}

/// Parameters given as JSON text (the command line's `trigger`).
pub fn json_params(text: &str) -> Result<Payload, serde_json::Error> {
    let value: serde_json::Value = serde_json::from_str(text)?;
    let text = value.to_string();
    Ok(Payload { encoding: Encoding::Json, json: Some(crate::model::preview(&text)), bytes: text.into_bytes() })
}
