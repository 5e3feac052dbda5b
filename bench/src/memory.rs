//! Memory per plugin instance: how much a host's resident memory grows for
//! each further live instance of a plugin (one per pipeline worker, per
//! version during a swap), measured in this process.
//!
//! Why in process: the compiled code of a plugin version is loaded once and
//! shared by every instance (one `InstancePre`), and each instance's linear
//! memory starts as a copy-on-write mapping of the component's initial
//! image, so an instance costs only the pages it writes plus its store. The
//! difference in RSS between one live instance and several shows exactly
//! that, apart from the code.

use std::sync::Arc;

use jetplug::Message;
use jetplug::plugin::{Plugin, PluginInstance};

/// Resident memory of this process in bytes (`VmRSS`); `None` off Linux.
pub fn rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// RSS growth per further live instance of `plugin`, each started (`init`)
/// and having handled `batch`: the mean over `extra` instances beside a
/// first one. `None` when RSS cannot be read.
pub async fn per_instance(
    plugin: &Arc<Plugin>,
    batch: &Arc<[Message]>,
    extra: usize,
) -> anyhow::Result<Option<u64>> {
    let extra = extra.max(1);
    let mut live = Vec::with_capacity(extra + 1);
    let mut first = PluginInstance::new(plugin.clone());
    first.handle(batch.clone()).await?;
    live.push(first);
    let Some(before) = rss() else {
        return Ok(None);
    };
    for _ in 0..extra {
        let mut inst = PluginInstance::new(plugin.clone());
        inst.handle(batch.clone()).await?;
        live.push(inst);
    }
    let after = rss().unwrap_or(before);
    drop(live);
    Ok(Some(after.saturating_sub(before) / extra as u64))
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_process_has_a_resident_size() {
        let rss = super::rss().expect("Linux has /proc/self/status");
        assert!(rss > 1 << 20, "{rss}");
    }
}
