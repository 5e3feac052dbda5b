//! The shared wasmtime engine: one per host, configured once.
//!
//! Why these settings:
//! - the **pooling allocator** pre-reserves instance slots, so creating a fresh
//!   instance after a trap costs microseconds instead of mmap calls;
//! - **copy-on-write memory images**: an instance's linear memory starts as a
//!   mapping of the component's initial data, so a big component (CPython,
//!   SpiderMonkey: 10–20 MB of heap snapshot) costs each further instance
//!   only the pages it writes, and the compiled code is shared by all
//!   instances of a version (one `InstancePre`);
//! - **epoch interruption** (with [`ticker`]) bounds every batch by wall time
//!   without the per-instruction cost of fuel;
//! - the **component cache** ([`cache`]) keeps compiled components on disk so a
//!   restart does not recompile (cranelift takes seconds on big plugins);
//! - the **slow lane** ([`lane`]) runs long and misbehaving calls at a lower
//!   OS priority, away from the threads healthy pipelines run on.

pub mod activity;
pub mod cache;
pub mod lane;
pub mod share;
pub mod ticker;

use std::path::PathBuf;
use std::time::Duration;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig};

use activity::Activity;
use cache::ComponentCache;
use lane::{LaneSettings, SlowLane};
use ticker::EpochTicker;

/// Engine-wide settings. The defaults suit a host running tens of plugins.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Period of the epoch ticker; deadlines are rounded up to whole ticks
    /// (default 10 ms).
    pub epoch_tick: Duration,
    /// Use the pooling instance allocator (default true).
    pub pooling: bool,
    /// Instances that may be alive at once across all plugins (default 256).
    pub max_instances: u32,
    /// Largest linear memory any plugin may be given (default 1 GiB); a plugin's
    /// own memory limit must not exceed it.
    pub max_memory_bytes: u64,
    /// Where compiled components are cached; `None` disables the cache
    /// (default: see [`cache::default_dir`]).
    pub cache_dir: Option<PathBuf>,
    /// A call that has computed this long is *long*: it moves to the slow
    /// lane and is paced while other calls run (see
    /// [`crate::plugin::pace`]); `None` turns both off (default 20 ms).
    pub throttle_after: Option<Duration>,
    /// Where long calls and calls of failing plugins run.
    pub slow_lane: LaneSettings,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self::from(&crate::config::EngineConfig::default())
    }
}

impl From<&crate::config::EngineConfig> for EngineSettings {
    /// The settings `[engine]` asks for (the cache in the default place
    /// unless it names one or turns it off).
    fn from(c: &crate::config::EngineConfig) -> Self {
        EngineSettings {
            epoch_tick: c.epoch_tick.0,
            pooling: true,
            max_instances: c.max_instances,
            max_memory_bytes: c.max_memory.0,
            cache_dir: if c.no_cache {
                None
            } else {
                c.cache_dir.clone().or_else(cache::default_dir)
            },
            throttle_after: Some(c.throttle_after.0).filter(|d| !d.is_zero()),
            slow_lane: LaneSettings {
                threads: c.slow_lane_threads,
                nice: c.slow_lane_nice,
            },
        }
    }
}

/// Engine creation failed (bad settings, or the OS refused the reservation).
#[derive(Debug, thiserror::Error)]
#[error("cannot create the wasm engine: {0}")]
pub struct EngineError(String);

/// The engine plus what runs beside it: the epoch ticker and the cache.
#[derive(Debug)]
pub struct Runtime {
    engine: Engine,
    settings: EngineSettings,
    cache: Option<ComponentCache>,
    lane: SlowLane,
    activity: Activity,
    /// Per-tenant CPU shares, once the configuration sets any.
    shares: std::sync::OnceLock<share::Shares>,
    _ticker: EpochTicker,
}

impl Runtime {
    pub fn new(settings: EngineSettings) -> Result<Self, EngineError> {
        if settings.epoch_tick.is_zero() {
            return Err(EngineError("epoch tick must be greater than zero".into()));
        }
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.cranelift_opt_level(OptLevel::Speed);
        config.memory_init_cow(true);
        if settings.pooling {
            let max_memory = usize::try_from(settings.max_memory_bytes)
                .map_err(|_| EngineError("max memory does not fit this platform".into()))?;
            let mut pool = PoolingAllocationConfig::default();
            pool.total_component_instances(settings.max_instances)
                // A Rust component is one main module plus a few small shims.
                .total_core_instances(settings.max_instances.saturating_mul(4))
                .total_memories(settings.max_instances)
                .total_tables(settings.max_instances.saturating_mul(4))
                .total_stacks(settings.max_instances)
                .max_memory_size(max_memory);
            config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        }
        let engine = Engine::new(&config).map_err(|e| EngineError(format!("{e:#}")))?;
        let cache = settings
            .cache_dir
            .clone()
            .map(|dir| ComponentCache::new(dir, &engine));
        let ticker = EpochTicker::start(engine.clone(), settings.epoch_tick)
            .map_err(|e| EngineError(format!("cannot start the epoch ticker thread: {e}")))?;
        let lane = SlowLane::new(settings.slow_lane.clone());
        Ok(Runtime {
            engine,
            settings,
            cache,
            lane,
            activity: Activity::default(),
            shares: std::sync::OnceLock::new(),
            _ticker: ticker,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn settings(&self) -> &EngineSettings {
        &self.settings
    }

    pub fn cache(&self) -> Option<&ComponentCache> {
        self.cache.as_ref()
    }

    pub fn slow_lane(&self) -> &SlowLane {
        &self.lane
    }

    /// Plugin calls running outside the slow lane, now and lately, across
    /// all plugins of this engine (long calls are paced only while busy).
    pub fn activity(&self) -> &Activity {
        &self.activity
    }

    /// Sets the tenants' CPU shares (`limits.cpu_share`); the first call wins.
    pub fn set_shares(&self, shares: share::Shares) {
        let _ = self.shares.set(shares);
    }

    /// The tenants' CPU shares, if any tenant has one.
    pub fn shares(&self) -> Option<&share::Shares> {
        self.shares.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_tick_is_refused() {
        let err = Runtime::new(EngineSettings {
            epoch_tick: Duration::ZERO,
            cache_dir: None,
            ..EngineSettings::default()
        });
        assert!(err.is_err());
    }
}
