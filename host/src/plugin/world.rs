//! What one call of a plugin saw of the world — its capability calls (see
//! [`crate::capability::transcript`]) and the clock reads and random bytes
//! of its sandbox (see [`super::tape`]) — recorded for a capture, or played
//! back from one.

use crate::capability::transcript::{Entry, Recorded, Replayer, Script};

use super::PluginState;
use super::tape::{Handed, Stopped};

/// How a call meets the world.
#[derive(Debug, Default)]
pub(super) enum World {
    #[default]
    Live,
    /// Live, and written down.
    Record,
    /// Answered from a capture.
    Replay { calls: Vec<Entry>, handed: Handed },
    /// Answered from a test fixture's declared answers; the clock fixed
    /// at `wall` (ns since the epoch) when given.
    Fixture {
        answers: Vec<Entry>,
        wall: Option<u64>,
    },
}

/// What a call left: its recording, or how its replay went.
#[derive(Debug)]
pub enum Witness {
    Seen(Seen),
    Replayed(Replayed),
}

/// What a recorded call saw.
#[derive(Debug)]
pub struct Seen {
    pub calls: Recorded,
    pub handed: Handed,
    /// The instance's `wasi:random/insecure-seed`.
    pub seed: u128,
}

/// How a replayed call went.
#[derive(Debug)]
pub struct Replayed {
    pub calls: Replayer,
    /// Clock and random reads past what was recorded.
    pub beyond: u64,
}

impl World {
    /// Sets the instance up for the next call.
    pub(super) fn install(self, state: &PluginState) {
        let calls = state.caps.calls();
        match self {
            World::Live => {}
            World::Record => {
                calls.set_script(Script::Record(Recorded::default()));
                state.tape.record();
            }
            World::Replay { calls: t, handed } => {
                calls.set_script(Script::Replay(Replayer::new(t)));
                state.tape.replay(handed);
            }
            World::Fixture { answers, wall } => {
                calls.set_script(Script::Replay(Replayer::fixture(answers)));
                if let Some(wall) = wall {
                    state.tape.fix(wall);
                }
            }
        }
    }
}

/// What the call since [`World::install`] left (the instance back to live).
pub(super) fn collect(state: &PluginState) -> Option<Witness> {
    let script = state.caps.calls().take_script();
    let tape = state.tape.stop();
    match (script, tape) {
        (Some(Script::Record(calls)), Stopped::Recorded(handed)) => Some(Witness::Seen(Seen {
            calls,
            handed,
            seed: state.seed,
        })),
        (Some(Script::Replay(calls)), Stopped::Replayed { beyond }) => {
            Some(Witness::Replayed(Replayed { calls, beyond }))
        }
        (Some(Script::Replay(calls)), Stopped::Live) => {
            Some(Witness::Replayed(Replayed { calls, beyond: 0 }))
        }
        _ => None,
    }
}
