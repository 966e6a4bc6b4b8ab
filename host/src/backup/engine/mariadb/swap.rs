//! Swapping a restored copy into place, crash-safe.
//!
//! MariaDB moves tables between databases atomically (one `RENAME TABLE`),
//! but not their triggers: a table with triggers cannot change database, so
//! the target's triggers are dropped before the rename and the restored ones
//! created after it, with the backup's views and routines. A crash between
//! those statements would leave production without its triggers, or with
//! new tables and no triggers, and nothing would say so.
//!
//! So before its first destructive statement the swap writes a journal into
//! the server — a row in `<target>_drhost_old.__drhost_swap_journal`, the
//! database that receives the replaced tables — holding every statement
//! needed to go back (the target's triggers) and forward (the restored
//! triggers, views and routines). Whoever finds a journal next (the next
//! restore or backup of that database, [`Mariadb::finish_interrupted`])
//! asks the server whether the rename happened, then finishes the swap if it
//! did and undoes it if not. Either way the target ends entirely old or
//! entirely new, and the replaced tables are dropped only once the swap is
//! complete. The journal lives in the server, not on the drhost host, so
//! another drhost host finds it too.
//!
//! A restore holds a server lock on its target (`GET_LOCK`, [`SwapLock`])
//! from its first statement to its last. The server releases it when the
//! session ends, so a journal or staging copy found while holding the lock
//! belongs to a restore that is dead, never to one still running.
//!
//! The binary log records the swap too, and a later point-in-time restore
//! replays the target's events from it (`mariadb-binlog --database=TARGET`,
//! which selects statements by their session's default database). So every
//! statement naming databases — the journal, `DROP TRIGGER`, `RENAME
//! TABLE`, views, `DROP DATABASE` — runs on the lock's session, which has
//! no default database: a replay never sees them, and never runs them
//! against production. Only what must be written relative to the target
//! (triggers and routines, whose `SHOW CREATE` text names neither database)
//! runs on a session in the target, after a marker table is created there
//! ([`RESTORED_MARKER`]): a replay finds the marker and refuses, because
//! events after an in-place restore apply to the restored data, which no
//! replay of earlier backups can rebuild.

use super::{Mariadb, db_err, quote};
use crate::backup::engine::{EngineError, Place, Purpose, scratch_name};
use serde::{Deserialize, Serialize};
use sqlx::mysql::MySqlConnection;
use sqlx::{AssertSqlSafe, Connection};

/// The table in `<target>_drhost_old` that holds the journal.
const JOURNAL: &str = "__drhost_swap_journal";

/// Created (and dropped) in the target by every swap that replaced its
/// tables, from a session in the target, so it is in the target's events;
/// a replay runs into a staged copy that already holds it and stops there.
pub const RESTORED_MARKER: &str = "__drhost_restored";

/// A trigger as `SHOW CREATE TRIGGER` gives it: name, the `SET sql_mode`
/// it was created under, its `CREATE TRIGGER` statement.
type Trigger = (String, String, String);

/// Everything needed to finish or undo one swap, whatever the server holds
/// when it is read.
#[derive(Debug, Serialize, Deserialize)]
struct Journal {
    target: String,
    staged: String,
    /// The target's tables before the swap (they move to the old database).
    current: Vec<String>,
    /// The restored tables (they move from the staged database).
    incoming: Vec<String>,
    target_triggers: Vec<Trigger>,
    staged_triggers: Vec<Trigger>,
    /// `CREATE OR REPLACE VIEW` statements for the target.
    views: Vec<String>,
    /// Statements that put the restored routines into the target.
    routines: Vec<String>,
}

/// A restore's hold on its target database: a named server lock, held by
/// this connection, which every statement of the swap runs on.
pub struct SwapLock {
    conn: MySqlConnection,
}

impl SwapLock {
    /// Ends the session, which releases the lock at once (dropping the lock
    /// releases it too, once the server notices the connection closed).
    pub async fn release(self) {
        let _ = self.conn.close().await;
    }
}

/// What [`Mariadb::finish_interrupted`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finished {
    /// It stopped before its swap began: its staging copy is removed.
    Abandoned,
    /// The rename had happened: the restored triggers, views and routines
    /// are in place now.
    RolledForward,
    /// It had not: the target's own triggers are back.
    RolledBack,
}

impl std::fmt::Display for Finished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Finished::Abandoned => {
                "cleaned up (it stopped before its swap; its staging copy is removed)"
            }
            Finished::RolledForward => "finished (the restored tables were already in place)",
            Finished::RolledBack => "undone (the target's tables had not been replaced yet)",
        })
    }
}

impl Mariadb {
    fn old_name(&self) -> String {
        scratch_name(&self.server.database, "old", 64)
    }

    /// Takes the restore lock on the target, waiting up to `wait`; `None`
    /// when another session holds it (a restore is running).
    pub async fn lock_restores(
        &self,
        wait: std::time::Duration,
    ) -> Result<Option<SwapLock>, EngineError> {
        // No default database: what the swap runs here is never replayed
        // (see the module's comment).
        let mut conn = self.connect_to_server().await?;
        // Lock names are server-wide and at most 64 characters.
        let name = format!(
            "drhost-restore-{}",
            &crate::digest::sha256_hex(self.server.database.as_bytes())[..40]
        );
        let got: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, ?)")
            .bind(&name)
            .bind(wait.as_secs_f64())
            .fetch_one(&mut conn)
            .await
            .map_err(db_err("taking the restore lock"))?;
        Ok((got == Some(1)).then_some(SwapLock { conn }))
    }

    /// Moves the target's tables aside and the staged ones in, in one
    /// `RENAME TABLE` (atomic in MariaDB), journaled as this module says,
    /// then drops the old ones. Views and stored routines of the backup are
    /// created (or replaced) in the target.
    pub async fn swap_in(&self, staged: &Place, lock: &mut SwapLock) -> Result<(), EngineError> {
        let Place::Database(staged) = staged else {
            return Err(EngineError::Config("a MariaDB copy is a database".into()));
        };
        let target = &self.server.database;
        let old = self.old_name();
        let conn = &mut lock.conn;
        let journal = Journal {
            target: target.clone(),
            staged: staged.clone(),
            current: Self::tables(conn, target).await?,
            incoming: Self::tables(conn, staged).await?,
            target_triggers: Self::trigger_statements(conn, target).await?,
            staged_triggers: Self::trigger_statements(conn, staged).await?,
            views: Self::view_statements(conn, staged, target).await?,
            routines: Self::routine_statements(conn, staged).await?,
        };
        let body = serde_json::to_string(&journal)
            .map_err(|e| EngineError::Config(format!("writing the swap journal: {e}")))?;
        // The journal first, in the database that will receive the replaced
        // tables; nothing destructive has happened before it is committed.
        run(
            conn,
            &[
                format!("CREATE DATABASE {}", quote(&old)),
                format!(
                    "CREATE TABLE {}.{} (body LONGTEXT NOT NULL) ENGINE = InnoDB",
                    quote(&old),
                    quote(JOURNAL)
                ),
            ],
            &format!("preparing {old}"),
        )
        .await?;
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {}.{} (body) VALUES (?)",
            quote(&old),
            quote(JOURNAL)
        )))
        .bind(&body)
        .execute(&mut *conn)
        .await
        .map_err(db_err("writing the swap journal"))?;
        crate::crash::point("mariadb-swap");
        run(
            conn,
            &drop_triggers(staged, &journal.staged_triggers),
            "dropping the staged triggers",
        )
        .await?;
        run(
            conn,
            &drop_triggers(target, &journal.target_triggers),
            "dropping the target's triggers",
        )
        .await?;
        let moves = renames(&journal, &old);
        if !moves.is_empty() {
            let renamed =
                sqlx::raw_sql(AssertSqlSafe(format!("RENAME TABLE {}", moves.join(", "))))
                    .execute(&mut *conn)
                    .await;
            crate::crash::point("mariadb-swap");
            if let Err(e) = renamed {
                // Nothing moved: give the target its triggers back.
                self.roll_back(conn, &journal).await?;
                return Err(db_err(format!(
                    "swapping the restored tables into {target}"
                ))(e));
            }
        }
        self.roll_forward(conn, &journal).await
    }

    /// Finishes or undoes a restore that was interrupted (drhost killed, the
    /// server restarted) and says which; `None` when there was none. The
    /// lock proves no restore into the target is running.
    /// Refuses to touch an old database that holds tables but no journal
    /// (left by a drhost without journals): it may be the only copy of them.
    pub async fn finish_interrupted(
        &self,
        lock: &mut SwapLock,
    ) -> Result<Option<Finished>, EngineError> {
        let old = self.old_name();
        let conn = &mut lock.conn;
        let in_old: Vec<String> = sqlx::query_scalar(
            "SELECT CAST(table_name AS CHAR) FROM information_schema.tables WHERE table_schema = ?",
        )
        .bind(&old)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_err(format!("looking for {old}")))?;
        let exists: Option<String> = sqlx::query_scalar(
            "SELECT CAST(schema_name AS CHAR) FROM information_schema.schemata WHERE schema_name = ?",
        )
        .bind(&old)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_err(format!("looking for {old}")))?;
        if exists.is_none() {
            // No swap began; a staging copy left by a restore killed while
            // loading or checking it holds a whole plaintext copy: it goes.
            let staging = scratch_name(&self.server.database, &Purpose::Restore.tag(), 64);
            let staged: Option<String> = sqlx::query_scalar(
                "SELECT CAST(schema_name AS CHAR) FROM information_schema.schemata WHERE schema_name = ?",
            )
            .bind(&staging)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db_err(format!("looking for {staging}")))?;
            if staged.is_none() {
                return Ok(None);
            }
            run(
                conn,
                &[format!("DROP DATABASE {}", quote(&staging))],
                &format!("dropping {staging}"),
            )
            .await?;
            return Ok(Some(Finished::Abandoned));
        }
        let body: Option<String> = if in_old.iter().any(|t| t == JOURNAL) {
            sqlx::query_scalar(AssertSqlSafe(format!(
                "SELECT body FROM {}.{} LIMIT 1",
                quote(&old),
                quote(JOURNAL)
            )))
            .fetch_optional(&mut *conn)
            .await
            .map_err(db_err("reading the swap journal"))?
        } else {
            None
        };
        let Some(body) = body else {
            // Killed before the journal was written: nothing was touched.
            if in_old.iter().all(|t| t == JOURNAL) {
                let staging = scratch_name(&self.server.database, &Purpose::Restore.tag(), 64);
                run(
                    conn,
                    &[
                        format!("DROP DATABASE {}", quote(&old)),
                        format!("DROP DATABASE IF EXISTS {}", quote(&staging)),
                    ],
                    &format!("dropping {old}"),
                )
                .await?;
                return Ok(Some(Finished::Abandoned));
            }
            return Err(EngineError::Config(format!(
                "database {old} holds tables ({}) but no swap journal: an earlier restore into {} \
                 was interrupted and they may be the only copy of the replaced tables; \
                 move them back or drop {old} by hand",
                in_old.join(", "),
                self.server.database
            )));
        };
        let journal: Journal = serde_json::from_str(&body).map_err(|e| {
            EngineError::Config(format!("the swap journal in {old} is unreadable: {e}"))
        })?;
        // One atomic RENAME moved every table or none: where the tables are
        // says which, and anything else means someone changed the databases
        // since (then a person decides).
        let staged_now = Self::tables(&mut *conn, &journal.staged).await?;
        let target_now = Self::tables(&mut *conn, &journal.target).await?;
        let all_in = |tables: &[String], place: &[String]| tables.iter().all(|t| place.contains(t));
        let renamed = all_in(&journal.current, &in_old)
            && all_in(&journal.incoming, &target_now)
            && !journal.incoming.iter().any(|t| staged_now.contains(t));
        let not_renamed = all_in(&journal.incoming, &staged_now)
            && all_in(&journal.current, &target_now)
            && !journal.current.iter().any(|t| in_old.contains(t));
        if !renamed && !not_renamed {
            return Err(EngineError::Config(format!(
                "an interrupted restore into {} left a swap journal in {old}, but the tables are                  neither all swapped nor all in place (target: {}; staged {}: {}; {old}: {}):                  finish it by hand",
                journal.target,
                target_now.join(", "),
                journal.staged,
                staged_now.join(", "),
                in_old.join(", ")
            )));
        }
        if renamed {
            self.roll_forward(conn, &journal).await?;
            return Ok(Some(Finished::RolledForward));
        }
        self.roll_back(conn, &journal).await?;
        // Nobody is waiting for this staging copy any more.
        run(
            conn,
            &[format!(
                "DROP DATABASE IF EXISTS {}",
                quote(&journal.staged)
            )],
            &format!("dropping {}", journal.staged),
        )
        .await?;
        Ok(Some(Finished::RolledBack))
    }

    /// After the rename: the restored triggers, views and routines, then the
    /// replaced tables and the journal go (one `DROP DATABASE`), then the
    /// empty staging database. Every statement may run again.
    async fn roll_forward(
        &self,
        conn: &mut MySqlConnection,
        j: &Journal,
    ) -> Result<(), EngineError> {
        let old = self.old_name();
        let failed = format!(
            "the restored tables are in place, but recreating their triggers, views and routines failed \
             (the replaced tables are kept in database {old}; the next restore or backup of {} tries again)",
            j.target
        );
        let marker = format!("{}.{}", quote(&j.target), quote(RESTORED_MARKER));
        run(conn, &[format!("DROP TABLE IF EXISTS {marker}")], &failed).await?;
        let mut inside = vec![format!(
            "CREATE TABLE {} (restored BOOLEAN)",
            quote(RESTORED_MARKER)
        )];
        inside.extend(create_triggers(&j.staged_triggers));
        inside.extend(j.routines.iter().cloned());
        self.run_in_target(&inside, &failed).await?;
        let mut after = j.views.clone();
        after.push(format!("DROP TABLE {marker}"));
        run(conn, &after, &failed).await?;
        run(
            conn,
            &[
                format!("DROP DATABASE {}", quote(&old)),
                format!("DROP DATABASE IF EXISTS {}", quote(&j.staged)),
            ],
            "dropping the replaced tables",
        )
        .await
    }

    /// Before the rename: the target's own triggers come back; the journal
    /// goes with the (empty) old database. The staged copy is left for the
    /// caller, who discards it.
    async fn roll_back(&self, conn: &mut MySqlConnection, j: &Journal) -> Result<(), EngineError> {
        let old = self.old_name();
        self.run_in_target(
            &create_triggers(&j.target_triggers),
            "recreating the target's triggers",
        )
        .await?;
        run(
            conn,
            &[format!("DROP DATABASE {}", quote(&old))],
            &format!("dropping {old}"),
        )
        .await
    }

    /// `CREATE OR REPLACE VIEW` statements that put the views of `staged`
    /// into `target`.
    async fn view_statements(
        conn: &mut MySqlConnection,
        staged: &str,
        target: &str,
    ) -> Result<Vec<String>, EngineError> {
        let views: Vec<String> = sqlx::query_scalar(
            "SELECT CAST(table_name AS CHAR) FROM information_schema.views WHERE table_schema = ?",
        )
        .bind(staged)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_err("listing the restored views"))?;
        let mut out = Vec::new();
        for v in &views {
            let row = sqlx::raw_sql(AssertSqlSafe(format!(
                "SHOW CREATE VIEW {}.{}",
                quote(staged),
                quote(v)
            )))
            .fetch_one(&mut *conn)
            .await
            .map_err(db_err(format!("reading view {v}")))?;
            let sql: String =
                sqlx::Row::try_get(&row, 1).map_err(db_err(format!("reading view {v}")))?;
            // The stored definition names the staging database; it becomes the target.
            let sql = sql.replace(
                &format!("{}.", quote(staged)),
                &format!("{}.", quote(target)),
            );
            out.push(sql.replacen("CREATE ", "CREATE OR REPLACE ", 1));
        }
        Ok(out)
    }
}

/// `RENAME TABLE` clauses: the target's tables to `old`, the staged ones in.
fn renames(j: &Journal, old: &str) -> Vec<String> {
    let moves = |from: &str, to: &str, tables: &[String]| -> Vec<String> {
        tables
            .iter()
            .map(|t| format!("{}.{} TO {}.{}", quote(from), quote(t), quote(to), quote(t)))
            .collect()
    };
    let mut out = moves(&j.target, old, &j.current);
    out.extend(moves(&j.staged, &j.target, &j.incoming));
    out
}

fn drop_triggers(db: &str, triggers: &[Trigger]) -> Vec<String> {
    triggers
        .iter()
        .map(|(n, _, _)| format!("DROP TRIGGER IF EXISTS {}.{}", quote(db), quote(n)))
        .collect()
}

/// Each trigger dropped if present and created under its own sql_mode, so
/// the statements may run again after a crash. Unqualified: they run in the
/// target (and a replay would run them in its staged copy).
fn create_triggers(triggers: &[Trigger]) -> Vec<String> {
    let mut out = Vec::new();
    for (name, mode, sql) in triggers {
        out.push(format!("DROP TRIGGER IF EXISTS {}", quote(name)));
        out.push(mode.clone());
        out.push(sql.clone());
    }
    out.push("SET SESSION sql_mode = DEFAULT".into());
    out
}

impl Mariadb {
    /// Runs statements on a session of its own whose default database is
    /// the target (what `SHOW CREATE TRIGGER`/`PROCEDURE` gives names no
    /// database).
    async fn run_in_target(&self, statements: &[String], what: &str) -> Result<(), EngineError> {
        let mut conn = self.connect().await?;
        let ran = run(&mut conn, statements, what).await;
        let _ = conn.close().await;
        ran
    }
}

/// Runs statements one by one, with a crash point after each.
async fn run(
    conn: &mut MySqlConnection,
    statements: &[String],
    what: &str,
) -> Result<(), EngineError> {
    for sql in statements {
        sqlx::raw_sql(AssertSqlSafe(sql.clone()))
            .execute(&mut *conn)
            .await
            .map_err(db_err(what.to_string()))?;
        crate::crash::point("mariadb-swap");
    }
    Ok(())
}
