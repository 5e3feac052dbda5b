//! End to end on the AIVO topology: events published to the four event
//! streams while the host runs the shipped plugins with the example's
//! pipeline settings (`examples/aivo/jetplug.toml`: the indexer on all four
//! streams, the aggregator on learning and focus, dead letters routed by the
//! dlq-router), timed from the first publish to the last event indexed and
//! counted — what a user of the example gets, database writes included.
//!
//! The tables live in a schema of their own (`jetplug_bench`, through the
//! connection's `search_path`), dropped before and after, so the run
//! touches nothing else in the database.

use std::time::{Duration, Instant};

use super::env::{self, Env};

/// Settings for [`run`].
#[derive(Debug, Clone)]
pub struct Settings {
    /// Events in all (split 4:3:2:1 over learning, focus, homework,
    /// recommendation, as the example's traffic is).
    pub count: u64,
    pub postgres_url: String,
}

/// What [`run`] measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// Events per second from the first publish to the last one indexed
    /// and (learning, focus) counted.
    pub events_per_sec: f64,
    pub indexed: u64,
    pub counted: u64,
}

const SCHEMA: &str = "jetplug_bench";
const TIMEOUT: Duration = Duration::from_secs(600);
/// (stream, subject, share of the events in tenths)
const TRAFFIC: [(&str, &str, u64); 4] = [
    ("BENCH_LEARNING", "learning.lesson.completed", 4),
    ("BENCH_FOCUS", "focus.session.started", 3),
    ("BENCH_HOMEWORK", "homework.assignment.submitted", 2),
    ("BENCH_RECOMMENDATION", "recommendation.item.shown", 1),
];

fn body(env: &Env, url: &str) -> String {
    let mut b = String::new();
    for (stream, subject, _) in TRAFFIC {
        let domain = subject.split('.').next().unwrap_or(subject);
        b.push_str(&format!(
            "\n[[stream]]\nname = \"{stream}\"\nsubjects = [\"{domain}.>\"]\n"
        ));
    }
    b.push_str(&format!(
        r#"
[[stream]]
name = "BENCH_DLQ"
subjects = ["dlq.>"]

[database.events]
url = "{url}"
pool_size = 8

[plugin.indexer]
path = "{indexer}"
grants = {{ sql = ["events"] }}
config = {{ database = "events" }}

[plugin.aggregator]
path = "{aggregator}"
grants = {{ sql = ["events"] }}
config = {{ database = "events" }}

[plugin.dlq-router]
path = "{router}"
grants = {{ publish = ["dlq.>"] }}
config = {{ default = "dlq.{{domain}}.{{pipeline}}" }}

[[pipeline]]
name = "indexer"
streams = ["BENCH_LEARNING", "BENCH_FOCUS", "BENCH_HOMEWORK", "BENCH_RECOMMENDATION"]
plugin = "indexer"
dead_letter = "dlq-router"
max_deliver = 5
batch = 500
max_ack_pending = 2000

[[pipeline]]
name = "analytics"
streams = ["BENCH_LEARNING", "BENCH_FOCUS"]
plugin = "aggregator"
dead_letter = "dlq-router"
effects = "exactly-once"
effects_schema = "{schema}"
max_deliver = 3
batch = 500
max_ack_pending = 2000
"#,
        schema = SCHEMA,
        indexer = env.plugin("postgres_indexer.wasm").display(),
        aggregator = env.plugin("analytics_aggregator.wasm").display(),
        router = env.plugin("dlq_router.wasm").display(),
    ));
    b
}

/// `url` (a URL or `key=value` pairs) with the bench schema first on the
/// search path.
fn in_schema(url: &str) -> String {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}options=-csearch_path%3D{SCHEMA}")
    } else {
        format!("{url} options='-csearch_path={SCHEMA}'")
    }
}

pub async fn run(env: &Env, s: &Settings) -> anyhow::Result<Report> {
    let pg = super::indexer::db(&s.postgres_url).await?;
    pg.batch_execute(&format!(
        "DROP SCHEMA IF EXISTS {SCHEMA} CASCADE; CREATE SCHEMA {SCHEMA}"
    ))
    .await?;
    // The indexer benchmark's stream takes learning.> too.
    let _ = env.js.delete_stream("BENCH_IDX").await;
    let (path, config) = env.config("aivo", "cache", &body(env, &in_schema(&s.postgres_url)))?;
    env.fresh_streams(&config).await?;

    let host = env.spawn_host(&path, "aivo.log")?;
    // Ready once the host has made its consumers.
    let ready = Instant::now();
    loop {
        let made = match env.js.get_stream("BENCH_LEARNING").await {
            Ok(st) => st
                .get_consumer::<async_nats::jetstream::consumer::pull::Config>(
                    "jetplug-analytics-BENCH_LEARNING",
                )
                .await
                .is_ok(),
            Err(_) => false,
        };
        if made {
            break;
        }
        anyhow::ensure!(
            ready.elapsed() < Duration::from_secs(60),
            "the host did not create its consumers within 60 s (see aivo.log in {})",
            env.dir.path().display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let bar = env::bar(s.count, "AIVO: publishing while the host runs");
    let started = Instant::now();
    let mut per_stream = Vec::new();
    let mut sent = 0;
    for (i, (stream, subject, tenths)) in TRAFFIC.iter().enumerate() {
        let n = if i + 1 == TRAFFIC.len() {
            s.count - sent
        } else {
            s.count * tenths / 10
        };
        env.publish(
            subject,
            n,
            |k| format!(r#"{{"student":"s-{}","n":{k},"score":0.8}}"#, k % 500).into_bytes(),
            &bar,
        )
        .await?;
        sent += n;
        per_stream.push((*stream, n));
    }
    bar.finish_and_clear();
    let bar = env::bar(s.count, "AIVO: indexed and counted");
    for (stream, n) in &per_stream {
        env::wait_acked(
            &env.js,
            stream,
            &format!("jetplug-indexer-{stream}"),
            *n,
            TIMEOUT,
            &bar,
        )
        .await?;
        if matches!(*stream, "BENCH_LEARNING" | "BENCH_FOCUS") {
            env::wait_acked(
                &env.js,
                stream,
                &format!("jetplug-analytics-{stream}"),
                *n,
                TIMEOUT,
                &bar,
            )
            .await?;
        }
    }
    let took = started.elapsed();
    host.stop()?;
    bar.finish_and_clear();

    let indexed: i64 = pg
        .query_one(&format!("SELECT count(*) FROM {SCHEMA}.events"), &[])
        .await?
        .get(0);
    let counted: i64 = pg
        .query_one(
            &format!("SELECT coalesce(sum(count), 0)::int8 FROM {SCHEMA}.event_counts"),
            &[],
        )
        .await?
        .get(0);
    let want_counted: u64 = per_stream
        .iter()
        .filter(|(st, _)| matches!(*st, "BENCH_LEARNING" | "BENCH_FOCUS"))
        .map(|(_, n)| n)
        .sum();
    anyhow::ensure!(
        indexed as u64 == s.count && counted as u64 == want_counted,
        "AIVO run: {indexed} events indexed (want {}), {counted} counted (want {want_counted})",
        s.count
    );
    pg.batch_execute(&format!("DROP SCHEMA {SCHEMA} CASCADE"))
        .await?;
    Ok(Report {
        events_per_sec: s.count as f64 / took.as_secs_f64().max(1e-9),
        indexed: indexed as u64,
        counted: counted as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::in_schema;

    #[test]
    fn the_schema_goes_on_the_search_path_of_either_form() {
        for url in [
            "postgres://postgres@127.0.0.1:5432/postgres",
            "postgres://postgres@127.0.0.1:5432/postgres?connect_timeout=5",
            "host=127.0.0.1 user=postgres",
        ] {
            let with: tokio_postgres::Config = in_schema(url).parse().expect("still valid");
            assert_eq!(
                with.get_options(),
                Some("-csearch_path=jetplug_bench"),
                "{url}"
            );
        }
    }
}
