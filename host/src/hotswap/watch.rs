//! Watching files for replacement: plugin components (offered to the
//! [`Swapper`]) and the configuration file (see [`super::config`]).
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

/// Why files cannot be watched.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch {} for changes: {source}", dir.display())]
pub struct WatchError {
    dir: PathBuf,
    #[source]
    source: notify::Error,
}

/// Debounced changes to a set of files.
#[derive(Debug)]
pub struct FileWatch {
    _watcher: RecommendedWatcher,
    rx: mpsc::UnboundedReceiver<PathBuf>,
    files: BTreeSet<PathBuf>,
}

impl FileWatch {
    /// Watches `files` (made absolute; their directories must exist).
    pub fn new(files: impl IntoIterator<Item = PathBuf>) -> Result<FileWatch, WatchError> {
        let files: BTreeSet<PathBuf> = files.into_iter().map(|f| absolute(&f)).collect();
        let (tx, rx) = mpsc::unbounded_channel::<PathBuf>();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
                Ok(e) if matches!(e.kind, EventKind::Create(_) | EventKind::Modify(_)) => {
                    for p in e.paths {
                        let _ = tx.send(p);
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "file watch error"),
            })
            .map_err(|source| WatchError {
                dir: PathBuf::from("."),
                source,
            })?;
        let dirs: BTreeSet<&Path> = files.iter().filter_map(|f| f.parent()).collect();
        for dir in dirs {
            watcher
                .watch(dir, RecursiveMode::NonRecursive)
                .map_err(|source| WatchError {
                    dir: dir.to_path_buf(),
                    source,
                })?;
        }
        Ok(FileWatch {
            _watcher: watcher,
            rx,
            files,
        })
    }

    /// The next set of watched files that changed, once writes to them have
    /// stopped for a moment; `None` when the watch ended.
    pub async fn changed(&mut self) -> Option<BTreeSet<PathBuf>> {
        loop {
            let mut changed = BTreeSet::from([self.rx.recv().await?]);
            loop {
                tokio::select! {
                    p = self.rx.recv() => { changed.insert(p?); }
                    _ = tokio::time::sleep(SETTLE) => break,
                }
            }
            changed.retain(|p| self.files.contains(p));
            if !changed.is_empty() {
                return Some(changed);
            }
        }
    }
}

/// Watches every plugin's file until `shutdown`, offering new contents.
pub fn spawn(swapper: Arc<Swapper>, shutdown: CancellationToken) -> Result<(), WatchError> {
    // File (absolute) → the plugins loaded from it.
    let mut files: BTreeMap<PathBuf, Vec<String>> = BTreeMap::new();
    for (name, slot) in swapper.slots() {
        let path = absolute(&slot.current().spec().path);
        files.entry(path).or_default().push(name.clone());
    }
    let mut watch = FileWatch::new(files.keys().cloned())?;
    tokio::spawn(async move {
        loop {
            let changed = tokio::select! {
                _ = shutdown.cancelled() => return,
                c = watch.changed() => match c { Some(c) => c, None => return },
            };
            for path in changed {
                let names = files.get(&path).map(Vec::as_slice).unwrap_or_default();
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
    });
    Ok(())
}

/// `path` made absolute against the working directory, without resolving
/// symlinks (the events name the path as watched).
pub fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}
