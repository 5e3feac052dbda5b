//! Exactly-once effects (`effects = "exactly-once"` on a pipeline).
//!
//! Why here: every `sql` and `publish` call already passes through the
//! instance's [`CallPath`](super::CallPath); while a batch of an
//! exactly-once pipeline runs, that path carries the batch's open
//! [`EffectsTx`], and the two capabilities send their work into it instead
//! of autocommitting: statements on the effects database run inside it
//! (each under a savepoint, so a failed statement undoes only itself, as
//! it would alone), and publishes become rows of the outbox table. The
//! pipeline commits the transaction together with the batch's origins in
//! the ledger table — or rolls it back — and relays the outbox afterwards
//! with deterministic `Nats-Msg-Id`s. This module owns both tables: their
//! DDL, the ledger's reads and writes, and the outbox's rows.

use std::sync::Arc;

use deadpool_postgres::{Object, Pool};
use tokio::sync::Mutex;

use crate::bindings::CapabilityError;

/// The batch transaction an instance's calls go into, when there is one.
#[derive(Debug, Clone, Default)]
pub struct Effects(Arc<Mutex<Option<EffectsTx>>>);

impl Effects {
    /// From now on this instance's SQL on `tx.database` and its publishes
    /// go into `tx`.
    pub async fn install(&self, tx: EffectsTx) {
        *self.0.lock().await = Some(tx);
    }

    /// Ends the redirection and hands the transaction back.
    pub async fn take(&self) -> Option<EffectsTx> {
        self.0.lock().await.take()
    }

    pub(super) async fn lock(&self) -> tokio::sync::MutexGuard<'_, Option<EffectsTx>> {
        self.0.lock().await
    }
}

/// Where a pipeline keeps its ledger and outbox: `"schema"."ledger"` and
/// `"schema"."outbox"` (names from its config) in its effects database.
#[derive(Debug, Clone)]
pub struct Tables {
    schema: String,
    ledger: String,
    outbox: String,
}

/// A failure of the effects store itself (not of a plugin's statement).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or refused the work right now.
    #[error("effects database `{database}`: {reason}")]
    Unavailable { database: String, reason: String },
    /// The database refused the work for good (a missing privilege, say).
    #[error("effects database `{database}`: {reason}")]
    Refused { database: String, reason: String },
}

impl StoreError {
    fn from_pg(database: &str, e: &tokio_postgres::Error) -> Self {
        let reason = super::sql::describe(e);
        let transient = e.as_db_error().is_none_or(|db| {
            let code = db.code().code();
            code.starts_with("08") || code.starts_with("53") || code.starts_with("57P")
        });
        if transient {
            StoreError::Unavailable {
                database: database.to_owned(),
                reason,
            }
        } else {
            StoreError::Refused {
                database: database.to_owned(),
                reason,
            }
        }
    }

    /// True when trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }
}

/// One origin in the ledger: the pipeline that handled it and where the
/// message was first stored.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Entry {
    pub stream: String,
    pub sequence: u64,
}

/// How a message in the ledger ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Acked: its effects are done; any later delivery is skipped.
    Ack,
    /// Terminated and dead-lettered: a redrive of it runs again (once).
    DeadLetter,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Ack => "ack",
            Outcome::DeadLetter => "dead_letter",
        }
    }
}

/// A publish kept in the outbox until JetStream stored it.
#[derive(Debug, Clone)]
pub struct Queued {
    pub id: i64,
    pub msg_id: String,
    pub subject: String,
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
}

impl Tables {
    pub fn new(schema: &str, ledger: &str, outbox: &str) -> Self {
        Tables {
            schema: schema.to_owned(),
            ledger: ledger.to_owned(),
            outbox: outbox.to_owned(),
        }
    }

    fn ledger(&self) -> String {
        format!("\"{}\".\"{}\"", self.schema, self.ledger)
    }

    fn outbox(&self) -> String {
        format!("\"{}\".\"{}\"", self.schema, self.outbox)
    }

    /// Creates the schema and both tables when missing. Needs `CREATE` on
    /// the database the first time (or an administrator creating them
    /// beforehand: docs/delivery.md has the statements).
    pub async fn create(&self, client: &Object, database: &str) -> Result<(), StoreError> {
        // Hosts starting together race on CREATE … IF NOT EXISTS (one
        // fails on the catalog's unique index): a lock serialises them.
        let ddl = format!(
            "BEGIN;
             SELECT pg_advisory_xact_lock(hashtext('jetplug-effects-ddl'));
             CREATE SCHEMA IF NOT EXISTS \"{schema}\";
             CREATE TABLE IF NOT EXISTS {ledger} (
                 pipeline text NOT NULL,
                 stream text NOT NULL,
                 seq int8 NOT NULL,
                 outcome text NOT NULL DEFAULT 'ack',
                 handled_at timestamptz NOT NULL DEFAULT now(),
                 PRIMARY KEY (pipeline, stream, seq));
             CREATE INDEX IF NOT EXISTS \"{ledger_name}_handled_at\" ON {ledger} USING brin (handled_at);
             CREATE TABLE IF NOT EXISTS {outbox} (
                 id bigserial PRIMARY KEY,
                 pipeline text NOT NULL,
                 msg_id text NOT NULL,
                 subject text NOT NULL,
                 headers jsonb NOT NULL,
                 payload bytea NOT NULL,
                 queued_at timestamptz NOT NULL DEFAULT now());
             COMMIT;",
            schema = self.schema,
            ledger = self.ledger(),
            ledger_name = self.ledger,
            outbox = self.outbox(),
        );
        let created = client.batch_execute(&ddl).await;
        if created.is_err() {
            let _ = client.batch_execute("ROLLBACK").await;
        }
        created.map_err(|e| StoreError::from_pg(database, &e))
    }

    /// What the connection's user lacks to create and use the tables (empty
    /// when nothing): for `jetplug check`, before traffic flows.
    pub async fn missing_privileges(
        &self,
        client: &Object,
        database: &str,
    ) -> Result<Vec<String>, StoreError> {
        let row = client
            .query_one(
                "SELECT current_user::text,
                        current_database()::text,
                        has_database_privilege(current_database(), 'CREATE'),
                        (SELECT count(*) FROM pg_namespace WHERE nspname = $1) > 0,
                        to_regclass($2) IS NOT NULL,
                        to_regclass($3) IS NOT NULL",
                &[&self.schema, &self.ledger(), &self.outbox()],
            )
            .await
            .map_err(|e| StoreError::from_pg(database, &e))?;
        let (user, db): (String, String) = (row.get(0), row.get(1));
        let (create_db, schema, ledger, outbox): (bool, bool, bool, bool) =
            (row.get(2), row.get(3), row.get(4), row.get(5));
        let mut missing = Vec::new();
        if !schema && !create_db {
            missing.push(format!(
                "user `{user}` cannot create schema `{}` in database `{db}`: \
                 GRANT CREATE ON DATABASE \"{db}\" TO \"{user}\" (or create the tables beforehand, docs/delivery.md)",
                self.schema
            ));
            return Ok(missing);
        }
        if schema && !(ledger && outbox) {
            let ok: bool = client
                .query_one("SELECT has_schema_privilege($1, 'CREATE')", &[&self.schema])
                .await
                .map_err(|e| StoreError::from_pg(database, &e))?
                .get(0);
            if !ok {
                missing.push(format!(
                    "user `{user}` cannot create tables in schema `{}`: GRANT CREATE ON SCHEMA \"{}\" TO \"{user}\"",
                    self.schema, self.schema
                ));
            }
        }
        for (exists, table, rights) in [
            (ledger, self.ledger(), "SELECT, INSERT, UPDATE, DELETE"),
            (outbox, self.outbox(), "SELECT, INSERT, DELETE"),
        ] {
            if !exists {
                continue;
            }
            let ok: bool = client
                .query_one(
                    "SELECT has_table_privilege($1, 'SELECT,INSERT,DELETE')",
                    &[&table],
                )
                .await
                .map_err(|e| StoreError::from_pg(database, &e))?
                .get(0);
            if !ok {
                missing.push(format!(
                    "user `{user}` lacks rights on {table}: GRANT {rights} ON {table} TO \"{user}\""
                ));
            }
        }
        Ok(missing)
    }

    /// Which of `origins` `pipeline` has handled already, and how.
    pub async fn handled(
        &self,
        client: &Object,
        database: &str,
        pipeline: &str,
        origins: &[Entry],
    ) -> Result<Vec<(Entry, Outcome)>, StoreError> {
        let streams: Vec<&str> = origins.iter().map(|o| o.stream.as_str()).collect();
        let seqs: Vec<i64> = origins.iter().map(|o| seq(o.sequence)).collect();
        let rows = client
            .query(
                &format!(
                    "SELECT l.stream, l.seq, l.outcome FROM {} l
                     JOIN unnest($2::text[], $3::int8[]) AS o(stream, seq)
                       ON l.stream = o.stream AND l.seq = o.seq
                     WHERE l.pipeline = $1",
                    self.ledger()
                ),
                &[&pipeline, &streams, &seqs],
            )
            .await
            .map_err(|e| StoreError::from_pg(database, &e))?;
        Ok(rows
            .iter()
            .map(|r| {
                let entry = Entry {
                    stream: r.get(0),
                    sequence: u64::try_from(r.get::<_, i64>(1)).unwrap_or(0),
                };
                let outcome = match r.get::<_, &str>(2) {
                    "dead_letter" => Outcome::DeadLetter,
                    _ => Outcome::Ack,
                };
                (entry, outcome)
            })
            .collect())
    }

    /// Begins the relay of `pipeline`'s outbox on `client`: a transaction
    /// holding the pipeline's relay lock, so that one relay at a time (on
    /// any host) sends its publishes, in order. False when another holds it.
    pub async fn begin_relay(
        &self,
        client: &Object,
        database: &str,
        pipeline: &str,
    ) -> Result<bool, StoreError> {
        let pg = |e: tokio_postgres::Error| StoreError::from_pg(database, &e);
        client.batch_execute("BEGIN").await.map_err(pg)?;
        let key = format!("jetplug-outbox:{}:{pipeline}", self.schema);
        let row = client
            .query_one("SELECT pg_try_advisory_xact_lock(hashtext($1))", &[&key])
            .await
            .map_err(pg)?;
        let locked: bool = row.get(0);
        if !locked {
            client.batch_execute("ROLLBACK").await.map_err(pg)?;
        }
        Ok(locked)
    }

    /// Ends a relay begun with [`Tables::begin_relay`]: commits the
    /// forgotten rows, or rolls back (they are sent again later; their
    /// `Nats-Msg-Id`s make that harmless).
    pub async fn end_relay(
        &self,
        client: &Object,
        database: &str,
        commit: bool,
    ) -> Result<(), StoreError> {
        client
            .batch_execute(if commit { "COMMIT" } else { "ROLLBACK" })
            .await
            .map_err(|e| StoreError::from_pg(database, &e))
    }

    /// The outbox rows of `pipeline` still to relay, oldest first.
    pub async fn queued(
        &self,
        client: &Object,
        database: &str,
        pipeline: &str,
        limit: i64,
    ) -> Result<Vec<Queued>, StoreError> {
        let rows = client
            .query(
                &format!(
                    "SELECT id, msg_id, subject, headers, payload FROM {}
                     WHERE pipeline = $1 ORDER BY id LIMIT $2",
                    self.outbox()
                ),
                &[&pipeline, &limit],
            )
            .await
            .map_err(|e| StoreError::from_pg(database, &e))?;
        Ok(rows
            .iter()
            .map(|r| {
                let headers: serde_json::Value = r.get(3);
                Queued {
                    id: r.get(0),
                    msg_id: r.get(1),
                    subject: r.get(2),
                    headers: serde_json::from_value(headers).unwrap_or_default(),
                    payload: r.get(4),
                }
            })
            .collect())
    }

    /// Forgets relayed outbox rows.
    pub async fn relayed(
        &self,
        client: &Object,
        database: &str,
        ids: &[i64],
    ) -> Result<(), StoreError> {
        client
            .execute(
                &format!("DELETE FROM {} WHERE id = ANY($1)", self.outbox()),
                &[&ids],
            )
            .await
            .map(drop)
            .map_err(|e| StoreError::from_pg(database, &e))
    }

    /// Drops ledger entries of `pipeline` older than `keep`; how many.
    pub async fn prune(
        &self,
        client: &Object,
        database: &str,
        pipeline: &str,
        keep: std::time::Duration,
    ) -> Result<u64, StoreError> {
        let secs = keep.as_secs_f64();
        client
            .execute(
                &format!(
                    "DELETE FROM {} WHERE pipeline = $1
                     AND handled_at < now() - make_interval(secs => $2)",
                    self.ledger()
                ),
                &[&pipeline, &secs],
            )
            .await
            .map_err(|e| StoreError::from_pg(database, &e))
    }

    /// Outbox rows of `pipeline` now (a small table: cheap).
    pub async fn queued_count(
        &self,
        client: &Object,
        database: &str,
        pipeline: &str,
    ) -> Result<i64, StoreError> {
        self.count(client, database, &self.outbox(), pipeline).await
    }

    /// Ledger entries of `pipeline` now (a scan of its index: counted
    /// rarely).
    pub async fn ledger_count(
        &self,
        client: &Object,
        database: &str,
        pipeline: &str,
    ) -> Result<i64, StoreError> {
        self.count(client, database, &self.ledger(), pipeline).await
    }

    async fn count(
        &self,
        client: &Object,
        database: &str,
        table: &str,
        pipeline: &str,
    ) -> Result<i64, StoreError> {
        Ok(client
            .query_one(
                &format!("SELECT count(*) FROM {table} WHERE pipeline = $1"),
                &[&pipeline],
            )
            .await
            .map_err(|e| StoreError::from_pg(database, &e))?
            .get(0))
    }
}

/// `text` as a value in COPY's text format.
fn copy_text(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('\t', "\\t")
        .replace('\n', "\\n")
        .replace('\r', "\\r")
}

fn seq(s: u64) -> i64 {
    i64::try_from(s).unwrap_or(i64::MAX)
}

/// A batch's open transaction on the effects database.
#[derive(Debug)]
pub struct EffectsTx {
    pub database: String,
    client: Option<Object>,
    /// The plugin's `sql_role`: its statements run under it, the host's
    /// own writes (outbox, ledger) as the connection's user.
    role: Option<String>,
    tables: Tables,
    pipeline: String,
    /// The `Nats-Msg-Id` prefix of this batch's publishes.
    key: String,
    published: u32,
    savepoint: u32,
}

impl EffectsTx {
    /// Begins a transaction on `pool` (under `role` when the plugin has a
    /// `sql_role`). `key` names the batch (its first origin) in the ids of
    /// its publishes.
    pub async fn begin(
        pool: &Pool,
        database: &str,
        role: Option<&str>,
        tables: &Tables,
        pipeline: &str,
        key: String,
    ) -> Result<Self, StoreError> {
        let unavailable = |reason: String| StoreError::Unavailable {
            database: database.to_owned(),
            reason,
        };
        let client = pool
            .get()
            .await
            .map_err(|e| unavailable(super::sql::chain(&e)))?;
        let begin = match role {
            Some(r) => format!("BEGIN; SET LOCAL ROLE {}", super::sql::quote_ident(r)),
            None => "BEGIN".to_owned(),
        };
        client
            .batch_execute(&begin)
            .await
            .map_err(|e| StoreError::from_pg(database, &e))?;
        Ok(EffectsTx {
            database: database.to_owned(),
            client: Some(client),
            role: role.map(str::to_owned),
            tables: tables.clone(),
            pipeline: pipeline.to_owned(),
            key,
            published: 0,
            savepoint: 0,
        })
    }

    fn client(&self) -> Result<&Object, CapabilityError> {
        self.client
            .as_ref()
            .ok_or_else(|| CapabilityError::Unavailable("the batch transaction has ended".into()))
    }

    /// Runs `body` on the transaction under a savepoint: an error undoes
    /// only what `body` did, and the transaction goes on.
    pub(super) async fn savepoint<T, F>(&mut self, body: F) -> Result<T, CapabilityError>
    where
        F: AsyncFnOnce(&Object) -> Result<T, CapabilityError>,
    {
        self.savepoint += 1;
        let name = format!("jp{}", self.savepoint);
        let client = self.client()?;
        client
            .batch_execute(&format!("SAVEPOINT {name}"))
            .await
            .map_err(super::sql::pg_error)?;
        match body(client).await {
            Ok(v) => {
                client
                    .batch_execute(&format!("RELEASE SAVEPOINT {name}"))
                    .await
                    .map_err(super::sql::pg_error)?;
                Ok(v)
            }
            Err(e) => {
                client
                    .batch_execute(&format!("ROLLBACK TO SAVEPOINT {name}"))
                    .await
                    .map_err(super::sql::pg_error)?;
                Err(e)
            }
        }
    }

    /// Opens a savepoint the plugin controls (its own `begin` on the
    /// effects database); its name.
    pub(super) async fn open_savepoint(&mut self) -> Result<String, CapabilityError> {
        self.savepoint += 1;
        let name = format!("jp{}", self.savepoint);
        self.client()?
            .batch_execute(&format!("SAVEPOINT {name}"))
            .await
            .map_err(super::sql::pg_error)?;
        Ok(name)
    }

    /// Ends a savepoint from [`EffectsTx::open_savepoint`].
    pub(super) async fn close_savepoint(
        &mut self,
        name: &str,
        keep: bool,
    ) -> Result<(), CapabilityError> {
        let sql = if keep {
            format!("RELEASE SAVEPOINT {name}")
        } else {
            format!("ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}")
        };
        self.client()?
            .batch_execute(&sql)
            .await
            .map_err(super::sql::pg_error)
    }

    /// Statements of the plugin's own transaction (inside its savepoint).
    pub(super) fn raw(&self) -> Result<&Object, CapabilityError> {
        self.client()
    }

    /// Queues a publish in the outbox; its `Nats-Msg-Id` (the plugin's, or
    /// `<batch key>:<index>`).
    pub(super) async fn queue(
        &mut self,
        subject: &str,
        headers: &[(String, String)],
        payload: &[u8],
        message_id: Option<&str>,
    ) -> Result<String, CapabilityError> {
        self.published += 1;
        let msg_id = match message_id {
            Some(id) => id.to_owned(),
            None => format!("{}:{}", self.key, self.published),
        };
        let headers = serde_json::to_value(headers)
            .map_err(|e| CapabilityError::Invalid(format!("headers: {e}")))?;
        let client = self.client()?;
        // The host's own row: written as the connection's user, so the
        // plugin's role needs (and gets) no rights on the outbox.
        if self.role.is_some() {
            client
                .batch_execute("SET LOCAL ROLE NONE")
                .await
                .map_err(super::sql::pg_error)?;
        }
        let inserted = client
            .execute(
                &format!(
                    "INSERT INTO {} (pipeline, msg_id, subject, headers, payload)
                     VALUES ($1, $2, $3, $4, $5)",
                    self.tables.outbox()
                ),
                &[&self.pipeline, &msg_id, &subject, &headers, &payload],
            )
            .await
            .map_err(super::sql::pg_error);
        if let Some(role) = &self.role {
            client
                .batch_execute(&format!("SET LOCAL ROLE {}", super::sql::quote_ident(role)))
                .await
                .map_err(super::sql::pg_error)?;
        }
        inserted?;
        Ok(msg_id)
    }

    /// Records `handled` in the ledger and commits everything.
    pub async fn commit(
        mut self,
        fresh: &[(Entry, Outcome)],
        again: &[(Entry, Outcome)],
    ) -> Result<(), StoreError> {
        let database = self.database.clone();
        let client = self.client.take().ok_or_else(|| StoreError::Unavailable {
            database: database.clone(),
            reason: "the batch transaction has ended".into(),
        })?;
        let reset = self.role.is_some();
        let result = async {
            if reset {
                client.batch_execute("SET LOCAL ROLE NONE").await?;
            }
            // New origins by COPY (the cheapest way in; a duplicate — the
            // same message committed meanwhile by another host after an
            // ack_wait — fails the commit, and the re-run skips it).
            if !fresh.is_empty() {
                let mut text = String::with_capacity(fresh.len() * 48);
                for (e, o) in fresh {
                    text.push_str(&copy_text(&self.pipeline));
                    text.push('\t');
                    text.push_str(&copy_text(&e.stream));
                    text.push('\t');
                    text.push_str(&seq(e.sequence).to_string());
                    text.push('\t');
                    text.push_str(o.as_str());
                    text.push('\n');
                }
                let sink = client
                    .copy_in::<_, bytes::Bytes>(&format!(
                        "COPY {} (pipeline, stream, seq, outcome) FROM STDIN",
                        self.tables.ledger()
                    ))
                    .await?;
                futures::pin_mut!(sink);
                futures::SinkExt::send(&mut sink, bytes::Bytes::from(text)).await?;
                sink.finish().await?;
            }
            // Redriven dead letters handled again: their entries updated.
            if !again.is_empty() {
                let streams: Vec<&str> = again.iter().map(|(o, _)| o.stream.as_str()).collect();
                let seqs: Vec<i64> = again.iter().map(|(o, _)| seq(o.sequence)).collect();
                let outcomes: Vec<&str> = again.iter().map(|(_, d)| d.as_str()).collect();
                client
                    .execute(
                        &format!(
                            "UPDATE {} l SET outcome = o.d, handled_at = now()
                             FROM unnest($2::text[], $3::int8[], $4::text[]) AS o(s, q, d)
                             WHERE l.pipeline = $1 AND l.stream = o.s AND l.seq = o.q",
                            self.tables.ledger()
                        ),
                        &[&self.pipeline, &streams, &seqs, &outcomes],
                    )
                    .await?;
            }
            client.batch_execute("COMMIT").await
        }
        .await;
        match result {
            Ok(()) => Ok(()),
            Err(e) => {
                // Closed, not pooled: the server rolls back whatever is open.
                drop(Object::take(client));
                Err(StoreError::from_pg(&database, &e))
            }
        }
    }

    /// Undoes everything the batch did.
    pub async fn rollback(mut self) {
        if let Some(client) = self.client.take()
            && client.batch_execute("ROLLBACK").await.is_err()
        {
            drop(Object::take(client));
        }
    }
}

impl Drop for EffectsTx {
    fn drop(&mut self) {
        // Dropped open (a trap, a cancelled call): close the connection so
        // the server rolls back; never pool it mid-transaction.
        if let Some(client) = self.client.take() {
            drop(Object::take(client));
        }
    }
}
