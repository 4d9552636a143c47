//! A run's step calls: what `step.do`, `step.sleep`, `step.sleepUntil` and
//! `step.waitForEvent` are answered. A finished step is answered from the
//! store however often `run()` replays; a step that must wait (a sleep, a
//! retry delay, an event not yet sent) makes the run halt: the answer is
//! [`DoAnswer::Halt`] (and the like), the runtime stops the run, and the
//! engine records when it is due again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{now_ms, Inner, Instance, Live, Workflow};
use crate::lifecycle::Halt;
use crate::model::{preview, Attempt, ErrorInfo, Payload, Status, StepKind, StepRecord, StepState};
use crate::policy::{after_failure, AfterFailure, StepConfig, MAX_SLEEP_MS, MAX_STEP_NAME_CHARS, MAX_VALUE_BYTES};
use crate::store::{self, StoreError};

/// Why a step call failed (the step's code sees it thrown).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    #[error("step names must be 1 to {MAX_STEP_NAME_CHARS} characters, got {0}")]
    InvalidName(usize),
    #[error("the step {name:?} (occurrence {occurrence}) was a {was:?} step in an earlier run of this instance: step names and their order must be deterministic")]
    NotDeterministic { name: String, occurrence: u32, was: StepKind },
    #[error("this step has no attempt in progress")]
    NoAttempt,
    #[error("sleeps are at most 365 days, got {0} ms")]
    SleepTooLong(u64),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What `step.do` is told.
#[derive(Debug, Clone, PartialEq)]
pub enum DoAnswer {
    /// The step's result: return it.
    Done(Payload),
    /// The step failed for good: throw this.
    Failed(ErrorInfo),
    /// Run the callback: attempt `attempt` of step `key`, for at most
    /// `timeout_ms`.
    Run { key: String, attempt: u32, timeout_ms: u64 },
    /// Stop: the run is halting.
    Halt,
}

/// What a sleep is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SleepAnswer {
    Done,
    Halt,
    /// `sleepUntil` a time already past (on the sleep's first run).
    InPast,
}

/// How long a sleep is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SleepUntil {
    For(u64),
    At(u64),
}

/// What `waitForEvent` is told.
#[derive(Debug, Clone, PartialEq)]
pub enum EventAnswer {
    Event { payload: Payload, event_type: String, timestamp_ms: u64 },
    TimedOut,
    Halt,
}

/// How a failed attempt failed.
#[derive(Debug, Clone, PartialEq)]
pub struct StepFailure {
    pub error: ErrorInfo,
    /// A `NonRetryableError`: no more attempts.
    pub non_retryable: bool,
}

/// An attempt handed to the runtime and not yet ended.
struct OpenAttempt {
    name: String,
    occurrence: u32,
    attempt: u32,
    start_ms: u64,
    config: StepConfig,
}

/// The step calls of one run. Cheap to clone.
#[derive(Clone)]
pub struct RunJournal {
    inner: Arc<JournalInner>,
}

struct JournalInner {
    engine: Arc<Inner>,
    workflow: Arc<Workflow>,
    instance: Arc<Instance>,
    id: String,
    seq: u64,
    step_limit: u32,
    occurrences: Mutex<HashMap<String, u32>>,
    /// The instance's step records by key, read once a run (then kept up
    /// to date by the run's own writes, which hold the instance's lock):
    /// a step then costs no read of the store, only its commit.
    steps: Mutex<Option<HashMap<String, StepRecord>>>,
    /// Some step was told to halt: steps not yet begun are told too.
    halting: std::sync::atomic::AtomicBool,
    halt: Mutex<Halt>,
    open: Mutex<HashMap<String, OpenAttempt>>,
}

impl std::fmt::Debug for RunJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunJournal").field("workflow", &self.inner.workflow.name).field("seq", &self.inner.seq).finish()
    }
}

/// A step call under way: see [`RunJournal::enter`].
struct Entered<'a> {
    occurrence: u32,
    key: String,
    live: tokio::sync::MutexGuard<'a, Live>,
    standing: Standing,
    step: Option<StepRecord>,
    now: u64,
}

/// Where the instance stands for this run's step calls.
enum Standing {
    /// This run is over (terminated, restarted, given up on): halt.
    Stale,
    /// A pause was asked for: steps not finished halt.
    Pausing,
    Running,
}

impl RunJournal {
    pub(super) fn new(
        engine: Arc<Inner>,
        workflow: Arc<Workflow>,
        instance: Arc<Instance>,
        id: String,
        seq: u64,
        step_limit: u32,
    ) -> Self {
        RunJournal {
            inner: Arc::new(JournalInner {
                engine,
                workflow,
                instance,
                id,
                seq,
                step_limit,
                occurrences: Mutex::default(),
                steps: Mutex::default(),
                halting: Default::default(),
                halt: Mutex::default(),
                open: Mutex::default(),
            }),
        }
    }

    pub(super) fn halt_state(&self) -> Halt {
        self.inner.halt.lock().unwrap().clone()
    }

    fn storage(&self) -> &dyn outpost_kv::objects::ObjectStorage {
        self.inner.engine.storage.as_ref()
    }

    fn workflow(&self) -> &str {
        &self.inner.workflow.name
    }

    fn standing(&self, live: &Live) -> Standing {
        if live.run_seq != self.inner.seq || live.record.status.is_final() {
            Standing::Stale
        } else if live.record.status == Status::WaitingForPause {
            Standing::Pausing
        } else {
            Standing::Running
        }
    }

    /// Halts the run; it is due again at `wake_at_ms` (if any).
    fn halt(&self, wake_at_ms: Option<u64>, waiting: bool, event_type: Option<&str>, for_pause: bool) {
        self.inner.halting.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut halt = self.inner.halt.lock().unwrap();
        halt.for_pause |= for_pause;
        halt.waiting |= waiting;
        if let Some(at) = wake_at_ms {
            halt.wake_at_ms = Some(halt.wake_at_ms.map_or(at, |earlier| earlier.min(at)));
        }
        if let Some(event_type) = event_type {
            if !halt.waiting_for.iter().any(|t| t == event_type) {
                halt.waiting_for.push(event_type.to_string());
            }
        }
    }

    fn halting(&self) -> bool {
        self.inner.halting.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The key of the next occurrence of `name` as a step of `kind` in this
    /// run (each kind counts its names apart, as Cloudflare's engine does).
    fn next_key(&self, kind: StepKind, name: &str) -> Result<(u32, String), JournalError> {
        let chars = name.chars().count();
        if chars == 0 || chars > MAX_STEP_NAME_CHARS {
            return Err(JournalError::InvalidName(chars));
        }
        let mut occurrences = self.inner.occurrences.lock().unwrap();
        let occurrence = occurrences.entry(format!("{}:{name}", kind.as_str())).or_default();
        *occurrence += 1;
        Ok((*occurrence, key_of(kind, name, *occurrence)))
    }

    /// Remembers what the run just stored for step `key`.
    fn remember(&self, key: &str, record: StepRecord) {
        if let Some(steps) = self.inner.steps.lock().unwrap().as_mut() {
            steps.insert(key.to_string(), record);
        }
    }

    /// The instance's step `key`, from the records read at the run's first step.
    async fn known_step(&self, key: &str) -> Result<Option<StepRecord>, JournalError> {
        if self.inner.steps.lock().unwrap().is_none() {
            let listed = store::list_steps(self.storage(), self.workflow(), self.id()).await?;
            let by_key =
                listed.into_iter().map(|step| (key_of(step.kind, &step.name, step.occurrence), step)).collect();
            *self.inner.steps.lock().unwrap() = Some(by_key);
        }
        Ok(self.inner.steps.lock().unwrap().as_ref().and_then(|steps| steps.get(key).cloned()))
    }

    /// How every step call begins: the step's key (its occurrence counted),
    /// the instance's lock, where the instance stands and the step's
    /// record; `None` when this pass is over (the call answers "halt").
    async fn enter(&self, kind: StepKind, name: &str) -> Result<Option<Entered<'_>>, JournalError> {
        let (occurrence, key) = self.next_key(kind, name)?;
        let live = self.inner.instance.live.lock().await;
        let standing = self.standing(&live);
        if let Standing::Stale = standing {
            return Ok(None);
        }
        let step = self.read_step(&key, name, occurrence, kind).await?;
        Ok(Some(Entered { occurrence, key, live, standing, step, now: now_ms() }))
    }

    async fn read_step(
        &self,
        key: &str,
        name: &str,
        occurrence: u32,
        kind: StepKind,
    ) -> Result<Option<StepRecord>, JournalError> {
        let step = self.known_step(key).await?;
        match step {
            Some(step) if step.kind != kind => {
                Err(JournalError::NotDeterministic { name: name.to_string(), occurrence, was: step.kind })
            }
            other => Ok(other),
        }
    }

    fn id(&self) -> &str {
        &self.inner.id
    }
}

impl RunJournal {
    /// `step.do(name, config, callback)` begins.
    pub async fn begin_do(&self, name: &str, config: StepConfig) -> Result<DoAnswer, JournalError> {
        let Some(Entered { occurrence, key, mut live, standing, step, now }) = self.enter(StepKind::Do, name).await?
        else {
            return Ok(DoAnswer::Halt);
        };
        let attempt = match step.map(|step| (step.attempts.len(), step.state)) {
            Some((_, StepState::Done { value_chunks, encoding, json, .. })) => {
                let bytes =
                    store::read_step_value(self.storage(), self.workflow(), self.id(), &key, value_chunks).await?;
                return Ok(DoAnswer::Done(Payload { encoding, bytes, json }));
            }
            Some((_, StepState::Failed { error })) => return Ok(DoAnswer::Failed(error)),
            Some((attempts, StepState::Retrying { next_at_ms })) => {
                if let Standing::Pausing = standing {
                    self.halt(Some(next_at_ms), false, None, true);
                    return Ok(DoAnswer::Halt);
                }
                if next_at_ms > now || self.halting() {
                    self.halt(Some(next_at_ms), false, None, false);
                    return Ok(DoAnswer::Halt);
                }
                attempts as u32 + 1
            }
            Some(_) => unreachable!("read_step checked the kind"),
            None => {
                if let Standing::Pausing = standing {
                    self.halt(None, false, None, true);
                    return Ok(DoAnswer::Halt);
                }
                if self.halting() {
                    return Ok(DoAnswer::Halt);
                }
                if live.record.steps >= self.inner.step_limit {
                    let message = format!("the instance reached its limit of {} steps", self.inner.step_limit);
                    return Ok(DoAnswer::Failed(ErrorInfo::new("WorkflowError", message)));
                }
                live.record.steps += 1;
                1
            }
        };
        let open = OpenAttempt { name: name.to_string(), occurrence, attempt, start_ms: now, config };
        self.inner.open.lock().unwrap().insert(key.clone(), open);
        Ok(DoAnswer::Run { key, attempt, timeout_ms: config.timeout_ms })
    }

    /// An attempt of step `key` ended with `outcome`: the result is stored
    /// (and answered as [`DoAnswer::Done`], to be returned), or the step
    /// fails for good, is tried again now ([`DoAnswer::Run`]) or later
    /// ([`DoAnswer::Halt`]).
    pub async fn end_do(&self, key: &str, outcome: Result<Payload, StepFailure>) -> Result<DoAnswer, JournalError> {
        let open = self.inner.open.lock().unwrap().remove(key).ok_or(JournalError::NoAttempt)?;
        let live = self.inner.instance.live.lock().await;
        let standing = self.standing(&live);
        if let Standing::Stale = standing {
            return Ok(DoAnswer::Halt);
        }
        let now = now_ms();
        let outcome = match outcome {
            Ok(value) if value.bytes.len() > MAX_VALUE_BYTES => Err(StepFailure {
                error: ErrorInfo::new(
                    "RangeError",
                    format!(
                        "the result of step {:?} is {} bytes serialized; a step's result may be at most 1 MiB",
                        open.name,
                        value.bytes.len()
                    ),
                ),
                non_retryable: true,
            }),
            other => other,
        };
        let earlier = self.known_step(key).await?;
        let mut attempts = earlier.as_ref().map(|step| step.attempts.clone()).unwrap_or_default();
        let started_ms = earlier.as_ref().map_or(open.start_ms, |step| step.started_ms);
        attempts.push(Attempt {
            start_ms: open.start_ms,
            end_ms: now,
            error: outcome.as_ref().err().map(|failure| failure.error.clone()),
        });
        let mut writes = Vec::new();
        let (state, answer) = match outcome {
            Ok(value) => {
                let value_chunks = store::step_value_writes(self.id(), key, &value.bytes, &mut writes);
                let state = StepState::Done {
                    value_chunks,
                    encoding: value.encoding,
                    json: value.json.as_deref().map(preview),
                    end_ms: now,
                    event: None,
                };
                (state, DoAnswer::Done(value))
            }
            Err(failure) => match after_failure(&open.config, open.attempt, failure.non_retryable, now) {
                AfterFailure::Fail => {
                    (StepState::Failed { error: failure.error.clone() }, DoAnswer::Failed(failure.error))
                }
                AfterFailure::RetryAt(at) => {
                    let answer = if at <= now && !self.halting() && matches!(standing, Standing::Running) {
                        let attempt = open.attempt + 1;
                        let again = OpenAttempt { start_ms: now, attempt, ..open.clone_for_retry() };
                        self.inner.open.lock().unwrap().insert(key.to_string(), again);
                        DoAnswer::Run { key: key.to_string(), attempt, timeout_ms: open.config.timeout_ms }
                    } else {
                        self.halt(Some(at), false, None, matches!(standing, Standing::Pausing));
                        DoAnswer::Halt
                    };
                    (StepState::Retrying { next_at_ms: at }, answer)
                }
            },
        };
        let record = StepRecord {
            name: open.name.clone(),
            occurrence: open.occurrence,
            kind: StepKind::Do,
            config: Some(open.config),
            started_ms,
            attempts,
            state,
        };
        store::step_write(self.id(), key, &record, &mut writes);
        store::commit(self.storage(), self.workflow(), writes).await?;
        self.remember(key, record);
        drop(live);
        Ok(answer)
    }

    /// `step.sleep` / `step.sleepUntil`.
    pub async fn sleep(&self, name: &str, until: SleepUntil) -> Result<SleepAnswer, JournalError> {
        // `_held`: the instance's lock, kept to the end of the call.
        let Some(Entered { occurrence, key, live: _held, standing, step, now }) =
            self.enter(StepKind::Sleep, name).await?
        else {
            return Ok(SleepAnswer::Halt);
        };
        let until_ms = match step {
            Some(StepRecord { state: StepState::Sleeping { until_ms }, .. }) => until_ms,
            Some(_) => return Ok(SleepAnswer::Done),
            None => {
                let until_ms = match until {
                    SleepUntil::For(ms) if ms > MAX_SLEEP_MS => return Err(JournalError::SleepTooLong(ms)),
                    SleepUntil::For(ms) => now.saturating_add(ms),
                    SleepUntil::At(at) if at < now => return Ok(SleepAnswer::InPast),
                    SleepUntil::At(at) if at - now > MAX_SLEEP_MS => return Err(JournalError::SleepTooLong(at - now)),
                    SleepUntil::At(at) => at,
                };
                if until_ms <= now {
                    return Ok(SleepAnswer::Done);
                }
                let record = StepRecord {
                    name: name.to_string(),
                    occurrence,
                    kind: StepKind::Sleep,
                    config: None,
                    started_ms: now,
                    attempts: Vec::new(),
                    state: StepState::Sleeping { until_ms },
                };
                let mut writes = Vec::new();
                store::step_write(self.id(), &key, &record, &mut writes);
                store::commit(self.storage(), self.workflow(), writes).await?;
                self.remember(&key, record);
                until_ms
            }
        };
        if until_ms <= now {
            return Ok(SleepAnswer::Done);
        }
        self.halt(Some(until_ms), true, None, matches!(standing, Standing::Pausing));
        Ok(SleepAnswer::Halt)
    }

    /// `step.waitForEvent(name, { type, timeout })`.
    pub async fn wait_for_event(
        &self,
        name: &str,
        event_type: &str,
        timeout_ms: u64,
    ) -> Result<EventAnswer, JournalError> {
        let Some(Entered { occurrence, key, mut live, standing, step, now }) =
            self.enter(StepKind::WaitForEvent, name).await?
        else {
            return Ok(EventAnswer::Halt);
        };
        let (started_ms, deadline_ms) = match step {
            Some(StepRecord { state: StepState::Done { value_chunks, encoding, json, event, .. }, .. }) => {
                let bytes =
                    store::read_step_value(self.storage(), self.workflow(), self.id(), &key, value_chunks).await?;
                let (event_type, timestamp_ms) = event.unwrap_or_default();
                return Ok(EventAnswer::Event { payload: Payload { encoding, bytes, json }, event_type, timestamp_ms });
            }
            Some(StepRecord { state: StepState::TimedOut { .. }, .. }) => return Ok(EventAnswer::TimedOut),
            Some(StepRecord { state: StepState::Waiting { deadline_ms, .. }, started_ms, .. }) => {
                (started_ms, deadline_ms)
            }
            Some(_) => unreachable!("read_step checked the kind"),
            None => (now, now.saturating_add(timeout_ms)),
        };
        let record = |state| StepRecord {
            name: name.to_string(),
            occurrence,
            kind: StepKind::WaitForEvent,
            config: None,
            started_ms,
            attempts: Vec::new(),
            state,
        };
        let (mut writes, mut written) = (Vec::new(), None);
        let pending = store::pending_events(self.storage(), self.workflow(), self.id()).await?;
        let taken = pending.into_iter().find(|event| event.event_type == event_type);
        if taken.is_some() {
            live.record.events_pending = live.record.events_pending.saturating_sub(1);
        }
        let answer = if let Some(event) = taken {
            let bytes = store::read_event_payload(self.storage(), self.workflow(), self.id(), &event).await?;
            store::event_removal(self.id(), &event, &mut writes);
            let value_chunks = store::step_value_writes(self.id(), &key, &bytes, &mut writes);
            let state = StepState::Done {
                value_chunks,
                encoding: event.encoding,
                json: event.json.clone(),
                end_ms: now,
                event: Some((event.event_type.clone(), event.timestamp_ms)),
            };
            written = Some(record(state));
            EventAnswer::Event {
                payload: Payload { encoding: event.encoding, bytes, json: event.json },
                event_type: event.event_type,
                timestamp_ms: event.timestamp_ms,
            }
        } else if deadline_ms <= now {
            store::step_write(
                self.id(),
                &key,
                &record(StepState::TimedOut { event_type: event_type.to_string() }),
                &mut writes,
            );
            EventAnswer::TimedOut
        } else {
            if step.is_none() {
                written = Some(record(StepState::Waiting { event_type: event_type.to_string(), deadline_ms }));
            }
            self.halt(Some(deadline_ms), true, Some(event_type), matches!(standing, Standing::Pausing));
            EventAnswer::Halt
        };
        if let Some(record) = &written {
            store::step_write(self.id(), &key, record, &mut writes);
        }
        store::commit(self.storage(), self.workflow(), writes).await?;
        if let Some(record) = written {
            self.remember(&key, record);
        }
        drop(live);
        Ok(answer)
    }
}

/// A step's key: its kind, its name, which occurrence of both in a run.
fn key_of(kind: StepKind, name: &str, occurrence: u32) -> String {
    store::step_key(&format!("{}:{name}", kind.as_str()), occurrence)
}

impl OpenAttempt {
    fn clone_for_retry(&self) -> OpenAttempt {
        OpenAttempt { name: self.name.clone(), ..*self }
    }
}
