//! Running batches through a plugin.
//!
//! One [`PluginInstance`] keeps one live wasm instance and reuses it across
//! batches (instantiation and `init` are paid once). Any failure — a trap, the
//! deadline, the memory limit, a wrong number of decisions — throws the
//! instance away: its memory may be corrupt, so the next batch gets a fresh
//! instance from the plugin's `InstancePre`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use wasmtime::{Store, Trap, UpdateDeadline};

use super::limits::MemoryLimitExceeded;
use super::meter::CallMeter;
use super::pace::{Pace, Pacing, Tick};
use super::tape::Handed;
use super::world::{Witness, World, collect};
use super::{Plugin, PluginState};
use crate::bindings::{Decision, EventPlugin, HandleFunc, Message};
use crate::capability::Usage;
use crate::capability::effects::EffectsTx;
use crate::capability::record::Recording;
use crate::engine::lane::LaneError;
use crate::engine::lane::on_lane;

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

/// What one call used, for the per-tenant metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallUsage {
    /// Time the call was running (wasm or host code), not waiting.
    pub cpu: Duration,
    /// The instance's linear memory after the call (its high-water mark:
    /// wasm memory never shrinks).
    pub memory: u64,
    pub capabilities: Usage,
}

struct Live {
    store: Store<PluginState>,
    /// The handler's `handle`, called with the batch's payloads uncopied.
    handle: HandleFunc,
}

/// A plugin plus (at most) one live instance of it.
pub struct PluginInstance {
    plugin: Arc<Plugin>,
    live: Option<Live>,
    reuse: bool,
    instantiated: u64,
    last_downstream: u32,
    last: CallUsage,
    /// The running call's ticks in wasm (a long call moves to the slow
    /// lane, see [`Pacing::is_long`]) and its excused pauses.
    meter: Arc<CallMeter>,
    /// Record every call's world (capture); what the last one saw.
    record: bool,
    witness: Option<Box<Witness>>,
    /// A replay's instances: this insecure seed, and `init` at this time
    /// (ns since the epoch) with fixed random bytes.
    fixed: Option<(u128, u64)>,
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
            last: CallUsage::default(),
            meter: Arc::default(),
            record: false,
            witness: None,
            fixed: None,
        }
    }

    /// With `true`, every call records what it saw (capability calls with
    /// their answers, clock reads, random bytes), for
    /// [`take_witness`](Self::take_witness) — what a capture keeps.
    pub fn set_capture(&mut self, on: bool) {
        self.record = on;
    }

    /// What the last call saw (recorded) or how it was replayed.
    pub fn take_witness(&mut self) -> Option<Witness> {
        self.witness.take().map(|w| *w)
    }

    /// Makes this instance's future instances deterministic for a replay:
    /// `seed` as the insecure-random seed, `init` run at `wall` (ns since
    /// the epoch) with fixed random bytes.
    pub fn fix_world(&mut self, seed: u128, wall: u64) {
        self.fixed = Some((seed, wall));
        self.live = None;
    }

    /// Runs `batch` with its capability calls answered from `calls` and
    /// its clocks and random bytes from `handed` (see [`Witness::Replayed`]).
    pub async fn replay(
        &mut self,
        batch: impl Into<Arc<[Message]>>,
        calls: Vec<crate::capability::transcript::Entry>,
        handed: Handed,
    ) -> Result<Vec<Decision>, BatchError> {
        let world = World::Replay { calls, handed };
        self.call(batch, None, None, None, world).await.0
    }

    /// Runs `batch` with its capability calls answered from a test
    /// fixture's `answers` (see `Replayer::fixture`) and, given `wall` (ns
    /// since the epoch), the clock fixed there.
    pub async fn handle_fixture(
        &mut self,
        batch: impl Into<Arc<[Message]>>,
        answers: Vec<crate::capability::transcript::Entry>,
        wall: Option<u64>,
    ) -> Result<Vec<Decision>, BatchError> {
        let world = World::Fixture { answers, wall };
        self.call(batch, None, None, None, world).await.0
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

    /// Drops the live instance (its memory goes back to the pool); the
    /// next batch makes a new one. For a pipeline gone idle.
    pub fn release(&mut self) {
        self.live = None;
    }

    /// Whether an instance is live (made and not released).
    pub fn is_live(&self) -> bool {
        self.live.is_some()
    }

    /// How many instances this runner has created (1 + one per failure, with reuse).
    pub fn instances_created(&self) -> u64 {
        self.instantiated
    }

    /// How long the last call was paused so that other calls could run
    /// (see [`crate::plugin::pace`]).
    pub fn last_call_paused(&self) -> Duration {
        self.meter.paused_for()
    }

    /// What the last call used: CPU, memory, capability calls.
    pub fn last_call_usage(&self) -> &CallUsage {
        &self.last
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
            self.instantiated += 1;
            self.meter.start();
            let init = instantiate(&self.plugin, &self.meter, self.fixed);
            self.live = Some(
                tokio::time::timeout(grace(&self.plugin), init)
                    .await
                    .map_err(|_| deadline_error(&self.plugin))??,
            );
        }
        Ok(())
    }

    /// Runs one batch and returns one decision per message, in order.
    ///
    /// The call starts on the caller's task; a long one (see
    /// [`crate::plugin::pace`]) moves to the slow lane, and every call of a
    /// plugin whose last call failed runs there from the start (see
    /// [`crate::engine::lane`]). A batch handed over as a `Vec` or an `Arc`
    /// is not copied.
    pub async fn handle(
        &mut self,
        batch: impl Into<Arc<[Message]>>,
    ) -> Result<Vec<Decision>, BatchError> {
        self.handle_traced(batch, None).await
    }

    /// [`handle`](Self::handle), with the plugin's capability calls and log
    /// lines recorded under `trace` (see [`crate::telemetry`]).
    pub async fn handle_traced(
        &mut self,
        batch: impl Into<Arc<[Message]>>,
        trace: Option<tracing::Span>,
    ) -> Result<Vec<Decision>, BatchError> {
        self.handle_in(batch, trace, None).await.0
    }

    /// [`handle_traced`](Self::handle_traced) with the plugin's SQL and
    /// publishes going into `effects` (an exactly-once batch's
    /// transaction), handed back with the outcome — or None when the call
    /// was cut short, which closed it (rolled back).
    pub async fn handle_in(
        &mut self,
        batch: impl Into<Arc<[Message]>>,
        trace: Option<tracing::Span>,
        effects: Option<EffectsTx>,
    ) -> (Result<Vec<Decision>, BatchError>, Option<EffectsTx>) {
        let (result, effects, _) = self.handle_recorded(batch, trace, effects, None).await;
        (result, effects)
    }

    /// [`handle_in`](Self::handle_in) with the call's effects recorded into
    /// `recording` (and held back when it holds: a shadow run), which is
    /// handed back filled.
    pub async fn handle_recorded(
        &mut self,
        batch: impl Into<Arc<[Message]>>,
        trace: Option<tracing::Span>,
        effects: Option<EffectsTx>,
        recording: Option<Recording>,
    ) -> (
        Result<Vec<Decision>, BatchError>,
        Option<EffectsTx>,
        Option<Recording>,
    ) {
        let world = if self.record {
            World::Record
        } else {
            World::Live
        };
        self.call(batch, trace, effects, recording, world).await
    }

    async fn call(
        &mut self,
        batch: impl Into<Arc<[Message]>>,
        trace: Option<tracing::Span>,
        effects: Option<EffectsTx>,
        recording: Option<Recording>,
        world: World,
    ) -> (
        Result<Vec<Decision>, BatchError>,
        Option<EffectsTx>,
        Option<Recording>,
    ) {
        let plugin = self.plugin.clone();
        let fresh = self.live.is_none();
        let call = Call {
            plugin: plugin.clone(),
            live: self.live.take(),
            batch: batch.into(),
            reuse: self.reuse,
            meter: self.meter.clone(),
            trace,
            effects,
            recording,
            world,
            fixed: self.fixed,
        };
        // The epoch interrupts wasm code; this outer limit also bounds time
        // spent in host calls (a hung downstream). A fresh instance runs
        // `init` first, under its own deadline. (Timed here, on the caller's
        // runtime: a timer must not move to the slow lane with the call.)
        let limit = grace(&plugin) * if fresh { 2 } else { 1 };
        self.meter.start();
        let done = match within(limit, &self.meter, dispatch(call)).await {
            Some(done) => done,
            None => Done {
                live: None,
                instantiated: fresh,
                downstream: 0,
                usage: Usage::default(),
                memory: 0,
                result: Err(deadline_error(&plugin)),
                effects: None,
                recording: None,
                witness: None,
            },
        };
        self.witness = done.witness.map(Box::new);
        self.instantiated += u64::from(done.instantiated);
        self.live = done.live;
        self.last_downstream = done.downstream;
        self.last = CallUsage {
            cpu: self.meter.busy_for(),
            memory: done.memory,
            capabilities: done.usage,
        };
        self.plugin
            .faulted
            .store(done.result.is_err(), Ordering::Relaxed);
        (done.result, done.effects, done.recording)
    }
}

/// Everything one call needs, owned, so that it can move to the slow lane.
struct Call {
    plugin: Arc<Plugin>,
    live: Option<Live>,
    batch: Arc<[Message]>,
    reuse: bool,
    meter: Arc<CallMeter>,
    trace: Option<tracing::Span>,
    effects: Option<EffectsTx>,
    recording: Option<Recording>,
    world: World,
    fixed: Option<(u128, u64)>,
}

/// What a call leaves behind: the instance to reuse (none after a failure:
/// its memory may be corrupt) and the outcome.
struct Done {
    live: Option<Live>,
    instantiated: bool,
    downstream: u32,
    usage: Usage,
    memory: u64,
    result: Result<Vec<Decision>, BatchError>,
    /// The exactly-once batch transaction the call ran in, handed back.
    effects: Option<EffectsTx>,
    /// The call's recorded effects, handed back.
    recording: Option<Recording>,
    /// What the call saw of the world, when it was recorded or replayed.
    witness: Option<Witness>,
}

/// Runs `call` here until it is long, then on the slow lane; a plugin whose
/// last call failed goes to the lane at once. With pacing off
/// (`engine.throttle_after = "0s"`), everything runs here.
async fn dispatch(call: Call) -> Done {
    let plugin = call.plugin.clone();
    let pacing = pacing(&plugin);
    let meter = call.meter.clone();
    let mut fut = metered(run(call), meter.clone());
    if !pacing.enabled() {
        return fut.await;
    }
    let lane = plugin.runtime.slow_lane();
    if plugin.faulted.load(Ordering::Relaxed) {
        return lane.run(fut).await.unwrap_or_else(|e| lost(&plugin, e));
    }
    let here = plugin.runtime.activity().enter(meter.caller());
    let finished = std::future::poll_fn(|cx| match fut.as_mut().poll(cx) {
        Poll::Ready(done) => Poll::Ready(Some(done)),
        Poll::Pending if pacing.is_long(meter.ticks()) => Poll::Ready(None),
        Poll::Pending => Poll::Pending,
    })
    .await;
    match finished {
        Some(done) => done,
        None => {
            here.hand_off();
            lane.run(fut).await.unwrap_or_else(|e| lost(&plugin, e))
        }
    }
}

/// `fut`, adding the time spent polling it (running, not waiting) to `meter`.
fn metered<F: Future + Send + 'static>(
    fut: F,
    meter: Arc<CallMeter>,
) -> std::pin::Pin<Box<dyn Future<Output = F::Output> + Send>> {
    let mut fut = Box::pin(fut);
    Box::pin(std::future::poll_fn(move |cx| {
        let started = std::time::Instant::now();
        let polled = fut.as_mut().poll(cx);
        meter.busy(started.elapsed());
        polled
    }))
}

/// The slow lane lost the call (a panic in host code): the batch fails.
fn lost(plugin: &Plugin, e: LaneError) -> Done {
    Done {
        live: None,
        instantiated: false,
        downstream: 0,
        usage: Usage::default(),
        memory: 0,
        result: Err(BatchError::Trap {
            plugin: plugin.name().to_owned(),
            reason: e.to_string(),
        }),
        effects: None,
        recording: None,
        witness: None,
    }
}

async fn run(call: Call) -> Done {
    let Call {
        plugin,
        live,
        batch,
        reuse,
        meter,
        trace,
        effects,
        recording,
        world,
        fixed,
    } = call;
    let (mut live, instantiated) = match live {
        Some(live) => (live, false),
        None => match instantiate(&plugin, &meter, fixed).await {
            Ok(live) => (live, true),
            Err(e) => {
                return Done {
                    live: None,
                    instantiated: true,
                    downstream: 0,
                    usage: Usage::default(),
                    memory: 0,
                    result: Err(e),
                    effects,
                    recording,
                    witness: None,
                };
            }
        },
    };
    let traced = trace.is_some();
    if traced {
        live.store.data().caps.calls().trace().set(trace);
    }
    let redirected = effects.is_some();
    if let Some(tx) = effects {
        live.store.data().caps.calls().effects().install(tx).await;
    }
    let recorded = recording.is_some();
    if let Some(r) = recording {
        live.store.data().caps.calls().record(r);
    }
    world.install(live.store.data());
    let result = call_handle(&plugin, &mut live, batch).await;
    let witness = collect(live.store.data());
    let recording = if recorded {
        live.store.data().caps.calls().take_recording()
    } else {
        None
    };
    let effects = if redirected {
        live.store.data().caps.calls().effects().take().await
    } else {
        None
    };
    if traced {
        live.store.data().caps.calls().trace().set(None);
    }
    let downstream = live.store.data().caps.calls().take_unavailable();
    let usage = live.store.data().caps.calls().take_usage();
    let memory = live.store.data().limiter.used();
    Done {
        // Dropped here, on the lane if the call ran there: resetting a
        // large memory is not free either.
        live: (result.is_ok() && reuse).then_some(live),
        instantiated,
        downstream,
        usage,
        memory,
        result,
        effects,
        recording,
        witness,
    }
}

async fn call_handle(
    plugin: &Plugin,
    live: &mut Live,
    batch: Arc<[Message]>,
) -> Result<Vec<Decision>, BatchError> {
    let deadline = plugin.spec.limits.deadline;
    start_clock(&mut live.store, deadline);
    let expected = batch.len();
    let call = live.handle.call_async(&mut live.store, (batch,));
    let decisions = match call.await {
        Ok((d,)) => d,
        Err(e) => return Err(classify(plugin, &live.store, e)),
    };
    plugin.overran.store(false, Ordering::Relaxed);
    if decisions.len() != expected {
        return Err(BatchError::WrongDecisionCount {
            plugin: plugin.name().to_owned(),
            expected,
            got: decisions.len(),
        });
    }
    Ok(decisions)
}

/// The bindings of a new instance and its `handle`, typed with our
/// [`Message`] (wasmtime checks the component's record against it).
fn typed(
    plugin: &Plugin,
    store: &mut Store<PluginState>,
    instance: &wasmtime::component::Instance,
) -> wasmtime::Result<(EventPlugin, HandleFunc)> {
    let bindings = EventPlugin::new(&mut *store, instance)?;
    let handle = instance.get_typed_func(&mut *store, plugin.handle_export)?;
    Ok((bindings, handle))
}

/// A fresh instance, `init` run. `fixed`: a replay's seed, and the time
/// its `init` runs at (with fixed random bytes).
async fn instantiate(
    plugin: &Arc<Plugin>,
    meter: &Arc<CallMeter>,
    fixed: Option<(u128, u64)>,
) -> Result<Live, BatchError> {
    let name = plugin.name().to_owned();
    let state = PluginState::new(
        &plugin.spec,
        &plugin.backends,
        plugin.log_budget.clone(),
        fixed.map(|f| f.0),
    );
    if let Some((_, wall)) = fixed {
        state.tape.fix(wall);
    }
    let mut store = Store::new(plugin.runtime.engine(), state);
    store.limiter(|s| &mut s.limiter);
    // Every epoch tick, a running plugin yields to the other tasks and is
    // paced (see `pace`); past its deadline it is interrupted.
    let tick = plugin.runtime.settings().epoch_tick;
    let pacing = pacing(plugin);
    let overran = plugin.overran.clone();
    let failed = plugin.faulted.clone();
    let activity = plugin.runtime.activity().clone();
    let meter = meter.clone();
    let deadline = plugin.spec.limits.deadline;
    let runtime = plugin.runtime.clone();
    let tenant = plugin.spec.tenant.clone();
    store.epoch_deadline_callback(move |mut s| {
        let seen = meter.tick();
        let out_of_time = s
            .data()
            .clock
            .is_some_and(|(_, until)| std::time::Instant::now() >= until);
        // Only calls on the slow lane are paced: a long call elsewhere just
        // yields, and its dispatcher moves it (a timer must not move along).
        let paced = if on_lane() { pacing } else { Pacing::OFF };
        let overran = overran.load(Ordering::Relaxed);
        let pace = paced.at_tick(Tick {
            ticks: seen,
            out_of_time,
            overran,
            failed: failed.load(Ordering::Relaxed),
            busy: activity.busy(meter.caller()),
        });
        // Tenants competing for CPU: one ahead of its share sits out a tick.
        let share_pause = runtime
            .shares()
            .map_or(0, |sh| sh.at_tick(&tenant, std::time::Instant::now()));
        let pace = match pace {
            Pace::Continue if share_pause > 0 => Pace::Pause(share_pause),
            other => other,
        };
        Ok(match pace {
            Pace::Stop => UpdateDeadline::Interrupt,
            Pace::Pause(n) => {
                let pause = tick * n;
                meter.paused(pause);
                // The host's pause is not the plugin's time (see `meter`),
                // unless its last call ran out of time.
                if !overran
                    && meter.excuse(pause, deadline)
                    && let Some((_, until)) = &mut s.data_mut().clock
                {
                    *until += pause;
                }
                UpdateDeadline::YieldCustom(1, Box::pin(tokio::time::sleep(pause)))
            }
            Pace::Continue => UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now())),
        })
    });
    start_clock(&mut store, deadline);

    let made = plugin
        .pre
        .instance_pre()
        .instantiate_async(&mut store)
        .await
        .and_then(|instance| typed(plugin, &mut store, &instance));
    let (bindings, handle) = match made {
        Ok(b) => b,
        Err(e) => {
            return Err(match classify(plugin, &store, e) {
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
    let init = init.await;
    store.data().tape.stop();
    match init {
        Ok(Ok(())) => Ok(Live { store, handle }),
        Ok(Err(reason)) => Err(BatchError::Init {
            plugin: name,
            reason,
        }),
        Err(e) => Err(classify(plugin, &store, e)),
    }
}

fn pacing(plugin: &Plugin) -> Pacing {
    let settings = plugin.runtime.settings();
    Pacing::new(settings.throttle_after, settings.epoch_tick)
}

/// Runs `fut` for up to `limit` plus the pauses the host excused it
/// (see [`CallMeter::excuse`]); `None` when that time is up.
async fn within<F: Future>(limit: Duration, meter: &CallMeter, fut: F) -> Option<F::Output> {
    let start = tokio::time::Instant::now();
    let mut fut = std::pin::pin!(fut);
    loop {
        let until = start + limit + meter.excused();
        match tokio::time::timeout_at(until, fut.as_mut()).await {
            Ok(out) => return Some(out),
            // Paused (and excused) meanwhile: wait on.
            Err(_) if start + limit + meter.excused() > until => continue,
            Err(_) => return None,
        }
    }
}

/// Arms the deadline for the next call. A long call is not run to its end
/// on one thread: at each epoch tick it yields (so a looping plugin cannot
/// starve the pipelines sharing the runtime's threads) until its time is up.
fn start_clock(store: &mut Store<PluginState>, deadline: Duration) {
    let now = std::time::Instant::now();
    store.data_mut().clock = Some((now, now + deadline));
    store.data_mut().caps.log.start_call();
    store.set_epoch_deadline(1);
}

/// A little after the epoch would interrupt a call past its deadline.
fn grace(plugin: &Plugin) -> Duration {
    plugin.spec.limits.deadline
        + plugin.runtime.settings().epoch_tick * 2
        + Duration::from_millis(50)
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
