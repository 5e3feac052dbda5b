//! The price of exactly-once effects: the naive plugin (`test-naive`: an
//! INSERT, a counter UPDATE and one publish per message) in
//! `effects = "exactly-once"` against the same plugin in the default
//! `"at-least-once"`, the same messages and settings, taken in turn.

use std::time::Duration;

use anyhow::Context as _;

use super::env::{self, Env};

/// Settings for [`run`].
#[derive(Debug, Clone)]
pub struct Settings {
    pub count: u64,
    pub batch: u32,
    pub postgres_url: String,
    /// Runs of each mode, taken in turn; medians reported.
    pub repeat: u32,
}

/// What [`run`] measured (messages per second, medians).
#[derive(Debug, Clone, Copy)]
pub struct Report {
    pub at_least_once: f64,
    pub exactly_once: f64,
}

const TIMEOUT: Duration = Duration::from_secs(600);
const STREAM: &str = "BENCH_EFFECTS";

fn body(env: &Env, s: &Settings, effects: &str) -> String {
    format!(
        r#"
[database.bench]
url = "{url}"

[[stream]]
name = "{STREAM}"
subjects = ["bench_effects.>"]

[[stream]]
name = "BENCH_EFFECTS_OUT"
subjects = ["out.>"]

[plugin.naive]
path = "{plugin}"
grants = {{ sql = ["bench"], publish = ["out.>"] }}
config = {{ database = "bench" }}

[[pipeline]]
name = "naive"
streams = ["{STREAM}"]
plugin = "naive"
batch = {batch}
batch_max_wait = "5ms"
max_ack_pending = {pending}
effects = "{effects}"
effects_schema = "jetplug_bench"
"#,
        url = s.postgres_url,
        plugin = env.plugin("test_naive.wasm").display(),
        batch = s.batch,
        pending = s.batch * 4,
    )
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {url}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

pub async fn run(env: &Env, s: Settings) -> anyhow::Result<Report> {
    anyhow::ensure!(
        env.plugin("test_naive.wasm").is_file(),
        "{} not found: build the plugins first (`make plugins`)",
        env.plugin("test_naive.wasm").display()
    );
    let db = connect(&s.postgres_url).await?;
    let (mut at_least, mut exactly) = (Vec::new(), Vec::new());
    for round in 0..s.repeat.max(1) {
        for effects in ["at-least-once", "exactly-once"] {
            db.batch_execute(
                "DROP TABLE IF EXISTS orders, stock;
                 DROP SCHEMA IF EXISTS jetplug_bench CASCADE;
                 CREATE TABLE orders (payload text);
                 CREATE TABLE stock (n int8);
                 INSERT INTO stock VALUES (0);",
            )
            .await?;
            let name = format!("effects-{effects}-{round}");
            let (path, config) = env.config(&name, "cache", &body(env, &s, effects))?;
            env.fresh_streams(&config).await?;
            let bar = env::bar(s.count, "publishing");
            env.publish(
                "bench_effects.order",
                s.count,
                |i| format!(r#"{{"order":{i}}}"#).into_bytes(),
                &bar,
            )
            .await?;
            bar.finish_and_clear();
            let bar = env::bar(s.count, &format!("naive plugin, {effects}"));
            let host = env.spawn_host(&path, &format!("{name}.log"))?;
            let run = env::wait_acked(
                &env.js,
                STREAM,
                "jetplug-naive-BENCH_EFFECTS",
                s.count,
                TIMEOUT,
                &bar,
            )
            .await?;
            host.stop()?;
            bar.finish_and_clear();
            let rate = run.rate(s.count);
            if effects == "exactly-once" {
                exactly.push(rate);
            } else {
                at_least.push(rate);
            }
        }
    }
    Ok(Report {
        at_least_once: crate::median(at_least),
        exactly_once: crate::median(exactly),
    })
}
