//! The AIVO example end to end against real nats-server and PostgreSQL:
//! every valid event indexed once, learning and focus events counted exactly,
//! malformed events dead-lettered with their reason and nowhere else — also
//! after every message is delivered a second time.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use jetplug::config::Config;
use jetplug::host;
use jetplug_tests::{NatsServer, Postgres, eventually, scalar};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(60);

fn aivo_config(nats: &NatsServer, pg: &Postgres, cache: &Path) -> anyhow::Result<Config> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/aivo/jetplug.toml");
    let mut config = Config::load(&path)?;
    config.nats.url = nats.url().as_str().into();
    config.nats.connect_delay = jetplug::config::Dur(Duration::from_millis(200));
    config.engine.cache_dir = Some(cache.to_path_buf());
    config
        .databases
        .get_mut("events")
        .context("events database")?
        .url = Some(jetplug::config::Secret::new(pg.url()));
    Ok(config)
}

/// (subject, valid events, malformed events)
const TRAFFIC: &[(&str, usize, usize)] = &[
    ("learning.quiz.answered", 30, 2),
    ("learning.lesson.completed", 10, 0),
    ("focus.session.started", 30, 0),
    ("homework.assignment.submitted", 20, 1),
    ("recommendation.item.shown", 10, 0),
    // The topology's two-token subjects: `<domain>.<action>`.
    ("focus.ping", 4, 0),
    ("recommendation.created", 6, 0),
];

async fn publish_traffic(js: &jetstream::Context) -> anyhow::Result<()> {
    for (subject, valid, malformed) in TRAFFIC {
        for i in 0..*valid {
            let body = format!(r#"{{"student":"s-{i}","n":{i}}}"#);
            js.publish(*subject, body.into_bytes().into())
                .await?
                .await?;
        }
        for _ in 0..*malformed {
            js.publish(*subject, b"{not json".to_vec().into())
                .await?
                .await?;
        }
    }
    Ok(())
}

async fn dlq(js: &jetstream::Context) -> anyhow::Result<Vec<(String, String)>> {
    let mut s = js.get_stream("DLQ").await?;
    let last = s.info().await?.state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        if let Ok(m) = s.get_raw_message(seq).await {
            let reason = m
                .headers
                .get("Jetplug-Reason")
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default();
            out.push((m.subject.to_string(), reason));
        }
    }
    Ok(out)
}

async fn settled(js: &jetstream::Context) -> anyhow::Result<bool> {
    for (pipeline, stream) in [
        ("indexer", "LEARNING"),
        ("indexer", "FOCUS"),
        ("indexer", "HOMEWORK"),
        ("indexer", "RECOMMENDATION"),
        ("analytics", "LEARNING"),
        ("analytics", "FOCUS"),
    ] {
        let mut c: jetstream::consumer::PullConsumer = js
            .get_stream(stream)
            .await?
            .get_consumer(pipeline)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let info = c.info().await?;
        if info.num_pending > 0 || info.num_ack_pending > 0 {
            return Ok(false);
        }
    }
    Ok(true)
}

async fn run_until_settled(
    config: Config,
    js: &jetstream::Context,
    db: &tokio_postgres::Client,
) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(host::run(config, shutdown.clone(), |_| {}));
    eventually(
        WAIT,
        "all events indexed and every consumer settled",
        || async {
            Ok(
                scalar(db, "select count(*) from events").await.unwrap_or(0) >= 110
                    && settled(js).await?
                    && dlq(js).await?.len() >= 5,
            )
        },
    )
    .await?;
    shutdown.cancel();
    task.await??;
    Ok(())
}

async fn check_results(js: &jetstream::Context, db: &tokio_postgres::Client) -> anyhow::Result<()> {
    assert_eq!(
        scalar(db, "select count(*) from events").await?,
        110,
        "each valid event indexed once"
    );
    for (domain, entity, action, n) in [
        ("focus", "focus", "ping", 4),
        ("recommendation", "recommendation", "created", 6),
        ("recommendation", "item", "shown", 10),
    ] {
        let rows = db
            .query_one(
                "select count(*) from events where domain = $1 and entity = $2 and action = $3",
                &[&domain, &entity, &action],
            )
            .await?
            .get::<_, i64>(0);
        assert_eq!(rows, n, "{domain}/{entity}/{action}");
    }
    assert_eq!(
        scalar(
            db,
            "select count(*) from events where '' in (domain, entity, action)"
        )
        .await?,
        0,
        "no empty subject part"
    );
    assert_eq!(
        scalar(db, "select count(*) from events where domain = 'learning' and entity = 'quiz' and action = 'answered'").await?,
        30
    );
    assert_eq!(
        scalar(
            db,
            "select count(distinct (stream, stream_seq)) from events"
        )
        .await?,
        110
    );
    assert_eq!(
        scalar(db, "select coalesce(sum(count), 0)::int8 from event_counts").await?,
        74,
        "learning + focus, exact"
    );
    assert_eq!(
        scalar(
            db,
            "select coalesce(sum(count), 0)::int8 from event_counts where domain = 'focus'"
        )
        .await?,
        34
    );
    let dead = dlq(js).await?;
    assert_eq!(dead.len(), 5, "{dead:?}");
    let count = |s: &str| dead.iter().filter(|(subj, _)| subj == s).count();
    assert_eq!(count("dlq.learning.indexer"), 2);
    assert_eq!(count("dlq.learning.analytics"), 2);
    assert_eq!(count("dlq.homework.indexer"), 1);
    assert!(
        dead.iter()
            .all(|(_, r)| r.starts_with("payload is not JSON")),
        "{dead:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aivo_end_to_end_exact_under_redelivery() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let pg = Postgres::start().await?;
    let cache = tempfile::tempdir()?;
    let db = pg.connect().await?;
    let js = jetstream::new(async_nats::connect(nats.url()).await?);

    let config = aivo_config(&nats, &pg, cache.path())?;
    // Streams exist before traffic arrives (as they would in production).
    jetplug::jetstream::streams::reconcile(&js, &config.streams).await?;
    publish_traffic(&js).await?;
    run_until_settled(config, &js, &db).await?;
    check_results(&js, &db).await?;

    // Deliver everything again: delete the durable consumers, so the next
    // host re-creates them from the start of every stream.
    for (pipeline, stream) in [
        ("indexer", "LEARNING"),
        ("indexer", "HOMEWORK"),
        ("analytics", "LEARNING"),
        ("analytics", "FOCUS"),
    ] {
        js.get_stream(stream)
            .await?
            .delete_consumer(pipeline)
            .await?;
    }
    run_until_settled(aivo_config(&nats, &pg, cache.path())?, &js, &db).await?;
    check_results(&js, &db).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_router_rules_pick_the_subject() -> anyhow::Result<()> {
    use jetplug::config::ConfigValue;
    let nats = NatsServer::start().await?;
    let pg = Postgres::start().await?;
    let cache = tempfile::tempdir()?;
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    let mut config = aivo_config(&nats, &pg, cache.path())?;
    let router = config.plugins.get_mut("dlq-router").context("dlq-router")?;
    router.config.insert(
        "rule.1".into(),
        ConfigValue::Text("subject=homework.> => dlq.homework.{pipeline}.late".into()),
    );
    router.config.insert(
        "rule.2".into(),
        ConfigValue::Text("reason~not JSON => dlq.{domain}.malformed".into()),
    );
    jetplug::jetstream::streams::reconcile(&js, &config.streams).await?;
    js.publish("learning.quiz.answered", b"nope".to_vec().into())
        .await?
        .await?;
    js.publish("homework.assignment.submitted", b"nope".to_vec().into())
        .await?
        .await?;

    let shutdown = CancellationToken::new();
    let task = tokio::spawn(host::run(config, shutdown.clone(), |_| {}));
    eventually(WAIT, "3 dead letters", || async {
        Ok(dlq(&js).await?.len() == 3)
    })
    .await?;
    shutdown.cancel();
    task.await??;
    let mut subjects: Vec<String> = dlq(&js).await?.into_iter().map(|(s, _)| s).collect();
    subjects.sort();
    assert_eq!(
        subjects,
        [
            "dlq.homework.indexer.late",
            "dlq.learning.malformed",
            "dlq.learning.malformed"
        ]
    );
    Ok(())
}
