//! The house is one-way: a module of `host/src` imports only modules of a
//! lower layer (docs/architecture.md draws the same table). Read from the
//! source text: every `crate::` path outside comments names the top-level
//! module it reaches into.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Layers from the bottom up; a module may import only from rows above its own.
const LAYERS: &[&[&str]] = &[
    &["units", "subject", "redact", "metrics", "wit"],
    &["config", "bindings"],
    &["telemetry", "engine"],
    &["capability"],
    &["plugin"],
    &["jetstream", "authoring"],
    &["deadletter", "hotswap", "replay", "capture"],
    &["pipeline"],
    &["admin"],
    &["host"],
    &["cli"],
];

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|row| row.contains(&module))
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules named by `crate::` paths in `code` (brace groups
/// such as `crate::{a::X, b}` included).
fn imported(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.extend(head(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            out.extend(head(&item));
        } else {
            out.extend(head(rest));
        }
    }
    out
}

fn head(path: &str) -> Option<String> {
    let name: String = path
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty() && name != "self").then_some(name)
}

/// The code of a file without comment lines (doc links are not imports).
fn code(text: &str) -> String {
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn every_module_imports_only_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    assert!(
        files.len() > 50,
        "read {} files under {}",
        files.len(),
        src.display()
    );
    let mut wrong = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap_or(file);
        let first = rel
            .components()
            .next()
            .map(|c| {
                c.as_os_str()
                    .to_string_lossy()
                    .trim_end_matches(".rs")
                    .to_owned()
            })
            .unwrap_or_default();
        if first == "lib" || first == "main" {
            continue;
        }
        let Some(own) = layer(&first) else {
            wrong.push(format!(
                "{}: module `{first}` is in no layer",
                rel.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for target in imported(&code(&text)) {
            if target == first {
                continue;
            }
            match layer(&target) {
                Some(l) if l < own => {}
                Some(_) => wrong.push(format!(
                    "{}: `{first}` imports `{target}`, which is not in a lower layer",
                    rel.display()
                )),
                None => wrong.push(format!(
                    "{}: imports `{target}`, which is in no layer",
                    rel.display()
                )),
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_reader_sees_grouped_imports() {
    let found =
        imported("use crate::{config::{A, B}, plugin::C};\nlet x = crate::units::parse(y);");
    let want: BTreeSet<String> = ["config", "plugin", "units"].map(String::from).into();
    assert_eq!(found, want);
}

#[test]
fn the_table_matches_the_architecture_page() {
    let page = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/architecture.md");
    let text = std::fs::read_to_string(&page).unwrap_or_default();
    for row in LAYERS {
        let line = row.join(" ");
        assert!(
            text.contains(&line),
            "{} does not draw the layer `{line}`",
            page.display()
        );
    }
}

/// Errors at the library's edges are typed: no `Result<_, String>` in
/// `host/src` outside the command line.
#[test]
fn no_string_errors_outside_the_cli() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut found = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap_or(file);
        if rel.starts_with("cli") {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for line in code(&text).lines() {
            let flat = line.replace(' ', "");
            if flat.contains("Result<") && flat.contains(",String>") {
                found.push(format!("{}: {}", rel.display(), line.trim()));
            }
        }
    }
    assert!(found.is_empty(), "string errors:\n{}", found.join("\n"));
}
