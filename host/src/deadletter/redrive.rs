//! Choosing dead letters to redrive and building their republish.
//!
//! A redrive republishes a dead letter to its original subject with its
//! origin (`Jetplug-Origin`) and addressed to the pipeline that failed it
//! (`Jetplug-Redrive-To`), so only that pipeline runs it again and its
//! plugin's exactly-once key is the original event's. The republish carries
//! a message id derived from the dead letter's position, so running an
//! interrupted redrive again cannot store the same message twice.
//! Pure logic; `jetplug dlq` does the I/O.

use time::OffsetDateTime;

use super::{Origin, headers};
use crate::subject;

/// The facts a dead letter's headers carry.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Facts {
    pub subject: String,
    pub pipeline: String,
    pub reason: String,
    pub stream: String,
    pub sequence: u64,
    pub deliveries: String,
    /// `STREAM:SEQUENCE` and publish time of the first stored message.
    pub origin: Option<Origin>,
    /// The capture of the failing call (`jetplug capture show ID`), if kept.
    pub capture: Option<String>,
}

impl Facts {
    pub fn from_headers(hs: &[(String, String)]) -> Self {
        let get = |name: &str| {
            hs.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim().to_owned())
                .unwrap_or_default()
        };
        let stream = get(headers::STREAM);
        let sequence = get(headers::SEQUENCE).parse().unwrap_or(0);
        let published = get(headers::PUBLISHED_AT).parse().unwrap_or(0);
        // Dead letters from before origins were recorded: their own position.
        let origin = Origin::parse_key(&get(headers::ORIGIN))
            .map(|(stream, sequence)| Origin {
                stream,
                sequence,
                published_at_ms: get(headers::ORIGIN_PUBLISHED).parse().unwrap_or(published),
            })
            .or_else(|| {
                (!stream.is_empty() && sequence > 0).then(|| Origin {
                    stream: stream.clone(),
                    sequence,
                    published_at_ms: published,
                })
            });
        Facts {
            subject: get(headers::SUBJECT),
            pipeline: get(headers::PIPELINE),
            reason: get(headers::REASON),
            stream,
            sequence,
            deliveries: get(headers::DELIVERIES),
            capture: Some(get(headers::CAPTURE)).filter(|c| !c.is_empty()),
            origin,
        }
    }
}

/// Which dead letters an operator asked for.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// The pipeline that dead-lettered it.
    pub pipeline: Option<String>,
    /// A regular expression the reason must match.
    pub reason: Option<regex::Regex>,
    /// A NATS pattern the original subject must match.
    pub subject: Option<String>,
    /// Dead-lettered at or after.
    pub since: Option<OffsetDateTime>,
    /// Dead-lettered before.
    pub until: Option<OffsetDateTime>,
}

impl Selection {
    pub fn matches(&self, f: &Facts, dead_at: OffsetDateTime) -> bool {
        self.pipeline.as_ref().is_none_or(|p| *p == f.pipeline)
            && self.reason.as_ref().is_none_or(|r| r.is_match(&f.reason))
            && self
                .subject
                .as_ref()
                .is_none_or(|p| subject::matches(p, &f.subject))
            && self.since.is_none_or(|t| dead_at >= t)
            && self.until.is_none_or(|t| dead_at < t)
    }
}

/// What to publish for one dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Republish {
    pub subject: String,
    pub headers: Vec<(String, String)>,
    /// `Nats-Msg-Id`: the same for every attempt at this dead letter.
    pub message_id: String,
}

/// Why a dead letter cannot be redriven.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedriveError {
    #[error("it has no `{}` header (not written by jetplug?)", headers::SUBJECT)]
    NoSubject,
}

/// The republish of the dead letter at `dlq_stream`/`dlq_seq`: its original
/// headers (without `Jetplug-*` and `Nats-Msg-Id`), its origin, and the
/// pipeline it is addressed to.
pub fn republish(
    hs: &[(String, String)],
    f: &Facts,
    dlq_stream: &str,
    dlq_seq: u64,
) -> Result<Republish, RedriveError> {
    if f.subject.is_empty() {
        return Err(RedriveError::NoSubject);
    }
    let mut out: Vec<(String, String)> = hs
        .iter()
        .filter(|(k, _)| {
            !k.to_ascii_lowercase().starts_with("jetplug-")
                && !k.eq_ignore_ascii_case("Nats-Msg-Id")
        })
        .cloned()
        .collect();
    if let Some(o) = &f.origin {
        out.push((headers::ORIGIN.into(), o.key()));
        out.push((
            headers::ORIGIN_PUBLISHED.into(),
            o.published_at_ms.to_string(),
        ));
    }
    if !f.pipeline.is_empty() && f.pipeline != "unknown" {
        out.push((headers::REDRIVE_TO.into(), f.pipeline.clone()));
    }
    out.push((
        headers::REDRIVEN_FROM.into(),
        format!("{dlq_stream}:{dlq_seq}"),
    ));
    Ok(Republish {
        subject: f.subject.clone(),
        headers: out,
        message_id: format!("jetplug-redrive:{dlq_stream}:{dlq_seq}"),
    })
}

/// A time given on the command line: RFC 3339, or a duration meaning that
/// long before `now` (`2h`, `3d`).
pub fn parse_time(text: &str, now: OffsetDateTime) -> Result<OffsetDateTime, TimeError> {
    if let Ok(t) = OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339) {
        return Ok(t);
    }
    match crate::units::parse_duration(text) {
        Ok(d) => Ok(now - d),
        Err(_) => Err(TimeError(text.to_owned())),
    }
}

/// A command-line time that is neither form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is neither an RFC 3339 time (2026-01-31T12:00:00Z) nor a duration ago (30m, 2h, 7d)"
)]
pub struct TimeError(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn dead_letter() -> Vec<(String, String)> {
        h(&[
            ("traceparent", "00-abc"),
            ("Nats-Msg-Id", "orig-1"),
            ("Jetplug-Original-Subject", "learning.quiz.answered"),
            ("Jetplug-Original-Stream", "LEARNING"),
            ("Jetplug-Original-Sequence", "42"),
            ("Jetplug-Pipeline", "analytics"),
            ("Jetplug-Reason", "payload is not JSON: eof"),
            ("Jetplug-Original-Published-Ms", "1000"),
        ])
    }

    #[test]
    fn a_republish_keeps_the_origin_and_names_the_pipeline() {
        let hs = dead_letter();
        let f = Facts::from_headers(&hs);
        let r = republish(&hs, &f, "DLQ", 9).expect("republish");
        assert_eq!(r.subject, "learning.quiz.answered");
        assert_eq!(r.message_id, "jetplug-redrive:DLQ:9");
        let get = |k: &str| {
            r.headers
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("traceparent"), Some("00-abc"));
        assert_eq!(get("Nats-Msg-Id"), None);
        assert_eq!(get("Jetplug-Reason"), None);
        assert_eq!(
            get(headers::ORIGIN),
            Some("LEARNING:42"),
            "old dead letters: own position"
        );
        assert_eq!(get(headers::ORIGIN_PUBLISHED), Some("1000"));
        assert_eq!(get(headers::REDRIVE_TO), Some("analytics"));
        assert_eq!(get(headers::REDRIVEN_FROM), Some("DLQ:9"));
    }

    #[test]
    fn a_dead_letter_of_a_redrive_keeps_the_first_origin() {
        let mut hs = dead_letter();
        hs.push(("Jetplug-Origin".into(), "LEARNING:7".into()));
        hs.push(("Jetplug-Origin-Published-Ms".into(), "5".into()));
        let f = Facts::from_headers(&hs);
        let r = republish(&hs, &f, "DLQ", 10).expect("republish");
        assert!(
            r.headers
                .contains(&(headers::ORIGIN.into(), "LEARNING:7".into()))
        );
        assert!(
            r.headers
                .contains(&(headers::ORIGIN_PUBLISHED.into(), "5".into()))
        );
        assert_eq!(
            republish(&[], &Facts::default(), "DLQ", 1),
            Err(RedriveError::NoSubject)
        );
    }

    #[test]
    fn selections_filter_by_pipeline_reason_subject_and_time() {
        let f = Facts::from_headers(&dead_letter());
        let t = OffsetDateTime::from_unix_timestamp(1_000_000).expect("time");
        let all = Selection::default();
        assert!(all.matches(&f, t));
        let by = |s: Selection| s.matches(&f, t);
        assert!(by(Selection {
            pipeline: Some("analytics".into()),
            ..all.clone()
        }));
        assert!(!by(Selection {
            pipeline: Some("indexer".into()),
            ..all.clone()
        }));
        let re = |r: &str| Some(regex::Regex::new(r).expect("regex"));
        assert!(by(Selection {
            reason: re("^payload is not JSON"),
            ..all.clone()
        }));
        assert!(!by(Selection {
            reason: re("timeout"),
            ..all.clone()
        }));
        assert!(by(Selection {
            subject: Some("learning.>".into()),
            ..all.clone()
        }));
        assert!(!by(Selection {
            subject: Some("focus.>".into()),
            ..all.clone()
        }));
        let secs = |s: i64| OffsetDateTime::from_unix_timestamp(s).ok();
        assert!(by(Selection {
            since: secs(1_000_000),
            ..all.clone()
        }));
        assert!(!by(Selection {
            since: secs(1_000_001),
            ..all.clone()
        }));
        assert!(!by(Selection {
            until: secs(1_000_000),
            ..all.clone()
        }));
        assert!(by(Selection {
            until: secs(1_000_001),
            ..all
        }));
    }

    #[test]
    fn times_are_rfc3339_or_a_duration_ago() {
        let now = OffsetDateTime::from_unix_timestamp(10_000).expect("time");
        assert_eq!(
            parse_time("2h", now).map(|t| t.unix_timestamp()),
            Ok(10_000 - 7200)
        );
        assert_eq!(
            parse_time("1970-01-01T00:00:05Z", now).map(|t| t.unix_timestamp()),
            Ok(5)
        );
        assert!(parse_time("yesterday", now).is_err_and(|e| e.to_string().contains("RFC 3339")));
    }
}
