//! Pulling from a durable consumer with explicit pull requests, so the
//! pipeline decides when messages come: it asks for the next batch when
//! what is owed and waiting falls to half a batch (so messages keep
//! flowing), never while the breaker is open, and every message that
//! arrives is kept alive (+WPI) from that moment on — nothing sits unseen
//! in a client buffer while its `ack_wait` runs out.
//!
//! A reader task owns the inbox subscription: it tracks each burst of
//! arrivals with the keep-alive, keeps the request accounting (messages
//! still owed, the pinned-client id of an `exclusive` pipeline) and turns
//! the server's status messages into events. A request the server forgot
//! (no message or idle heartbeat for three heartbeats) counts as ended.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use async_nats::{Client, StatusCode, Subject};
use futures::{FutureExt, StreamExt};
use tokio::sync::mpsc;

use super::keepalive::{Guard, KeepAlive};

/// How requests are made.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// How long the server keeps a request open.
    pub expires: Duration,
    /// Idle heartbeat asked of the server while a request is open.
    pub heartbeat: Duration,
    /// Priority group of a pinned-client consumer (`exclusive`).
    pub group: Option<String>,
}

enum Event {
    Chunk(Vec<jetstream::Message>, Guard),
    /// The open request ended (expired, completed by the server, forgotten).
    Ended,
    /// The consumer cannot be pulled from as it is (deleted, no responders, ...).
    Failed(String),
}

#[derive(Debug, Default)]
struct Shared {
    /// Messages the open requests may still deliver.
    outstanding: AtomicUsize,
    /// Messages received by the reader and not yet collected.
    unclaimed: AtomicUsize,
    /// The pin id given to this client (exclusive pipelines).
    pin: std::sync::Mutex<Option<String>>,
}

/// Messages pulled, with what keeps them alive.
pub struct Pulled {
    pub messages: Vec<jetstream::Message>,
    pub guards: Vec<Guard>,
}

pub struct Puller {
    client: Client,
    subject: String,
    inbox: Subject,
    opts: PullOptions,
    shared: Arc<Shared>,
    events: mpsc::UnboundedReceiver<Event>,
    buffered: VecDeque<(Vec<jetstream::Message>, Guard)>,
    keepalive: Arc<KeepAlive>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Puller {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

#[derive(serde::Serialize)]
struct Request<'a> {
    batch: usize,
    #[serde(with = "nanos")]
    expires: Duration,
    #[serde(with = "nanos")]
    idle_heartbeat: Duration,
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
    /// Subscribes an inbox for `consumer` and starts its reader.
    pub async fn start(
        js: &jetstream::Context,
        client: &Client,
        stream: &str,
        consumer: &str,
        opts: PullOptions,
        keepalive: Arc<KeepAlive>,
    ) -> Result<Self, String> {
        let inbox = Subject::from(client.new_inbox());
        let sub = client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| format!("subscribing the pull inbox: {e}"))?;
        let shared = Arc::new(Shared::default());
        let (tx, events) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read(
            sub,
            js.clone(),
            shared.clone(),
            keepalive.clone(),
            opts.heartbeat,
            tx,
        ));
        Ok(Puller {
            client: client.clone(),
            subject: format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"),
            inbox,
            opts,
            shared,
            events,
            buffered: VecDeque::new(),
            keepalive,
            reader,
        })
    }

    /// Messages the open request may still deliver (0: none open).
    pub fn outstanding(&self) -> usize {
        self.shared.outstanding.load(Ordering::Acquire)
    }

    /// Messages received and not yet collected.
    pub fn buffered(&self) -> usize {
        self.shared.unclaimed.load(Ordering::Acquire)
    }

    fn local(&self) -> usize {
        self.buffered.iter().map(|(m, _)| m.len()).sum()
    }

    /// Asks the server for up to `n` messages.
    pub async fn request(&mut self, n: usize) -> Result<(), String> {
        let pin = self
            .shared
            .pin
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let body = serde_json::to_vec(&Request {
            batch: n,
            expires: self.opts.expires,
            idle_heartbeat: self.opts.heartbeat,
            group: self.opts.group.as_deref(),
            id: pin,
        })
        .map_err(|e| e.to_string())?;
        self.shared.outstanding.fetch_add(n, Ordering::AcqRel);
        self.client
            .publish_with_reply(self.subject.clone(), self.inbox.clone(), body.into())
            .await
            .map_err(|e| {
                self.shared.outstanding.store(0, Ordering::Release);
                format!("sending a pull request: {e}")
            })
    }

    /// Up to `size` messages: waits for the first, then up to `max_wait`
    /// for more while the open request may bring them. Empty when the open
    /// request ended without any; the error ends pulling on this binding.
    pub async fn collect(&mut self, size: usize, max_wait: Duration) -> (Pulled, Option<String>) {
        let mut error = None;
        if self.buffered.is_empty() {
            match self.events.recv().await {
                Some(Event::Chunk(m, g)) => self.buffered.push_back((m, g)),
                Some(Event::Ended) => {}
                Some(Event::Failed(e)) => error = Some(e),
                None => error = Some("the pull reader stopped".into()),
            }
        }
        let deadline = tokio::time::Instant::now() + max_wait;
        while error.is_none() && !self.buffered.is_empty() && self.local() < size {
            // Only what has already arrived once the open request is done.
            let next = if self.outstanding() == 0 {
                match self.events.recv().now_or_never() {
                    Some(e) => e,
                    None => break,
                }
            } else {
                match tokio::time::timeout_at(deadline, self.events.recv()).await {
                    Ok(e) => e,
                    Err(_) => break,
                }
            };
            match next {
                Some(Event::Chunk(m, g)) => self.buffered.push_back((m, g)),
                Some(Event::Ended) => {}
                Some(Event::Failed(e)) => error = Some(e),
                None => error = Some("the pull reader stopped".into()),
            }
        }
        (self.take(size), error)
    }

    fn take(&mut self, size: usize) -> Pulled {
        let mut out = Pulled {
            messages: Vec::with_capacity(size.min(self.local())),
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
        let _ = self
            .shared
            .unclaimed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_sub(out.messages.len()))
            });
        out
    }

    /// Hands back what was received and not collected (stopping): a NAK with
    /// a short delay, so this or another host takes it soon.
    pub async fn release(mut self) {
        while let Ok(Event::Chunk(m, g)) = self.events.try_recv() {
            self.buffered.push_back((m, g));
        }
        for (msgs, _guard) in self.buffered.drain(..) {
            for m in msgs {
                let _ = m
                    .ack_with(AckKind::Nak(Some(Duration::from_millis(100))))
                    .await;
            }
        }
    }
}

/// The reader task: see the module docs.
async fn read(
    mut sub: async_nats::Subscriber,
    js: jetstream::Context,
    shared: Arc<Shared>,
    keepalive: Arc<KeepAlive>,
    heartbeat: Duration,
    tx: mpsc::UnboundedSender<Event>,
) {
    let mut quiet = 0u32;
    loop {
        let first = match tokio::time::timeout(heartbeat, sub.next()).await {
            Ok(Some(m)) => m,
            Ok(None) => {
                let _ = tx.send(Event::Failed("the pull subscription closed".into()));
                return;
            }
            Err(_) => {
                // Three heartbeats without a word: the server forgot the request.
                quiet += 1;
                if quiet >= 3 && shared.outstanding.swap(0, Ordering::AcqRel) > 0 {
                    let _ = tx.send(Event::Ended);
                }
                continue;
            }
        };
        quiet = 0;
        let mut msgs = Vec::new();
        let mut end = None;
        let mut next = Some(first);
        while let Some(m) = next.take() {
            match m.status.unwrap_or(StatusCode::OK) {
                StatusCode::OK => {
                    if let Some(id) = m.headers.as_ref().and_then(|h| h.get_last("Nats-Pin-Id")) {
                        *shared.pin.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some(id.as_str().to_owned());
                    }
                    let _ =
                        shared
                            .outstanding
                            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                                Some(n.saturating_sub(1))
                            });
                    msgs.push(jetstream::Message {
                        message: m,
                        context: js.clone(),
                    });
                }
                StatusCode::IDLE_HEARTBEAT => {}
                status => {
                    // The request's unmet part (all of it if not said).
                    let unmet = m
                        .headers
                        .as_ref()
                        .and_then(|h| h.get("Nats-Pending-Messages"))
                        .and_then(|v| v.as_str().parse::<usize>().ok())
                        .unwrap_or(usize::MAX);
                    let _ =
                        shared
                            .outstanding
                            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                                Some(n.saturating_sub(unmet))
                            });
                    if status == StatusCode::PIN_ID_MISMATCH {
                        *shared.pin.lock().unwrap_or_else(|e| e.into_inner()) = None;
                    }
                    end = Some(ended(status, m.description.as_deref()));
                    break;
                }
            }
            // Everything already arrived goes in the same chunk.
            if msgs.len() < 10_000 {
                next = sub.next().now_or_never().flatten();
            }
        }
        if !msgs.is_empty() {
            let guard = keepalive.track(&msgs);
            shared.unclaimed.fetch_add(msgs.len(), Ordering::AcqRel);
            if tx.send(Event::Chunk(msgs, guard)).is_err() {
                return;
            }
        }
        if let Some(e) = end
            && tx.send(e).is_err()
        {
            return;
        }
    }
}

/// What a status message on the inbox means for the open request.
fn ended(status: StatusCode, description: Option<&str>) -> Event {
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
    if fatal {
        Event::Failed(format!("pull request answered {status}: {d}"))
    } else {
        Event::Ended
    }
}
