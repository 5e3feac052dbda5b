//! A bench run as JSON (`jetplug-bench --record FILE`), and what changed
//! against the run recorded there before.
//!
//! Why: single runs on a shared VM move by 10 % and more; a figure only
//! means something beside the previous one taken the same way. The file is
//! plain JSON so a run can be kept, diffed or plotted with anything.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// One line of the result table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Line {
    /// What was measured.
    pub what: String,
    /// The figure as printed (`96839 rows/s`, `0.6 / 1.1 ms`).
    pub result: String,
    /// The goal, with `(met)` / `(not met)` when it has one.
    pub goal: String,
    /// The first number of `result`, for comparisons.
    pub value: Option<f64>,
}

impl Line {
    pub fn new(what: String, result: String, goal: String) -> Line {
        let value = first_number(&result);
        Line {
            what,
            result,
            goal,
            value,
        }
    }
}

/// A whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// When it ran (RFC 3339, UTC).
    pub date: String,
    /// Cores and CPU model.
    pub machine: String,
    /// The settings line printed above the table.
    pub settings: String,
    pub lines: Vec<Line>,
}

/// Why a record could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a bench record: {reason}")]
    Parse { path: String, reason: String },
    #[error("cannot write {path}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The run recorded at `path`; `None` when there is no file yet.
pub fn load(path: &Path) -> Result<Option<Run>, RecordError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(RecordError::Read {
                path: path.display().to_string(),
                source,
            });
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| RecordError::Parse {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
}

/// Writes `run` to `path` (folders created), replacing what was there.
pub fn save(path: &Path, run: &Run) -> Result<(), RecordError> {
    let err = |source| RecordError::Write {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let text = serde_json::to_string_pretty(run).map_err(|e| err(std::io::Error::other(e)))?;
    std::fs::write(path, text + "\n").map_err(err)
}

/// One figure that both runs have: before, now, and the change of its
/// first number in percent (when both have one and before is not 0).
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub what: String,
    pub before: String,
    pub now: String,
    pub percent: Option<f64>,
}

/// The lines of `now` that `before` also measured, in `now`'s order.
pub fn changes(before: &Run, now: &Run) -> Vec<Change> {
    now.lines
        .iter()
        .filter_map(|n| {
            let b = before.lines.iter().find(|b| b.what == n.what)?;
            let percent = match (b.value, n.value) {
                (Some(b), Some(n)) if b != 0.0 => Some((n - b) / b.abs() * 100.0),
                _ => None,
            };
            Some(Change {
                what: n.what.clone(),
                before: b.result.clone(),
                now: n.result.clone(),
                percent,
            })
        })
        .collect()
}

/// The first decimal number in `text` (`"0.6 / 1.1 ms"` → 0.6).
fn first_number(text: &str) -> Option<f64> {
    let start = text.find(|c: char| c.is_ascii_digit())?;
    let rest = &text[start..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    rest[..end].trim_end_matches('.').parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(lines: &[(&str, &str)]) -> Run {
        Run {
            date: "2026-12-02T00:00:00Z".into(),
            machine: "2 cores".into(),
            settings: "s".into(),
            lines: lines
                .iter()
                .map(|(w, r)| Line::new((*w).into(), (*r).into(), String::new()))
                .collect(),
        }
    }

    #[test]
    fn first_numbers_are_read_from_results() {
        assert_eq!(first_number("96839 rows/s"), Some(96839.0));
        assert_eq!(first_number("0.6 / 1.1 ms"), Some(0.6));
        assert_eq!(first_number("n/a"), None);
        assert_eq!(first_number("skipped (give --postgres URL)"), None);
    }

    #[test]
    fn changes_pair_lines_by_name_and_give_percentages() {
        let before = run(&[("a", "100 msg/s"), ("gone", "1"), ("b", "n/a")]);
        let now = run(&[("b", "5 ms"), ("a", "110 msg/s"), ("new", "3")]);
        let c = changes(&before, &now);
        assert_eq!(c.len(), 2);
        assert_eq!((c[0].what.as_str(), c[0].percent), ("b", None));
        assert_eq!(c[1].what, "a");
        let p = c[1].percent.expect("both have numbers");
        assert!((p - 10.0).abs() < 1e-9, "{p}");
    }

    #[test]
    fn records_round_trip_and_a_bad_file_is_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("bench/latest.json");
        assert_eq!(load(&path).expect("no file is no record"), None);
        let r = run(&[("a", "1 msg/s")]);
        save(&path, &r).expect("written");
        assert_eq!(load(&path).expect("read"), Some(r));
        std::fs::write(&path, "{").expect("written");
        let err = load(&path).expect_err("not JSON");
        assert!(err.to_string().contains("latest.json"), "{err}");
    }
}
