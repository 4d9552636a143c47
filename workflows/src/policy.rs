//! The rules of steps and instances, as pure functions: Cloudflare's
//! defaults and limits, what a step's config means, when a failed attempt
//! is tried again.

use serde::{Deserialize, Serialize};

use crate::duration::{self, DurationError, DurationInput};

/// The largest step result, event payload, instance parameter or output
/// (1 MiB), serialized.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// The longest step name, in characters.
pub const MAX_STEP_NAME_CHARS: usize = 256;
/// The longest instance id, in characters.
pub const MAX_ID_CHARS: usize = 64;
/// Events an instance may hold that no `waitForEvent` has taken: past
/// that, `sendEvent` is refused (a sender cannot fill the node's disk
/// through an instance that never waits).
pub const MAX_PENDING_EVENTS: u32 = 1000;
/// Instances one `createBatch` call may create.
pub const MAX_BATCH: usize = 100;
/// The longest sleep (365 days).
pub const MAX_SLEEP_MS: u64 = 365 * 86_400_000;
/// How long `waitForEvent` waits unless told.
pub const DEFAULT_EVENT_TIMEOUT_MS: u64 = 24 * 3_600_000;
/// How long a finished instance is kept (7 days).
pub const RETENTION_MS: u64 = 7 * 86_400_000;
/// Steps an instance may take unless its workflow's `limits.steps` says.
pub const DEFAULT_STEP_LIMIT: u32 = 10_000;
/// The most `limits.steps` may be.
pub const MAX_STEP_LIMIT: u32 = 25_000;
/// Instances of one workflow running at once (others wait their turn),
/// unless the workflow says.
pub const DEFAULT_CONCURRENCY: u32 = 100;

/// How a step's delay grows with its attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backoff {
    Constant,
    Linear,
    Exponential,
}

/// A step's retry policy and per-attempt timeout, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepConfig {
    /// Retries after the first attempt (`None`: `Infinity`).
    pub limit: Option<u32>,
    pub delay_ms: u64,
    pub backoff: Backoff,
    pub timeout_ms: u64,
}

impl Default for StepConfig {
    /// Cloudflare's: 5 retries, 10 s apart, doubling, 10 minutes an attempt.
    fn default() -> Self {
        StepConfig { limit: Some(5), delay_ms: 10_000, backoff: Backoff::Exponential, timeout_ms: 600_000 }
    }
}

/// A step's config as JavaScript passes it (`step.do(name, config, cb)`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct StepConfigInput {
    pub retries: Option<RetriesInput>,
    pub timeout: Option<DurationInput>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct RetriesInput {
    /// A count, or `Infinity`.
    pub limit: Option<f64>,
    /// `Infinity` where the input cannot say it (JSON).
    #[serde(default)]
    pub infinite: bool,
    pub delay: Option<DurationInput>,
    pub backoff: Option<Backoff>,
}

/// Why a step config was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("retries.limit must be a whole number from 0 up, or Infinity, got {0}")]
    Limit(String),
    #[error("retries.delay: {0}")]
    Delay(DurationError),
    #[error("timeout: {0}")]
    Timeout(DurationError),
}

impl StepConfigInput {
    /// The config, Cloudflare's defaults filling what is not given.
    pub fn resolve(&self) -> Result<StepConfig, ConfigError> {
        let mut config = StepConfig::default();
        if let Some(retries) = &self.retries {
            if retries.infinite || retries.limit == Some(f64::INFINITY) {
                config.limit = None;
            } else if let Some(limit) = retries.limit {
                if !(limit >= 0.0 && limit.fract() == 0.0 && limit <= f64::from(u32::MAX)) {
                    return Err(ConfigError::Limit(limit.to_string()));
                }
                config.limit = Some(limit as u32);
            }
            if let Some(delay) = &retries.delay {
                config.delay_ms = duration::parse(delay).map_err(ConfigError::Delay)?;
            }
            if let Some(backoff) = retries.backoff {
                config.backoff = backoff;
            }
        }
        if let Some(timeout) = &self.timeout {
            config.timeout_ms = duration::parse(timeout).map_err(ConfigError::Timeout)?;
        }
        Ok(config)
    }
}

impl StepConfig {
    /// The wait before retry `n` (1 for the first retry): constant `d`,
    /// linear `d·n`, exponential `d·2^(n-1)`; saturating.
    pub fn delay_before_retry(&self, n: u32) -> u64 {
        let n = n.max(1);
        match self.backoff {
            Backoff::Constant => self.delay_ms,
            Backoff::Linear => self.delay_ms.saturating_mul(u64::from(n)),
            Backoff::Exponential => self.delay_ms.saturating_mul(1u64.checked_shl(n - 1).unwrap_or(u64::MAX)),
        }
    }
}

/// What becomes of a step whose attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Try again at this time.
    RetryAt(u64),
    /// The step has failed for good: `step.do` throws.
    Fail,
}

/// After attempt `attempt` (1 for the first) failed at `now_ms`: another
/// attempt if the error allows retries and the policy has some left.
pub fn after_failure(config: &StepConfig, attempt: u32, non_retryable: bool, now_ms: u64) -> AfterFailure {
    let retries_done = attempt.saturating_sub(1);
    let retries_left = config.limit.is_none_or(|limit| retries_done < limit);
    if non_retryable || !retries_left {
        return AfterFailure::Fail;
    }
    AfterFailure::RetryAt(now_ms.saturating_add(config.delay_before_retry(attempt)))
}

/// Why an instance id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid instance id {0:?}: ids are 1 to {MAX_ID_CHARS} characters of letters, digits, '-' and '_', not starting with '-'")]
pub struct IdError(pub String);

/// Cloudflare's rule for instance ids: `^[a-zA-Z0-9_][a-zA-Z0-9-_]*$`, at
/// most 64 characters.
pub fn check_id(id: &str) -> Result<(), IdError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_CHARS
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !id.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(IdError(id.to_string()))
    }
}

/// A fresh instance id: a random UUID (version 4), as Cloudflare makes.
pub fn new_id() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the system's random source works");
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_by_the_backoff_kind() {
        let mut config = StepConfig { delay_ms: 1000, ..StepConfig::default() };
        assert_eq!([1, 2, 3, 4].map(|n| config.delay_before_retry(n)), [1000, 2000, 4000, 8000]);
        config.backoff = Backoff::Linear;
        assert_eq!([1, 2, 3, 4].map(|n| config.delay_before_retry(n)), [1000, 2000, 3000, 4000]);
        config.backoff = Backoff::Constant;
        assert_eq!([1, 2, 3, 4].map(|n| config.delay_before_retry(n)), [1000; 4]);
        config.backoff = Backoff::Exponential;
        assert_eq!(config.delay_before_retry(200), u64::MAX, "saturates");
    }

    #[test]
    fn a_step_fails_for_good_after_its_retries_or_at_once_when_non_retryable() {
        let config = StepConfig { limit: Some(2), delay_ms: 100, backoff: Backoff::Constant, timeout_ms: 1 };
        assert_eq!(after_failure(&config, 1, false, 0), AfterFailure::RetryAt(100));
        assert_eq!(after_failure(&config, 2, false, 50), AfterFailure::RetryAt(150));
        assert_eq!(after_failure(&config, 3, false, 0), AfterFailure::Fail);
        assert_eq!(after_failure(&config, 1, true, 0), AfterFailure::Fail);
        let forever = StepConfig { limit: None, ..config };
        assert_eq!(after_failure(&forever, 1000, false, 0), AfterFailure::RetryAt(100));
        let none = StepConfig { limit: Some(0), ..config };
        assert_eq!(after_failure(&none, 1, false, 0), AfterFailure::Fail);
    }

    #[test]
    fn configs_take_cloudflare_defaults_and_refuse_nonsense() {
        assert_eq!(StepConfigInput::default().resolve().unwrap(), StepConfig::default());
        let input: StepConfigInput = serde_json::from_value(serde_json::json!({
            "retries": { "limit": 3, "delay": "2 seconds", "backoff": "linear" }, "timeout": 5000
        }))
        .unwrap();
        let config = input.resolve().unwrap();
        assert_eq!(config, StepConfig { limit: Some(3), delay_ms: 2000, backoff: Backoff::Linear, timeout_ms: 5000 });
        let infinite: StepConfigInput =
            serde_json::from_value(serde_json::json!({ "retries": { "infinite": true, "delay": 1 } })).unwrap();
        assert_eq!(infinite.resolve().unwrap().limit, None);
        for bad in [
            serde_json::json!({ "retries": { "limit": -1 } }),
            serde_json::json!({ "retries": { "limit": 1.5 } }),
            serde_json::json!({ "retries": { "delay": "soon" } }),
            serde_json::json!({ "timeout": "1 eon" }),
        ] {
            let input: StepConfigInput = serde_json::from_value(bad.clone()).unwrap();
            assert!(input.resolve().is_err(), "{bad}");
        }
        assert!(serde_json::from_value::<StepConfigInput>(serde_json::json!({ "retries": { "backoff": "random" } }))
            .is_err());
    }

    #[test]
    fn ids_follow_cloudflare_rule() {
        for good in ["a", "order-1", "_x", "A_b-9", &"x".repeat(64)] {
            assert!(check_id(good).is_ok(), "{good}");
        }
        for bad in ["", "-a", "a b", "a/b", "é", &"x".repeat(65)] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
        let id = new_id();
        assert!(check_id(&id).is_ok());
        assert_eq!(id.len(), 36);
        assert_ne!(new_id(), id);
    }
}
