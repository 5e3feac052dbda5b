//! Secrets stay secret, and the admin API is guarded: a host configured with
//! a NATS token from the environment, a database password in its URL and an
//! admin token from a file runs every command and serves every endpoint —
//! logging at `trace`, so libraries' debug output is included — and none of
//! the secrets appears in anything it prints or answers. The admin token
//! guards every endpoint but `/healthz` and `/readyz`.

use std::path::Path;
use std::process::Output;

use async_nats::jetstream;
use jetplug_tests::{
    HostProcess, NatsServer, Postgres, TestConfig, eventually, free_port, http_get_with,
    output_text, plugins,
};

const NATS_TOKEN: &str = "nats-S3cret-tok3n-4242";
const DB_PASSWORD: &str = "pg-S3cret-pa55-4242";
const ADMIN_TOKEN: &str = "admin-S3cret-b3arer-4242";
const URL_PASSWORD: &str = "url-S3cret-pw-4242";
/// Every level, but the compiler's own tracing (types and code, no secrets;
/// megabytes of it).
const LOG: &str = "trace,wasmtime=info,wasmtime_environ=info,cranelift_codegen=info,cranelift_frontend=info,wasmtime_cranelift=info";
const WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// The host's config (and its admin token file); `database` is the URL of
/// database `db`.
fn config(dir: &Path, nats: &str, database: &str, admin: &str) -> anyhow::Result<TestConfig> {
    let token_file = dir.join("admin.token");
    std::fs::write(&token_file, format!("{ADMIN_TOKEN}\n"))?;
    Ok(TestConfig::events(dir, nats)
        .set("nats", "token", "${JETPLUG_TEST_NATS_TOKEN}")
        .set("admin", "address", admin)
        .set("admin", "token_file", "admin.token")
        .database("db", database)
        .table("kv.cache")
        .plugin("caps", plugins::TEST_CAPABILITIES)
        .set("plugin.caps.grants", "sql", vec!["db"])
        .set("plugin.caps.grants", "publish", vec!["events.>"])
        .set("plugin.caps.grants", "kv", vec!["cache"])
        .pipeline("main", &["EVENTS"], "caps")
        .unset("pipeline.main", "batch_max_wait"))
}

/// `jetplug ARGS --config CONFIG` with the secrets in its environment.
fn with_secrets(config: &Path, args: &[&str]) -> std::io::Result<Output> {
    jetplug_tests::jetplug_cmd()?
        .args(args)
        .arg("--config")
        .arg(config)
        .env("JETPLUG_TEST_NATS_TOKEN", NATS_TOKEN)
        .env("JETPLUG_LOG", LOG)
        .output()
}

fn assert_clean(what: &str, text: &str) {
    for secret in [NATS_TOKEN, DB_PASSWORD, ADMIN_TOKEN, URL_PASSWORD] {
        assert!(!text.contains(secret), "{what} shows a secret:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_command_or_endpoint_shows_a_secret_and_the_admin_api_is_guarded() -> anyhow::Result<()>
{
    let nats =
        NatsServer::start_with(&format!("authorization {{ token: \"{NATS_TOKEN}\" }}")).await?;
    let pg = Postgres::start().await?;
    let dir = tempfile::tempdir()?;
    let admin_port = free_port()?;
    // A bare port: the admin server binds loopback.
    let db_url = |query: &str| {
        format!(
            "postgres://postgres:{DB_PASSWORD}@127.0.0.1:{}/postgres{query}",
            pg.port()
        )
    };
    let base = config(
        dir.path(),
        &nats.url(),
        &db_url(""),
        &admin_port.to_string(),
    )?;
    let path = base.write_in(dir.path())?;
    let admin = format!("127.0.0.1:{admin_port}");
    let mut outputs = Vec::new();

    for args in [
        &["check"][..],
        &["streams", "apply"],
        &["streams", "diff"],
        &[
            "publish",
            "--subject",
            "events.a",
            "--count",
            "20",
            "--malformed-every",
            "0",
        ],
    ] {
        let out = with_secrets(&path, args)?;
        assert!(out.status.success(), "{args:?}: {}", output_text(&out));
        outputs.push((format!("{args:?}"), output_text(&out)));
    }

    let host = HostProcess::start_with_env(
        env!("CARGO_BIN_EXE_jetplug"),
        &path,
        admin.clone(),
        dir.path().join("host.log"),
        &[
            ("JETPLUG_TEST_NATS_TOKEN", NATS_TOKEN),
            ("JETPLUG_LOG", LOG),
        ],
    )?;
    host.ready().await?;
    let js = jetstream::new(
        async_nats::ConnectOptions::with_token(NATS_TOKEN.into())
            .connect(nats.url())
            .await?,
    );
    for _ in 0..5 {
        js.publish("events.sql", "sql:db".into()).await?.await?;
    }
    // Every message handled: 20 dead-lettered (their payload is not a
    // command), 5 acked after a query on the database.
    eventually(WAIT, "25 messages settled", || async {
        let (_, m) = http_get_with(&admin, "/metrics", Some(ADMIN_TOKEN)).await?;
        let settled: f64 = m
            .lines()
            .filter(|l| l.starts_with("jetplug_messages_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        Ok(settled >= 25.0)
    })
    .await?;

    // The guard: probes open, everything else needs the bearer token.
    for path in ["/healthz", "/readyz"] {
        let (code, body) = http_get_with(&admin, path, None).await?;
        assert_eq!(code, 200, "{path} stays open");
        outputs.push((path.to_owned(), body));
    }
    for path in ["/metrics", "/v1/pipelines", "/v1/plugins", "/v1/tenants"] {
        let (code, _) = http_get_with(&admin, path, None).await?;
        assert_eq!(code, 401, "{path} without a token");
        let (code, _) = http_get_with(&admin, path, Some("not-the-token")).await?;
        assert_eq!(code, 401, "{path} with a wrong token");
        let (code, body) = http_get_with(&admin, path, Some(ADMIN_TOKEN)).await?;
        assert_eq!(code, 200, "{path} with the token");
        outputs.push((path.to_owned(), body));
    }

    // One-shot commands against the running host and its streams.
    for args in [&["plugin", "list"][..], &["dlq", "list"]] {
        let out = with_secrets(&path, args)?;
        assert!(out.status.success(), "{args:?}: {}", output_text(&out));
        outputs.push((format!("{args:?}"), output_text(&out)));
    }
    // An error that carries the database URL, and one that carries the
    // NATS connection: still masked.
    let broken = base
        .clone()
        .database(
            "db",
            &db_url(&format!("?password={DB_PASSWORD}&port=notaport")),
        )
        .write(&dir.path().join("broken.toml"))?;
    let out = with_secrets(&broken, &["check"])?;
    outputs.push(("check (broken url)".into(), output_text(&out)));
    let out = jetplug_tests::jetplug_cmd()?
        .args(["streams", "diff", "--config"])
        .arg(&path)
        .env("JETPLUG_TEST_NATS_TOKEN", "wrong-token-but-secret-4242")
        .env("JETPLUG_LOG", LOG)
        .output()?;
    assert!(!out.status.success());
    let text = output_text(&out);
    assert!(!text.contains("wrong-token-but-secret-4242"), "{text}");
    outputs.push(("streams diff (refused)".into(), text));

    // Credentials in a NATS URL: the client library logs the parsed URL,
    // password included, at debug level; the output masks it.
    let users = NatsServer::start_with(&format!(
        "authorization {{ user: \"app\", password: \"{URL_PASSWORD}\" }}"
    ))
    .await?;
    let in_url = base
        .clone()
        .set(
            "nats",
            "url",
            users
                .url()
                .replace("nats://", &format!("nats://app:{URL_PASSWORD}@")),
        )
        .unset("nats", "token")
        .write(&dir.path().join("in-url.toml"))?;
    let out = with_secrets(&in_url, &["streams", "diff"])?;
    assert!(out.status.success(), "{}", output_text(&out));
    outputs.push(("streams diff (URL credentials)".into(), output_text(&out)));

    drop(host);
    outputs.push((
        "host log".into(),
        std::fs::read_to_string(dir.path().join("host.log"))?,
    ));
    let log = &outputs.last().map(|o| o.1.clone()).unwrap_or_default();
    assert!(
        log.contains("TRACE") && log.contains("postgres"),
        "the host logged at trace level, database included"
    );
    for (what, text) in &outputs {
        assert_clean(what, text);
    }
    Ok(())
}
