//! The ledger and outbox tables: their DDL, the privileges they need, the
//! ledger's lookups and the outbox's reads for the relay. Kept apart from
//! the batch transaction so the SQL of the host's own tables is in one
//! place.

use deadpool_postgres::Object;

/// Where a pipeline keeps its ledger and outbox: `"schema"."ledger"` and
/// `"schema"."outbox"` (names from its config) in its effects database.
#[derive(Debug, Clone)]
pub struct Tables {
    pub(super) schema: String,
    pub(super) ledger: String,
    pub(super) outbox: String,
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
    /// Another commit holds some of the batch's origins now (another host
    /// handled them meanwhile): nothing was committed; run the batch again
    /// and the ledger skips them.
    #[error(
        "effects database `{database}`: another commit handled some of these messages meanwhile"
    )]
    Conflict { database: String },
}

impl StoreError {
    pub(super) fn from_pg(database: &str, e: &tokio_postgres::Error) -> Self {
        let reason = crate::capability::sql::describe(e);
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
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
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
    pub(super) fn as_str(self) -> &'static str {
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

    pub(super) fn ledger(&self) -> String {
        format!("\"{}\".\"{}\"", self.schema, self.ledger)
    }

    pub(super) fn outbox(&self) -> String {
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
                 first_seq int8 NOT NULL,
                 last_seq int8 NOT NULL,
                 outcome text NOT NULL DEFAULT 'ack',
                 handled_at timestamptz NOT NULL DEFAULT now(),
                 PRIMARY KEY (pipeline, stream, first_seq),
                 CHECK (first_seq <= last_seq AND last_seq - first_seq < {max_run}));
             {upgrade}
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
            max_run = super::ledger::MAX_RUN,
            upgrade = self.upgrade(),
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
