//! Dead letters a pipeline stores itself: through its route, held until
//! stored; and from MAX_DELIVERIES advisories — JetStream's word that it
//! gave up on a message whose last (spare) delivery ended without a
//! decision — read from the advisory stream or heard live.
//!
//! One task per host listens for them all ([`run`]), so an idle pipeline
//! costs nothing here. Kept advisories (`host.advisory_stream`) are read
//! through a durable consumer per pipeline consumer — shared by the
//! fleet, so each is handled once, also those emitted while no host ran,
//! and acked once the dead letter is stored — made only when there is an
//! advisory to read: found by one look at the stream's subjects at start
//! and every [`RESCAN`], or heard live. (A durable per pipeline consumer,
//! each with a pull open, was ten thousand more consumers on the server
//! and a thousand requests a second for ten thousand idle pipelines.)

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{Pipeline, RESUBSCRIBE_DELAY, Stats, sleep_or_cancel};
use crate::deadletter::{self, DeadLetter};

/// How often the advisory stream is looked at again for advisories not
/// heard live (missed while disconnected, or left unacked by a host that
/// stopped): the advisory consumers' `ack_wait`.
pub const RESCAN: Duration = Duration::from_secs(60);

/// Reads of a consumer's kept advisories that may come back empty (or
/// fail) before the reader leaves them to the next look, and how long
/// each waits.
const READ_TRIES: u32 = 5;
const READ_WAIT: Duration = Duration::from_secs(1);

/// The pipelines by (stream, consumer name).
type Owners = HashMap<(String, String), Arc<Pipeline>>;

/// Handles the MAX_DELIVERIES advisories of every consumer of
/// `pipelines` until `stop` (given once the last batch is settled). With
/// `kept`, from the advisory stream of that name; else heard live only
/// (each host running the pipeline handles it; the built-in route's
/// message id keeps the dead letter single).
pub async fn run(
    pipelines: Vec<Arc<Pipeline>>,
    kept: Option<String>,
    js: jetstream::Context,
    client: async_nats::Client,
    stop: CancellationToken,
) {
    let mut owners = Owners::new();
    for p in &pipelines {
        for s in &p.cfg.streams {
            owners.insert((s.clone(), p.cfg.consumer_name(s)), p.clone());
        }
    }
    let owners = Arc::new(owners);
    let all = deadletter::advisory::subject("*", "*");
    let mut live = loop {
        match client.subscribe(all.clone()).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(subject = %all, error = %e, "cannot subscribe to advisories; retrying");
                if sleep_or_cancel(RESUBSCRIBE_DELAY, &stop).await {
                    return;
                }
            }
        }
    };
    let mut drains = Drains::default();
    let mut rescan = tokio::time::interval(RESCAN);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = rescan.tick(), if kept.is_some() => {
                if let Some(kept) = &kept {
                    for key in waiting(&js, kept, &owners).await {
                        drains.start(key, kept, &js, &owners);
                    }
                }
            }
            Some(()) = drains.next() => {}
            msg = live.next() => {
                let Some(msg) = msg else { break };
                let a = match deadletter::advisory::MaxDeliveries::parse(&msg.payload) {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(subject = %msg.subject, error = %e, "unreadable MAX_DELIVERIES advisory");
                        continue;
                    }
                };
                let key = (a.stream.clone(), a.consumer.clone());
                match (&kept, owners.get(&key)) {
                    (_, None) => {}
                    (Some(kept), Some(_)) => drains.start(key, kept, &js, &owners),
                    (None, Some(p)) => {
                        let p = p.clone();
                        drains.tasks.spawn(async move {
                            p.dead_letter_from_advisory(&a).await;
                        });
                    }
                }
            }
        }
    }
    drains.tasks.abort_all();
}

/// Consumers whose kept advisories are being read, one reader each.
#[derive(Default)]
struct Drains {
    tasks: JoinSet<()>,
    running: HashMap<tokio::task::Id, (String, String)>,
    busy: HashSet<(String, String)>,
}

impl Drains {
    fn start(
        &mut self,
        key: (String, String),
        kept: &str,
        js: &jetstream::Context,
        owners: &Arc<Owners>,
    ) {
        if !self.busy.insert(key.clone()) {
            return;
        }
        let (js, kept, owners, k) = (js.clone(), kept.to_owned(), owners.clone(), key.clone());
        let handle = self.tasks.spawn(async move {
            if let Some(p) = owners.get(&k) {
                p.read_kept_advisories(&js, &kept, &k.0).await;
            }
        });
        self.running.insert(handle.id(), key);
    }

    /// Waits for a reader to end (pending forever when none runs).
    async fn next(&mut self) -> Option<()> {
        match self.tasks.join_next_with_id().await {
            Some(Ok((id, ()))) => self.forget(id),
            Some(Err(e)) => self.forget(e.id()),
            None => std::future::pending::<()>().await,
        }
        Some(())
    }

    fn forget(&mut self, id: tokio::task::Id) {
        if let Some(key) = self.running.remove(&id) {
            self.busy.remove(&key);
        }
    }
}

/// Our consumers with kept advisories to read: a durable with messages
/// pending or unacknowledged, or none yet and advisories for its subject
/// in the stream.
async fn waiting(js: &jetstream::Context, kept: &str, owners: &Owners) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Ok(stream) = js.get_stream(kept).await else {
        return out;
    };
    let mut durables = HashMap::new();
    let mut list = stream.consumers();
    while let Some(Ok(info)) = list.next().await {
        durables.insert(
            info.name.clone(),
            info.num_pending + info.num_ack_pending as u64,
        );
    }
    let subjects = match stream
        .info_with_subjects(deadletter::advisory::subject("*", "*"))
        .await
    {
        Ok(mut s) => {
            let mut all = HashMap::new();
            while let Some(Ok((subject, n))) = s.next().await {
                all.insert(subject, n);
            }
            all
        }
        Err(_) => HashMap::new(),
    };
    for ((stream_name, consumer), p) in owners {
        let durable = p.cfg.advisory_consumer_name(stream_name);
        let wanted = match durables.get(&durable) {
            Some(n) => *n > 0,
            None => subjects
                .get(&deadletter::advisory::subject(stream_name, consumer))
                .is_some_and(|n| *n > 0),
        };
        if wanted {
            out.push((stream_name.clone(), consumer.clone()));
        }
    }
    out
}

impl Pipeline {
    /// Reads the kept advisories of this pipeline's consumer on `stream`
    /// (its durable on `kept`, made if missing) until none is left;
    /// each is acked once its dead letter is stored.
    async fn read_kept_advisories(&self, js: &jetstream::Context, kept: &str, stream: &str) {
        let consumer_name = self.cfg.consumer_name(stream);
        let config = jetstream::consumer::pull::Config {
            durable_name: Some(self.cfg.advisory_consumer_name(stream)),
            description: Some(format!(
                "jetplug: MAX_DELIVERIES advisories of {consumer_name}"
            )),
            filter_subject: deadletter::advisory::subject(stream, &consumer_name),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: RESCAN,
            max_deliver: -1,
            ..Default::default()
        };
        // A new (clustered) durable may answer only once it has a leader,
        // and an advisory heard live may not be stored in the stream yet:
        // a few short waits before leaving it to the next look.
        let mut tries = 0;
        let mut read = 0u64;
        let mut consumer = None;
        while tries < READ_TRIES && !self.shutdown.is_cancelled() {
            let fetched = async {
                let c = match &consumer {
                    Some(c) => c,
                    None => consumer.insert(
                        js.get_stream_no_info(kept)
                            .await?
                            .create_consumer(config.clone())
                            .await?,
                    ),
                };
                let batch = c.batch().max_messages(100).expires(READ_WAIT);
                Ok::<_, async_nats::Error>(batch.messages().await?)
            };
            let mut batch = match fetched.await {
                Ok(b) => b,
                Err(e) => {
                    tries += 1;
                    tracing::debug!(stream = %kept, consumer = %consumer_name, error = %e,
                        "cannot read kept advisories yet");
                    tokio::time::sleep(READ_WAIT / 2).await;
                    continue;
                }
            };
            let mut got = 0;
            while let Some(Ok(msg)) = batch.next().await {
                got += 1;
                let done = match deadletter::advisory::MaxDeliveries::parse(&msg.payload) {
                    Ok(a) => self.dead_letter_from_advisory(&a).await,
                    Err(e) => {
                        tracing::warn!(subject = %msg.subject, error = %e, "unreadable MAX_DELIVERIES advisory");
                        true
                    }
                };
                if done && let Err(e) = msg.ack().await {
                    tracing::warn!(error = %e, "acknowledging an advisory failed; it will be handled again");
                }
                if self.shutdown.is_cancelled() {
                    return;
                }
            }
            read += got;
            if got == 0 {
                if read > 0 {
                    return;
                }
                tries += 1;
            }
        }
        if read == 0 && !self.shutdown.is_cancelled() {
            tracing::debug!(stream = %kept, consumer = %consumer_name,
                "no kept advisory read; the next look at the stream tries again");
        }
    }

    /// The dead letter of an advisory's message. True when done with the
    /// advisory: stored, or the message is gone from its stream (then
    /// there is nothing to store: logged, counted); false to try again.
    async fn dead_letter_from_advisory(&self, a: &deadletter::advisory::MaxDeliveries) -> bool {
        use crate::jetstream::raw_get::{self, RawGetError};
        let stored = match raw_get::get(&self.client, &a.stream, a.stream_seq).await {
            Ok(m) => m,
            Err(e) => {
                let gone = matches!(e, RawGetError::Api { .. });
                tracing::error!(stream = %a.stream, seq = a.stream_seq, error = %e,
                    "message reached max deliveries but cannot be read back; it is not dead-lettered{}",
                    if gone { "" } else { " yet (trying again)" });
                Stats::add(&self.stats.dead_letter_failures, 1);
                return gone;
            }
        };
        let msg = crate::jetstream::convert::from_raw(
            &stored,
            &a.stream,
            &self.tenant,
            &a.consumer,
            a.deliveries,
        );
        let reason = if stored.not_utf8 {
            a.undeliverable_reason()
        } else {
            a.reason()
        };
        let dl = DeadLetter::from_message(&self.cfg.name, &msg, reason);
        self.store_dead_letter(&dl).await
    }

    /// Hands `dl` to the route until it is stored: a route that fails
    /// holds the message (its deliveries are not spent; the keep-alive
    /// goes on), retried with the pipeline's backoff, counted in
    /// `dead_letter_failures` and `dead_letters_held`. True once stored;
    /// false if the host is stopping first.
    pub(crate) async fn store_dead_letter(&self, dl: &DeadLetter) -> bool {
        let mut attempt = 0u32;
        let stored = loop {
            match self.route.send(dl).await {
                Ok(()) => break true,
                Err(e) => {
                    attempt += 1;
                    Stats::add(&self.stats.dead_letter_failures, 1);
                    if attempt == 1 {
                        self.stats.dead_letters_held.inc();
                    }
                    tracing::error!(pipeline = %self.cfg.name, stream = %dl.stream, seq = dl.sequence,
                        attempt, error = %e,
                        "dead letter not stored; holding the message and trying again");
                    if sleep_or_cancel(self.backoff.delay(attempt), &self.shutdown).await {
                        break false;
                    }
                }
            }
        };
        if attempt > 0 {
            self.stats.dead_letters_held.dec();
        }
        if stored {
            self.stats.dead_letter(&dl.reason);
            tracing::warn!(pipeline = %self.cfg.name, stream = %dl.stream, seq = dl.sequence,
                reason = %dl.reason, "dead-lettered");
        }
        stored
    }
}
