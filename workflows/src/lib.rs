//! Durable workflows (Cloudflare Workflows' model) for an Outpost node.
//!
//! What it does: keeps every instance of every workflow in the node's
//! store (its record, each step's result or progress, events sent to it);
//! decides, by pure rules, what a step's retries, sleeps and event waits
//! mean ([`policy`], [`lifecycle`], [`duration`]) and which instance runs
//! next ([`agenda`]); and runs the [`Engine`]: it answers the binding's
//! calls (create, status, pause, resume, terminate, restart, send an
//! event), starts runs through a [`Runner`] within each workflow's
//! concurrency, answers a run's step calls from the store
//! ([`RunJournal`]), and records how each run ended. A run replays the
//! workflow's `run()` from the top; finished steps are answered from the
//! store, so a step's callback that finished never runs again, across
//! sleeps, retries and node restarts.
//!
//! What it does not do: run JavaScript (the runtime does, and its ops call
//! the [`RunJournal`]), place runs on isolates (the node's [`Runner`]
//! does, with the isolate pool), or read configuration.

pub mod agenda;
pub mod duration;
mod engine;
pub mod lifecycle;
pub mod model;
pub mod policy;
pub mod store;

pub use engine::{
    json_params, ControlError, Definition, Description, DoAnswer, Engine, EventAnswer, JournalError, NewInstance,
    RunEnd, RunJournal, Runner, SleepAnswer, SleepUntil, StepFailure, WorkflowRun, WorkflowSummary, RUN_LIMIT,
};
pub use lifecycle::Control;
pub use model::{Encoding, ErrorInfo, Payload, Status, StatusView};
