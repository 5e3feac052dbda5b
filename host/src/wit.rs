//! The WIT contract as an artifact: the exact files the host was built
//! against, embedded at build time, so `jetplug wit` can hand plugin authors
//! outside this repository the package their component must target.
//!
//! Compatibility rule: the WIT is the product's public API. Any change to it
//! bumps the package version; the host keeps loading components built
//! against every version it has shipped (listed in [`SHIPPED`]).

use std::path::{Path, PathBuf};

/// The package the host implements today.
pub const PACKAGE: &str = "jetplug:plugin@0.1.0";

/// The world every plugin targets.
pub const WORLD: &str = "event-plugin";

/// Every package version the host has shipped and still loads, oldest first.
pub const SHIPPED: &[&str] = &["0.1.0"];

/// The WIT files of the current package: (file name, contents).
pub const FILES: &[(&str, &str)] = &[("world.wit", include_str!("../../wit/world.wit"))];

/// Why the WIT could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {}", path.display())]
pub struct WriteError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Writes the WIT package into `dir` (created if missing); returns the files
/// written.
pub fn write_to(dir: &Path) -> Result<Vec<PathBuf>, WriteError> {
    write_files(
        dir,
        FILES.iter().map(|(name, text)| ((*name).to_owned(), *text)),
    )
}

/// Writes `(relative path, contents)` pairs below `dir`, creating folders
/// as needed; returns the files written.
pub fn write_files<'a>(
    dir: &Path,
    files: impl IntoIterator<Item = (String, &'a str)>,
) -> Result<Vec<PathBuf>, WriteError> {
    let mut written = Vec::new();
    for (rel, text) in files {
        let path = dir.join(rel);
        let write = || -> std::io::Result<()> {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&path, text)
        };
        write().map_err(|source| WriteError {
            path: path.clone(),
            source,
        })?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_line_matches_the_declared_version() {
        let (_, world) = FILES[0];
        assert!(
            world.contains(&format!("package {PACKAGE};")),
            "world.wit does not declare {PACKAGE}"
        );
        let version = PACKAGE.rsplit('@').next().unwrap_or_default();
        assert_eq!(SHIPPED.last().copied(), Some(version));
        assert!(world.contains(&format!("world {WORLD} ")));
    }
}
