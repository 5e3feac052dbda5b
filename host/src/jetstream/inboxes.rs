//! Replies to pull requests, heard through one subscription for the whole
//! host and handed to the puller whose request they answer.
//!
//! A subscription per puller cost every pipeline a channel block in the
//! client (some 6 KiB, allocated with the channel, idle or not) and an
//! entry in the server's interest table. Here one wildcard subscription
//! serves every inbox (`PREFIX.ID`), and a router task queues each reply in
//! its puller's mailbox, whose queue holds memory only while replies wait
//! in it. A status (end of a request, heartbeat) comes on the inbox's own
//! subject; a message keeps its stream subject, so it goes by its ack
//! subject's stream and consumer to the newest inbox of that consumer — a
//! message an earlier binding's request brings is taken in by the next
//! binding rather than lost until its `ack_wait` ends.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_nats::{Message, Subject};
use futures::{FutureExt as _, StreamExt as _};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Room a drained mailbox may keep (messages); a burst's is given back.
const KEEP: usize = 16;

/// The host's pull inboxes.
#[derive(Debug)]
pub struct Inboxes {
    prefix: String,
    next: AtomicU64,
    boxes: Mutex<Boxes>,
    /// The subscription ended (the client closed, or the host stops).
    ended: AtomicBool,
}

/// Open mailboxes, by inbox and by consumer (`STREAM.CONSUMER`: the
/// newest inbox of that consumer).
#[derive(Debug, Default)]
struct Boxes {
    by_id: HashMap<u64, Weak<Mailbox>>,
    by_consumer: HashMap<String, (u64, Weak<Mailbox>)>,
}

#[derive(Debug, Default)]
struct Mailbox {
    queue: Mutex<VecDeque<Message>>,
    notify: Notify,
    ended: AtomicBool,
}

impl Mailbox {
    fn end(&self) {
        self.ended.store(true, Ordering::Release);
        self.notify.notify_one();
    }
}

/// One inbox: its replies, in order, until it is dropped.
#[derive(Debug)]
pub struct Inbox {
    subject: Subject,
    id: u64,
    /// `STREAM.CONSUMER`.
    consumer: String,
    mailbox: Arc<Mailbox>,
    owner: Weak<Inboxes>,
}

impl Inboxes {
    /// Subscribes `client` to the host's inboxes and routes their replies
    /// until `stop`. Waits until the subscription is made, so that no
    /// request is sent before its replies can be heard.
    pub async fn start(client: async_nats::Client, stop: CancellationToken) -> Arc<Self> {
        let inboxes = Arc::new(Inboxes {
            prefix: client.new_inbox(),
            next: AtomicU64::new(0),
            boxes: Mutex::new(Boxes::default()),
            ended: AtomicBool::new(false),
        });
        let subject = format!("{}.*", inboxes.prefix);
        let sub = loop {
            match client.subscribe(subject.clone()).await {
                Ok(s) => break Some(s),
                Err(e) => {
                    tracing::warn!(%subject, error = %e, "cannot subscribe to the pull inboxes; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => break None,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        match sub {
            Some(sub) => {
                tokio::spawn(inboxes.clone().route(sub, stop));
            }
            None => inboxes.ended.store(true, Ordering::Release),
        }
        inboxes
    }

    /// A new inbox for `consumer` of `stream` (a fresh subject: never
    /// one an earlier inbox had); that consumer's messages come to it.
    pub fn open(self: &Arc<Self>, stream: &str, consumer: &str) -> Inbox {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let mailbox = Arc::new(Mailbox::default());
        let key = format!("{stream}.{consumer}");
        if self.ended.load(Ordering::Acquire) {
            mailbox.end();
        } else {
            let mut boxes = self.lock();
            boxes.by_id.insert(id, Arc::downgrade(&mailbox));
            boxes
                .by_consumer
                .insert(key.clone(), (id, Arc::downgrade(&mailbox)));
        }
        Inbox {
            subject: Subject::from(format!("{}.{id}", self.prefix)),
            id,
            consumer: key,
            mailbox,
            owner: Arc::downgrade(self),
        }
    }

    /// Inboxes open now.
    pub fn open_count(&self) -> usize {
        self.lock().by_id.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Boxes> {
        self.boxes.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn route(self: Arc<Self>, mut sub: async_nats::Subscriber, stop: CancellationToken) {
        loop {
            let first = tokio::select! {
                _ = stop.cancelled() => break,
                m = sub.next() => match m { Some(m) => m, None => break },
            };
            self.deliver(first);
            // What else has arrived, without waking again for each.
            while let Some(Some(m)) = sub.next().now_or_never() {
                self.deliver(m);
            }
        }
        self.ended.store(true, Ordering::Release);
        for mailbox in self.lock().by_id.values().filter_map(Weak::upgrade) {
            mailbox.end();
        }
    }

    /// Queues `m` in its mailbox: a message by its consumer, a status by
    /// its inbox. A status for an inbox no longer open is dropped (as a
    /// closed subscription's would be), and so is a message of a consumer
    /// no puller binds any more (it comes back after its `ack_wait`).
    fn deliver(&self, m: Message) {
        let mailbox = {
            let boxes = self.lock();
            match m.reply.as_deref().and_then(consumer_of) {
                Some(key) => boxes.by_consumer.get(key).map(|(_, w)| w.clone()),
                None => m
                    .subject
                    .rsplit('.')
                    .next()
                    .and_then(|id| id.parse::<u64>().ok())
                    .and_then(|id| boxes.by_id.get(&id).cloned()),
            }
        };
        let Some(mailbox) = mailbox.as_ref().and_then(Weak::upgrade) else {
            return;
        };
        mailbox
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(m);
        mailbox.notify.notify_one();
    }
}

impl Inbox {
    /// The subject replies are sent to.
    pub fn subject(&self) -> &Subject {
        &self.subject
    }

    /// The next reply, waiting for it; `None` once the host's subscription
    /// ended. Cancel-safe (a reply is never taken by a dropped call).
    pub async fn next(&self) -> Option<Message> {
        loop {
            if let Some(m) = self.try_next() {
                return Some(m);
            }
            if self.mailbox.ended.load(Ordering::Acquire) {
                return None;
            }
            // A reply queued since the look above left a permit: no wait.
            self.mailbox.notify.notified().await;
        }
    }

    /// The next reply if one has arrived.
    pub fn try_next(&self) -> Option<Message> {
        let mut queue = self.mailbox.queue.lock().unwrap_or_else(|e| e.into_inner());
        let m = queue.pop_front();
        if queue.is_empty() && queue.capacity() > KEEP {
            *queue = VecDeque::new();
        }
        m
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        if let Some(owner) = self.owner.upgrade() {
            let mut boxes = owner.lock();
            boxes.by_id.remove(&self.id);
            // Unless a newer binding of the consumer took its place.
            if boxes
                .by_consumer
                .get(&self.consumer)
                .is_some_and(|(id, _)| *id == self.id)
            {
                boxes.by_consumer.remove(&self.consumer);
            }
        }
    }
}

/// `STREAM.CONSUMER` of a JetStream delivery's ack subject
/// (`$JS.ACK.STREAM.CONSUMER.…`, 9 tokens, or with a domain and account
/// `$JS.ACK.DOMAIN.ACCOUNT.STREAM.CONSUMER.…`, 12 or more).
fn consumer_of(reply: &str) -> Option<&str> {
    let rest = reply.strip_prefix("$JS.ACK.")?;
    // One pass: where the first tokens of `rest` end, and how many it has.
    let mut ends = [0usize; 4];
    let mut tokens = 1;
    for (i, b) in rest.bytes().enumerate() {
        if b == b'.' {
            if let Some(end) = ends.get_mut(tokens - 1) {
                *end = i;
            }
            tokens += 1;
        }
    }
    let start = match tokens + 2 {
        9 => 0,
        n if n >= 12 => ends[1] + 1,
        _ => return None,
    };
    let end = if start == 0 { ends[1] } else { ends[3] };
    Some(&rest[start..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replies reach their own inbox in order; a closed inbox's replies
    /// are dropped and its number never comes back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replies_reach_their_inbox_in_order() -> anyhow::Result<()> {
        let nats = jetplug_tests::NatsServer::start().await?;
        let client = async_nats::connect(nats.url()).await?;
        let stop = CancellationToken::new();
        let inboxes = Inboxes::start(client.clone(), stop.clone()).await;
        let (a, b) = (inboxes.open("S", "a"), inboxes.open("S", "b"));
        assert_ne!(a.subject(), b.subject());
        for i in 0..100u32 {
            client
                .publish(a.subject().clone(), i.to_string().into())
                .await?;
            client
                .publish(b.subject().clone(), (1000 + i).to_string().into())
                .await?;
        }
        client.flush().await?;
        for (inbox, base) in [(&a, 0u32), (&b, 1000)] {
            for i in 0..100u32 {
                let m = tokio::time::timeout(Duration::from_secs(5), inbox.next())
                    .await?
                    .context("a reply")?;
                assert_eq!(m.payload, (base + i).to_string().as_bytes());
            }
        }
        assert!(a.try_next().is_none());
        let old = a.subject().clone();
        drop(a);
        assert_eq!(inboxes.open_count(), 1);
        let c = inboxes.open("S", "c");
        assert_ne!(c.subject(), &old, "a closed inbox's subject is not reused");
        client.publish(old, "late".into()).await?;
        client.publish(c.subject().clone(), "c".into()).await?;
        let m = tokio::time::timeout(Duration::from_secs(5), c.next())
            .await?
            .context("a reply")?;
        assert_eq!(m.payload, "c".as_bytes(), "the late reply went nowhere");

        // A delivery goes by its consumer to that consumer's newest inbox,
        // whichever inbox its request named: a request of a binding since
        // closed brings its message to the binding after it.
        let js = async_nats::jetstream::new(client.clone());
        js.create_stream(async_nats::jetstream::stream::Config {
            name: "S".into(),
            subjects: vec!["s.>".into()],
            ..Default::default()
        })
        .await?
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("c".into()),
            ..Default::default()
        })
        .await?;
        let older = inboxes.open("S", "c");
        client
            .publish_with_reply(
                "$JS.API.CONSUMER.MSG.NEXT.S.c",
                older.subject().clone(),
                r#"{"batch":1,"expires":10000000000}"#.into(),
            )
            .await?;
        client.flush().await?;
        let newer = inboxes.open("S", "c");
        drop(older);
        js.publish("s.x", "delivered".into()).await?.await?;
        let m = tokio::time::timeout(Duration::from_secs(5), newer.next())
            .await?
            .context("a delivery")?;
        assert_eq!(m.payload, "delivered".as_bytes());

        stop.cancel();
        let ended = tokio::time::timeout(Duration::from_secs(5), b.next()).await?;
        assert!(ended.is_none(), "a stopped host's inboxes end");
        Ok(())
    }

    #[test]
    fn a_delivery_names_its_consumer() {
        assert_eq!(
            consumer_of("$JS.ACK.ORDERS.jetplug-q1-ORDERS.1.42.7.1700000000000000000.3"),
            Some("ORDERS.jetplug-q1-ORDERS")
        );
        assert_eq!(
            consumer_of("$JS.ACK.hub.ACCHASH.ORDERS.c.1.42.7.1700000000000000000.3.tok"),
            Some("ORDERS.c")
        );
        assert_eq!(consumer_of("_INBOX.abc.7"), None);
        assert_eq!(consumer_of("$JS.ACK.a.b.c.d.e.f.g.h"), None, "10 tokens");
        assert_eq!(consumer_of("$JS.ACK.a.b.c.d.e.f.g.h.i"), None, "11 tokens");
        assert_eq!(consumer_of("$JS.ACK.short"), None);
    }

    use anyhow::Context as _;
}
