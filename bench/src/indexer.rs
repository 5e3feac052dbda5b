//! The Postgres indexer's sustained rows/s, beside a plain `COPY` of the
//! same rows (the reference: the fastest way into the table), and the same
//! indexer run again beside hostile plugins (loop, memory bomb, panic, log
//! flood) in their own pipelines, to show how much they take from it. With
//! no hostile plugins the second run is a second run alone: the ratio then
//! shows how much this machine's speed varies from run to run.

use std::time::{Duration, Instant};

use futures::SinkExt;

use super::env::{self, Env};

/// Settings for [`run`].
#[derive(Debug, Clone)]
pub struct Settings {
    pub count: u64,
    pub batch: u32,
    /// Workers of the indexer pipeline.
    pub concurrency: u32,
    pub postgres_url: String,
    /// Rounds of a run alone then one beside the hostile plugins; medians
    /// reported.
    pub repeat: u32,
    /// The hostile plugins run beside the indexer in the second run of a
    /// round; none makes it a second run alone (the machine's noise).
    pub hostile: Vec<Hostile>,
}

/// A hostile plugin, each in its own pipeline on a stream of its own
/// messages (a tenth as many as the indexer's, at least 500).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hostile {
    /// Spins until its 1 s deadline.
    Loop,
    /// Grows its memory past its 64 MiB limit.
    Membomb,
    /// Panics.
    Panic,
    /// Logs 100 000 lines a batch (trapped at 10 000).
    Flood,
}

impl Hostile {
    pub const ALL: [Hostile; 4] = [
        Hostile::Loop,
        Hostile::Membomb,
        Hostile::Panic,
        Hostile::Flood,
    ];

    /// `all`, `none`, or names separated by commas (`loop,membomb`).
    pub fn parse_list(text: &str) -> Result<Vec<Hostile>, String> {
        match text.trim() {
            "all" => return Ok(Hostile::ALL.to_vec()),
            "none" => return Ok(Vec::new()),
            _ => {}
        }
        let mut list = Vec::new();
        for name in text.split(',').map(str::trim) {
            let h = Hostile::ALL
                .into_iter()
                .find(|h| h.name() == name)
                .ok_or_else(|| {
                    format!(
                        "unknown hostile plugin `{name}`: expected all, none, or a list of loop, membomb, panic, flood"
                    )
                })?;
            if !list.contains(&h) {
                list.push(h);
            }
        }
        Ok(list)
    }

    /// Its name (and its pipeline's).
    pub fn name(self) -> &'static str {
        self.pipeline().0
    }

    /// Its pipeline's (and plugin's) name, its component, its limits.
    fn pipeline(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Hostile::Loop => ("loop", "test_loop.wasm", r#"{ deadline = "1s" }"#),
            Hostile::Membomb => ("membomb", "test_membomb.wasm", r#"{ memory = "64MiB" }"#),
            Hostile::Panic => ("panic", "test_panic.wasm", "{}"),
            Hostile::Flood => ("flood", "test_log_flood.wasm", "{}"),
        }
    }
}

/// What [`run`] measured.
#[derive(Debug, Clone)]
pub struct Report {
    pub indexer_rows_per_sec: f64,
    /// One plain `COPY` of all the rows (median of the rounds).
    pub copy_rows_per_sec: f64,
    /// `COPY` of the same rows in the indexer's batch size, one transaction
    /// per batch (the commit granularity settling after a write needs).
    pub copy_batched_rows_per_sec: f64,
    pub beside_hostile_rows_per_sec: f64,
    /// The indexer alone with `effects = "exactly-once"` (median).
    pub exactly_once_rows_per_sec: f64,
    /// Each round's rate beside hostile plugins over its rate alone (the
    /// two runs of a round are taken back to back, so a slow spell of the
    /// machine touches both), in round order.
    pub hostile_ratios: Vec<f64>,
    /// Batches the hostile plugins failed during that run (proof they ran).
    pub hostile_failed_batches: u64,
}

const TIMEOUT: Duration = Duration::from_secs(600);
const TABLE: &str = "jetplug_bench_events";
const SUBJECT: &str = "learning.lesson.completed";

fn event(i: u64) -> Vec<u8> {
    format!(
        r#"{{"user":"u{}","lesson":{i},"score":0.75,"device":"tablet"}}"#,
        i % 997
    )
    .into_bytes()
}

/// How a run's indexer pipeline is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Alone,
    BesideHostile,
    /// Alone, with `effects = "exactly-once"`.
    ExactlyOnce,
}

fn body(env: &Env, s: &Settings, mode: Mode) -> String {
    let hostile = mode == Mode::BesideHostile;
    let mut b = format!(
        r#"
[database.bench]
url = "{url}"

[[stream]]
name = "BENCH_IDX"
subjects = ["learning.>"]

[[stream]]
name = "BENCH_DLQ"
subjects = ["dlq.>"]

[plugin.indexer]
path = "{indexer}"
grants = {{ sql = ["bench"] }}
config = {{ database = "bench", table = "{TABLE}" }}

[[pipeline]]
name = "indexer"
streams = ["BENCH_IDX"]
plugin = "indexer"
batch = {batch}
batch_max_wait = "5ms"
max_ack_pending = {pending}
concurrency = {concurrency}
{effects}
"#,
        effects = if mode == Mode::ExactlyOnce {
            "effects = \"exactly-once\"\neffects_schema = \"jetplug_bench_idx\""
        } else {
            ""
        },
        url = s.postgres_url,
        indexer = env.plugin("postgres_indexer.wasm").display(),
        batch = s.batch,
        pending = s.batch * s.concurrency * 2,
        concurrency = s.concurrency,
    );
    if hostile && !s.hostile.is_empty() {
        b.push_str("\n[[stream]]\nname = \"BENCH_HOSTILE\"\nsubjects = [\"hostile.>\"]\n");
        for (name, file, limits) in s.hostile.iter().map(|h| h.pipeline()) {
            b.push_str(&format!(
                "\n[plugin.{name}]\npath = \"{}\"\nlimits = {limits}\n\n[[pipeline]]\nname = \"{name}\"\nstreams = [\"BENCH_HOSTILE\"]\nplugin = \"{name}\"\nmax_deliver = 2\n",
                env.plugin(file).display()
            ));
        }
    }
    b
}

/// A connection to the benchmark's PostgreSQL.
pub(super) async fn db(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to PostgreSQL at {url}: {e}"))?;
    tokio::spawn(conn);
    Ok(client)
}

/// One indexer run over `count` fresh events; rows per second.
async fn index(
    env: &Env,
    s: &Settings,
    pg: &tokio_postgres::Client,
    mode: Mode,
) -> anyhow::Result<(f64, u64)> {
    // A fresh table, and a fresh ledger (the streams start again at 1).
    pg.batch_execute(&format!(
        "DROP TABLE IF EXISTS {TABLE}; DROP SCHEMA IF EXISTS jetplug_bench_idx CASCADE"
    ))
    .await?;
    let hostile = mode == Mode::BesideHostile;
    let name = match mode {
        Mode::Alone => "indexer",
        Mode::BesideHostile => "indexer-hostile",
        Mode::ExactlyOnce => "indexer-exactly-once",
    };
    let (path, config) = env.config(name, "cache", &body(env, s, mode))?;
    env.fresh_streams(&config).await?;
    let bar = env::bar(s.count, "publishing events");
    env.publish(SUBJECT, s.count, event, &bar).await?;
    bar.finish_and_clear();
    if hostile && !s.hostile.is_empty() {
        let hidden = indicatif::ProgressBar::hidden();
        env.publish(
            "hostile.x",
            (s.count / 10).max(500),
            |_| b"x".to_vec(),
            &hidden,
        )
        .await?;
    }
    let what = match mode {
        Mode::Alone => "indexer alone",
        Mode::BesideHostile => "indexer beside hostile plugins",
        Mode::ExactlyOnce => "indexer, exactly-once",
    };
    let bar = env::bar(s.count, what);
    let host = env.spawn_host(&path, &format!("{name}.log"))?;
    let run = env::wait_acked(
        &env.js,
        "BENCH_IDX",
        "jetplug-indexer-BENCH_IDX",
        s.count,
        TIMEOUT,
        &bar,
    )
    .await?;
    let labels: Vec<String> = s
        .hostile
        .iter()
        .map(|h| format!(r#"pipeline="{}""#, h.name()))
        .collect();
    let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
    let hostile_failures = if hostile && !labels.is_empty() {
        env::scrape_sum(&config, "jetplug_batch_failures_total", &labels).await?
    } else {
        0.0
    };
    host.stop()?;
    bar.finish_and_clear();
    let rows: i64 = pg
        .query_one(&format!("SELECT count(*) FROM {TABLE}"), &[])
        .await?
        .get(0);
    anyhow::ensure!(
        rows as u64 == s.count,
        "the indexer wrote {rows} rows for {} events",
        s.count
    );
    Ok((run.rate(s.count), hostile_failures as u64))
}

/// `COPY` of the same rows into a table like the indexer's, in transactions
/// of `per_tx` rows (all of them in one when `per_tx` ≥ the count).
async fn copy(s: &Settings, pg: &mut tokio_postgres::Client, per_tx: u64) -> anyhow::Result<f64> {
    let copy_table = format!("{TABLE}_copy");
    pg.batch_execute(&format!(
        "DROP TABLE IF EXISTS {copy_table}; CREATE TABLE {copy_table} (LIKE {TABLE} INCLUDING ALL)"
    ))
    .await?;
    let started = Instant::now();
    let mut written = 0;
    let per_tx = per_tx.max(1);
    for first in (0..s.count).step_by(per_tx as usize) {
        let tx = pg.transaction().await?;
        let sink = tx
            .copy_in(&format!(
                "COPY {copy_table} (stream, stream_seq, subject, domain, entity, action, payload, headers, published_at) FROM STDIN"
            ))
            .await?;
        futures::pin_mut!(sink);
        let mut buf = bytes::BytesMut::new();
        for i in first..(first + per_tx).min(s.count) {
            let payload = String::from_utf8_lossy(&event(i)).into_owned();
            buf.extend_from_slice(
                format!("BENCH_IDX\t{}\t{SUBJECT}\tlearning\tlesson\tcompleted\t{payload}\t{{}}\t2026-11-22 00:00:00+00\n", i + 1)
                    .as_bytes(),
            );
            if buf.len() > 1 << 20 {
                sink.send(buf.split().freeze()).await?;
            }
        }
        sink.send(buf.split().freeze()).await?;
        written += sink.finish().await?;
        tx.commit().await?;
    }
    let took = started.elapsed();
    anyhow::ensure!(written == s.count, "COPY wrote {written} rows");
    pg.batch_execute(&format!("DROP TABLE {copy_table}"))
        .await?;
    Ok(s.count as f64 / took.as_secs_f64().max(1e-9))
}

pub async fn run(env: &Env, s: &Settings) -> anyhow::Result<Report> {
    let mut pg = db(&s.postgres_url).await?;
    let (mut alone, mut beside, mut hostile_ratios) = (Vec::new(), Vec::new(), Vec::new());
    let mut exactly_once = Vec::new();
    let (mut copies, mut batched_copies) = (Vec::new(), Vec::new());
    let mut hostile_failed_batches = 0;
    for _ in 0..s.repeat.max(1) {
        let rate_alone = index(env, s, &pg, Mode::Alone).await?.0;
        alone.push(rate_alone);
        // The reference is timed in every round too: a single `COPY` swung
        // as much as the indexer does (149 000–225 000 rows/s on one day).
        copies.push(copy(s, &mut pg, s.count).await?);
        batched_copies.push(copy(s, &mut pg, u64::from(s.batch)).await?);
        exactly_once.push(index(env, s, &pg, Mode::ExactlyOnce).await?.0);
        let (rate, failed) = index(env, s, &pg, Mode::BesideHostile).await?;
        beside.push(rate);
        hostile_ratios.push(rate / rate_alone.max(1e-9));
        hostile_failed_batches = hostile_failed_batches.max(failed);
    }
    let (indexer_rows_per_sec, beside_hostile_rows_per_sec) =
        (super::median(alone), super::median(beside));
    let exactly_once_rows_per_sec = super::median(exactly_once);
    let (copy_rows_per_sec, copy_batched_rows_per_sec) =
        (super::median(copies), super::median(batched_copies));
    pg.batch_execute(&format!(
        "DROP TABLE IF EXISTS {TABLE}; DROP SCHEMA IF EXISTS jetplug_bench_idx CASCADE"
    ))
    .await?;
    Ok(Report {
        indexer_rows_per_sec,
        copy_rows_per_sec,
        copy_batched_rows_per_sec,
        beside_hostile_rows_per_sec,
        exactly_once_rows_per_sec,
        hostile_ratios,
        hostile_failed_batches,
    })
}

#[cfg(test)]
mod tests {
    use super::Hostile;

    #[test]
    fn hostile_lists_parse_and_bad_names_are_named() {
        assert_eq!(Hostile::parse_list("all"), Ok(Hostile::ALL.to_vec()));
        assert_eq!(Hostile::parse_list("none"), Ok(vec![]));
        assert_eq!(
            Hostile::parse_list("panic, loop,panic"),
            Ok(vec![Hostile::Panic, Hostile::Loop])
        );
        let err = Hostile::parse_list("loop,fork").expect_err("fork is not a hostile plugin");
        assert!(err.contains("`fork`"), "{err}");
    }
}
