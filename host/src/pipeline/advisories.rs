//! Dead letters a pipeline stores itself: through its route, held until
//! stored; and from MAX_DELIVERIES advisories — JetStream's word that it
//! gave up on a message whose last (spare) delivery ended without a
//! decision — read from the advisory stream or heard live.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{PULL_EXPIRES, Pipeline, RESUBSCRIBE_DELAY, Stats, sleep_or_cancel};
use crate::config::StreamConfig;
use crate::deadletter::{self, DeadLetter};

impl Pipeline {
    /// Dead-letters messages whose spare delivery timed out with no
    /// decision, from their MAX_DELIVERIES advisories: read from the
    /// advisory stream through a durable consumer per pipeline consumer
    /// (shared by the fleet, so each is handled once, also those emitted
    /// while no host ran; acked once the dead letter is stored), or heard
    /// live in one queue group per consumer when there is no such stream.
    pub(super) async fn listen_max_deliveries(
        self: Arc<Self>,
        stream: StreamConfig,
        stop: CancellationToken,
    ) {
        match self.advisory_stream.clone() {
            Some(kept) => self.follow_kept_advisories(&kept, &stream, &stop).await,
            None => self.hear_advisories(&stream, &stop).await,
        }
    }

    async fn follow_kept_advisories(
        &self,
        kept: &str,
        stream: &StreamConfig,
        stop: &CancellationToken,
    ) {
        let consumer_name = self.cfg.consumer_name(&stream.name);
        let config = jetstream::consumer::pull::Config {
            durable_name: Some(self.cfg.advisory_consumer_name(&stream.name)),
            description: Some(format!(
                "jetplug: MAX_DELIVERIES advisories of {consumer_name}"
            )),
            filter_subject: deadletter::advisory::subject(&stream.name, &consumer_name),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(60),
            max_deliver: -1,
            ..Default::default()
        };
        loop {
            let messages = async {
                let s = self.js.get_stream_no_info(kept).await?;
                let c = s.create_consumer(config.clone()).await?;
                Ok::<_, async_nats::Error>(c.stream().expires(PULL_EXPIRES).messages().await?)
            };
            let mut messages = tokio::select! {
                _ = stop.cancelled() => return,
                m = messages => match m {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(stream = %kept, consumer = %consumer_name, error = %e,
                            "cannot read kept advisories; retrying");
                        if sleep_or_cancel(RESUBSCRIBE_DELAY, stop).await {
                            return;
                        }
                        continue;
                    }
                },
            };
            loop {
                let msg = tokio::select! {
                    _ = stop.cancelled() => return,
                    m = messages.next() => m,
                };
                let msg = match msg {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        tracing::debug!(stream = %kept, error = %e, "advisory reader interrupted");
                        break;
                    }
                    None => break,
                };
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
            }
            if sleep_or_cancel(RESUBSCRIBE_DELAY, stop).await {
                return;
            }
        }
    }

    async fn hear_advisories(&self, stream: &StreamConfig, shutdown: &CancellationToken) {
        let consumer_name = self.cfg.consumer_name(&stream.name);
        let subject = deadletter::advisory::subject(&stream.name, &consumer_name);
        let mut sub = loop {
            let group = format!("jetplug-advisories-{consumer_name}");
            match self.client.queue_subscribe(subject.clone(), group).await {
                Ok(s) => break s,
                Err(e) => {
                    tracing::warn!(%subject, error = %e, "cannot subscribe to advisories; retrying");
                    if sleep_or_cancel(RESUBSCRIBE_DELAY, shutdown).await {
                        return;
                    }
                }
            }
        };
        loop {
            let msg = tokio::select! {
                _ = shutdown.cancelled() => return,
                m = sub.next() => match m { Some(m) => m, None => return },
            };
            match deadletter::advisory::MaxDeliveries::parse(&msg.payload) {
                Ok(a) => {
                    self.dead_letter_from_advisory(&a).await;
                }
                Err(e) => {
                    tracing::warn!(%subject, error = %e, "unreadable MAX_DELIVERIES advisory")
                }
            }
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
