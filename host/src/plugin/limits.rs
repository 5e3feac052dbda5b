//! Per-plugin limits and the memory budget that enforces the memory limit.
//!
//! The budget counts every linear memory and table of an instance together
//! (a component may hold several), so the limit is for the whole instance,
//! not per memory. Growing past it traps with [`MemoryLimitExceeded`], which
//! the instance runner reports as a memory-limit failure.

use std::time::Duration;

use wasmtime::ResourceLimiter;

use crate::config::LimitsConfig;

/// Limits applied to every instance of a plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Linear memory for the whole instance, in bytes (default 64 MiB).
    pub memory_bytes: u64,
    /// Wall time for one `handle` (or `init`) call (default 5 s).
    pub deadline: Duration,
    /// Log lines per second before lines are dropped (default 100).
    pub log_per_second: u32,
    /// Log calls in one `handle` call past which the batch fails as a log
    /// flood (default 10000): dropping lines is cheap, not free.
    pub log_lines_per_batch: u32,
}

impl Default for Limits {
    /// The defaults of `[plugin.NAME.limits]`.
    fn default() -> Self {
        Limits::from(&LimitsConfig::default())
    }
}

impl From<&LimitsConfig> for Limits {
    fn from(c: &LimitsConfig) -> Self {
        Limits {
            memory_bytes: c.memory.0,
            deadline: Duration::from(c.deadline),
            log_per_second: c.log_per_second,
            log_lines_per_batch: c.log_lines_per_batch,
        }
    }
}

/// Most table elements an instance may hold (function references).
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// The trap raised when an instance tries to grow past its memory limit.
#[derive(Debug, Clone, thiserror::Error)]
#[error("memory limit of {limit} bytes exceeded (instance asked for {requested} bytes)")]
pub struct MemoryLimitExceeded {
    pub limit: u64,
    pub requested: u64,
}

/// Tracks the memory of one instance against its limit.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: u64,
    used: u64,
}

impl MemoryBudget {
    pub fn new(limit: u64) -> Self {
        MemoryBudget { limit, used: 0 }
    }

    /// Bytes of linear memory the instance holds now.
    pub fn used(&self) -> u64 {
        self.used
    }
}

impl ResourceLimiter for MemoryBudget {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let grow = (desired as u64).saturating_sub(current as u64);
        let requested = self.used.saturating_add(grow);
        if requested > self.limit {
            return Err(MemoryLimitExceeded {
                limit: self.limit,
                requested,
            }
            .into());
        }
        self.used = requested;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_sums_all_memories() -> wasmtime::Result<()> {
        let mut b = MemoryBudget::new(100);
        assert!(b.memory_growing(0, 60, None)?);
        // A second memory of the same instance shares the budget.
        assert!(b.memory_growing(0, 30, None)?);
        assert_eq!(b.used(), 90);
        let err = b.memory_growing(60, 80, None);
        assert!(err.is_err());
        assert_eq!(b.used(), 90);
        Ok(())
    }
}
