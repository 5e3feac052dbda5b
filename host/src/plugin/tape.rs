//! The values the sandbox hands a plugin that are not capability calls:
//! wall and monotonic clock reads and random bytes — recorded while a call
//! is captured, and played back when it is replayed.
//!
//! Why a tape in the WASI context: a plugin's world is its imports, and the
//! clocks and randomness (which every guest language runtime reads: Python's
//! `time`, JavaScript's `Date`, Rust's `SystemTime`) are imports too. With
//! them on the tape, a replay is deterministic: the same capture replayed
//! twice sees the same time and the same "random" bytes.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wasmtime_wasi::{HostMonotonicClock, HostWallClock};

/// Values kept per captured call; past this a tape is marked incomplete.
const MAX_VALUES: usize = 100_000;
/// Random bytes kept per captured call.
const MAX_RANDOM: usize = 1 << 20;

/// What was handed out during one call.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Handed {
    /// Wall clock reads, nanoseconds since the Unix epoch.
    #[serde(default)]
    pub wall: Vec<u64>,
    /// Monotonic clock reads, nanoseconds.
    #[serde(default)]
    pub monotonic: Vec<u64>,
    /// Random bytes (secure and insecure generators, in the order drawn).
    #[serde(default, with = "b64")]
    pub random: Vec<u8>,
    /// Reads that were not kept (past the tape's size).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropped: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

mod b64 {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Default)]
enum Mode {
    /// The real clocks and generator.
    #[default]
    Live,
    /// Real values, written down.
    Record(Handed),
    /// Recorded values handed out again; past their end, the last clock
    /// value and a fixed sequence of bytes.
    Replay { tape: Handed, at: Cursor },
    /// No recording to play (a replay's `init`): a fixed time and fixed bytes.
    Fixed { wall: u64, at: Cursor },
}

#[derive(Debug, Default)]
struct Cursor {
    wall: usize,
    monotonic: usize,
    random: usize,
    /// Reads past the end of the recording.
    beyond: u64,
    /// Fallback bytes (deterministic).
    fill: Option<fastrand::Rng>,
}

impl Cursor {
    fn bytes(&mut self, recorded: &[u8], dst: &mut [u8]) {
        let have = recorded.len().saturating_sub(self.random).min(dst.len());
        dst[..have].copy_from_slice(&recorded[self.random..self.random + have]);
        self.random += have;
        if have < dst.len() {
            self.beyond += 1;
            let rng = self.fill.get_or_insert_with(|| fastrand::Rng::with_seed(0));
            rng.fill(&mut dst[have..]);
        }
    }
}

/// One instance's tape, shared by its clocks and generators.
#[derive(Debug, Clone, Default)]
pub struct Tape(Arc<Mutex<Mode>>);

impl Tape {
    fn mode(&self) -> std::sync::MutexGuard<'_, Mode> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts writing down what is handed out.
    pub fn record(&self) {
        *self.mode() = Mode::Record(Handed::default());
    }

    /// Plays `tape` back from its start.
    pub fn replay(&self, tape: Handed) {
        *self.mode() = Mode::Replay {
            tape,
            at: Cursor::default(),
        };
    }

    /// Hands out a fixed time (`wall`, ns since the epoch) and fixed bytes.
    pub fn fix(&self, wall: u64) {
        *self.mode() = Mode::Fixed {
            wall,
            at: Cursor::default(),
        };
    }

    /// What was recorded since [`record`](Self::record) (back to live), or
    /// for a replay the reads past the recording's end.
    pub fn stop(&self) -> Stopped {
        match std::mem::take(&mut *self.mode()) {
            Mode::Record(h) => Stopped::Recorded(h),
            Mode::Replay { at, .. } | Mode::Fixed { at, .. } => {
                Stopped::Replayed { beyond: at.beyond }
            }
            Mode::Live => Stopped::Live,
        }
    }

    fn wall(&self) -> Duration {
        let mut mode = self.mode();
        let ns = match &mut *mode {
            Mode::Live => return live_wall(),
            Mode::Record(h) => {
                let now = live_wall();
                keep(h, |h| &mut h.wall, now.as_nanos() as u64);
                return now;
            }
            Mode::Replay { tape, at } => next(&tape.wall, &mut at.wall, &mut at.beyond),
            Mode::Fixed { wall, .. } => *wall,
        };
        Duration::from_nanos(ns)
    }

    fn monotonic(&self, live: u64) -> u64 {
        let mut mode = self.mode();
        match &mut *mode {
            Mode::Live => live,
            Mode::Record(h) => {
                keep(h, |h| &mut h.monotonic, live);
                live
            }
            Mode::Replay { tape, at } => next(&tape.monotonic, &mut at.monotonic, &mut at.beyond),
            Mode::Fixed { at, .. } => {
                // Time moves on by a microsecond a read, the same every time.
                at.monotonic += 1;
                at.monotonic as u64 * 1_000
            }
        }
    }

    fn fill(&self, dst: &mut [u8], live: impl FnOnce(&mut [u8])) {
        let mut mode = self.mode();
        match &mut *mode {
            Mode::Live => live(dst),
            Mode::Record(h) => {
                live(dst);
                if h.random.len() + dst.len() <= MAX_RANDOM {
                    h.random.extend_from_slice(dst);
                } else {
                    h.dropped += 1;
                }
            }
            Mode::Replay { tape, at } => at.bytes(&tape.random, dst),
            Mode::Fixed { at, .. } => at.bytes(&[], dst),
        }
    }

    /// The clocks and generators to hand the WASI context.
    pub fn wall_clock(&self) -> impl HostWallClock + 'static {
        WallClock(self.clone())
    }

    pub fn monotonic_clock(&self) -> impl HostMonotonicClock + 'static {
        MonotonicClock {
            tape: self.clone(),
            start: std::time::Instant::now(),
        }
    }

    pub fn random(&self) -> Random {
        Random(self.clone())
    }
}

/// What [`Tape::stop`] found.
#[derive(Debug)]
pub enum Stopped {
    Live,
    Recorded(Handed),
    Replayed { beyond: u64 },
}

fn live_wall() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

fn keep(h: &mut Handed, list: impl FnOnce(&mut Handed) -> &mut Vec<u64>, v: u64) {
    let full = h.wall.len() + h.monotonic.len() >= MAX_VALUES;
    if full {
        h.dropped += 1;
    } else {
        list(h).push(v);
    }
}

/// The next recorded value; past the end the last one again (or 0).
fn next(values: &[u64], at: &mut usize, beyond: &mut u64) -> u64 {
    match values.get(*at) {
        Some(v) => {
            *at += 1;
            *v
        }
        None => {
            *beyond += 1;
            values.last().copied().unwrap_or(0)
        }
    }
}

struct WallClock(Tape);

impl HostWallClock for WallClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }

    fn now(&self) -> Duration {
        self.0.wall()
    }
}

struct MonotonicClock {
    tape: Tape,
    start: std::time::Instant,
}

impl HostMonotonicClock for MonotonicClock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        self.tape.monotonic(self.start.elapsed().as_nanos() as u64)
    }
}

/// A generator that draws from the operating system (through the tape).
#[derive(Debug)]
pub struct Random(Tape);

impl rand_core::TryRng for Random {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut b = [0u8; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut b = [0u8; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        self.0.fill(dst, |d| {
            if getrandom::fill(d).is_err() {
                fastrand::fill(d);
            }
        });
        Ok(())
    }
}

impl rand_core::TryCryptoRng for Random {}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::Rng;

    #[test]
    fn a_recorded_call_replays_the_same_values_twice() {
        let tape = Tape::default();
        let wall = tape.wall_clock();
        let mono = tape.monotonic_clock();
        let mut rng = tape.random();
        tape.record();
        let t = (wall.now(), mono.now(), rng.next_u64(), wall.now());
        let Stopped::Recorded(handed) = tape.stop() else {
            panic!("recorded");
        };
        assert_eq!(handed.wall.len(), 2);
        assert_eq!(handed.random.len(), 8);
        for _ in 0..2 {
            tape.replay(handed.clone());
            assert_eq!((wall.now(), mono.now(), rng.next_u64(), wall.now()), t);
            // Past the recording: the last time again, fixed bytes.
            assert_eq!(wall.now(), t.3);
            let extra = rng.next_u32();
            assert!(matches!(tape.stop(), Stopped::Replayed { beyond: 2 }));
            tape.replay(handed.clone());
            let _ = (
                wall.now(),
                mono.now(),
                rng.next_u64(),
                wall.now(),
                wall.now(),
            );
            assert_eq!(
                rng.next_u32(),
                extra,
                "the bytes past the end are fixed too"
            );
            tape.stop();
        }
    }

    #[test]
    fn the_recording_survives_json() {
        let h = Handed {
            wall: vec![1, 2],
            monotonic: vec![3],
            random: vec![0, 255, 7],
            dropped: 0,
        };
        let text = serde_json::to_string(&h).unwrap_or_default();
        let back: Handed = serde_json::from_str(&text).expect("tape");
        assert_eq!(back, h);
    }
}
