//! What makes workers run besides requests: Cron Triggers, Durable Object
//! alarms, queue consumers and workflow instances. Each trigger is a task on the node's tokio
//! runtime that decides when to fire (pure functions of time and what it
//! saw) and hands the pool an event.

pub mod alarms;
pub mod consumer;
pub mod cron;
pub mod queues;
pub mod workflows;

use outpost_isolate_pool::Pool;

/// Starts every trigger, and the store's sweeper of expired KV entries, on
/// the current tokio runtime.
pub fn spawn(
    pool: &Pool,
    store: &outpost_kv::Store,
    crons: &cron::Crons,
    queues: &outpost_kv::queues::Queues,
    consumers: &queues::Consumers,
    consumers_changed: &std::sync::Arc<tokio::sync::Notify>,
    workflows: &outpost_workflows::Engine,
) {
    store.spawn_sweeper(std::time::Duration::from_secs(60));
    tokio::spawn(alarms::run_alarms(pool.clone(), std::sync::Arc::new(store.clone())));
    tokio::spawn(cron::run_crons(pool.clone(), crons.clone()));
    tokio::spawn(consumer::run_consumers(pool.clone(), queues.clone(), consumers.clone(), consumers_changed.clone()));
    tokio::spawn(workflows::run_workflows(pool.clone(), workflows.clone()));
}
