//! Queues, the producing side: `env.Q` for a `[[queues.producers]]` entry,
//! with `send` and `sendBatch`. Messages go to the node's store through
//! [`outpost_kv::queues`] (the node lends a [`Queues`] through the binding
//! services) and a send resolves once they are durable.

mod ops;

use deno_core::OpState;
use outpost_kv::queues::Queues;

use super::{install_numbered, Binding, BindingError, BindingServices};

/// One `[[queues.producers]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueProducerBinding {
    /// The name on `env`.
    pub binding: String,
    /// The queue's name.
    pub queue: String,
    /// Seconds before a message may be delivered, unless the send says.
    pub delivery_delay: u32,
}

/// The most a delivery may be delayed, in seconds (12 h), as on Cloudflare.
pub const MAX_DELAY_SECONDS: u32 = 43_200;

impl Binding for QueueProducerBinding {
    fn name(&self) -> &str {
        &self.binding
    }

    fn kind(&self) -> &'static str {
        "queue"
    }

    fn install(
        &self,
        state: &mut OpState,
        _worker: &str,
        services: &BindingServices,
    ) -> Result<serde_json::Value, BindingError> {
        install_numbered::<_, Queues>(state, self, &self.binding, services, "queue storage")
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

deno_core::extension!(
    outpost_binding_queues,
    deps = [outpost_runtime],
    ops = [ops::op_outpost_queue_send],
    esm_entry_point = "ext:outpost_binding_queues/queues.js",
    esm = [dir "src/ext/bindings/queues", "queues.js"],
);
