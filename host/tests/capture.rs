//! Capture and replay, end to end: a plugin that fails only for a frozen
//! account after a cutoff time of day fails in a `jetplug run` against real
//! nats-server and PostgreSQL; its capture, pulled with `jetplug capture`,
//! replays offline (both servers stopped) with the same failure, twice
//! identically; the fixed build acks it; a build asking a different query
//! is shown diverging; the recorded clock, not the laptop's, decides; the
//! plugin's secret is never stored; the capture becomes a fixture.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use async_nats::jetstream;
use jetplug_tests::{
    HostProcess, NatsServer, Postgres, TestConfig, eventually, free_port, jetplug_binary,
    jetplug_cmd, output_text, plugins, rig,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);
/// The plugin's `api_key`, given to the host through the environment.
const SECRET: &str = "sk-live-7f3a9c2e51d0";
/// The host's `admin.token`.
const ADMIN_TOKEN: &str = "admin-token-41d7c9";

fn cli(args: &[&str]) -> anyhow::Result<Output> {
    Ok(jetplug_cmd()?
        .args(args)
        .env("CAPTURE_API_KEY", SECRET)
        .env("CAPTURE_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()?)
}

/// `jetplug test PLUGIN --replay CASE --json`: the exit code and the report.
fn replay(plugin: &str, case: &Path, extra: &[&str]) -> anyhow::Result<(i32, Value, String)> {
    let case = case.display().to_string();
    let mut args = vec!["test", plugin, "--replay", &case, "--json"];
    args.extend_from_slice(extra);
    let out = cli(&args)?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let report: Value = serde_json::from_str(text.trim())
        .map_err(|e| anyhow::anyhow!("{e}: {}", output_text(&out)))?;
    Ok((out.status.code().unwrap_or(-1), report, text))
}

/// Captures taken by a real host and pulled to files, the servers stopped.
struct Captured {
    dir: tempfile::TempDir,
    /// Per plugin, in the order given: the pulled `.jplug` file and its text.
    cases: Vec<(std::path::PathBuf, String)>,
}

/// Runs `jetplug run` with one pipeline per `(name, component)` over the
/// accounts `a1` (open) and `a2` (frozen), cutoff 00:00: each dead-letters
/// `a2`. Each dead letter's capture is pulled (after `capture list` and
/// `capture show` have seen it), then the host, nats-server and PostgreSQL
/// are stopped.
async fn capture_failures(plugins: &[(&str, &str)]) -> anyhow::Result<Captured> {
    let mut nats = NatsServer::start().await?;
    let mut pg = Postgres::start().await?;
    let db = pg.connect().await?;
    db.batch_execute(
        "CREATE TABLE accounts (id text PRIMARY KEY, status text NOT NULL, \
         deleted bool NOT NULL DEFAULT false);
         INSERT INTO accounts (id, status) VALUES ('a1', 'open'), ('a2', 'frozen')",
    )
    .await?;
    let dir = tempfile::tempdir()?;
    let admin = format!("127.0.0.1:{}", free_port()?);
    let mut config = TestConfig::new(dir.path(), &nats.url())
        .stream("ACCOUNTS", &["accounts.>"])
        .stream("DLQ", &["dlq.>"])
        .database("bank", &pg.url())
        .set("admin", "address", admin.clone())
        .set("admin", "token", "${CAPTURE_ADMIN_TOKEN}");
    for (name, path) in plugins {
        config = config
            .plugin(name, path)
            .set(&format!("plugin.{name}.grants"), "sql", vec!["bank"])
            .set(&format!("plugin.{name}.config"), "database", "bank")
            .set(&format!("plugin.{name}.config"), "cutoff", "00:00")
            .set(
                &format!("plugin.{name}.config"),
                "api_key",
                "${CAPTURE_API_KEY}",
            )
            .pipeline(name, &["ACCOUNTS"], name);
    }
    let config = config.write(&dir.path().join("jetplug.toml"))?;
    let config = config.display().to_string();

    let bin = jetplug_binary()?;
    let mut host = HostProcess::start_with_env(
        bin.to_str().unwrap_or_default(),
        Path::new(&config),
        admin.clone(),
        dir.path().join("host.log"),
        &[
            ("CAPTURE_API_KEY", SECRET),
            ("CAPTURE_ADMIN_TOKEN", ADMIN_TOKEN),
        ],
    )?;
    host.ready().await?;
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    for account in ["a1", "a2"] {
        js.publish("accounts.settle", account.into()).await?.await?;
    }
    eventually(WAIT, "the frozen account dead-lettered", || async {
        Ok(rig::dlq_messages(&js).await?.len() == plugins.len())
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", host.log()))?;
    let dead = rig::dlq_messages(&js).await?;
    let mut cases = Vec::new();
    for (name, _) in plugins {
        let letter = dead
            .iter()
            .find(|m| rig::header(m, "Jetplug-Pipeline") == *name)
            .ok_or_else(|| anyhow::anyhow!("no dead letter of {name}"))?;
        let reason = rig::header(letter, "Jetplug-Reason");
        assert!(
            reason.contains("cannot settle account a2"),
            "{name}: {reason}"
        );
        let id = rig::header(letter, "Jetplug-Capture").to_owned();
        assert!(
            id.starts_with(&format!("{name}.ACCOUNTS.")),
            "the dead letter names its capture: {id:?}"
        );

        let dlq = output_text(&cli(&["dlq", "list", "-c", &config])?);
        assert!(dlq.contains(&format!("[capture {id}]")), "{dlq}");
        let listed = cli(&["capture", "list", "-c", &config, "--json"])?;
        assert!(
            output_text(&listed).contains(&id),
            "{}",
            output_text(&listed)
        );
        // Through the host's admin API too, with its token (and not without).
        let via_admin = cli(&["capture", "list", "--admin", &admin, "-c", &config])?;
        assert!(
            output_text(&via_admin).contains(&id),
            "{}",
            output_text(&via_admin)
        );
        let refused = cli(&[
            "capture",
            "show",
            &id,
            "--admin",
            &admin,
            "-c",
            "no-such.toml",
        ])?;
        assert!(!refused.status.success(), "{}", output_text(&refused));
        assert!(
            output_text(&refused).contains("401"),
            "{}",
            output_text(&refused)
        );
        let shown = output_text(&cli(&["capture", "show", &id, "-c", &config])?);
        assert!(
            shown.contains("sql.query `bank`") && shown.contains("a2"),
            "{shown}"
        );
        let case = dir.path().join(format!("{name}.jplug"));
        let pulled = cli(&[
            "capture",
            "pull",
            &id,
            "-o",
            &case.display().to_string(),
            "-c",
            &config,
        ])?;
        assert!(pulled.status.success(), "{}", output_text(&pulled));
        let stored = std::fs::read_to_string(&case)?;
        assert!(
            !stored.contains(SECRET),
            "a secret reached the capture of {name}"
        );
        assert!(
            stored.contains("(key ***"),
            "the plugin's log line, masked: {stored}"
        );
        cases.push((case, stored));
    }
    // Offline from here: no server is left.
    host.kill()?;
    nats.stop().await?;
    pg.stop().await?;
    Ok(Captured { dir, cases })
}

/// The cutoff a minute after the capture's first clock read: the same
/// build then acks, if it sees the recorded time.
fn cutoff_after(stored: &str) -> anyhow::Result<String> {
    let capture: Value = serde_json::from_str(stored)?;
    let wall_ns = capture["handed"]["wall"][0].as_u64().unwrap_or(0);
    let minute = wall_ns / 1_000_000_000 % 86_400 / 60 + 1;
    Ok(format!("cutoff={:02}:{:02}", minute / 60, minute % 60))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_captured_in_a_run_replays_offline_and_becomes_a_fixture() -> anyhow::Result<()> {
    let captured = capture_failures(&[("accounts", plugins::TEST_CAPTURE)]).await?;
    let (case, stored) = &captured.cases[0];

    let (code, first, text) = replay(plugins::TEST_CAPTURE, case, &[])?;
    assert_eq!(code, 0, "{text}");
    assert_eq!(first["same"], true, "the failure is reproduced: {text}");
    assert!(text.contains("cannot settle account a2"), "{text}");
    let (_, _, again) = replay(plugins::TEST_CAPTURE, case, &[])?;
    assert_eq!(again, text, "a replay is deterministic");

    // The fixed build acks the same capture.
    let (code, fixed, text) = replay(plugins::TEST_CAPTURE_FIXED, case, &[])?;
    assert_eq!(code, 0, "{text}");
    assert_eq!(fixed["same_outcome"], false, "{text}");
    let now = fixed["report"]["now"]["decisions"].to_string();
    assert!(now.contains("Ack") && !now.contains("Term"), "{text}");

    // A build asking another query diverges at its first call.
    let (code, changed, text) = replay(plugins::TEST_CAPTURE_QUERY, case, &[])?;
    assert_eq!(code, 2, "{text}");
    let d = &changed["report"]["divergence"];
    assert_eq!(d["number"], 1, "{text}");
    let detail = d["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("argument `statement` differs"), "{detail}");

    // The time of day is the recorded one: with the cutoff a minute after
    // it, the same build acks (the laptop's clock is later still).
    let cutoff = cutoff_after(stored)?;
    let (_, later, text) = replay(plugins::TEST_CAPTURE, case, &["-c", &cutoff])?;
    assert_eq!(later["same_outcome"], false, "{text}");

    // One command makes it a regression test.
    let fixture = captured.dir.path().join("case.jsonl");
    let made = cli(&[
        "capture",
        "to-fixture",
        &case.display().to_string(),
        "-o",
        &fixture.display().to_string(),
    ])?;
    assert!(made.status.success(), "{}", output_text(&made));
    let fixture = fixture.display().to_string();
    let passes = cli(&["test", plugins::TEST_CAPTURE, &fixture])?;
    assert!(passes.status.success(), "{}", output_text(&passes));
    let fails = cli(&["test", plugins::TEST_CAPTURE_FIXED, &fixture])?;
    assert_eq!(fails.status.code(), Some(2), "{}", output_text(&fails));
    assert!(
        output_text(&fails).contains("MISMATCH"),
        "{}",
        output_text(&fails)
    );
    Ok(())
}

/// The recorded clock and random bytes reach componentize-py's and
/// componentize-js's runtimes through WASI: a replay logs the very nonce
/// (`os.urandom`, `crypto.getRandomValues`) and time (`time.time()`,
/// `Date.now()`) the production run logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_javascript_captures_replay_their_clock_and_random_bytes() -> anyhow::Result<()>
{
    let plugins = [
        ("py", plugins::TEST_CAPTURE_PY),
        ("js", plugins::TEST_CAPTURE_JS),
    ];
    let captured = capture_failures(&plugins).await?;
    for ((name, path), (case, stored)) in plugins.iter().zip(&captured.cases) {
        let capture: Value = serde_json::from_str(stored)?;
        let logged = |calls: &Value| -> Vec<String> {
            calls
                .as_array()
                .into_iter()
                .flatten()
                .filter(|c| c["call"] == "log.log")
                .filter_map(|c| c["args"]["message"].as_str().map(str::to_owned))
                .collect()
        };
        let then = logged(&capture["calls"]);
        assert!(then.iter().any(|l| l.contains("nonce")), "{name}: {then:?}");
        let (code, report, text) = replay(path, case, &[])?;
        assert_eq!(code, 0, "{name}: {text}");
        assert_eq!(report["same"], true, "{name}: {text}");
        assert_eq!(
            logged(&report["report"]["calls"]),
            then,
            "{name}: the same time and nonce"
        );
        let (_, _, again) = replay(path, case, &[])?;
        assert_eq!(again, text, "{name}: a replay is deterministic");
        let (_, later, text) = replay(path, case, &["-c", &cutoff_after(stored)?])?;
        assert_eq!(later["same_outcome"], false, "{name}: {text}");
    }
    Ok(())
}

/// `jetplug test` as a plugin author's whole loop, no servers: declared
/// answers (by arguments, then any), the clock and config of the file, the
/// capability error behind a `retry`, expected effects met and missed, and
/// a trapping line isolated with the others still judged.
#[test]
fn fixtures_declare_answers_and_effects_and_isolate_a_trapping_line() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let write = |name: &str, lines: &[Value]| -> anyhow::Result<String> {
        let path = dir.path().join(name);
        let text: Vec<String> = lines.iter().map(Value::to_string).collect();
        std::fs::write(&path, text.join("\n") + "\n")?;
        Ok(path.display().to_string())
    };
    let rows =
        |status: &str| serde_json::json!({"columns": ["status"], "rows": [[{"Text": status}]]});
    // 12:00 UTC on 2026-12-05; the cutoff is 11:00.
    let declared = serde_json::json!({
        "config": {"database": "bank", "cutoff": "11:00"},
        "time_ms": 1_764_936_000_000_i64,
        "answers": [
            {"call": "sql.query", "args": {"params": [{"Text": "a2"}]}, "ok": rows("frozen")},
            {"call": "sql.query", "target": "bank", "args": {"params": [{"Text": "a1"}]}, "ok": rows("open")},
        ],
    });
    let accounts = write(
        "accounts.jsonl",
        &[
            declared,
            serde_json::json!({"subject": "accounts.settle", "payload_text": "a2",
                "expect": {"decision": "term", "reason": "cannot settle account a2 at 12:00"}}),
            serde_json::json!({"subject": "accounts.settle", "payload_text": "a1", "expect": "ack"}),
            serde_json::json!({"subject": "accounts.settle", "payload_text": "a3", "expect": "ack"}),
        ],
    )?;
    let out = cli(&["test", plugins::TEST_CAPTURE, &accounts])?;
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("accounts.jsonl:4"),
        "only a3 has no answer: {text}"
    );
    assert!(text.contains("got: retry after 100 ms"), "{text}");
    assert!(
        text.contains(
            "behind it: sql.query on `bank`: unavailable: the fixture declares no answer"
        ),
        "{text}"
    );
    assert!(text.contains("2 expectations met, 1 not met"), "{text}");

    // Effects: writes succeed by default and are checked.
    let effect = |call: &str, target: &str, args: Value| serde_json::json!({"call": call, "target": target, "args": args});
    let orders = write(
        "orders.jsonl",
        &[
            serde_json::json!({"subject": "events.a", "payload_text": "order-1", "expect": "ack",
            "expect_effects": [
                effect("sql.execute", "db", serde_json::json!({"params": [{"Text": "order-1"}]})),
                effect("publish.publish", "out.events.a", Value::Null),
            ]}),
            serde_json::json!({"subject": "events.a", "payload_text": "trap",
                "expect": {"decision": "failed", "error": "trap"}}),
            serde_json::json!({"subject": "events.a", "payload_text": "order-2", "expect": "ack",
                "expect_effects": [effect("kv.put", "", Value::Null)]}),
        ],
    )?;
    let out = cli(&["test", plugins::TEST_NAIVE, &orders])?;
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("lines 1–3 failed (trap); run alone, line(s) 2 failed (the culprit)"),
        "{text}"
    );
    assert!(text.contains("orders.jsonl:3"), "{text}");
    assert!(text.contains("expected effect not made: kv.put"), "{text}");
    assert!(
        !text.contains("orders.jsonl:1 ") && !text.contains("orders.jsonl:2 "),
        "lines 1 and 2 are met: {text}"
    );
    assert!(text.contains("2 expectations met, 1 not met"), "{text}");
    Ok(())
}
