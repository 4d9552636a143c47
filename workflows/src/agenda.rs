//! Which instances run next: a pure data structure the engine consults,
//! tested without storage or time.
//!
//! Instances are ready (run as soon as their workflow has room) or timed
//! (ready at a time). Entries may be stale (an instance paused or
//! terminated since): the engine checks each one it takes against the
//! instance's state, so this structure never needs to find and remove one.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

/// An instance: its workflow and id.
pub type InstanceRef = (String, String);

#[derive(Debug, Default)]
pub struct Agenda {
    /// Per workflow, instances ready to run, in order.
    ready: BTreeMap<String, VecDeque<String>>,
    timers: BTreeSet<(u64, String, String)>,
    /// Runs in flight per workflow.
    running: HashMap<String, u32>,
}

impl Agenda {
    pub fn push_ready(&mut self, workflow: &str, id: &str) {
        self.ready.entry(workflow.to_string()).or_default().push_back(id.to_string());
    }

    pub fn set_timer(&mut self, workflow: &str, id: &str, at_ms: u64) {
        self.timers.insert((at_ms, workflow.to_string(), id.to_string()));
    }

    /// When the earliest timer is due.
    pub fn next_timer(&self) -> Option<u64> {
        self.timers.first().map(|(at, _, _)| *at)
    }

    /// Instances to start now: timers due by `now_ms` become ready; then,
    /// taking from each workflow in turn, as many as its `capacity` (the
    /// most runs it may have at once, 0 for a workflow not deployed) allows.
    /// Each one taken counts as running until [`Agenda::finished`].
    pub fn take(&mut self, now_ms: u64, capacity: impl Fn(&str) -> u32) -> Vec<InstanceRef> {
        while let Some((at, _, _)) = self.timers.first() {
            if *at > now_ms {
                break;
            }
            let (_, workflow, id) = self.timers.pop_first().expect("just seen");
            self.push_ready(&workflow, &id);
        }
        let mut taken = Vec::new();
        for (workflow, queue) in self.ready.iter_mut() {
            let limit = capacity(workflow);
            let running = self.running.entry(workflow.clone()).or_default();
            while *running < limit {
                let Some(id) = queue.pop_front() else { break };
                *running += 1;
                taken.push((workflow.clone(), id));
            }
        }
        self.ready.retain(|_, queue| !queue.is_empty());
        taken
    }

    /// A run taken by [`Agenda::take`] ended, or was not started after all.
    pub fn finished(&mut self, workflow: &str) {
        if let Some(running) = self.running.get_mut(workflow) {
            *running = running.saturating_sub(1);
        }
    }

    /// Whether some instance is ready and its workflow has room.
    pub fn has_ready(&self, capacity: impl Fn(&str) -> u32) -> bool {
        self.ready.iter().any(|(workflow, queue)| {
            !queue.is_empty() && self.running.get(workflow).copied().unwrap_or(0) < capacity(workflow)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(taken: &[InstanceRef]) -> Vec<&str> {
        taken.iter().map(|(_, id)| id.as_str()).collect()
    }

    #[test]
    fn ready_instances_run_up_to_their_workflows_capacity() {
        let mut agenda = Agenda::default();
        for id in ["a", "b", "c"] {
            agenda.push_ready("w", id);
        }
        agenda.push_ready("other", "x");
        let taken = agenda.take(0, |w| if w == "w" { 2 } else { 10 });
        assert_eq!(ids(&taken), ["x", "a", "b"]);
        assert!(agenda.take(0, |_| 2).is_empty(), "w is full, x's workflow has nothing");
        agenda.finished("w");
        assert_eq!(ids(&agenda.take(0, |_| 2)), ["c"]);
    }

    #[test]
    fn undeployed_workflows_keep_their_instances_waiting() {
        let mut agenda = Agenda::default();
        agenda.push_ready("gone", "a");
        assert!(agenda.take(0, |_| 0).is_empty());
        assert!(!agenda.has_ready(|_| 0));
        assert!(agenda.has_ready(|_| 1));
        assert_eq!(ids(&agenda.take(0, |_| 1)), ["a"]);
    }

    #[test]
    fn timers_become_ready_when_due_in_time_order() {
        let mut agenda = Agenda::default();
        agenda.set_timer("w", "late", 200);
        agenda.set_timer("w", "early", 100);
        assert_eq!(agenda.next_timer(), Some(100));
        assert!(agenda.take(99, |_| 10).is_empty());
        assert_eq!(ids(&agenda.take(150, |_| 10)), ["early"]);
        assert_eq!(ids(&agenda.take(1000, |_| 10)), ["late"]);
        assert_eq!(agenda.next_timer(), None);
    }
}
