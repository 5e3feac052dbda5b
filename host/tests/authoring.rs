//! Writing a plugin as an author outside this repository would: for each
//! language, `jetplug new` in a temporary directory, build it with the
//! language's own toolchain (registry packages only), `jetplug test` passes
//! on the generated fixtures, and a wrong expectation makes it fail with a
//! readable mismatch. Needs the toolchains `scripts/setup.sh` installs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use jetplug_tests::{output_text, plugins};

type TestResult = Result<(), Box<dyn std::error::Error>>;

use jetplug_tests::jetplug_cached as jetplug;
/// Runs `cmd`, failing with its output when it does not succeed.
fn run(cmd: &mut Command) -> Result<Output, Box<dyn std::error::Error>> {
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(format!("{cmd:?} failed ({}):\n{}", out.status, output_text(&out)).into());
    }
    Ok(out)
}

/// A clean environment for a nested build: nothing of the outer cargo's.
fn clean(cmd: &mut Command) -> &mut Command {
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_MANIFEST_DIR",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

fn root() -> PathBuf {
    PathBuf::from(plugins::ROOT)
}

/// `jetplug new NAME --lang LANG` into a fresh temporary directory.
fn new_project(lang: &str, tmp: &Path) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let dir = tmp.join("my-orders");
    let dir_s = dir.display().to_string();
    let out = jetplug(&["new", "my-orders", "--lang", lang, "--dir", &dir_s], tmp)?;
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("jetplug test"),
        "next steps missing: {}",
        output_text(&out)
    );
    assert!(
        dir.join("wit/world.wit").is_file() || dir.join("wit/deps/jetplug/world.wit").is_file()
    );
    assert!(dir.join("README.md").is_file());
    Ok(dir)
}

/// The generated fixtures pass; a wrong expectation fails, readably.
fn passes_then_fails_on_a_wrong_expectation(wasm: &Path, project: &Path) -> TestResult {
    let cache = project.join(".jetplug-cache");
    let fixture = project.join("fixtures/orders.jsonl");
    let wasm_s = wasm.display().to_string();
    let fixture_s = fixture.display().to_string();
    let out = jetplug(&["test", &wasm_s, &fixture_s], &cache)?;
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("ok: 4 messages in 1 files, 4 expectations met, 0 not met"),
        "{text}"
    );

    let original = std::fs::read_to_string(&fixture)?;
    let wrong = original.replacen(
        r#""expect": "ack""#,
        r#""expect": {"decision": "term", "reason": "negative"}"#,
        1,
    );
    assert_ne!(wrong, original, "the fixture's first line expects ack");
    std::fs::write(&fixture, wrong)?;
    let out = jetplug(&["test", &wasm_s, &fixture_s], &cache)?;
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("orders.jsonl:1"), "{text}");
    assert!(
        text.contains("expected: term matching /negative/"),
        "{text}"
    );
    assert!(text.contains("got: ack"), "{text}");
    assert!(
        text.contains("FAILED: 4 messages in 1 files, 3 expectations met, 1 not met"),
        "{text}"
    );
    std::fs::write(&fixture, original)?;
    Ok(())
}

#[test]
fn rust_project_builds_and_tests() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let project = new_project("rust", tmp.path())?;
    assert!(project.join("vendor/jetplug-sdk/src/lib.rs").is_file());
    // A shared target dir only caches compiled crates between runs.
    let target = root().join("target/authoring");
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    clean(&mut cargo);
    run(cargo
        .args(["build", "--release", "--quiet"])
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(&project))?;
    let wasm = target.join("wasm32-wasip2/release/my_orders.wasm");
    passes_then_fails_on_a_wrong_expectation(&wasm, &project)
}

#[test]
fn python_project_builds_and_tests() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let project = new_project("python", tmp.path())?;
    let cpy = root().join(".local/venv/bin/componentize-py");
    assert!(
        cpy.is_file(),
        "{} missing: run scripts/setup.sh",
        cpy.display()
    );
    run(Command::new("make")
        .arg("--quiet")
        .env("COMPONENTIZE_PY", &cpy)
        .current_dir(&project))?;
    passes_then_fails_on_a_wrong_expectation(&project.join("my-orders.wasm"), &project)
}

#[test]
fn js_project_builds_and_tests() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let project = new_project("js", tmp.path())?;
    run(Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--silent"])
        .current_dir(&project))?;
    run(Command::new("npm")
        .args(["run", "--silent", "build"])
        .current_dir(&project))?;
    passes_then_fails_on_a_wrong_expectation(&project.join("my-orders.wasm"), &project)
}

/// The same project built on QuickJS, as the docs say: the one engine
/// swapped for the other, `npm run build:quickjs`.
#[test]
fn js_project_builds_and_tests_on_quickjs() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let project = new_project("js", tmp.path())?;
    let npm = |args: &[&str]| {
        let mut c = Command::new("npm");
        c.args(args)
            .args(["--no-audit", "--no-fund", "--silent"])
            .current_dir(&project);
        c
    };
    run(&mut npm(&[
        "uninstall",
        "@bytecodealliance/componentize-js",
    ]))?;
    run(&mut npm(&[
        "install",
        "--save-dev",
        "componentize-qjs@0.4.5",
    ]))?;
    run(&mut npm(&["run", "build:quickjs"]))?;
    passes_then_fails_on_a_wrong_expectation(&project.join("my-orders.wasm"), &project)
}

#[test]
fn wit_out_writes_the_exact_package() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let out_dir = tmp.path().join("wit");
    let out = jetplug(
        &["wit", "--out", &out_dir.display().to_string()],
        tmp.path(),
    )?;
    assert!(out.status.success(), "{}", output_text(&out));
    let written = std::fs::read_to_string(out_dir.join("world.wit"))?;
    let source = std::fs::read_to_string(root().join("wit/world.wit"))?;
    assert_eq!(written, source);
    assert!(written.contains(&format!("package {};", jetplug::wit::PACKAGE)));
    let printed = jetplug(&["wit"], tmp.path())?;
    assert_eq!(String::from_utf8_lossy(&printed.stdout), source);
    // An earlier shipped version, as kept in wit/<version>/.
    let first = jetplug(&["wit", "--version", "0.1.0"], tmp.path())?;
    assert!(first.status.success(), "{}", output_text(&first));
    let kept = std::fs::read_to_string(root().join("wit/0.1.0/world.wit"))?;
    assert_eq!(String::from_utf8_lossy(&first.stdout), kept);
    assert!(kept.contains("package jetplug:plugin@0.1.0;"));
    let unknown = jetplug(&["wit", "--version", "0.0.9"], tmp.path())?;
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        output_text(&unknown).contains("has not shipped that WIT version (it has: 0.1.0, 0.1.1)"),
        "{}",
        output_text(&unknown)
    );
    Ok(())
}

#[test]
fn new_refuses_bad_names_and_used_directories() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let out = jetplug(&["new", "My_Plugin", "--lang", "rust"], tmp.path())?;
    assert_eq!(out.status.code(), Some(1));
    assert!(output_text(&out).contains("`My_Plugin` is not a usable plugin name"));
    std::fs::write(tmp.path().join("keep"), "x")?;
    let dir = tmp.path().display().to_string();
    let out = jetplug(&["new", "ok", "--lang", "js", "--dir", &dir], tmp.path())?;
    assert_eq!(out.status.code(), Some(1));
    assert!(output_text(&out).contains("already exists and is not empty"));
    let out = jetplug(&["new", "ok", "--lang", "go"], tmp.path())?;
    assert_eq!(
        out.status.code(),
        Some(2),
        "clap rejects an unknown language"
    );
    assert!(output_text(&out).contains("possible values: rust, python, js"));
    Ok(())
}

/// `jetplug test` with capabilities on real servers given on the command
/// line: the SDK-built indexer writes to PostgreSQL, the JS enricher
/// publishes to JetStream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_command_reaches_real_servers() -> TestResult {
    let pg = jetplug_tests::Postgres::start().await?;
    let nats = jetplug_tests::NatsServer::start().await?;
    let tmp = tempfile::tempdir()?;
    let fixture = tmp.path().join("events.jsonl");
    std::fs::write(
        &fixture,
        concat!(
            r#"{"subject": "learning.quiz.answered", "payload": {"student": "s-1", "score": 70}, "expect": "ack"}"#,
            "\n",
            r#"{"subject": "learning.quiz.answered", "payload": {"student": "s-2", "score": 20}, "expect": "ack"}"#,
            "\n",
            r#"{"subject": "learning.quiz.answered", "payload_text": "{broken", "expect": {"decision": "term", "reason": "not JSON"}}"#,
            "\n",
            // The first event again, redriven from the DLQ (new position,
            // same origin): no second row, no second publish.
            r#"{"subject": "learning.quiz.answered", "payload": {"student": "s-1", "score": 70}, "stream_seq": 9, "headers": {"Jetplug-Origin": "OFFLINE:1"}, "expect": "ack"}"#,
            "\n",
        ),
    )?;
    let fixture_s = fixture.display().to_string();
    let db = format!("events={}", pg.url());
    let out = jetplug(
        &[
            "test",
            plugins::POSTGRES_INDEXER,
            &fixture_s,
            "--database",
            &db,
            "--grant",
            "sql:events",
        ],
        tmp.path(),
    )?;
    assert!(out.status.success(), "{}", output_text(&out));
    let client = pg.connect().await?;
    assert_eq!(
        jetplug_tests::scalar(&client, "select count(*) from events").await?,
        2,
        "the redriven event keyed on its origin"
    );

    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "ENRICHED".into(),
        subjects: vec!["enriched.>".into()],
        ..Default::default()
    })
    .await?;
    let url = nats.url();
    let enrich = |grant: &str| {
        let args = ["test", plugins::ENRICHER_JS, &fixture_s, "--nats", &url];
        jetplug(&[&args[..], &["--grant", grant]].concat(), tmp.path())
    };
    let out = enrich("publish:enriched.>")?;
    assert!(out.status.success(), "{}", output_text(&out));
    let info = js.get_stream("ENRICHED").await?.get_info().await?;
    assert_eq!(info.state.messages, 2, "one publish per origin");

    // Outside its grant the publish is refused, and the test says so.
    let out = enrich("publish:other.>")?;
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("got: term: publish refused (access-denied)"),
        "{text}"
    );
    Ok(())
}

/// The Python SDK's idempotency key is the origin: its own position, or the
/// `Jetplug-Origin` a redrive set.
#[test]
fn python_idempotency_key_follows_the_origin() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let fixture = tmp.path().join("keys.jsonl");
    std::fs::write(
        &fixture,
        concat!(
            r#"{"subject": "a.b", "payload_text": "key", "expect": {"decision": "term", "reason": "^key:OFFLINE:1$"}}"#,
            "\n",
            r#"{"subject": "a.b", "payload_text": "key", "headers": {"Jetplug-Origin": "LEARNING:42"}, "expect": {"decision": "term", "reason": "^key:LEARNING:42$"}}"#,
            "\n",
        ),
    )?;
    let out = jetplug(
        &["test", plugins::TEST_PY, &fixture.display().to_string()],
        tmp.path(),
    )?;
    assert!(out.status.success(), "{}", output_text(&out));
    Ok(())
}
