//! `exec`: allow-listed programs. The grant names the exact program and a
//! pattern per argument: a `*` never matches a `.`/`..` segment, a control
//! character or (unless the grant allows options) a leading `-`, and a
//! `path-under` argument is resolved as text and passed resolved. No shell
//! is involved, the environment is empty but for PATH and what the grant
//! sets, output is capped, and a program that outlives its timeout (or the
//! step's budget) is killed with its whole process group.

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
        let mut cmd = tokio::process::Command::new(&g.program);
        cmd.args(&args)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
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
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|e| CapError::Unavailable(format!("starting {}: {e}", g.program.display())))?;
        let cap = usize::try_from(g.max_output.0).unwrap_or(usize::MAX);
        let out = tokio::spawn(read_capped(child.stdout.take(), cap));
        let err = tokio::spawn(read_capped(child.stderr.take(), cap));
        let limit = g.timeout.0.min(remaining);
        let exit_code = match tokio::time::timeout(limit, child.wait()).await {
            Ok(Ok(status)) => status.code(),
            Ok(Err(e)) => return Err(CapError::Unavailable(format!("waiting for {name}: {e}"))),
            Err(_) => {
                if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
                    // SAFETY: signals the process group we created above; no memory involved.
                    unsafe { libc::kill(-pid, libc::SIGKILL) };
                }
                let _ = child.wait().await;
                tracing::warn!("exec {name}: killed after {limit:?}");
                None
            }
        };
        let (stdout, t1) = out.await.unwrap_or_default();
        let (stderr, t2) = err.await.unwrap_or_default();
        Ok(ExecOutput {
            exit_code,
            stdout,
            stderr,
            truncated: t1 || t2,
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        })
    }
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
