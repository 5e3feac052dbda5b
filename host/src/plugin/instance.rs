//! Running batches through a plugin.
//!
//! One [`PluginInstance`] keeps one live wasm instance and reuses it across
//! batches (instantiation and `init` are paid once). Any failure — a trap, the
//! deadline, the memory limit, a wrong number of decisions — throws the
//! instance away: its memory may be corrupt, so the next batch gets a fresh
//! instance from the plugin's `InstancePre`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use wasmtime::{Store, Trap, UpdateDeadline};

use super::limits::MemoryLimitExceeded;
use super::{Plugin, PluginState};
use crate::bindings::{Decision, EventPlugin, Message};

/// Why a batch produced no decisions. The whole batch counts as failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BatchError {
    #[error("plugin `{plugin}` could not be instantiated: {reason}")]
    Instantiate { plugin: String, reason: String },
    #[error("plugin `{plugin}` refused to start: init returned error: {reason}")]
    Init { plugin: String, reason: String },
    #[error("plugin `{plugin}` exceeded its deadline of {deadline:?} and was interrupted")]
    Deadline { plugin: String, deadline: Duration },
    #[error("plugin `{plugin}` exceeded its memory limit of {limit} bytes")]
    MemoryLimit { plugin: String, limit: u64 },
    #[error("plugin `{plugin}` trapped: {reason}")]
    Trap { plugin: String, reason: String },
    #[error("plugin `{plugin}` flooded its log: more than {limit} lines in one batch")]
    LogFlood { plugin: String, limit: u32 },
    #[error("plugin `{plugin}` returned {got} decisions for a batch of {expected} messages")]
    WrongDecisionCount {
        plugin: String,
        expected: usize,
        got: usize,
    },
}

impl BatchError {
    /// A short stable name for metrics and dead-letter reasons.
    pub fn kind(&self) -> &'static str {
        match self {
            BatchError::Instantiate { .. } => "instantiate",
            BatchError::Init { .. } => "init",
            BatchError::Deadline { .. } => "deadline",
            BatchError::MemoryLimit { .. } => "memory-limit",
            BatchError::Trap { .. } => "trap",
            BatchError::WrongDecisionCount { .. } => "wrong-decision-count",
            BatchError::LogFlood { .. } => "log-flood",
        }
    }
}

struct Live {
    store: Store<PluginState>,
    bindings: EventPlugin,
}

/// A plugin plus (at most) one live instance of it.
pub struct PluginInstance {
    plugin: Arc<Plugin>,
    live: Option<Live>,
    reuse: bool,
    instantiated: u64,
    last_downstream: u32,
}

impl std::fmt::Debug for PluginInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginInstance")
            .field("plugin", &self.plugin.name())
            .field("live", &self.live.is_some())
            .field("instantiated", &self.instantiated)
            .finish()
    }
}

impl PluginInstance {
    pub fn new(plugin: Arc<Plugin>) -> Self {
        PluginInstance {
            plugin,
            live: None,
            reuse: true,
            instantiated: 0,
            last_downstream: 0,
        }
    }

    /// With `false`, every batch runs on a fresh instance (for benchmarks and
    /// paranoid deployments); default `true`.
    pub fn set_reuse(&mut self, reuse: bool) {
        self.reuse = reuse;
    }

    /// Moves to `slot`'s current version if it changed since the last batch
    /// (the old version's instance is dropped; the next batch instantiates
    /// the new one). Call between batches, never during one.
    pub fn follow(&mut self, slot: &super::PluginSlot) {
        if !slot.is_current(&self.plugin) {
            self.plugin = slot.current();
            self.live = None;
        }
    }

    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.plugin
    }

    /// How many instances this runner has created (1 + one per failure, with reuse).
    pub fn instances_created(&self) -> u64 {
        self.instantiated
    }

    /// How many capability calls of the last batch answered `unavailable`
    /// (a downstream outage, which the circuit breaker counts).
    pub fn downstream_failures(&self) -> u32 {
        self.last_downstream
    }

    /// Instantiates and runs `init` unless an instance is already live.
    /// Used to validate a plugin before it receives traffic.
    pub async fn ready(&mut self) -> Result<(), BatchError> {
        if self.live.is_none() {
            self.live = Some(self.instantiate().await?);
        }
        Ok(())
    }

    /// Runs one batch and returns one decision per message, in order.
    pub async fn handle(&mut self, batch: &[Message]) -> Result<Vec<Decision>, BatchError> {
        let result = self.try_handle(batch).await;
        self.last_downstream = self
            .live
            .as_ref()
            .map(|l| l.store.data().downstream.take())
            .unwrap_or(0);
        if result.is_err() || !self.reuse {
            self.live = None;
        }
        result
    }

    async fn try_handle(&mut self, batch: &[Message]) -> Result<Vec<Decision>, BatchError> {
        self.ready().await?;
        let plugin = self.plugin.clone();
        let Some(live) = self.live.as_mut() else {
            return Err(BatchError::Instantiate {
                plugin: plugin.name().to_owned(),
                reason: "no live instance".into(),
            });
        };
        let deadline = plugin.spec.limits.deadline;
        start_clock(&mut live.store, deadline);
        let call = live
            .bindings
            .jetplug_plugin_handler()
            .call_handle(&mut live.store, batch);
        let decisions = match tokio::time::timeout(grace(&plugin, deadline), call).await {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => return Err(classify(&plugin, &live.store, e)),
            Err(_) => return Err(deadline_error(&plugin)),
        };
        plugin.overran.store(false, Ordering::Relaxed);
        if decisions.len() != batch.len() {
            return Err(BatchError::WrongDecisionCount {
                plugin: plugin.name().to_owned(),
                expected: batch.len(),
                got: decisions.len(),
            });
        }
        Ok(decisions)
    }

    async fn instantiate(&mut self) -> Result<Live, BatchError> {
        let plugin = self.plugin.clone();
        let name = plugin.name().to_owned();
        let mut store = Store::new(
            plugin.runtime.engine(),
            PluginState::new(&plugin.spec, &plugin.backends),
        );
        store.limiter(|s| &mut s.limiter);
        // Every epoch tick, a running plugin yields to the other tasks; a
        // long call is throttled; past its deadline it is interrupted.
        let settings = plugin.runtime.settings();
        let (tick, throttle_after) = (settings.epoch_tick, settings.throttle_after);
        let overran = plugin.overran.clone();
        store.epoch_deadline_callback(move |s| {
            let now = std::time::Instant::now();
            let repeat_offender = throttle_after.is_some() && overran.load(Ordering::Relaxed);
            Ok(match s.data().clock {
                Some((_, until)) if now >= until => UpdateDeadline::Interrupt,
                // Its last call ran out of time: one tick in eight, at once.
                Some(_) if repeat_offender => {
                    UpdateDeadline::YieldCustom(1, Box::pin(tokio::time::sleep(tick * 7)))
                }
                Some((started, _)) if throttle_after.is_some_and(|t| now - started >= t) => {
                    // Run one tick in four.
                    UpdateDeadline::YieldCustom(1, Box::pin(tokio::time::sleep(tick * 3)))
                }
                _ => UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now())),
            })
        });
        let deadline = plugin.spec.limits.deadline;
        start_clock(&mut store, deadline);
        self.instantiated += 1;

        let bindings = match plugin.pre.instantiate_async(&mut store).await {
            Ok(b) => b,
            Err(e) => {
                return Err(match classify(&plugin, &store, e) {
                    BatchError::Trap { reason, .. } => BatchError::Instantiate {
                        plugin: name,
                        reason,
                    },
                    other => other,
                });
            }
        };
        let init = bindings
            .jetplug_plugin_handler()
            .call_init(&mut store, &plugin.spec.config);
        match tokio::time::timeout(grace(&plugin, deadline), init).await {
            Ok(Ok(Ok(()))) => Ok(Live { store, bindings }),
            Ok(Ok(Err(reason))) => Err(BatchError::Init {
                plugin: name,
                reason,
            }),
            Ok(Err(e)) => Err(classify(&plugin, &store, e)),
            Err(_) => Err(deadline_error(&plugin)),
        }
    }
}

/// Arms the deadline for the next call. A long call is not run to its end
/// on one thread: at each epoch tick it yields (so a looping plugin cannot
/// starve the pipelines sharing the runtime's threads) until its time is up.
fn start_clock(store: &mut Store<PluginState>, deadline: Duration) {
    let now = std::time::Instant::now();
    store.data_mut().clock = Some((now, now + deadline));
    store.data_mut().log.start_call();
    store.set_epoch_deadline(1);
}

/// The epoch interrupts wasm code; this outer timeout also bounds time spent
/// in host calls (a hung downstream), a little after the epoch would fire.
fn grace(plugin: &Plugin, deadline: Duration) -> Duration {
    deadline + plugin.runtime.settings().epoch_tick * 2 + Duration::from_millis(50)
}

fn deadline_error(plugin: &Plugin) -> BatchError {
    plugin.overran.store(true, Ordering::Relaxed);
    BatchError::Deadline {
        plugin: plugin.name().to_owned(),
        deadline: plugin.spec.limits.deadline,
    }
}

fn classify(plugin: &Plugin, store: &Store<PluginState>, e: wasmtime::Error) -> BatchError {
    let name = plugin.name().to_owned();
    if let Some(Trap::Interrupt) = e.downcast_ref::<Trap>() {
        return deadline_error(plugin);
    }
    if e.downcast_ref::<MemoryLimitExceeded>().is_some()
        || e.chain().any(|c| c.is::<MemoryLimitExceeded>())
    {
        return BatchError::MemoryLimit {
            plugin: name,
            limit: plugin.spec.limits.memory_bytes,
        };
    }
    if let Some(flood) = e.downcast_ref::<crate::capability::log::LogFlood>() {
        return BatchError::LogFlood {
            plugin: name,
            limit: flood.limit,
        };
    }
    let mut reason = match e.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        None => format!("{e:#}"),
    };
    let stderr = store
        .data()
        .stderr
        .text()
        .lines()
        .filter(|l| !l.starts_with("note: run with `RUST_BACKTRACE"))
        .collect::<Vec<_>>()
        .join(" ");
    if !stderr.is_empty() {
        reason.push_str("; plugin stderr: ");
        reason.push_str(&stderr);
    }
    BatchError::Trap {
        plugin: name,
        reason,
    }
}
