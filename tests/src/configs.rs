//! Configuration files tests write for `jetplug` processes.

use std::path::Path;

/// `DIR/jetplug.toml`: streams EVENTS (`events.>`, plus `extra_stream`
/// lines) and DLQ (`dlq.>`), and pipeline `main` running the no-op plugin
/// on EVENTS. Returns the file's path.
pub fn noop_config(dir: &Path, url: &str, extra_stream: &str) -> anyhow::Result<String> {
    let text = format!(
        r#"
[nats]
url = "{url}"

[engine]
cache_dir = "{cache}"

[[stream]]
name = "EVENTS"
subjects = ["events.>"]
{extra_stream}

[[stream]]
name = "DLQ"
subjects = ["dlq.>"]

[plugin.noop]
path = "{plugin}"

[[pipeline]]
name = "main"
streams = ["EVENTS"]
plugin = "noop"
batch_max_wait = "20ms"
"#,
        cache = dir.join("cache").display(),
        plugin = crate::plugins::TEST_NOOP,
    );
    let path = dir.join("jetplug.toml");
    std::fs::write(&path, text)?;
    Ok(path.display().to_string())
}
