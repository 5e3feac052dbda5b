//! `jetplug:plugin/sql`: parameterized statements on granted PostgreSQL
//! databases, checked against the plugin's `sql` grant on every call.
//!
//! This host does not yet hold database pools, so a granted call reports
//! `unavailable`; statement errors will be values, never traps.

use std::sync::Arc;

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

use super::{Grants, denied};
use crate::bindings::CapabilityError;
use crate::bindings::jetplug::plugin::sql::{self, Rows, Value};
use crate::plugin::PluginState;

/// An open transaction handed to a plugin as a `transaction` resource.
#[derive(Debug)]
pub struct Transaction {
    database: String,
}

/// Per-instance state of the sql capability.
#[derive(Debug)]
pub struct SqlState {
    grants: Arc<Grants>,
    table: ResourceTable,
}

impl SqlState {
    pub fn new(grants: Arc<Grants>) -> Self {
        SqlState {
            grants,
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

    fn unavailable(database: &str) -> CapabilityError {
        CapabilityError::Unavailable(format!(
            "sql: database `{database}` is not configured in this host"
        ))
    }

    fn transaction(&self, tx: &Resource<Transaction>) -> Result<&Transaction, CapabilityError> {
        self.table
            .get(tx)
            .map_err(|e| CapabilityError::Invalid(format!("transaction handle: {e}")))
    }
}

struct SqlCap;

impl HasData for SqlCap {
    type Data<'a> = &'a mut SqlState;
}

/// Adds the `sql` interface to `linker`.
pub fn add_to_linker(linker: &mut Linker<PluginState>) -> wasmtime::Result<()> {
    sql::add_to_linker::<PluginState, SqlCap>(linker, |s| &mut s.sql)
}

impl sql::Host for SqlState {
    async fn execute(
        &mut self,
        database: String,
        _statement: String,
        _params: Vec<Value>,
    ) -> Result<u64, CapabilityError> {
        self.check(&database)?;
        Err(Self::unavailable(&database))
    }

    async fn query(
        &mut self,
        database: String,
        _statement: String,
        _params: Vec<Value>,
    ) -> Result<Rows, CapabilityError> {
        self.check(&database)?;
        Err(Self::unavailable(&database))
    }

    async fn execute_batch(
        &mut self,
        database: String,
        _statement: String,
        _param_rows: Vec<Vec<Value>>,
    ) -> Result<u64, CapabilityError> {
        self.check(&database)?;
        Err(Self::unavailable(&database))
    }

    async fn begin(&mut self, database: String) -> Result<Resource<Transaction>, CapabilityError> {
        self.check(&database)?;
        Err(Self::unavailable(&database))
    }
}

impl sql::HostTransaction for SqlState {
    async fn execute(
        &mut self,
        tx: Resource<Transaction>,
        _statement: String,
        _params: Vec<Value>,
    ) -> Result<u64, CapabilityError> {
        let tx = self.transaction(&tx)?;
        Err(Self::unavailable(&tx.database))
    }

    async fn query(
        &mut self,
        tx: Resource<Transaction>,
        _statement: String,
        _params: Vec<Value>,
    ) -> Result<Rows, CapabilityError> {
        let tx = self.transaction(&tx)?;
        Err(Self::unavailable(&tx.database))
    }

    async fn commit(&mut self, tx: Resource<Transaction>) -> Result<(), CapabilityError> {
        let tx = self
            .table
            .delete(tx)
            .map_err(|e| CapabilityError::Invalid(format!("transaction handle: {e}")))?;
        Err(Self::unavailable(&tx.database))
    }

    async fn drop(&mut self, tx: Resource<Transaction>) -> wasmtime::Result<()> {
        self.table.delete(tx)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_outside_grant_is_denied() {
        let state = SqlState::new(Arc::new(Grants {
            sql: vec!["events".into()],
            ..Grants::default()
        }));
        assert!(state.check("events").is_ok());
        assert!(matches!(
            state.check("billing"),
            Err(CapabilityError::AccessDenied(m)) if m.contains("billing")
        ));
    }
}
