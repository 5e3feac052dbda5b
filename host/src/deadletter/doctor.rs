//! Finding stranded messages: ones a pipeline's consumer has passed (below
//! its ack floor) that were neither handled nor dead-lettered. JetStream
//! does not say how a message left: an ack, a terminate and a give-up at
//! `max_deliver` all move the ack floor. What the pipeline left behind
//! does: the plugin's ledger (the origins it recorded, e.g. the indexer's
//! rows) and the dead letters it stored. A passed message whose origin is
//! in neither was stranded — by a host of a version before the spare
//! delivery, an advisory no host kept, or someone acking by hand.
//!
//! Pure logic; `jetplug doctor` reads the stream, the DLQ and the ledger.

use std::collections::BTreeSet;

use super::{Origin, addressed_to};

/// One message a consumer has passed, as read back from its stream.
#[derive(Debug, Clone)]
pub struct Passed {
    pub sequence: u64,
    pub headers: Vec<(String, String)>,
}

/// What is known to have become of origins (sequences in the stream).
#[derive(Debug, Default)]
pub struct Accounted {
    /// Origins the plugin's ledger holds.
    pub handled: BTreeSet<u64>,
    /// Origins (and own sequences) of the pipeline's dead letters.
    pub dead_lettered: BTreeSet<u64>,
}

/// The sequences of `passed` messages (of `stream`, consumed by
/// `pipeline`) that were neither handled nor dead-lettered. Redrives
/// addressed to other pipelines are acked unrun by design and are skipped.
pub fn stranded(
    stream: &str,
    pipeline: &str,
    passed: impl IntoIterator<Item = Passed>,
    accounted: &Accounted,
) -> Vec<u64> {
    passed
        .into_iter()
        .filter(|m| addressed_to(&m.headers, pipeline))
        .filter(|m| {
            let origin = Origin::of(&m.headers, stream, m.sequence, 0);
            let key = if origin.stream == stream {
                origin.sequence
            } else {
                m.sequence
            };
            let known = |set: &BTreeSet<u64>| set.contains(&key) || set.contains(&m.sequence);
            !(known(&accounted.handled) || known(&accounted.dead_lettered))
        })
        .map(|m| m.sequence)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deadletter::headers;

    fn passed(sequence: u64, hs: &[(&str, &str)]) -> Passed {
        Passed {
            sequence,
            headers: hs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn a_passed_message_neither_handled_nor_dead_lettered_is_stranded() {
        let accounted = Accounted {
            handled: [1, 3].into(),
            dead_lettered: [4].into(),
        };
        let msgs = vec![
            passed(1, &[]),
            passed(2, &[]),
            passed(3, &[]),
            passed(4, &[]),
            // A redrive of origin 2 addressed to another pipeline: skipped.
            passed(
                5,
                &[
                    (headers::ORIGIN, "EVENTS:2"),
                    (headers::REDRIVE_TO, "other"),
                ],
            ),
            // A redrive of origin 4 to this pipeline, handled under its origin.
            passed(
                6,
                &[(headers::ORIGIN, "EVENTS:4"), (headers::REDRIVE_TO, "main")],
            ),
        ];
        assert_eq!(stranded("EVENTS", "main", msgs, &accounted), vec![2]);
    }
}
