//! What an instance and its steps are, as stored and as reported.

use serde::{Deserialize, Serialize};

use crate::policy::StepConfig;

/// An instance's status, with Cloudflare's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Status {
    Queued,
    Running,
    Paused,
    Errored,
    Terminated,
    Complete,
    Waiting,
    WaitingForPause,
    Unknown,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Errored => "errored",
            Status::Terminated => "terminated",
            Status::Complete => "complete",
            Status::Waiting => "waiting",
            Status::WaitingForPause => "waitingForPause",
            Status::Unknown => "unknown",
        }
    }

    /// Whether the instance has ended (nothing more will run unless it is
    /// restarted).
    pub fn is_final(self) -> bool {
        matches!(self, Status::Errored | Status::Terminated | Status::Complete)
    }
}

/// An error as `status()` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    pub name: String,
    pub message: String,
}

/// The longest error message kept, in bytes (longer ones are cut).
pub const MAX_ERROR_BYTES: usize = 4096;

impl ErrorInfo {
    pub fn new(name: impl Into<String>, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.len() > MAX_ERROR_BYTES {
            let mut end = MAX_ERROR_BYTES;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push('…');
        }
        ErrorInfo { name: name.into(), message }
    }
}

/// How a stored value is encoded: V8's structured clone (from a worker) or
/// JSON (from the command line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    V8,
    Json,
}

/// A value a worker or the command line handed over: parameters, an
/// event's payload, a step's result, an output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    pub encoding: Encoding,
    pub bytes: Vec<u8>,
    /// A JSON rendering for people (the command line), if the value has one.
    pub json: Option<String>,
}

/// The longest JSON rendering kept for people, in bytes.
pub const MAX_PREVIEW_BYTES: usize = 8192;

/// `text` cut to [`MAX_PREVIEW_BYTES`] (marked with `…` where cut).
pub fn preview(text: &str) -> String {
    if text.len() <= MAX_PREVIEW_BYTES {
        return text.to_string();
    }
    let mut end = MAX_PREVIEW_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// One instance, as stored (`i/<id>`) and loaded at start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceRecord {
    pub id: String,
    pub status: Status,
    pub created_ms: u64,
    pub started_ms: Option<u64>,
    pub ended_ms: Option<u64>,
    /// When a sleeping or retrying instance runs again.
    pub wake_at_ms: Option<u64>,
    /// Event types a waiting instance waits for.
    #[serde(default)]
    pub waiting_for: Vec<String>,
    pub error: Option<ErrorInfo>,
    pub params_encoding: Encoding,
    pub params_chunks: u32,
    pub params_json: Option<String>,
    pub output_chunks: u32,
    pub output_encoding: Option<Encoding>,
    pub output_json: Option<String>,
    /// Runs that ended without an answer from the worker (an isolate that
    /// died, a worker not deployed) in a row.
    #[serde(default)]
    pub failed_runs: u32,
    /// Events sent so far (their sequence numbers).
    #[serde(default)]
    pub events_sent: u64,
    /// Events sent and not yet taken by a `waitForEvent`.
    #[serde(default)]
    pub events_pending: u32,
    /// Steps (`step.do`) begun so far, for the workflow's step limit.
    #[serde(default)]
    pub steps: u32,
}

impl InstanceRecord {
    /// A new instance, queued; its params are stored in `params_chunks`
    /// chunks, `params_json` is their rendering for people.
    pub fn queued(
        id: String,
        created_ms: u64,
        params_encoding: Encoding,
        params_chunks: u32,
        params_json: Option<String>,
    ) -> Self {
        InstanceRecord {
            id,
            status: Status::Queued,
            created_ms,
            started_ms: None,
            ended_ms: None,
            wake_at_ms: None,
            waiting_for: Vec::new(),
            error: None,
            params_encoding,
            params_chunks,
            params_json: params_json.as_deref().map(preview),
            output_chunks: 0,
            output_encoding: None,
            output_json: None,
            failed_runs: 0,
            events_sent: 0,
            events_pending: 0,
            steps: 0,
        }
    }

    /// The same instance from the beginning again (`restart()`): its id,
    /// creation time and params; its events keep their numbering.
    pub fn restarted(&self) -> Self {
        let (id, params_json) = (self.id.clone(), self.params_json.clone());
        InstanceRecord {
            events_sent: self.events_sent,
            ..InstanceRecord::queued(id, self.created_ms, self.params_encoding, self.params_chunks, params_json)
        }
    }
}

/// What a step is (its key's kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StepKind {
    Do,
    Sleep,
    WaitForEvent,
}

impl StepKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::Do => "do",
            StepKind::Sleep => "sleep",
            StepKind::WaitForEvent => "waitForEvent",
        }
    }
}

/// One attempt of a `step.do`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    pub start_ms: u64,
    pub end_ms: u64,
    pub error: Option<ErrorInfo>,
}

/// Where a step stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "camelCase")]
pub enum StepState {
    /// Finished: its value is stored (`value_chunks` chunks).
    #[serde(rename_all = "camelCase")]
    Done {
        value_chunks: u32,
        encoding: Encoding,
        json: Option<String>,
        end_ms: u64,
        /// For a `waitForEvent`: the event's type and when it was sent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event: Option<(String, u64)>,
    },
    /// Failed for good: `step.do` throws this.
    Failed { error: ErrorInfo },
    /// An attempt failed; the next is due then.
    #[serde(rename_all = "camelCase")]
    Retrying { next_at_ms: u64 },
    /// Sleeping until then.
    #[serde(rename_all = "camelCase")]
    Sleeping { until_ms: u64 },
    /// Waiting for an event of this type until the deadline.
    #[serde(rename_all = "camelCase")]
    Waiting { event_type: String, deadline_ms: u64 },
    /// The wait ended without an event.
    #[serde(rename_all = "camelCase")]
    TimedOut { event_type: String },
}

/// One step of an instance, as stored (`s/<id>/<key>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepRecord {
    pub name: String,
    /// Which occurrence of the name in a run (1 for the first).
    pub occurrence: u32,
    pub kind: StepKind,
    pub config: Option<StepConfig>,
    pub started_ms: u64,
    #[serde(default)]
    pub attempts: Vec<Attempt>,
    #[serde(flatten)]
    pub state: StepState,
}

/// What `status()` answers.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusView {
    pub status: Status,
    pub error: Option<ErrorInfo>,
    pub output: Option<Payload>,
}
