//! `jetplug:plugin/log`: plugin log lines into the host's `tracing` output.
//!
//! Rate-limited per plugin version with a token bucket shared by all its
//! instances (a plugin that crashes every batch gets a fresh instance each
//! time, not a fresh budget), so a plugin that floods its log cannot slow
//! the host or drown other tenants' lines; dropped lines are counted and
//! reported at most once a second.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::component::{HasData, Linker};

use crate::bindings::jetplug::plugin::log::{self, Level};

/// Longest log line kept; longer lines are cut (on a char boundary).
pub const MAX_LINE: usize = 4096;

/// The log budget of one plugin version, shared by all its instances:
/// `per_second` lines sustained, bursts up to `per_second` lines.
#[derive(Debug)]
pub struct LogBudget(Mutex<Budget>);

#[derive(Debug)]
struct Budget {
    bucket: TokenBucket,
    dropped: u64,
    reported: Option<Instant>,
}

impl LogBudget {
    pub fn new(per_second: u32) -> Arc<Self> {
        Arc::new(LogBudget(Mutex::new(Budget {
            bucket: TokenBucket::new(per_second),
            dropped: 0,
            reported: None,
        })))
    }

    /// Takes one line from the budget: `Ok(dropped)` with the lines dropped
    /// since the last report if it is time to report them, `Err(())` if the
    /// line is dropped.
    fn take(&self, now: Instant) -> Result<u64, ()> {
        let mut b = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if !b.bucket.take(now) {
            b.dropped += 1;
            return Err(());
        }
        // Report drops at most once a second, so a flood cannot flood the host's log.
        if b.dropped > 0
            && b.reported
                .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            b.reported = Some(now);
            return Ok(std::mem::take(&mut b.dropped));
        }
        Ok(0)
    }

    /// Lines dropped and not reported yet.
    pub fn dropped(&self) -> u64 {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).dropped
    }
}

/// Per-instance state of the log capability.
#[derive(Debug)]
pub struct LogState {
    plugin: String,
    tenant: String,
    budget: Arc<LogBudget>,
    /// Log calls in the current `handle` call, and the most allowed.
    calls: u32,
    max_calls: u32,
    /// The instance's call path: each line is also an event on the running
    /// call's span, and a line of its transcript.
    path: super::CallPath,
}

/// The trap raised when one call logs more lines than `log_lines_per_batch`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("log flood: more than {limit} log lines in one batch")]
pub struct LogFlood {
    pub limit: u32,
}

impl LogState {
    /// Lines come out of `budget`; more than `per_batch` calls in one
    /// `handle` trap with [`LogFlood`].
    pub fn new(
        plugin: &str,
        tenant: &str,
        budget: Arc<LogBudget>,
        per_batch: u32,
        path: super::CallPath,
    ) -> Self {
        LogState {
            path,
            plugin: plugin.to_owned(),
            tenant: tenant.to_owned(),
            budget,
            calls: 0,
            max_calls: per_batch,
        }
    }

    /// A new `handle` (or `init`) call starts: its log-call count restarts.
    pub fn start_call(&mut self) {
        self.calls = 0;
    }

    /// Lines of this plugin version dropped and not reported yet.
    pub fn dropped(&self) -> u64 {
        self.budget.dropped()
    }
}

struct LogCap;

impl HasData for LogCap {
    type Data<'a> = &'a mut LogState;
}

/// Adds the `log` interface to `linker`.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut LogState,
) -> wasmtime::Result<()> {
    log::add_to_linker::<T, LogCap>(linker, get)
}

impl log::Host for LogState {
    fn log(&mut self, level: Level, mut message: String) -> wasmtime::Result<()> {
        self.calls = self.calls.saturating_add(1);
        if self.calls > self.max_calls {
            return Err(LogFlood {
                limit: self.max_calls,
            }
            .into());
        }
        self.path.note_log(level_name(level), &message);
        // Lines the host would not print cost nothing and use no budget.
        let enabled = match level {
            Level::Trace => tracing::enabled!(target: "plugin", tracing::Level::TRACE),
            Level::Debug => tracing::enabled!(target: "plugin", tracing::Level::DEBUG),
            Level::Info => tracing::enabled!(target: "plugin", tracing::Level::INFO),
            Level::Warn => tracing::enabled!(target: "plugin", tracing::Level::WARN),
            Level::Error => tracing::enabled!(target: "plugin", tracing::Level::ERROR),
        };
        if !enabled {
            return Ok(());
        }
        let Ok(dropped) = self.budget.take(Instant::now()) else {
            return Ok(());
        };
        if dropped > 0 {
            tracing::warn!(plugin = %self.plugin, tenant = %self.tenant, dropped,
                "plugin log rate limit: lines dropped");
        }
        if message.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        let (plugin, tenant) = (&self.plugin, &self.tenant);
        self.path.trace().log(level_name(level), &message);
        match level {
            Level::Trace => tracing::trace!(target: "plugin", plugin, tenant, "{message}"),
            Level::Debug => tracing::debug!(target: "plugin", plugin, tenant, "{message}"),
            Level::Info => tracing::info!(target: "plugin", plugin, tenant, "{message}"),
            Level::Warn => tracing::warn!(target: "plugin", plugin, tenant, "{message}"),
            Level::Error => tracing::error!(target: "plugin", plugin, tenant, "{message}"),
        }
        Ok(())
    }
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::Trace => "trace",
        Level::Debug => "debug",
        Level::Info => "info",
        Level::Warn => "warn",
        Level::Error => "error",
    }
}

/// A token bucket refilled continuously at `rate` tokens per second.
#[derive(Debug)]
struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(per_second: u32) -> Self {
        let rate = f64::from(per_second.max(1));
        TokenBucket {
            rate,
            tokens: rate,
            last: Instant::now(),
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::jetplug::plugin::log::Host;

    #[test]
    fn bucket_limits_bursts_and_refills() {
        let start = Instant::now();
        let mut b = TokenBucket::new(10);
        let taken = (0..100).filter(|_| b.take(start)).count();
        assert_eq!(taken, 10);
        assert!(b.take(start + Duration::from_millis(150)));
    }

    #[test]
    fn flood_is_counted_not_logged() -> wasmtime::Result<()> {
        // Make the `plugin` target enabled so lines count against the budget.
        let _guard = tracing::subscriber::set_default(
            tracing_subscriber::fmt()
                .with_max_level(tracing::Level::TRACE)
                .with_writer(std::io::sink)
                .finish(),
        );
        let budget = LogBudget::new(5);
        let mut state = LogState::new("p", "t", budget.clone(), 100, Default::default());
        for i in 0..50 {
            state.log(Level::Info, format!("line {i}"))?;
        }
        assert!(state.dropped() >= 44, "dropped {}", state.dropped());
        // A fresh instance of the same plugin (after a crash) shares the
        // budget: it gets no new burst.
        let mut fresh = LogState::new("p", "t", budget, 100, Default::default());
        let before = fresh.dropped();
        for i in 0..5 {
            fresh.log(Level::Info, format!("again {i}"))?;
        }
        assert!(fresh.dropped() >= before + 4, "a crash refilled the budget");
        Ok(())
    }

    #[test]
    fn too_many_lines_in_one_call_trap_as_a_flood() -> wasmtime::Result<()> {
        let mut state = LogState::new("p", "t", LogBudget::new(5), 10, Default::default());
        for i in 0..10 {
            state.log(Level::Debug, format!("line {i}"))?;
        }
        let err = state
            .log(Level::Debug, "one more".into())
            .expect_err("the 11th line in one call is a flood");
        assert!(err.downcast_ref::<LogFlood>().is_some(), "{err:#}");
        state.start_call();
        state.log(Level::Debug, "next batch".into())?;
        Ok(())
    }
}
