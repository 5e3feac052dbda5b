//! WIT `value` ⇄ PostgreSQL. Parameters are converted for the type the
//! server expects for each placeholder (so `int(5)` works for `int4` and
//! `int8` alike, and `null` for any type); result columns are converted by
//! their type. A mismatch is an `invalid` error naming the parameter.

use std::error::Error;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use tokio_postgres::Row;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

use crate::bindings::jetplug::plugin::sql::Value;

/// A parameter that adapts to the placeholder's type.
#[derive(Debug)]
pub struct Param<'a>(pub &'a Value);

type BoxError = Box<dyn Error + Sync + Send>;

fn mismatch(v: &Value, ty: &Type) -> BoxError {
    format!("cannot use {} for a `{ty}` parameter", kind(v)).into()
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Boolean(_) => "boolean",
        Value::Int(_) => "int",
        Value::Float(_) => "float",
        Value::Text(_) => "text",
        Value::Bytes(_) => "bytes",
        Value::Json(_) => "json",
        Value::Timestamp(_) => "timestamp",
    }
}

fn micros_to_time(us: i64) -> SystemTime {
    if us >= 0 {
        UNIX_EPOCH + Duration::from_micros(us.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_micros(us.unsigned_abs())
    }
}

fn time_to_micros(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

impl ToSql for Param<'_> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        let v = self.0;
        match (v, ty) {
            (Value::Null, _) => Ok(IsNull::Yes),
            (Value::Boolean(b), &Type::BOOL) => b.to_sql(ty, out),
            (Value::Int(i), &Type::INT8) => i.to_sql(ty, out),
            (Value::Int(i), &Type::INT4) => i32::try_from(*i)?.to_sql(ty, out),
            (Value::Int(i), &Type::INT2) => i16::try_from(*i)?.to_sql(ty, out),
            (Value::Int(i), &Type::FLOAT8) => (*i as f64).to_sql(ty, out),
            (Value::Float(f), &Type::FLOAT8) => f.to_sql(ty, out),
            (Value::Float(f), &Type::FLOAT4) => (*f as f32).to_sql(ty, out),
            (Value::Text(s), t) if is_text(t) => s.as_str().to_sql(ty, out),
            (Value::Text(s) | Value::Json(s), &Type::JSON | &Type::JSONB) => {
                let json: serde_json::Value =
                    serde_json::from_str(s).map_err(|e| format!("invalid JSON: {e}"))?;
                json.to_sql(ty, out)
            }
            (Value::Json(s), t) if is_text(t) => s.as_str().to_sql(ty, out),
            (Value::Bytes(b), &Type::BYTEA) => b.as_slice().to_sql(ty, out),
            (Value::Timestamp(us), &Type::TIMESTAMPTZ | &Type::TIMESTAMP) => {
                micros_to_time(*us).to_sql(ty, out)
            }
            _ => Err(mismatch(v, ty)),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

fn is_text(t: &Type) -> bool {
    matches!(
        *t,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN
    )
}

/// A column that cannot be handed to a plugin.
#[derive(Debug, thiserror::Error)]
pub enum ColumnError {
    #[error("column {column} ({ty}): {source}")]
    Read {
        column: usize,
        ty: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(
        "column {column} has type `{ty}`, which jetplug does not convert; cast it in SQL (e.g. `::text`, `::float8`)"
    )]
    Unsupported { column: usize, ty: String },
}

/// Converts column `i` of `row` to a value.
pub fn column(row: &Row, i: usize) -> Result<Value, ColumnError> {
    let ty = row.columns()[i].type_().clone();
    let err = |e: tokio_postgres::Error| ColumnError::Read {
        column: i,
        ty: ty.to_string(),
        source: e,
    };
    let v = match ty {
        Type::BOOL => row
            .try_get::<_, Option<bool>>(i)
            .map_err(err)?
            .map(Value::Boolean),
        Type::INT2 => row
            .try_get::<_, Option<i16>>(i)
            .map_err(err)?
            .map(|v| Value::Int(v.into())),
        Type::INT4 => row
            .try_get::<_, Option<i32>>(i)
            .map_err(err)?
            .map(|v| Value::Int(v.into())),
        Type::INT8 => row
            .try_get::<_, Option<i64>>(i)
            .map_err(err)?
            .map(Value::Int),
        Type::OID => row
            .try_get::<_, Option<u32>>(i)
            .map_err(err)?
            .map(|v| Value::Int(v.into())),
        Type::FLOAT4 => row
            .try_get::<_, Option<f32>>(i)
            .map_err(err)?
            .map(|v| Value::Float(v.into())),
        Type::FLOAT8 => row
            .try_get::<_, Option<f64>>(i)
            .map_err(err)?
            .map(Value::Float),
        Type::BYTEA => row
            .try_get::<_, Option<Vec<u8>>>(i)
            .map_err(err)?
            .map(Value::Bytes),
        Type::JSON | Type::JSONB => row
            .try_get::<_, Option<serde_json::Value>>(i)
            .map_err(err)?
            .map(|j| Value::Json(j.to_string())),
        Type::TIMESTAMPTZ | Type::TIMESTAMP => row
            .try_get::<_, Option<SystemTime>>(i)
            .map_err(err)?
            .map(|t| Value::Timestamp(time_to_micros(t))),
        ref t if is_text(t) => row
            .try_get::<_, Option<String>>(i)
            .map_err(err)?
            .map(Value::Text),
        other => {
            return Err(ColumnError::Unsupported {
                column: i,
                ty: other.to_string(),
            });
        }
    };
    Ok(v.unwrap_or(Value::Null))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_in_micros() {
        for us in [0, 1, 1_700_000_000_123_456, -1_000_000] {
            assert_eq!(time_to_micros(micros_to_time(us)), us);
        }
    }

    #[test]
    fn params_adapt_to_the_placeholder_type() {
        let mut out = BytesMut::new();
        assert!(Param(&Value::Int(5)).to_sql(&Type::INT4, &mut out).is_ok());
        assert!(
            Param(&Value::Int(1 << 40))
                .to_sql(&Type::INT4, &mut out)
                .is_err()
        );
        assert!(matches!(
            Param(&Value::Null).to_sql(&Type::INT8, &mut out),
            Ok(IsNull::Yes)
        ));
        let err = Param(&Value::Text("x".into()))
            .to_sql(&Type::INT8, &mut out)
            .err();
        assert!(err.is_some_and(|e| e.to_string().contains("cannot use text for a `int8`")));
        assert!(
            Param(&Value::Json("{bad".into()))
                .to_sql(&Type::JSONB, &mut out)
                .is_err()
        );
    }
}
