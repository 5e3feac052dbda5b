//! Consumers' `LEADER_ELECTED` advisories, heard through one subscription
//! for the whole host and handed to whoever watches that consumer.
//!
//! A new consumer leader knows nothing of the pull requests made to the
//! old one, so a puller asks again when it hears of one. A subscription
//! per consumer cost each pipeline a subscription (a channel block of
//! some 6 KiB in the client, and an entry in the server's interest
//! table); one wildcard subscription costs the same for ten thousand.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const SUBJECT: &str = "$JS.EVENT.ADVISORY.CONSUMER.LEADER_ELECTED";

/// Who is told of a new leader, by `STREAM.CONSUMER`.
#[derive(Debug, Default)]
pub struct Leaders {
    watched: Mutex<HashMap<String, Weak<Notify>>>,
}

impl Leaders {
    /// Starts listening on `client` until `stop`.
    pub fn start(client: async_nats::Client, stop: CancellationToken) -> Arc<Self> {
        let leaders = Arc::new(Leaders::default());
        tokio::spawn(leaders.clone().listen(client, stop));
        leaders
    }

    /// A notice that fires (once per election, kept if nobody waits) when
    /// `consumer` of `stream` gets a new leader; watched while it is held.
    pub fn watch(&self, stream: &str, consumer: &str) -> Arc<Notify> {
        let notify = Arc::new(Notify::new());
        let mut watched = self.lock();
        watched.retain(|_, w| w.strong_count() > 0);
        watched.insert(format!("{stream}.{consumer}"), Arc::downgrade(&notify));
        notify
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Weak<Notify>>> {
        self.watched.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn listen(self: Arc<Self>, client: async_nats::Client, stop: CancellationToken) {
        let subject = format!("{SUBJECT}.>");
        let mut sub = loop {
            match client.subscribe(subject.clone()).await {
                Ok(s) => break s,
                Err(e) => {
                    tracing::warn!(%subject, error = %e, "cannot subscribe to leader advisories; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        loop {
            let msg = tokio::select! {
                _ = stop.cancelled() => return,
                m = sub.next() => match m { Some(m) => m, None => return },
            };
            let Some(key) = msg
                .subject
                .strip_prefix(SUBJECT)
                .and_then(|k| k.strip_prefix('.'))
            else {
                continue;
            };
            let notify = self.lock().get(key).and_then(Weak::upgrade);
            if let Some(n) = notify {
                n.notify_one();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_watch_is_forgotten() {
        let l = Leaders::default();
        let a = l.watch("S", "a");
        drop(l.watch("S", "b"));
        let _c = l.watch("S", "c");
        let keys: Vec<String> = l.lock().keys().cloned().collect();
        assert!(keys.contains(&"S.a".to_owned()) && keys.contains(&"S.c".to_owned()));
        assert!(!keys.contains(&"S.b".to_owned()), "{keys:?}");
        drop(a);
    }
}
