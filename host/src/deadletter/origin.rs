//! A message's origin — the stream and sequence where it was first stored —
//! and the redrive address. Exactly-once effects key on the origin, so a
//! message redriven from the dead-letter queue (a new sequence) is still
//! recognised as the event it was; the address makes only the pipelines
//! that dead-lettered it handle it again.

use super::headers;

/// Where a message was first stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub stream: String,
    pub sequence: u64,
    pub published_at_ms: i64,
}

impl Origin {
    /// The origin of a delivered message: its `Jetplug-Origin` headers when
    /// it was redriven, else its own position.
    pub fn of(hs: &[(String, String)], stream: &str, sequence: u64, published_at_ms: i64) -> Self {
        let get = |name: &str| {
            hs.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        let redriven = get(headers::ORIGIN).and_then(Origin::parse_key);
        match redriven {
            Some((stream, sequence)) => Origin {
                stream,
                sequence,
                published_at_ms: get(headers::ORIGIN_PUBLISHED)
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(published_at_ms),
            },
            None => Origin {
                stream: stream.to_owned(),
                sequence,
                published_at_ms,
            },
        }
    }

    /// `STREAM:SEQUENCE` → its parts (None if unreadable).
    pub fn parse_key(key: &str) -> Option<(String, u64)> {
        let (stream, seq) = key.trim().rsplit_once(':')?;
        let seq = seq.parse().ok()?;
        (!stream.is_empty()).then(|| (stream.to_owned(), seq))
    }

    /// `STREAM:SEQUENCE`, the idempotency key plugins use.
    pub fn key(&self) -> String {
        format!("{}:{}", self.stream, self.sequence)
    }
}

/// Whether `pipeline` should run a message with these headers: yes unless
/// the message is a redrive addressed to other pipelines only.
pub fn addressed_to(hs: &[(String, String)], pipeline: &str) -> bool {
    let mut to = hs
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(headers::REDRIVE_TO))
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .peekable();
    to.peek().is_none() || to.any(|p| p == pipeline)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_origin_survives_a_redrive() {
        let own = Origin::of(&[], "LEARNING", 7, 100);
        assert_eq!(own.key(), "LEARNING:7");
        let redriven = Origin::of(
            &h(&[
                ("Jetplug-Origin", "LEARNING:7"),
                ("Jetplug-Origin-Published-Ms", "100"),
            ]),
            "LEARNING",
            99,
            500,
        );
        assert_eq!(redriven, own);
        let unreadable = Origin::of(&h(&[("Jetplug-Origin", "nonsense")]), "S", 3, 1);
        assert_eq!(unreadable.key(), "S:3");
        assert_eq!(
            Origin::parse_key("A:B:12"),
            Some(("A:B".to_owned(), 12)),
            "the sequence is after the last colon"
        );
    }

    #[test]
    fn a_redrive_is_for_the_pipelines_it_names() {
        assert!(addressed_to(&[], "indexer"), "not a redrive");
        let to = h(&[("Jetplug-Redrive-To", "analytics, audit")]);
        assert!(addressed_to(&to, "analytics"));
        assert!(addressed_to(&to, "audit"));
        assert!(!addressed_to(&to, "indexer"));
        assert!(!addressed_to(&to, "analytic"), "whole names only");
    }
}
