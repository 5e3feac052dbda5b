//! PostgreSQL TLS per database (`sslmode`), against a real PostgreSQL with
//! `ssl = on` that takes TCP connections only over TLS, and a CA made here:
//! `require`, `verify-ca` and `verify-full` connect encrypted (checked from
//! `pg_stat_ssl`), `disable` is refused by the server, a CA that did not
//! sign the server's certificate is refused, and under `verify-full` a host
//! name the certificate was not issued for is refused (while `verify-ca`
//! takes it).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use jetplug::capability::{Backends, Grants};
use jetplug::config::{DatabaseConfig, SslMode};
use jetplug::engine::Runtime;
use jetplug_tests::{Postgres, TestCa};

use jetplug_tests::caps::{ask, caps};

/// Runs `select … where ssl` through the plugin's `sql` capability on a
/// database set up as `db`: `Ok("ok:1")` on an encrypted connection, the
/// capability's error otherwise.
async fn encrypted(runtime: &Arc<Runtime>, db: DatabaseConfig) -> anyhow::Result<String> {
    let backends = Backends::with_databases(&BTreeMap::from([("db".to_owned(), db)]))?;
    let grants = Grants {
        log: true,
        publish: vec!["out.>".into()],
        sql: vec!["db".into()],
        kv: vec!["state".into()],
        sql_role: None,
    };
    let mut instance = caps(runtime, grants, backends)?;
    let query = "sql-exec|db|select 1 from pg_stat_ssl where pid = pg_backend_pid() and ssl";
    ask(&mut instance, query).await
}

fn db(url: String, mode: SslMode, ca: Option<&Path>) -> DatabaseConfig {
    DatabaseConfig {
        sslmode: mode,
        sslrootcert: ca.map(Path::to_path_buf),
        timeout: jetplug::config::Dur(std::time::Duration::from_secs(3)),
        ..DatabaseConfig::new(url)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmodes_against_a_server_that_requires_tls() -> anyhow::Result<()> {
    let ca = TestCa::new("jetplug test CA")?;
    // Issued for the address only: `localhost` is not its name.
    let server = ca.issue("pg", &["127.0.0.1"])?;
    let pg = Postgres::start_tls(&server).await?;
    let runtime = jetplug_tests::caps::runtime()?;
    let by_ip = format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port());
    let by_name = format!("postgres://postgres@localhost:{}/postgres", pg.port());
    let ca_file = ca.ca_file();

    for (url, mode) in [
        (&by_ip, SslMode::Require),
        (&by_ip, SslMode::VerifyCa),
        (&by_ip, SslMode::VerifyFull),
        (&by_name, SslMode::VerifyCa),
    ] {
        let got = encrypted(&runtime, db(url.clone(), mode, Some(&ca_file))).await?;
        assert_eq!(got, "ok:1", "{mode:?} to {url}: an encrypted connection");
    }

    let plain = encrypted(&runtime, db(by_ip.clone(), SslMode::Disable, None)).await?;
    assert!(
        plain.contains("unavailable") && plain.contains("no encryption"),
        "the server refuses a plaintext connection: {plain}"
    );
    let stranger = TestCa::new("another CA")?;
    let wrong_ca = encrypted(
        &runtime,
        db(by_ip.clone(), SslMode::VerifyCa, Some(&stranger.ca_file())),
    )
    .await?;
    assert!(
        wrong_ca.contains("unavailable") && wrong_ca.to_lowercase().contains("certificate"),
        "a CA that did not sign the server's certificate: {wrong_ca}"
    );
    let mismatch = encrypted(&runtime, db(by_name, SslMode::VerifyFull, Some(&ca_file))).await?;
    assert!(
        mismatch.contains("unavailable") && mismatch.to_lowercase().contains("not valid for name"),
        "verify-full to a name the certificate was not issued for: {mismatch}"
    );
    Ok(())
}

#[test]
fn verifying_modes_need_a_ca() {
    let text = "[database.db]\nurl = \"postgres://u@h/d\"\nsslmode = \"verify-full\"\n";
    let err = jetplug::config::Config::parse(text, Path::new("t.toml"), Path::new("."))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("database.db.sslrootcert"), "{err}");
    let text = "[database.db]\nurl = \"postgres://u@h/d\"\nsslmode = \"verify-everything\"\n";
    let err = jetplug::config::Config::parse(text, Path::new("t.toml"), Path::new("."))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("database.db.sslmode") && err.contains("verify-full"),
        "{err}"
    );
}
