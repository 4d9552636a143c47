//! How an instance's status moves: by the instance methods a worker calls
//! (`pause`, `resume`, `terminate`, `restart`) and by how its runs end.
//! Pure functions of the status and what happened.

use crate::model::Status;

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
}
