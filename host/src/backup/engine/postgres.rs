//! PostgreSQL: `pg_dump -Fc -Z0` (custom format, uncompressed: our zstd stage
//! is faster than its own) inside a snapshot that drhost exports and counts
//! rows in, so the manifest's counts are those of the dumped data; loaded
//! with `pg_restore`.

use super::{
    Dump, DumpFacts, EngineError, Inspection, Load, Place, Purpose, Reading, Server, scratch_name,
    spawn_load, spawn_reading, tool_version, wait_tool,
};
use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Connection};
use std::collections::BTreeMap;
use std::process::Command;

pub struct Postgres {
    pub server: Server,
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn db_err(what: impl Into<String>) -> impl FnOnce(sqlx::Error) -> EngineError {
    let what = what.into();
    move |e| EngineError::Db(format!("{what}: {e}"))
}

/// Where maintenance statements (CREATE/ALTER/DROP DATABASE) run.
const MAINTENANCE_DB: &str = "postgres";

async fn count_tables(conn: &mut PgConnection) -> Result<BTreeMap<String, u64>, EngineError> {
    let names: Vec<(String, String)> = sqlx::query_as(
        "SELECT schemaname::text, tablename::text FROM pg_tables \
         WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(db_err("listing tables"))?;
    let mut out = BTreeMap::new();
    for (schema, table) in names {
        let sql = format!("SELECT count(*) FROM {}.{}", quote(&schema), quote(&table));
        let n: i64 = sqlx::query_scalar(AssertSqlSafe(sql))
            .fetch_one(&mut *conn)
            .await
            .map_err(db_err(format!("counting rows of {schema}.{table}")))?;
        out.insert(format!("{schema}.{table}"), u64::try_from(n).unwrap_or(0));
    }
    Ok(out)
}

impl Postgres {
    pub fn new(server: Server) -> Self {
        Postgres { server }
    }

    async fn connect(&self, db: &str) -> Result<PgConnection, EngineError> {
        PgConnection::connect(self.server.with_database(db).as_str())
            .await
            .map_err(db_err(format!(
                "connecting to PostgreSQL at {} as {} (database {db})",
                self.server.host, self.server.user
            )))
    }

    fn tool(&self, name: &str, db: &str) -> Command {
        let mut cmd = Command::new(name);
        cmd.arg(format!("--host={}", self.server.host))
            .arg(format!("--dbname={db}"));
        if !self.server.user.is_empty() {
            cmd.arg(format!("--username={}", self.server.user));
        }
        if let Some(p) = self.server.port {
            cmd.arg(format!("--port={p}"));
        }
        cmd.arg("--no-password");
        match &self.server.password {
            Some(p) => cmd.env("PGPASSWORD", p),
            None => cmd.env_remove("PGPASSWORD"),
        };
        cmd
    }

    pub async fn dump(&self) -> Result<Dump, EngineError> {
        let db = self.server.database.clone();
        let mut conn = self.connect(&db).await?;
        sqlx::raw_sql("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut conn)
            .await
            .map_err(db_err("starting the snapshot"))?;
        let (snapshot, lsn, version): (String, String, String) = sqlx::query_as(
            "SELECT pg_export_snapshot(), pg_current_wal_lsn()::text, current_setting('server_version')",
        )
        .fetch_one(&mut conn)
        .await
        .map_err(db_err("exporting a snapshot"))?;
        let tables = count_tables(&mut conn).await?;
        let mut cmd = self.tool("pg_dump", &db);
        cmd.args(["--format=custom", "--compress=0"])
            .arg(format!("--snapshot={snapshot}"));
        let Reading {
            child,
            stdout,
            errors,
        } = spawn_reading(cmd, "pg_dump")?;
        // The exported snapshot lives as long as this transaction: hold it
        // until pg_dump is done.
        let (done, wait) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = wait.await;
            let _ = sqlx::raw_sql("COMMIT").execute(&mut conn).await;
            let _ = conn.close().await;
        });
        Ok(Dump {
            reader: Box::new(stdout),
            finish: Box::new(move || {
                let result = wait_tool("pg_dump", child, errors);
                let _ = done.send(());
                result?;
                Ok(DumpFacts {
                    tables,
                    position: Some(format!("lsn {lsn}")),
                    tools: BTreeMap::from([
                        ("pg_dump".to_string(), tool_version("pg_dump")),
                        ("server".to_string(), version),
                    ]),
                })
            }),
        })
    }

    pub async fn load(&self, purpose: Purpose) -> Result<Load, EngineError> {
        let name = scratch_name(&self.server.database, &purpose.tag(), 63);
        let mut conn = self.connect(MAINTENANCE_DB).await?;
        for sql in [
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote(&name)),
            format!("CREATE DATABASE {}", quote(&name)),
        ] {
            sqlx::raw_sql(AssertSqlSafe(sql))
                .execute(&mut conn)
                .await
                .map_err(db_err(format!("preparing database {name}")))?;
        }
        let _ = conn.close().await;
        let mut cmd = self.tool("pg_restore", &name);
        cmd.args(["--no-owner", "--no-privileges", "--exit-on-error"]);
        spawn_load(cmd, "pg_restore", Place::Database(name))
    }

    pub async fn inspect(&self, place: &Place) -> Result<Inspection, EngineError> {
        let Place::Database(db) = place else {
            return Err(EngineError::Config(
                "a PostgreSQL copy is a database".into(),
            ));
        };
        let mut conn = self.connect(db).await?;
        // Counting with sequential scans reads every heap page: a damaged page
        // fails here rather than hiding behind an index.
        sqlx::raw_sql("SET enable_indexscan = off; SET enable_indexonlyscan = off; SET enable_bitmapscan = off")
            .execute(&mut conn)
            .await
            .map_err(db_err("configuring the check"))?;
        let counted = count_tables(&mut conn).await;
        let _ = conn.close().await;
        match counted {
            Ok(tables) => Ok(Inspection {
                integrity: Ok(format!("{} tables read in full", tables.len())),
                tables,
            }),
            Err(e) => Ok(Inspection {
                tables: BTreeMap::new(),
                integrity: Err(e.to_string()),
            }),
        }
    }

    pub async fn discard(&self, place: &Place) -> Result<(), EngineError> {
        if let Place::Database(db) = place {
            let mut conn = self.connect(MAINTENANCE_DB).await?;
            sqlx::raw_sql(AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                quote(db)
            )))
            .execute(&mut conn)
            .await
            .map_err(db_err(format!("dropping {db}")))?;
            let _ = conn.close().await;
        }
        Ok(())
    }

    /// Takes the restore lock on the target (a session advisory lock on the
    /// maintenance database, released by the server when the session ends),
    /// waiting up to `wait`; `None` when a restore holds it.
    pub async fn lock_restores(
        &self,
        wait: std::time::Duration,
    ) -> Result<Option<PgConnection>, EngineError> {
        let mut conn = self.connect(MAINTENANCE_DB).await?;
        let digest = crate::digest::sha256_hex(self.server.database.as_bytes());
        let key = i64::from_str_radix(&digest[..15], 16).unwrap_or(0);
        let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
        sqlx::raw_sql(AssertSqlSafe(format!("SET lock_timeout = {ms}")))
            .execute(&mut conn)
            .await
            .map_err(db_err("taking the restore lock"))?;
        match sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(key)
            .execute(&mut conn)
            .await
        {
            Ok(_) => {
                // The wait was for the lock only, not for what follows.
                sqlx::raw_sql("SET lock_timeout = 0")
                    .execute(&mut conn)
                    .await
                    .map_err(db_err("taking the restore lock"))?;
                Ok(Some(conn))
            }
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03") => Ok(None),
            Err(e) => Err(db_err("taking the restore lock")(e)),
        }
    }

    /// What a restore killed midway left (its staging database, or the
    /// replaced database of a swap that committed but was not cleaned up):
    /// dropped, under the restore lock. The swap itself is one transaction,
    /// so the target is whole either way.
    pub async fn finish_interrupted(
        &self,
        lock: &mut PgConnection,
    ) -> Result<Option<String>, EngineError> {
        let target = &self.server.database;
        let mut dropped = Vec::new();
        for name in [
            scratch_name(target, &Purpose::Restore.tag(), 63),
            scratch_name(target, "old", 63),
        ] {
            let exists: Option<i32> =
                sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
                    .bind(&name)
                    .fetch_optional(&mut *lock)
                    .await
                    .map_err(db_err(format!("looking for {name}")))?;
            if exists.is_some() {
                sqlx::raw_sql(AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    quote(&name)
                )))
                .execute(&mut *lock)
                .await
                .map_err(db_err(format!("dropping {name}")))?;
                dropped.push(name);
            }
        }
        Ok((!dropped.is_empty()).then(|| {
            format!(
                "cleaned up (its leftover databases {} are dropped)",
                dropped.join(", ")
            )
        }))
    }

    /// Renames the target aside and the staged database into its name, in one
    /// transaction, then drops the old one. Sessions on the target are ended.
    pub async fn swap_in(&self, staged: &Place) -> Result<(), EngineError> {
        let Place::Database(staged) = staged else {
            return Err(EngineError::Config(
                "a PostgreSQL copy is a database".into(),
            ));
        };
        let target = &self.server.database;
        let old = scratch_name(target, "old", 63);
        let mut conn = self.connect(MAINTENANCE_DB).await?;
        sqlx::raw_sql(AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote(&old)
        )))
        .execute(&mut conn)
        .await
        .map_err(db_err(format!("dropping {old}")))?;
        crate::crash::point("postgres-swap");
        sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()")
            .bind(target)
            .execute(&mut conn)
            .await
            .map_err(db_err(format!("ending sessions on {target}")))?;
        crate::crash::point("postgres-swap");
        sqlx::raw_sql(AssertSqlSafe(format!(
            "BEGIN; ALTER DATABASE {t} RENAME TO {o}; ALTER DATABASE {s} RENAME TO {t}; COMMIT",
            t = quote(target),
            o = quote(&old),
            s = quote(staged)
        )))
        .execute(&mut conn)
        .await
        .map_err(db_err(format!(
            "swapping the restored database into {target}"
        )))?;
        crate::crash::point("postgres-swap");
        sqlx::raw_sql(AssertSqlSafe(format!(
            "DROP DATABASE {} WITH (FORCE)",
            quote(&old)
        )))
        .execute(&mut conn)
        .await
        .map_err(db_err(format!("dropping {old}")))?;
        let _ = conn.close().await;
        Ok(())
    }
}
