//! A shadow: a new version run beside the live one on the same batches
//! (or a sample of them), its effects held back, and compared.
//!
//! Why the comparison is per batch for effects and per message for
//! decisions: a plugin handles a batch in one call, and one statement (an
//! `insert-rows` of the whole batch) can serve many messages, so effects
//! belong to the call, not to a message. A message *agrees* when both
//! versions decided the same for it and its batch's effects agreed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{BatchError, Plugin, Tally};
use crate::bindings::{Decision, Message};
use crate::capability::record::{Effect, Recording};

/// Concrete examples kept per kind of disagreement.
const EXAMPLES: usize = 5;

/// A shadow version and what comparing it found.
#[derive(Debug)]
pub struct Shadow {
    /// The rollout this shadow belongs to.
    pub id: String,
    pub plugin: Arc<Plugin>,
    /// Share of the batches shadowed, in percent (1–100).
    pub sample: u32,
    report: Mutex<Report>,
    pub live: Tally,
    pub shadow: Tally,
    live_memory: AtomicU64,
    shadow_memory: AtomicU64,
}

/// One version's run of a batch, for [`Shadow::compare`].
#[derive(Debug)]
pub struct Run<'a> {
    pub result: &'a Result<Vec<Decision>, BatchError>,
    pub recording: Option<&'a Recording>,
    pub took: Duration,
    pub memory: u64,
}

/// What the comparisons found so far (bounded).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Report {
    pub batches: u64,
    pub messages: u64,
    /// Messages whose decision and batch effects agreed.
    pub agreed: u64,
    /// Disagreements by kind: `decision`, `sql`, `publish`, `kv`, `error`.
    pub disagreements: BTreeMap<String, u64>,
    pub examples: Vec<Example>,
}

/// One concrete disagreement.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Example {
    pub kind: String,
    /// The message (`STREAM#SEQ`) or batch (its first message) it was seen on.
    pub at: String,
    pub live: String,
    pub shadow: String,
}

/// A shadow's report with both versions' figures, as hosts show it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    pub id: String,
    pub sample: u32,
    pub agreement: f64,
    #[serde(flatten)]
    pub report: Report,
    pub live: VersionSummary,
    pub shadow: VersionSummary,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct VersionSummary {
    #[serde(flatten)]
    pub figures: super::Figures,
    /// Peak memory of one call, bytes.
    pub peak_memory: u64,
}

impl Shadow {
    pub fn new(id: impl Into<String>, plugin: Arc<Plugin>, sample: u32) -> Self {
        Shadow {
            id: id.into(),
            plugin,
            sample: sample.clamp(1, 100),
            report: Mutex::new(Report::default()),
            live: Tally::default(),
            shadow: Tally::default(),
            live_memory: AtomicU64::new(0),
            shadow_memory: AtomicU64::new(0),
        }
    }

    /// Whether the batch starting with `first` is shadowed (a stable
    /// choice by its first message's sequence).
    pub fn samples(&self, first: &Message) -> bool {
        self.sample >= 100
            || first.stream_seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) % 100 < u64::from(self.sample)
    }

    /// Compares the live and the shadow run of `msgs` and adds the result
    /// to the report.
    pub fn compare(&self, msgs: &[Message], live: &Run<'_>, shadow: &Run<'_>) {
        let counted = |r: &Run<'_>| r.result.as_ref().ok().map(|d| counted(d));
        self.live
            .record(msgs.len(), live.took, counted(live).as_deref());
        self.shadow
            .record(msgs.len(), shadow.took, counted(shadow).as_deref());
        self.live_memory.fetch_max(live.memory, Ordering::Relaxed);
        self.shadow_memory
            .fetch_max(shadow.memory, Ordering::Relaxed);
        let at = |m: &Message| format!("{}#{}", m.stream, m.stream_seq);
        let mut report = self.report.lock().unwrap_or_else(|e| e.into_inner());
        report.batches += 1;
        report.messages += msgs.len() as u64;
        let (live_d, shadow_d) = match (live.result, shadow.result) {
            (Ok(l), Ok(s)) => (l, s),
            (Err(l), Err(s)) => {
                // Both failed: agreeing, as far as settling goes.
                report.agreed += msgs.len() as u64;
                let _ = (l, s);
                return;
            }
            (l, s) => {
                let show = |r: &Result<Vec<Decision>, BatchError>| match r {
                    Ok(_) => "decided".to_owned(),
                    Err(e) => format!("failed: {e}"),
                };
                if let Some(first) = msgs.first() {
                    report.disagree("error", at(first), show(l), show(s), msgs.len() as u64);
                }
                return;
            }
        };
        let effects = effects_differ(live.recording, shadow.recording);
        for (kind, l, s) in &effects {
            if let Some(first) = msgs.first() {
                report.disagree(kind, at(first), l.clone(), s.clone(), 1);
            }
        }
        for ((m, l), s) in msgs.iter().zip(live_d).zip(shadow_d) {
            let (l, s) = (format!("{l:?}"), format!("{s:?}"));
            if l != s {
                report.disagree("decision", at(m), l, s, 1);
            } else if effects.is_empty() {
                report.agreed += 1;
            }
        }
    }

    /// The report so far, with both versions' figures.
    pub fn summary(&self) -> Summary {
        let report = self
            .report
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let agreement = if report.messages == 0 {
            1.0
        } else {
            report.agreed as f64 / report.messages as f64
        };
        Summary {
            id: self.id.clone(),
            sample: self.sample,
            agreement,
            report,
            live: VersionSummary {
                figures: self.live.read(),
                peak_memory: self.live_memory.load(Ordering::Relaxed),
            },
            shadow: VersionSummary {
                figures: self.shadow.read(),
                peak_memory: self.shadow_memory.load(Ordering::Relaxed),
            },
        }
    }
}

impl Report {
    fn disagree(&mut self, kind: &str, at: String, live: String, shadow: String, n: u64) {
        *self.disagreements.entry(kind.to_owned()).or_default() += n;
        if self.examples.iter().filter(|e| e.kind == kind).count() < EXAMPLES {
            self.examples.push(Example {
                kind: kind.to_owned(),
                at,
                live,
                shadow,
            });
        }
    }
}

fn counted(ds: &[Decision]) -> Vec<super::Counted> {
    ds.iter()
        .map(|d| match d {
            Decision::Ack => super::Counted::Ack,
            Decision::Retry(_) => super::Counted::Retry,
            Decision::Term(_) => super::Counted::Term,
        })
        .collect()
}

/// The capabilities whose effects differ, each with the first differing
/// pair (`(none)` where one version made fewer).
fn effects_differ(
    live: Option<&Recording>,
    shadow: Option<&Recording>,
) -> Vec<(&'static str, String, String)> {
    let empty = Recording::default();
    let (live, shadow) = (live.unwrap_or(&empty), shadow.unwrap_or(&empty));
    let mut out = Vec::new();
    for cap in ["sql", "publish", "kv"] {
        let of = |r: &Recording| -> Vec<Effect> {
            r.effects
                .iter()
                .filter(|e| e.capability == cap)
                .cloned()
                .collect()
        };
        let (l, s) = (of(live), of(shadow));
        let same =
            |a: &Effect, b: &Effect| a.op == b.op && a.target == b.target && a.digest == b.digest;
        if l.len() == s.len() && l.iter().zip(&s).all(|(a, b)| same(a, b)) {
            continue;
        }
        let show = |e: Option<&Effect>| {
            e.map(|e| format!("{} {}: {}", e.op, e.target, e.detail))
                .unwrap_or_else(|| "(none)".to_owned())
        };
        let i = l
            .iter()
            .zip(&s)
            .position(|(a, b)| !same(a, b))
            .unwrap_or(l.len().min(s.len()));
        out.push((cap, show(l.get(i)), show(s.get(i))));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(effects: &[(&'static str, &'static str, &str)]) -> Recording {
        let mut r = Recording::observe();
        for (cap, op, detail) in effects {
            r.push_for_tests(cap, op, "db", detail);
        }
        r
    }

    #[test]
    fn differing_effects_are_named_with_their_first_difference() {
        let live = rec(&[("sql", "execute", "INSERT 1"), ("publish", "publish", "a")]);
        let same = rec(&[("sql", "execute", "INSERT 1"), ("publish", "publish", "a")]);
        assert!(effects_differ(Some(&live), Some(&same)).is_empty());
        let other = rec(&[("sql", "execute", "INSERT 2"), ("publish", "publish", "a")]);
        let d = effects_differ(Some(&live), Some(&other));
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].0, "sql");
        assert!(
            d[0].1.contains("INSERT 1") && d[0].2.contains("INSERT 2"),
            "{d:?}"
        );
        let fewer = rec(&[("sql", "execute", "INSERT 1")]);
        let d = effects_differ(Some(&live), Some(&fewer));
        assert_eq!((d[0].0, d[0].2.as_str()), ("publish", "(none)"));
    }
}
