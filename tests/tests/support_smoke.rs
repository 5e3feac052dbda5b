//! The test-support servers are real: JetStream stores and survives a
//! restart, PostgreSQL answers queries, keeps data across a restart and is
//! gone after drop.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use jetplug_tests::{NatsServer, Postgres};

#[tokio::test]
async fn nats_server_with_jetstream_survives_kill_and_restart() -> anyhow::Result<()> {
    let mut nats = NatsServer::start().await?;
    let client = async_nats::connect(nats.url()).await?;
    let js = jetstream::new(client);
    js.create_stream(stream::Config {
        name: "SMOKE".into(),
        subjects: vec!["smoke.>".into()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    let ack = js.publish("smoke.one", "hello".into()).await?.await?;
    assert_eq!(ack.sequence, 1);

    nats.kill().await?;
    assert!(!nats.is_running());
    nats.restart().await?;
    assert!(nats.is_running());

    let client = async_nats::connect(nats.url()).await?;
    let js = jetstream::new(client);
    let mut s = js.get_stream("SMOKE").await?;
    assert_eq!(
        s.info().await?.state.messages,
        1,
        "file-stored message survives a crash"
    );
    let msg = s.get_raw_message(1).await?;
    assert_eq!(&msg.payload[..], b"hello");
    Ok(())
}

#[tokio::test]
async fn postgres_runs_restarts_and_stops_on_drop() -> anyhow::Result<()> {
    let mut pg = Postgres::start().await?;
    let port = pg.port();
    let db = pg.connect().await?;
    db.batch_execute("create table t (id int primary key); insert into t values (1), (2)")
        .await?;
    pg.restart().await?;
    let db = pg.connect().await?;
    let n: i64 = db.query_one("select count(*) from t", &[]).await?.get(0);
    assert_eq!(n, 2);
    drop(db);
    drop(pg);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err(),
        "server still listening after drop"
    );
    Ok(())
}

/// The scripts' launcher: servers ready when the env file appears, kept
/// data reused on the next start, everything stopped on SIGTERM.
#[tokio::test]
async fn jetplug_servers_starts_reuses_and_stops_what_it_is_asked_for() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let env = dir.path().join("servers.env");
    let launch = || -> anyhow::Result<std::process::Child> {
        let _ = std::fs::remove_file(&env);
        Ok(
            std::process::Command::new(env!("CARGO_BIN_EXE_jetplug-servers"))
                .arg("--dir")
                .arg(dir.path().join("home"))
                .arg("--env")
                .arg(&env)
                .args(["--nats", "0", "--postgres", "0"])
                .stderr(std::process::Stdio::piped())
                .spawn()?,
        )
    };
    let vars = |text: &str, key: &str| -> anyhow::Result<String> {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("no {key} in {text}"))
    };
    let ready = || async {
        jetplug_tests::eventually(Duration::from_secs(60), "servers.env", || async {
            Ok(env.is_file())
        })
        .await?;
        Ok::<_, anyhow::Error>(std::fs::read_to_string(&env)?)
    };
    let stop = |mut child: std::process::Child| -> anyhow::Result<()> {
        let pid = child.id().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()?;
        let status = child.wait()?;
        anyhow::ensure!(status.success(), "jetplug-servers exited with {status}");
        Ok(())
    };

    let child = launch()?;
    let text = ready().await?;
    let js = jetstream::new(async_nats::connect(vars(&text, "NATS_URL")?).await?);
    js.create_stream(stream::Config {
        name: "KEPT".into(),
        subjects: vec!["kept.>".into()],
        ..Default::default()
    })
    .await?;
    js.publish("kept.a", "x".into()).await?.await?;
    let (db, conn) =
        tokio_postgres::connect(&vars(&text, "PG_URL")?, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    db.batch_execute("create table kept (n int); insert into kept values (7)")
        .await?;
    drop(db);
    let nats_url = vars(&text, "NATS_URL")?;
    stop(child)?;
    assert!(
        async_nats::connect(&nats_url).await.is_err(),
        "nats-server still answers at {nats_url} after SIGTERM"
    );

    // Started again in the same directory: the data is still there.
    let child = launch()?;
    let text = ready().await?;
    let js = jetstream::new(async_nats::connect(vars(&text, "NATS_URL")?).await?);
    assert_eq!(js.get_stream("KEPT").await?.info().await?.state.messages, 1);
    let (db, conn) =
        tokio_postgres::connect(&vars(&text, "PG_URL")?, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    assert_eq!(
        jetplug_tests::scalar(&db, "select n::int8 from kept").await?,
        7
    );
    drop(db);
    stop(child)
}

#[test]
fn jetplug_servers_names_a_bad_argument() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_jetplug-servers"))
        .arg("--dir")
        .arg(dir.path())
        .arg("--env")
        .arg(dir.path().join("env"))
        .args(["--cluster", "0,0"])
        .output()?;
    assert!(!out.status.success());
    let text = jetplug_tests::output_text(&out);
    assert!(
        text.contains("--cluster: three ports, one per node (got 2)"),
        "{text}"
    );
    assert!(!dir.path().join("env").exists());
    Ok(())
}
