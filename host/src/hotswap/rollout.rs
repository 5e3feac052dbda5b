//! Canary rollouts, fleet-wide.
//!
//! `jetplug plugin deploy NAME FILE --canary PERCENT` stores the candidate
//! like a deploy but announces a *rollout* instead of a version: a record
//! under the key `NAME.canary` of the fleet's KV bucket (a plugin name has
//! no dot, so the keys never meet). Every host follows the record: while it
//! runs, the host loads the candidate beside the live version and its
//! workers split batches by key between them (`pipeline::canary`); when it
//! ends, the candidate is dropped — and on a promotion the candidate is
//! announced as the plugin's version, which swaps it in as any deploy does.
//!
//! Why the decision is a compare-and-set on the record: every host judges
//! its own tallies once a second, and the first to reach a verdict writes
//! it at the record's revision; the others see the record end and follow.
//! So all hosts act on one decision, whoever made it, and a host that
//! starts mid-canary joins it by reading the record.

use std::time::{Duration, SystemTime};

use async_nats::jetstream::kv;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::fleet::{Announcement, Fleet, FleetError, check_name};
use super::signing::Signature;
use crate::plugin::Figures;

/// What a canary must show, and when it is judged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rules {
    /// Judged once the candidate handled this many messages (fleet: on the
    /// first host that saw them).
    pub decide_after_messages: u64,
    /// … or this long after the start, on what was seen by then.
    pub decide_after_secs: u64,
    /// How much higher than the live version's a candidate's term, retry
    /// or failure rate may be (absolute: 0.02 = 2 points).
    pub max_rate_increase: f64,
    /// How much slower its p99 handling time per message may be (a
    /// ratio; differences under 2 ms are noise and pass). Judged only when
    /// the canary is due, on at least 50 timed calls of each version.
    pub max_p99_ratio: f64,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            decide_after_messages: 1000,
            decide_after_secs: 600,
            max_rate_increase: 0.02,
            max_p99_ratio: 1.5,
        }
    }
}

/// A canary's record in the fleet's KV bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    /// Names this rollout (and salts its split of the keys).
    pub id: String,
    pub plugin: String,
    /// The version on trial (stored like a deploy).
    pub candidate: Announcement,
    /// Share of the keys it takes, in percent.
    pub percent: u32,
    pub rules: Rules,
    /// Set for a shadow (then `percent` is 0: no message goes to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowRules>,
    pub started_at: String,
    /// Set when it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<Ended>,
}

/// How a shadow runs and ends (`plugin deploy --shadow`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShadowRules {
    /// Share of the batches shadowed, in percent.
    pub sample: u32,
    /// How long it runs.
    pub for_secs: u64,
    /// Promote when the window ends with at least this agreement (0–1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promote_if: Option<f64>,
}

/// How a canary ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ended {
    pub outcome: Outcome,
    pub at: String,
    /// Why, in words (the figures that decided it).
    pub reason: String,
    /// The host that decided (or `cli` for `plugin promote|abort`).
    pub by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<Figures>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<Figures>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Promoted,
    RolledBack,
    Aborted,
    /// A shadow's window ended without a promotion.
    Finished,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Promoted => "promoted",
            Outcome::RolledBack => "rolled-back",
            Outcome::Aborted => "aborted",
            Outcome::Finished => "finished",
        }
    }
}

/// A judgement of a running canary.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Wait,
    Promote(String),
    RollBack(String),
}

/// Candidate messages after which a clearly worse candidate is rolled back
/// without waiting for `decide_after_messages`.
const EARLY: u64 = 100;
/// p99 differences below this are noise.
const P99_NOISE_US: f64 = 2000.0;
/// Timed calls each version needs before its p99 says anything (a batch
/// is one call; over fewer, the p99 is the one slowest call — a cold
/// instance or a busy moment of the machine).
const P99_MIN_CALLS: u64 = 50;

/// Judges a canary `elapsed` after its start on the two versions' figures.
pub fn judge(rules: &Rules, elapsed: Duration, live: &Figures, cand: &Figures) -> Verdict {
    let enough = cand.messages >= rules.decide_after_messages;
    let late = elapsed >= Duration::from_secs(rules.decide_after_secs);
    // Rates may roll back early; the p99 only once the canary is due.
    if let Some(why) = worse_rates(rules, live, cand) {
        if cand.messages >= EARLY.min(rules.decide_after_messages) || late {
            return Verdict::RollBack(why);
        }
    } else if enough || late {
        if let Some(why) = slower(rules, live, cand) {
            return Verdict::RollBack(why);
        }
        return Verdict::Promote(format!(
            "{} messages on the candidate, {} on the live version; not worse: term {:.3} vs {:.3}, retry {:.3} vs {:.3}, failures {:.3} vs {:.3}, p99 {:.1} ms vs {:.1} ms{}",
            cand.messages,
            live.messages,
            cand.term_rate,
            live.term_rate,
            cand.retry_rate,
            live.retry_rate,
            cand.failure_rate,
            live.failure_rate,
            f64::from(cand.p99_us) / 1000.0,
            f64::from(live.p99_us) / 1000.0,
            if cand.calls < P99_MIN_CALLS || live.calls < P99_MIN_CALLS {
                format!(" (not judged: under {P99_MIN_CALLS} calls)")
            } else {
                String::new()
            },
        ));
    }
    Verdict::Wait
}

/// Which of the candidate's rates is worse than the live version's, if any.
fn worse_rates(rules: &Rules, live: &Figures, cand: &Figures) -> Option<String> {
    let m = rules.max_rate_increase;
    for (what, c, l) in [
        ("term rate", cand.term_rate, live.term_rate),
        ("retry rate", cand.retry_rate, live.retry_rate),
        ("trap/timeout rate", cand.failure_rate, live.failure_rate),
    ] {
        if c > l + m {
            return Some(format!(
                "{what} {c:.3} against {l:.3} on the live version (allowed +{m}), over {} candidate messages",
                cand.messages
            ));
        }
    }
    None
}

/// Whether the candidate's p99 is slower beyond the rules (both versions
/// timed over enough calls).
fn slower(rules: &Rules, live: &Figures, cand: &Figures) -> Option<String> {
    if cand.calls < P99_MIN_CALLS || live.calls < P99_MIN_CALLS {
        return None;
    }
    let (c, l) = (f64::from(cand.p99_us), f64::from(live.p99_us));
    if c > l * rules.max_p99_ratio && c - l > P99_NOISE_US {
        return Some(format!(
            "p99 handling time {:.1} ms against {:.1} ms on the live version (allowed ×{})",
            c / 1000.0,
            l / 1000.0,
            rules.max_p99_ratio
        ));
    }
    None
}

/// The KV key of `plugin`'s rollout.
pub fn key(plugin: &str) -> String {
    format!("{plugin}.canary")
}

pub(super) fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

impl Fleet {
    /// Stores `bytes` and starts a canary of them on `percent` of
    /// `plugin`'s keys. Refused while another canary of it runs.
    pub async fn start_canary(
        &self,
        plugin: &str,
        bytes: &[u8],
        signature: Option<Signature>,
        percent: u32,
        rules: Rules,
    ) -> Result<Rollout, FleetError> {
        self.start_rollout(plugin, bytes, signature, percent.clamp(1, 99), rules, None)
            .await
    }

    /// Stores `bytes` and starts a shadow of them: run beside `plugin`'s
    /// running version on a sample of the batches, effects held back.
    pub async fn start_shadow(
        &self,
        plugin: &str,
        bytes: &[u8],
        signature: Option<Signature>,
        rules: ShadowRules,
    ) -> Result<Rollout, FleetError> {
        self.start_rollout(plugin, bytes, signature, 0, Rules::default(), Some(rules))
            .await
    }

    async fn start_rollout(
        &self,
        plugin: &str,
        bytes: &[u8],
        signature: Option<Signature>,
        percent: u32,
        rules: Rules,
        shadow: Option<ShadowRules>,
    ) -> Result<Rollout, FleetError> {
        check_name(plugin)?;
        let current = self.rollout(plugin).await?;
        if let Some((r, _)) = &current
            && r.ended.is_none()
        {
            return Err(FleetError::CanaryRunning {
                plugin: plugin.to_owned(),
                id: r.id.clone(),
            });
        }
        let candidate = self.store(plugin, bytes, signature).await?;
        let started_at = now();
        let id = format!(
            "{}-{}",
            super::short(candidate.version()),
            started_at.replace([':', '-'], "")
        );
        let r = Rollout {
            id,
            plugin: plugin.to_owned(),
            candidate,
            percent,
            rules,
            shadow,
            started_at,
            ended: None,
        };
        self.write_rollout(plugin, &r, current.map(|(_, rev)| rev))
            .await?;
        Ok(r)
    }

    /// `plugin`'s rollout record (running or ended) and its revision.
    pub async fn rollout(&self, plugin: &str) -> Result<Option<(Rollout, u64)>, FleetError> {
        check_name(plugin)?;
        let entry = self
            .kv
            .entry(key(plugin))
            .await
            .map_err(|e| self.read_err(plugin, &e))?;
        match entry {
            Some(e) if e.operation == kv::Operation::Put => {
                Ok(Some((parse(plugin, &e.value, e.revision)?, e.revision)))
            }
            _ => Ok(None),
        }
    }

    /// Every record `plugin`'s rollouts left in the KV (each start and
    /// each end), oldest first.
    pub async fn rollout_history(&self, plugin: &str) -> Result<Vec<Rollout>, FleetError> {
        let mut out = Vec::new();
        let Ok(mut entries) = self.kv.history(key(plugin)).await else {
            return Ok(out);
        };
        while let Some(e) = entries.next().await {
            let e = e.map_err(|e| self.read_err(plugin, &e))?;
            if e.operation == kv::Operation::Put {
                out.push(parse(plugin, &e.value, e.revision)?);
            }
        }
        Ok(out)
    }

    /// Ends `plugin`'s running canary (`id`, when given, must still be the
    /// running one): on a promotion the candidate becomes the plugin's
    /// announced version. [`FleetError::CanaryEnded`] when another ended
    /// it first.
    pub async fn end_canary(
        &self,
        plugin: &str,
        id: Option<&str>,
        ended: Ended,
    ) -> Result<Rollout, FleetError> {
        let (mut r, revision) = self
            .rollout(plugin)
            .await?
            .ok_or_else(|| FleetError::NoCanary(plugin.to_owned()))?;
        if r.ended.is_some() {
            return Err(FleetError::NoCanary(plugin.to_owned()));
        }
        if id.is_some_and(|id| id != r.id) {
            return Err(FleetError::CanaryEnded(plugin.to_owned()));
        }
        let promoted = ended.outcome == Outcome::Promoted;
        r.ended = Some(ended);
        self.write_rollout(plugin, &r, Some(revision)).await?;
        if promoted {
            self.announce(plugin, &r.candidate.clone().stamped())
                .await?;
        }
        Ok(r)
    }

    async fn write_rollout(
        &self,
        plugin: &str,
        r: &Rollout,
        revision: Option<u64>,
    ) -> Result<(), FleetError> {
        let json = serde_json::to_vec(r).map_err(|e| FleetError::Store {
            plugin: plugin.to_owned(),
            bucket: self.bucket.clone(),
            reason: e.to_string(),
        })?;
        let store = |reason: String| FleetError::Store {
            plugin: plugin.to_owned(),
            bucket: self.bucket.clone(),
            reason,
        };
        match revision {
            Some(rev) => match self.kv.update(key(plugin), json.into(), rev).await {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    Err(FleetError::CanaryEnded(plugin.to_owned()))
                }
                Err(e) => Err(store(e.to_string())),
            },
            None => match self.kv.create(key(plugin), json.into()).await {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    Err(FleetError::CanaryEnded(plugin.to_owned()))
                }
                Err(e) => Err(store(e.to_string())),
            },
        }
    }

    fn read_err(&self, plugin: &str, e: &dyn std::fmt::Display) -> FleetError {
        FleetError::Read {
            plugin: plugin.to_owned(),
            bucket: self.bucket.clone(),
            reason: e.to_string(),
        }
    }
}

fn parse(plugin: &str, value: &[u8], revision: u64) -> Result<Rollout, FleetError> {
    serde_json::from_slice(value).map_err(|e| FleetError::BadAnnouncement {
        plugin: key(plugin),
        revision,
        reason: e.to_string(),
    })
}

/// This host's name in verdicts (`HOSTNAME`, else `host`).
pub fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_else(|| "host".to_owned())
        + &format!(":{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(messages: u64, term: f64, p99_ms: u32) -> Figures {
        Figures {
            messages,
            calls: messages / 4,
            ack_rate: 1.0 - term,
            term_rate: term,
            p99_us: p99_ms * 1000,
            ..Figures::default()
        }
    }

    #[test]
    fn a_worse_candidate_is_rolled_back_early_and_a_good_one_promoted_when_due() {
        let rules = Rules::default();
        let live = figures(4000, 0.0, 1);
        let t = Duration::from_secs(5);
        assert_eq!(judge(&rules, t, &live, &figures(50, 0.2, 1)), Verdict::Wait);
        let Verdict::RollBack(why) = judge(&rules, t, &live, &figures(120, 0.2, 1)) else {
            panic!("a 20 % term rate is rolled back after 100 messages");
        };
        assert!(why.contains("term rate 0.200"), "{why}");
        assert_eq!(
            judge(&rules, t, &live, &figures(500, 0.01, 1)),
            Verdict::Wait
        );
        assert!(matches!(
            judge(&rules, t, &live, &figures(1000, 0.01, 1)),
            Verdict::Promote(_)
        ));
        assert!(
            matches!(
                judge(&rules, Duration::from_secs(600), &live, &figures(3, 0.0, 1)),
                Verdict::Promote(_)
            ),
            "late: judged on what was seen"
        );
        assert_eq!(
            judge(&rules, t, &live, &figures(200, 0.0, 9)),
            Verdict::Wait,
            "the p99 is judged only when the canary is due"
        );
        let Verdict::RollBack(why) = judge(&rules, t, &live, &figures(1000, 0.0, 9)) else {
            panic!("9 ms against 1 ms is slower beyond ×1.5 + 2 ms");
        };
        assert!(why.contains("p99"), "{why}");
        assert!(
            matches!(
                judge(&rules, t, &figures(4000, 0.0, 1), &figures(1000, 0.0, 2)),
                Verdict::Promote(_)
            ),
            "1 ms slower is noise"
        );
        let mut few = figures(1000, 0.0, 9);
        few.calls = 10;
        assert!(
            matches!(judge(&rules, t, &live, &few), Verdict::Promote(_)),
            "a p99 over 10 calls (their slowest) says nothing"
        );
    }

    #[test]
    fn records_round_trip() {
        let r = Rollout {
            id: "abc-1".into(),
            plugin: "p".into(),
            candidate: Announcement::File {
                deployed_at: "t".into(),
            },
            percent: 20,
            rules: Rules::default(),
            shadow: None,
            started_at: "2026-12-05T00:00:00Z".into(),
            ended: Some(Ended {
                outcome: Outcome::RolledBack,
                at: "t".into(),
                reason: "r".into(),
                by: "h".into(),
                live: None,
                candidate: Some(Figures::default()),
            }),
        };
        let json = serde_json::to_vec(&r).expect("serialize");
        assert_eq!(parse("p", &json, 1).expect("parse"), r);
        assert!(String::from_utf8_lossy(&json).contains("\"rolled-back\""));
        assert_eq!(key("p"), "p.canary");
    }
}
