//! The WIT contract as an artifact: the exact files the host was built
//! against, embedded at build time, so `jetplug wit` can hand plugin authors
//! outside this repository the package their component must target.
//!
//! Compatibility rule: the WIT is the product's public API. Any change to it
//! bumps the package version; the host keeps loading components built
//! against every version it has shipped (listed in [`SHIPPED`]). Additions
//! bump the patch version (as WASI does): wasmtime links a component built
//! against `0.1.0` to the host's `0.1.1` interfaces by semver, so older
//! components load unchanged. Earlier packages are kept in `wit/<version>/`.

use std::path::{Path, PathBuf};

macro_rules! version {
    () => {
        "0.1.1"
    };
}

/// The package the host implements today.
pub const PACKAGE: &str = concat!("jetplug:plugin@", version!());

/// The version part of [`PACKAGE`].
pub const VERSION: &str = version!();

/// The world every plugin targets.
pub const WORLD: &str = "event-plugin";

/// Every package version the host has shipped and still loads, oldest first.
pub const SHIPPED: &[&str] = &["0.1.0", "0.1.1"];

/// The WIT files of the current package: (file name, contents).
pub const FILES: &[(&str, &str)] = &[("world.wit", include_str!("../../wit/world.wit"))];

/// The WIT files of every earlier shipped package: (version, file name, contents).
pub const EARLIER: &[(&str, &str, &str)] = &[(
    "0.1.0",
    "world.wit",
    include_str!("../../wit/0.1.0/world.wit"),
)];

/// The WIT files of the package `version` (current or earlier); `None` for
/// a version the host never shipped.
pub fn files(version: &str) -> Option<Vec<(&'static str, &'static str)>> {
    if version == VERSION {
        return Some(FILES.to_vec());
    }
    let files: Vec<_> = EARLIER
        .iter()
        .filter(|(v, _, _)| *v == version)
        .map(|(_, name, text)| (*name, *text))
        .collect();
    (!files.is_empty()).then_some(files)
}

/// Why the WIT could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {}", path.display())]
pub struct WriteError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
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
        assert_eq!(PACKAGE, format!("jetplug:plugin@{VERSION}"));
        assert_eq!(SHIPPED.last().copied(), Some(VERSION));
        assert!(world.contains(&format!("world {WORLD} ")));
    }

    #[test]
    fn every_shipped_version_has_its_files() {
        for version in SHIPPED {
            let files = files(version).expect("a shipped version has its WIT");
            assert!(
                files
                    .iter()
                    .any(|(_, t)| t.contains(&format!("package jetplug:plugin@{version};"))),
                "{version}"
            );
        }
        assert!(files("9.9.9").is_none());
    }
}
