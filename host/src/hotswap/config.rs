//! Watching the configuration file while the host runs.
//!
//! An edit is read and validated like at start. An invalid file is reported
//! (file, line, key, reason) and changes nothing: the host keeps running the
//! configuration it has. A valid edit of a `[plugin.NAME]` section (file,
//! grants, limits, config) reloads that plugin through the [`Swapper`] —
//! validated, then swapped, like a new version. Other sections (streams,
//! pipelines, NATS, ...) are not changed under running consumers; the host
//! says which ones need a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::Swapper;
use super::watch::{FileWatch, WatchError};
use crate::config::{Config, ConfigError};
use crate::metrics::{Metrics, labels};
use crate::plugin::PluginSpec;

/// Reads and checks the configuration file, as at start.
pub type Loader = fn(&Path) -> Result<Config, ConfigError>;

/// Watches `path` until `shutdown`; `running` is the configuration the host
/// started with, `load` reads an edit (the host's own loader, so an edit is
/// checked exactly as the file was at start).
pub fn spawn(
    path: PathBuf,
    running: Config,
    load: Loader,
    swapper: Arc<Swapper>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(), WatchError> {
    let mut watch = FileWatch::new([path.clone()])?;
    tokio::spawn(async move {
        let mut running = running;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                c = watch.changed() => if c.is_none() { return },
            }
            let outcome = reload(&path, load, &mut running, &swapper).await;
            metrics
                .config_reloads
                .get_or_create(&labels(&[("outcome", outcome)]))
                .inc();
        }
    });
    Ok(())
}

async fn reload(
    path: &Path,
    load: Loader,
    running: &mut Config,
    swapper: &Swapper,
) -> &'static str {
    let new = match load(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e,
                "the edited configuration is invalid; the host keeps running the configuration it has");
            return "invalid";
        }
    };
    let mut refused = false;
    for (name, pc) in &new.plugins {
        let Some(old) = running.plugins.get(name) else {
            continue;
        };
        if old == pc || !swapper.slots().contains_key(name) {
            continue;
        }
        match swapper
            .reconfigure(name, PluginSpec::from_config(name, pc))
            .await
        {
            Ok(_) => {
                running.plugins.insert(name.clone(), pc.clone());
            }
            Err(_) => refused = true,
        }
    }
    let pending = needs_restart(running, &new);
    if !pending.is_empty() {
        tracing::warn!(sections = %pending.join(", "),
            "configuration changed; these changes take effect after a restart");
    }
    match (refused, pending.is_empty()) {
        (true, _) => "refused",
        (false, false) => "restart-needed",
        (false, true) => "applied",
    }
}

/// The sections of `new` that differ from `running` and are not applied live.
fn needs_restart(running: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut check = |differs: bool, name: &'static str| {
        if differs {
            out.push(name);
        }
    };
    check(running.nats != new.nats, "[nats]");
    check(running.host != new.host, "[host]");
    check(running.admin != new.admin, "[admin]");
    check(running.engine != new.engine, "[engine]");
    check(running.streams != new.streams, "[[stream]]");
    check(running.pipelines != new.pipelines, "[[pipeline]]");
    check(running.databases != new.databases, "[database]");
    check(running.buckets != new.buckets, "[kv]");
    check(running.tenants != new.tenants, "[tenant]");
    check(
        running.plugins.keys().ne(new.plugins.keys()),
        "[plugin] (added or removed)",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changed_sections_need_a_restart() {
        let a = Config::default();
        let mut b = a.clone();
        assert!(needs_restart(&a, &b).is_empty());
        b.host.shutdown_timeout = crate::config::Dur(std::time::Duration::from_secs(1));
        b.nats.url = crate::config::ServerList::from("nats://elsewhere:4222");
        assert_eq!(needs_restart(&a, &b), vec!["[nats]", "[host]"]);
    }
}
