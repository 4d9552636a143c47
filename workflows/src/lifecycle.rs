//! How an instance's status moves: by the instance methods a worker calls
//! (`pause`, `resume`, `terminate`, `restart`) and by how its runs end.
//! Pure functions of the status and what happened.

use crate::model::{ErrorInfo, InstanceRecord, Status};

/// An instance method that changes its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Pause,
    Resume,
    Terminate,
    Restart,
}

impl Control {
    pub fn as_str(self) -> &'static str {
        match self {
            Control::Pause => "pause",
            Control::Resume => "resume",
            Control::Terminate => "terminate",
            Control::Restart => "restart",
        }
    }
}

/// Why an instance method was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {} an instance that is {}", .action.as_str(), .status.as_str())]
pub struct RefusedControl {
    pub action: Control,
    pub status: Status,
}

/// Where `action` takes an instance in `status`; `in_run` says whether a
/// run of it is in flight (a pause then waits for the run to stop, as
/// `waitingForPause`), `sleeping` whether a resumed instance has a wake
/// time to wait for.
pub fn control(status: Status, action: Control, in_run: bool, sleeping: bool) -> Result<Status, RefusedControl> {
    let refuse = Err(RefusedControl { action, status });
    match action {
        Control::Restart => Ok(Status::Queued),
        // As Cloudflare's engine: pausing or resuming a finished instance
        // does nothing; terminating one throws.
        Control::Pause | Control::Resume if status.is_final() => Ok(status),
        Control::Terminate if status.is_final() => refuse,
        Control::Terminate => Ok(Status::Terminated),
        Control::Pause => match status {
            Status::Paused | Status::WaitingForPause => Ok(status),
            _ if in_run => Ok(Status::WaitingForPause),
            _ => Ok(Status::Paused),
        },
        Control::Resume => match status {
            Status::WaitingForPause => Ok(Status::Running),
            Status::Paused if sleeping => Ok(Status::Waiting),
            Status::Paused => Ok(Status::Queued),
            _ => refuse,
        },
    }
}

/// What a run's end was, for the status that follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// It stopped at a sleep or a wait for an event.
    Waiting,
    /// It stopped for a step's retry delay (Cloudflare shows it running).
    Retrying,
    /// It stopped because a pause was asked for.
    ForPause,
}

/// The status after a run stopped without finishing.
pub fn after_stop(status: Status, stopped: Stopped) -> Status {
    match (status, stopped) {
        (Status::WaitingForPause, _) | (_, Stopped::ForPause) => Status::Paused,
        (_, Stopped::Waiting) => Status::Waiting,
        (_, Stopped::Retrying) => Status::Running,
    }
}

/// Whether a pass of the instance may start at `now_ms`: it is queued, or
/// running or waiting and its time has come (or, waiting for events, one
/// may have come).
pub fn runnable(record: &InstanceRecord, now_ms: u64) -> bool {
    let due = record.wake_at_ms.is_none_or(|at| at <= now_ms);
    match record.status {
        Status::Queued | Status::Running => due,
        Status::Waiting => due || !record.waiting_for.is_empty(),
        _ => false,
    }
}

/// Why and until when a pass halted (what its step calls were told).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Halt {
    /// A pause was asked for.
    pub for_pause: bool,
    /// A sleep or an event wait (not only retry delays).
    pub waiting: bool,
    /// The earliest time a step waits for.
    pub wake_at_ms: Option<u64>,
    /// Event types steps wait for.
    pub waiting_for: Vec<String>,
}

/// How a pass ended.
#[derive(Debug, Clone, PartialEq)]
pub enum PassEnd {
    Complete,
    Errored(ErrorInfo),
    Halted(Halt),
    /// No answer from the worker (an isolate that died, a limit).
    Failed(String),
}

/// Passes that fail without an answer in a row before the instance errs.
pub const MAX_FAILED_PASSES: u32 = 5;

/// What the engine does for an instance after recording a pass's end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AfterPass {
    /// Run it again then.
    pub timer: Option<u64>,
    /// Run it again if an event of a type it waits for is pending.
    pub look_for_events: bool,
    /// Run it again now.
    pub run_again: bool,
}

/// Records in `record` how a pass ended at `now_ms` (the output, if any,
/// is the engine's to store), and says what comes next. A failed pass is
/// tried again after 2, 4, 8, 16 s; the fifth failure in a row errs.
pub fn after_pass(record: &mut InstanceRecord, end: PassEnd, now_ms: u64) -> AfterPass {
    let mut next = AfterPass::default();
    match end {
        PassEnd::Complete => {
            record.status = Status::Complete;
            record.ended_ms = Some(now_ms);
            record.failed_runs = 0;
        }
        PassEnd::Errored(error) => {
            record.status = Status::Errored;
            record.ended_ms = Some(now_ms);
            record.error = Some(error);
        }
        PassEnd::Halted(halt) => {
            record.failed_runs = 0;
            let stopped = if halt.for_pause {
                Stopped::ForPause
            } else if halt.waiting || !halt.waiting_for.is_empty() {
                Stopped::Waiting
            } else {
                Stopped::Retrying
            };
            record.status = after_stop(record.status, stopped);
            record.wake_at_ms = halt.wake_at_ms;
            record.waiting_for = halt.waiting_for;
            if record.status != Status::Paused {
                next.timer = record.wake_at_ms;
                next.look_for_events = !record.waiting_for.is_empty();
                // Stopped with nothing to wait for (a step told to halt by
                // a pass that was over): run it again.
                next.run_again = record.wake_at_ms.is_none() && record.waiting_for.is_empty();
            }
        }
        PassEnd::Failed(reason) => {
            record.failed_runs += 1;
            if record.failed_runs >= MAX_FAILED_PASSES {
                record.status = Status::Errored;
                record.ended_ms = Some(now_ms);
                let message = format!("the run failed {} times: {reason}", record.failed_runs);
                record.error = Some(ErrorInfo::new("Error", message));
            } else {
                let at = now_ms + (1000u64 << record.failed_runs.min(10));
                record.status = after_stop(record.status, Stopped::Retrying);
                record.wake_at_ms = Some(at);
                if record.status != Status::Paused {
                    next.timer = Some(at);
                }
            }
        }
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;
    use Control::*;
    use Status::*;

    #[test]
    fn finished_instances_refuse_terminate_ignore_pause_and_resume_and_restart() {
        for status in [Complete, Errored, Terminated] {
            assert_eq!(control(status, Terminate, false, false), Err(RefusedControl { action: Terminate, status }));
            assert_eq!(control(status, Pause, false, false), Ok(status));
            assert_eq!(control(status, Resume, false, false), Ok(status));
            assert_eq!(control(status, Restart, false, false), Ok(Queued));
        }
    }

    #[test]
    fn pause_waits_for_a_run_in_flight_and_resume_goes_back() {
        assert_eq!(control(Running, Pause, true, false), Ok(WaitingForPause));
        assert_eq!(control(Waiting, Pause, false, true), Ok(Paused));
        assert_eq!(control(Queued, Pause, false, false), Ok(Paused));
        assert_eq!(control(Paused, Pause, false, false), Ok(Paused), "pausing twice is harmless");
        assert_eq!(control(WaitingForPause, Resume, true, false), Ok(Running));
        assert_eq!(control(Paused, Resume, false, true), Ok(Waiting));
        assert_eq!(control(Paused, Resume, false, false), Ok(Queued));
        assert!(control(Running, Resume, true, false).is_err(), "resuming a running instance throws");
        assert!(control(Queued, Resume, false, false).is_err());
    }

    #[test]
    fn terminate_and_restart_take_any_unfinished_instance() {
        for status in [Queued, Running, Paused, Waiting, WaitingForPause] {
            assert_eq!(control(status, Terminate, true, false), Ok(Terminated));
            assert_eq!(control(status, Restart, true, false), Ok(Queued));
        }
    }

    #[test]
    fn a_stopped_run_leaves_the_instance_waiting_running_or_paused() {
        assert_eq!(after_stop(Running, Stopped::Waiting), Waiting);
        assert_eq!(after_stop(Running, Stopped::Retrying), Running);
        assert_eq!(after_stop(WaitingForPause, Stopped::Waiting), Paused);
        assert_eq!(after_stop(Running, Stopped::ForPause), Paused);
    }

    fn record(status: Status) -> InstanceRecord {
        InstanceRecord { status, ..InstanceRecord::queued("i".into(), 0, crate::model::Encoding::Json, 0, None) }
    }

    #[test]
    fn a_halted_pass_waits_for_its_earliest_step() {
        let mut r = record(Running);
        let halt = Halt { waiting: true, wake_at_ms: Some(500), waiting_for: vec!["go".into()], ..Halt::default() };
        let next = after_pass(&mut r, PassEnd::Halted(halt), 100);
        assert_eq!((r.status, r.wake_at_ms), (Waiting, Some(500)));
        assert_eq!(next, AfterPass { timer: Some(500), look_for_events: true, run_again: false });
        // A retry delay only: still running, as Cloudflare shows it.
        let mut r = record(Running);
        let next = after_pass(&mut r, PassEnd::Halted(Halt { wake_at_ms: Some(9), ..Halt::default() }), 1);
        assert_eq!((r.status, next.timer), (Running, Some(9)));
        // Paused: no timer until resumed.
        let mut r = record(WaitingForPause);
        let next = after_pass(&mut r, PassEnd::Halted(Halt { wake_at_ms: Some(9), ..Halt::default() }), 1);
        assert_eq!((r.status, r.wake_at_ms, next), (Paused, Some(9), AfterPass::default()));
        // Nothing to wait for: again at once.
        let mut r = record(Running);
        assert!(after_pass(&mut r, PassEnd::Halted(Halt::default()), 1).run_again);
    }

    #[test]
    fn failed_passes_back_off_then_err() {
        let mut r = record(Running);
        let mut waits = Vec::new();
        for _ in 0..4 {
            waits.push(after_pass(&mut r, PassEnd::Failed("gone".into()), 0).timer.unwrap());
        }
        assert_eq!(waits, [2000, 4000, 8000, 16000]);
        assert_eq!(after_pass(&mut r, PassEnd::Failed("gone".into()), 7), AfterPass::default());
        assert_eq!((r.status, r.ended_ms), (Errored, Some(7)));
        assert!(r.error.unwrap().message.contains("failed 5 times: gone"));
    }

    #[test]
    fn only_due_instances_run() {
        let mut r = record(Waiting);
        r.wake_at_ms = Some(10);
        assert!(!runnable(&r, 9));
        assert!(runnable(&r, 10));
        r.waiting_for = vec!["go".into()];
        assert!(runnable(&r, 0), "an event may have come");
        assert!(!runnable(&record(Paused), 0));
        assert!(runnable(&record(Queued), 0));
    }
}
