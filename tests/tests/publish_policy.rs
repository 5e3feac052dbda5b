//! `[nats.publish]` against real nats-servers: publishes ride out a server
//! killed and restarted under them (nothing lost, nothing stored twice),
//! the plugin sees `unavailable` only once the policy is spent, and a
//! refusal — no stream, the server's permissions — is answered at once,
//! never retried.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use jetplug::capability::publish::retry::Refusals;
use jetplug::capability::{Backends, Grants};
use jetplug::config::{Dur, PublishPolicy};
use jetplug::plugin::{self, Limits, PluginInstance, PluginSpec};
use jetplug_tests::{NatsServer, caps, plugins};

fn policy(attempts: u32, timeout_ms: u64) -> PublishPolicy {
    PublishPolicy {
        attempts,
        initial_delay: Dur(Duration::from_millis(100)),
        multiplier: 2.0,
        max_delay: Dur(Duration::from_millis(500)),
        timeout: Dur(Duration::from_millis(timeout_ms)),
    }
}

/// The test-capabilities plugin publishing through `js` under `policy`,
/// with a deadline long enough for the policy to run its course.
fn publisher(
    js: jetstream::Context,
    policy: PublishPolicy,
    refusals: Arc<Refusals>,
) -> anyhow::Result<PluginInstance> {
    let backends = Backends::offline();
    backends.set_nats(js);
    backends.set_publishing(policy, refusals);
    let spec = PluginSpec {
        grants: Grants {
            log: true,
            publish: vec!["out.>".into(), "nowhere.>".into()],
            // Imported by the plugin; no database is declared, so unused.
            sql: vec!["unused".into()],
            kv: vec!["unused".into()],
            sql_role: None,
        },
        limits: Limits {
            deadline: Duration::from_secs(120),
            ..Limits::default()
        },
        ..PluginSpec::new("caps", plugins::TEST_CAPABILITIES)
    };
    Ok(PluginInstance::new(Arc::new(plugin::load_with(
        &caps::runtime()?,
        spec,
        backends,
    )?)))
}

async fn out_stream(js: &jetstream::Context) -> anyhow::Result<()> {
    js.create_stream(jetstream::stream::Config {
        name: "OUT".into(),
        subjects: vec!["out.>".into()],
        ..Default::default()
    })
    .await?;
    Ok(())
}

fn retries() -> u64 {
    jetplug::metrics::PUBLISH_RETRIES
        .get_or_create(&jetplug::metrics::labels(&[("source", "plugin")]))
        .get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_ride_out_a_server_restart_without_loss_or_duplicates() -> anyhow::Result<()> {
    let mut nats = NatsServer::start().await?;
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    out_stream(&js).await?;
    // Up to 30 attempts, ~0.5 s apart: a window of ~25 s for the restart.
    let mut plugin = publisher(js.clone(), policy(30, 300), Arc::default())?;
    let before = retries();
    const N: usize = 120;
    let (kill_at, killed) = (40, tokio::sync::oneshot::channel::<()>());
    let (tell, heard) = killed;
    let restarter = tokio::spawn(async move {
        heard.await?;
        nats.kill().await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        nats.restart().await?;
        anyhow::Ok(nats)
    });
    let mut tell = Some(tell);
    for i in 0..N {
        if i == kill_at
            && let Some(t) = tell.take()
        {
            let _ = t.send(());
        }
        // Half with the plugin's own ids, half with the host's.
        let id = if i.is_multiple_of(2) {
            format!("id-{i}")
        } else {
            String::new()
        };
        let answer = caps::ask(&mut plugin, &format!("publish|out.{i}|{id}")).await?;
        // With the plugin's id, an attempt stored before its acknowledgement
        // was lost makes the next one a `duplicate` (stored, once); with the
        // host's own id that is never reported.
        assert!(
            answer.starts_with("ok:OUT:") && (id.is_empty() <= answer.ends_with(":false")),
            "message {i}: {answer}"
        );
    }
    let nats = restarter.await??;
    assert!(retries() > before, "the outage was ridden out by retries");
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    let mut out = js.get_stream("OUT").await?;
    let state = out.info().await?.state.clone();
    assert_eq!(state.messages, N as u64, "each publish stored exactly once");
    let mut seen = std::collections::BTreeSet::new();
    for seq in state.first_sequence..=state.last_sequence {
        let m = out.get_raw_message(seq).await?;
        assert!(seen.insert(m.subject.to_string()), "{} twice", m.subject);
    }
    assert_eq!(seen.len(), N);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_only_once_the_policy_is_spent_and_refusals_are_not_retried()
-> anyhow::Result<()> {
    let mut nats = NatsServer::start().await?;
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    out_stream(&js).await?;
    let mut plugin = publisher(js.clone(), policy(3, 300), Arc::default())?;
    // No stream captures it: refused at once (retried, it would end as
    // `unavailable … after 3 attempts`).
    let answer = caps::ask(&mut plugin, "publish|nowhere.a|").await?;
    assert_eq!(answer, "invalid: no stream captures subject `nowhere.a`");
    let before = retries();

    nats.kill().await?;
    let answer = caps::ask(&mut plugin, "publish|out.down|").await?;
    assert!(
        answer.starts_with("unavailable: publish to `out.down` failed after 3 attempts"),
        "{answer}"
    );
    assert!(
        retries() >= before + 2,
        "two retries after the first attempt"
    );
    Ok(())
}

/// A subject the server's permissions forbid: the server says so on the
/// connection, the host matches it to the publish and answers
/// `access-denied` after the first attempt — not `unavailable` after all
/// fifty the policy would allow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permissions_violation_is_access_denied_at_once() -> anyhow::Result<()> {
    let nats = NatsServer::start_with(
        "authorization { users = [ { user: pub, password: s3cret-pw, permissions: { \
         publish: { allow: [\"out.open.>\", \"$JS.API.>\", \"_INBOX.>\"] }, \
         subscribe: { allow: [\">\"] } } } ] }",
    )
    .await?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("jetplug.toml");
    std::fs::write(
        &path,
        format!(
            "[nats]\nurl = \"{}\"\nuser = \"pub\"\npassword = \"s3cret-pw\"\n",
            nats.url()
        ),
    )?;
    let config = jetplug::config::Config::load(&path)?;
    let health = jetplug::jetstream::Health::new();
    let client = jetplug::jetstream::connect(&config.nats, &health).await?;
    let js = jetstream::new(client);
    out_stream(&js).await?;
    let mut plugin = publisher(js, policy(50, 500), health.publish_refusals())?;
    let open = caps::ask(&mut plugin, "publish|out.open.a|").await?;
    assert!(open.starts_with("ok:OUT:"), "{open}");
    let closed = caps::ask(&mut plugin, "publish|out.secret.a|").await?;
    assert_eq!(
        closed,
        "access-denied: the NATS server's permissions forbid publishing to `out.secret.a`"
    );
    Ok(())
}
