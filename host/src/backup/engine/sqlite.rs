//! SQLite, the embedded default: an online snapshot with `VACUUM INTO`
//! (consistent, and it works while the application writes), stored as a
//! plain database file.

use super::{Dump, DumpFacts, EngineError, Inspection, Load, Place, Purpose, io_err};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{AssertSqlSafe, Connection, Row};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub struct Sqlite {
    pub path: PathBuf,
    /// Scratch space for snapshots and verification copies.
    work: PathBuf,
}

fn db_err(what: &str, path: &Path) -> impl FnOnce(sqlx::Error) -> EngineError {
    let ctx = format!("{what} {}", path.display());
    move |e| EngineError::Db(format!("{ctx}: {e}"))
}

async fn open(path: &Path, read_only: bool) -> Result<SqliteConnection, EngineError> {
    let opts = SqliteConnectOptions::new()
        .filename(path)
        .read_only(read_only)
        .create_if_missing(false);
    SqliteConnection::connect_with(&opts)
        .await
        .map_err(db_err("opening", path))
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

async fn counts(
    conn: &mut SqliteConnection,
    path: &Path,
) -> Result<BTreeMap<String, u64>, EngineError> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(db_err("listing tables of", path))?;
    let mut out = BTreeMap::new();
    for name in names {
        let sql = format!("SELECT count(*) FROM {}", quote(&name));
        let n: i64 = sqlx::query_scalar(AssertSqlSafe(sql))
            .fetch_one(&mut *conn)
            .await
            .map_err(db_err(&format!("counting rows of {name} in"), path))?;
        out.insert(name, u64::try_from(n).unwrap_or(0));
    }
    Ok(out)
}

/// A reader that owns the scratch file it reads.
struct Guarded {
    file: std::fs::File,
    _guard: super::RemoveOnDrop,
}

impl std::io::Read for Guarded {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.file.read(buf)
    }
}

/// Creates `dir` readable by its owner only: the plaintext snapshots and
/// verification copies in it are whole databases.
fn private_dir(dir: &Path) -> Result<(), EngineError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io_err(format!("making {} private", dir.display())))
}

/// How old a snapshot or verification copy must be before it counts as
/// the remains of a killed run (a day: a live one is far younger).
const LEFTOVER_AGE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Removes plaintext copies that killed runs left in the scratch directory.
fn sweep_leftovers(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let ours = (name.ends_with(".sqlite") || name.ends_with(".sqlite-journal"))
            && (name.starts_with("snapshot-") || name.starts_with("verify_"));
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > LEFTOVER_AGE);
        if ours && old {
            match std::fs::remove_file(e.path()) {
                Ok(()) => tracing::info!("removed {name}, left by a run that was killed"),
                Err(err) => tracing::warn!("removing {name}: {err}"),
            }
        }
    }
}

impl Sqlite {
    pub fn new(path: PathBuf, work: PathBuf) -> Self {
        Sqlite { path, work }
    }

    pub async fn dump(&self) -> Result<Dump, EngineError> {
        private_dir(&self.work)?;
        sweep_leftovers(&self.work);
        let snap = self
            .work
            .join(format!("snapshot-{}.sqlite", super::Purpose::Verify.tag()));
        // Whatever ends this backup — done, failed, or dropped with a step
        // cut at its budget — the plaintext snapshot goes with it.
        let guard = super::RemoveOnDrop::new(snap.clone());
        let mut conn = open(&self.path, true).await?;
        let version: String = sqlx::query_scalar("SELECT sqlite_version()")
            .fetch_one(&mut conn)
            .await
            .map_err(db_err("reading the version of", &self.path))?;
        let target = snap.to_string_lossy().replace('\'', "''");
        sqlx::raw_sql(AssertSqlSafe(format!("VACUUM INTO '{target}'")))
            .execute(&mut conn)
            .await
            .map_err(db_err("snapshotting", &self.path))?;
        let _ = conn.close().await;
        let facts = async {
            let mut c = open(&snap, true).await?;
            let tables = counts(&mut c, &snap).await?;
            let _ = c.close().await;
            Ok::<_, EngineError>(tables)
        }
        .await;
        let tables = facts?;
        let file =
            std::fs::File::open(&snap).map_err(io_err(format!("opening {}", snap.display())))?;
        Ok(Dump {
            // The open file keeps the data readable once the name is gone.
            reader: Box::new(Guarded {
                file,
                _guard: guard,
            }),
            finish: Box::new(move || {
                Ok(DumpFacts {
                    tables,
                    position: None,
                    tools: BTreeMap::from([("sqlite".to_string(), version)]),
                })
            }),
        })
    }

    /// Takes the restore lock on this file (`flock` on a file in the work
    /// directory named after it, released by the kernel when the process
    /// ends), waiting up to `wait`; `None` when a restore holds it.
    pub async fn lock_restores(
        &self,
        wait: std::time::Duration,
    ) -> Result<Option<std::fs::File>, EngineError> {
        use std::os::fd::AsRawFd;
        private_dir(&self.work)?;
        let name = crate::digest::sha256_hex(self.path.as_os_str().as_encoded_bytes());
        let path = self.work.join(format!("restore-{}.lock", &name[..16]));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(format!("opening {}", path.display())))?;
        let started = std::time::Instant::now();
        loop {
            // SAFETY: flock on a descriptor we own; no memory is involved.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(Some(file));
            }
            if started.elapsed() >= wait {
                return Ok(None);
            }
            // flock has no timeout of its own: poll it.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// A staging copy left by a restore killed before its swap (the swap is
    /// one rename: the target is whole either way): removed, under the lock.
    pub fn finish_interrupted(&self) -> Result<Option<String>, EngineError> {
        let staged = self.place_for(Purpose::Restore);
        match std::fs::remove_file(&staged) {
            Ok(()) => Ok(Some(format!(
                "cleaned up (its staging copy {} is removed)",
                staged.display()
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(format!("removing {}", staged.display()))(e)),
        }
    }

    fn place_for(&self, purpose: Purpose) -> PathBuf {
        match purpose {
            Purpose::Verify => self.work.join(format!("{}.sqlite", purpose.tag())),
            // Beside the target, so the final rename is atomic.
            Purpose::Restore => {
                let mut name = self.path.file_name().unwrap_or_default().to_os_string();
                name.push(".drhost-staging");
                self.path.with_file_name(name)
            }
        }
    }

    pub async fn load(&self, purpose: Purpose) -> Result<Load, EngineError> {
        let path = self.place_for(purpose);
        if purpose == Purpose::Verify {
            private_dir(&self.work)?;
            sweep_leftovers(&self.work);
        } else if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
        }
        let file =
            std::fs::File::create(&path).map_err(io_err(format!("creating {}", path.display())))?;
        let sync = file
            .try_clone()
            .map_err(io_err("duplicating a file handle"))?;
        let shown = path.display().to_string();
        Ok(Load {
            place: Place::File(path),
            sink: Box::new(std::io::BufWriter::with_capacity(1 << 20, file)),
            tool: None,
            finish: Box::new(move || sync.sync_all().map_err(io_err(format!("syncing {shown}")))),
        })
    }

    pub async fn inspect(&self, place: &Place) -> Result<Inspection, EngineError> {
        let Place::File(path) = place else {
            return Err(EngineError::Config("a SQLite copy is a file".into()));
        };
        let mut c = open(path, true).await?;
        let rows = sqlx::query("PRAGMA integrity_check")
            .fetch_all(&mut c)
            .await
            .map_err(db_err("checking", path));
        let integrity = match rows {
            Ok(rows) => {
                let lines: Vec<String> = rows
                    .iter()
                    .filter_map(|r| r.try_get::<String, _>(0).ok())
                    .collect();
                if lines == ["ok"] {
                    Ok("PRAGMA integrity_check: ok".to_string())
                } else {
                    Err(format!("PRAGMA integrity_check: {}", lines.join("; ")))
                }
            }
            Err(e) => Err(e.to_string()),
        };
        let tables = match counts(&mut c, path).await {
            Ok(t) => t,
            Err(e) if integrity.is_err() => {
                tracing::debug!("counting a damaged copy: {e}");
                BTreeMap::new()
            }
            Err(e) => return Err(e),
        };
        let _ = c.close().await;
        Ok(Inspection { tables, integrity })
    }

    pub async fn discard(&self, place: &Place) -> Result<(), EngineError> {
        if let Place::File(p) = place {
            match std::fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(format!("removing {}", p.display()))(e)),
            }
        }
        Ok(())
    }

    pub async fn swap_in(&self, staged: &Place) -> Result<(), EngineError> {
        let Place::File(staged) = staged else {
            return Err(EngineError::Config("a SQLite copy is a file".into()));
        };
        if self.path.exists() {
            // Fold the target's WAL into its main file first: once the new file
            // is in place, an old WAL beside it must hold nothing.
            let mut c = open(&self.path, false).await?;
            sqlx::raw_sql("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&mut c)
                .await
                .map_err(db_err("checkpointing", &self.path))?;
            let _ = c.close().await;
            crate::crash::point("sqlite-swap");
        }
        std::fs::rename(staged, &self.path).map_err(io_err(format!(
            "moving {} over {}",
            staged.display(),
            self.path.display()
        )))?;
        crate::crash::point("sqlite-swap");
        for suffix in ["-wal", "-shm"] {
            let mut side = self.path.as_os_str().to_os_string();
            side.push(suffix);
            let _ = std::fs::remove_file(PathBuf::from(side));
        }
        if let Some(dir) = self.path.parent()
            && let Ok(d) = std::fs::File::open(if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            })
        {
            let _ = d.sync_all();
        }
        Ok(())
    }
}
