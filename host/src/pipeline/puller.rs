//! Pulling from a durable consumer with explicit pull requests, so the
//! pipeline decides when messages come: it asks for a window of messages
//! (a batch for each worker and one more, see [`window`]) and for the next
//! window when what is owed and waiting falls to half of one (so messages
//! keep flowing), never while the breaker is open, and every message that
//! arrives is kept alive (+WPI) from the moment it is taken in. The
//! pipeline takes arrivals in whenever it waits (for a worker, for room,
//! for the breaker), so nothing sits unseen in the inbox while its
//! `ack_wait` runs out. A request the server forgot (no message or idle
//! heartbeat for two heartbeats) counts as ended and is asked again. While
//! an answer is due — on a fresh binding until the server first answers
//! (a new clustered consumer may lose the first requests while it
//! settles, and may not know its pending count yet), and while the server
//! holds messages for the consumer (each message says how many) —
//! requests ask for a quick heartbeat ([`QUICK_HEARTBEAT`]), so a lost one
//! is noticed within about a second; an idle pipeline asks for the slow
//! one and costs the server little. A new consumer leader (its
//! `LEADER_ELECTED` advisory) forgets every open request at once. A batch waits to fill
//! only while the server says more messages are waiting (each message
//! carries the consumer's pending count): low latency when quiet, full
//! batches under load.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::{Client, StatusCode};

use super::keepalive::{Guard, KeepAlive};
use crate::jetstream::inboxes::{Inbox, Inboxes};

/// Messages asked for in one pull request: a batch for each worker and one
/// more, so every worker finds a batch waiting while the next request is
/// on its way (within `max_ack_pending`, which the server would not exceed
/// anyway). Requests of a single batch left the no-op pipeline at 0.87–0.92
/// of a native consumer, waiting on request round trips and the server's
/// per-request work; with this window it keeps up (docs/performance.md).
pub fn window(cfg: &crate::config::PipelineConfig) -> usize {
    window_of(cfg.batch, cfg.concurrency, cfg.max_ack_pending)
}

fn window_of(batch: u32, concurrency: u32, max_ack_pending: u32) -> usize {
    let batch = batch.max(1) as usize;
    let window = batch.saturating_mul(concurrency.max(1) as usize + 1);
    window.min((max_ack_pending as usize).max(batch))
}

/// The idle heartbeat asked for while an answer is due: a request with no
/// word for two of them was lost.
pub const QUICK_HEARTBEAT: Duration = Duration::from_millis(500);

/// How long a request made while an answer is due lasts: a few quick
/// heartbeats (ten thousand pipelines bound at once each get about four).
pub const QUICK_EXPIRES: Duration = Duration::from_secs(2);

/// How requests are made.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// How long the server keeps a request open.
    pub expires: Duration,
    /// Idle heartbeat asked of the server while a request is open and the
    /// pipeline is idle (see [`QUICK_HEARTBEAT`] for the other times).
    pub heartbeat: Duration,
    /// Priority group of a pinned-client consumer (`exclusive`).
    pub group: Option<String>,
    /// Bytes the open requests and the buffer may hold together (see
    /// [`window_bytes`]); never less than the largest message the server
    /// accepts, which a request must be able to bring.
    pub window_bytes: usize,
}

/// Bytes asked for in pull requests: the byte twin of [`window`], a
/// `batch_max_bytes` for each worker and one more, so large messages are
/// pulled as far as the workers' batches can take them and no further.
pub fn window_bytes(cfg: &crate::config::PipelineConfig) -> usize {
    let batch = usize::try_from(cfg.batch_max_bytes.0).unwrap_or(usize::MAX);
    batch.saturating_mul(cfg.concurrency.max(1) as usize + 1)
}

/// Room above the server's `max_payload` for what it counts beside the
/// payload and headers (subject, reply), so a request always fits a message.
const MESSAGE_MARGIN: usize = 64 << 10;

/// A pull that could not be made (transient: the binding is made again).
#[derive(Debug, Clone, thiserror::Error)]
pub enum PullError {
    #[error("sending a pull request: {0}")]
    Send(String),
}

/// Messages pulled, with what keeps them alive.
pub struct Pulled {
    pub messages: Vec<jetstream::Message>,
    pub guards: Vec<Guard>,
}

pub struct Puller {
    client: Client,
    js: jetstream::Context,
    subject: String,
    /// Where the requests' replies come (one of the host's inboxes).
    inbox: Inbox,
    /// Fires on the consumer's `LEADER_ELECTED` advisories.
    leader: Arc<tokio::sync::Notify>,
    opts: PullOptions,
    /// The largest message the server takes, with its headers' margin: a
    /// request always has room for one.
    largest: usize,
    /// The heartbeat asked for in the last request.
    heartbeat: Duration,
    /// Requests given up as lost.
    forgotten: u64,
    /// Messages the open requests may still deliver.
    outstanding: usize,
    /// What each open request may still bring, oldest first: messages and
    /// bytes (the server serves one client's requests in order, so a
    /// message or an end counts against the oldest).
    requests: VecDeque<(usize, usize)>,
    /// Bytes of the messages taken in and not collected.
    buffered_bytes: usize,
    /// The pin id given to this client (exclusive pipelines).
    pin: Option<String>,
    /// When the last request went out.
    last_request: Instant,
    buffered: VecDeque<(Vec<jetstream::Message>, Guard)>,
    count: usize,
    /// The last word from the server.
    heard: Instant,
    /// Why pulling on this binding cannot go on, once known.
    error: Option<String>,
    /// Whether the server had more messages waiting for this consumer when
    /// it sent the last one (its `pending` count): only then is a batch
    /// worth waiting for.
    backlog: bool,
    /// No word from the server on this binding yet (an answer is due).
    fresh: bool,
    keepalive: Arc<KeepAlive>,
}

#[derive(serde::Serialize)]
struct Request<'a> {
    batch: usize,
    #[serde(with = "nanos")]
    expires: Duration,
    #[serde(with = "nanos")]
    idle_heartbeat: Duration,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_bytes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
}

mod nanos {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }
}

impl Puller {
    /// Subscribes an inbox for `consumer` of `stream`; `pin` is the pin id
    /// an earlier binding held (exclusive pipelines keep it across rebinds),
    /// `backlog` whether the server holds messages for the consumer.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        js: &jetstream::Context,
        client: &Client,
        stream: &str,
        consumer: &str,
        opts: PullOptions,
        keepalive: Arc<KeepAlive>,
        pin: Option<String>,
        backlog: bool,
        leaders: &crate::jetstream::leaders::Leaders,
        inboxes: &Arc<Inboxes>,
    ) -> Result<Self, PullError> {
        let inbox = inboxes.open(stream, consumer);
        let leader = leaders.watch(stream, consumer);
        let mut opts = opts;
        let largest = client
            .server_info()
            .max_payload
            .saturating_add(MESSAGE_MARGIN);
        if opts.window_bytes > 0 {
            opts.window_bytes = opts.window_bytes.max(largest);
        }
        Ok(Puller {
            leader,
            heartbeat: opts.heartbeat,
            forgotten: 0,
            client: client.clone(),
            js: js.clone(),
            subject: format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"),
            inbox,
            opts,
            largest,
            outstanding: 0,
            requests: VecDeque::new(),
            buffered_bytes: 0,
            pin,
            last_request: Instant::now(),
            buffered: VecDeque::new(),
            count: 0,
            heard: Instant::now(),
            error: None,
            backlog,
            fresh: true,
            keepalive,
        })
    }

    /// Messages the open requests may still deliver (0: none open).
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// The pin id this client holds (exclusive pipelines).
    pub fn pin(&self) -> Option<String> {
        self.pin.clone()
    }

    /// When a pinned client must ask again to keep its pin (a request at
    /// least every `expires`, a third of `pin_timeout`), also while it takes
    /// nothing more in (breaker open, workers busy); None: not pinned.
    pub fn pin_due(&self) -> Option<tokio::time::Instant> {
        self.opts
            .group
            .as_ref()
            .map(|_| tokio::time::Instant::from_std(self.last_request + self.opts.expires))
    }

    /// Keeps the pin: a request for one message if none went out for
    /// `expires` (what it brings is kept alive like the rest).
    pub async fn keep_pin(&mut self) -> Result<(), PullError> {
        if self.opts.group.is_some() && self.last_request.elapsed() >= self.opts.expires {
            self.request(1).await?;
        }
        Ok(())
    }

    /// Requests given up as lost on this binding (counted, then reset).
    pub fn take_forgotten(&mut self) -> u64 {
        std::mem::take(&mut self.forgotten)
    }

    /// Messages taken in and not yet collected.
    pub fn buffered(&self) -> usize {
        self.count
    }

    /// Whether the byte window has room for another request: what the open
    /// requests may bring and what is buffered fill at most half of it
    /// (always, without a byte window).
    pub fn room_for_bytes(&self) -> bool {
        self.opts.window_bytes == 0
            || self.outstanding_bytes() + self.buffered_bytes <= self.opts.window_bytes / 2
    }

    /// Bytes the open requests may still bring.
    fn outstanding_bytes(&self) -> usize {
        self.requests.iter().map(|(_, bytes)| bytes).sum()
    }

    /// Forgets the open requests (lost, ended by a new leader, or not sent).
    fn forget_requests(&mut self) {
        self.outstanding = 0;
        self.requests.clear();
    }

    /// Asks the server for up to `n` messages.
    pub async fn request(&mut self, n: usize) -> Result<(), PullError> {
        // An answer is due while the server holds messages for us. Such a
        // request is short-lived: an idle pipeline's first one would
        // otherwise bring quick heartbeats for its whole (long) life.
        let quick = self.fresh || self.backlog;
        let expires = if quick {
            self.heartbeat = QUICK_HEARTBEAT.min(self.opts.heartbeat);
            QUICK_EXPIRES.min(self.opts.expires)
        } else {
            self.heartbeat = self.opts.heartbeat;
            self.opts.expires
        };
        // The rest of the byte window, but always room for one message.
        let max_bytes = (self.opts.window_bytes > 0).then(|| {
            let held = self.outstanding_bytes() + self.buffered_bytes;
            self.opts
                .window_bytes
                .saturating_sub(held)
                .max(self.largest)
        });
        let body = serde_json::to_vec(&Request {
            batch: n,
            expires,
            max_bytes,
            idle_heartbeat: self.heartbeat,
            group: self.opts.group.as_deref(),
            id: self.pin.clone(),
        })
        .map_err(|e| PullError::Send(e.to_string()))?;
        if self.outstanding == 0 {
            self.heard = Instant::now();
        }
        self.last_request = Instant::now();
        self.outstanding += n;
        self.requests.push_back((n, max_bytes.unwrap_or(0)));
        self.client
            .publish_with_reply(
                self.subject.clone(),
                self.inbox.subject().clone(),
                body.into(),
            )
            .await
            .map_err(|e| {
                self.forget_requests();
                PullError::Send(e.to_string())
            })
    }

    /// Waits for the server's next word on an open request and takes in
    /// everything that has arrived. Cancel-safe; never ends while no
    /// request is open (use it as a `select!` branch while waiting).
    pub async fn arrive(&mut self) {
        loop {
            if self.outstanding == 0 || self.error.is_some() {
                return std::future::pending().await;
            }
            let next = tokio::select! {
                m = tokio::time::timeout(self.heartbeat, self.inbox.next()) => m,
                _ = self.leader.notified() => {
                    // A new leader knows nothing of the open requests.
                    tracing::debug!(subject = %self.subject, "consumer leader changed; asking again");
                    self.forget_requests();
                    return;
                }
            };
            match next {
                Ok(Some(m)) => {
                    self.heard = Instant::now();
                    if self.take_in(m) {
                        return;
                    }
                }
                Ok(None) => {
                    self.error = Some("the pull inboxes closed".into());
                    return;
                }
                Err(_) => {
                    // Two heartbeats without a word: the server lost it.
                    if self.heard.elapsed() >= 2 * self.heartbeat {
                        tracing::debug!(subject = %self.subject, silent = ?self.heard.elapsed(),
                            "pull request unanswered; asking again");
                        self.forgotten += 1;
                        self.forget_requests();
                        return;
                    }
                }
            }
        }
    }

    /// [`Self::arrive`], keeping a pinned client's pin meanwhile (for the
    /// waits in which nothing more is asked for).
    pub async fn arrive_keeping_pin(&mut self) {
        let Some(due) = self.pin_due() else {
            return self.arrive().await;
        };
        let renew = tokio::select! {
            _ = self.arrive() => false,
            _ = tokio::time::sleep_until(due) => true,
        };
        // Boxed: a rare step, kept out of every waiting pipeline's state.
        if renew && let Err(e) = Box::pin(self.keep_pin()).await {
            self.error = Some(e.to_string());
        }
    }

    /// Takes in `first` and whatever else has already arrived. True if
    /// anything changed for the caller (messages, a request ended, an error).
    fn take_in(&mut self, first: async_nats::Message) -> bool {
        let mut msgs = Vec::new();
        let mut ended = false;
        let mut next = Some(first);
        while let Some(m) = next.take() {
            match m.status.unwrap_or(StatusCode::OK) {
                StatusCode::OK => {
                    if let Some(id) = m.headers.as_ref().and_then(|h| h.get_last("Nats-Pin-Id")) {
                        self.pin = Some(id.as_str().to_owned());
                    }
                    self.outstanding = self.outstanding.saturating_sub(1);
                    if let Some((left, bytes)) = self.requests.front_mut() {
                        *left = left.saturating_sub(1);
                        *bytes = bytes.saturating_sub(m.length);
                        if *left == 0 {
                            // Fulfilled: the server ends it without a word.
                            self.requests.pop_front();
                        }
                    }
                    self.buffered_bytes += m.length;
                    msgs.push(jetstream::Message {
                        message: m,
                        context: self.js.clone(),
                    });
                }
                // Alive, with nothing for us: no answer is due.
                StatusCode::IDLE_HEARTBEAT => self.fresh = false,
                status => {
                    // The request's unmet part (all of it if not said).
                    let unmet = |header: &str| {
                        m.headers
                            .as_ref()
                            .and_then(|h| h.get(header))
                            .and_then(|v| v.as_str().parse::<usize>().ok())
                            .unwrap_or(usize::MAX)
                    };
                    self.outstanding = self
                        .outstanding
                        .saturating_sub(unmet("Nats-Pending-Messages"));
                    // It ends the oldest request.
                    self.requests.pop_front();
                    if self.outstanding == 0 {
                        self.requests.clear();
                    }
                    if status == StatusCode::PIN_ID_MISMATCH {
                        self.pin = None;
                    }
                    if let Some(e) = fatal(status, m.description.as_deref()) {
                        self.error = Some(e);
                    }
                    ended = true;
                }
            }
            if !ended && msgs.len() < 10_000 {
                next = self.inbox.try_next();
            }
        }
        let got = !msgs.is_empty();
        if let Some(last) = msgs.last() {
            self.backlog = last.info().is_ok_and(|i| i.pending > 0);
            self.fresh = false;
        }
        if got {
            let guard = self.keepalive.track(&msgs);
            self.count += msgs.len();
            self.buffered.push_back((msgs, guard));
        }
        got || ended
    }

    /// Takes in what has already arrived, without waiting.
    fn take_in_ready(&mut self) {
        while let Some(m) = self.inbox.try_next() {
            self.heard = Instant::now();
            self.take_in(m);
        }
    }

    /// Up to `size` messages: waits for the first, then — only while the
    /// server has more waiting (a backlog) — up to `max_wait` for more
    /// while an open request may bring them. Without a backlog a batch goes
    /// at once with what has arrived, so a quiet pipeline does not wait for
    /// batches to fill; under load batches fill. Empty when the open request
    /// ended without any; the error ends pulling on this binding.
    pub async fn collect(
        &mut self,
        size: usize,
        max_bytes: usize,
        max_wait: Duration,
    ) -> (Pulled, Option<String>) {
        self.take_in_ready();
        if self.count == 0 && self.outstanding > 0 && self.error.is_none() {
            self.arrive().await;
        }
        let deadline = tokio::time::Instant::now() + max_wait;
        while self.error.is_none()
            && self.backlog
            && self.count > 0
            && self.fitting(size, max_bytes) == self.count
            && self.count < size
            && self.outstanding > 0
        {
            if tokio::time::timeout_at(deadline, self.arrive())
                .await
                .is_err()
            {
                break;
            }
        }
        let n = self.fitting(size, max_bytes);
        (self.take(n), self.error.take())
    }

    /// How many of the first `size` buffered messages fit in `max_bytes`
    /// (payload and headers), at least one: a batch is cut by bytes too,
    /// so large messages do not overrun the plugin's memory.
    fn fitting(&self, size: usize, max_bytes: usize) -> usize {
        let (mut n, mut bytes) = (0, 0usize);
        for m in self.buffered.iter().flat_map(|(msgs, _)| msgs.iter()) {
            if n == size {
                break;
            }
            bytes = bytes.saturating_add(m.length);
            if n > 0 && bytes > max_bytes {
                break;
            }
            n += 1;
        }
        n
    }

    fn take(&mut self, size: usize) -> Pulled {
        let mut out = Pulled {
            messages: Vec::with_capacity(size.min(self.count)),
            guards: Vec::new(),
        };
        while out.messages.len() < size {
            let Some((mut msgs, guard)) = self.buffered.pop_front() else {
                break;
            };
            let room = size - out.messages.len();
            if msgs.len() > room {
                let rest = msgs.split_off(room);
                let kept = self.keepalive.track(&rest);
                self.buffered.push_front((rest, kept));
            }
            out.messages.extend(msgs);
            out.guards.push(guard);
        }
        self.count -= out.messages.len();
        let bytes: usize = out.messages.iter().map(|m| m.length).sum();
        self.buffered_bytes = self.buffered_bytes.saturating_sub(bytes);
        out
    }

    /// Everything taken in and not yet collected (stopping: it is run,
    /// not handed back, so no delivery is spent on it).
    pub fn take_all(&mut self) -> Pulled {
        self.take_in_ready();
        self.take(self.count)
    }

    /// Hands back what was taken in and not collected (stopping): a NAK
    /// with a short delay, so this or another host takes it soon.
    pub async fn release(mut self) {
        self.take_in_ready();
        for (msgs, _guard) in self.buffered.drain(..) {
            super::ack::hand_back(&msgs, Duration::from_millis(100)).await;
        }
    }
}

/// Why a status message on the inbox ends pulling on this binding (None:
/// the request merely ended: expired, leadership change, pin moved).
fn fatal(status: StatusCode, description: Option<&str>) -> Option<String> {
    let d = description.unwrap_or_default();
    let fatal = match status {
        StatusCode::TIMEOUT | StatusCode::NOT_FOUND | StatusCode::PIN_ID_MISMATCH => false,
        StatusCode::REQUEST_TERMINATED => {
            d == "Consumer Deleted"
                || d == "Consumer is push based"
                || d.starts_with("Exceeded MaxRequest")
        }
        _ => true,
    };
    fatal.then(|| format!("pull request answered {status}: {d}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_is_a_batch_per_worker_and_one_more_within_max_ack_pending() {
        assert_eq!(window_of(100, 1, 1000), 200);
        assert_eq!(window_of(100, 2, 1000), 300);
        assert_eq!(window_of(100, 20, 1000), 1000);
        // Never less than a batch, even with a small max_ack_pending.
        assert_eq!(window_of(500, 2, 100), 500);
        assert_eq!(window_of(0, 0, 0), 1);
    }

    /// A pull request brings no more bytes than the byte window, yet
    /// always room for the largest message the server accepts; requests
    /// cut by bytes end (the server's 409) and the next one goes on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_are_cut_by_bytes_and_a_largest_message_still_fits() -> anyhow::Result<()> {
        use async_nats::jetstream::{consumer, stream};
        let nats = jetplug_tests::NatsServer::start().await?;
        let client = async_nats::connect(nats.url()).await?;
        let js = jetstream::new(client.clone());
        js.create_stream(stream::Config {
            name: "BYTES".into(),
            subjects: vec!["bytes.>".into()],
            ..Default::default()
        })
        .await?
        .create_consumer(consumer::pull::Config {
            durable_name: Some("c".into()),
            ..Default::default()
        })
        .await?;
        let size = 256 << 10;
        for _ in 0..20 {
            js.publish("bytes.x", vec![b'x'; size].into())
                .await?
                .await?;
        }
        let largest = client.server_info().max_payload - 1024;
        js.publish("bytes.x", vec![b'y'; largest].into())
            .await?
            .await?;

        let opts = PullOptions {
            expires: Duration::from_secs(2),
            heartbeat: Duration::from_secs(1),
            group: None,
            // Below the floor: the window becomes max_payload + margin.
            window_bytes: 1 << 20,
        };
        let leaders = crate::jetstream::leaders::Leaders::default();
        let stop = tokio_util::sync::CancellationToken::new();
        let inboxes = Inboxes::start(client.clone(), stop.clone()).await;
        let keepalive = Arc::new(KeepAlive::default());
        let mut p = Puller::start(
            &js, &client, "BYTES", "c", opts, keepalive, None, true, &leaders, &inboxes,
        )
        .await?;
        let window = client.server_info().max_payload + MESSAGE_MARGIN;
        let (mut per_request, mut sizes) = (Vec::new(), Vec::new());
        while sizes.len() < 21 && per_request.len() < 30 {
            assert!(p.room_for_bytes(), "nothing open or buffered, yet no room");
            p.request(100).await?;
            let mut got = 0;
            loop {
                let pull = p.collect(100, usize::MAX, Duration::from_millis(100));
                let (pulled, error) = tokio::time::timeout(Duration::from_secs(10), pull).await?;
                assert_eq!(error, None);
                got += pulled.messages.len();
                sizes.extend(pulled.messages.iter().map(|m| m.payload.len()));
                if p.outstanding() == 0 && p.buffered() == 0 {
                    break;
                }
            }
            per_request.push(got);
        }
        assert_eq!(sizes.len(), 21, "every message arrived: {per_request:?}");
        assert_eq!(
            sizes.last(),
            Some(&largest),
            "the largest message came last"
        );
        let most = window / size;
        assert!(
            per_request[0] >= 1 && per_request[0] <= most,
            "the first request brought {} messages of {size} B; the window holds {most}",
            per_request[0]
        );
        assert!(per_request.len() >= 20 / most, "requests: {per_request:?}");

        // Requests fulfilled by their count (no word from the server)
        // give their bytes back: small messages keep pipelining.
        p.request(10).await?;
        p.request(10).await?;
        assert!(
            !p.room_for_bytes(),
            "two open requests fill the byte window"
        );
        for _ in 0..20 {
            js.publish("bytes.x", vec![b's'; 100].into()).await?.await?;
        }
        let mut small = 0;
        while small < 20 {
            let pull = p.collect(100, usize::MAX, Duration::from_millis(100));
            let (pulled, error) = tokio::time::timeout(Duration::from_secs(10), pull).await?;
            assert_eq!(error, None);
            small += pulled.messages.len();
        }
        assert_eq!(p.outstanding(), 0);
        assert_eq!(p.outstanding_bytes(), 0, "fulfilled requests hold no bytes");
        assert!(p.room_for_bytes());
        Ok(())
    }
}
