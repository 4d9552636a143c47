//! The op behind `send` and `sendBatch`.

use std::cell::RefCell;
use std::rc::Rc;

use bytes::Bytes;
use deno_core::{op2, JsBuffer, OpState};
use deno_error::JsErrorBox;
use outpost_kv::queues::{NewMessage, QueueError, Queues};
use serde::Deserialize;

use super::{QueueProducerBinding, MAX_DELAY_SECONDS};
use crate::ext::bindings::numbered;

/// One message as JS hands it over: the body already encoded.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutgoingMessage {
    body: JsBuffer,
    content_type: String,
    /// This message's delay, else the batch's, else the queue's.
    delay_seconds: Option<f64>,
}

fn delay_ms(seconds: Option<f64>, default: u32) -> Result<u64, JsErrorBox> {
    match seconds {
        None => Ok(u64::from(default) * 1000),
        Some(s) if s.is_finite() && (0.0..=f64::from(MAX_DELAY_SECONDS)).contains(&s) => Ok((s * 1000.0) as u64),
        Some(s) => Err(JsErrorBox::range_error(format!(
            "delaySeconds must be a number of seconds from 0 to {MAX_DELAY_SECONDS}, got {s}"
        ))),
    }
}

/// Stores the messages together; resolves once they are durable.
#[op2]
pub async fn op_outpost_queue_send(
    state: Rc<RefCell<OpState>>,
    #[smi] index: u32,
    #[serde] messages: Vec<OutgoingMessage>,
) -> Result<(), JsErrorBox> {
    let (binding, queues) = numbered::<QueueProducerBinding, Queues>(&state.borrow(), index, "queue")?;
    let mut batch = Vec::with_capacity(messages.len());
    for message in messages {
        batch.push(NewMessage {
            body: Bytes::copy_from_slice(&message.body),
            content_type: message.content_type,
            delay_ms: delay_ms(message.delay_seconds, binding.delivery_delay)?,
        });
    }
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    queues.send(&binding.queue, batch, now_ms).await.map_err(|err| match err {
        QueueError::TooLarge(_) => JsErrorBox::range_error(format!("Queue send failed: {err}")),
        other => JsErrorBox::generic(format!("Queue send failed: {other}")),
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_take_the_message_then_the_queue_default_within_twelve_hours() {
        assert_eq!(delay_ms(None, 30).unwrap(), 30_000);
        assert_eq!(delay_ms(Some(0.0), 30).unwrap(), 0, "0 overrides the queue's delay");
        assert_eq!(delay_ms(Some(1.5), 0).unwrap(), 1_500);
        assert_eq!(delay_ms(Some(43_200.0), 0).unwrap(), 43_200_000);
        assert!(delay_ms(Some(43_201.0), 0).is_err());
        assert!(delay_ms(Some(-1.0), 0).is_err());
        assert!(delay_ms(Some(f64::NAN), 0).is_err());
    }
}
