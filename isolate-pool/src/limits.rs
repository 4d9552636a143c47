//! A worker's limits and the node's caps on them: plain values and checks,
//! so that nothing a tenant writes in its configuration reaches V8
//! unchecked.

/// A worker's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// CPU time per request, in milliseconds.
    pub cpu_ms: u64,
    /// Wall-clock time until the response head, in milliseconds.
    pub wall_ms: Option<u64>,
    /// V8 heap per isolate, in MiB (and as much again for ArrayBuffers).
    pub memory_mb: u64,
    /// Requests one isolate serves at once.
    pub max_concurrent: usize,
    /// Subrequests (outbound `fetch`, KV operations, calls to other workers
    /// and objects) one invocation may make.
    pub subrequests: u64,
}

/// The most subrequests any worker may ask for, as on Cloudflare.
pub const MAX_SUBREQUESTS: u64 = 10_000_000;

impl Default for Limits {
    fn default() -> Self {
        Self { cpu_ms: 50, wall_ms: None, memory_mb: 128, max_concurrent: 64, subrequests: 1_000 }
    }
}

/// The most a node lets any of its workers ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitCaps {
    pub max_cpu_ms: u64,
    pub max_wall_ms: u64,
    pub max_memory_mb: u64,
    pub max_concurrent: usize,
}

impl LimitCaps {
    /// What no node may exceed, whatever its configuration says: V8 aborts
    /// the process on heaps it cannot reserve, and a CPU budget of years is
    /// no budget.
    pub const CEILING: LimitCaps = LimitCaps {
        max_cpu_ms: 15 * 60 * 1000,
        max_wall_ms: 24 * 60 * 60 * 1000,
        max_memory_mb: 16 * 1024,
        max_concurrent: 10_000,
    };
}

impl Default for LimitCaps {
    /// Cloudflare's largest CPU limit for a request (30 s by default), a
    /// heap four times the default, a wall limit of 15 minutes.
    fn default() -> Self {
        LimitCaps { max_cpu_ms: 30_000, max_wall_ms: 15 * 60 * 1000, max_memory_mb: 512, max_concurrent: 1_000 }
    }
}

/// A limit a worker asked for that its node does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitError {
    #[error("[limits] {key} = {value} is over this node's maximum of {max}")]
    OverCap { key: &'static str, value: u64, max: u64 },
    #[error("[limits] {key} must be at least {min}, got {value}")]
    UnderMinimum { key: &'static str, value: u64, min: u64 },
}

impl Limits {
    /// Checks every limit against the node's caps (and the floors below
    /// which a worker cannot run).
    pub fn check(&self, caps: &LimitCaps) -> Result<(), LimitError> {
        let over = |key, value: u64, max: u64| {
            if value > max {
                Err(LimitError::OverCap { key, value, max })
            } else {
                Ok(())
            }
        };
        let under = |key, value: u64, min: u64| {
            if value < min {
                Err(LimitError::UnderMinimum { key, value, min })
            } else {
                Ok(())
            }
        };
        under("cpu_ms", self.cpu_ms, 1)?;
        over("cpu_ms", self.cpu_ms, caps.max_cpu_ms)?;
        if let Some(wall_ms) = self.wall_ms {
            under("wall_ms", wall_ms, 1)?;
            over("wall_ms", wall_ms, caps.max_wall_ms)?;
        }
        under("memory_mb", self.memory_mb, 8)?;
        over("memory_mb", self.memory_mb, caps.max_memory_mb)?;
        under("subrequests", self.subrequests, 1)?;
        over("subrequests", self.subrequests, MAX_SUBREQUESTS)?;
        under("max_concurrent", self.max_concurrent as u64, 1)?;
        over("max_concurrent", self.max_concurrent as u64, caps.max_concurrent as u64)
    }
}

impl LimitCaps {
    /// Checks the caps themselves against [`LimitCaps::CEILING`].
    pub fn check(&self) -> Result<(), LimitError> {
        let ceiling = LimitCaps::CEILING;
        let as_limits = Limits {
            cpu_ms: self.max_cpu_ms,
            wall_ms: Some(self.max_wall_ms),
            memory_mb: self.max_memory_mb,
            max_concurrent: self.max_concurrent,
            subrequests: 1,
        };
        as_limits.check(&ceiling).map_err(|err| match err {
            LimitError::OverCap { key, value, max } => LimitError::OverCap { key: cap_key(key), value, max },
            LimitError::UnderMinimum { key, value, min } => LimitError::UnderMinimum { key: cap_key(key), value, min },
        })
    }
}

fn cap_key(key: &'static str) -> &'static str {
    match key {
        "cpu_ms" => "max_worker_cpu_ms",
        "wall_ms" => "max_worker_wall_ms",
        "memory_mb" => "max_worker_memory_mb",
        _ => "max_worker_concurrent",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fit_the_default_caps() {
        assert_eq!(Limits::default().check(&LimitCaps::default()), Ok(()));
        assert_eq!(LimitCaps::default().check(), Ok(()));
    }

    #[test]
    fn absurd_limits_are_refused_before_they_reach_v8() {
        let caps = LimitCaps::default();
        let huge_heap = Limits { memory_mb: 17_592_186_044_416, ..Limits::default() };
        assert_eq!(
            huge_heap.check(&caps),
            Err(LimitError::OverCap { key: "memory_mb", value: 17_592_186_044_416, max: 512 })
        );
        let huge_cpu = Limits { cpu_ms: i64::MAX as u64, ..Limits::default() };
        assert!(matches!(huge_cpu.check(&caps), Err(LimitError::OverCap { key: "cpu_ms", .. })));
        let no_wall = Limits { wall_ms: Some(0), ..Limits::default() };
        assert!(matches!(no_wall.check(&caps), Err(LimitError::UnderMinimum { key: "wall_ms", .. })));
        let tiny_heap = Limits { memory_mb: 1, ..Limits::default() };
        assert!(Limits { subrequests: 0, ..Limits::default() }.check(&LimitCaps::default()).is_err());
        assert!(Limits { subrequests: MAX_SUBREQUESTS + 1, ..Limits::default() }.check(&LimitCaps::default()).is_err());
        assert!(Limits { subrequests: MAX_SUBREQUESTS, ..Limits::default() }.check(&LimitCaps::default()).is_ok());
        assert!(matches!(tiny_heap.check(&caps), Err(LimitError::UnderMinimum { key: "memory_mb", .. })));
    }

    #[test]
    fn caps_have_a_ceiling() {
        let caps = LimitCaps { max_memory_mb: 1 << 40, ..LimitCaps::default() };
        assert!(matches!(caps.check(), Err(LimitError::OverCap { key: "max_worker_memory_mb", .. })));
        let roomy = LimitCaps { max_memory_mb: 4096, max_cpu_ms: 300_000, ..LimitCaps::default() };
        assert_eq!(roomy.check(), Ok(()));
    }
}
