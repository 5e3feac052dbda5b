//! Masks secrets in everything the host prints. Every [`Secret`] loaded is
//! registered here; the log writer and the CLI's error output pass their
//! text through [`text`], so a secret that reaches a message by any path
//! (a library's debug log, an error echoing a URL) comes out as `***`.
//!
//! [`Secret`]: crate::config::Secret

use std::borrow::Cow;
use std::io::Write;
use std::sync::RwLock;

static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Shortest value masked (shorter ones would mask ordinary words).
const MIN_LEN: usize = 4;

/// Masks `secret` from now on (also its URL-encoded form).
pub fn register(secret: &str) {
    if secret.len() < MIN_LEN {
        return;
    }
    let mut all = SECRETS.write().unwrap_or_else(|e| e.into_inner());
    for form in [secret.to_owned(), url_encoded(secret)] {
        if !all.contains(&form) {
            all.push(form);
        }
    }
    // Longest first, so a secret containing another is masked whole.
    all.sort_by_key(|s| std::cmp::Reverse(s.len()));
}

/// `s` percent-encoded but for RFC 3986's unreserved characters (the
/// form a secret takes in a URL, and a safe query-string value).
pub fn url_encoded(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `text` with every registered secret replaced by `***`.
pub fn text(text: &str) -> Cow<'_, str> {
    let all = SECRETS.read().unwrap_or_else(|e| e.into_inner());
    if !all.iter().any(|s| text.contains(s.as_str())) {
        return Cow::Borrowed(text);
    }
    let mut out = text.to_owned();
    for s in all.iter() {
        out = out.replace(s.as_str(), "***");
    }
    Cow::Owned(out)
}

/// The password in a URL's userinfo (`scheme://user:PASSWORD@host`), masked.
pub fn url(url: &str) -> Cow<'_, str> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Cow::Borrowed(url);
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return Cow::Borrowed(url);
    };
    match userinfo.split_once(':') {
        Some((user, _)) => Cow::Owned(format!("{scheme}://{user}:***@{host}")),
        None => Cow::Borrowed(url),
    }
}

/// Masks the password of `url` (`scheme://user:PASSWORD@host`) from now on.
pub fn register_url(url: &str) {
    if let Some((_, rest)) = url.split_once("://")
        && let Some((userinfo, _)) = rest.split_once('@')
        && let Some((_, password)) = userinfo.split_once(':')
    {
        register(password);
    }
}

/// A writer that masks secrets (for the log output).
#[derive(Debug)]
pub struct Writer<W>(pub W);

impl<W: Write> Write for Writer<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match std::str::from_utf8(buf) {
            Ok(s) => {
                self.0.write_all(text(s).as_bytes())?;
                Ok(buf.len())
            }
            Err(_) => self.0.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_registered_secrets_and_url_passwords() {
        register("s3cr3t-value/x");
        assert_eq!(text("token=s3cr3t-value/x!"), "token=***!");
        assert_eq!(text("enc=s3cr3t-value%2Fx"), "enc=***");
        assert_eq!(text("nothing here"), "nothing here");
        assert_eq!(
            url("postgres://u:pw@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(url("nats://h:4222"), "nats://h:4222");
        let mut out = Vec::new();
        Writer(&mut out).write_all(b"a s3cr3t-value/x b").ok();
        assert_eq!(out, b"a *** b");
    }
}
