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
//!
//! Memory: MariaDB and PostgreSQL connections reach the server through a
//! relay ([`meter`]) that closes a connection whose answer to one request
//! passes twice `max-guest-bytes` (plus 4 MiB), before the driver has
//! buffered it; SQLite refuses any value over `max-guest-bytes`
//! (`SQLITE_LIMIT_LENGTH`); rows are streamed and counted in [`collect`].
//!
//! See docs/security.md for what this guarantees and where it stops.

mod meter;
mod tls;

use crate::bindings::CapError;
use crate::bindings::drhost::plugin::db::{Column, Rows, Value};
use crate::caps::{Decision, Grant, Moved, Summarize};
use crate::policy::{DbAccess, DbGrant, Policy, Secret};
use futures::TryStreamExt;
use sqlx::mysql::{MySqlPool, MySqlPoolOptions, MySqlRow};
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow, PgSslMode};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions, SqliteRow};
use sqlx::{AssertSqlSafe, Column as _, Connection, Row, TypeInfo, ValueRef};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// What read-only modes on a read-write grant use: the account of
    /// `read-url` (checked like a read-only grant's), SQLite's file opened
    /// read-only, or the grant's own account if it holds no server privileges.
    read_pool: OnceCell<Result<Pool, String>>,
    /// `[limits] max-guest-bytes`: SQLite's limit on one value.
    max_value: u64,
    /// SQLite: when the statement running must stop (milliseconds on
    /// [`clock_ms`], 0 = no limit); its progress handler interrupts it then.
    deadline: Arc<AtomicU64>,
    /// The relays the server connections go through (one per URL), kept
    /// for as long as their pools.
    meters: std::sync::Mutex<Vec<meter::Meter>>,
    /// Connections the relays closed for an oversize answer.
    cuts: Arc<AtomicU64>,
}

/// The largest answer to one request a server may send: what the plugin may
/// receive, twice over for the protocol's own bytes (row headers, lengths,
/// TLS), and room for the column descriptions of a wide result.
fn wire_allowance(max_guest_bytes: u64) -> u64 {
    max_guest_bytes.saturating_mul(2).saturating_add(4 << 20)
}

/// Milliseconds since the first call: the clock SQLite deadlines are on.
fn clock_ms() -> u64 {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    u64::try_from(base.elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// What drhost checks about an account when it first connects.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Account {
    /// The grant's own read-write account, for read-write work.
    Writer,
    /// An account that must not be able to write anything.
    Reader,
    /// The read-write account used in a read-only mode: a read-only
    /// transaction stops its data writes, so it must hold no privilege the
    /// engine honours outside a transaction (superuser, files, signals…).
    WriterReading,
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
                            max_value: policy.limits.max_guest_bytes.0,
                            deadline: Arc::new(AtomicU64::new(0)),
                            meters: std::sync::Mutex::new(Vec::new()),
                            cuts: Arc::new(AtomicU64::new(0)),
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
        let account = match conn.grant.access {
            DbAccess::ReadOnly => Account::Reader,
            DbAccess::ReadWrite => Account::Writer,
        };
        conn.pool
            .get_or_init(|| conn.connect(&conn.grant.url, account))
            .await
            .as_ref()
            .map_err(|e| CapError::Unavailable(e.clone()))
    }

    /// The pool for a read-only query. A read-only grant's own; on a
    /// read-write grant the `read-url` account, else SQLite's file opened
    /// read-only, else the grant's account if it holds no server privileges
    /// (`trusted` SQL, the operator's own invariants, skips that check).
    async fn read_pool(&self, name: &str, trusted: bool) -> Result<&Pool, CapError> {
        let conn = self
            .conns
            .get(name)
            .ok_or_else(|| CapError::Denied(format!("no connection {name:?}")))?;
        if conn.grant.access == DbAccess::ReadOnly {
            return self.pool(name).await;
        }
        if let Some(url) = &conn.grant.read_url {
            return conn
                .read_pool
                .get_or_init(|| conn.connect(url, Account::Reader))
                .await
                .as_ref()
                .map_err(|e| CapError::Denied(e.clone()));
        }
        let pool = self.pool(name).await?;
        match pool {
            Pool::Sqlite(_) => conn
                .read_pool
                .get_or_init(|| conn.connect(&conn.grant.url, Account::Reader))
                .await
                .as_ref()
                .map_err(|e| CapError::Unavailable(e.clone())),
            _ if trusted => Ok(pool),
            _ => conn
                .read_pool
                .get_or_init(|| conn.connect(&conn.grant.url, Account::WriterReading))
                .await
                .as_ref()
                .map_err(|e| CapError::Denied(e.clone())),
        }
    }

    /// The caps one statement on `name` runs under, from now.
    fn limits<'a>(&'a self, name: &'a str) -> Result<Limits<'a>, CapError> {
        let conn = self
            .conns
            .get(name)
            .ok_or_else(|| CapError::Denied(format!("no connection {name:?}")))?;
        Ok(Limits {
            rows: conn.grant.max_rows.unwrap_or(self.max_rows),
            bytes: self.max_bytes,
            conn: name,
            cuts: &conn.cuts,
            cuts_before: conn.cuts.load(Ordering::SeqCst),
        })
    }

    fn read_only(&self, name: &str) -> bool {
        self.conns
            .get(name)
            .is_some_and(|c| c.grant.access == DbAccess::ReadOnly)
    }

    /// The grant's data-validation queries, each with its count of violating rows.
    pub async fn invariants(
        &self,
        name: &str,
        time: Duration,
    ) -> Result<Vec<(String, u64)>, CapError> {
        let started = Instant::now();
        let queries = self
            .conns
            .get(name)
            .map(|c| c.grant.invariants.clone())
            .unwrap_or_default();
        let mut out = Vec::with_capacity(queries.len());
        for (check, sql) in queries {
            let time = time.saturating_sub(started.elapsed());
            let rows = within(name, time, self.query_as(name, &sql, &[], true, true, time)).await?;
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
    ///
    /// `time` is what is left of the step's budget: the statement is
    /// stopped by the engine when it runs out (MariaDB `max_statement_time`,
    /// PostgreSQL `statement_timeout`, SQLite's progress handler), and the
    /// call gives up waiting for the server then too.
    pub async fn query(
        &self,
        name: &str,
        sql: &str,
        params: &[Value],
        read_only_mode: bool,
        time: Duration,
    ) -> Result<Rows, CapError> {
        within(
            name,
            time,
            self.query_as(name, sql, params, read_only_mode, false, time),
        )
        .await
    }

    async fn query_as(
        &self,
        name: &str,
        sql: &str,
        params: &[Value],
        read_only_mode: bool,
        trusted: bool,
        time: Duration,
    ) -> Result<Rows, CapError> {
        let ro = read_only_mode || self.read_only(name);
        let limit = StatementLimit::new(time)?;
        let _sqlite_deadline = self.sqlite_deadline(name, time);
        let pool = if ro {
            self.read_pool(name, trusted).await?
        } else {
            self.pool(name).await?
        };
        let limits = self.limits(name)?;
        match pool {
            Pool::MySql(p) => {
                let mut c = p.acquire().await.map_err(unavailable(name))?;
                if !ro {
                    sqlx::raw_sql(AssertSqlSafe(limit.mariadb()))
                        .execute(&mut *c)
                        .await
                        .map_err(db_error(name))?;
                    let cancel = Cancel::mysql(&mut c, p, name).await?;
                    let q = bind!(sqlx::query(AssertSqlSafe(sql.to_string())), params);
                    let r = collect(q.fetch(&mut *c), &limits, mysql_value).await;
                    cancel.done();
                    return r;
                }
                // An XA transaction refuses COMMIT and every statement that
                // commits implicitly (DDL, LOCK TABLES, FLUSH…), so the
                // statement cannot leave the read-only transaction; the
                // session default covers anything a procedure starts.
                let xid = format!("drhost-ro-{}", crate::clock::new_run_id());
                let begin = format!(
                    "{}; SET SESSION TRANSACTION READ ONLY; XA START '{xid}'",
                    limit.mariadb()
                );
                sqlx::raw_sql(AssertSqlSafe(begin))
                    .execute(&mut *c)
                    .await
                    .map_err(db_error(name))?;
                let cancel = Cancel::mysql(&mut c, p, name).await?;
                let q = bind!(sqlx::query(AssertSqlSafe(sql.to_string())), params);
                let r = collect(q.fetch(&mut *c), &limits, mysql_value).await;
                cancel.done();
                let end = format!("XA END '{xid}'; XA ROLLBACK '{xid}'");
                let _ = sqlx::raw_sql(AssertSqlSafe(end)).execute(&mut *c).await;
                // Session state outlives a transaction (GET_LOCK, user
                // variables, SET SESSION): a read-only query's connection
                // is never used again.
                let _ = c.close().await;
                r
            }
            Pool::Pg(p) => {
                let mut c = p.acquire().await.map_err(unavailable(name))?;
                sqlx::raw_sql(AssertSqlSafe(limit.postgres()))
                    .execute(&mut *c)
                    .await
                    .map_err(db_error(name))?;
                if !ro {
                    let cancel = Cancel::postgres(&mut c, p, name).await?;
                    let q = bind!(sqlx::query(AssertSqlSafe(sql.to_string())), params);
                    let r = collect(q.fetch(&mut *c), &limits, pg_value).await;
                    cancel.done();
                    return r;
                }
                // One prepared statement cannot both end this transaction and
                // write, and inside it PostgreSQL refuses every write.
                sqlx::raw_sql("BEGIN READ ONLY")
                    .execute(&mut *c)
                    .await
                    .map_err(db_error(name))?;
                let cancel = Cancel::postgres(&mut c, p, name).await?;
                let q = bind!(sqlx::query(AssertSqlSafe(sql.to_string())), params);
                let r = collect(q.fetch(&mut *c), &limits, pg_value).await;
                cancel.done();
                let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *c).await;
                // Session state outlives a transaction (advisory locks,
                // settings): a read-only query's connection is never reused.
                let _ = c.close().await;
                r
            }
            Pool::Sqlite(p) => {
                let q = bind!(sqlx::query(AssertSqlSafe(sql.to_string())), params);
                collect(q.fetch(p), &limits, sqlite_value).await
            }
        }
    }

    /// Runs one statement that may write; `time` as for [`DbCap::query`].
    pub async fn execute(
        &self,
        name: &str,
        sql: &str,
        params: &[Value],
        time: Duration,
    ) -> Result<u64, CapError> {
        within(name, time, async {
            let limit = StatementLimit::new(time)?;
            let _sqlite_deadline = self.sqlite_deadline(name, time);
            let limits = self.limits(name)?;
            match self.pool(name).await? {
                Pool::MySql(p) => {
                    let mut c = p.acquire().await.map_err(unavailable(name))?;
                    sqlx::raw_sql(AssertSqlSafe(limit.mariadb()))
                        .execute(&mut *c)
                        .await
                        .map_err(db_error(name))?;
                    let cancel = Cancel::mysql(&mut c, p, name).await?;
                    let q = bind!(sqlx::query(AssertSqlSafe(sql.to_string())), params);
                    let r = q_exec!(q, &mut *c, limits);
                    cancel.done();
                    r
                }
                Pool::Pg(p) => {
                    let mut c = p.acquire().await.map_err(unavailable(name))?;
                    sqlx::raw_sql(AssertSqlSafe(limit.postgres()))
                        .execute(&mut *c)
                        .await
                        .map_err(db_error(name))?;
                    let cancel = Cancel::postgres(&mut c, p, name).await?;
                    let q = bind!(sqlx::query(AssertSqlSafe(sql.to_string())), params);
                    let r = q_exec!(q, &mut *c, limits);
                    cancel.done();
                    r
                }
                Pool::Sqlite(p) => {
                    let q = bind!(sqlx::query(AssertSqlSafe(sql.to_string())), params);
                    q_exec!(q, p, limits)
                }
            }
        })
        .await
    }

    /// Arms the SQLite progress handler of `name` for `time`; disarmed when
    /// the guard drops.
    fn sqlite_deadline(&self, name: &str, time: Duration) -> Option<Disarm> {
        let conn = self.conns.get(name)?;
        let ms = u64::try_from(time.as_millis()).unwrap_or(u64::MAX);
        conn.deadline
            .store(clock_ms().saturating_add(ms), Ordering::SeqCst);
        Some(Disarm(Arc::clone(&conn.deadline)))
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
    ($q:expr, $pool:expr, $limits:expr) => {
        $q.execute($pool)
            .await
            .map(|r| r.rows_affected())
            .map_err(|e| $limits.error(e))
    };
}
use q_exec;

/// The statement time limit both servers enforce themselves, from what is
/// left of the step's budget.
struct StatementLimit {
    ms: u64,
}

impl StatementLimit {
    fn new(time: Duration) -> Result<Self, CapError> {
        let ms = u64::try_from(time.as_millis()).unwrap_or(u64::MAX);
        if ms == 0 {
            return Err(CapError::Unavailable(
                "the step's budget is spent: no time left for a query".into(),
            ));
        }
        Ok(StatementLimit { ms })
    }

    /// MariaDB: seconds, as a decimal (0 would mean no limit).
    fn mariadb(&self) -> String {
        format!(
            "SET SESSION max_statement_time = {}.{:03}",
            self.ms / 1000,
            self.ms % 1000
        )
    }

    /// PostgreSQL: milliseconds, capped at what the setting holds.
    fn postgres(&self) -> String {
        format!("SET statement_timeout = {}", self.ms.min(i32::MAX as u64))
    }
}

/// Stops a statement on the server when the call is dropped before it ends
/// (the step cut at its budget, or [`within`] giving up): a statement can
/// ignore the time limit it was given (MariaDB `SET STATEMENT
/// max_statement_time = 0 FOR …`; PostgreSQL work done at COMMIT, such as a
/// deferred trigger), and a server does not notice a closed socket while it
/// computes. The cancel runs from another connection of the same account.
struct Cancel {
    how: Option<Box<dyn FnOnce() + Send>>,
}

impl Cancel {
    async fn mysql(
        c: &mut sqlx::MySqlConnection,
        pool: &MySqlPool,
        name: &str,
    ) -> Result<Self, CapError> {
        let id: u64 = sqlx::query_scalar("SELECT CONNECTION_ID()")
            .fetch_one(&mut *c)
            .await
            .map_err(db_error(name))?;
        let pool = pool.clone();
        Ok(Cancel::with(async move {
            let mut k = pool.acquire().await?;
            sqlx::raw_sql(AssertSqlSafe(format!("KILL QUERY {id}")))
                .execute(&mut *k)
                .await?;
            k.close().await
        }))
    }

    async fn postgres(
        c: &mut sqlx::PgConnection,
        pool: &PgPool,
        name: &str,
    ) -> Result<Self, CapError> {
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut *c)
            .await
            .map_err(db_error(name))?;
        let pool = pool.clone();
        Ok(Cancel::with(async move {
            let mut k = pool.acquire().await?;
            sqlx::query("SELECT pg_cancel_backend($1)")
                .bind(pid)
                .execute(&mut *k)
                .await?;
            k.close().await
        }))
    }

    fn with(
        cancel: impl std::future::Future<Output = Result<(), sqlx::Error>> + Send + 'static,
    ) -> Self {
        Cancel {
            how: Some(Box::new(move || {
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move {
                        if let Err(e) = cancel.await {
                            tracing::warn!("cancelling a statement cut at the budget: {e}");
                        }
                    });
                }
            })),
        }
    }

    /// The statement ended: nothing to cancel.
    fn done(mut self) {
        self.how = None;
    }
}

impl Drop for Cancel {
    fn drop(&mut self) {
        if let Some(cancel) = self.how.take() {
            cancel();
        }
    }
}

/// Clears a SQLite deadline when the statement is over.
struct Disarm(Arc<AtomicU64>);

impl Drop for Disarm {
    fn drop(&mut self) {
        self.0.store(0, Ordering::SeqCst);
    }
}

/// Waits for a database call no longer than `time` (plus a moment for the
/// server's own cancellation to arrive): a server that stops answering
/// cannot hold the step.
async fn within<T>(
    name: &str,
    time: Duration,
    call: impl std::future::Future<Output = Result<T, CapError>>,
) -> Result<T, CapError> {
    match tokio::time::timeout(time + Duration::from_millis(100), call).await {
        Ok(r) => r,
        Err(_) => Err(CapError::Unavailable(format!(
            "{name:?}: no answer within the step's budget"
        ))),
    }
}

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
            // The engine stopped the statement at the step's budget.
            if lower.contains("max_statement_time")
                || code == "57014"
                || (code == "9" && lower.contains("interrupt"))
            {
                return CapError::Unavailable(format!(
                    "{name:?}: the database stopped the statement at the step's budget ({msg})"
                ));
            }
            if code == "18" && lower.contains("too big") {
                return CapError::TooLarge(format!(
                    "{name:?}: a value would be larger than the plugin may receive ([limits] max-guest-bytes): {msg}"
                ));
            }
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
    /// The connection's relay cut count, and its value before the query.
    cuts: &'a AtomicU64,
    cuts_before: u64,
}

impl Limits<'_> {
    /// The driver's error, or, when the relay closed the connection for an
    /// oversize answer during this query, that.
    fn error(&self, e: sqlx::Error) -> CapError {
        if self.cuts.load(Ordering::SeqCst) != self.cuts_before {
            return CapError::TooLarge(format!(
                "the answer from {:?} passed {} bytes and the connection was closed ([limits] max-guest-bytes is {})",
                self.conn,
                wire_allowance(self.bytes),
                self.bytes
            ));
        }
        db_error(self.conn)(e)
    }
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
    while let Some(row) = stream.try_next().await.map_err(|e| limits.error(e))? {
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
    /// Connects to `url` and checks what the account may do. A `Reader`
    /// opens SQLite read-only and must be an account that cannot write
    /// (servers then enforce read-only by the account and per statement).
    async fn connect(&self, url: &Secret, account: Account) -> Result<Pool, String> {
        let key = if std::ptr::eq(url, &self.grant.url) {
            "url"
        } else {
            "read-url"
        };
        let url = url
            .resolve()
            .map_err(|e| format!("[db.{}] {key}: {e}", self.name))?;
        let ro = account == Account::Reader;
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
                let upstream = match opts.get_socket() {
                    Some(path) => meter::Upstream::Unix(path.clone()),
                    None => meter::Upstream::Tcp(opts.get_host().to_string(), opts.get_port()),
                };
                let relay = self.meter(upstream, meter::Protocol::Opaque, "mysql.sock")?;
                // Only the transport changes: TLS still checks the URL's host.
                let opts = opts.socket(relay.join("mysql.sock"));
                let cannot_connect = |e| self.cannot_connect(&relay, scrub(e));
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
                    .map_err(cannot_connect)?;
                match account {
                    Account::Reader => check_mysql_read_only(&pool, name, key).await?,
                    Account::WriterReading => check_mysql_unprivileged(&pool, name).await?,
                    Account::Writer => {}
                }
                Pool::MySql(pool)
            }
            "postgres" | "postgresql" => {
                let opts = sqlx::postgres::PgConnectOptions::from_str(&url).map_err(scrub)?;
                let port = opts.get_port();
                // A socket directory (the `host` parameter or `socket`) holds
                // `.s.PGSQL.<port>`, as libpq names it.
                let upstream = match opts.get_socket() {
                    Some(dir) => meter::Upstream::Unix(dir.join(format!(".s.PGSQL.{port}"))),
                    None if opts.get_host().starts_with('/') => meter::Upstream::Unix(
                        Path::new(opts.get_host()).join(format!(".s.PGSQL.{port}")),
                    ),
                    None => meter::Upstream::Tcp(opts.get_host().to_string(), port),
                };
                // TLS is the relay's (it must read the message headers), with
                // the URL's sslmode and certificates; the driver speaks
                // plaintext to it on a private socket.
                let tls = match &upstream {
                    meter::Upstream::Tcp(host, _) => {
                        let files = tls::TlsFiles::from_url(&url, |v| std::env::var(v).ok());
                        tls::PgTls::new(opts.get_ssl_mode(), host, &files)
                    }
                    meter::Upstream::Unix(_) => tls::for_unix_socket(opts.get_ssl_mode()),
                }
                .map_err(|e| format!("[db.{name}]: {e}"))?;
                let relay = self.meter(
                    upstream,
                    meter::Protocol::Postgres(tls),
                    &format!(".s.PGSQL.{port}"),
                )?;
                let opts = opts.socket(&relay).ssl_mode(PgSslMode::Disable);
                let pool = PgPoolOptions::new()
                    .max_connections(2)
                    .acquire_timeout(CONNECT_TIMEOUT)
                    .connect_with(opts)
                    .await
                    .map_err(|e| self.cannot_connect(&relay, scrub(e)))?;
                match account {
                    Account::Reader => check_pg_read_only(&pool, name, key).await?,
                    Account::WriterReading => check_pg_unprivileged(&pool, name).await?,
                    Account::Writer => {}
                }
                Pool::Pg(pool)
            }
            "sqlite" => {
                let deadline = Arc::clone(&self.deadline);
                // A value larger than the plugin may receive is refused by
                // SQLite before it exists (1 MiB at least, for the engine's
                // own work).
                let max_value = self.max_value.max(1 << 20);
                let mut opts = SqliteConnectOptions::from_str(&url).map_err(scrub)?;
                if ro {
                    opts = opts.read_only(true).pragma("query_only", "1");
                }
                let pool = SqlitePoolOptions::new()
                    .max_connections(2)
                    .acquire_timeout(CONNECT_TIMEOUT)
                    .after_connect(move |c, _| {
                        let deadline = Arc::clone(&deadline);
                        Box::pin(async move {
                            let mut h = c.lock_handle().await?;
                            sqlite_guard::install(h.as_raw_handle(), ro, max_value);
                            // Every 1000 virtual-machine steps: past the
                            // step's deadline, SQLite stops the statement.
                            h.set_progress_handler(1000, move || {
                                let d = deadline.load(Ordering::SeqCst);
                                d == 0 || clock_ms() < d
                            });
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
        tracing::debug!("connected db.{name} ({key})");
        Ok(pool)
    }
}

impl Conn {
    /// Starts a relay to `upstream` and keeps it with the connection; the
    /// directory its socket is in.
    fn meter(
        &self,
        upstream: meter::Upstream,
        protocol: meter::Protocol,
        socket: &str,
    ) -> Result<PathBuf, String> {
        let m = meter::Meter::start(
            upstream,
            protocol,
            socket,
            wire_allowance(self.max_value),
            Arc::clone(&self.cuts),
        )
        .map_err(|e| format!("[db.{}]: cannot start the connection relay: {e}", self.name))?;
        let dir = m.dir().to_path_buf();
        if let Ok(mut meters) = self.meters.lock() {
            meters.push(m);
        }
        Ok(dir)
    }

    /// The driver only sees the relay close when the server cannot be
    /// reached; the relay knows why.
    fn cannot_connect(&self, relay: &Path, driver: String) -> String {
        let why = self
            .meters
            .lock()
            .ok()
            .and_then(|m| m.iter().find(|m| m.dir() == relay)?.last_error())
            .unwrap_or(driver);
        format!("[db.{}]: cannot connect: {why}", self.name)
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
async fn check_mysql_read_only(pool: &MySqlPool, name: &str, key: &str) -> Result<(), String> {
    for line in &mysql_grants(pool, name).await? {
        if let Some(problem) = mysql_grant_problem(line) {
            return Err(if key == "url" {
                format!(
                    "[db.{name}] is read-only, but its account can write ({problem}: {line}); grant it SELECT only, or make the grant read-write"
                )
            } else {
                format!(
                    "[db.{name}] read-url names an account that can write ({problem}: {line}); grant it SELECT only"
                )
            });
        }
    }
    Ok(())
}

async fn mysql_grants(pool: &MySqlPool, name: &str) -> Result<Vec<String>, String> {
    sqlx::query_scalar("SHOW GRANTS")
        .fetch_all(pool)
        .await
        .map_err(|e| format!("[db.{name}]: cannot read the account's grants: {e}"))
}

/// Refuses to read through a read-write account that holds privileges a
/// read-only transaction does not stop.
async fn check_mysql_unprivileged(pool: &MySqlPool, name: &str) -> Result<(), String> {
    for line in &mysql_grants(pool, name).await? {
        if let Some(problem) = mysql_server_privilege(line) {
            return Err(needs_read_url(name, &format!("{problem}: {line}")));
        }
    }
    Ok(())
}

fn needs_read_url(name: &str, why: &str) -> String {
    format!(
        "db.{name} is used read-only here, but its account holds server privileges a read-only transaction does not stop ({why}); add read-url to [db.{name}] naming an account with SELECT only (docs/policy.md)"
    )
}

/// Privileges that act only on data, which MariaDB's read-only XA
/// transaction refuses (or that only read).
const MYSQL_DATA_PRIVS: &[&str] = &[
    "INSERT",
    "UPDATE",
    "DELETE",
    "CREATE",
    "DROP",
    "REFERENCES",
    "INDEX",
    "ALTER",
    "CREATE TEMPORARY TABLES",
    "LOCK TABLES",
    "EXECUTE",
    "CREATE VIEW",
    "CREATE ROUTINE",
    "ALTER ROUTINE",
    "EVENT",
    "TRIGGER",
    "DELETE HISTORY",
];

/// Why one `SHOW GRANTS` line gives server privileges (files, global
/// variables, other sessions, shutdown…), if it does.
pub fn mysql_server_privilege(line: &str) -> Option<String> {
    let upper = line.to_ascii_uppercase();
    let rest = upper.strip_prefix("GRANT ")?;
    let Some(on) = rest.find(" ON ") else {
        return Some("it is granted a role, whose privileges are not checked".into());
    };
    if !rest[on + 4..].trim_start().starts_with("*.*") {
        return None;
    }
    let privs = without_column_lists(&rest[..on]);
    privs
        .split(',')
        .map(str::trim)
        .find(|p| !MYSQL_READ_PRIVS.contains(p) && !MYSQL_DATA_PRIVS.contains(p))
        .map(|p| format!("privilege {p}"))
}

/// `SELECT (a, b), INSERT` → `SELECT , INSERT`: a column list does not
/// change which privilege it is.
fn without_column_lists(privs: &str) -> String {
    let mut out = String::new();
    let mut depth = 0;
    for c in privs.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
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
    without_column_lists(&rest[..on])
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
      'lo_truncate(integer,integer)', 'lo_truncate64(integer,bigint)',
      'pg_logical_emit_message(boolean,text,text)', 'pg_logical_emit_message(boolean,text,bytea)']) AS f
    WHERE has_function_privilege(f, 'EXECUTE')) AS lo_functions,
  pg_has_role('pg_write_all_data', 'MEMBER') OR pg_has_role('pg_write_server_files', 'MEMBER')
    OR pg_has_role('pg_execute_server_program', 'MEMBER')
    OR pg_has_role('pg_signal_backend', 'MEMBER') AS write_roles
FROM pg_roles r WHERE r.rolname = current_user
"#;

/// What a read-only transaction does not stop: superusers (COPY … TO a
/// file or a program, other sessions) and the roles that grant those
/// powers one by one.
const PG_SERVER_CHECK: &str = r#"
SELECT r.rolsuper,
  pg_has_role('pg_write_server_files', 'MEMBER') AS files,
  pg_has_role('pg_execute_server_program', 'MEMBER') AS programs,
  pg_has_role('pg_signal_backend', 'MEMBER') AS signals
FROM pg_roles r WHERE r.rolname = current_user
"#;

async fn check_pg_unprivileged(pool: &PgPool, name: &str) -> Result<(), String> {
    let row = sqlx::query(PG_SERVER_CHECK)
        .fetch_one(pool)
        .await
        .map_err(|e| format!("[db.{name}]: cannot read the role's privileges: {e}"))?;
    let mut problems = Vec::new();
    for (col, what) in [
        ("rolsuper", "it is a superuser"),
        ("files", "it is a member of pg_write_server_files"),
        ("programs", "it is a member of pg_execute_server_program"),
        ("signals", "it is a member of pg_signal_backend"),
    ] {
        if row.try_get::<bool, _>(col).unwrap_or(true) {
            problems.push(what);
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(needs_read_url(name, &problems.join("; ")))
    }
}

async fn check_pg_read_only(pool: &PgPool, name: &str, key: &str) -> Result<(), String> {
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
            "is a member of pg_write_all_data, pg_write_server_files, pg_execute_server_program or pg_signal_backend",
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
        problems.push(format!(
            "can execute functions that write despite a read-only transaction (large objects, WAL messages): {f}"
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else if key == "url" {
        Err(format!(
            "[db.{name}] is read-only, but its role can write: it {}. Use a role with SELECT only (see docs/security.md), or make the grant read-write",
            problems.join("; ")
        ))
    } else {
        Err(format!(
            "[db.{name}] read-url names a role that can write: it {}. Use a role with SELECT only (see docs/security.md)",
            problems.join("; ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sqlite_itself_stops_a_statement_at_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let policy = Policy::parse(&format!(
            "[db.s]\nurl = \"sqlite://{}?mode=rwc\"\naccess = \"read-write\"\n",
            dir.path().join("a.db").display()
        ))
        .unwrap();
        let cap = DbCap::from_policy(&policy);
        let endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c";
        // No outer timeout here: only the progress handler can end it.
        for ro in [false, true] {
            let err = cap
                .query_as("s", endless, &[], ro, false, Duration::from_millis(300))
                .await
                .unwrap_err();
            assert!(
                matches!(&err, CapError::Unavailable(m) if m.contains("the database stopped the statement")),
                "{err:?}"
            );
        }
        // A value larger than the plugin may receive never exists.
        let err = cap
            .query_as(
                "s",
                "SELECT zeroblob(800000000)",
                &[],
                false,
                false,
                Duration::from_secs(5),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, CapError::TooLarge(_)), "{err:?}");
        // Disarmed afterwards: a statement with time to spare runs.
        let rows = cap
            .query_as("s", "SELECT 1", &[], false, false, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(rows.rows.len(), 1);
    }

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
    /// `max_value` caps the length of any string or blob the connection
    /// makes (`SQLITE_LIMIT_LENGTH`), so a `zeroblob(800000000)` fails in
    /// SQLite instead of being materialised in the host.
    pub fn install(db: NonNull<ffi::sqlite3>, read_only: bool, max_value: u64) {
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
            ffi::sqlite3_limit(
                db.as_ptr(),
                ffi::SQLITE_LIMIT_LENGTH,
                i32::try_from(max_value).unwrap_or(i32::MAX),
            );
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
