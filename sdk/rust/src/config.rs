//! The plugin's `config` table, with parsing whose errors name the key.

use std::str::FromStr;

/// The `config` table given to `init` (`[plugin.NAME.config]`), as
/// key/value strings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    pairs: Vec<(String, String)>,
}

/// Why a configuration was refused: the key (when one is to blame) and the
/// reason. Shown to the operator as `config key `KEY`: REASON`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The offending key, if any.
    pub key: Option<String>,
    /// What is wrong.
    pub reason: String,
}

impl ConfigError {
    /// An error about `key`.
    pub fn key(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            key: Some(key.into()),
            reason: reason.into(),
        }
    }

    /// An error not tied to one key.
    pub fn other(reason: impl Into<String>) -> Self {
        ConfigError {
            key: None,
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.key {
            Some(k) => write!(f, "config key `{k}`: {}", self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// A config from key/value pairs (a later pair wins over an earlier one).
    pub fn new(pairs: Vec<(String, String)>) -> Self {
        Config { pairs }
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `key`, or `default`.
    pub fn get_or<'a>(&'a self, key: &str, default: &'a str) -> &'a str {
        self.get(key).unwrap_or(default)
    }

    /// The value of `key`; an error naming it when missing or empty.
    pub fn require(&self, key: &str) -> Result<&str, ConfigError> {
        match self.get(key) {
            Some(v) if !v.is_empty() => Ok(v),
            Some(_) => Err(ConfigError::key(key, "must not be empty")),
            None => Err(ConfigError::key(key, "is required")),
        }
    }

    /// `key` parsed as `T`, or `None` when unset; a value that does not
    /// parse is an error naming the key, the value and why.
    pub fn parse<T>(&self, key: &str) -> Result<Option<T>, ConfigError>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse()
                .map(Some)
                .map_err(|e| ConfigError::key(key, format!("`{v}` is not valid: {e}"))),
        }
    }

    /// `key` parsed as `T`, or `default` when unset.
    pub fn parse_or<T>(&self, key: &str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        Ok(self.parse(key)?.unwrap_or(default))
    }

    /// Refuses keys other than `known` (catches typos at load time).
    pub fn deny_unknown(&self, known: &[&str]) -> Result<(), ConfigError> {
        match self
            .pairs
            .iter()
            .find(|(k, _)| !known.contains(&k.as_str()))
        {
            None => Ok(()),
            Some((k, _)) => Err(ConfigError::key(
                k.as_str(),
                format!("unknown key (known: {})", known.join(", ")),
            )),
        }
    }

    /// Every pair, in the order given.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Config {
        Config::new(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn errors_name_the_key() {
        let c = config(&[("batch", "ten"), ("table", "")]);
        let e = c.parse::<u32>("batch").err().map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("config key `batch`: `ten` is not valid: invalid digit found in string")
        );
        assert_eq!(
            c.require("table").err().map(|e| e.to_string()).as_deref(),
            Some("config key `table`: must not be empty")
        );
        assert_eq!(
            c.require("database")
                .err()
                .map(|e| e.to_string())
                .as_deref(),
            Some("config key `database`: is required")
        );
        let unknown = c.deny_unknown(&["batch"]).err().map(|e| e.to_string());
        assert_eq!(
            unknown.as_deref(),
            Some("config key `table`: unknown key (known: batch)")
        );
    }

    #[test]
    fn defaults_and_later_pairs_win() {
        let c = config(&[("n", "1"), ("n", "2")]);
        assert_eq!(c.parse_or("n", 0u32), Ok(2));
        assert_eq!(c.parse_or("m", 5u32), Ok(5));
        assert_eq!(c.get_or("db", "events"), "events");
    }
}
