//! Playing a capture back against a plugin build, with no servers: the
//! batch as captured, every capability call answered from the transcript,
//! the clocks and random bytes as recorded. The report says what the plugin
//! answers now against what it answered then, and where it first asked for
//! something the transcript does not hold.

use serde::Serialize;

use super::{Capture, CaptureError, Outcome};
use crate::capability::transcript::{Divergence, Entry};
use crate::plugin::{PluginInstance, Witness};

/// How a replay went.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub then: Outcome,
    pub now: Outcome,
    /// The first call not answered from the transcript.
    pub divergence: Option<Box<Divergence>>,
    /// Recorded calls the plugin did not make this time.
    pub unmade: Vec<Entry>,
    /// Every call made now (log lines included), with the answer it got.
    pub calls: Vec<Entry>,
    /// Clock or random reads past what was recorded.
    pub reads_beyond: u64,
}

impl Report {
    /// The plugin answered as then, asking for exactly what it asked then.
    pub fn same(&self) -> bool {
        self.same_outcome() && self.divergence.is_none() && self.unmade.is_empty()
    }

    /// Same decisions; for a failure, the same kind of failure.
    pub fn same_outcome(&self) -> bool {
        match (&self.then, &self.now) {
            (Outcome::Failed { kind: a, .. }, Outcome::Failed { kind: b, .. }) => a == b,
            (a, b) => a == b,
        }
    }
}

/// Replays `capture` on `instance` (made for the capture's grants and
/// config, with [`PluginInstance::fix_world`] set from it).
pub async fn replay(
    capture: &Capture,
    instance: &mut PluginInstance,
) -> Result<Report, CaptureError> {
    let batch = capture
        .batch
        .iter()
        .map(|m| m.message())
        .collect::<Result<Vec<_>, _>>()?;
    let result = instance
        .replay(batch, capture.calls.clone(), capture.handed.clone())
        .await;
    let now = Outcome::of(&result);
    let (divergence, unmade, calls, reads_beyond) = match instance.take_witness() {
        Some(Witness::Replayed(r)) => (
            r.calls.divergence.clone(),
            r.calls.unmade().to_vec(),
            r.calls.made,
            r.beyond,
        ),
        // The instance could not start: nothing was asked.
        _ => (None, Vec::new(), Vec::new(), 0),
    };
    Ok(Report {
        then: capture.outcome.clone(),
        now,
        divergence,
        unmade,
        calls,
        reads_beyond,
    })
}
