//! Database engines: how each one is dumped, loaded into a scratch place,
//! inspected, and swapped into place. The host runs the engine's own tools
//! (`mariadb-dump`, `pg_dump`, …) or SQLite's `VACUUM INTO`; bytes stream.

pub mod mariadb;
pub mod objects;
pub mod postgres;
pub mod scan;
pub mod sqlite;

use super::config::{Config, Source, SourceKind};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStderr, Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    Config(String),
    #[error("{tool} failed: {message}")]
    Tool { tool: String, message: String },
    #[error("{0}")]
    Db(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

pub fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> EngineError {
    let context = context.into();
    move |source| EngineError::Io { context, source }
}

/// What a finished dump holds.
#[derive(Debug, Default, Clone)]
pub struct DumpFacts {
    pub tables: BTreeMap<String, u64>,
    pub position: Option<String>,
    pub tools: BTreeMap<String, String>,
}

pub type Finish<T> = Box<dyn FnOnce() -> Result<T, EngineError> + Send>;

/// A dump in progress: read `reader` to its end, then call `finish`.
pub struct Dump {
    pub reader: Box<dyn Read + Send>,
    pub finish: Finish<DumpFacts>,
}

/// Removes a scratch or staging file when dropped, unless told to keep it.
pub struct RemoveOnDrop(Option<PathBuf>);

impl RemoveOnDrop {
    pub fn new(path: PathBuf) -> Self {
        RemoveOnDrop(Some(path))
    }

    /// The file is someone else's now.
    pub fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!("removing {}: {e}", path.display()),
            }
        }
    }
}

/// Where a backup is loaded before anyone relies on it.
#[derive(Debug, Clone)]
pub enum Place {
    File(PathBuf),
    Database(String),
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::File(p) => write!(f, "{}", p.display()),
            Place::Database(d) => write!(f, "database {d}"),
        }
    }
}

/// A load in progress: write the plaintext into `sink`, drop it, then call `finish`.
pub struct Load {
    pub place: Place,
    pub sink: Box<dyn Write + Send>,
    pub finish: Finish<()>,
    /// The loading tool, to kill when the load is abandoned.
    pub tool: Option<Tool>,
}

/// A tool process, held by a pidfd: it can be killed even after its parent
/// lost track of it, and never hits another process that reused its pid.
pub struct Tool(std::os::fd::OwnedFd);

impl Tool {
    fn of(child: &std::process::Child) -> Option<Tool> {
        let pid = libc::pid_t::try_from(child.id()).ok()?;
        // SAFETY: pidfd_open takes a pid and flags and returns a new
        // descriptor or -1; no memory of ours is involved.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
        // SAFETY: the kernel just returned this descriptor to us, and only
        // this value owns it.
        Some(Tool(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }))
    }

    /// SIGKILL: a load abandoned midway (a verify or restore stopped at its
    /// budget) must not leave its tool holding tables on the server.
    pub fn kill(&self) {
        use std::os::fd::AsRawFd;
        // SAFETY: pidfd_send_signal reads only its arguments; a null info
        // pointer means "as kill(2) would".
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            );
        }
    }
}

/// What a loaded copy holds, and what the engine's own checks said.
#[derive(Debug, Clone)]
pub struct Inspection {
    pub tables: BTreeMap<String, u64>,
    /// `Ok(what was checked)` or the engine's complaint.
    pub integrity: Result<String, String>,
}

/// Why a backup is loaded: a throw-away check, or the copy a restore swaps in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Verify,
    Restore,
}

impl Purpose {
    /// The scratch name's tag: unique for checks, fixed for staging so that a
    /// leftover from an interrupted restore is found and replaced.
    pub fn tag(self) -> String {
        match self {
            Purpose::Verify => format!("verify_{}", &crate::digest::sha256_hex(&rand_bytes())[..8]),
            Purpose::Restore => "staging".into(),
        }
    }
}

fn rand_bytes() -> [u8; 16] {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&(nanos as u64).to_le_bytes());
    b[8..12].copy_from_slice(&std::process::id().to_le_bytes());
    b
}

/// Held by a restore from start to end (see [`Engine::lock_restores`]).
pub enum RestoreLock {
    Mariadb(mariadb::SwapLock),
    Postgres(sqlx::postgres::PgConnection),
    /// A `flock` held on a file in the work directory.
    Sqlite(std::fs::File),
    /// Engines whose swap is a single atomic step need no lock.
    Free,
}

impl RestoreLock {
    pub async fn release(self) {
        match self {
            RestoreLock::Mariadb(l) => l.release().await,
            RestoreLock::Postgres(c) => {
                let _ = sqlx::Connection::close(c).await;
            }
            RestoreLock::Sqlite(_) | RestoreLock::Free => {}
        }
    }
}

pub enum Engine {
    Sqlite(sqlite::Sqlite),
    Mariadb(mariadb::Mariadb),
    Postgres(postgres::Postgres),
    Objects(objects::Objects),
}

impl Engine {
    pub fn new(
        config: &Config,
        name: &str,
        source: &Source,
        work: PathBuf,
    ) -> Result<Self, EngineError> {
        Ok(match source.kind {
            SourceKind::Objects => Engine::Objects(objects::Objects::new(
                source.store(),
                config.base.clone(),
                work,
            )),
            SourceKind::Sqlite => {
                let path = source
                    .path
                    .as_ref()
                    .ok_or_else(|| EngineError::Config(format!("[sources.{name}] has no path")))?;
                Engine::Sqlite(sqlite::Sqlite::new(config.resolve(path), work))
            }
            SourceKind::Mariadb | SourceKind::Postgres => {
                let url = source
                    .url
                    .as_ref()
                    .ok_or_else(|| EngineError::Config(format!("[sources.{name}] has no url")))?
                    .resolve()
                    .map_err(|e| EngineError::Config(format!("[sources.{name}] url: {e}")))?;
                let server = Server::parse(&url)
                    .map_err(|e| EngineError::Config(format!("[sources.{name}] url: {e}")))?;
                if source.kind == SourceKind::Mariadb {
                    Engine::Mariadb(mariadb::Mariadb::new(server, work))
                } else {
                    Engine::Postgres(postgres::Postgres::new(server))
                }
            }
        })
    }

    pub fn kind(&self) -> SourceKind {
        match self {
            Engine::Sqlite(_) => SourceKind::Sqlite,
            Engine::Mariadb(_) => SourceKind::Mariadb,
            Engine::Postgres(_) => SourceKind::Postgres,
            Engine::Objects(_) => SourceKind::Objects,
        }
    }

    /// The plaintext's file extension.
    pub fn extension(&self) -> &'static str {
        match self {
            Engine::Sqlite(_) => "sqlite",
            Engine::Mariadb(_) => "sql",
            Engine::Postgres(_) => "pgdump",
            Engine::Objects(_) => "objects.tar",
        }
    }

    /// Names the database (or file) this engine points at, for messages.
    pub fn describe(&self) -> String {
        match self {
            Engine::Sqlite(s) => s.path.display().to_string(),
            Engine::Mariadb(m) => format!("mariadb database {}", m.server.database),
            Engine::Postgres(p) => format!("postgres database {}", p.server.database),
            Engine::Objects(o) => format!("objects at {}", o.describe()),
        }
    }

    pub async fn dump(&self) -> Result<Dump, EngineError> {
        match self {
            Engine::Sqlite(s) => s.dump().await,
            Engine::Mariadb(m) => m.dump().await,
            Engine::Postgres(p) => p.dump().await,
            Engine::Objects(o) => o.dump().await,
        }
    }

    /// Prepares an empty place on the same server (or beside the file) and
    /// starts loading into it. A leftover staging place from an interrupted
    /// restore is removed first.
    pub async fn load(&self, purpose: Purpose) -> Result<Load, EngineError> {
        match self {
            Engine::Sqlite(s) => s.load(purpose).await,
            Engine::Mariadb(m) => m.load(purpose).await,
            Engine::Postgres(p) => p.load(purpose).await,
            Engine::Objects(o) => o.load(purpose).await,
        }
    }

    /// Like `inspect`, without the slow engine checks where they have a cost
    /// (MariaDB's CHECK TABLE): for a restore that just loaded a dump whose
    /// sha256 matched the manifest; the row counts are still compared.
    pub async fn inspect_loaded(&self, place: &Place) -> Result<Inspection, EngineError> {
        match self {
            Engine::Mariadb(m) => m.inspect_with(place, false).await,
            other => other.inspect(place).await,
        }
    }

    pub async fn inspect(&self, place: &Place) -> Result<Inspection, EngineError> {
        match self {
            Engine::Sqlite(s) => s.inspect(place).await,
            Engine::Mariadb(m) => m.inspect(place).await,
            Engine::Postgres(p) => p.inspect(place).await,
            Engine::Objects(o) => o.inspect(place).await,
        }
    }

    /// Removes a scratch or staging place.
    pub async fn discard(&self, place: &Place) -> Result<(), EngineError> {
        match self {
            Engine::Sqlite(s) => s.discard(place).await,
            Engine::Mariadb(m) => m.discard(place).await,
            Engine::Postgres(p) => p.discard(place).await,
            Engine::Objects(o) => o.discard(place).await,
        }
    }

    /// Takes the lock that keeps two restores of this database apart (and a
    /// backup from a database being replaced), waiting up to `wait`; `None`
    /// when a restore holds it. Objects need none: each is written whole or
    /// not at all.
    pub async fn lock_restores(
        &self,
        wait: std::time::Duration,
    ) -> Result<Option<RestoreLock>, EngineError> {
        match self {
            Engine::Mariadb(m) => Ok(m.lock_restores(wait).await?.map(RestoreLock::Mariadb)),
            Engine::Postgres(p) => Ok(p.lock_restores(wait).await?.map(RestoreLock::Postgres)),
            Engine::Sqlite(s) => Ok(s.lock_restores(wait).await?.map(RestoreLock::Sqlite)),
            Engine::Objects(_) => Ok(Some(RestoreLock::Free)),
        }
    }

    /// Finishes or undoes a restore a crash interrupted, and says which;
    /// `None` when there was none.
    pub async fn finish_interrupted(
        &self,
        lock: &mut RestoreLock,
    ) -> Result<Option<String>, EngineError> {
        match (self, lock) {
            (Engine::Mariadb(m), RestoreLock::Mariadb(l)) => {
                Ok(m.finish_interrupted(l).await?.map(|f| f.to_string()))
            }
            (Engine::Postgres(p), RestoreLock::Postgres(l)) => p.finish_interrupted(l).await,
            (Engine::Sqlite(s), RestoreLock::Sqlite(_)) => s.finish_interrupted(),
            _ => Ok(None),
        }
    }

    /// Replaces this engine's database with the verified `staged` copy.
    pub async fn swap_in(&self, staged: &Place, lock: &mut RestoreLock) -> Result<(), EngineError> {
        match self {
            Engine::Sqlite(s) => s.swap_in(staged).await,
            Engine::Mariadb(m) => match lock {
                RestoreLock::Mariadb(l) => m.swap_in(staged, l).await,
                _ => Err(EngineError::Config(
                    "a MariaDB swap needs the restore lock".into(),
                )),
            },
            Engine::Postgres(p) => p.swap_in(staged).await,
            Engine::Objects(o) => o.swap_in(staged).await,
        }
    }
}

/// A server database reached by URL. The password never goes on a command
/// line (other users can read those): tools get it through the environment.
#[derive(Clone)]
pub struct Server {
    pub url: url::Url,
    pub host: String,
    pub port: Option<u16>,
    pub user: String,
    pub password: Option<String>,
    pub database: String,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Server({}@{}/{})", self.user, self.host, self.database)
    }
}

impl Server {
    pub fn parse(text: &str) -> Result<Self, String> {
        let url = url::Url::parse(text).map_err(|e| format!("not a URL: {e}"))?;
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| "not UTF-8 after percent-decoding".to_string())
        };
        let database = decode(url.path().trim_start_matches('/'))?;
        if database.is_empty() {
            return Err("the URL names no database (…/dbname)".into());
        }
        Ok(Server {
            host: url.host_str().unwrap_or("localhost").to_string(),
            port: url.port(),
            user: decode(url.username())?,
            password: url.password().map(decode).transpose()?,
            database,
            url,
        })
    }

    /// The same server, another database.
    pub fn with_database(&self, db: &str) -> url::Url {
        let mut u = self.url.clone();
        u.set_path(&format!("/{db}"));
        u
    }
}

/// Collects a child's stderr on a thread, so a full pipe never stalls it.
pub fn drain_stderr(stderr: Option<ChildStderr>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut e) = stderr {
            let mut buf = Vec::new();
            let _ = e.read_to_end(&mut buf);
            text = String::from_utf8_lossy(&buf).into_owned();
        }
        text
    })
}

/// Waits for a tool and turns a failure into its stderr.
pub fn wait_tool(
    tool: &str,
    mut child: Child,
    stderr: std::thread::JoinHandle<String>,
) -> Result<String, EngineError> {
    let status = child
        .wait()
        .map_err(io_err(format!("waiting for {tool}")))?;
    let err = stderr.join().unwrap_or_default();
    if status.success() {
        Ok(err)
    } else {
        let msg = err.trim();
        Err(EngineError::Tool {
            tool: tool.into(),
            message: if msg.is_empty() {
                format!("exited with {status}")
            } else {
                format!("{status}: {}", last_lines(msg, 5))
            },
        })
    }
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// The first line a tool prints for `--version`.
pub fn tool_version(tool: &str) -> String {
    std::process::Command::new(tool)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

/// A name for a scratch place: `<base>_drhost_<tag>`, within identifier limits.
pub fn scratch_name(base: &str, tag: &str, max: usize) -> String {
    let clean: String = tag
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    let mut name = format!("{base}_drhost_{clean}");
    name.truncate(max);
    name
}

/// Starts `tar -x` into `dir` (created), reading the archive from the sink.
/// GNU tar refuses members that would land outside `dir`.
pub fn unpack_tar(dir: &std::path::Path) -> Result<Load, EngineError> {
    std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    let mut tar = Command::new("tar");
    tar.arg("-C").arg(dir).arg("-xf").arg("-");
    spawn_load(tar, "tar", Place::File(dir.to_path_buf()))
}

/// Starts a tool that reads the load from its stdin: the sink is that stdin
/// (buffered), `finish` waits for the tool and reports its stderr on failure.
pub fn spawn_load(mut cmd: Command, tool: &'static str, place: Place) -> Result<Load, EngineError> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(io_err(format!("starting {tool}")))?;
    let stdin = child.stdin.take().ok_or_else(|| EngineError::Tool {
        tool: tool.into(),
        message: "no stdin".into(),
    })?;
    widen_pipe(&stdin);
    let errors = drain_stderr(child.stderr.take());
    Ok(Load {
        place,
        sink: Box::new(std::io::BufWriter::with_capacity(1 << 20, stdin)),
        tool: Tool::of(&child),
        finish: Box::new(move || wait_tool(tool, child, errors).map(|_| ())),
    })
}

/// Grows a pipe to the tools from the kernel's 64 KiB to 1 MiB. With a dump
/// server and its client already busy on every core, each full pipe costs a
/// context switch: `mariadb-dump | cat` took 1.35× the time of
/// `mariadb-dump > /dev/null` with 64 KiB pipes, 1.15× with 1 MiB ones. A
/// refusal (a lower `/proc/sys/fs/pipe-max-size`) keeps the default.
fn widen_pipe(pipe: &impl std::os::fd::AsRawFd) {
    // SAFETY: F_SETPIPE_SZ only resizes the kernel buffer of a descriptor we
    // own for the duration of the call; it touches no memory of ours.
    let r = unsafe { libc::fcntl(pipe.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) };
    if r < 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "pipe size left at the default");
    }
}

/// A tool whose stdout is being read; its stderr is collected meanwhile.
pub struct Reading {
    pub child: Child,
    pub stdout: std::process::ChildStdout,
    pub errors: std::thread::JoinHandle<String>,
}

/// Starts a tool that writes what is read from it to its stdout.
pub fn spawn_reading(mut cmd: Command, tool: &str) -> Result<Reading, EngineError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(io_err(format!("starting {tool}")))?;
    let stdout = child.stdout.take().ok_or_else(|| EngineError::Tool {
        tool: tool.into(),
        message: "no stdout".into(),
    })?;
    widen_pipe(&stdout);
    let errors = drain_stderr(child.stderr.take());
    Ok(Reading {
        child,
        stdout,
        errors,
    })
}
