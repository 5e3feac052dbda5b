//! A pipeline: streams → durable consumers → batches → plugin → settle.
//!
//! Per stream, one puller task collects batches (up to `batch` messages or
//! `batch_max_wait`) and hands them over bounded channels to `concurrency`
//! workers, each owning one plugin instance. Bounded channels and a
//! bounded pull window (see `puller`) keep memory bounded when plugins are
//! slower than the stream. With an `ordering` key, messages wait in a queue
//! per key and a key runs on one worker at a time (see `keyed`), so its
//! messages are handled in order while other keys run in parallel. Dead
//! letters the pipeline stores itself, and those of MAX_DELIVERIES
//! advisories, are in `advisories`.

mod ack;
pub mod advisories;
pub mod backoff;
pub mod breaker;
mod canary;
pub mod capture;
mod circuit;
pub mod effects;
mod keepalive;
mod keyed;
mod puller;
pub mod quota;
mod run;
pub mod settle;
mod shadow;
mod stats;
pub mod watch;
mod worker;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{Ordering, PipelineConfig, StreamConfig};
use crate::deadletter::Route;
use crate::jetstream::consumer::BindError;
use crate::jetstream::{Health, consumer};
use crate::plugin::{PluginInstance, PluginSlot};
use backoff::Backoff;

pub use keepalive::KeepAlive;
use keyed::KeyedQueue;
use puller::{PullOptions, Puller};
pub use stats::Stats;
pub use worker::Batch;

/// Everything a pipeline's tasks share.
#[derive(Debug)]
pub struct Pipeline {
    pub cfg: PipelineConfig,
    pub tenant: String,
    /// The tenant's ceiling on batches running at once, if it has one.
    pub tenant_slots: Option<Arc<tokio::sync::Semaphore>>,
    /// The tenant's message-rate quota, if it has one.
    pub tenant_rate: Option<Arc<quota::RateLimit>>,
    /// The plugin's current version; workers re-read it before each batch.
    pub plugin: Arc<PluginSlot>,
    pub route: Arc<Route>,
    pub backoff: Backoff,
    pub js: jetstream::Context,
    pub client: async_nats::Client,
    pub health: Arc<Health>,
    pub stats: Arc<Stats>,
    pub breaker: std::sync::Mutex<breaker::Breaker>,
    pub shutdown: CancellationToken,
    pub keepalive: Arc<keepalive::KeepAlive>,
    /// New consumer leaders, heard host-wide.
    pub leaders: Arc<crate::jetstream::leaders::Leaders>,
    /// Pull requests' replies, heard host-wide.
    pub inboxes: Arc<crate::jetstream::inboxes::Inboxes>,
    /// With `effects = "exactly-once"`: its ledger and outbox.
    pub effects: Option<Arc<effects::EffectsPlan>>,
    /// Where captures go (None: the host keeps none).
    pub captures: Option<capture::Capturer>,
}

/// Where pulled messages go: the workers' shared channel, or the queue by
/// key of an ordered pipeline.
enum Out {
    /// Boxed batches: the channel's first block (32 slots, allocated with
    /// it, idle or not) holds pointers, not batches.
    Shared(mpsc::Sender<Box<Batch>>),
    Keyed(Arc<KeyedQueue>),
}

/// Pause before recreating a consumer or its message stream after an error.
const RESUBSCRIBE_DELAY: Duration = Duration::from_secs(1);
/// After a connection loss, this many batches' worth of messages are
/// pulled one at a time.
const CAREFUL_BATCHES: usize = 2;
/// Idle heartbeat asked of the server on an idle pipeline's pull
/// requests (while an answer is due, see `puller::QUICK_HEARTBEAT`). Every
/// heartbeat and renewed request is work for the server and the host:
/// with 5 s and 30 s, ten thousand idle pipelines cost 2,700 messages a
/// second; with these, 230. A request lost while idle (which a leader
/// change or a reconnect does not already cover) is noticed in two minutes.
const HEARTBEAT: Duration = Duration::from_secs(60);
/// How long the server keeps a pull request open.
const PULL_EXPIRES: Duration = Duration::from_secs(300);
/// How often a paused puller looks at the breaker again.
const PAUSE_CHECK: Duration = Duration::from_millis(250);

/// Why a pipeline stopped before it was told to.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The server refused one of its consumers (permanent: reported once).
    #[error("pipeline `{pipeline}`: the server refuses its consumer: {source}")]
    Refused {
        pipeline: String,
        #[source]
        source: BindError,
    },
    /// Its exactly-once ledger and outbox cannot be created (a missing
    /// privilege, say: permanent).
    #[error(
        "pipeline `{pipeline}`: cannot create its exactly-once ledger and outbox: {source} \
         (docs/delivery.md lists the privileges they need)"
    )]
    Effects {
        pipeline: String,
        #[source]
        source: crate::capability::effects::StoreError,
    },
}

impl Pipeline {
    /// Runs the pipeline on every one of its streams until `shutdown`, then
    /// finishes and settles the batches in flight. A consumer the server
    /// refuses stops the whole pipeline (gracefully) and is the error.
    pub async fn run(
        self: Arc<Self>,
        streams: Vec<StreamConfig>,
        shutdown: CancellationToken,
    ) -> Result<(), PipelineError> {
        let stop = shutdown.child_token();
        let mut relay = None;
        if let Some(plan) = &self.effects {
            // Boxed: a start-up step, not part of the running task's state.
            if let Err(source) = Box::pin(self.prepare_effects(plan, &shutdown)).await {
                return Err(PipelineError::Effects {
                    pipeline: self.cfg.name.clone(),
                    source,
                });
            }
            relay = Some(tokio::spawn(effects::relay_loop(
                self.clone(),
                plan.clone(),
            )));
        }
        let mut consumers = JoinSet::new();
        let period = (self.cfg.ack_wait.0 / 2).max(Duration::from_millis(100));
        // Stops with the pipeline (after the last batch is settled).
        let keepalive_stop = CancellationToken::new();
        let keepalive = tokio::spawn(self.keepalive.clone().run(
            self.client.clone(),
            period,
            keepalive_stop.clone(),
        ));
        for stream in streams {
            consumers.spawn(self.clone().consume(stream.clone(), stop.clone()));
        }
        let mut refused = None;
        while let Some(ended) = consumers.join_next().await {
            if let Ok(Some(e)) = ended {
                stop.cancel();
                refused.get_or_insert(e);
            }
        }
        keepalive_stop.cancel();
        let _ = keepalive.await;
        if let Some(relay) = relay {
            let _ = relay.await;
        }
        match refused {
            Some(source) => Err(PipelineError::Refused {
                pipeline: self.cfg.name.clone(),
                source,
            }),
            None => Ok(()),
        }
    }

    /// Creates the ledger and outbox, waiting while the database is out.
    async fn prepare_effects(
        &self,
        plan: &effects::EffectsPlan,
        shutdown: &CancellationToken,
    ) -> Result<(), crate::capability::effects::StoreError> {
        let mut attempt = 0;
        loop {
            match plan.prepare().await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_transient() => {
                    attempt += 1;
                    tracing::warn!(pipeline = %self.cfg.name, error = %e, attempt,
                        "exactly-once: the effects database is out; waiting for it before consuming");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(self.backoff.delay(attempt)) => {}
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Consumes `stream` until `shutdown`; ends early with the error if the
    /// server refuses the consumer (binding again cannot help).
    async fn consume(
        self: Arc<Self>,
        stream: StreamConfig,
        shutdown: CancellationToken,
    ) -> Option<BindError> {
        let workers_n = self.cfg.concurrency as usize;
        let (tx, rx) = mpsc::channel(workers_n);
        let rx = Arc::new(Mutex::new(rx));
        let keyed = (self.cfg.ordering != Ordering::None).then(|| {
            Arc::new(KeyedQueue::new(
                self.cfg.ordering.clone(),
                2 * workers_n * self.cfg.batch as usize,
                self.keepalive.clone(),
            ))
        });
        let mut workers = JoinSet::new();
        for _ in 0..workers_n {
            let instance = PluginInstance::new(self.plugin.current());
            let source = match &keyed {
                // Ordered: a worker takes keys that are not running.
                Some(q) => worker::Source::Keyed(q.clone()),
                // Any free worker takes the next batch.
                None => worker::Source::Shared(rx.clone()),
            };
            workers.spawn(worker::run(self.clone(), instance, source));
        }
        let out = match &keyed {
            Some(q) => Out::Keyed(q.clone()),
            None => Out::Shared(tx),
        };

        let consumer_name = self.cfg.consumer_name(&stream.name);
        // Messages still to pull one at a time after a connection loss.
        let mut careful = 0usize;
        // An exclusive pipeline's pin id, kept across rebinds.
        let mut pin = None;
        let mut refused = None;
        'outer: while !shutdown.is_cancelled() {
            let bound = tokio::select! {
                _ = shutdown.cancelled() => break,
                // Only whether the server holds messages for it (then an
                // answer is due) outlives the box: a consumer's info is large.
                c = Box::pin(async {
                    let c = consumer::ensure(&self.js, &self.cfg, &stream).await?;
                    Ok::<_, BindError>(c.cached_info().num_pending > 0)
                }) => c,
            };
            let backlog = match bound {
                Ok(backlog) => backlog,
                Err(e) if e.is_permanent() => {
                    tracing::error!(pipeline = %self.cfg.name, consumer = %consumer_name, error = %e,
                        "the server refuses this pipeline's consumer; the pipeline stops (fix its settings, \
                         or remove the consumer of that name if another program made it, then restart)");
                    refused = Some(e);
                    break;
                }
                Err(e) => {
                    tracing::warn!(pipeline = %self.cfg.name, consumer = %consumer_name, error = %e,
                        "cannot bind consumer; retrying");
                    sleep_or_cancel(RESUBSCRIBE_DELAY, &shutdown).await;
                    continue;
                }
            };
            // Messages per batch, and asked for per pull request (see
            // `puller::window`): one at a time while being careful.
            let (pull, window) = if careful > 0 {
                (1, 1)
            } else {
                (self.cfg.batch as usize, puller::window(&self.cfg))
            };
            let disconnects = self.health.disconnects();
            let opts = if self.cfg.exclusive {
                // Pulls must be renewed well within the pin timeout, or the
                // pin moves to a standby host between two pulls.
                let expires = self.cfg.pin_timeout.0 / 3;
                PullOptions {
                    expires,
                    heartbeat: HEARTBEAT.min(expires / 3),
                    group: Some(crate::config::PIN_GROUP.to_owned()),
                    window_bytes: puller::window_bytes(&self.cfg),
                }
            } else {
                PullOptions {
                    expires: PULL_EXPIRES,
                    heartbeat: HEARTBEAT,
                    group: None,
                    window_bytes: puller::window_bytes(&self.cfg),
                }
            };
            // The rare steps are boxed, so that an idle pipeline's task
            // holds only the state of the step it waits in.
            let started = Box::pin(Puller::start(
                &self.js,
                &self.client,
                &stream.name,
                &consumer_name,
                opts,
                self.keepalive.clone(),
                pin.take(),
                backlog,
                &self.leaders,
                &self.inboxes,
            ))
            .await;
            let mut puller = match started {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(pipeline = %self.cfg.name, consumer = %consumer_name, error = %e,
                        "cannot start pulling; retrying");
                    sleep_or_cancel(RESUBSCRIBE_DELAY, &shutdown).await;
                    continue;
                }
            };
            self.health.consumer_bound();
            tracing::info!(pipeline = %self.cfg.name, consumer = %consumer_name, "consuming");
            loop {
                enum Next {
                    Stop,
                    Disconnected,
                    Paused,
                    Pulled(puller::Pulled, Option<String>),
                }
                // An open breaker: ask for nothing more until it lets a probe through.
                let paused = self.pull_paused();
                if paused.is_none()
                    && puller.outstanding() + puller.buffered() <= window / 2
                    && puller.room_for_bytes()
                {
                    // A tenant over its rate waits here, before pulling.
                    let want = match &self.tenant_rate {
                        None => window,
                        Some(rate) => {
                            let want = window.min(rate.capacity()).max(1);
                            let waiting = std::time::Instant::now();
                            // One take, kept across arrivals, keeps its turn.
                            let mut take = Box::pin(rate.take(want));
                            let stop = loop {
                                tokio::select! {
                                    _ = &mut take => break false,
                                    _ = shutdown.cancelled() => break true,
                                    _ = puller.arrive_keeping_pin() => {}
                                }
                            };
                            self.stats.throttled(waiting.elapsed());
                            if stop {
                                self.health.consumer_lost();
                                Box::pin(self.run_the_rest(puller, &out)).await;
                                break 'outer;
                            }
                            want
                        }
                    };
                    if let Err(e) = Box::pin(puller.request(want)).await {
                        tracing::warn!(pipeline = %self.cfg.name, consumer = %consumer_name, error = %e,
                            "cannot pull; re-binding the consumer");
                        self.health.consumer_lost();
                        pin = Box::pin(self.run_the_rest(puller, &out)).await;
                        sleep_or_cancel(RESUBSCRIBE_DELAY, &shutdown).await;
                        continue 'outer;
                    }
                }
                let next = {
                    let max_wait = self.cfg.batch_max_wait.0;
                    let work = async {
                        match paused {
                            // Paused: take in only what open requests still bring.
                            Some(wait) => {
                                tokio::select! {
                                    _ = tokio::time::sleep(wait.min(PAUSE_CHECK)) => {}
                                    _ = puller.arrive_keeping_pin() => {}
                                }
                                None
                            }
                            None => Some(
                                puller
                                    .collect(pull, self.cfg.batch_max_bytes.0 as usize, max_wait)
                                    .await,
                            ),
                        }
                    };
                    tokio::select! {
                        _ = shutdown.cancelled() => Next::Stop,
                        _ = self.health.disconnected_after(disconnects) => Next::Disconnected,
                        w = work => match w {
                            None => Next::Paused,
                            Some((p, e)) => Next::Pulled(p, e),
                        },
                    }
                };
                Stats::add(&self.stats.pull_requests_lost, puller.take_forgotten());
                let (pulled, error) = match next {
                    Next::Stop => {
                        self.health.consumer_lost();
                        Box::pin(self.run_the_rest(puller, &out)).await;
                        break 'outer;
                    }
                    Next::Disconnected => {
                        // A message the client cannot parse (non-UTF-8
                        // subject or header) drops the connection and, with
                        // it, the rest of its batch. Pull one message at a
                        // time for a while, so that its neighbours are
                        // delivered apart from it and it alone reaches
                        // max deliveries (then the advisory dead-letters it).
                        if careful == 0 {
                            tracing::info!(pipeline = %self.cfg.name, consumer = %consumer_name,
                                "connection lost; pulling one message at a time for a while");
                        }
                        careful = CAREFUL_BATCHES * self.cfg.batch as usize;
                        self.health.consumer_lost();
                        pin = Box::pin(self.run_the_rest(puller, &out)).await;
                        continue 'outer;
                    }
                    Next::Paused => continue,
                    Next::Pulled(p, e) => (p, e),
                };
                let got = pulled.messages.len();
                if got > 0 && !Box::pin(self.dispatch(pulled, &out, &mut puller)).await {
                    self.health.consumer_lost();
                    break 'outer;
                }
                if careful > 0 {
                    careful = careful.saturating_sub(got);
                    if careful == 0 {
                        tracing::info!(pipeline = %self.cfg.name, consumer = %consumer_name,
                            "back to full batches");
                        self.health.consumer_lost();
                        pin = Box::pin(self.run_the_rest(puller, &out)).await;
                        continue 'outer;
                    }
                }
                if let Some(e) = error {
                    self.health.consumer_lost();
                    tracing::warn!(pipeline = %self.cfg.name, consumer = %consumer_name, error = %e,
                        "message stream interrupted; re-binding the consumer");
                    pin = Box::pin(self.run_the_rest(puller, &out)).await;
                    sleep_or_cancel(RESUBSCRIBE_DELAY, &shutdown).await;
                    continue 'outer;
                }
            }
        }
        // Stop pulling; let workers finish and settle what they hold.
        match out {
            Out::Keyed(q) => q.close(),
            Out::Shared(tx) => drop(tx),
        }
        while workers.join_next().await.is_some() {}
        tracing::info!(pipeline = %self.cfg.name, consumer = %consumer_name, "stopped");
        refused
    }

    /// Leaving a binding (stopping, re-binding): what was taken in is handed
    /// to the workers, not dropped or handed back, so it keeps its
    /// delivery and its place before newer messages of its key. What
    /// arrives meanwhile goes the same way; the subscription ends here.
    /// Returns the pin id the binding held.
    async fn run_the_rest(&self, mut puller: Puller, out: &Out) -> Option<String> {
        loop {
            let rest = puller.take_all();
            if rest.messages.is_empty() || !self.dispatch(rest, out, &mut puller).await {
                break;
            }
        }
        let pin = puller.pin();
        puller.release().await;
        pin
    }

    /// The breaker's state as shown outside (admin API, metrics).
    pub fn breaker_shown(&self) -> breaker::State {
        self.breaker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .shown(std::time::Instant::now())
    }

    /// Hands messages to the workers; false if they are gone.
    /// Whether the plugin's last call failed while the breaker is still
    /// closed: batches are then handed over one message at a time, so a
    /// plugin that fails on everything spends one delivery per failure
    /// until its breaker opens (not a whole batch's), and one that failed
    /// on a poison message is back to full batches after one success.
    /// Probes (breaker open, then half-open) get whole batches, so messages
    /// still reach the dead-letter queue a batch at a time.
    fn failing(&self) -> bool {
        let closed = matches!(
            self.breaker
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .state(),
            breaker::State::Closed
        );
        closed && self.plugin.current().last_call_failed()
    }

    /// How long to pull nothing: while the breaker is open, until it lets
    /// a probe through (everything already held is kept alive meanwhile).
    fn pull_paused(&self) -> Option<Duration> {
        let state = self
            .breaker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .state();
        match state {
            breaker::State::Open { until, .. } => until
                .checked_duration_since(std::time::Instant::now())
                .filter(|d| !d.is_zero()),
            _ => None,
        }
    }

    /// Hands `msgs` to a worker (see [`Self::failing`]); they stay alive
    /// (`guards`) until a worker has them, and arrivals are taken in
    /// meanwhile. False if the workers are gone.
    async fn send(
        &self,
        sender: &mpsc::Sender<Box<Batch>>,
        mut msgs: Vec<jetstream::Message>,
        guards: Vec<keepalive::Guard>,
        puller: &mut Puller,
    ) -> bool {
        loop {
            let permit = loop {
                tokio::select! {
                    p = sender.reserve() => break p,
                    _ = puller.arrive_keeping_pin() => {}
                }
            };
            let Ok(permit) = permit else {
                return false;
            };
            if msgs.len() > 1 && self.failing() {
                let rest = msgs.split_off(1);
                let one = self.keepalive.track(&msgs);
                permit.send(Box::new(Batch(msgs, vec![one])));
                msgs = rest;
                continue;
            }
            permit.send(Box::new(Batch(msgs, guards)));
            return true;
        }
    }

    async fn dispatch(&self, pulled: puller::Pulled, out: &Out, puller: &mut Puller) -> bool {
        let puller::Pulled { messages, guards } = pulled;
        match out {
            Out::Shared(tx) => self.send(tx, messages, guards, puller).await,
            Out::Keyed(q) => {
                loop {
                    tokio::select! {
                        _ = q.room() => break,
                        _ = puller.arrive_keeping_pin() => {}
                    }
                }
                q.push(messages);
                true
            }
        }
    }
}

/// Sleeps unless cancelled first; true when cancelled.
async fn sleep_or_cancel(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}
