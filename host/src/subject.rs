//! NATS subject patterns: `*` matches one token, `>` matches one or more
//! trailing tokens. Used to check publish grants and tenant boundaries.

/// Whether `subject` (no wildcards) is matched by `pattern`.
pub fn matches(pattern: &str, subject: &str) -> bool {
    let mut pat = pattern.split('.');
    let mut sub = subject.split('.');
    loop {
        match (pat.next(), sub.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(s)) if !s.is_empty() => {}
            (Some(p), Some(s)) if p == s && !s.is_empty() => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether two patterns can match a common subject.
pub fn overlaps(a: &str, b: &str) -> bool {
    let mut x = a.split('.');
    let mut y = b.split('.');
    loop {
        match (x.next(), y.next()) {
            (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
            (Some(p), Some(q)) if p == "*" || q == "*" || p == q => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether every subject matched by `inner` is also matched by `outer`.
pub fn contains(outer: &str, inner: &str) -> bool {
    let mut o = outer.split('.');
    let mut i = inner.split('.');
    loop {
        match (o.next(), i.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(t)) if t != ">" => {}
            (Some(p), Some(t)) if p == t && p != "*" && p != ">" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Why a subject cannot be published to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    #[error("subject is empty")]
    Empty,
    #[error("subject `{0}` has an empty token")]
    EmptyToken(String),
    #[error("subject `{0}` contains a wildcard; publish needs a concrete subject")]
    Wildcard(String),
    #[error("subject `{0}` contains whitespace")]
    Whitespace(String),
}

/// Checks that `subject` is a valid concrete subject to publish to:
/// non-empty tokens, no wildcards, no whitespace.
pub fn validate_publish_subject(subject: &str) -> Result<(), SubjectError> {
    if subject.is_empty() {
        return Err(SubjectError::Empty);
    }
    for token in subject.split('.') {
        if token.is_empty() {
            return Err(SubjectError::EmptyToken(subject.to_owned()));
        }
        if token == "*" || token == ">" {
            return Err(SubjectError::Wildcard(subject.to_owned()));
        }
        if token.chars().any(char::is_whitespace) {
            return Err(SubjectError::Whitespace(subject.to_owned()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(matches("learning.>", "learning.quiz.answered"));
        assert!(!matches("learning.>", "learning"));
        assert!(matches("learning.*.answered", "learning.quiz.answered"));
        assert!(!matches("learning.*.answered", "learning.quiz.started"));
        assert!(!matches("learning.*", "learning.quiz.answered"));
        assert!(matches(">", "a"));
        assert!(matches("a.b", "a.b"));
        assert!(!matches("a.b", "a.b.c"));
        assert!(!matches("a.*", "a."));
    }

    #[test]
    fn overlapping_patterns() {
        assert!(overlaps("learning.>", "learning.quiz.*"));
        assert!(overlaps("learning.*.answered", "learning.quiz.>"));
        assert!(!overlaps("focus.>", "learning.>"));
        assert!(!overlaps("a.b", "a.b.c"));
        assert!(overlaps("a.*", "*.b"));
    }

    #[test]
    fn containment() {
        assert!(contains("learning.>", "learning.quiz.*"));
        assert!(contains("learning.>", "learning.>"));
        assert!(contains(">", "a.b"));
        assert!(contains("a.*.c", "a.b.c"));
        assert!(contains("a.*.c", "a.*.c"));
        assert!(!contains("a.*.c", "a.>"));
        assert!(!contains("learning.quiz.*", "learning.>"));
        assert!(!contains("a.b", "a.*"));
        assert!(!contains("tenant-a.>", "tenant-b.x"));
    }

    #[test]
    fn publish_subjects() {
        assert!(validate_publish_subject("dlq.learning.indexer").is_ok());
        assert!(validate_publish_subject("").is_err());
        assert!(validate_publish_subject("a..b").is_err());
        assert!(validate_publish_subject("a.>").is_err());
        assert!(validate_publish_subject("a b").is_err());
    }
}
