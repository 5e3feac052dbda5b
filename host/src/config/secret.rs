//! Secrets in `jetplug.toml`: a value written in the file, `"${ENV_VAR}"`
//! (read from the environment when the file loads), or the file named by
//! the key's `*_file` sibling (`token_file`, `password_file`, `url_file`).
//!
//! A [`Secret`] never prints its value (`Debug` and `Display` show `***`),
//! and every secret loaded is registered with [`crate::redact`], which
//! masks it in log lines and error messages whatever code wrote them.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

use super::Refused;

/// A secret string; `expose` is the only way to its value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// A secret given in code (tests, defaults); registered for redaction.
    pub fn new(value: impl Into<String>) -> Self {
        let s = Secret(value.into());
        crate::redact::register(&s.0);
        s
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        from_text(&text).map_err(serde::de::Error::custom)
    }
}

/// `"${NAME}"` → the environment variable NAME; anything else as written.
pub(super) fn from_text(text: &str) -> Result<Secret, Refused> {
    expand(text).map(Secret::new)
}

/// `"${NAME}"` → the environment variable NAME (set and not empty);
/// anything else as written. For values that are not secret but differ
/// per deployment (a public key), so they are not masked.
pub fn expand(text: &str) -> Result<String, Refused> {
    let Some(name) = text.strip_prefix("${").and_then(|r| r.strip_suffix('}')) else {
        return Ok(text.to_owned());
    };
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(Refused(format!(
            "`${{{name}}}` is not an environment variable reference (letters, digits and `_`)"
        )));
    }
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => Ok(v),
        Ok(_) => Err(Refused(format!("environment variable {name} is empty"))),
        Err(_) => Err(Refused(format!("environment variable {name} is not set"))),
    }
}

/// Fills `value` from `file` (its `*_file` sibling): `(key, reason)` when
/// both are given or the file cannot be read. A trailing newline is not
/// part of the secret.
pub fn from_file(
    value: &mut Option<Secret>,
    file: &Option<PathBuf>,
    key: &str,
) -> Result<(), (String, String)> {
    let Some(path) = file else {
        return Ok(());
    };
    if value.is_some() {
        return Err((
            format!("{key}_file"),
            format!(
                "give either `{}` or `{}_file`, not both",
                last(key),
                last(key)
            ),
        ));
    }
    *value = Some(read(path).map_err(|r| (format!("{key}_file"), r.0))?);
    Ok(())
}

fn last(key: &str) -> &str {
    key.rsplit('.').next().unwrap_or(key)
}

fn read(path: &Path) -> Result<Secret, Refused> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let text = text.trim_end_matches(['\n', '\r']);
    if text.is_empty() {
        return Err(Refused(format!("{} is empty", path.display())));
    }
    Ok(Secret::new(text))
}

/// The NKey user seed in `file`, checked (a bad seed fails the load, not
/// the connection).
pub fn nkey_seed(file: &Path) -> Result<Secret, Refused> {
    let seed = read(file)?;
    let seed = Secret::new(seed.expose().trim());
    match nkeys::KeyPair::from_seed(seed.expose()) {
        Ok(k) if k.key_pair_type() == nkeys::KeyPairType::User => Ok(seed),
        Ok(_) => Err(Refused(format!(
            "{} holds an NKey seed that is not a user seed (`SU…`)",
            file.display()
        ))),
        Err(e) => Err(Refused(format!(
            "{} is not a valid NKey seed: {e}",
            file.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_its_value() {
        let s = Secret::new("hunter2-secret");
        assert_eq!(format!("{s} {s:?}"), "*** Secret(***)");
        assert_eq!(s.expose(), "hunter2-secret");
    }

    #[test]
    fn reads_the_environment() {
        // SAFETY-free: a variable only this test uses.
        let name = "JETPLUG_TEST_SECRET_ENV_7F3A";
        assert!(
            from_text(&format!("${{{name}}}"))
                .expect_err("refused")
                .0
                .contains("not set")
        );
        assert_eq!(from_text("plain").map(|s| s.0), Ok("plain".into()));
        assert!(
            from_text("${bad-name}")
                .expect_err("refused")
                .0
                .contains("not an environment")
        );
    }

    #[test]
    fn file_sibling() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let f = dir.path().join("token");
        std::fs::write(&f, "from-file\n")?;
        let mut v = None;
        from_file(&mut v, &Some(f.clone()), "nats.token").map_err(|e| e.1)?;
        assert_eq!(v.as_ref().map(Secret::expose), Some("from-file"));
        let err = from_file(&mut v, &Some(f), "nats.token").expect_err("refused");
        assert_eq!(err.0, "nats.token_file");
        let mut none = None;
        let missing = from_file(&mut none, &Some(dir.path().join("nope")), "admin.token");
        assert!(missing.expect_err("refused").1.contains("cannot read"));
        Ok(())
    }
}
