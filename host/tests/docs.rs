//! The documentation stays true: every relative link and `#anchor` in the
//! README and docs/ resolves, every `jetplug` subcommand (from the CLI
//! definition) and every configuration key (from the config types) is
//! documented, and every example configuration passes `jetplug check`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use jetplug_tests::{output_text, plugins};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn root() -> PathBuf {
    PathBuf::from(plugins::ROOT)
}

/// README.md and every Markdown file below docs/.
fn pages() -> Result<Vec<PathBuf>, Box<dyn std::error::Error>> {
    let mut out = vec![root().join("README.md")];
    let mut dirs = vec![root().join("docs")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The lines of `text` outside fenced code blocks, with their numbers.
fn prose(text: &str) -> Vec<(usize, &str)> {
    let mut fenced = false;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            out.push((i + 1, line));
        }
    }
    out
}

/// GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for (_, line) in prose(text) {
        if let Some(h) = line.strip_prefix('#') {
            let base = slug(h.trim_start_matches('#'));
            // GitHub numbers repeated headings: name, name-1, ...
            let mut candidate = base.clone();
            let mut n = 0;
            while seen.contains(&candidate) {
                n += 1;
                candidate = format!("{base}-{n}");
            }
            seen.insert(candidate);
        }
    }
    seen
}

/// Every `[text](target)` of a line, outside inline code.
fn links(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_code = false;
    let bytes: Vec<char> = line.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            '`' => in_code = !in_code,
            ']' if !in_code && bytes.get(i + 1) == Some(&'(') => {
                let rest: String = bytes[i + 2..].iter().collect();
                if let Some(end) = rest.find(')') {
                    out.push(rest[..end].to_owned());
                }
            }
            _ => {}
        }
        i += 1;
    }
    out
}

#[test]
fn every_relative_link_and_anchor_resolves() -> TestResult {
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in pages()? {
        let text = std::fs::read_to_string(&page)?;
        let dir = page.parent().unwrap_or(Path::new("."));
        for (n, line) in prose(&text) {
            for target in links(line) {
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                checked += 1;
                let (path, anchor) = match target.split_once('#') {
                    Some((p, a)) => (p, Some(a)),
                    None => (target.as_str(), None),
                };
                let file = if path.is_empty() {
                    page.clone()
                } else {
                    dir.join(path)
                };
                let here = format!("{}:{n}: `{target}`", page.display());
                if !file.exists() {
                    broken.push(format!("{here}: {} does not exist", file.display()));
                    continue;
                }
                if let Some(anchor) = anchor {
                    let target_text = std::fs::read_to_string(&file).unwrap_or_default();
                    if !anchors(&target_text).contains(anchor) {
                        broken.push(format!(
                            "{here}: no heading `#{anchor}` in {}",
                            file.display()
                        ));
                    }
                }
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} links found: is the parser broken?"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    Ok(())
}

#[test]
fn the_link_checker_catches_what_it_should() {
    assert_eq!(
        slug(" `[kv.NAME]` (created at start if missing)"),
        "kvname-created-at-start-if-missing"
    );
    assert_eq!(slug(" Rust — 33 s"), "rust--33-s");
    assert_eq!(
        links("see [a](x.md#y) and `[b](not-a-link)` [c](../z)"),
        ["x.md#y", "../z"]
    );
    let a = anchors("# Title\n```\n# not a heading\n```\n## Same\n## Same\n");
    assert_eq!(
        a.into_iter().collect::<Vec<_>>(),
        ["same", "same-1", "title"]
    );
}

/// All documentation as one text.
fn corpus() -> Result<String, Box<dyn std::error::Error>> {
    let mut all = String::new();
    for page in pages()? {
        all.push_str(&std::fs::read_to_string(page)?);
        all.push('\n');
    }
    Ok(all)
}

#[test]
fn every_subcommand_is_documented() -> TestResult {
    let docs = corpus()?;
    let commands = std::fs::read_to_string(root().join("docs/commands.md"))?;
    let mut missing = Vec::new();
    let cli = jetplug::cli::definition();
    let mut seen = 0;
    for sub in cli.get_subcommands() {
        let name = format!("jetplug {}", sub.get_name());
        seen += 1;
        if !commands.contains(&name) {
            missing.push(format!("`{name}` not in docs/commands.md"));
        }
        for nested in sub.get_subcommands() {
            let name = format!("jetplug {} {}", sub.get_name(), nested.get_name());
            seen += 1;
            if !docs.contains(&name) {
                missing.push(format!("`{name}` not in the docs"));
            }
        }
        for arg in sub.get_arguments() {
            if let Some(long) = arg.get_long()
                && !docs.contains(&format!("--{long}"))
            {
                missing.push(format!(
                    "`jetplug {} --{long}` not in the docs",
                    sub.get_name()
                ));
            }
        }
    }
    assert!(seen > 15, "only {seen} subcommands found");
    assert!(missing.is_empty(), "undocumented:\n{}", missing.join("\n"));
    Ok(())
}

/// The keys a section accepts, read from the config types themselves: a
/// section with an unknown key is refused with the list of known ones.
fn keys_of(section_toml: &str) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let text = format!("{section_toml}\nzzz_unknown = 1\n");
    let err = match jetplug::config::Config::parse(&text, Path::new("probe.toml"), Path::new(".")) {
        Ok(_) => return Err(format!("`{section_toml}` accepted an unknown key").into()),
        Err(e) => e.to_string(),
    };
    let list = err
        .split_once("expected ")
        .map(|(_, l)| l)
        .ok_or_else(|| format!("no key list in: {err}"))?;
    Ok(list
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect())
}

#[test]
fn every_config_key_is_documented() -> TestResult {
    let reference = std::fs::read_to_string(root().join("docs/configuration.md"))?;
    let sections = [
        "",
        "[nats]",
        "[host]",
        "[admin]",
        "[engine]",
        "[telemetry]",
        "[[stream]]",
        "[plugin.p]",
        "[plugin.p.grants]",
        "[plugin.p.limits]",
        "[database.d]",
        "[kv.b]",
        "[tenant.t]",
        "[tenant.t.limits]",
        "[[pipeline]]",
        "[pipeline.backoff]",
        "[pipeline.breaker]",
    ];
    let mut missing = Vec::new();
    let mut total = 0;
    for section in sections {
        // `[pipeline.X]` stands for the sub-table of a `[[pipeline]]`.
        let probe = match section.strip_prefix("[pipeline.") {
            Some(sub) => format!("[[pipeline]]\n[pipeline.{sub}"),
            None => section.to_owned(),
        };
        // Sub-tables are documented as `parent.key`, sections as `[name]`.
        let parent = ["grants", "limits", "backoff", "breaker"]
            .into_iter()
            .find(|p| section.ends_with(&format!(".{p}]")));
        for key in keys_of(&probe)? {
            total += 1;
            let forms = match (section, parent) {
                ("", _) => vec![
                    format!("`[{key}]`"),
                    format!("`[[{key}]]`"),
                    format!("`[{key}."),
                ],
                (_, Some(p)) => vec![format!("`{p}.{key}`")],
                _ => vec![format!("`{key}`"), format!("`{key}.")],
            };
            if !forms.iter().any(|f| reference.contains(f)) {
                missing.push(format!(
                    "{} {key}",
                    if section.is_empty() {
                        "(top level)"
                    } else {
                        section
                    }
                ));
            }
        }
    }
    assert!(total > 60, "only {total} keys found");
    assert!(
        missing.is_empty(),
        "not in docs/configuration.md:\n{}",
        missing.join("\n")
    );
    Ok(())
}

#[test]
fn example_configs_pass_check() -> TestResult {
    let mut configs = Vec::new();
    for dir in ["examples", "docs"] {
        let mut stack = vec![root().join(dir)];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d)? {
                let path = entry?.path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.file_name().is_some_and(|n| n == "jetplug.toml") {
                    configs.push(path);
                }
            }
        }
    }
    assert!(configs.len() >= 2, "{configs:?}");
    let cache = tempfile::tempdir()?;
    for config in configs {
        let out = Command::new(env!("CARGO_BIN_EXE_jetplug"))
            .args(["check", "--config"])
            .arg(&config)
            .env("JETPLUG_CACHE_DIR", cache.path())
            .output()?;
        assert!(
            out.status.success(),
            "{}: {}",
            config.display(),
            output_text(&out)
        );
    }
    Ok(())
}

/// Every `path.rs::test_name` the docs cite as proof exists: the named file
/// defines a function of that name.
#[test]
fn every_cited_test_exists() -> TestResult {
    let cited = regex::Regex::new(r"`((?:host|tests)/tests/[\w/]+\.rs)::(\w+)`")?;
    let mut count = 0;
    for page in pages()? {
        let text = std::fs::read_to_string(&page)?;
        for c in cited.captures_iter(&text) {
            count += 1;
            let source = std::fs::read_to_string(root().join(&c[1]))
                .map_err(|e| format!("{}: cites {}: {e}", page.display(), &c[1]))?;
            let defines = source.contains(&format!("fn {}(", &c[2]));
            assert!(
                defines,
                "{} cites {}::{}, which does not exist",
                page.display(),
                &c[1],
                &c[2]
            );
        }
    }
    assert!(
        count >= 15,
        "the guarantees table cites its tests ({count} found)"
    );
    Ok(())
}

/// Every metric the host exposes (taken from its registry) is in the
/// operations chapter's metrics table.
#[test]
fn every_metric_is_documented() -> TestResult {
    let table = std::fs::read_to_string(root().join("docs/operations.md"))?;
    for series in jetplug::metrics::series_names() {
        let name = series.trim_start_matches("jetplug_");
        let name = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        assert!(
            table.contains(&format!("| `{name}` |")),
            "metric `{series}` is not in docs/operations.md"
        );
    }
    Ok(())
}

/// The Grafana dashboard queries only metrics the host exposes, and has the
/// panels operators look for first.
#[test]
fn the_dashboard_queries_real_metrics() -> TestResult {
    let text = std::fs::read_to_string(root().join("examples/grafana/jetplug.json"))?;
    let dash: serde_json::Value = serde_json::from_str(&text)?;
    let exposed = jetplug::metrics::series_names();
    let metric = regex::Regex::new(r"jetplug_[a-z_]+")?;
    let mut queried = 0;
    for m in metric.find_iter(&text) {
        queried += 1;
        assert!(
            exposed.iter().any(|e| e == m.as_str()),
            "the dashboard queries `{}`, which the host does not expose",
            m.as_str()
        );
    }
    assert!(queried >= 15, "{queried} metric references");
    let titles: Vec<String> = dash["panels"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter_map(|p| p["title"].as_str().map(str::to_lowercase))
                .collect()
        })
        .unwrap_or_default();
    for want in [
        "throughput",
        "latency",
        "lag",
        "breaker",
        "dead letters",
        "quota",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(want)),
            "no `{want}` panel in {titles:?}"
        );
    }
    Ok(())
}

/// The rows of the first Markdown table after `heading` in `text`
/// (header and separator rows skipped).
fn table_after<'a>(text: &'a str, heading: &str) -> Vec<&'a str> {
    let Some(start) = text.find(heading) else {
        return Vec::new();
    };
    text[start..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .collect()
}

/// The cell `n` (from 0) of a table row, trimmed.
fn cell(row: &str, n: usize) -> &str {
    row.split('|').nth(n + 1).map(str::trim).unwrap_or("")
}

/// Every figure reads the same everywhere it is cited: the README's table
/// rows are the latest run's in docs/performance.md, the README's Status
/// cites only figures of that run, and the per-language figures in
/// docs/plugins/README.md are the run's.
#[test]
fn figures_read_the_same_everywhere() -> TestResult {
    let read = |p: &str| std::fs::read_to_string(root().join(p));
    let (readme, perf, plugins) = (
        read("README.md")?,
        read("docs/performance.md")?,
        read("docs/plugins/README.md")?,
    );
    let latest = table_after(&perf, "## Latest run");
    assert!(
        latest.len() > 10,
        "docs/performance.md: no latest-run table"
    );
    let readme_rows = table_after(&readme, "## Performance");
    assert!(!readme_rows.is_empty(), "README: no performance table");
    for row in &readme_rows {
        assert!(
            latest.contains(row),
            "README row not in docs/performance.md's latest run: {row}"
        );
    }
    let many = table_after(&perf, "### Many pipelines: figures");
    let readme_many = table_after(&readme, "### Many pipelines on one host");
    assert!(!readme_many.is_empty(), "README: no many-pipelines table");
    for row in &readme_many {
        assert!(
            many.contains(row),
            "README row not in docs/performance.md's many-pipelines figures: {row}"
        );
    }
    let status = &readme[readme.find("**Status.**").ok_or("no Status")?..];
    let status = &status[..status.find("\n\n").unwrap_or(status.len())];
    for figure in status
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter(|w| w.contains('.') && w.starts_with(|c: char| c.is_ascii_digit()))
        .map(|w| w.trim_end_matches('.'))
    {
        assert!(
            latest.iter().any(|r| r.contains(figure)),
            "README Status cites {figure}, which the latest run does not hold"
        );
    }
    let row = |measure: &str| {
        latest
            .iter()
            .find(|r| cell(r, 0) == measure)
            .map(|r| cell(r, 1))
            .ok_or_else(|| format!("no `{measure}` row in the latest run"))
    };
    let number = |text: &str, before: &str| -> Option<String> {
        let end = text.find(before)?;
        let digits: String = text[..end]
            .trim_end()
            .chars()
            .rev()
            .take_while(char::is_ascii_digit)
            .collect();
        Some(digits.chars().rev().collect())
    };
    let cells = |label: &str| {
        plugins
            .lines()
            .find(|l| l.starts_with(&format!("| {label}")))
            .map(|l| (1..=4).map(|i| cell(l, i).to_owned()).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let cold = cells("cold start");
    let through = cells("through the host");
    assert_eq!(cold.len(), 4, "docs/plugins/README.md: no cold start row");
    assert_eq!(
        through.len(),
        4,
        "docs/plugins/README.md: no throughput row"
    );
    let langs = ["Rust", "Python", "JavaScript", "JavaScript (QuickJS)"];
    for (i, lang) in langs.into_iter().enumerate() {
        let noop = row(&format!("{lang} plugin, no-op"))?;
        let json = row(&format!("{lang} plugin, parse JSON"))?;
        let compiling = number(noop, " ms compiling").ok_or("compiling")?;
        let fleet = number(noop, " ms from the fleet").ok_or("from the fleet")?;
        let cached = number(noop, " ms cached").ok_or("cached")?;
        let want_cold = format!("{compiling} ms / {fleet} ms / {cached} ms");
        assert_eq!(
            cold[i], want_cold,
            "{lang} cold start in docs/plugins/README.md"
        );
        let want = format!(
            "{} / {} msg/s",
            number(noop, " msg/s").ok_or("msg/s")?,
            number(json, " msg/s").ok_or("msg/s")?
        );
        assert_eq!(
            through[i], want,
            "{lang} throughput in docs/plugins/README.md"
        );
    }
    Ok(())
}
