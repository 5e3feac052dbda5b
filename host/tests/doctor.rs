//! `jetplug doctor` against real nats-server and PostgreSQL: a message
//! stranded the way an older jetplug could strand one (its consumer made
//! without the spare delivery, its last delivery taken and never settled,
//! the advisory heard by no one) is found from the pipeline's ledger and
//! the DLQ, `--repair` dead-letters it, and once a host of this version has
//! updated the consumer, doctor finds nothing.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::PullConsumer};
use futures::StreamExt;
use jetplug::config::Config;
use jetplug_tests::{NatsServer, Postgres, TestConfig, eventually, output_text};
use tokio_util::sync::CancellationToken;

fn doctor(config: &str, more: &[&str]) -> std::io::Result<Output> {
    Command::new(env!("CARGO_BIN_EXE_jetplug"))
        .args(["doctor", "--config", config])
        .args([
            "--ledger",
            "main=ledger:select stream_seq from handled where stream = $1",
        ])
        .args(more)
        .output()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_finds_and_repairs_a_stranded_message() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let pg = Postgres::start().await?;
    let db = pg.connect().await?;
    db.batch_execute(
        "create table handled (stream text, stream_seq int8);
         insert into handled values ('EVENTS', 1), ('EVENTS', 3);",
    )
    .await?;
    let dir = tempfile::tempdir()?;
    let path = TestConfig::noop(dir.path(), &nats.url())
        .set("host", "advisory_stream", "")
        .database("ledger", &pg.url())
        .file_in(dir.path())?;
    let config = Config::load(Path::new(&path))?;
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    jetplug::jetstream::streams::reconcile(&js, &config.provisioned_streams()).await?;

    // The consumer as a jetplug without the spare delivery made it.
    let pc = config.pipeline("main").context("pipeline")?;
    let sc = config.stream("EVENTS").context("stream")?;
    let mut old = jetplug::jetstream::consumer::config(pc, sc);
    old.max_deliver = 1;
    old.ack_wait = Duration::from_secs(1);
    let c: PullConsumer = js.get_stream("EVENTS").await?.create_consumer(old).await?;
    for p in ["a", "b", "c"] {
        js.publish("events.x", p.as_bytes().to_vec().into())
            .await?
            .await?;
    }
    // 1 and 3 handled (acked, in the ledger); 2 taken and never settled.
    let mut got = c.fetch().max_messages(3).messages().await?;
    while let Some(m) = got.next().await {
        let m = m.map_err(|e| anyhow::anyhow!("{e}"))?;
        if &m.payload[..] != b"b" {
            m.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        }
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut none = c
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(1))
        .messages()
        .await?;
    assert!(none.next().await.is_none(), "2 given up");
    // The ack floor moves past it with the next ack.
    js.publish("events.x", "d".into()).await?.await?;
    db.batch_execute("insert into handled values ('EVENTS', 4)")
        .await?;
    let mut got = c.fetch().max_messages(1).messages().await?;
    let d = got
        .next()
        .await
        .context("4 delivered")?
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    d.double_ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;

    let out = doctor(&path, &[])?;
    let t = output_text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("the consumer's max_deliver is 1, not 6"), "{t}");
    assert!(
        t.contains("1 of 4 passed messages were neither handled nor dead-lettered (stranded): #2"),
        "{t}"
    );

    let out = doctor(&path, &["--repair"])?;
    let t = output_text(&out);
    assert!(t.contains("repaired: 1 dead-lettered"), "{t}");
    let dlq = js.get_stream("DLQ").await?.get_raw_message(1).await?;
    assert_eq!(&dlq.payload[..], b"b");
    assert_eq!(
        dlq.headers
            .get("Jetplug-Reason")
            .map(|v| v.as_str().starts_with("stranded:")),
        Some(true)
    );

    // A host of this version updates the consumer; nothing is left.
    let shutdown = CancellationToken::new();
    let host = tokio::spawn(jetplug::host::run(config, shutdown.clone(), |_| {}));
    eventually(Duration::from_secs(30), "the consumer updated", || async {
        let mut c: PullConsumer = js
            .get_stream("EVENTS")
            .await?
            .get_consumer("jetplug-main-EVENTS")
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(c.info().await?.config.max_deliver == 6)
    })
    .await?;
    shutdown.cancel();
    host.await??;
    let out = doctor(&path, &[])?;
    let t = output_text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("4 passed messages checked: each handled or dead-lettered"),
        "{t}"
    );
    assert!(t.contains("no problems found"), "{t}");
    Ok(())
}
