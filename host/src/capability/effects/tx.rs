//! The batch transaction: opened by the pipeline, carried on the call
//! path while the plugin runs, committed with the batch's ledger entries.

use deadpool_postgres::{Object, Pool};

use super::ledger::Recorded;
use super::{Entry, Outcome, StoreError, Tables};
use crate::bindings::CapabilityError;

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
            .map_err(|e| unavailable(crate::capability::sql::chain(&e)))?;
        let begin = match role {
            Some(r) => format!(
                "BEGIN; SET LOCAL ROLE {}",
                crate::capability::sql::quote_ident(r)
            ),
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
    pub(in crate::capability) async fn savepoint<T, F>(
        &mut self,
        body: F,
    ) -> Result<T, CapabilityError>
    where
        F: AsyncFnOnce(&Object) -> Result<T, CapabilityError>,
    {
        self.savepoint += 1;
        let name = format!("jp{}", self.savepoint);
        let client = self.client()?;
        client
            .batch_execute(&format!("SAVEPOINT {name}"))
            .await
            .map_err(crate::capability::sql::pg_error)?;
        match body(client).await {
            Ok(v) => {
                client
                    .batch_execute(&format!("RELEASE SAVEPOINT {name}"))
                    .await
                    .map_err(crate::capability::sql::pg_error)?;
                Ok(v)
            }
            Err(e) => {
                client
                    .batch_execute(&format!("ROLLBACK TO SAVEPOINT {name}"))
                    .await
                    .map_err(crate::capability::sql::pg_error)?;
                Err(e)
            }
        }
    }

    /// Opens a savepoint the plugin controls (its own `begin` on the
    /// effects database); its name.
    pub(in crate::capability) async fn open_savepoint(
        &mut self,
    ) -> Result<String, CapabilityError> {
        self.savepoint += 1;
        let name = format!("jp{}", self.savepoint);
        self.client()?
            .batch_execute(&format!("SAVEPOINT {name}"))
            .await
            .map_err(crate::capability::sql::pg_error)?;
        Ok(name)
    }

    /// Ends a savepoint from [`EffectsTx::open_savepoint`].
    pub(in crate::capability) async fn close_savepoint(
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
            .map_err(crate::capability::sql::pg_error)
    }

    /// Statements of the plugin's own transaction (inside its savepoint).
    pub(in crate::capability) fn raw(&self) -> Result<&Object, CapabilityError> {
        self.client()
    }

    /// Queues a publish in the outbox; its `Nats-Msg-Id` (the plugin's, or
    /// `<batch key>:<index>`).
    pub(in crate::capability) async fn queue(
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
                .map_err(crate::capability::sql::pg_error)?;
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
            .map_err(crate::capability::sql::pg_error);
        if let Some(role) = &self.role {
            client
                .batch_execute(&format!(
                    "SET LOCAL ROLE {}",
                    crate::capability::sql::quote_ident(role)
                ))
                .await
                .map_err(crate::capability::sql::pg_error)?;
        }
        inserted?;
        Ok(msg_id)
    }

    /// Records `fresh` and `again` in the ledger and commits everything;
    /// how many publishes the outbox got (to relay). Nothing is committed
    /// on [`StoreError::Conflict`].
    pub async fn commit(
        mut self,
        fresh: &[(Entry, Outcome)],
        again: &[(Entry, Outcome)],
    ) -> Result<u32, StoreError> {
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
            let recorded = self
                .tables
                .record(&client, &self.pipeline, fresh, again)
                .await?;
            if recorded == Recorded::Conflict {
                client.batch_execute("ROLLBACK").await?;
                return Ok(recorded);
            }
            client.batch_execute("COMMIT").await.map(|()| recorded)
        }
        .await;
        match result {
            Ok(Recorded::Written) => Ok(self.published),
            Ok(Recorded::Conflict) => Err(StoreError::Conflict { database }),
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
