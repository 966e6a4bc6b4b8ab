//! Smoke queries: after a fail-over or a restore, a handful of queries that
//! prove the database serves what the application needs.
//!
//! ```no_run
//! use drhost_plugin::smoke::{Smoke, Expect};
//! use drhost_plugin::Outcome;
//!
//! let result = Smoke::on("app")
//!     .query("orders table answers", "SELECT COUNT(*) FROM orders", Expect::AtLeast(1))
//!     .query("schema version", "SELECT version FROM schema_info", Expect::Text("42".into()))
//!     .query("writable", "SELECT @@read_only", Expect::Int(0))
//!     .run();
//! let outcome = match result {
//!     Ok(findings) => Outcome::Ok(findings),
//!     Err(e) => Outcome::Failed(e.to_string()),
//! };
//! ```

use crate::db::{self, Value};
use crate::error::{Context, StepError};
use crate::{Finding, finding};

/// What the first column of the first row must be.
#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    /// Any row at all.
    Rows,
    /// An integer (or integer-valued text) of at least this much.
    AtLeast(i64),
    /// Exactly this integer.
    Int(i64),
    /// Exactly this text.
    Text(String),
}

/// A set of smoke queries on one granted connection; see [`Smoke::run`].
#[derive(Debug, Clone)]
pub struct Smoke {
    connection: String,
    queries: Vec<(String, String, Expect)>,
}

impl Smoke {
    /// Queries on `connection` (granted read-only is enough).
    pub fn on(connection: &str) -> Self {
        Smoke {
            connection: connection.into(),
            queries: Vec::new(),
        }
    }

    /// Adds a query with a short label used in findings and errors.
    pub fn query(mut self, label: &str, sql: &str, expect: Expect) -> Self {
        self.queries.push((label.into(), sql.into(), expect));
        self
    }

    /// Runs the queries in order and stops at the first that fails. Returns
    /// one finding per query: the label and the value it saw.
    pub fn run(&self) -> Result<Vec<Finding>, StepError> {
        let mut out = Vec::new();
        for (label, sql, expect) in &self.queries {
            let rows = db::query(&self.connection, sql, &[])
                .during(format!("smoke query {label:?} on {}", self.connection))?;
            let first = rows.rows.first().and_then(|r| r.first());
            let seen = check(first, expect)
                .map_err(|why| StepError::Message(format!("smoke query {label:?}: {why}")))?;
            out.push(finding(label.as_str(), seen));
        }
        Ok(out)
    }
}

/// The value as text, or why it does not meet `expect`.
pub fn check(value: Option<&Value>, expect: &Expect) -> Result<String, String> {
    let Some(value) = value else {
        return Err("returned no rows".into());
    };
    let text = render(value);
    let int = match value {
        Value::Int(i) => Some(*i),
        Value::Text(t) => t.trim().parse().ok(),
        Value::Float(f) if f.fract() == 0.0 => Some(*f as i64),
        _ => None,
    };
    let ok = match expect {
        Expect::Rows => true,
        Expect::AtLeast(n) => int.is_some_and(|i| i >= *n),
        Expect::Int(n) => int == Some(*n),
        Expect::Text(t) => &text == t,
    };
    if ok {
        Ok(text)
    } else {
        Err(format!("got {text}, expected {}", describe(expect)))
    }
}

fn describe(e: &Expect) -> String {
    match e {
        Expect::Rows => "a row".into(),
        Expect::AtLeast(n) => format!("at least {n}"),
        Expect::Int(n) => n.to_string(),
        Expect::Text(t) => format!("{t:?}"),
    }
}

/// A value as an operator would write it.
pub fn render(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::Boolean(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Text(t) => t.clone(),
        Value::Bytes(b) => format!("{} bytes", b.len()),
    }
}

/// The first column of the first row as an integer: counts, flags, lags.
pub fn scalar_i64(connection: &str, sql: &str, params: &[Value]) -> Result<i64, StepError> {
    let rows = db::query(connection, sql, params).during(format!("querying {connection}"))?;
    let first = rows.rows.first().and_then(|r| r.first());
    match first {
        Some(Value::Int(i)) => Ok(*i),
        Some(Value::Text(t)) => t
            .trim()
            .parse()
            .map_err(|_| StepError::Message(format!("{sql}: expected an integer, got {t:?}"))),
        Some(other) => Err(StepError::Message(format!(
            "{sql}: expected an integer, got {}",
            render(other)
        ))),
        None => Err(StepError::Message(format!("{sql}: returned no rows"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_each_expectation() {
        assert_eq!(
            check(Some(&Value::Int(5)), &Expect::AtLeast(1)),
            Ok("5".into())
        );
        assert_eq!(
            check(Some(&Value::Text("7".into())), &Expect::Int(7)),
            Ok("7".into())
        );
        assert_eq!(
            check(Some(&Value::Int(0)), &Expect::AtLeast(1)),
            Err("got 0, expected at least 1".into())
        );
        assert_eq!(
            check(Some(&Value::Null), &Expect::Text("x".into())),
            Err("got NULL, expected \"x\"".into())
        );
        assert_eq!(check(None, &Expect::Rows), Err("returned no rows".into()));
        assert!(check(Some(&Value::Null), &Expect::Rows).is_ok());
    }
}
