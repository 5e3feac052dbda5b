//! The one way tests write a `jetplug.toml`: [`TestConfig`], a document
//! built in code (values are typed TOML, quoting and escaping are the toml
//! crate's), written to a file for `jetplug` processes or loaded in process.

use std::path::{Path, PathBuf};

use anyhow::Context;
use toml::{Table, Value};

/// A `jetplug.toml` under construction.
///
/// ```ignore
/// let config = TestConfig::events(dir, &nats.url())
///     .plugin("p", plugins::TEST_NOOP)
///     .pipeline("main", &["EVENTS"], "p")
///     .set("pipeline.main", "batch", 20)
///     .load_in(dir)?;
/// ```
#[derive(Debug, Clone)]
pub struct TestConfig {
    doc: Table,
}

impl TestConfig {
    /// `[nats] url` and `[engine] cache_dir = DIR/cache`, nothing else.
    pub fn new(dir: &Path, nats_url: &str) -> Self {
        TestConfig { doc: Table::new() }
            .set("nats", "url", nats_url)
            .set(
                "engine",
                "cache_dir",
                dir.join("cache").display().to_string(),
            )
    }

    /// A config file as it is (an example's), to point at a test's
    /// servers and plugins with [`TestConfig::set`].
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        let doc = text
            .parse()
            .with_context(|| format!("{} is not TOML", path.display()))?;
        Ok(TestConfig { doc })
    }

    /// The names of the `[[pipeline]]` entries, in order.
    pub fn pipelines(&self) -> Vec<String> {
        match self.doc.get("pipeline") {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|p| p.get("name").and_then(Value::as_str).map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// [`TestConfig::new`] with streams `EVENTS` (`events.>`) and `DLQ` (`dlq.>`).
    pub fn events(dir: &Path, nats_url: &str) -> Self {
        Self::new(dir, nats_url)
            .stream("EVENTS", &["events.>"])
            .stream("DLQ", &["dlq.>"])
    }

    /// [`TestConfig::events`] with plugin `p` at `plugin` and pipeline
    /// `main` running it on EVENTS: the shape most tests need.
    pub fn main(dir: &Path, nats_url: &str, plugin: impl AsRef<Path>) -> Self {
        Self::events(dir, nats_url)
            .plugin("p", plugin)
            .pipeline("main", &["EVENTS"], "p")
    }

    /// [`TestConfig::events`] with the no-op test plugin as `noop` and
    /// pipeline `main` running it on EVENTS.
    pub fn noop(dir: &Path, nats_url: &str) -> Self {
        Self::events(dir, nats_url)
            .plugin("noop", crate::plugins::TEST_NOOP)
            .pipeline("main", &["EVENTS"], "noop")
    }

    /// A `[[stream]]` named `name` taking `subjects`.
    pub fn stream(self, name: &str, subjects: &[&str]) -> Self {
        self.push("stream", name)
            .set(&format!("stream.{name}"), "subjects", subjects.to_vec())
    }

    /// `[database.NAME] url`.
    pub fn database(self, name: &str, url: &str) -> Self {
        self.set(&format!("database.{name}"), "url", url)
    }

    /// `[plugin.NAME] path`.
    pub fn plugin(self, name: &str, path: impl AsRef<Path>) -> Self {
        let path = path.as_ref().display().to_string();
        self.set(&format!("plugin.{name}"), "path", path)
    }

    /// A `[[pipeline]]` named `name` running `plugin` on `streams`, with
    /// `batch_max_wait = "20ms"` (tests should not wait for full batches).
    pub fn pipeline(self, name: &str, streams: &[&str], plugin: &str) -> Self {
        let at = format!("pipeline.{name}");
        self.push("pipeline", name)
            .set(&at, "streams", streams.to_vec())
            .set(&at, "plugin", plugin)
            .set(&at, "batch_max_wait", "20ms")
    }

    /// Sets `key` in the table at `at`: a section (`nats`, `host`,
    /// `admin`, `engine`, `breaker`), a named one (`plugin.NAME`,
    /// `database.NAME`, `tenant.NAME`), an array entry by its name
    /// (`pipeline.NAME`, `stream.NAME`), or a table inside any of those
    /// (`plugin.NAME.grants`, `plugin.NAME.config`, `pipeline.NAME.backoff`).
    ///
    /// # Panics
    /// When `at` names an array entry that was not added: a mistake in the
    /// test itself.
    pub fn set(mut self, at: &str, key: &str, value: impl Into<Value>) -> Self {
        table_at(&mut self.doc, at).insert(key.to_owned(), value.into());
        self
    }

    /// Adds the table at `at`, empty if it is new (`[kv.cache]`).
    pub fn table(mut self, at: &str) -> Self {
        table_at(&mut self.doc, at);
        self
    }

    /// Removes `key` from the table at `at` (see [`TestConfig::set`]).
    pub fn unset(mut self, at: &str, key: &str) -> Self {
        table_at(&mut self.doc, at).remove(key);
        self
    }

    /// Merges a TOML fragment as if it were written after the table at
    /// `at`: its plain keys (`"max_deliver = 3\nbackoff = { .. }"`) go to
    /// that table, the sections it declares (`[plugin.dl]`, `[admin]`,
    /// `[tenant.a]`) merge into the document. For tests that take extra
    /// keys as a parameter; the fragment is parsed, so a typo fails here.
    pub fn merge(mut self, at: &str, fragment: &str) -> anyhow::Result<Self> {
        let extra: Table = fragment
            .parse()
            .with_context(|| format!("test config fragment for `{at}`:\n{fragment}"))?;
        for (k, v) in extra {
            if SECTIONS.contains(&k.as_str()) && v.is_table() {
                merge_into(sub_table(&mut self.doc, &k), v);
            } else {
                table_at(&mut self.doc, at).insert(k, v);
            }
        }
        Ok(self)
    }

    /// The document as TOML text.
    pub fn text(&self) -> String {
        // Plain tables first, then the arrays of tables (TOML needs a
        // table's keys before its sub-tables; the toml crate orders them).
        toml::to_string(&self.doc).unwrap_or_else(|e| panic!("test config serializes: {e}"))
    }

    /// Writes the document to `path` and returns it.
    pub fn write(&self, path: &Path) -> anyhow::Result<PathBuf> {
        std::fs::write(path, self.text()).with_context(|| format!("write {}", path.display()))?;
        Ok(path.to_path_buf())
    }

    /// Writes `DIR/jetplug.toml` and returns its path.
    pub fn write_in(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        self.write(&dir.join("jetplug.toml"))
    }

    /// Writes `DIR/jetplug.toml` and returns its path as a CLI argument.
    pub fn file_in(&self, dir: &Path) -> anyhow::Result<String> {
        Ok(self.write_in(dir)?.display().to_string())
    }

    /// Writes `DIR/jetplug.toml` and loads it as `jetplug run` would.
    pub fn load_in(&self, dir: &Path) -> anyhow::Result<jetplug::config::Config> {
        let path = self.write_in(dir)?;
        Ok(jetplug::config::Config::load(&path)?)
    }

    /// Adds an entry named `name` to the array of tables `array`.
    fn push(mut self, array: &str, name: &str) -> Self {
        let entries = self
            .doc
            .entry(array.to_owned())
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(a) = entries {
            let mut t = Table::new();
            t.insert("name".to_owned(), name.into());
            a.push(Value::Table(t));
        }
        self
    }
}

/// The top-level sections of a `jetplug.toml` written as tables.
const SECTIONS: &[&str] = &[
    "nats",
    "host",
    "admin",
    "engine",
    "telemetry",
    "plugin",
    "database",
    "kv",
    "tenant",
];

/// Deep-merges `v` (a table) into `into`.
fn merge_into(into: &mut Table, v: Value) {
    let Value::Table(t) = v else { return };
    for (k, v) in t {
        match (into.get_mut(&k), v) {
            (Some(Value::Table(_)), v @ Value::Table(_)) => merge_into(sub_table(into, &k), v),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

/// The table at a dotted path, created when missing (see [`TestConfig::set`]).
fn table_at<'a>(doc: &'a mut Table, at: &str) -> &'a mut Table {
    let mut parts = at.split('.');
    let first = parts.next().unwrap_or_default();
    let mut table: &mut Table = if matches!(first, "pipeline" | "stream") {
        let name = parts.next().unwrap_or_default();
        let entry = match doc.get_mut(first) {
            Some(Value::Array(a)) => a.iter_mut().find_map(|v| match v {
                Value::Table(t) if t.get("name").and_then(Value::as_str) == Some(name) => Some(t),
                _ => None,
            }),
            _ => None,
        };
        entry.unwrap_or_else(|| panic!("test config: no [[{first}]] named `{name}` was added"))
    } else {
        sub_table(doc, first)
    };
    for part in parts {
        table = sub_table(table, part);
    }
    table
}

fn sub_table<'a>(t: &'a mut Table, key: &str) -> &'a mut Table {
    let v = t
        .entry(key.to_owned())
        .or_insert_with(|| Value::Table(Table::new()));
    if !v.is_table() {
        *v = Value::Table(Table::new());
    }
    match v {
        Value::Table(t) => t,
        _ => unreachable!("replaced by a table above"),
    }
}

/// `DIR/jetplug.toml` of [`TestConfig::noop`]; returns its path.
pub fn noop_config(dir: &Path, url: &str) -> anyhow::Result<String> {
    TestConfig::noop(dir, url).file_in(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_what_jetplug_loads() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let config = TestConfig::main(
            dir.path(),
            "nats://127.0.0.1:4222",
            crate::plugins::TEST_NOOP,
        )
        .set("pipeline.main", "batch", 20)
        .set("pipeline.main.backoff", "initial", "100ms")
        .set("plugin.p.grants", "publish", vec!["out.>"])
        .merge(
            "pipeline.main",
            "max_deliver = 3\n[plugin.p.config]\ntag = \"t\"\n[admin]\naddress = \"127.0.0.1:1\"",
        )?
        .set("host", "shutdown_timeout", "20s");
        let text = config.text();
        let loaded = config.load_in(dir.path())?;
        assert_eq!(loaded.pipelines.len(), 1, "{text}");
        assert_eq!(loaded.pipelines[0].batch, 20, "{text}");
        assert_eq!(loaded.pipelines[0].max_deliver, 3, "{text}");
        assert_eq!(loaded.streams.len(), 2, "{text}");
        assert!(text.contains("\"out.>\""), "{text}");
        assert_eq!(loaded.plugins["p"].config["tag"].to_string(), "t", "{text}");
        assert_eq!(loaded.plugins["p"].grants.publish, ["out.>"], "{text}");
        assert!(loaded.admin.address.is_some(), "{text}");
        Ok(())
    }

    #[test]
    fn a_bad_fragment_is_named() {
        let dir = Path::new("/tmp");
        let e = TestConfig::main(dir, "nats://x", "/p.wasm")
            .merge("pipeline.main", "max_deliver = ")
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(e.contains("fragment for `pipeline.main`"), "{e}");
    }
}
