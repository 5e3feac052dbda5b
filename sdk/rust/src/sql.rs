//! Parameterized SQL (`$1`, `$2`, ...) on the PostgreSQL databases granted
//! to the plugin. Every function returns `Result<_, Error>`;
//! `Error::Unavailable` means the database is down (retry later).

use crate::Error;
use crate::bindings::jetplug::plugin::sql as raw;
pub use crate::bindings::jetplug::plugin::sql::{OnConflict, Rows, Value};

/// Runs one statement on `database`; returns the number of rows affected.
pub fn execute(database: &str, statement: &str, params: &[Value]) -> Result<u64, Error> {
    raw::execute(database, statement, params).map_err(Error::from)
}

/// Runs one query on `database` and returns its rows.
pub fn query(database: &str, statement: &str, params: &[Value]) -> Result<Rows, Error> {
    raw::query(database, statement, params).map_err(Error::from)
}

/// Runs `statement` once per parameter row, all in one transaction.
pub fn execute_batch(
    database: &str,
    statement: &str,
    param_rows: &[Vec<Value>],
) -> Result<u64, Error> {
    raw::execute_batch(database, statement, param_rows).map_err(Error::from)
}

/// Bulk-loads `rows` (one value per entry of `columns`) into `table` with
/// `COPY`, in one transaction: the fastest way to write a whole batch. With
/// [`OnConflict::Skip`] rows whose key is already there are skipped (the
/// host then goes through a staging table and `ON CONFLICT DO NOTHING`),
/// which makes the write idempotent. Returns the rows inserted. (WIT 0.1.1.)
///
/// ```ignore
/// let rows = vec![vec![Value::Text("LEARNING".into()), Value::Int(7)]];
/// sql::insert_rows("events", "events", &["stream", "stream_seq"], &rows,
///     &OnConflict::Skip(vec!["stream".into(), "stream_seq".into()]))?;
/// ```
pub fn insert_rows(
    database: &str,
    table: &str,
    columns: &[&str],
    rows: &[Vec<Value>],
    on_conflict: &OnConflict,
) -> Result<u64, Error> {
    let columns: Vec<String> = columns.iter().map(|c| (*c).to_owned()).collect();
    raw::insert_rows(database, table, &columns, rows, on_conflict).map_err(Error::from)
}

/// Starts a transaction on `database`; dropped without [`Transaction::commit`]
/// it rolls back.
pub fn begin(database: &str) -> Result<Transaction, Error> {
    raw::begin(database).map(Transaction).map_err(Error::from)
}

/// An open transaction.
#[derive(Debug)]
pub struct Transaction(raw::Transaction);

impl Transaction {
    /// Runs one statement inside the transaction.
    pub fn execute(&self, statement: &str, params: &[Value]) -> Result<u64, Error> {
        self.0.execute(statement, params).map_err(Error::from)
    }

    /// Runs one query inside the transaction.
    pub fn query(&self, statement: &str, params: &[Value]) -> Result<Rows, Error> {
        self.0.query(statement, params).map_err(Error::from)
    }

    /// Commits the transaction.
    pub fn commit(self) -> Result<(), Error> {
        raw::Transaction::commit(self.0).map_err(Error::from)
    }
}

impl Rows {
    /// The index of column `name`.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == name)
    }

    /// The value in `row` of column `name`.
    pub fn get(&self, row: usize, name: &str) -> Option<&Value> {
        let col = self.column(name)?;
        self.rows.get(row)?.get(col)
    }
}

impl Value {
    /// The integer, if this is an `int`.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(v) => Some(*v),
            _ => None,
        }
    }

    /// The text, if this is `text` or `json`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Text(v) | Value::Json(v) => Some(v),
            _ => None,
        }
    }
}
