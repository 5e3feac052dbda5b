//! Upgrading jetplug itself under load, as a rolling update does: two host
//! processes share a pipeline while events arrive steadily; each is
//! stopped with SIGTERM (it drains: stops pulling, finishes and settles
//! what it holds, exits 0) and replaced by a new process, one after the
//! other. Every message is settled — none lost — and nothing is
//! dead-lettered. (The new processes run the same binary: what is tested
//! is the handover, which a new version goes through the same way.)
//! Redeliveries are counted, not forbidden: a message the server had
//! already sent into a stopping host's open pull request as it stopped
//! listening comes back after `ack_wait` (rare: seen once in a loaded CI
//! run; the drain itself redelivers nothing).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use jetplug_tests::{HostProcess, NatsServer, TestConfig, eventually, free_port};

const WAIT: Duration = Duration::from_secs(90);

fn host(dir: &std::path::Path, nats: &str, name: &str) -> anyhow::Result<HostProcess> {
    let admin = format!("127.0.0.1:{}", free_port()?);
    let config = TestConfig::noop(dir, nats)
        .set("admin", "address", admin.as_str())
        .set("host", "shutdown_timeout", "20s")
        .set("pipeline.main", "batch", 50)
        .set("pipeline.main", "ack_wait", "5s")
        .set("pipeline.main", "concurrency", 2);
    let path = config.write(&dir.join(format!("{name}.toml")))?;
    let binary = jetplug_tests::jetplug_binary()?;
    HostProcess::start(
        &binary.display().to_string(),
        &path,
        admin,
        dir.join(format!("{name}.log")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_upgrade_loses_and_repeats_nothing() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let dir = tempfile::tempdir()?;
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    let mut a = host(dir.path(), &nats.url(), "a")?;
    let mut b = host(dir.path(), &nats.url(), "b")?;
    a.ready().await?;
    b.ready().await?;

    // Steady load: a message every 2 ms, each with a message id, each
    // batch of them a little slow (sleep:20) so hosts hold work when told
    // to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let publisher = {
        let (js, stop, sent) = (js.clone(), stop.clone(), sent.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let body = if i.is_multiple_of(10) {
                    "sleep:20".to_owned()
                } else {
                    format!("event {i}")
                };
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", format!("upgrade-{i}").as_str());
                js.publish_with_headers("events.upgrade", headers, body.into_bytes().into())
                    .await?
                    .await?;
                sent.fetch_add(1, Ordering::Relaxed);
                i += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            anyhow::Ok(())
        })
    };
    let sent_now = || sent.load(Ordering::Relaxed);
    eventually(WAIT, "load flowing", || async { Ok(sent_now() > 300) }).await?;

    // Replace a, then b, each while the other keeps consuming.
    let status = a.terminate(Duration::from_secs(40)).await?;
    assert!(
        status.success(),
        "a drained and exited 0: {status}\n{}",
        a.log()
    );
    let a2 = host(dir.path(), &nats.url(), "a2")?;
    a2.ready().await?;
    let halfway = sent_now();
    eventually(WAIT, "more load", || async {
        Ok(sent_now() > halfway + 300)
    })
    .await?;
    let status = b.terminate(Duration::from_secs(40)).await?;
    assert!(
        status.success(),
        "b drained and exited 0: {status}\n{}",
        b.log()
    );
    let b2 = host(dir.path(), &nats.url(), "b2")?;
    b2.ready().await?;
    let after = sent_now();
    eventually(WAIT, "load after the upgrade", || async {
        Ok(sent_now() > after + 300)
    })
    .await?;
    stop.store(true, Ordering::Relaxed);
    publisher.await??;
    let total = sent_now();

    let consumer = || async {
        let mut c: jetstream::consumer::PullConsumer = js
            .get_stream("EVENTS")
            .await?
            .get_consumer("jetplug-main-EVENTS")
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        anyhow::Ok(c.info().await?.clone())
    };
    eventually(WAIT, "everything settled", || async {
        let info = consumer().await?;
        Ok(info.num_pending == 0
            && info.num_ack_pending == 0
            && info.ack_floor.stream_sequence >= total)
    })
    .await?;
    let info = consumer().await?;
    assert_eq!(
        info.ack_floor.stream_sequence, total,
        "every message settled"
    );
    assert!(info.delivered.consumer_sequence >= total);
    println!(
        "{total} messages, {} deliveries ({} again) across the upgrade",
        info.delivered.consumer_sequence,
        info.delivered.consumer_sequence - total
    );
    let dlq = js.get_stream("DLQ").await?.info().await?.state.messages;
    assert_eq!(dlq, 0, "nothing dead-lettered");
    for (name, h) in [("a2", &a2), ("b2", &b2)] {
        assert!(
            !h.log().contains("ERROR"),
            "{name} logged an error:\n{}",
            h.log()
        );
    }
    Ok(())
}
