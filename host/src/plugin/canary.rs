//! A canary: a candidate version of a plugin that handles a share of the
//! messages with real effects, beside the live version, while both are
//! measured.
//!
//! Why in the plugin layer: the slot is what workers read before each
//! batch, so the canary rides on it — a worker splits its batch by each
//! message's key (the pipeline's ordering key, else its origin sequence)
//! and runs each part on one version. The split is a stable hash, the same
//! on every host and for every delivery of a message, so a key's messages
//! stay on one version (in order) and no message is handled by both. The
//! tallies here are what the rollout decides on (promote or roll back).

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::Plugin;

/// Handling times kept per version for the p99 (the newest ones).
const TIMES_KEPT: usize = 4096;

/// A candidate version and its share of the messages.
#[derive(Debug)]
pub struct Canary {
    /// The rollout this canary belongs to (the same on every host).
    pub id: String,
    /// The candidate version.
    pub plugin: Arc<Plugin>,
    /// Share of the keys the candidate gets, in percent (1–99).
    pub percent: u32,
    /// What the live version did meanwhile.
    pub live: Tally,
    /// What the candidate did.
    pub candidate: Tally,
}

impl Canary {
    pub fn new(id: impl Into<String>, plugin: Arc<Plugin>, percent: u32) -> Self {
        Canary {
            id: id.into(),
            plugin,
            percent: percent.clamp(1, 99),
            live: Tally::default(),
            candidate: Tally::default(),
        }
    }

    /// Whether a message with this routing key goes to the candidate.
    pub fn takes(&self, key: &[u8]) -> bool {
        split(&self.id, self.percent, key)
    }

    /// The tally of the version `plugin` is (the candidate or the live one).
    pub fn tally_of(&self, plugin: &Arc<Plugin>) -> &Tally {
        if Arc::ptr_eq(plugin, &self.plugin) {
            &self.candidate
        } else {
            &self.live
        }
    }
}

/// Whether `key` falls in the `percent` share of rollout `id`.
fn split(id: &str, percent: u32, key: &[u8]) -> bool {
    // FNV-1a: stable across hosts and builds (std's hasher is not); the
    // rollout's id salts it, so a new rollout picks other keys.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.iter().chain(id.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h % 100 < u64::from(percent)
}

/// What one version did with its messages.
#[derive(Debug, Default)]
pub struct Tally {
    messages: AtomicU64,
    acked: AtomicU64,
    retried: AtomicU64,
    terminated: AtomicU64,
    /// Messages of batches that trapped, timed out or ran out of memory.
    failed: AtomicU64,
    /// Handling time per message (a batch's call time over its size), µs.
    times: Mutex<Vec<u32>>,
    next: AtomicU64,
}

/// What a decision was, for a [`Tally`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    Ack,
    Retry,
    Term,
}

impl Tally {
    /// Records one call over `n` messages that took `took`: its decisions,
    /// or `None` when the call failed.
    pub fn record(&self, n: usize, took: Duration, decisions: Option<&[Counted]>) {
        if n == 0 {
            return;
        }
        self.messages.fetch_add(n as u64, Ordering::Relaxed);
        match decisions {
            None => {
                self.failed.fetch_add(n as u64, Ordering::Relaxed);
            }
            Some(ds) => {
                for d in ds {
                    let counter = match d {
                        Counted::Ack => &self.acked,
                        Counted::Retry => &self.retried,
                        Counted::Term => &self.terminated,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let per = u32::try_from(took.as_micros() / n as u128).unwrap_or(u32::MAX);
        let slot = self.next.fetch_add(1, Ordering::Relaxed) as usize % TIMES_KEPT;
        let mut times = self.times.lock().unwrap_or_else(|e| e.into_inner());
        if times.len() < TIMES_KEPT {
            times.push(per);
        } else {
            times[slot] = per;
        }
    }

    /// The figures so far.
    pub fn read(&self) -> Figures {
        let messages = self.messages.load(Ordering::Relaxed);
        let rate = |c: &AtomicU64| {
            if messages == 0 {
                0.0
            } else {
                c.load(Ordering::Relaxed) as f64 / messages as f64
            }
        };
        let mut times = self.times.lock().unwrap_or_else(|e| e.into_inner()).clone();
        times.sort_unstable();
        let p99_us = if times.is_empty() {
            0
        } else {
            times[((times.len() - 1) * 99) / 100]
        };
        Figures {
            messages,
            calls: self.next.load(Ordering::Relaxed),
            ack_rate: rate(&self.acked),
            retry_rate: rate(&self.retried),
            term_rate: rate(&self.terminated),
            failure_rate: rate(&self.failed),
            p99_us,
        }
    }
}

/// A version's figures during a canary.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Figures {
    pub messages: u64,
    /// Calls timed for the p99 (a batch is one call).
    #[serde(default)]
    pub calls: u64,
    pub ack_rate: f64,
    pub retry_rate: f64,
    pub term_rate: f64,
    /// Trapped, timed out or out of memory.
    pub failure_rate: f64,
    /// p99 handling time per message (µs).
    pub p99_us: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_split_is_stable_and_near_its_share() {
        let key = |k: u64| k.to_be_bytes();
        let taken = (0..10_000u64).filter(|k| split("r1", 20, &key(*k))).count();
        assert!((1_700..2_300).contains(&taken), "{taken} of 10000 at 20 %");
        assert!(
            (0..1000u64).any(|k| split("r1", 20, &key(k)) != split("r2", 20, &key(k))),
            "another rollout splits differently"
        );
        assert!((0..1000u64).all(|k| !split("r1", 0, &key(k))));
    }

    #[test]
    fn tallies_give_rates_and_a_p99() {
        let t = Tally::default();
        t.record(
            4,
            Duration::from_millis(4),
            Some(&[Counted::Ack, Counted::Ack, Counted::Term, Counted::Retry]),
        );
        t.record(2, Duration::from_millis(20), None);
        let f = t.read();
        assert_eq!(f.messages, 6);
        assert!((f.term_rate - 1.0 / 6.0).abs() < 1e-9);
        assert!((f.failure_rate - 2.0 / 6.0).abs() < 1e-9);
        assert_eq!(f.p99_us, 1000, "the p99 of [1000, 10000] (low index)");
        assert_eq!(Tally::default().read(), Figures::default());
    }
}
