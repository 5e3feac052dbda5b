//! `jetplug run-plugin` as a user runs it: the real binary on real
//! components and JSONL files.

use std::path::Path;
use std::process::Output;

use jetplug_tests::{output_text, plugins};

type TestResult = Result<(), Box<dyn std::error::Error>>;

use jetplug_tests::jetplug_cached as jetplug;
fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn write_events(dir: &Path, text: &str) -> std::io::Result<String> {
    let path = dir.join("events.jsonl");
    std::fs::write(&path, text)?;
    Ok(path.display().to_string())
}

const EVENTS: &str = r#"{"subject": "learning.quiz.answered", "payload": {"correct": true}}
{"subject": "focus.session.started", "payload_text": "retry:250"}

{"subject": "homework.assignment.submitted", "payload_text": "term:not valid"}
"#;

#[test]
fn prints_a_decision_per_message() -> TestResult {
    let dir = tempfile::tempdir()?;
    let input = write_events(dir.path(), EVENTS)?;
    let out = jetplug(
        &["run-plugin", plugins::TEST_NOOP, "--input", &input],
        dir.path(),
    )?;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let rows: Vec<&str> = text.lines().collect();
    assert!(
        rows[1].contains("learning.quiz.answered") && rows[1].contains("ack"),
        "{text}"
    );
    assert!(
        rows[2].contains("retry") && rows[2].contains("after 250 ms"),
        "{text}"
    );
    // Line numbers are those of the file (line 3 is blank).
    assert!(
        rows[3].trim_start().starts_with('4') && rows[3].contains("not valid"),
        "{text}"
    );
    assert!(
        text.contains("3 messages: 1 ack, 1 retry, 1 term, 0 failed"),
        "{text}"
    );
    Ok(())
}

#[test]
fn json_output_is_one_object_per_message() -> TestResult {
    let dir = tempfile::tempdir()?;
    let input = write_events(dir.path(), EVENTS)?;
    let out = jetplug(
        &[
            "run-plugin",
            plugins::TEST_NOOP,
            "--input",
            &input,
            "--json",
            "--batch",
            "2",
        ],
        dir.path(),
    )?;
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0]["decision"], "ack");
    assert_eq!(rows[1]["decision"], "retry");
    assert_eq!(rows[1]["delay_ms"], 250);
    assert_eq!(rows[2]["decision"], "term");
    assert_eq!(rows[2]["reason"], "not valid");
    assert_eq!(rows[2]["line"], 4);
    Ok(())
}

#[test]
fn config_pairs_reach_init() -> TestResult {
    let dir = tempfile::tempdir()?;
    let input = write_events(dir.path(), EVENTS)?;
    let out = jetplug(
        &[
            "run-plugin",
            plugins::TEST_NOOP,
            "--input",
            &input,
            "--config",
            "fail_init=missing url",
        ],
        dir.path(),
    )?;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("init returned error: missing url"),
        "{}",
        stderr(&out)
    );
    Ok(())
}

#[test]
fn failed_batches_are_shown_and_exit_2() -> TestResult {
    let dir = tempfile::tempdir()?;
    let input = write_events(
        dir.path(),
        "{\"subject\":\"a.b\",\"payload_text\":\"boom\"}\n{\"subject\":\"a.b\",\"payload_text\":\"ok\"}\n",
    )?;
    let out = jetplug(
        &[
            "run-plugin",
            plugins::TEST_PANIC,
            "--input",
            &input,
            "--batch",
            "1",
        ],
        dir.path(),
    )?;
    assert_eq!(out.status.code(), Some(2));
    let text = stdout(&out);
    assert!(
        text.contains("failed") && text.contains("trapped"),
        "{text}"
    );
    assert!(text.contains("1 ack"), "the next batch still ran: {text}");
    Ok(())
}

#[test]
fn load_and_input_errors_are_clear() -> TestResult {
    let dir = tempfile::tempdir()?;
    let input = write_events(dir.path(), EVENTS)?;
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, "not wasm")?;
    let garbage = garbage.display().to_string();
    let bad_jsonl = dir.path().join("bad.jsonl");
    std::fs::write(&bad_jsonl, "{\"subject\":\"a.b\"}\n{\"subject\":\"a.b\",\n")?;
    let bad_jsonl = bad_jsonl.display().to_string();

    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["run-plugin", "/nonexistent/plugin.wasm", "--input", &input],
            "cannot read plugin file /nonexistent/plugin.wasm: No such file",
        ),
        (
            vec!["run-plugin", &garbage, "--input", &input],
            "garbage.wasm is not a WebAssembly file",
        ),
        (
            vec!["run-plugin", plugins::TEST_NOT_A_PLUGIN, "--input", &input],
            "does not implement the world jetplug:plugin/event-plugin",
        ),
        (
            vec!["run-plugin", plugins::TEST_NOOP, "--input", &bad_jsonl],
            "bad.jsonl:2: invalid event",
        ),
        (
            vec![
                "run-plugin",
                plugins::TEST_NOOP,
                "--input",
                "/nonexistent/events.jsonl",
            ],
            "cannot read input file /nonexistent/events.jsonl",
        ),
    ];
    for (args, want) in cases {
        let out = jetplug(&args, dir.path())?;
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(stderr(&out).contains(want), "{args:?}: {}", stderr(&out));
    }
    Ok(())
}

#[test]
fn bad_arguments_are_named() -> TestResult {
    let dir = tempfile::tempdir()?;
    let input = write_events(dir.path(), EVENTS)?;
    for (arg, value, want) in [
        ("--config", "novalue", "`novalue` is not KEY=VALUE"),
        ("--deadline", "soon", "invalid duration `soon`"),
        ("--memory", "lots", "invalid size `lots`"),
        ("--batch", "0", "0 is not in 1..=100000"),
    ] {
        let out = jetplug(
            &[
                "run-plugin",
                plugins::TEST_NOOP,
                "--input",
                &input,
                arg,
                value,
            ],
            dir.path(),
        )?;
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(err.contains(want) && err.contains(arg), "{arg}: {err}");
    }
    Ok(())
}

/// Fixtures for `jetplug test` on test-noop: one line per kind of
/// expectation (line 3 is blank).
const FIXTURES: &str = r#"{"subject": "a.b.c", "payload_text": "fine", "expect": "ack"}
{"subject": "a.b.c", "payload_text": "retry:250", "expect": {"decision": "retry", "delay_ms": 250}}

{"subject": "a.b.c", "payload_text": "retry", "expect": {"decision": "retry", "delay_ms": null}}
{"subject": "a.b.c", "payload_text": "term:bad input here", "expect": {"decision": "term", "reason": "^bad input"}}
{"subject": "a.b.c", "payload_text": "no expectation"}
"#;

#[test]
fn test_command_meets_expectations() -> TestResult {
    let dir = tempfile::tempdir()?;
    let input = write_events(dir.path(), FIXTURES)?;
    let out = jetplug(&["test", plugins::TEST_NOOP, &input], dir.path())?;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).trim(),
        "ok: 5 messages in 1 files, 4 expectations met, 0 not met, 1 without expectation"
    );
    Ok(())
}

#[test]
fn test_command_prints_every_mismatch_and_exits_2() -> TestResult {
    let dir = tempfile::tempdir()?;
    let wrong = FIXTURES
        .replace(r#""delay_ms": 250"#, r#""delay_ms": 500"#)
        .replace(r#""reason": "^bad input""#, r#""reason": "^good""#);
    let input = write_events(dir.path(), &wrong)?;
    let out = jetplug(&["test", plugins::TEST_NOOP, &input], dir.path())?;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&format!(
            "MISMATCH {input}:2  a.b.c\n  expected: retry after 500 ms\n       got: retry after 250 ms"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "MISMATCH {input}:5  a.b.c\n  expected: term matching /^good/\n       got: term: bad input here"
        )),
        "{text}"
    );
    assert!(
        text.ends_with(
            "FAILED: 5 messages in 1 files, 2 expectations met, 2 not met, 1 without expectation\n"
        ),
        "{text}"
    );

    // --json: one object per message, the summary on stderr.
    let out = jetplug(&["test", plugins::TEST_NOOP, &input, "--json"], dir.path())?;
    assert_eq!(out.status.code(), Some(2));
    let rows: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(rows.len(), 5);
    assert_eq!(rows[1]["line"], 2);
    assert_eq!(rows[1]["ok"], false);
    assert_eq!(rows[1]["expected"], "retry after 500 ms");
    assert_eq!(rows[1]["got"], "retry after 250 ms");
    assert_eq!(rows[4]["expected"], serde_json::Value::Null);
    assert!(stderr(&out).contains("FAILED: 5 messages"));
    Ok(())
}

#[test]
fn test_command_expects_failed_batches_and_catches_unexpected_ones() -> TestResult {
    let dir = tempfile::tempdir()?;
    let input = write_events(
        dir.path(),
        concat!(
            r#"{"subject": "a.b", "payload_text": "boom", "expect": {"decision": "failed", "error": "deadline"}}"#,
            "\n",
            r#"{"subject": "a.b", "payload_text": "ok", "expect": "ack"}"#,
            "\n",
        ),
    )?;
    let args = [
        "test",
        plugins::TEST_LOOP,
        &input,
        "-b",
        "1",
        "--deadline",
        "200ms",
    ];
    let out = jetplug(&args, dir.path())?;
    assert!(out.status.success(), "{}", output_text(&out));

    // Without an expectation, a failed batch is a failure.
    let input = write_events(
        dir.path(),
        "{\"subject\": \"a.b\", \"payload_text\": \"boom\"}\n",
    )?;
    let args = ["test", plugins::TEST_LOOP, &input, "--deadline", "200ms"];
    let out = jetplug(&args, dir.path())?;
    assert_eq!(out.status.code(), Some(2));
    assert!(stdout(&out).contains("expected: a decision\n       got: failed batch (deadline)"));
    Ok(())
}

#[test]
fn test_command_bad_fixtures_and_flags_are_named() -> TestResult {
    let dir = tempfile::tempdir()?;
    let cases = [
        (
            r#"{"subject": "a", "expect": "maybe"}"#,
            "events.jsonl:1: invalid `expect`: unknown decision `maybe`",
        ),
        (
            r#"{"subject": "a", "expect": {"decision": "ack", "delay_ms": 1}}"#,
            "`delay_ms` does not apply to `ack`",
        ),
        (
            r#"{"subject": "a", "expect": {"decision": "term", "reason": "(["}}"#,
            "`reason` is not a regular expression",
        ),
    ];
    for (line, want) in cases {
        let input = write_events(dir.path(), line)?;
        let out = jetplug(&["test", plugins::TEST_NOOP, &input], dir.path())?;
        assert_eq!(out.status.code(), Some(1), "{line}");
        assert!(stderr(&out).contains(want), "{line}: {}", stderr(&out));
    }
    let input = write_events(dir.path(), r#"{"subject": "a", "expect": "ack"}"#)?;
    let out = jetplug(
        &["test", plugins::TEST_NOOP, &input, "--grant", "files:/"],
        dir.path(),
    )?;
    assert_eq!(out.status.code(), Some(2), "clap refuses the flag");
    assert!(
        stderr(&out).contains("`files:/` is not a grant"),
        "{}",
        stderr(&out)
    );
    let out = jetplug(&["test", plugins::TEST_NOOP], dir.path())?;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("FIXTURES"), "{}", stderr(&out));
    // A refused NATS connection is an error, not a silent `unavailable`.
    let url = format!("nats://127.0.0.1:{}", jetplug_tests::free_port()?);
    let out = jetplug(
        &["test", plugins::TEST_NOOP, &input, "--nats", &url],
        dir.path(),
    )?;
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(
        stderr(&out).contains(&format!("--nats {url}")),
        "{}",
        stderr(&out)
    );
    Ok(())
}

/// Logs written to a file or pipe carry no colour codes; `--log-format
/// json` writes one JSON object per line.
#[test]
fn logs_follow_the_terminal_and_json_is_one_object_per_line() -> TestResult {
    let dir = tempfile::tempdir()?;
    let events = write_events(dir.path(), EVENTS)?;
    let run = |format: &str| {
        jetplug(
            &[
                "run-plugin",
                plugins::TEST_NOOP,
                "--input",
                &events,
                "--log",
                "debug",
                "--log-format",
                format,
            ],
            dir.path(),
        )
    };
    let text = run("text")?;
    assert!(text.status.success(), "{}", output_text(&text));
    let logs = stderr(&text);
    assert!(logs.contains("DEBUG"), "debug lines were written: {logs}");
    assert!(
        !logs.contains('\u{1b}'),
        "no escape codes in a pipe: {logs:?}"
    );
    let json = run("json")?;
    let logs = stderr(&json);
    let lines: Vec<&str> = logs.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("not a JSON line: {line:?}: {e}"))?;
        assert!(v.get("level").is_some(), "{line}");
    }
    Ok(())
}
