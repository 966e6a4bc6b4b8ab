//! The state store: schedules, jobs, backups, verifications, recoveries,
//! plugin runs and alerts. SQLite by default, PostgreSQL when several hosts
//! share the work. One SQL dialect serves both (sqlx's `Any` driver, `$n`
//! placeholders, BIGINT milliseconds), so every test runs on both.
//!
//! Exactly-once: each schedule has one row, and an occurrence is claimed by
//! a compare-and-set `UPDATE` on it (the previous `last_due_ms`, no run in
//! progress). Only one host's update can match, on either database. A claim
//! carries a lease that the running host renews; a host that stops renewing
//! loses the job to the next host that sees the lease expired.

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, AssertSqlSafe, Row, SqlSafeStr};
use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state store {url}: {message}")]
    Open { url: String, message: String },
    #[error("state store: {0}")]
    Query(#[from] sqlx::Error),
    #[error("state store migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

const MIGRATIONS: &[(i64, &str, &str)] =
    &[(1, "state", include_str!("../../migrations/0001_state.sql"))];

#[derive(Debug, Clone)]
pub struct ScheduleRow {
    pub name: String,
    pub since_ms: i64,
    pub last_due_ms: i64,
    pub running_due_ms: Option<i64>,
    pub owner: Option<String>,
    pub lease_until_ms: Option<i64>,
    pub attempts: i64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct JobRow {
    pub id: String,
    pub schedule: String,
    pub job: String,
    pub subject: String,
    pub due_ms: i64,
    /// running, succeeded, failed, missed, interrupted
    pub status: String,
    pub owner: Option<String>,
    pub attempts: i64,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    pub is_test: bool,
    pub detail: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BackupRow {
    pub job_id: String,
    pub source: String,
    pub kind: String,
    pub backup_id: Option<String>,
    pub ok: bool,
    pub bytes: i64,
    pub seconds: f64,
    /// The time the backup's data reaches (its recovery point).
    pub covers_ms: Option<i64>,
    pub finished_ms: i64,
    pub error: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct VerificationRow {
    pub job_id: String,
    pub source: String,
    pub backup_id: String,
    pub target: String,
    pub ok: bool,
    pub covers_ms: Option<i64>,
    /// The checklist points that failed, with their details.
    pub failed: String,
    pub finished_ms: i64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RecoveryRow {
    pub job_id: String,
    pub component: String,
    /// database, application, … (the scenario's component kind).
    pub component_kind: String,
    /// drill or restore-test
    pub test: String,
    pub ok: bool,
    pub seconds: Option<f64>,
    pub rto_s: Option<i64>,
    pub rpo_achieved_s: Option<f64>,
    pub rpo_s: Option<i64>,
    pub finished_ms: i64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PluginRunRow {
    pub job_id: String,
    pub run_id: String,
    pub scenario: String,
    pub outcome: String,
    pub calls: i64,
    pub denied: i64,
    pub overruns: i64,
    pub audit_log: String,
    pub finished_ms: i64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct AlertRow {
    pub condition: String,
    pub firing: bool,
    pub since_ms: i64,
    pub last_sent_ms: i64,
    pub message: String,
}

/// A lock on something being recovered. PostgreSQL: a session advisory lock
/// on a connection of its own, released when the guard is released or the
/// connection (or the whole host) dies. SQLite: one host, an in-process set.
pub struct RecoveryLock {
    key: String,
    inner: LockInner,
}

enum LockInner {
    Postgres(sqlx::AnyConnection),
    Local(Arc<Mutex<HashSet<String>>>),
}

impl RecoveryLock {
    pub async fn release(self) {
        match self.inner {
            LockInner::Postgres(conn) => {
                // Closing the session releases its advisory locks.
                if let Err(e) = sqlx::Connection::close(conn).await {
                    tracing::warn!("releasing lock {}: {e}", self.key);
                }
            }
            LockInner::Local(set) => {
                if let Ok(mut s) = set.lock() {
                    s.remove(&self.key);
                }
            }
        }
    }
}

#[derive(Clone)]
pub struct StateStore {
    pool: AnyPool,
    backend: Backend,
    url: String,
    local_locks: Arc<Mutex<HashSet<String>>>,
}

fn flag(b: bool) -> i64 {
    i64::from(b)
}

impl StateStore {
    /// Opens (creating a SQLite file if needed) and migrates.
    pub async fn open(url: &str) -> Result<Self, StateError> {
        sqlx::any::install_default_drivers();
        let open_err = |message: String| StateError::Open {
            url: redact(url),
            message,
        };
        let (backend, connect) = if let Some(path) = url.strip_prefix("sqlite:") {
            let path = path.trim_start_matches("//");
            if let Some(dir) = Path::new(path).parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
            }
            (Backend::Sqlite, format!("sqlite://{path}?mode=rwc"))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_string())
        } else {
            return Err(open_err(
                "expected sqlite:path/to/state.db or postgres://…".into(),
            ));
        };
        let pool = AnyPoolOptions::new()
            // SQLite takes one writer at a time anyway; one connection
            // avoids "database is locked" between our own tasks.
            .max_connections(if backend == Backend::Sqlite { 1 } else { 8 })
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect(&connect)
            .await
            .map_err(|e| open_err(e.to_string()))?;
        if backend == Backend::Sqlite {
            // Readers (`drhost report`, a scrape) do not wait for the writer.
            // In WAL mode NORMAL syncs at checkpoints, not at every commit:
            // a power cut may lose the last claims (an occurrence then runs
            // again), never corrupt the file.
            sqlx::raw_sql("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL")
                .execute(&pool)
                .await
                .map_err(|e| open_err(e.to_string()))?;
        }
        let migrations = MIGRATIONS
            .iter()
            .map(|(v, d, sql)| {
                Migration::new(
                    *v,
                    (*d).into(),
                    MigrationType::Simple,
                    AssertSqlSafe(*sql).into_sql_str(),
                    false,
                )
            })
            .collect();
        let migrator = Migrator::with_migrations(migrations);
        migrator.run(&pool).await?;
        Ok(StateStore {
            pool,
            backend,
            url: redact(url),
            local_locks: Arc::default(),
        })
    }

    /// The configured store, or `sqlite:<state_dir>/state.db`.
    pub async fn for_config(
        config: &crate::backup::config::Config,
        state_dir: &Path,
    ) -> Result<Self, StateError> {
        let url = match &config.state {
            Some(secret) => secret.resolve().map_err(|message| StateError::Open {
                url: secret.describe(),
                message,
            })?,
            None => format!("sqlite:{}", state_dir.join("state.db").display()),
        };
        StateStore::open(&url).await
    }

    /// The URL without its password.
    pub fn describe(&self) -> &str {
        &self.url
    }

    pub async fn ping(&self) -> Result<(), StateError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    // ---- schedules: claims and leases ----

    /// The schedule's row, created on first sight with `now` as its start:
    /// a new schedule does not run occurrences from before it existed.
    pub async fn ensure_schedule(
        &self,
        name: &str,
        now_ms: i64,
    ) -> Result<ScheduleRow, StateError> {
        // A read first: the insert (a write) is needed once per schedule.
        if let Some(row) = self.find_schedule(name).await? {
            return Ok(row);
        }
        sqlx::query(
            "INSERT INTO schedules (name, since_ms, last_due_ms) VALUES ($1, $2, $2) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        self.schedule(name).await
    }

    pub async fn schedule(&self, name: &str) -> Result<ScheduleRow, StateError> {
        self.find_schedule(name)
            .await?
            .ok_or(StateError::Query(sqlx::Error::RowNotFound))
    }

    async fn find_schedule(&self, name: &str) -> Result<Option<ScheduleRow>, StateError> {
        let row = sqlx::query(
            "SELECT name, since_ms, last_due_ms, running_due_ms, owner, lease_until_ms, attempts \
             FROM schedules WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        Ok(Some(ScheduleRow {
            name: row.try_get(0)?,
            since_ms: row.try_get(1)?,
            last_due_ms: row.try_get(2)?,
            running_due_ms: row.try_get(3)?,
            owner: row.try_get(4)?,
            lease_until_ms: row.try_get(5)?,
            attempts: row.try_get(6)?,
        }))
    }

    /// Claims occurrence `due` if nobody has claimed anything after
    /// `expected_last_due` and no run is in progress. `run` = false records
    /// the claim without running (a missed occurrence under catch-up "none").
    pub async fn claim(
        &self,
        name: &str,
        expected_last_due: i64,
        due: i64,
        run: bool,
        owner: &str,
        lease_until: i64,
    ) -> Result<bool, StateError> {
        let q = if run {
            sqlx::query(
                "UPDATE schedules SET last_due_ms = $1, running_due_ms = $1, owner = $2, \
                 lease_until_ms = $3, attempts = 1 \
                 WHERE name = $4 AND last_due_ms = $5 AND running_due_ms IS NULL",
            )
            .bind(due)
            .bind(owner)
            .bind(lease_until)
        } else {
            sqlx::query(
                "UPDATE schedules SET last_due_ms = $1, owner = NULL, lease_until_ms = NULL \
                 WHERE name = $2 AND last_due_ms = $3 AND running_due_ms IS NULL",
            )
            .bind(due)
        };
        let done = q
            .bind(name)
            .bind(expected_last_due)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Takes over a run whose lease expired (its host died or hung). The
    /// previous owner and lease must be unchanged, so only one host wins.
    pub async fn take_over(
        &self,
        row: &ScheduleRow,
        owner: &str,
        lease_until: i64,
    ) -> Result<bool, StateError> {
        let (Some(due), Some(old_lease)) = (row.running_due_ms, row.lease_until_ms) else {
            return Ok(false);
        };
        let done = sqlx::query(
            "UPDATE schedules SET owner = $1, lease_until_ms = $2, attempts = attempts + 1 \
             WHERE name = $3 AND running_due_ms = $4 AND lease_until_ms = $5",
        )
        .bind(owner)
        .bind(lease_until)
        .bind(&row.name)
        .bind(due)
        .bind(old_lease)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Extends our lease; false when it is no longer ours.
    pub async fn renew(
        &self,
        name: &str,
        due: i64,
        owner: &str,
        lease_until: i64,
    ) -> Result<bool, StateError> {
        let done = sqlx::query(
            "UPDATE schedules SET lease_until_ms = $1 \
             WHERE name = $2 AND running_due_ms = $3 AND owner = $4",
        )
        .bind(lease_until)
        .bind(name)
        .bind(due)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Ends our run of `due`; false when it was no longer ours.
    pub async fn release(&self, name: &str, due: i64, owner: &str) -> Result<bool, StateError> {
        let done = sqlx::query(
            "UPDATE schedules SET running_due_ms = NULL, owner = NULL, lease_until_ms = NULL \
             WHERE name = $1 AND running_due_ms = $2 AND owner = $3",
        )
        .bind(name)
        .bind(due)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    // ---- jobs ----

    /// Records a job as started (or taken over: the same row, one more attempt).
    pub async fn job_started(&self, j: &JobRow) -> Result<(), StateError> {
        sqlx::query(
            "INSERT INTO jobs (id, schedule, job, subject, due_ms, status, owner, attempts, \
             started_ms, finished_ms, is_test, detail) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
             ON CONFLICT (id) DO UPDATE SET status = $6, owner = $7, attempts = $8, \
             started_ms = $9, finished_ms = $10, detail = $12",
        )
        .bind(&j.id)
        .bind(&j.schedule)
        .bind(&j.job)
        .bind(&j.subject)
        .bind(j.due_ms)
        .bind(&j.status)
        .bind(&j.owner)
        .bind(j.attempts)
        .bind(j.started_ms)
        .bind(j.finished_ms)
        .bind(flag(j.is_test))
        .bind(&j.detail)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn job_finished(
        &self,
        id: &str,
        status: &str,
        finished_ms: i64,
        detail: &str,
    ) -> Result<(), StateError> {
        sqlx::query("UPDATE jobs SET status = $1, finished_ms = $2, detail = $3 WHERE id = $4")
            .bind(status)
            .bind(finished_ms)
            .bind(detail)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn jobs_since(&self, since_ms: i64) -> Result<Vec<JobRow>, StateError> {
        self.since(since_ms).await
    }

    pub async fn job(&self, id: &str) -> Result<Option<JobRow>, StateError> {
        let sql = format!("SELECT {} FROM jobs WHERE id = $1", JobRow::COLUMNS);
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(JobRow::read).transpose()
    }

    /// The newest successful run of a schedule.
    pub async fn last_success(&self, schedule: &str) -> Result<Option<i64>, StateError> {
        let row = sqlx::query(
            "SELECT MAX(finished_ms) FROM jobs WHERE schedule = $1 AND status = 'succeeded'",
        )
        .bind(schedule)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get::<Option<i64>, _>(0)?)
    }

    // ---- results ----

    pub async fn record_backup(&self, b: &BackupRow) -> Result<(), StateError> {
        sqlx::query(
            "INSERT INTO backups (job_id, source, kind, backup_id, ok, bytes, seconds, covers_ms, \
             finished_ms, error) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (job_id, source) DO UPDATE SET backup_id = $4, ok = $5, bytes = $6, \
             seconds = $7, covers_ms = $8, finished_ms = $9, error = $10",
        )
        .bind(&b.job_id)
        .bind(&b.source)
        .bind(&b.kind)
        .bind(&b.backup_id)
        .bind(flag(b.ok))
        .bind(b.bytes)
        .bind(b.seconds)
        .bind(b.covers_ms)
        .bind(b.finished_ms)
        .bind(&b.error)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn backups_since(&self, since_ms: i64) -> Result<Vec<BackupRow>, StateError> {
        self.since(since_ms).await
    }

    pub async fn record_verification(&self, v: &VerificationRow) -> Result<(), StateError> {
        sqlx::query(
            "INSERT INTO verifications (job_id, source, backup_id, target, ok, covers_ms, failed, \
             finished_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (job_id, backup_id, target) DO UPDATE SET ok = $5, covers_ms = $6, \
             failed = $7, finished_ms = $8",
        )
        .bind(&v.job_id)
        .bind(&v.source)
        .bind(&v.backup_id)
        .bind(&v.target)
        .bind(flag(v.ok))
        .bind(v.covers_ms)
        .bind(&v.failed)
        .bind(v.finished_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn verifications_since(
        &self,
        since_ms: i64,
    ) -> Result<Vec<VerificationRow>, StateError> {
        self.since(since_ms).await
    }

    /// The newest backup of `source` that passed verification: its recovery
    /// point (`covers_ms`).
    pub async fn newest_verified(&self, source: &str) -> Result<Option<i64>, StateError> {
        let row =
            sqlx::query("SELECT MAX(covers_ms) FROM verifications WHERE source = $1 AND ok = 1")
                .bind(source)
                .fetch_one(&self.pool)
                .await?;
        Ok(row.try_get::<Option<i64>, _>(0)?)
    }

    pub async fn record_recovery(&self, r: &RecoveryRow) -> Result<(), StateError> {
        sqlx::query(
            "INSERT INTO recoveries (job_id, component, component_kind, test, ok, seconds, rto_s, \
             rpo_achieved_s, rpo_s, finished_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (job_id, component) DO UPDATE SET ok = $5, seconds = $6, \
             rpo_achieved_s = $8, finished_ms = $10",
        )
        .bind(&r.job_id)
        .bind(&r.component)
        .bind(&r.component_kind)
        .bind(&r.test)
        .bind(flag(r.ok))
        .bind(r.seconds)
        .bind(r.rto_s)
        .bind(r.rpo_achieved_s)
        .bind(r.rpo_s)
        .bind(r.finished_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn recoveries_since(&self, since_ms: i64) -> Result<Vec<RecoveryRow>, StateError> {
        self.since(since_ms).await
    }

    pub async fn record_plugin_run(&self, r: &PluginRunRow) -> Result<(), StateError> {
        sqlx::query(
            "INSERT INTO plugin_runs (job_id, run_id, scenario, outcome, calls, denied, overruns, \
             audit_log, finished_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (job_id) DO UPDATE SET run_id = $2, outcome = $4, calls = $5, \
             denied = $6, overruns = $7, audit_log = $8, finished_ms = $9",
        )
        .bind(&r.job_id)
        .bind(&r.run_id)
        .bind(&r.scenario)
        .bind(&r.outcome)
        .bind(r.calls)
        .bind(r.denied)
        .bind(r.overruns)
        .bind(&r.audit_log)
        .bind(r.finished_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn plugin_runs_since(&self, since_ms: i64) -> Result<Vec<PluginRunRow>, StateError> {
        self.since(since_ms).await
    }

    /// Every record of one kind from `since_ms` on, oldest first.
    async fn since<T: Record>(&self, since_ms: i64) -> Result<Vec<T>, StateError> {
        let sql = format!(
            "SELECT {cols} FROM {table} WHERE {time} >= $1 ORDER BY {time}",
            cols = T::COLUMNS,
            table = T::TABLE,
            time = T::TIME
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(since_ms)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(T::read).collect()
    }

    // ---- alerts ----

    pub async fn alerts(&self) -> Result<Vec<AlertRow>, StateError> {
        let sql = format!(
            "SELECT {} FROM alerts ORDER BY condition",
            AlertRow::COLUMNS
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(AlertRow::read).collect()
    }

    /// Moves a condition to `firing` at `now`, announcing it (returns true)
    /// only if this host is the one that moved it: a new condition, a cleared
    /// one firing again, or one whose last announcement is older than
    /// `repeat_ms`. Compare-and-set on the previous state, so several hosts
    /// evaluating the same condition announce it once.
    pub async fn alert_transition(
        &self,
        condition: &str,
        firing: bool,
        message: &str,
        now_ms: i64,
        repeat_ms: i64,
    ) -> Result<Option<AlertRow>, StateError> {
        let sql = format!(
            "SELECT {} FROM alerts WHERE condition = $1",
            AlertRow::COLUMNS
        );
        let current = sqlx::query(AssertSqlSafe(sql))
            .bind(condition)
            .fetch_optional(&self.pool)
            .await?;
        let Some(r) = current.as_ref().map(AlertRow::read).transpose()? else {
            if !firing {
                return Ok(None);
            }
            let done = sqlx::query(
                "INSERT INTO alerts (condition, firing, since_ms, last_sent_ms, message) \
                 VALUES ($1, 1, $2, $2, $3) ON CONFLICT (condition) DO NOTHING",
            )
            .bind(condition)
            .bind(now_ms)
            .bind(message)
            .execute(&self.pool)
            .await?;
            return Ok((done.rows_affected() == 1).then(|| AlertRow {
                condition: condition.into(),
                firing: true,
                since_ms: now_ms,
                last_sent_ms: now_ms,
                message: message.into(),
            }));
        };
        let (was_firing, since, last_sent) = (r.firing, r.since_ms, r.last_sent_ms);
        let announce = match (was_firing, firing) {
            (false, false) => false,
            (false, true) | (true, false) => true,
            (true, true) => now_ms - last_sent >= repeat_ms,
        };
        if !announce {
            return Ok(None);
        }
        let new_since = if was_firing && firing { since } else { now_ms };
        let done = sqlx::query(
            "UPDATE alerts SET firing = $1, since_ms = $2, last_sent_ms = $3, message = $4 \
             WHERE condition = $5 AND firing = $6 AND last_sent_ms = $7",
        )
        .bind(flag(firing))
        .bind(new_since)
        .bind(now_ms)
        .bind(message)
        .bind(condition)
        .bind(flag(was_firing))
        .bind(last_sent)
        .execute(&self.pool)
        .await?;
        Ok((done.rows_affected() == 1).then(|| AlertRow {
            condition: condition.into(),
            firing,
            since_ms: if firing { new_since } else { since },
            last_sent_ms: now_ms,
            message: message.into(),
        }))
    }

    // ---- recovery locks ----

    /// Tries to lock `key` (e.g. `component:shop-db`) for a recovery;
    /// `None` when another recovery holds it.
    pub async fn try_lock(&self, key: &str) -> Result<Option<RecoveryLock>, StateError> {
        match self.backend {
            Backend::Postgres => {
                let mut conn = self.pool.acquire().await?.detach();
                let got: bool = sqlx::query("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
                    .bind(key)
                    .fetch_one(&mut conn)
                    .await?
                    .try_get(0)?;
                if got {
                    Ok(Some(RecoveryLock {
                        key: key.into(),
                        inner: LockInner::Postgres(conn),
                    }))
                } else {
                    let _ = sqlx::Connection::close(conn).await;
                    Ok(None)
                }
            }
            Backend::Sqlite => {
                let mut set = self
                    .local_locks
                    .lock()
                    .map_err(|_| sqlx::Error::Protocol("lock table poisoned".into()))?;
                if !set.insert(key.to_string()) {
                    return Ok(None);
                }
                Ok(Some(RecoveryLock {
                    key: key.into(),
                    inner: LockInner::Local(self.local_locks.clone()),
                }))
            }
        }
    }
}

/// A table's rows as a struct: the columns in the order `read` takes them.
trait Record: Sized {
    const TABLE: &'static str;
    const COLUMNS: &'static str;
    /// The time column `since` filters and orders on.
    const TIME: &'static str;
    fn read(r: &AnyRow) -> Result<Self, StateError>;
}

fn flag_of(r: &AnyRow, i: usize) -> Result<bool, StateError> {
    Ok(r.try_get::<i64, _>(i)? != 0)
}

impl Record for JobRow {
    const TABLE: &'static str = "jobs";
    const COLUMNS: &'static str = "id, schedule, job, subject, due_ms, status, owner, attempts, \
         started_ms, finished_ms, is_test, detail";
    const TIME: &'static str = "due_ms";
    fn read(r: &AnyRow) -> Result<Self, StateError> {
        Ok(JobRow {
            id: r.try_get(0)?,
            schedule: r.try_get(1)?,
            job: r.try_get(2)?,
            subject: r.try_get(3)?,
            due_ms: r.try_get(4)?,
            status: r.try_get(5)?,
            owner: r.try_get(6)?,
            attempts: r.try_get(7)?,
            started_ms: r.try_get(8)?,
            finished_ms: r.try_get(9)?,
            is_test: flag_of(r, 10)?,
            detail: r.try_get(11)?,
        })
    }
}

impl Record for BackupRow {
    const TABLE: &'static str = "backups";
    const COLUMNS: &'static str =
        "job_id, source, kind, backup_id, ok, bytes, seconds, covers_ms, finished_ms, error";
    const TIME: &'static str = "finished_ms";
    fn read(r: &AnyRow) -> Result<Self, StateError> {
        Ok(BackupRow {
            job_id: r.try_get(0)?,
            source: r.try_get(1)?,
            kind: r.try_get(2)?,
            backup_id: r.try_get(3)?,
            ok: flag_of(r, 4)?,
            bytes: r.try_get(5)?,
            seconds: r.try_get(6)?,
            covers_ms: r.try_get(7)?,
            finished_ms: r.try_get(8)?,
            error: r.try_get(9)?,
        })
    }
}

impl Record for VerificationRow {
    const TABLE: &'static str = "verifications";
    const COLUMNS: &'static str =
        "job_id, source, backup_id, target, ok, covers_ms, failed, finished_ms";
    const TIME: &'static str = "finished_ms";
    fn read(r: &AnyRow) -> Result<Self, StateError> {
        Ok(VerificationRow {
            job_id: r.try_get(0)?,
            source: r.try_get(1)?,
            backup_id: r.try_get(2)?,
            target: r.try_get(3)?,
            ok: flag_of(r, 4)?,
            covers_ms: r.try_get(5)?,
            failed: r.try_get(6)?,
            finished_ms: r.try_get(7)?,
        })
    }
}

impl Record for RecoveryRow {
    const TABLE: &'static str = "recoveries";
    const COLUMNS: &'static str = "job_id, component, component_kind, test, ok, seconds, rto_s, \
         rpo_achieved_s, rpo_s, finished_ms";
    const TIME: &'static str = "finished_ms";
    fn read(r: &AnyRow) -> Result<Self, StateError> {
        Ok(RecoveryRow {
            job_id: r.try_get(0)?,
            component: r.try_get(1)?,
            component_kind: r.try_get(2)?,
            test: r.try_get(3)?,
            ok: flag_of(r, 4)?,
            seconds: r.try_get(5)?,
            rto_s: r.try_get(6)?,
            rpo_achieved_s: r.try_get(7)?,
            rpo_s: r.try_get(8)?,
            finished_ms: r.try_get(9)?,
        })
    }
}

impl Record for PluginRunRow {
    const TABLE: &'static str = "plugin_runs";
    const COLUMNS: &'static str =
        "job_id, run_id, scenario, outcome, calls, denied, overruns, audit_log, finished_ms";
    const TIME: &'static str = "finished_ms";
    fn read(r: &AnyRow) -> Result<Self, StateError> {
        Ok(PluginRunRow {
            job_id: r.try_get(0)?,
            run_id: r.try_get(1)?,
            scenario: r.try_get(2)?,
            outcome: r.try_get(3)?,
            calls: r.try_get(4)?,
            denied: r.try_get(5)?,
            overruns: r.try_get(6)?,
            audit_log: r.try_get(7)?,
            finished_ms: r.try_get(8)?,
        })
    }
}

impl Record for AlertRow {
    const TABLE: &'static str = "alerts";
    const COLUMNS: &'static str = "condition, firing, since_ms, last_sent_ms, message";
    const TIME: &'static str = "since_ms";
    fn read(r: &AnyRow) -> Result<Self, StateError> {
        Ok(AlertRow {
            condition: r.try_get(0)?,
            firing: flag_of(r, 1)?,
            since_ms: r.try_get(2)?,
            last_sent_ms: r.try_get(3)?,
            message: r.try_get(4)?,
        })
    }
}

/// A URL with its password replaced by `***`.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}
