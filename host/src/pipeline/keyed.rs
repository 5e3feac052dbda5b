//! Ordered pipelines: messages with one key are handled in order, one batch
//! at a time, while other keys run in parallel on the other workers.
//!
//! Pulled messages wait in a queue per key. A worker takes a batch from the
//! keys that are not running (oldest first) and marks them running until it
//! has settled the batch, so a key's next messages never overtake it. A
//! slow key therefore holds up only itself: its messages wait (kept alive)
//! while the other keys flow. The queue is bounded; when it is full the
//! puller asks for nothing more.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};

use async_nats::jetstream;
use tokio::sync::Notify;

use super::keepalive::{Guard, KeepAlive};
use crate::config::Ordering;

/// A message's ordering key; messages without one are ordered with nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Key {
    Hash(u64),
    Free(u64),
}

/// The key `ordering` gives a message: None when the message has no such
/// key (missing header, token or JSON value, payload not JSON).
pub fn key_text(
    ordering: &Ordering,
    subject: &str,
    headers: Option<&async_nats::HeaderMap>,
    payload: &[u8],
) -> Option<String> {
    match ordering {
        Ordering::None => None,
        Ordering::Subject => Some(subject.to_owned()),
        Ordering::Token(n) => subject
            .split('.')
            .nth(n.saturating_sub(1))
            .map(str::to_owned),
        Ordering::Header(name) => headers
            .and_then(|h| h.get(name.as_str()))
            .map(|v| v.as_str().to_owned()),
        Ordering::Json(pointer) => {
            let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
            match v.pointer(pointer)? {
                serde_json::Value::String(s) => Some(s.clone()),
                other => Some(other.to_string()),
            }
        }
    }
}

/// A batch running this long marks its keys slow (batches of their own
/// until one of theirs runs faster).
const SOLO_AFTER: std::time::Duration = std::time::Duration::from_millis(100);
/// Slow keys remembered at most (then forgotten all at once).
const SOLO_MAX: usize = 100_000;

/// Messages taken for one batch, and what to give back after settling.
pub struct Taken {
    pub messages: Vec<jetstream::Message>,
    pub guards: Vec<Guard>,
    keys: Vec<Key>,
}

#[derive(Default)]
struct State {
    pending: HashMap<Key, VecDeque<(jetstream::Message, Guard)>>,
    /// Keys with pending messages and no batch running, oldest first.
    ready: VecDeque<Key>,
    running: HashSet<Key>,
    /// Keys whose last batch was slow: they run in batches of their own.
    solo: HashSet<Key>,
    /// Workers waiting for work.
    idle: usize,
    count: usize,
    free: u64,
    closed: bool,
}

pub struct KeyedQueue {
    ordering: Ordering,
    cap: usize,
    state: Mutex<State>,
    work: Notify,
    room: Notify,
    keepalive: Arc<KeepAlive>,
}

impl KeyedQueue {
    pub fn new(ordering: Ordering, cap: usize, keepalive: Arc<KeepAlive>) -> Self {
        KeyedQueue {
            ordering,
            cap: cap.max(1),
            state: Mutex::new(State::default()),
            work: Notify::new(),
            room: Notify::new(),
            keepalive,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until the queue has room.
    pub async fn room(&self) {
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.lock().count < self.cap {
                return;
            }
            notified.await;
        }
    }

    /// Queues pulled messages, each kept alive until it is settled.
    pub fn push(&self, messages: Vec<jetstream::Message>) {
        let keyed: Vec<(Option<u64>, jetstream::Message)> = messages
            .into_iter()
            .map(|m| {
                let key =
                    key_text(&self.ordering, &m.subject, m.headers.as_ref(), &m.payload).map(|k| {
                        let mut h = DefaultHasher::new();
                        k.hash(&mut h);
                        h.finish()
                    });
                (key, m)
            })
            .collect();
        let mut s = self.lock();
        for (key, m) in keyed {
            let key = match key {
                Some(h) => Key::Hash(h),
                None => {
                    s.free += 1;
                    Key::Free(s.free)
                }
            };
            let guard = self.keepalive.track(std::slice::from_ref(&m));
            let queue = s.pending.entry(key).or_default();
            let was_empty = queue.is_empty();
            queue.push_back((m, guard));
            s.count += 1;
            if was_empty && !s.running.contains(&key) {
                s.ready.push_back(key);
            }
        }
        drop(s);
        self.work.notify_waiters();
    }

    /// Up to `max` messages from keys not running (their messages in
    /// order); None once closed and empty.
    pub async fn next(&self, max: usize) -> Option<Taken> {
        loop {
            let notified = self.work.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut s = self.lock();
                let mut taken = Taken {
                    messages: Vec::new(),
                    guards: Vec::new(),
                    keys: Vec::new(),
                };
                // Parallelism first: while other workers wait, a batch
                // takes one key and leaves the next keys to them; batches
                // mix keys only when every worker is busy. A key that was
                // slow never shares a batch (its batch mates would wait).
                let mix = s.idle == 0;
                while taken.messages.len() < max.max(1) {
                    let Some(&key) = s.ready.front() else { break };
                    let alone = s.solo.contains(&key);
                    if !taken.keys.is_empty() && (!mix || alone) {
                        break;
                    }
                    s.ready.pop_front();
                    let room = max.max(1) - taken.messages.len();
                    let Some(queue) = s.pending.get_mut(&key) else {
                        continue;
                    };
                    let n = room.min(queue.len());
                    for (m, g) in queue.drain(..n) {
                        taken.messages.push(m);
                        taken.guards.push(g);
                    }
                    if queue.is_empty() {
                        s.pending.remove(&key);
                    }
                    s.running.insert(key);
                    taken.keys.push(key);
                    if alone {
                        break;
                    }
                }
                if !taken.messages.is_empty() {
                    s.count -= taken.messages.len();
                    drop(s);
                    self.room.notify_waiters();
                    // Other workers may find more ready keys.
                    self.work.notify_one();
                    return Some(taken);
                }
                if s.closed && s.count == 0 {
                    return None;
                }
                s.idle += 1;
            }
            notified.await;
            self.lock().idle -= 1;
        }
    }

    /// The batch of `taken` is settled (it ran for `took`): its keys may
    /// run again.
    pub fn release(&self, taken: Taken, took: std::time::Duration) {
        let mut s = self.lock();
        let slow = took >= SOLO_AFTER;
        if s.solo.len() > SOLO_MAX {
            s.solo.clear();
        }
        for key in taken.keys {
            s.running.remove(&key);
            if slow {
                s.solo.insert(key);
            } else {
                s.solo.remove(&key);
            }
            if s.pending.get(&key).is_some_and(|q| !q.is_empty()) {
                s.ready.push_back(key);
            }
        }
        drop(s);
        self.work.notify_waiters();
    }

    /// No more messages will come: workers finish what is queued, then stop.
    pub fn close(&self) {
        self.lock().closed = true;
        self.work.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_from_the_subject_a_header_or_the_payload() {
        let mut h = async_nats::HeaderMap::new();
        h.insert("X-User", "u-7");
        let key =
            |o: Ordering, payload: &[u8]| key_text(&o, "learning.quiz.answered", Some(&h), payload);
        assert_eq!(key(Ordering::None, b""), None);
        assert_eq!(
            key(Ordering::Subject, b"").as_deref(),
            Some("learning.quiz.answered")
        );
        assert_eq!(key(Ordering::Token(2), b"").as_deref(), Some("quiz"));
        assert_eq!(key(Ordering::Token(4), b""), None, "no 4th token");
        assert_eq!(
            key(Ordering::Header("X-User".into()), b"").as_deref(),
            Some("u-7")
        );
        assert_eq!(key(Ordering::Header("X-Other".into()), b""), None);
        let json = br#"{"user":{"id":"s-1","n":42}}"#;
        assert_eq!(
            key(Ordering::Json("/user/id".into()), json).as_deref(),
            Some("s-1")
        );
        assert_eq!(
            key(Ordering::Json("/user/n".into()), json).as_deref(),
            Some("42")
        );
        assert_eq!(key(Ordering::Json("/missing".into()), json), None);
        assert_eq!(key(Ordering::Json("/user".into()), b"not json"), None);
    }
}
