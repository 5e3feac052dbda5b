//! `jetplug new`: the files of a self-contained plugin project in Rust,
//! Python or JavaScript — the WIT, a build file, a handler with one example
//! of each decision, fixtures with expectations and a README. Everything is
//! embedded in the binary (templates and the SDKs from `sdk/`), so a project
//! builds outside this repository with registry packages only.

use std::path::{Path, PathBuf};

use crate::wit;

/// The language of a new plugin project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust, on the vendored `jetplug-sdk` crate (cargo, wasm32-wasip2).
    Rust,
    /// Python, built with componentize-py.
    Python,
    /// JavaScript, built with componentize-js.
    Js,
}

/// Why a project could not be created.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    #[error(
        "`{0}` is not a usable plugin name: use lowercase letters, digits and `-`, starting with a letter"
    )]
    BadName(String),
    #[error("{} already exists and is not empty: choose another --dir", .0.display())]
    NotEmpty(PathBuf),
    #[error(transparent)]
    Write(#[from] wit::WriteError),
}

macro_rules! embed {
    ($($path:literal => $file:literal),* $(,)?) => {
        &[$(($path, include_str!(concat!("../../../sdk/", $file)))),*]
    };
}

/// Files with `{{name}}` / `{{crate}}` placeholders.
const RUST: &[(&str, &str)] = embed! {
    "Cargo.toml" => "templates/rust/Cargo.toml",
    ".cargo/config.toml" => "templates/rust/.cargo/config.toml",
    ".gitignore" => "templates/rust/.gitignore",
    "src/lib.rs" => "templates/rust/src/lib.rs",
    "fixtures/orders.jsonl" => "templates/rust/fixtures/orders.jsonl",
    "README.md" => "templates/rust/README.md",
};

/// The Rust SDK, vendored as it is (its `../../wit` is the project's `wit/`).
const RUST_SDK: &[(&str, &str)] = embed! {
    "vendor/jetplug-sdk/Cargo.toml" => "rust/Cargo.toml",
    "vendor/jetplug-sdk/src/lib.rs" => "rust/src/lib.rs",
    "vendor/jetplug-sdk/src/__private.rs" => "rust/src/__private.rs",
    "vendor/jetplug-sdk/src/config.rs" => "rust/src/config.rs",
    "vendor/jetplug-sdk/src/decision.rs" => "rust/src/decision.rs",
    "vendor/jetplug-sdk/src/error.rs" => "rust/src/error.rs",
    "vendor/jetplug-sdk/src/message.rs" => "rust/src/message.rs",
    "vendor/jetplug-sdk/src/kv.rs" => "rust/src/kv.rs",
    "vendor/jetplug-sdk/src/log.rs" => "rust/src/log.rs",
    "vendor/jetplug-sdk/src/publish.rs" => "rust/src/publish.rs",
    "vendor/jetplug-sdk/src/sql.rs" => "rust/src/sql.rs",
};

const PYTHON: &[(&str, &str)] = embed! {
    "app.py" => "templates/python/app.py",
    "Makefile" => "templates/python/Makefile",
    ".gitignore" => "templates/python/.gitignore",
    "fixtures/orders.jsonl" => "templates/python/fixtures/orders.jsonl",
    "README.md" => "templates/python/README.md",
    "wit/plugin.wit" => "templates/python/wit/plugin.wit",
};

const PYTHON_SDK: &[(&str, &str)] = embed! { "jetplug.py" => "python/jetplug.py" };

const JS: &[(&str, &str)] = embed! {
    "plugin.js" => "templates/js/plugin.js",
    "package.json" => "templates/js/package.json",
    "build.mjs" => "templates/js/build.mjs",
    ".gitignore" => "templates/js/.gitignore",
    "fixtures/orders.jsonl" => "templates/js/fixtures/orders.jsonl",
    "README.md" => "templates/js/README.md",
    "wit/plugin.wit" => "templates/js/wit/plugin.wit",
};

const JS_SDK: &[(&str, &str)] = embed! { "jetplug.js" => "js/jetplug.js" };

/// Checks a plugin name: it becomes a crate, package and file name.
pub fn validate_name(name: &str) -> Result<(), ScaffoldError> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-')
        && name.len() <= 64;
    if ok {
        Ok(())
    } else {
        Err(ScaffoldError::BadName(name.to_owned()))
    }
}

/// The project's files (relative path, contents) for `name` in `lang`.
pub fn files(name: &str, lang: Lang) -> Result<Vec<(String, String)>, ScaffoldError> {
    validate_name(name)?;
    let (templates, sdk) = match lang {
        Lang::Rust => (RUST, RUST_SDK),
        Lang::Python => (PYTHON, PYTHON_SDK),
        Lang::Js => (JS, JS_SDK),
    };
    let krate = name.replace('-', "_");
    let fill = |t: &str| t.replace("{{name}}", name).replace("{{crate}}", &krate);
    let mut out: Vec<(String, String)> = templates
        .iter()
        .map(|(p, t)| ((*p).to_owned(), fill(t)))
        .collect();
    out.extend(sdk.iter().map(|(p, t)| ((*p).to_owned(), (*t).to_owned())));
    // Rust takes the contract as its root package (unused imports are left
    // out of the component); Python and JS import everything their world
    // lists, so they get a world of their own in wit/plugin.wit with the
    // contract as a dependency.
    let wit_dir = match lang {
        Lang::Rust => "wit",
        Lang::Python | Lang::Js => "wit/deps/jetplug",
    };
    out.extend(
        wit::FILES
            .iter()
            .map(|(p, t)| (format!("{wit_dir}/{p}"), (*t).to_owned())),
    );
    Ok(out)
}

/// Writes a new project into `dir` (created; must not exist or be empty).
/// Returns the files written.
pub fn create(dir: &Path, name: &str, lang: Lang) -> Result<Vec<PathBuf>, ScaffoldError> {
    let files = files(name, lang)?;
    if dir
        .read_dir()
        .is_ok_and(|mut entries| entries.next().is_some())
    {
        return Err(ScaffoldError::NotEmpty(dir.to_path_buf()));
    }
    Ok(wit::write_files(
        dir,
        files.iter().map(|(rel, text)| (rel.clone(), text.as_str())),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for good in ["orders", "my-plugin2"] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in ["", "Orders", "2fast", "a_b", "x-", "a/b", "a b"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_language_gets_wit_fixtures_readme_and_no_placeholder() -> Result<(), ScaffoldError> {
        for lang in [Lang::Rust, Lang::Python, Lang::Js] {
            let files = files("my-orders", lang)?;
            let names: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
            for want in ["fixtures/orders.jsonl", "README.md"] {
                assert!(names.contains(&want), "{lang:?}: {names:?}");
            }
            assert!(
                names.contains(&"wit/world.wit") || names.contains(&"wit/deps/jetplug/world.wit"),
                "{lang:?}: {names:?}"
            );
            for (path, text) in &files {
                assert!(
                    !text.contains("{{name}}") && !text.contains("{{crate}}"),
                    "{path}"
                );
            }
        }
        let rust = files("my-orders", Lang::Rust)?;
        let cargo = rust.iter().find(|(p, _)| p == "Cargo.toml").map(|(_, t)| t);
        assert!(cargo.is_some_and(|t| t.contains("name = \"my-orders\"")));
        let readme = rust.iter().find(|(p, _)| p == "README.md").map(|(_, t)| t);
        assert!(readme.is_some_and(|t| t.contains("release/my_orders.wasm")));
        Ok(())
    }

    #[test]
    fn refuses_a_non_empty_directory() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("keep.txt"), "mine")?;
        let err = create(dir.path(), "x", Lang::Python).err();
        assert!(matches!(err, Some(ScaffoldError::NotEmpty(_))), "{err:?}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("keep.txt"))?,
            "mine"
        );
        Ok(())
    }
}
