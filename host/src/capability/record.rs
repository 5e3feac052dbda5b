//! Recording what a plugin call does to the world: the effects of a shadow
//! run (held back) and of the live run beside it (made), to compare them.
//!
//! Why on the call path: every effect passes [`super::CallPath`], so a
//! recording installed there sees all of them — SQL statements with their
//! parameters, publishes with their payloads, KV writes — without a line in
//! the plugin. A recording that *holds* makes the writes that cannot be
//! undone (publish, KV) answer without happening; SQL is held by running
//! it in a transaction that is rolled back (the shadow's reads see real
//! data).

use std::hash::{Hash, Hasher};

/// Effects kept per recording (a runaway plugin cannot grow it without
/// bound); the rest are counted.
const KEPT: usize = 10_000;
/// Characters of an effect's detail kept for examples.
const DETAIL: usize = 240;

/// One effect: capability, operation, target (database, subject, bucket)
/// and what it carried.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Effect {
    pub capability: &'static str,
    pub op: &'static str,
    pub target: String,
    /// The statement and parameters, payload, key and value (shortened).
    pub detail: String,
    /// A digest of the whole detail: what comparisons use.
    #[serde(skip)]
    pub digest: u64,
}

/// The effects of one plugin call, in order.
#[derive(Debug, Clone, Default)]
pub struct Recording {
    /// Hold effects back instead of making them (a shadow run).
    pub hold: bool,
    pub effects: Vec<Effect>,
    /// Effects past [`KEPT`], counted only.
    pub dropped: u64,
}

impl Recording {
    /// A recording that lets effects happen (the live version's).
    pub fn observe() -> Self {
        Recording::default()
    }

    /// A recording that holds effects back (a shadow's).
    pub fn hold() -> Self {
        Recording {
            hold: true,
            ..Recording::default()
        }
    }

    pub(super) fn push(
        &mut self,
        capability: &'static str,
        op: &'static str,
        target: &str,
        detail: &str,
    ) {
        if self.effects.len() >= KEPT {
            self.dropped += 1;
            return;
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (capability, op, target, detail).hash(&mut h);
        let mut short: String = detail.chars().take(DETAIL).collect();
        if short.len() < detail.len() {
            short.push('…');
        }
        self.effects.push(Effect {
            capability,
            op,
            target: target.to_owned(),
            detail: short,
            digest: h.finish(),
        });
    }
}

impl Recording {
    /// [`Recording::push`], for tests elsewhere.
    #[cfg(test)]
    pub fn push_for_tests(
        &mut self,
        capability: &'static str,
        op: &'static str,
        target: &str,
        detail: &str,
    ) {
        self.push(capability, op, target, detail);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effects_are_kept_in_order_with_a_digest_of_their_whole_detail() {
        let mut r = Recording::hold();
        let long = "x".repeat(1000);
        r.push("sql", "execute", "db", &long);
        r.push("sql", "execute", "db", &format!("{long}y"));
        assert_eq!(r.effects.len(), 2);
        assert!(r.effects[0].detail.chars().count() <= DETAIL + 1);
        assert_ne!(
            r.effects[0].digest, r.effects[1].digest,
            "the digest sees past the cut"
        );
        for _ in 0..KEPT {
            r.push("kv", "put", "b", "k");
        }
        assert_eq!(r.effects.len(), KEPT);
        assert_eq!(r.dropped, 2);
    }
}
