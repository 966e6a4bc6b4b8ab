//! The `db` capability: SQL on named connections (MariaDB/MySQL, PostgreSQL,
//! SQLite) with bound parameters, row and byte caps.
//!
//! Read-only is enforced by the database, not by reading the SQL:
//! * a read-only grant must name an account that cannot write; at connect
//!   time drhost asks the server what the account may do and refuses the
//!   grant if it could change anything (MariaDB: `SHOW GRANTS`; PostgreSQL:
//!   role attributes, table, sequence, schema and database privileges, TEMP,
//!   and the large-object functions);
//! * SQLite opens the file read-only (`SQLITE_OPEN_READONLY`);
//! * every `db.query` on a read-only grant, and every one in a read-only
//!   mode (plan, `drhost test`, `info()`, a step declared not mutating) on
//!   any grant, is sent alone as a prepared statement inside a transaction
//!   the engine keeps read-only and that is always rolled back: MariaDB
//!   `SET SESSION TRANSACTION READ ONLY` + `XA START` (an XA transaction
//!   refuses `COMMIT` and every statement that would commit implicitly, such
//!   as DDL, so the read-only transaction cannot be left), PostgreSQL `BEGIN
//!   READ ONLY`, SQLite a second connection opened read-only;
//! * every SQLite connection has an authorizer (`sqlite3_set_authorizer`)
//!   that refuses `ATTACH`/`DETACH` (and so `VACUUM INTO`), extension loading
//!   and file functions, and every pragma but a list of harmless ones, and a
//!   limit of 0 attached databases (`sqlite3_limit`).
//!
//! See docs/security.md for what this guarantees and where it stops.

use crate::bindings::CapError;
use crate::bindings::drhost::plugin::db::{Column, Rows, Value};
use crate::caps::{Decision, Grant, Moved, Summarize};
use crate::policy::{DbAccess, DbGrant, Policy};
use futures::TryStreamExt;
use sqlx::mysql::{MySqlPool, MySqlPoolOptions, MySqlRow};
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions, SqliteRow};
use sqlx::{AssertSqlSafe, Column as _, Connection, Row, TypeInfo, ValueRef};
use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

enum Pool {
    MySql(MySqlPool),
    Pg(PgPool),
    Sqlite(SqlitePool),
}

struct Conn {
    name: String,
    grant: DbGrant,
    pool: OnceCell<Result<Pool, String>>,
    /// SQLite only: the same file opened read-only, for read-only modes on a
    /// read-write grant.
    read_pool: OnceCell<Result<Pool, String>>,
}

pub struct DbCap {
    conns: BTreeMap<String, Conn>,
    max_rows: u64,
    max_bytes: u64,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const PING_TIMEOUT: Duration = Duration::from_secs(3);

/// The audit record names each invariant with its count.
impl Summarize for Vec<crate::bindings::drhost::plugin::db::Invariant> {
    fn moved(&self) -> Moved {
        let mut m = Moved::default();
        let found: serde_json::Map<String, serde_json::Value> = self
            .iter()
            .map(|i| (i.name.clone(), i.violations.into()))
            .collect();
        m.extra.insert("violations".into(), found.into());
        m
    }
}

impl Summarize for Rows {
    fn moved(&self) -> Moved {
        let mut m = Moved::default();
        m.extra.insert("rows".into(), self.rows.len().into());
        m
    }
}

impl DbCap {
    pub fn from_policy(policy: &Policy) -> Self {
        DbCap {
            conns: policy
                .db
                .iter()
                .map(|(name, grant)| {
                    (
                        name.clone(),
                        Conn {
                            name: name.clone(),
                            grant: grant.clone(),
                            pool: OnceCell::new(),
                            read_pool: OnceCell::new(),
                        },
                    )
                })
                .collect(),
            max_rows: policy.limits.max_rows,
            max_bytes: policy.limits.max_guest_bytes.0,
        }
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.conns.keys().map(String::as_str)
    }

    /// Decides a call on `name`; `write` for execute.
    pub fn decide(&self, name: &str, op: &str, write: bool) -> Decision {
        let needed = if write { "read-write" } else { "read-only" };
        match self.conns.get(name) {
            None => Decision::Deny {
                needed: format!("db.{name} access={needed}"),
                message: format!(
                    "db.{op}: no connection {name:?} is granted; add a [db.{name}] table with url and access = \"{needed}\" to the policy"
                ),
            },
            Some(c) if write && c.grant.access == DbAccess::ReadOnly => Decision::Deny {
                needed: format!("db.{name} access=read-write"),
                message: format!(
                    "db.execute on {name:?} needs read-write access, but [db.{name}] is read-only"
                ),
            },
            Some(c) => Decision::Allow(
                Grant::on(
                    format!("db.{name}"),
                    c.grant.sandbox,
                    format!("db.{name} access={}", c.grant.access),
                )
                .phases(&c.grant.phases, &c.grant.write_phases),
            ),
        }
    }

    async fn pool(&self, name: &str) -> Result<&Pool, CapError> {
        let conn = self
            .conns
            .get(name)
            .ok_or_else(|| CapError::Denied(format!("no connection {name:?}")))?;
        let ro = conn.grant.access == DbAccess::ReadOnly;
        conn.pool
            .get_or_init(|| conn.connect(ro))
            .await
            .as_ref()
            .map_err(|e| CapError::Unavailable(e.clone()))
    }

    /// The pool for a read-only query: the grant's own, except for SQLite on
    /// a read-write grant, whose file is opened a second time, read-only.
    async fn read_pool(&self, name: &str) -> Result<&Pool, CapError> {
        let pool = self.pool(name).await?;
        let Some(conn) = self.conns.get(name) else {
            return Ok(pool);
        };
        if !matches!(pool, Pool::Sqlite(_)) || conn.grant.access == DbAccess::ReadOnly {
            return Ok(pool);
        }
        conn.read_pool
            .get_or_init(|| conn.connect(true))
            .await
            .as_ref()
            .map_err(|e| CapError::Unavailable(e.clone()))
    }

    fn row_cap(&self, name: &str) -> u64 {
        self.conns
            .get(name)
            .and_then(|c| c.grant.max_rows)
            .unwrap_or(self.max_rows)
    }

    fn read_only(&self, name: &str) -> bool {
        self.conns
            .get(name)
            .is_some_and(|c| c.grant.access == DbAccess::ReadOnly)
    }

    /// The grant's data-validation queries, each with its count of violating rows.
    pub async fn invariants(&self, name: &str) -> Result<Vec<(String, u64)>, CapError> {
        let queries = self
            .conns
            .get(name)
            .map(|c| c.grant.invariants.clone())
            .unwrap_or_default();
        let mut out = Vec::with_capacity(queries.len());
        for (check, sql) in queries {
            let rows = self.query(name, &sql, &[], true).await?;
            let n = match rows.rows.first().and_then(|r| r.first()) {
                Some(Value::Int(n)) => u64::try_from(*n).ok(),
                Some(Value::Text(t)) => t.trim().parse().ok(),
                _ => None,
            }
            .ok_or_else(|| {
                CapError::Invalid(format!(
                    "[db.{name}.invariants] {check}: the query must return a count of violating rows"
                ))
            })?;
            out.push((check, n));
        }
        Ok(out)
    }

    /// Round-trip time in microseconds.
    pub async fn ping(&self, name: &str) -> Result<u64, CapError> {
        let pool = self.pool(name).await?;
        let start = Instant::now();
        // The pool retries a refused connection until its acquire timeout;
        // a ping is how a plugin tells that a database is down, so it gives
        // up sooner.
        let result = tokio::time::timeout(PING_TIMEOUT, async {
            match pool {
                Pool::MySql(p) => ping_pool(p).await,
                Pool::Pg(p) => ping_pool(p).await,
                Pool::Sqlite(p) => ping_pool(p).await,
            }
        })
        .await;
        match result {
            Ok(r) => r.map_err(|e| CapError::Unavailable(format!("ping {name}: {e}")))?,
            Err(_) => {
                return Err(CapError::Unavailable(format!(
                    "ping {name}: no answer within {} s",
                    PING_TIMEOUT.as_secs()
                )));
            }
        }
        Ok(u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX))
    }

    /// Runs one query. `read_only_mode` (plan, `drhost test`, a step not
    /// declared mutating) makes the engine refuse writes even on a
    /// read-write grant; a read-only grant always runs that way.
    pub async fn query(
        &self,
        name: &str,
        sql: &str,
        params: &[Value],
        read_only_mode: bool,
    ) -> Result<Rows, CapError> {
        let ro = read_only_mode || self.read_only(name);
        let pool = if ro {
            self.read_pool(name).await?
        } else {
            self.pool(name).await?
        };
        let limits = Limits {
            rows: self.row_cap(name),
            bytes: self.max_bytes,
            conn: name,
        };
        match pool {
            Pool::MySql(p) => {
                let mut c = p.acquire().await.map_err(unavailable(name))?;
                if !ro {
                    let q = bind!(sqlx::query(AssertSqlSafe(sql.to_string())), params);
                    return collect(q.fetch(&mut *c), &limits, mysql_value).await;
                }
                // An XA transaction refuses COMMIT and every statement that
                // commits implicitly (DDL, LOCK TABLES, FLUSH…), so the
                // statement cannot leave the read-only transaction; the
                // session default covers anything a procedure starts.
                let xid = format!("drhost-ro-{}", crate::clock::new_run_id());
                let begin = format!("SET SESSION TRANSACTION READ ONLY; XA START '{xid}'");
                sqlx::raw_sql(AssertSqlSafe(begin))
                    .execute(&mut *c)
                    .await
                    .map_err(db_error(name))?;
                let q = bind!(sqlx::query(AssertSqlSafe(sql.to_string())), params);
                let r = collect(q.fetch(&mut *c), &limits, mysql_value).await;
                let mut end = format!("XA END '{xid}'; XA ROLLBACK '{xid}'");
                if !self.read_only(name) {
                    end.push_str("; SET SESSION TRANSACTION READ WRITE");
                }
                if sqlx::raw_sql(AssertSqlSafe(end))
                    .execute(&mut *c)
                    .await
                    .is_err()
                {
                    // The session is in a state we did not leave it in: never reuse it.
                    let _ = c.close().await;
                }
                r
            }
            Pool::Pg(p) => {
                let mut c = p.acquire().await.map_err(unavailable(name))?;
                if !ro {
                    let q = bind!(sqlx::query(AssertSqlSafe(sql.to_string())), params);
                    return collect(q.fetch(&mut *c), &limits, pg_value).await;
                }
                // One prepared statement cannot both end this transaction and
                // write, and inside it PostgreSQL refuses every write.
                sqlx::raw_sql("BEGIN READ ONLY")
                    .execute(&mut *c)
                    .await
                    .map_err(db_error(name))?;
                let q = bind!(sqlx::query(AssertSqlSafe(sql.to_string())), params);
                let r = collect(q.fetch(&mut *c), &limits, pg_value).await;
                if sqlx::raw_sql("ROLLBACK").execute(&mut *c).await.is_err() {
                    let _ = c.close().await;
                }
                r
            }
            Pool::Sqlite(p) => {
                let q = bind!(sqlx::query(AssertSqlSafe(sql.to_string())), params);
                collect(q.fetch(p), &limits, sqlite_value).await
            }
        }
    }

    pub async fn execute(&self, name: &str, sql: &str, params: &[Value]) -> Result<u64, CapError> {
        let pool = self.pool(name).await?;
        match pool {
            Pool::MySql(p) => {
                let q = bind!(sqlx::query(AssertSqlSafe(sql.to_string())), params);
                q_exec!(q, p, name)
            }
            Pool::Pg(p) => {
                let q = bind!(sqlx::query(AssertSqlSafe(sql.to_string())), params);
                q_exec!(q, p, name)
            }
            Pool::Sqlite(p) => {
                let q = bind!(sqlx::query(AssertSqlSafe(sql.to_string())), params);
                q_exec!(q, p, name)
            }
        }
    }
}

/// Binds WIT values to a query of any of the three drivers.
macro_rules! bind {
    ($q:expr, $params:expr) => {{
        let mut q = $q;
        for v in $params {
            q = match v {
                Value::Null => q.bind(None::<String>),
                Value::Boolean(b) => q.bind(*b),
                Value::Int(i) => q.bind(*i),
                Value::Float(f) => q.bind(*f),
                Value::Text(s) => q.bind(s.clone()),
                Value::Bytes(b) => q.bind(b.clone()),
            };
        }
        q
    }};
}
use bind;

macro_rules! q_exec {
    ($q:expr, $pool:expr, $name:expr) => {
        $q.execute($pool)
            .await
            .map(|r| r.rows_affected())
            .map_err(db_error($name))
    };
}
use q_exec;

async fn ping_pool<DB: sqlx::Database>(p: &sqlx::Pool<DB>) -> Result<(), sqlx::Error> {
    let mut c = p.acquire().await?;
    c.ping().await
}

fn unavailable(name: &str) -> impl Fn(sqlx::Error) -> CapError + '_ {
    move |e| CapError::Unavailable(format!("connection {name:?}: {e}"))
}

/// A database error as the plugin should see it: refusals by the server
/// (privileges, read-only) are `denied`, other errors `invalid` or
/// `unavailable`.
fn db_error(name: &str) -> impl Fn(sqlx::Error) -> CapError + '_ {
    move |e| match &e {
        sqlx::Error::Database(d) => {
            let msg = d.message().to_string();
            let code = d.code().map(|c| c.to_string()).unwrap_or_default();
            let lower = msg.to_ascii_lowercase();
            let refused = lower.contains("denied")
                || lower.contains("read-only")
                || lower.contains("readonly")
                || lower.contains("read only")
                || lower.contains("permission")
                || lower.contains("not authorized")
                || lower.contains("too many attached databases")
                || code == "42501"
                || code == "25006"
                || code == "XAE07"
                || code == "23";
            if refused {
                CapError::Denied(format!("the database refused it on {name:?}: {msg}"))
            } else {
                CapError::Invalid(format!("{name:?}: {msg}"))
            }
        }
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
            CapError::Unavailable(format!("connection {name:?}: {e}"))
        }
        _ => CapError::Invalid(format!("{name:?}: {e}")),
    }
}

struct Limits<'a> {
    rows: u64,
    bytes: u64,
    conn: &'a str,
}

/// Streams rows and stops as soon as a cap is passed, so an oversize result
/// never sits whole in the host's memory either.
async fn collect<'s, R, S>(
    mut stream: S,
    limits: &Limits<'_>,
    decode: fn(&R, usize) -> Result<Value, String>,
) -> Result<Rows, CapError>
where
    R: Row,
    S: futures::Stream<Item = Result<R, sqlx::Error>> + Unpin + 's,
{
    let mut columns: Option<Vec<Column>> = None;
    let mut rows = Vec::new();
    let mut bytes = 0u64;
    while let Some(row) = stream.try_next().await.map_err(db_error(limits.conn))? {
        if columns.is_none() {
            columns = Some(
                row.columns()
                    .iter()
                    .map(|c| Column {
                        name: c.name().to_string(),
                        type_name: c.type_info().name().to_string(),
                    })
                    .collect(),
            );
        }
        if rows.len() as u64 >= limits.rows {
            return Err(CapError::TooLarge(format!(
                "the query on {:?} returned more than {} rows (raise max-rows or add a LIMIT)",
                limits.conn, limits.rows
            )));
        }
        let mut values = Vec::with_capacity(row.len());
        for i in 0..row.len() {
            let v = decode(&row, i).map_err(CapError::Invalid)?;
            bytes += match &v {
                Value::Text(s) => s.len() as u64,
                Value::Bytes(b) => b.len() as u64,
                _ => 8,
            };
            values.push(v);
        }
        if bytes > limits.bytes {
            return Err(CapError::TooLarge(format!(
                "the result on {:?} is over the {}-byte limit for data copied into the plugin ([limits] max-guest-bytes)",
                limits.conn, limits.bytes
            )));
        }
        rows.push(values);
    }
    Ok(Rows {
        columns: columns.unwrap_or_default(),
        rows,
    })
}

fn undecodable(i: usize, ty: &str) -> String {
    format!(
        "column {i} has type {ty}, which drhost cannot pass to plugins; cast it to text in the query"
    )
}

fn mysql_value(row: &MySqlRow, i: usize) -> Result<Value, String> {
    let raw = row.try_get_raw(i).map_err(|e| e.to_string())?;
    if raw.is_null() {
        return Ok(Value::Null);
    }
    let ty = raw.type_info().name().to_string();
    let e = |err: sqlx::Error| format!("column {i} ({ty}): {err}");
    Ok(match ty.as_str() {
        "BOOLEAN" => Value::Boolean(row.try_get::<bool, _>(i).map_err(e)?),
        "TINYINT" | "SMALLINT" | "INT" | "MEDIUMINT" | "BIGINT" | "YEAR" => {
            Value::Int(row.try_get::<i64, _>(i).map_err(e)?)
        }
        t if t.ends_with("UNSIGNED") => {
            let u = row.try_get::<u64, _>(i).map_err(e)?;
            i64::try_from(u)
                .map(Value::Int)
                .unwrap_or(Value::Text(u.to_string()))
        }
        "FLOAT" => Value::Float(f64::from(row.try_get::<f32, _>(i).map_err(e)?)),
        "DOUBLE" => Value::Float(row.try_get::<f64, _>(i).map_err(e)?),
        "DECIMAL" => Value::Text(row.try_get_unchecked::<String, _>(i).map_err(e)?),
        "DATETIME" | "TIMESTAMP" => Value::Text(
            row.try_get::<chrono::NaiveDateTime, _>(i)
                .map_err(e)?
                .format("%Y-%m-%d %H:%M:%S%.f")
                .to_string(),
        ),
        "DATE" => Value::Text(
            row.try_get::<chrono::NaiveDate, _>(i)
                .map_err(e)?
                .to_string(),
        ),
        "TIME" => Value::Text(
            row.try_get::<chrono::NaiveTime, _>(i)
                .map_err(e)?
                .to_string(),
        ),
        "BLOB" | "TINYBLOB" | "MEDIUMBLOB" | "LONGBLOB" | "BINARY" | "VARBINARY" | "BIT" => {
            Value::Bytes(row.try_get::<Vec<u8>, _>(i).map_err(e)?)
        }
        _ => match row.try_get::<String, _>(i) {
            Ok(s) => Value::Text(s),
            Err(_) => match row.try_get_unchecked::<Vec<u8>, _>(i) {
                Ok(b) => match String::from_utf8(b) {
                    Ok(s) => Value::Text(s),
                    Err(b) => Value::Bytes(b.into_bytes()),
                },
                Err(_) => return Err(undecodable(i, &ty)),
            },
        },
    })
}

fn pg_value(row: &PgRow, i: usize) -> Result<Value, String> {
    let raw = row.try_get_raw(i).map_err(|e| e.to_string())?;
    if raw.is_null() {
        return Ok(Value::Null);
    }
    let ty = raw.type_info().name().to_string();
    let e = |err: sqlx::Error| format!("column {i} ({ty}): {err}");
    Ok(match ty.as_str() {
        "BOOL" => Value::Boolean(row.try_get::<bool, _>(i).map_err(e)?),
        "INT2" => Value::Int(row.try_get::<i16, _>(i).map_err(e)?.into()),
        "INT4" => Value::Int(row.try_get::<i32, _>(i).map_err(e)?.into()),
        "INT8" => Value::Int(row.try_get::<i64, _>(i).map_err(e)?),
        "OID" => Value::Int(
            row.try_get::<sqlx::postgres::types::Oid, _>(i)
                .map_err(e)?
                .0
                .into(),
        ),
        "FLOAT4" => Value::Float(row.try_get::<f32, _>(i).map_err(e)?.into()),
        "FLOAT8" => Value::Float(row.try_get::<f64, _>(i).map_err(e)?),
        "BYTEA" => Value::Bytes(row.try_get::<Vec<u8>, _>(i).map_err(e)?),
        "TIMESTAMPTZ" => Value::Text(
            row.try_get::<chrono::DateTime<chrono::Utc>, _>(i)
                .map_err(e)?
                .to_rfc3339(),
        ),
        "TIMESTAMP" => Value::Text(
            row.try_get::<chrono::NaiveDateTime, _>(i)
                .map_err(e)?
                .format("%Y-%m-%d %H:%M:%S%.f")
                .to_string(),
        ),
        "DATE" => Value::Text(
            row.try_get::<chrono::NaiveDate, _>(i)
                .map_err(e)?
                .to_string(),
        ),
        "TIME" => Value::Text(
            row.try_get::<chrono::NaiveTime, _>(i)
                .map_err(e)?
                .to_string(),
        ),
        "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "CHAR" | "CITEXT" => {
            Value::Text(row.try_get::<String, _>(i).map_err(e)?)
        }
        _ => return Err(undecodable(i, &ty)),
    })
}

fn sqlite_value(row: &SqliteRow, i: usize) -> Result<Value, String> {
    let raw = row.try_get_raw(i).map_err(|e| e.to_string())?;
    if raw.is_null() {
        return Ok(Value::Null);
    }
    // SQLite is dynamically typed: decode by the value's own storage class.
    let ty = raw.type_info().name().to_string();
    let e = |err: sqlx::Error| format!("column {i} ({ty}): {err}");
    Ok(match ty.as_str() {
        "INTEGER" | "BOOLEAN" => Value::Int(row.try_get_unchecked::<i64, _>(i).map_err(e)?),
        "REAL" => Value::Float(row.try_get_unchecked::<f64, _>(i).map_err(e)?),
        "BLOB" => Value::Bytes(row.try_get_unchecked::<Vec<u8>, _>(i).map_err(e)?),
        _ => Value::Text(row.try_get_unchecked::<String, _>(i).map_err(e)?),
    })
}

impl Conn {
    /// Connects; `ro` opens SQLite read-only (servers enforce read-only
    /// grants by the account, checked here, and per statement).
    async fn connect(&self, ro: bool) -> Result<Pool, String> {
        let url = self
            .grant
            .url
            .resolve()
            .map_err(|e| format!("[db.{}] url: {e}", self.name))?;
        let name = &self.name;
        // Errors from sqlx can echo the URL; never let it (and its password) out.
        let scrub = |e: sqlx::Error| scrub_secret(&e.to_string(), &url);
        let scheme = url
            .split(':')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        let pool = match scheme.as_str() {
            "mysql" | "mariadb" => {
                let url = url.replacen("mariadb:", "mysql:", 1);
                let opts = sqlx::mysql::MySqlConnectOptions::from_str(&url).map_err(scrub)?;
                let pool = MySqlPoolOptions::new()
                    .max_connections(2)
                    .acquire_timeout(CONNECT_TIMEOUT)
                    .after_connect(move |c, _| {
                        Box::pin(async move {
                            if ro {
                                sqlx::raw_sql("SET SESSION TRANSACTION READ ONLY")
                                    .execute(&mut *c)
                                    .await?;
                            }
                            Ok(())
                        })
                    })
                    .connect_with(opts)
                    .await
                    .map_err(|e| format!("[db.{name}]: cannot connect: {}", scrub(e)))?;
                if ro {
                    check_mysql_read_only(&pool, name).await?;
                }
                Pool::MySql(pool)
            }
            "postgres" | "postgresql" => {
                let opts = sqlx::postgres::PgConnectOptions::from_str(&url).map_err(scrub)?;
                let pool = PgPoolOptions::new()
                    .max_connections(2)
                    .acquire_timeout(CONNECT_TIMEOUT)
                    .connect_with(opts)
                    .await
                    .map_err(|e| format!("[db.{name}]: cannot connect: {}", scrub(e)))?;
                if ro {
                    check_pg_read_only(&pool, name).await?;
                }
                Pool::Pg(pool)
            }
            "sqlite" => {
                let mut opts = SqliteConnectOptions::from_str(&url).map_err(scrub)?;
                if ro {
                    opts = opts.read_only(true).pragma("query_only", "1");
                }
                let pool = SqlitePoolOptions::new()
                    .max_connections(2)
                    .acquire_timeout(CONNECT_TIMEOUT)
                    .after_connect(move |c, _| {
                        Box::pin(async move {
                            let mut h = c.lock_handle().await?;
                            sqlite_guard::install(h.as_raw_handle(), ro);
                            Ok(())
                        })
                    })
                    .connect_with(opts)
                    .await
                    .map_err(|e| format!("[db.{name}]: cannot open: {}", scrub(e)))?;
                Pool::Sqlite(pool)
            }
            other => {
                return Err(format!(
                    "[db.{name}]: unsupported database {other:?} (use mysql://, mariadb://, postgres:// or sqlite:)"
                ));
            }
        };
        tracing::debug!("connected db.{name} ({})", self.grant.access);
        Ok(pool)
    }
}

fn scrub_secret(msg: &str, url: &str) -> String {
    let mut out = msg.replace(url, "<connection url>");
    if let Ok(u) = url::Url::parse(url)
        && let Some(p) = u.password()
        && !p.is_empty()
    {
        out = out.replace(p, "<password>");
    }
    out
}

/// Privileges that change nothing.
const MYSQL_READ_PRIVS: &[&str] = &[
    "SELECT",
    "USAGE",
    "SHOW VIEW",
    "SHOW DATABASES",
    "PROCESS",
    "REPLICATION CLIENT",
    "BINLOG MONITOR",
    "SLAVE MONITOR",
    "REPLICA MONITOR",
];

/// Refuses a read-only grant whose account may write.
async fn check_mysql_read_only(pool: &MySqlPool, name: &str) -> Result<(), String> {
    let rows: Vec<String> = sqlx::query_scalar("SHOW GRANTS")
        .fetch_all(pool)
        .await
        .map_err(|e| format!("[db.{name}]: cannot read the account's grants: {e}"))?;
    for line in &rows {
        if let Some(problem) = mysql_grant_problem(line) {
            return Err(format!(
                "[db.{name}] is read-only, but its account can write ({problem}: {line}); grant it SELECT only, or make the grant read-write"
            ));
        }
    }
    Ok(())
}

/// Why one `SHOW GRANTS` line allows writing, if it does.
pub fn mysql_grant_problem(line: &str) -> Option<String> {
    let upper = line.to_ascii_uppercase();
    let rest = upper.strip_prefix("GRANT ")?;
    if upper.contains("WITH GRANT OPTION") {
        return Some("WITH GRANT OPTION".into());
    }
    let Some(on) = rest.find(" ON ") else {
        return Some("it is granted a role, whose privileges are not checked".into());
    };
    // Drop column lists: SELECT (a, b) is still SELECT.
    let mut privs = String::new();
    let mut depth = 0;
    for c in rest[..on].chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ if depth == 0 => privs.push(c),
            _ => {}
        }
    }
    privs
        .split(',')
        .map(str::trim)
        .find(|p| !MYSQL_READ_PRIVS.contains(p))
        .map(|p| format!("privilege {p}"))
}

const PG_CHECK: &str = r#"
SELECT r.rolsuper, r.rolcreaterole, r.rolcreatedb, r.rolbypassrls, r.rolreplication,
  has_database_privilege(current_database(), 'CREATE') AS db_create,
  has_database_privilege(current_database(), 'TEMP') AS db_temp,
  EXISTS (SELECT 1 FROM pg_namespace n
          WHERE n.nspname NOT LIKE 'pg\_%' AND n.nspname <> 'information_schema'
            AND has_schema_privilege(n.oid, 'CREATE')) AS schema_create,
  (SELECT string_agg(n.nspname || '.' || c.relname, ', ') FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r','p','v','m','f') AND n.nspname NOT IN ('pg_catalog','information_schema')
      AND n.nspname NOT LIKE 'pg\_toast%'
      AND (has_table_privilege(c.oid, 'INSERT') OR has_table_privilege(c.oid, 'UPDATE')
        OR has_table_privilege(c.oid, 'DELETE') OR has_table_privilege(c.oid, 'TRUNCATE')
        OR has_table_privilege(c.oid, 'TRIGGER') OR has_table_privilege(c.oid, 'REFERENCES')
        OR pg_has_role(c.relowner, 'USAGE'))) AS writable_tables,
  (SELECT string_agg(c.relname, ', ') FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind = 'S' AND n.nspname NOT IN ('pg_catalog','information_schema')
      AND (has_sequence_privilege(c.oid, 'UPDATE') OR has_sequence_privilege(c.oid, 'USAGE'))) AS writable_sequences,
  (SELECT string_agg(f, ', ') FROM unnest(ARRAY[
      'lo_from_bytea(oid,bytea)', 'lo_create(oid)', 'lo_creat(integer)', 'lo_put(oid,bigint,bytea)',
      'lo_import(text)', 'lo_import(text,oid)', 'lo_unlink(oid)', 'lowrite(integer,bytea)',
      'lo_truncate(integer,integer)', 'lo_truncate64(integer,bigint)']) AS f
    WHERE has_function_privilege(f, 'EXECUTE')) AS lo_functions,
  pg_has_role('pg_write_all_data', 'MEMBER') OR pg_has_role('pg_write_server_files', 'MEMBER')
    OR pg_has_role('pg_execute_server_program', 'MEMBER') AS write_roles
FROM pg_roles r WHERE r.rolname = current_user
"#;

async fn check_pg_read_only(pool: &PgPool, name: &str) -> Result<(), String> {
    let row = sqlx::query(PG_CHECK)
        .fetch_one(pool)
        .await
        .map_err(|e| format!("[db.{name}]: cannot read the role's privileges: {e}"))?;
    let flag = |c: &str| row.try_get::<bool, _>(c).unwrap_or(true);
    let list = |c: &str| row.try_get::<Option<String>, _>(c).ok().flatten();
    let mut problems = Vec::new();
    for (col, what) in [
        ("rolsuper", "is a superuser"),
        ("rolcreaterole", "can create roles"),
        ("rolcreatedb", "can create databases"),
        ("rolbypassrls", "bypasses row security"),
        ("rolreplication", "has REPLICATION"),
        ("db_create", "has CREATE on the database"),
        (
            "db_temp",
            "can create temporary tables (TEMP on the database)",
        ),
        ("schema_create", "has CREATE on a schema"),
        (
            "write_roles",
            "is a member of pg_write_all_data, pg_write_server_files or pg_execute_server_program",
        ),
    ] {
        if flag(col) {
            problems.push(what.to_string());
        }
    }
    if let Some(t) = list("writable_tables") {
        problems.push(format!("can write or owns tables: {t}"));
    }
    if let Some(s) = list("writable_sequences") {
        problems.push(format!("can advance sequences: {s}"));
    }
    if let Some(f) = list("lo_functions") {
        problems.push(format!("can execute large-object functions: {f}"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "[db.{name}] is read-only, but its role can write: it {}. Use a role with SELECT only (see docs/security.md), or make the grant read-write",
            problems.join("; ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mysql_grant_lines_are_classified() {
        assert_eq!(
            mysql_grant_problem("GRANT USAGE ON *.* TO `ro`@`localhost`"),
            None
        );
        assert_eq!(
            mysql_grant_problem("GRANT SELECT ON `test`.* TO `ro`@`localhost`"),
            None
        );
        assert_eq!(
            mysql_grant_problem("GRANT SELECT (a, b), SHOW VIEW ON `test`.`t` TO `ro`@`%`"),
            None
        );
        assert!(
            mysql_grant_problem(
                "GRANT ALL PRIVILEGES ON *.* TO `root`@`localhost` WITH GRANT OPTION"
            )
            .is_some()
        );
        assert!(mysql_grant_problem("GRANT SELECT, INSERT ON `test`.* TO `x`@`%`").is_some());
        assert!(mysql_grant_problem("GRANT `writer` TO `x`@`%`").is_some());
        assert!(
            mysql_grant_problem("GRANT PROXY ON ''@'%' TO 'root'@'localhost' WITH GRANT OPTION")
                .is_some()
        );
    }
}

/// SQLite enforced by SQLite: an authorizer and limits on every connection,
/// so no spelling of a statement gets past them (the text is never read).
mod sqlite_guard {
    use libsqlite3_sys as ffi;
    use std::ffi::{CStr, c_char, c_int, c_void};
    use std::ptr::NonNull;

    /// Pragmas that only report, with or without an argument.
    const READ_PRAGMAS: &[&str] = &[
        "table_info",
        "table_xinfo",
        "table_list",
        "index_list",
        "index_info",
        "index_xinfo",
        "foreign_key_list",
        "foreign_key_check",
        "integrity_check",
        "quick_check",
        "database_list",
        "collation_list",
        "function_list",
        "module_list",
        "pragma_list",
        "compile_options",
        "data_version",
        "freelist_count",
        "page_count",
    ];
    /// Pragmas that read without an argument and set with one.
    const SETTING_PRAGMAS: &[&str] = &[
        "user_version",
        "application_id",
        "schema_version",
        "page_size",
        "encoding",
        "journal_mode",
        "foreign_keys",
        "defer_foreign_keys",
        "recursive_triggers",
        "auto_vacuum",
    ];
    /// Settings a read-write grant may change: they alter this connection or
    /// the database's own header, never other files.
    const RW_SETTINGS: &[&str] = &[
        "user_version",
        "application_id",
        "foreign_keys",
        "defer_foreign_keys",
        "recursive_triggers",
    ];
    /// Functions that reach the file system or load code.
    const REFUSED_FUNCTIONS: &[&str] = &[
        "load_extension",
        "readfile",
        "writefile",
        "edit",
        "fts3_tokenizer",
    ];

    fn text<'a>(p: *const c_char) -> Option<&'a str> {
        if p.is_null() {
            return None;
        }
        // SAFETY: SQLite passes NUL-terminated strings that live for the call.
        unsafe { CStr::from_ptr(p) }.to_str().ok()
    }

    fn decide(read_only: bool, action: c_int, a1: Option<&str>, a2: Option<&str>) -> c_int {
        let lower = |s: Option<&str>| s.unwrap_or_default().to_ascii_lowercase();
        match action {
            // ATTACH is also how VACUUM INTO writes its copy.
            ffi::SQLITE_ATTACH | ffi::SQLITE_DETACH => ffi::SQLITE_DENY,
            ffi::SQLITE_FUNCTION if REFUSED_FUNCTIONS.contains(&lower(a2).as_str()) => {
                ffi::SQLITE_DENY
            }
            ffi::SQLITE_PRAGMA => {
                let name = lower(a1);
                let allowed = READ_PRAGMAS.contains(&name.as_str())
                    || (SETTING_PRAGMAS.contains(&name.as_str())
                        && (a2.is_none() || (!read_only && RW_SETTINGS.contains(&name.as_str()))));
                if allowed {
                    ffi::SQLITE_OK
                } else {
                    ffi::SQLITE_DENY
                }
            }
            ffi::SQLITE_CREATE_TEMP_TABLE
            | ffi::SQLITE_CREATE_TEMP_INDEX
            | ffi::SQLITE_CREATE_TEMP_TRIGGER
            | ffi::SQLITE_CREATE_TEMP_VIEW
            | ffi::SQLITE_CREATE_VTABLE
                if read_only =>
            {
                ffi::SQLITE_DENY
            }
            _ => ffi::SQLITE_OK,
        }
    }

    unsafe extern "C" fn authorize(
        user: *mut c_void,
        action: c_int,
        a1: *const c_char,
        a2: *const c_char,
        _db: *const c_char,
        _inner: *const c_char,
    ) -> c_int {
        // The user pointer is only a flag: non-null means read-only.
        decide(!user.is_null(), action, text(a1), text(a2))
    }

    /// Installs the authorizer and limits on a fresh connection.
    pub fn install(db: NonNull<ffi::sqlite3>, read_only: bool) {
        let flag: *mut c_void = if read_only {
            NonNull::<c_void>::dangling().as_ptr()
        } else {
            std::ptr::null_mut()
        };
        // SAFETY: `db` is a live connection handle held locked by sqlx for
        // this call; the callback is a plain function and the user pointer is
        // never dereferenced.
        unsafe {
            ffi::sqlite3_set_authorizer(db.as_ptr(), Some(authorize), flag);
            ffi::sqlite3_limit(db.as_ptr(), ffi::SQLITE_LIMIT_ATTACHED, 0);
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn file_reaching_actions_are_refused_on_every_connection() {
            for ro in [true, false] {
                assert_eq!(
                    decide(ro, ffi::SQLITE_ATTACH, Some("/x.db"), None),
                    ffi::SQLITE_DENY
                );
                assert_eq!(
                    decide(ro, ffi::SQLITE_DETACH, Some("o"), None),
                    ffi::SQLITE_DENY
                );
                assert_eq!(
                    decide(ro, ffi::SQLITE_FUNCTION, None, Some("LOAD_EXTENSION")),
                    ffi::SQLITE_DENY
                );
                assert_eq!(
                    decide(ro, ffi::SQLITE_PRAGMA, Some("writable_schema"), Some("1")),
                    ffi::SQLITE_DENY
                );
                assert_eq!(
                    decide(ro, ffi::SQLITE_PRAGMA, Some("table_info"), Some("t")),
                    ffi::SQLITE_OK
                );
            }
            assert_eq!(
                decide(true, ffi::SQLITE_PRAGMA, Some("query_only"), Some("0")),
                ffi::SQLITE_DENY
            );
            assert_eq!(
                decide(true, ffi::SQLITE_PRAGMA, Some("foreign_keys"), Some("1")),
                ffi::SQLITE_DENY
            );
            assert_eq!(
                decide(false, ffi::SQLITE_PRAGMA, Some("foreign_keys"), Some("1")),
                ffi::SQLITE_OK
            );
            assert_eq!(
                decide(true, ffi::SQLITE_PRAGMA, Some("user_version"), None),
                ffi::SQLITE_OK
            );
        }
    }
}
