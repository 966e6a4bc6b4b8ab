//! MariaDB/MySQL: `mariadb-dump --single-transaction` (a consistent logical
//! dump), loaded with the `mariadb` client.

use super::{
    Dump, DumpFacts, EngineError, Inspection, Load, Place, Purpose, Reading, Server, drain_stderr,
    io_err, scan, scratch_name, spawn_load, spawn_reading, tool_version, wait_tool,
};
use crate::backup::manifest::LogPosition;
use sqlx::mysql::MySqlConnection;
use sqlx::{AssertSqlSafe, Connection, Row};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

mod swap;
pub use swap::{Finished, SwapLock};

/// Where a point-in-time replay stops.
#[derive(Debug, Clone)]
pub enum Stop {
    /// Before the first event at or after this moment (UTC).
    Time(chrono::DateTime<chrono::Utc>),
    /// Before the first event at or after this position.
    Position(LogPosition),
}

/// An incremental in the making: its binary logs, fetched, and the position
/// where the next one starts.
pub struct Incremental {
    pub dump: Dump,
    pub logs: Vec<String>,
    pub next: LogPosition,
}

pub struct Mariadb {
    pub server: Server,
    /// drhost's private work directory (STATE_DIR/backup-work).
    work: PathBuf,
}

fn quote(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

fn db_err(what: impl Into<String>) -> impl FnOnce(sqlx::Error) -> EngineError {
    let what = what.into();
    move |e| EngineError::Db(format!("{what}: {e}"))
}

impl Mariadb {
    pub fn new(server: Server, work: PathBuf) -> Self {
        Mariadb { server, work }
    }

    /// A session with no default database (the URL's database left out).
    async fn connect_to_server(&self) -> Result<MySqlConnection, EngineError> {
        let mut url = self.server.url.clone();
        url.set_path("");
        MySqlConnection::connect(url.as_str())
            .await
            .map_err(db_err(format!(
                "connecting to MariaDB at {} as {}",
                self.server.host, self.server.user
            )))
    }

    async fn connect(&self) -> Result<MySqlConnection, EngineError> {
        MySqlConnection::connect(self.server.url.as_str())
            .await
            .map_err(db_err(format!(
                "connecting to MariaDB at {} as {}",
                self.server.host, self.server.user
            )))
    }

    /// A client tool with the connection's host, port and user; the password
    /// goes through MYSQL_PWD, never the command line.
    fn tool(&self, name: &str) -> Command {
        let mut cmd = Command::new(name);
        cmd.arg(format!("--host={}", self.server.host))
            .arg(format!("--user={}", self.server.user));
        if name != "mariadb-binlog" {
            cmd.arg("--default-character-set=utf8mb4");
        }
        if let Some(p) = self.server.port {
            cmd.arg("--protocol=TCP").arg(format!("--port={p}"));
        }
        match &self.server.password {
            Some(p) => cmd.env("MYSQL_PWD", p),
            None => cmd.env_remove("MYSQL_PWD"),
        };
        cmd
    }

    pub async fn dump(&self) -> Result<Dump, EngineError> {
        let mut conn = self.connect().await?;
        let row = sqlx::query("SELECT @@log_bin, VERSION()")
            .fetch_one(&mut conn)
            .await
            .map_err(db_err("reading server settings"))?;
        let log_bin: i64 = row.try_get(0).unwrap_or(0);
        let version: String = row.try_get(1).unwrap_or_default();
        let _ = conn.close().await;
        let mut cmd = self.tool("mariadb-dump");
        cmd.args([
            "--single-transaction",
            "--quick",
            "--routines",
            "--triggers",
            "--hex-blob",
        ]);
        if log_bin == 1 {
            // Records the binlog position the dump corresponds to (in a comment),
            // and starts a new binlog so incrementals begin at a file boundary.
            cmd.args(["--master-data=2", "--flush-logs"]);
        }
        cmd.arg(&self.server.database);
        let Reading {
            child,
            stdout,
            errors,
        } = spawn_reading(cmd, "mariadb-dump")?;
        let (reader, scanner) = scan::ScanReader::new(stdout);
        Ok(Dump {
            reader: Box::new(reader),
            finish: Box::new(move || {
                wait_tool("mariadb-dump", child, errors)?;
                let facts = scan::facts(&scanner);
                Ok(DumpFacts {
                    tables: facts.tables,
                    position: facts.position,
                    tools: BTreeMap::from([
                        ("mariadb-dump".to_string(), tool_version("mariadb-dump")),
                        ("server".to_string(), version),
                    ]),
                })
            }),
        })
    }

    /// Closes the current binary log (`FLUSH BINARY LOGS`) and streams every
    /// log from `from.file` up to it as a tar of the raw files, fetched from
    /// the server with `mariadb-binlog --read-from-remote-server --raw`.
    pub async fn incremental(
        &self,
        from: &LogPosition,
        work: &Path,
    ) -> Result<Incremental, EngineError> {
        let mut conn = self.connect().await?;
        sqlx::raw_sql("FLUSH BINARY LOGS")
            .execute(&mut conn)
            .await
            .map_err(db_err(
                "FLUSH BINARY LOGS (the account needs RELOAD or BINLOG ADMIN)",
            ))?;
        crate::crash::point("backup-create");
        let rows = sqlx::raw_sql("SHOW BINARY LOGS")
            .fetch_all(&mut conn)
            .await
            .map_err(db_err("SHOW BINARY LOGS"))?;
        let _ = conn.close().await;
        let names: Vec<String> = rows
            .iter()
            .filter_map(|r| r.try_get::<String, _>(0).ok())
            .collect();
        let Some(active) = names.last().cloned() else {
            return Err(EngineError::Db(
                "the server lists no binary logs: is log_bin on?".into(),
            ));
        };
        let Some(first) = names.iter().position(|n| *n == from.file) else {
            return Err(EngineError::Db(format!(
                "binary log {} (where the previous backup ends) is no longer on the server: \
                 it was purged before it was archived; take a full backup",
                from.file
            )));
        };
        let logs: Vec<String> = names[first..names.len() - 1].to_vec();
        let dir = work.join(format!("binlogs-{}", Purpose::Verify.tag()));
        std::fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let mut fetch = self.tool("mariadb-binlog");
        fetch
            .args(["--read-from-remote-server", "--raw"])
            .arg(format!("--result-file={}/", dir.display()))
            .args(&logs)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let fetched = tokio::task::spawn_blocking(move || {
            let mut child = fetch.spawn().map_err(io_err("starting mariadb-binlog"))?;
            let errors = drain_stderr(child.stderr.take());
            wait_tool("mariadb-binlog", child, errors)
        })
        .await
        .map_err(|e| EngineError::Db(format!("fetch task: {e}")))?;
        if let Err(e) = fetched {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        crate::crash::point("backup-create");
        let mut tar = Command::new("tar");
        tar.arg("-C").arg(&dir).arg("-cf").arg("-").args(&logs);
        let Reading {
            child,
            stdout,
            errors,
        } = match spawn_reading(tar, "tar") {
            Ok(r) => r,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        Ok(Incremental {
            dump: Dump {
                reader: Box::new(stdout),
                finish: Box::new(move || {
                    let r = wait_tool("tar", child, errors);
                    let _ = std::fs::remove_dir_all(&dir);
                    r?;
                    Ok(DumpFacts {
                        tables: BTreeMap::new(),
                        position: None,
                        tools: BTreeMap::from([
                            ("mariadb-binlog".to_string(), tool_version("mariadb-binlog")),
                            ("tar".to_string(), tool_version("tar")),
                        ]),
                    })
                }),
            },
            logs,
            next: LogPosition {
                file: active,
                offset: 4,
            },
        })
    }

    /// Decodes every event of the binary logs in `dir` (the incremental's
    /// "restorable" check: what a replay would read).
    pub fn decode_check(dir: &Path, logs: &[String]) -> Result<String, EngineError> {
        let mut cmd = Command::new("mariadb-binlog");
        // See `replay`: archived logs may hold GTIDs out of order.
        cmd.arg("--skip-gtid-strict-mode")
            .args(logs.iter().map(|l| dir.join(l)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(io_err("starting mariadb-binlog"))?;
        let errors = drain_stderr(child.stderr.take());
        wait_tool("mariadb-binlog", child, errors)?;
        Ok(format!(
            "mariadb-binlog decoded every event of {} log(s)",
            logs.len()
        ))
    }

    /// Unpacks an incremental's tar into `dir`.
    pub fn unpack(dir: &Path) -> Result<Load, EngineError> {
        super::unpack_tar(dir)
    }

    /// Replays the events of database `source_db` (the one backed up, not
    /// necessarily this engine's) from binary logs in `dir` into the staged
    /// database: `mariadb-binlog --database=SRC --rewrite-db=SRC->STAGED`
    /// piped into `mariadb`. `start` applies to the first file, `from_time`
    /// skips earlier events, `stop` ends it.
    #[allow(clippy::too_many_arguments)]
    pub async fn replay(
        &self,
        source_db: &str,
        staged: &Place,
        dir: &Path,
        logs: &[String],
        start: Option<u64>,
        from_time: Option<chrono::DateTime<chrono::Utc>>,
        stop: Option<&Stop>,
    ) -> Result<(), EngineError> {
        let Place::Database(db) = staged else {
            return Err(EngineError::Config("a MariaDB copy is a database".into()));
        };
        // An in-place restore in the window left swap::RESTORED_MARKER in
        // the target's events; with the marker already in the copy, its
        // replay fails there (statements naming databases run without a
        // default database, so no replay ever sees them).
        let marker = format!("{}.{}", quote(db), quote(swap::RESTORED_MARKER));
        let mut server = self.connect_to_server().await?;
        sqlx::raw_sql(AssertSqlSafe(format!(
            "CREATE TABLE IF NOT EXISTS {marker} (restored BOOLEAN)"
        )))
        .execute(&mut server)
        .await
        .map_err(db_err(format!("preparing {db} for the replay")))?;
        let mut files: Vec<PathBuf> = logs.iter().map(|l| dir.join(l)).collect();
        let mut binlog = Command::new("mariadb-binlog");
        binlog
            // A replay logs the replayed transactions with their original
            // GTIDs (lower than the server's by then), so logs archived
            // after any point-in-time restore hold GTIDs out of order: the
            // strict mode (mariadb-binlog's default) refuses to read them.
            .arg("--skip-gtid-strict-mode")
            .arg(format!("--database={source_db}"))
            .arg(format!("--rewrite-db={source_db}->{db}"))
            // --stop-datetime is read in the client's time zone.
            .env("TZ", "UTC");
        if let Some(p) = start {
            binlog.arg(format!("--start-position={p}"));
        }
        if let Some(t) = from_time {
            binlog.arg(format!(
                "--start-datetime={}",
                t.format("%Y-%m-%d %H:%M:%S")
            ));
        }
        match stop {
            Some(Stop::Time(t)) => {
                binlog.arg(format!("--stop-datetime={}", t.format("%Y-%m-%d %H:%M:%S")));
            }
            Some(Stop::Position(p)) => {
                // --stop-position applies to the last file named.
                if let Some(i) = logs.iter().position(|l| *l == p.file) {
                    files.truncate(i + 1);
                    binlog.arg(format!("--stop-position={}", p.offset));
                }
            }
            None => {}
        }
        binlog
            .args(&files)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut apply = self.tool("mariadb");
        apply
            .arg(format!("--database={db}"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // MariaDB 10.11 keeps a replaying session's thread for reuse with the
        // logs' clock stuck in it: later connections that get that thread
        // see NOW() from the logs (reproduced: docs/backup-format.md). With
        // the thread cache off while we replay, the thread ends with its session.
        static REPLAYS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let _one_at_a_time = REPLAYS.lock().await;
        let mut admin = self.connect().await?;
        // Other drhost processes too: two replays interleaving their
        // off/on would leave the cache off, or on during a replay.
        let locked: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK('drhost-replay', 3600)")
            .fetch_one(&mut admin)
            .await
            .map_err(db_err("taking the replay lock"))?;
        if locked != Some(1) {
            return Err(EngineError::Db(
                "another point-in-time replay on this server did not end within an hour".into(),
            ));
        }
        // What the cache was, kept on disk while it is off: a replay
        // killed midway leaves it off, and the next one puts it back.
        let saved = self.work.join(format!(
            "thread-cache-{}",
            &crate::digest::sha256_hex(
                format!("{}:{}", self.server.host, self.server.port.unwrap_or(3306)).as_bytes()
            )[..16]
        ));
        use std::os::unix::fs::DirBuilderExt;
        let left: Option<i64> = std::fs::read_to_string(&saved)
            .ok()
            .and_then(|t| t.trim().parse().ok());
        let cache: Option<i64> = match sqlx::query_scalar::<_, i64>(
            "SELECT CAST(@@GLOBAL.thread_cache_size AS SIGNED)",
        )
        .fetch_one(&mut admin)
        .await
        {
            Ok(n) => {
                let n = left.unwrap_or(n);
                if let Err(e) = std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&self.work)
                    .and_then(|()| std::fs::write(&saved, n.to_string()))
                {
                    tracing::warn!("noting thread_cache_size in {}: {e}", saved.display());
                }
                match sqlx::raw_sql("SET GLOBAL thread_cache_size = 0")
                    .execute(&mut admin)
                    .await
                {
                    Ok(_) => Some(n),
                    Err(e) => {
                        tracing::warn!(
                            "cannot turn the thread cache off for the replay ({e}): after it, new \
                             connections may see the binary logs' time in NOW() until \
                             `SET GLOBAL thread_cache_size = 0` and back"
                        );
                        None
                    }
                }
            }
            Err(e) => {
                tracing::warn!("reading thread_cache_size: {e}");
                None
            }
        };
        crate::crash::point("restore");
        let replayed = tokio::task::spawn_blocking(move || {
            let mut reader = binlog.spawn().map_err(io_err("starting mariadb-binlog"))?;
            let read_errors = drain_stderr(reader.stderr.take());
            let events = reader.stdout.take().ok_or_else(|| EngineError::Tool {
                tool: "mariadb-binlog".into(),
                message: "no stdout".into(),
            })?;
            let mut writer = apply
                .stdin(Stdio::from(events))
                .spawn()
                .map_err(io_err("starting mariadb"))?;
            let write_errors = drain_stderr(writer.stderr.take());
            let applied = wait_tool("mariadb (replaying binary logs)", writer, write_errors);
            let read = wait_tool("mariadb-binlog", reader, read_errors);
            read?;
            applied.map(|_| ())
        })
        .await
        .map_err(|e| EngineError::Db(format!("replay task: {e}")));
        crate::crash::point("restore");
        if cache.is_some() {
            // The client has exited, but its thread on the server may still
            // be ending: turned back on now, the cache could keep it, fake
            // clock and all (seen under load). Wait until it is gone.
            for _ in 0..400 {
                let left: Result<i64, _> = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM information_schema.processlist WHERE db = ? AND id <> CONNECTION_ID()",
                )
                .bind(db)
                .fetch_one(&mut admin)
                .await;
                if !matches!(left, Ok(n) if n > 0) {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(25)).await;
            }
        }
        if let Some(n) = cache {
            match sqlx::raw_sql(AssertSqlSafe(format!("SET GLOBAL thread_cache_size = {n}")))
                .execute(&mut admin)
                .await
            {
                Ok(_) => {
                    crate::crash::point("restore");
                    let _ = std::fs::remove_file(&saved);
                }
                Err(e) => tracing::warn!("restoring thread_cache_size = {n}: {e}"),
            }
        }
        // Ends the session, and with it the replay lock.
        let _ = admin.close().await;
        match replayed? {
            Err(EngineError::Tool { message, .. }) if message.contains(swap::RESTORED_MARKER) => {
                return Err(EngineError::Config(format!(
                    "the binary logs replayed hold an in-place restore of {source_db}: the events \
                     after it apply to the restored data, which no replay of backups taken before \
                     it can rebuild; restore to a point in time before that restore, or from a \
                     full backup taken after it"
                )));
            }
            other => other?,
        }
        sqlx::raw_sql(AssertSqlSafe(format!("DROP TABLE {marker}")))
            .execute(&mut server)
            .await
            .map_err(db_err(format!("finishing the replay into {db}")))?;
        let _ = server.close().await;
        Ok(())
    }

    pub async fn load(&self, purpose: Purpose) -> Result<Load, EngineError> {
        let name = scratch_name(&self.server.database, &purpose.tag(), 64);
        // No default database: a later replay of the target's events never
        // runs these statements (see swap.rs).
        let mut conn = self.connect_to_server().await?;
        // A verification's scratch copy is nobody else's business: kept out
        // of the binary log, replicas never apply it and the next incremental
        // never archives it. (A restore's staging copy is logged: replicas
        // follow the swap that brings it in.)
        let unlogged = purpose == Purpose::Verify && self.unlog(&mut conn).await;
        for sql in [
            format!("DROP DATABASE IF EXISTS {}", quote(&name)),
            format!("CREATE DATABASE {}", quote(&name)),
        ] {
            sqlx::raw_sql(AssertSqlSafe(sql))
                .execute(&mut conn)
                .await
                .map_err(db_err(format!("preparing database {name}")))?;
        }
        let _ = conn.close().await;
        let mut cmd = self.tool("mariadb");
        cmd.arg(format!("--database={name}"));
        if unlogged {
            cmd.arg("--init-command=SET SESSION sql_log_bin = 0");
        }
        spawn_load(cmd, "mariadb", Place::Database(name))
    }

    /// Turns binary logging off for this session; false (with a warning)
    /// when the account may not.
    async fn unlog(&self, conn: &mut MySqlConnection) -> bool {
        match sqlx::raw_sql("SET SESSION sql_log_bin = 0")
            .execute(&mut *conn)
            .await
        {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(
                    "verification copies of {} go to the binary log: the account may not turn it off ({e}); grant it BINLOG ADMIN",
                    self.server.database
                );
                false
            }
        }
    }

    async fn tables(conn: &mut MySqlConnection, db: &str) -> Result<Vec<String>, EngineError> {
        sqlx::query_scalar(
            "SELECT CAST(table_name AS CHAR) FROM information_schema.tables \
             WHERE table_schema = ? AND table_type = 'BASE TABLE' ORDER BY table_name",
        )
        .bind(db)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_err(format!("listing tables of {db}")))
    }

    pub async fn inspect(&self, place: &Place) -> Result<Inspection, EngineError> {
        self.inspect_with(place, true).await
    }

    /// Counts rows in every table, and with `check` runs `CHECK TABLE` on them
    /// (several seconds per GiB: verification does it, a restore that has
    /// just loaded a dump whose sha256 matched relies on the counts).
    pub async fn inspect_with(
        &self,
        place: &Place,
        check: bool,
    ) -> Result<Inspection, EngineError> {
        let Place::Database(db) = place else {
            return Err(EngineError::Config("a MariaDB copy is a database".into()));
        };
        let mut conn = self.connect().await?;
        let names = Self::tables(&mut conn, db).await?;
        let mut tables = BTreeMap::new();
        for t in &names {
            let sql = format!("SELECT COUNT(*) FROM {}.{}", quote(db), quote(t));
            let n: i64 = sqlx::query_scalar(AssertSqlSafe(sql))
                .fetch_one(&mut conn)
                .await
                .map_err(db_err(format!("counting rows of {t}")))?;
            tables.insert(t.clone(), u64::try_from(n).unwrap_or(0));
        }
        let integrity = if names.is_empty() {
            Ok("CHECK TABLE: no tables".to_string())
        } else if !check {
            Ok(format!("{} tables loaded and counted", names.len()))
        } else {
            let list: Vec<String> = names
                .iter()
                .map(|t| format!("{}.{}", quote(db), quote(t)))
                .collect();
            let rows = sqlx::raw_sql(AssertSqlSafe(format!("CHECK TABLE {}", list.join(", "))))
                .fetch_all(&mut conn)
                .await
                .map_err(db_err("CHECK TABLE"))?;
            let problems: Vec<String> = rows
                .iter()
                .filter_map(|r| {
                    let table: String = r.try_get(0).ok()?;
                    let kind: String = r.try_get(2).ok()?;
                    let text: String = r.try_get(3).ok()?;
                    let bad = kind.eq_ignore_ascii_case("error")
                        || (kind.eq_ignore_ascii_case("status")
                            && !text.eq_ignore_ascii_case("OK"));
                    bad.then(|| format!("{table}: {text}"))
                })
                .collect();
            if problems.is_empty() {
                Ok(format!("CHECK TABLE: {} tables OK", names.len()))
            } else {
                Err(format!("CHECK TABLE: {}", problems.join("; ")))
            }
        };
        let _ = conn.close().await;
        Ok(Inspection { tables, integrity })
    }

    pub async fn discard(&self, place: &Place) -> Result<(), EngineError> {
        if let Place::Database(db) = place {
            let mut conn = self.connect_to_server().await?;
            // A verification copy was never logged: neither is its removal.
            if db.contains("_drhost_verify_") {
                self.unlog(&mut conn).await;
            }
            sqlx::raw_sql(AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {}",
                quote(db)
            )))
            .execute(&mut conn)
            .await
            .map_err(db_err(format!("dropping {db}")))?;
            let _ = conn.close().await;
        }
        Ok(())
    }

    /// Every trigger in `db`: its name, the `SET sql_mode` it needs, and its
    /// `CREATE TRIGGER` statement.
    async fn trigger_statements(
        conn: &mut MySqlConnection,
        db: &str,
    ) -> Result<Vec<(String, String, String)>, EngineError> {
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT CAST(trigger_name AS CHAR) FROM information_schema.triggers \
             WHERE trigger_schema = ? ORDER BY action_order",
        )
        .bind(db)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_err(format!("listing triggers of {db}")))?;
        let mut out = Vec::new();
        for name in names {
            let row = sqlx::raw_sql(AssertSqlSafe(format!(
                "SHOW CREATE TRIGGER {}.{}",
                quote(db),
                quote(&name)
            )))
            .fetch_one(&mut *conn)
            .await
            .map_err(db_err(format!("reading trigger {name}")))?;
            let mode: String = row
                .try_get(1)
                .map_err(db_err(format!("reading trigger {name}")))?;
            let sql: String = row
                .try_get(2)
                .map_err(db_err(format!("reading trigger {name}")))?;
            // A trigger body is parsed under the sql_mode it was created with
            // (`||` is OR or concatenation depending on it): keep that mode.
            let mode = mode.replace('\\', "\\\\").replace('\'', "''");
            out.push((name, format!("SET SESSION sql_mode = '{mode}'"), sql));
        }
        Ok(out)
    }

    /// Statements that put the stored procedures and functions of `staged`
    /// into the session's database (replacing same-named ones), each under
    /// its sql_mode.
    async fn routine_statements(
        conn: &mut MySqlConnection,
        staged: &str,
    ) -> Result<Vec<String>, EngineError> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT CAST(routine_name AS CHAR), CAST(routine_type AS CHAR) \
             FROM information_schema.routines WHERE routine_schema = ?",
        )
        .bind(staged)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_err(format!("listing routines of {staged}")))?;
        let mut out = Vec::new();
        for (name, kind) in rows {
            let kind = if kind.eq_ignore_ascii_case("FUNCTION") {
                "FUNCTION"
            } else {
                "PROCEDURE"
            };
            let row = sqlx::raw_sql(AssertSqlSafe(format!(
                "SHOW CREATE {kind} {}.{}",
                quote(staged),
                quote(&name)
            )))
            .fetch_one(&mut *conn)
            .await
            .map_err(db_err(format!("reading {kind} {name}")))?;
            let mode: String = row
                .try_get(1)
                .map_err(db_err(format!("reading {kind} {name}")))?;
            let sql: String = row
                .try_get(2)
                .map_err(db_err(format!("reading {kind} {name}")))?;
            let mode = mode.replace('\\', "\\\\").replace('\'', "''");
            // Unqualified, run in the target (see swap.rs: a replay must
            // never reach production through a qualified name).
            out.push(format!("DROP {kind} IF EXISTS {}", quote(&name)));
            out.push(format!("SET SESSION sql_mode = '{mode}'"));
            out.push(sql);
        }
        out.push("SET SESSION sql_mode = DEFAULT".into());
        Ok(out)
    }
}
