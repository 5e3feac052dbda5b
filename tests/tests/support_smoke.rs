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
