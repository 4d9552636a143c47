//! Integration tests of the `outpost` binary: real processes, real sockets,
//! real HTTP clients. One test binary, a module per area.

mod context;
mod dev_reload;
mod errors;
mod fixtures;
mod front;
mod hostile;
mod kv_cli;
mod objects;
mod pool;
mod protocol;
mod queue_consumers;
mod queue_crash;
mod queues;
mod scheduled;
mod services;
mod streaming;
mod support;
mod workflow_crash;
mod workflows;
