//! Watching plugin files: when one is replaced or rewritten, its new
//! contents are offered to the [`Swapper`].
//!
//! The watch is on each file's directory, not the file, because deploy tools
//! and editors usually write a temporary file and rename it over the old one
//! (the old inode, and a watch on it, simply disappear). Events are
//! debounced so that a file copied in several writes is read once, whole; a
//! half-written file that still slips through fails validation and is
//! refused, and the final write triggers another attempt.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Swapper;

/// Quiet time after the last event before a file is read.
const SETTLE: Duration = Duration::from_millis(300);

/// Why plugin files cannot be watched.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch {} for plugin changes: {source}", dir.display())]
pub struct WatchError {
    dir: PathBuf,
    #[source]
    source: notify::Error,
}

/// Watches every plugin's file until `shutdown`.
pub fn spawn(swapper: Arc<Swapper>, shutdown: CancellationToken) -> Result<(), WatchError> {
    // File (absolute) → the plugins loaded from it.
    let mut files: BTreeMap<PathBuf, Vec<String>> = BTreeMap::new();
    for (name, slot) in swapper.slots() {
        let path = absolute(&slot.current().spec().path);
        files.entry(path).or_default().push(name.clone());
    }
    let (tx, rx) = mpsc::unbounded_channel::<PathBuf>();
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(e) if matches!(e.kind, EventKind::Create(_) | EventKind::Modify(_)) => {
                for p in e.paths {
                    let _ = tx.send(p);
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "plugin file watch error"),
        })
        .map_err(|source| WatchError {
            dir: PathBuf::from("."),
            source,
        })?;
    let dirs: BTreeSet<PathBuf> = files
        .keys()
        .filter_map(|f| f.parent().map(Path::to_path_buf))
        .collect();
    for dir in dirs {
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(|source| WatchError {
                dir: dir.clone(),
                source,
            })?;
    }
    tokio::spawn(run(watcher, rx, files, swapper, shutdown));
    Ok(())
}

async fn run(
    _watcher: RecommendedWatcher,
    mut rx: mpsc::UnboundedReceiver<PathBuf>,
    files: BTreeMap<PathBuf, Vec<String>>,
    swapper: Arc<Swapper>,
    shutdown: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return,
            p = rx.recv() => match p { Some(p) => p, None => return },
        };
        let mut changed = BTreeSet::from([first]);
        // Wait until the writes stop.
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                p = rx.recv() => match p { Some(p) => { changed.insert(p); } None => return },
                _ = tokio::time::sleep(SETTLE) => break,
            }
        }
        for path in changed {
            let Some(names) = files.get(&path) else {
                continue;
            };
            let bytes = match tokio::fs::read(&path).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e,
                        "plugin file changed but cannot be read; the running version stays");
                    continue;
                }
            };
            for name in names {
                let _ = swapper.offer(name, bytes.clone(), path.clone()).await;
            }
        }
    }
}

/// `path` made absolute against the working directory, without resolving
/// symlinks (the events name the path as watched).
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}
