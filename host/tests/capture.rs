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

fn cli(args: &[&str]) -> anyhow::Result<Output> {
    Ok(jetplug_cmd()?
        .args(args)
        .env("CAPTURE_API_KEY", SECRET)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_captured_in_a_run_replays_offline_and_becomes_a_fixture() -> anyhow::Result<()> {
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
    let config = TestConfig::new(dir.path(), &nats.url())
        .stream("ACCOUNTS", &["accounts.>"])
        .stream("DLQ", &["dlq.>"])
        .database("bank", &pg.url())
        .plugin("accounts", plugins::TEST_CAPTURE)
        .set("plugin.accounts.grants", "sql", vec!["bank"])
        .set("plugin.accounts.config", "database", "bank")
        .set("plugin.accounts.config", "cutoff", "00:00")
        .set("plugin.accounts.config", "api_key", "${CAPTURE_API_KEY}")
        .pipeline("accounts", &["ACCOUNTS"], "accounts")
        .set("admin", "address", admin.clone())
        .write(&dir.path().join("jetplug.toml"))?;
    let config = config.display().to_string();

    let bin = jetplug_binary()?;
    let mut host = HostProcess::start_with_env(
        bin.to_str().unwrap_or_default(),
        Path::new(&config),
        admin,
        dir.path().join("host.log"),
        &[("CAPTURE_API_KEY", SECRET)],
    )?;
    host.ready().await?;
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    for account in ["a1", "a2"] {
        js.publish("accounts.settle", account.into()).await?.await?;
    }
    eventually(WAIT, "the frozen account dead-lettered", || async {
        Ok(rig::dlq_messages(&js).await?.len() == 1)
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", host.log()))?;
    let dead = &rig::dlq_messages(&js).await?[0];
    let reason = rig::header(dead, "Jetplug-Reason");
    assert!(reason.contains("cannot settle account a2"), "{reason}");
    let id = rig::header(dead, "Jetplug-Capture").to_owned();
    assert!(
        id.starts_with("accounts.ACCOUNTS."),
        "the dead letter names its capture: {id:?}"
    );

    // Listed, shown, pulled.
    let listed = cli(&["capture", "list", "-c", &config, "--json"])?;
    assert!(
        output_text(&listed).contains(&id),
        "{}",
        output_text(&listed)
    );
    let shown = cli(&["capture", "show", &id, "-c", &config])?;
    let shown = output_text(&shown);
    assert!(
        shown.contains("sql.query `bank`") && shown.contains("a2"),
        "{shown}"
    );
    let case = dir.path().join("case.jplug");
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
    assert!(!stored.contains(SECRET), "a secret reached the capture");
    assert!(
        stored.contains("(key ***)"),
        "the plugin's log line, masked: {stored}"
    );

    // Offline from here: no server is left.
    host.kill()?;
    nats.stop().await?;
    pg.stop().await?;

    let (code, first, text) = replay(plugins::TEST_CAPTURE, &case, &[])?;
    assert_eq!(code, 0, "{text}");
    assert_eq!(first["same"], true, "the failure is reproduced: {text}");
    assert!(text.contains("cannot settle account a2"), "{text}");
    let (_, _, again) = replay(plugins::TEST_CAPTURE, &case, &[])?;
    assert_eq!(again, text, "a replay is deterministic");

    // The fixed build acks the same capture.
    let (code, fixed, text) = replay(plugins::TEST_CAPTURE_FIXED, &case, &[])?;
    assert_eq!(code, 0, "{text}");
    assert_eq!(fixed["same_outcome"], false, "{text}");
    let now = fixed["report"]["now"]["decisions"].to_string();
    assert!(now.contains("Ack") && !now.contains("Term"), "{text}");

    // A build asking another query diverges at its first call.
    let (code, changed, text) = replay(plugins::TEST_CAPTURE_QUERY, &case, &[])?;
    assert_eq!(code, 2, "{text}");
    let d = &changed["report"]["divergence"];
    assert_eq!(d["number"], 1, "{text}");
    let detail = d["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("argument `statement` differs"), "{detail}");

    // The time of day is the recorded one: with the cutoff a minute after
    // it, the same build acks (the laptop's clock is later still).
    let capture: Value = serde_json::from_str(&stored)?;
    let wall_ns = capture["handed"]["wall"][0].as_u64().unwrap_or(0);
    let minute = wall_ns / 1_000_000_000 % 86_400 / 60 + 1;
    let cutoff = format!("cutoff={:02}:{:02}", minute / 60, minute % 60);
    let (_, later, text) = replay(plugins::TEST_CAPTURE, &case, &["-c", &cutoff])?;
    assert_eq!(later["same_outcome"], false, "{text}");

    // One command makes it a regression test.
    let fixture = dir.path().join("case.jsonl");
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
