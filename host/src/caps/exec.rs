//! `exec`: allow-listed programs. The grant names the exact program and a
//! pattern per argument: a `*` never matches a `.`/`..` segment, a control
//! character or (unless the grant allows options) a leading `-`, and a
//! `path-under` argument is resolved as text and passed resolved. No shell
//! is involved, the environment is empty but for PATH and what the grant
//! sets, output is capped, and a program that outlives its timeout (or the
//! step's budget) is killed with everything it started: its process group,
//! and every process carrying the run's marker in its environment (a
//! `setsid` daemon leaves the group but keeps the environment it was started
//! with). After a clean exit the same sweep runs unless the grant says
//! `leaves-running = true` (a restart script's service).

use super::{Decision, Grant, Moved, Summarize};
use crate::bindings::CapError;
use crate::policy::ExecGrant;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt};

pub struct ExecCap {
    pub grants: BTreeMap<String, ExecGrant>,
    /// The policy's directory: the default working directory.
    pub base_dir: Option<PathBuf>,
}

/// What a finished (or killed) program left behind.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    pub exit_code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub truncated: bool,
    pub duration_ms: u64,
}

impl Summarize for ExecOutput {
    fn moved(&self) -> Moved {
        let mut m = Moved {
            bytes: Some((self.stdout.len() + self.stderr.len()) as u64),
            ..Moved::default()
        };
        m.extra.insert(
            "exit_code".into(),
            self.exit_code.map_or(serde_json::Value::Null, Into::into),
        );
        if self.truncated {
            m.extra.insert("truncated".into(), true.into());
        }
        m
    }
}

impl ExecCap {
    pub fn decide(&self, name: &str, args: &[String]) -> Decision {
        match self.grants.get(name) {
            None => Decision::Deny {
                needed: format!("exec.{name}"),
                message: format!(
                    "exec.run: no program {name:?} is granted; add [exec.{name}] with program = \"/absolute/path\" and args patterns to the policy"
                ),
            },
            Some(g) => match g.mismatch(args) {
                Some(why) => Decision::Deny {
                    needed: format!("exec.{name} args"),
                    message: format!("exec.run {name:?}: {why} (see [exec.{name}] args)"),
                },
                None => Decision::Allow(
                    Grant::on(
                        format!("exec.{name}"),
                        g.sandbox,
                        format!("exec.{name} program={}", g.program.display()),
                    )
                    .phases(&g.phases, &g.write_phases),
                ),
            },
        }
    }

    /// Runs the granted program; `remaining` is what is left of the step.
    pub async fn run(
        &self,
        name: &str,
        args: &[String],
        remaining: Duration,
    ) -> Result<ExecOutput, CapError> {
        let g = self
            .grants
            .get(name)
            .ok_or_else(|| CapError::Denied(format!("no program {name:?}")))?;
        // Checked again here: the program gets the arguments in the form
        // that was matched (a `path-under` argument resolved).
        let args = g
            .check(args)
            .map_err(|why| CapError::Denied(format!("exec.run {name:?}: {why}")))?;
        let marker = crate::clock::new_run_id();
        let mut cmd = tokio::process::Command::new(&g.program);
        cmd.args(&args)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env(MARKER, &marker)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            // Its own process group, so a timeout kills what it started too.
            .process_group(0);
        for (k, v) in &g.env {
            let v = v
                .resolve()
                .map_err(|e| CapError::Unavailable(format!("[exec.{name}] env {k}: {e}")))?;
            cmd.env(k, v);
        }
        if let Some(dir) = g.cwd.as_ref().or(self.base_dir.as_ref()) {
            cmd.current_dir(dir);
        }
        // A cgroup of its own, where the system lets drhost make one: every
        // process the program starts is in it, whatever it does to its
        // session, group, parent or environment. (Not for a program that
        // leaves a service running: the service would keep the cgroup.)
        let cgroup = if g.leaves_running {
            None
        } else {
            Cgroup::create(&marker)
        };
        if let Some(cg) = &cgroup {
            let procs = cg.procs.clone();
            // SAFETY: runs in the child between fork and exec; it only makes
            // async-signal-safe system calls (open, write, close) on a path
            // allocated before the fork, and ignores their failure (the
            // marker sweep still applies).
            unsafe {
                cmd.pre_exec(move || {
                    let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd >= 0 {
                        // "0" moves the writing process itself.
                        libc::write(fd, b"0".as_ptr().cast(), 1);
                        libc::close(fd);
                    }
                    Ok(())
                });
            }
        }
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|e| CapError::Unavailable(format!("starting {}: {e}", g.program.display())))?;
        // Dropped with the call (a step cut at its budget), it kills them all.
        let mut tree = Started {
            pgid: child.id().and_then(|p| i32::try_from(p).ok()),
            marker,
            cgroup,
            armed: true,
        };
        let cap = usize::try_from(g.max_output.0).unwrap_or(usize::MAX);
        let mut out = tokio::spawn(read_capped(child.stdout.take(), cap));
        let mut err = tokio::spawn(read_capped(child.stderr.take(), cap));
        let limit = g.timeout.0.min(remaining);
        let exit_code = match tokio::time::timeout(limit, child.wait()).await {
            Ok(Ok(status)) => {
                if g.leaves_running {
                    tree.armed = false;
                } else {
                    tree.kill_all();
                }
                status.code()
            }
            Ok(Err(e)) => return Err(CapError::Unavailable(format!("waiting for {name}: {e}"))),
            Err(_) => {
                tree.kill_all();
                let _ = child.wait().await;
                tracing::warn!("exec {name}: killed after {limit:?}");
                None
            }
        };
        // A process left holding the pipes (kept by leaves-running) does not
        // hold the step: output is read for a moment more, then given up.
        let (stdout, t1) = drain(&mut out).await;
        let (stderr, t2) = drain(&mut err).await;
        Ok(ExecOutput {
            exit_code,
            stdout,
            stderr,
            truncated: t1 || t2,
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        })
    }
}

/// The environment variable that marks every process one `exec.run` starts.
const MARKER: &str = "DRHOST_EXEC_RUN";

/// How long output is still read once the program has exited.
const DRAIN: Duration = Duration::from_millis(500);

async fn drain(task: &mut tokio::task::JoinHandle<(String, bool)>) -> (String, bool) {
    match tokio::time::timeout(DRAIN, &mut *task).await {
        Ok(r) => r.unwrap_or_default(),
        Err(_) => {
            task.abort();
            (String::new(), true)
        }
    }
}

/// A cgroup for one `exec.run` (cgroup v1 `pids` hierarchy, else v2).
struct Cgroup {
    dir: PathBuf,
    /// `cgroup.procs`, as a C string made before any fork.
    procs: std::ffi::CString,
}

impl Cgroup {
    /// Makes `drhost-exec-<marker>` in the first hierarchy that allows it;
    /// `None` where none does (no privilege, read-only /sys/fs/cgroup).
    fn create(marker: &str) -> Option<Cgroup> {
        for base in [
            "/sys/fs/cgroup/pids",
            "/sys/fs/cgroup/unified",
            "/sys/fs/cgroup",
        ] {
            let base = std::path::Path::new(base);
            if !base.join("cgroup.procs").exists() {
                continue;
            }
            // Empty ones left by a drhost that was killed go first (a
            // cgroup still in use is not empty and stays).
            if let Ok(entries) = std::fs::read_dir(base) {
                for e in entries.flatten() {
                    if e.file_name().to_string_lossy().starts_with("drhost-exec-") {
                        let _ = std::fs::remove_dir(e.path());
                    }
                }
            }
            let dir = base.join(format!("drhost-exec-{marker}"));
            if std::fs::create_dir(&dir).is_ok() {
                let procs = std::ffi::CString::new(
                    dir.join("cgroup.procs")
                        .into_os_string()
                        .into_encoded_bytes(),
                )
                .ok()?;
                return Some(Cgroup { dir, procs });
            }
        }
        None
    }

    /// Every process in the cgroup.
    fn members(&self) -> Vec<i32> {
        std::fs::read_to_string(self.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// SIGKILLs every member until none is left, then removes the cgroup.
    fn kill_and_remove(&self) {
        for _ in 0..50 {
            let members = self.members();
            if members.is_empty() {
                break;
            }
            for pid in members {
                // SAFETY: signals one process by pid; no memory involved.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        tracing::warn!("exec: could not remove {}", self.dir.display());
    }
}

/// Everything one `exec.run` started.
struct Started {
    pgid: Option<i32>,
    marker: String,
    cgroup: Option<Cgroup>,
    /// Kill everything when dropped.
    armed: bool,
}

impl Started {
    /// SIGKILLs the cgroup, the process group and every process carrying
    /// the marker, until none is left (a process may fork while the sweep
    /// runs).
    fn kill_all(&mut self) {
        self.armed = false;
        if let Some(cg) = self.cgroup.take() {
            cg.kill_and_remove();
        }
        if let Some(pgid) = self.pgid {
            // SAFETY: signals the process group created for this run; no memory involved.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
        let needle = format!("{MARKER}={}", self.marker);
        for _ in 0..50 {
            let found = marked(&needle);
            if found.is_empty() {
                return;
            }
            for pid in found {
                // SAFETY: signals one process by pid; no memory involved.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        tracing::warn!("exec: processes of run {} survived 50 sweeps", self.marker);
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        if self.armed {
            self.kill_all();
        }
    }
}

/// Live processes whose environment holds `needle` (`NAME=value`).
fn marked(needle: &str) -> Vec<i32> {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|v| v == needle.as_bytes()))
        })
        .filter_map(|pid| i32::try_from(pid).ok())
        .collect()
}

/// Reads a stream to its end, keeping the first `cap` bytes (as text).
async fn read_capped(stream: Option<impl AsyncRead + Unpin>, cap: usize) -> (String, bool) {
    let Some(mut s) = stream else {
        return (String::new(), false);
    };
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 16 << 10];
    let mut truncated = false;
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = cap.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
                truncated |= n > room;
            }
        }
    }
    (String::from_utf8_lossy(&kept).into_owned(), truncated)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;

    fn cap(toml: &str) -> ExecCap {
        ExecCap {
            grants: Policy::parse(toml).unwrap().exec,
            base_dir: None,
        }
    }

    #[tokio::test]
    async fn the_program_receives_the_resolved_path_and_nothing_unchecked() {
        let c = cap(
            "[exec.echo]\nprogram = \"/bin/echo\"\nargs = [\"*\", { path-under = \"/srv/data\" }]\n",
        );
        let args = |a: &str, b: &str| vec![a.to_string(), b.to_string()];
        let t = Duration::from_secs(10);
        let out = c
            .run("echo", &args("dump", "/srv/data/x/../y.sql"), t)
            .await
            .unwrap();
        assert_eq!(out.stdout, "dump /srv/data/y.sql\n");
        assert!(matches!(
            c.decide("echo", &args("-e", "/srv/data/y")),
            Decision::Deny { .. }
        ));
        // run checks again, whatever decide said.
        let err = c
            .run("echo", &args("dump", "/srv/data/../../etc/shadow"), t)
            .await
            .unwrap_err();
        assert!(matches!(err, CapError::Denied(_)), "{err:?}");
    }
}
