//! `jetplug:plugin/sql`: parameterized statements on granted PostgreSQL
//! databases, checked against the plugin's `sql` grant on every call.
//!
//! Statement errors (syntax, constraint, type) come back as `invalid`;
//! a database that cannot be reached, or a retryable server condition
//! (connection lost, too many connections, shutdown, serialization failure,
//! deadlock), comes back as `unavailable` so the plugin retries and the
//! breaker sees it. Never a trap.

mod bulk;
mod errors;
mod values;

use std::sync::Arc;

use deadpool_postgres::Object;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

use super::effects::EffectsTx;
use serde_json::json;

use super::{Backends, CallPath, Capability, Grants, denied};
use crate::bindings::CapabilityError;
use crate::bindings::jetplug::plugin::sql::{self, OnConflict, Rows, Transaction, Value};
pub(in crate::capability) use errors::{chain, describe, pg_error, quote_ident};
use values::Param;

/// An open transaction, handed to a plugin as a `transaction` resource. If it
/// is dropped without commit or rollback (say, the instance trapped), its
/// connection is closed rather than returned to the pool, so the server
/// rolls it back.
#[derive(Debug)]
pub struct OpenTx {
    database: String,
    client: Option<Conn>,
    /// In an exactly-once batch: the savepoint in the batch transaction
    /// that stands for this transaction (no connection of its own).
    savepoint: Option<String>,
}

impl Drop for OpenTx {
    fn drop(&mut self) {
        if let Some(mut conn) = self.client.take() {
            conn.close();
        }
    }
}

/// A pooled connection. Under the plugin's `sql_role` it goes back to the
/// pool only after `RESET ROLE` succeeded; dropped otherwise (a call cut
/// short, an error), it is closed, so no one else ever runs under the role.
#[derive(Debug)]
struct Conn {
    obj: Option<Object>,
    role: bool,
}

impl Conn {
    fn get(&self) -> Result<&Object, CapabilityError> {
        self.obj
            .as_ref()
            .ok_or_else(|| CapabilityError::Other("no connection".into()))
    }

    /// Back to the pool (the role reset first).
    async fn release(mut self) {
        if self.role
            && let Some(o) = self.obj.as_ref()
            && o.batch_execute("RESET ROLE").await.is_ok()
        {
            self.role = false;
        }
    }

    /// Closed, not returned to the pool.
    fn close(&mut self) {
        if let Some(o) = self.obj.take() {
            drop(Object::take(o));
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.role {
            self.close();
        }
    }
}

/// Per-instance state of the sql capability.
#[derive(Debug)]
pub struct SqlState {
    grants: Arc<Grants>,
    backends: Arc<Backends>,
    calls: CallPath,
    table: ResourceTable,
}

impl SqlState {
    pub fn new(grants: Arc<Grants>, backends: Arc<Backends>, calls: CallPath) -> Self {
        SqlState {
            grants,
            backends,
            calls,
            table: ResourceTable::new(),
        }
    }

    /// Checks that `database` is granted; the error is what the plugin sees.
    pub fn check(&self, database: &str) -> Result<(), CapabilityError> {
        if self.grants.allows_database(database) {
            Ok(())
        } else {
            Err(denied(format_args!(
                "database `{database}` is outside the grant {:?}",
                self.grants.sql
            )))
        }
    }

    /// A pooled connection (the state is not borrowed across the wait),
    /// under the plugin's `sql_role` when it has one.
    fn client(
        &self,
        database: &str,
    ) -> impl Future<Output = Result<Conn, CapabilityError>> + Send + use<> {
        let pool = self
            .check(database)
            .and_then(|()| self.backends.database(database).cloned());
        let database = database.to_owned();
        let role = self.grants.sql_role.clone();
        async move {
            let obj = pool?.get().await.map_err(|e| {
                CapabilityError::Unavailable(format!("database `{database}`: {}", chain(&e)))
            })?;
            let conn = Conn {
                obj: Some(obj),
                role: role.is_some(),
            };
            if let Some(role) = role {
                conn.get()?
                    .batch_execute(&format!("SET ROLE {}", quote_ident(&role)))
                    .await
                    .map_err(|e| {
                        denied(format_args!("cannot run as role `{role}`: {}", chain(&e)))
                    })?;
            }
            Ok(conn)
        }
    }

    /// Under a `sql_role`, statements that would leave the role are refused
    /// (`RESET ROLE`, `SET ROLE`, `SET SESSION AUTHORIZATION`, `set_config('role', …)`).
    fn check_statement(&self, statement: &str) -> Result<(), CapabilityError> {
        if self.grants.sql_role.is_none() {
            return Ok(());
        }
        let flat: String = statement
            .to_ascii_lowercase()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let leaves = [
            "reset role",
            "set role",
            "set local role",
            "set session role",
            "session authorization",
            "set_config('role'",
            "set_config( 'role'",
            "reset all",
            "discard all",
        ]
        .iter()
        .any(|w| flat.contains(w));
        if leaves {
            return Err(denied(format_args!(
                "statements that change the role are not allowed for a plugin running under sql_role `{}`",
                self.grants.sql_role.as_deref().unwrap_or("")
            )));
        }
        Ok(())
    }

    fn transaction(&mut self, tx: &Resource<Transaction>) -> Result<&mut OpenTx, CapabilityError> {
        self.table
            .get_mut(&ours(tx))
            .map_err(|e| CapabilityError::Invalid(format!("transaction handle: {e}")))
    }
}

/// The table entry behind a plugin's `transaction` handle (the handle type
/// is the WIT's; the entry is ours).
fn ours(tx: &Resource<Transaction>) -> Resource<OpenTx> {
    Resource::new_own(tx.rep())
}

async fn execute_on(
    client: &Object,
    statement: &str,
    params: &[Value],
) -> Result<u64, CapabilityError> {
    let stmt = client.prepare_cached(statement).await.map_err(pg_error)?;
    let params: Vec<Param<'_>> = params.iter().map(Param).collect();
    let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
        .iter()
        .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect();
    client.execute(&stmt, &refs).await.map_err(pg_error)
}

async fn query_on(
    client: &Object,
    statement: &str,
    params: &[Value],
) -> Result<Rows, CapabilityError> {
    let stmt = client.prepare_cached(statement).await.map_err(pg_error)?;
    let params: Vec<Param<'_>> = params.iter().map(Param).collect();
    let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
        .iter()
        .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect();
    let rows = client.query(&stmt, &refs).await.map_err(pg_error)?;
    let columns = stmt.columns().iter().map(|c| c.name().to_owned()).collect();
    let rows = rows
        .iter()
        .map(|row| {
            (0..row.len())
                .map(|i| values::column(row, i))
                .collect::<Result<Vec<_>, _>>()
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CapabilityError::Invalid(e.to_string()))?;
    Ok(Rows { columns, rows })
}

/// A shadow run's SQL runs only in the transaction held for it (rolled
/// back afterwards); without one it must not run at all.
async fn held_without_tx(calls: &CallPath, database: &str) -> Result<(), CapabilityError> {
    if calls.holding() && calls.effects().lock().await.is_none() {
        return Err(CapabilityError::AccessDenied(format!(
            "a shadow run holds SQL back, and database `{database}` has no held transaction for it \
             (a shadow's SQL runs on its plugin's one granted database)"
        )));
    }
    Ok(())
}

/// The arguments of the calls that carry many rows, as transcribed (the
/// rows shared, not copied, until a capture is written).
#[derive(serde::Serialize)]
struct InsertArgs {
    table: String,
    columns: Vec<String>,
    rows: Arc<Vec<Vec<Value>>>,
    on_conflict: OnConflict,
}

#[derive(serde::Serialize)]
struct BatchArgs {
    statement: String,
    param_rows: Arc<Vec<Vec<Value>>>,
}

struct SqlCap;

impl HasData for SqlCap {
    type Data<'a> = &'a mut SqlState;
}

/// Adds the `sql` interface to `linker`.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut SqlState,
) -> wasmtime::Result<()> {
    sql::add_to_linker::<T, SqlCap>(linker, get)
}

impl sql::Host for SqlState {
    async fn execute(
        &mut self,
        database: String,
        statement: String,
        params: Vec<Value>,
    ) -> Result<u64, CapabilityError> {
        let grant = self
            .check(&database)
            .and_then(|()| self.check_statement(&statement));
        self.calls
            .call(Capability::Sql, "execute", &database)
            .args(|| json!({ "statement": statement, "params": params }))
            .effect(|| format!("{statement} {params:?}"))
            .run(grant, |_| async move {
                held_without_tx(&self.calls, &database).await?;
                if let Some(tx) = self.calls.effects().lock().await.as_mut() {
                    effects_target(tx, &database)?;
                    return tx
                        .savepoint(async |c| execute_on(c, &statement, &params).await)
                        .await;
                }
                let conn = self.client(&database).await?;
                let r = execute_on(conn.get()?, &statement, &params).await;
                conn.release().await;
                r
            })
            .await
    }

    async fn query(
        &mut self,
        database: String,
        statement: String,
        params: Vec<Value>,
    ) -> Result<Rows, CapabilityError> {
        let grant = self
            .check(&database)
            .and_then(|()| self.check_statement(&statement));
        self.calls
            .call(Capability::Sql, "query", &database)
            .args(|| json!({ "statement": statement, "params": params }))
            .effect(|| format!("{statement} {params:?}"))
            .run(grant, |_| async move {
                held_without_tx(&self.calls, &database).await?;
                if let Some(tx) = self.calls.effects().lock().await.as_mut() {
                    effects_target(tx, &database)?;
                    return tx
                        .savepoint(async |c| query_on(c, &statement, &params).await)
                        .await;
                }
                let conn = self.client(&database).await?;
                let r = query_on(conn.get()?, &statement, &params).await;
                conn.release().await;
                r
            })
            .await
    }

    async fn execute_batch(
        &mut self,
        database: String,
        statement: String,
        param_rows: Vec<Vec<Value>>,
    ) -> Result<u64, CapabilityError> {
        let grant = self
            .check(&database)
            .and_then(|()| self.check_statement(&statement));
        let param_rows = Arc::new(param_rows);
        self.calls
            .call(Capability::Sql, "execute_batch", &database)
            .args(|| BatchArgs {
                statement: statement.clone(),
                param_rows: param_rows.clone(),
            })
            .effect(|| format!("{statement} {param_rows:?}"))
            .run(grant, |_| async move {
                held_without_tx(&self.calls, &database).await?;
                if let Some(tx) = self.calls.effects().lock().await.as_mut() {
                    effects_target(tx, &database)?;
                    return tx
                        .savepoint(async |c| {
                            let mut total = 0;
                            for row in param_rows.iter() {
                                total += execute_on(c, &statement, row).await?;
                            }
                            Ok(total)
                        })
                        .await;
                }
                let conn = self.client(&database).await?;
                let tx = OpenTx {
                    database,
                    client: Some(conn),
                    savepoint: None,
                };
                let client = open(&tx)?;
                client.batch_execute("BEGIN").await.map_err(pg_error)?;
                let mut total = 0;
                for row in param_rows.iter() {
                    // On error `tx` is dropped: its connection is closed, rolling back.
                    total += execute_on(client, &statement, row).await?;
                }
                commit(tx).await?;
                Ok(total)
            })
            .await
    }

    async fn insert_rows(
        &mut self,
        database: String,
        table: String,
        columns: Vec<String>,
        rows: Vec<Vec<Value>>,
        on_conflict: OnConflict,
    ) -> Result<u64, CapabilityError> {
        let grant = self.check(&database);
        // Shared with the transcript, not copied.
        let rows = Arc::new(rows);
        self.calls
            .call(Capability::Sql, "insert_rows", &database)
            .args(|| InsertArgs {
                table: table.clone(),
                columns: columns.clone(),
                rows: rows.clone(),
                on_conflict: on_conflict.clone(),
            })
            .effect(|| format!("{table} {columns:?} {rows:?} {on_conflict:?}"))
            .run(grant, |_| async move {
                held_without_tx(&self.calls, &database).await?;
                let plan = bulk::plan(
                    &table,
                    &columns,
                    &on_conflict,
                    self.grants.sql_role.as_deref(),
                )?;
                if let Some(tx) = self.calls.effects().lock().await.as_mut() {
                    effects_target(tx, &database)?;
                    if rows.is_empty() {
                        return Ok(0);
                    }
                    return tx
                        .savepoint(async |c| {
                            bulk::run(c, &plan, columns.len(), &rows, bulk::Within::Open).await
                        })
                        .await;
                }
                let conn = self.client(&database).await?;
                if rows.is_empty() {
                    conn.release().await;
                    return Ok(0);
                }
                let tx = OpenTx {
                    database,
                    client: Some(conn),
                    savepoint: None,
                };
                let client = open(&tx)?;
                // On error `tx` is dropped: its connection is closed, rolling back.
                let inserted =
                    bulk::run(client, &plan, columns.len(), &rows, bulk::Within::Own).await?;
                commit(tx).await?;
                Ok(inserted)
            })
            .await
    }

    async fn begin(&mut self, database: String) -> Result<Resource<Transaction>, CapabilityError> {
        let grant = self.check(&database);
        let too_many = |e| CapabilityError::Other(format!("too many open transactions: {e}"));
        // The handle's number is what the transcript keeps.
        let this = &mut *self;
        let rep = this
            .calls
            .call(Capability::Sql, "begin", &database)
            .run(grant, |_| async move {
                held_without_tx(&this.calls, &database).await?;
                let effects = this.calls.effects().clone();
                if let Some(tx) = effects.lock().await.as_mut() {
                    effects_target(tx, &database)?;
                    let savepoint = tx.open_savepoint().await?;
                    return this
                        .table
                        .push(OpenTx {
                            database,
                            client: None,
                            savepoint: Some(savepoint),
                        })
                        .map(|r| r.rep())
                        .map_err(too_many);
                }
                let conn = this.client(&database).await?;
                conn.get()?.batch_execute("BEGIN").await.map_err(pg_error)?;
                this.table
                    .push(OpenTx {
                        database,
                        client: Some(conn),
                        savepoint: None,
                    })
                    .map(|r| r.rep())
                    .map_err(too_many)
            })
            .await?;
        if self.calls.replaying() {
            // Played back: a handle with nothing behind it (its calls are answered too).
            let detached = OpenTx {
                database: String::new(),
                client: None,
                savepoint: None,
            };
            return self
                .table
                .push(detached)
                .map(|r| Resource::new_own(r.rep()))
                .map_err(too_many);
        }
        Ok(Resource::new_own(rep))
    }
}

impl sql::HostTransaction for SqlState {
    async fn execute(
        &mut self,
        tx: Resource<Transaction>,
        statement: String,
        params: Vec<Value>,
    ) -> Result<u64, CapabilityError> {
        let grant = self.check_statement(&statement);
        self.calls
            .call(Capability::Sql, "execute", "transaction")
            .args(|| json!({ "statement": statement, "params": params }))
            .run(grant, |_| async move {
                let effects = self.calls.effects().clone();
                let tx = self.transaction(&tx)?;
                if tx.savepoint.is_some() {
                    let batch = effects.lock().await;
                    return execute_on(batch_client(batch.as_ref())?, &statement, &params).await;
                }
                let client = open(tx)?;
                execute_on(client, &statement, &params).await
            })
            .await
    }

    async fn query(
        &mut self,
        tx: Resource<Transaction>,
        statement: String,
        params: Vec<Value>,
    ) -> Result<Rows, CapabilityError> {
        let grant = self.check_statement(&statement);
        self.calls
            .call(Capability::Sql, "query", "transaction")
            .args(|| json!({ "statement": statement, "params": params }))
            .run(grant, |_| async move {
                let effects = self.calls.effects().clone();
                let tx = self.transaction(&tx)?;
                if tx.savepoint.is_some() {
                    let batch = effects.lock().await;
                    return query_on(batch_client(batch.as_ref())?, &statement, &params).await;
                }
                let client = open(tx)?;
                query_on(client, &statement, &params).await
            })
            .await
    }

    async fn commit(&mut self, tx: Resource<Transaction>) -> Result<(), CapabilityError> {
        let grant = Ok(());
        self.calls
            .call(Capability::Sql, "commit", "transaction")
            .run(grant, |_| async move {
                let mut tx = self
                    .table
                    .delete(ours(&tx))
                    .map_err(|e| CapabilityError::Invalid(format!("transaction handle: {e}")))?;
                if let Some(name) = tx.savepoint.take() {
                    let mut batch = self.calls.effects().lock().await;
                    let batch = batch.as_mut().ok_or_else(|| {
                        CapabilityError::Invalid("the batch transaction has ended".into())
                    })?;
                    return batch.close_savepoint(&name, true).await;
                }
                commit(tx).await
            })
            .await
    }

    async fn drop(&mut self, tx: Resource<Transaction>) -> wasmtime::Result<()> {
        let mut tx = self.table.delete(ours(&tx))?;
        if let Some(name) = tx.savepoint.take() {
            if let Some(batch) = self.calls.effects().lock().await.as_mut() {
                // Undone; a failure here leaves the batch to fail at commit.
                let _ = batch.close_savepoint(&name, false).await;
            }
            return Ok(());
        }
        if let Some(client) = tx.client.as_ref().and_then(|c| c.get().ok())
            && client.batch_execute("ROLLBACK").await.is_ok()
            && let Some(conn) = tx.client.take()
        {
            conn.release().await;
        }
        Ok(())
    }
}

/// In an exactly-once batch, only the effects database is written, inside
/// the batch's transaction.
fn effects_target(tx: &EffectsTx, database: &str) -> Result<(), CapabilityError> {
    if tx.database == database {
        Ok(())
    } else {
        Err(denied(format_args!(
            "this pipeline makes effects exactly-once in database `{}`; `{database}` is outside \
             that transaction",
            tx.database
        )))
    }
}

/// The batch transaction's connection, for a plugin transaction inside it.
fn batch_client(batch: Option<&EffectsTx>) -> Result<&Object, CapabilityError> {
    batch
        .ok_or_else(|| CapabilityError::Invalid("the batch transaction has ended".into()))?
        .raw()
}

/// Commits `tx` and hands its connection back to the pool (on error the
/// connection is closed with `tx`, which rolls back).
async fn commit(mut tx: OpenTx) -> Result<(), CapabilityError> {
    open(&tx)?.batch_execute("COMMIT").await.map_err(pg_error)?;
    if let Some(conn) = tx.client.take() {
        conn.release().await;
    }
    Ok(())
}

fn open(tx: &OpenTx) -> Result<&Object, CapabilityError> {
    tx.client
        .as_ref()
        .and_then(|c| c.obj.as_ref())
        .ok_or_else(|| {
            CapabilityError::Invalid(format!(
                "transaction on `{}` is already finished",
                tx.database
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_outside_grant_is_denied() {
        let state = SqlState::new(
            Arc::new(Grants {
                sql: vec!["events".into()],
                ..Grants::default()
            }),
            Backends::offline(),
            CallPath::default(),
        );
        assert!(state.check("events").is_ok());
        assert!(matches!(
            state.check("billing"),
            Err(CapabilityError::AccessDenied(m)) if m.contains("billing")
        ));
    }
}
