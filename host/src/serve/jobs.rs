//! What each kind of scheduled job does, and what it records.
//!
//! Every job ends in an outcome (succeeded or failed, with one line saying
//! why) and leaves its evidence in the state store: backups, verifications,
//! recovery times, plugin runs. A job is a future: dropping it (shutdown, a
//! lost lease, a timeout) stops it at its next await point; a backup stopped
//! that way never wrote its manifest, so it is not complete anywhere.

use super::config::{JobKind, Schedule};
use super::store::{BackupRow, PluginRunRow, RecoveryRow, StateError, StateStore, VerificationRow};
use crate::backup::config::{Config, SourceKind};
use crate::backup::manifest::Kind;
use crate::backup::{Backups, CreateReport, VerifyReport};
use crate::runtime::Runtime;
use chrono::{DateTime, Utc};
use rand::seq::SliceRandom;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::OnceCell;

/// One occurrence of a schedule, being run.
#[derive(Debug, Clone)]
pub struct JobContext {
    pub id: String,
    pub schedule_name: String,
    pub schedule: Schedule,
    pub due: DateTime<Utc>,
    pub attempt: i64,
    /// Why it runs when it does (caught up, taken over); kept in the record.
    pub note: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub ok: bool,
    pub detail: String,
}

impl Outcome {
    fn ok(detail: impl Into<String>) -> Self {
        Outcome {
            ok: true,
            detail: detail.into(),
        }
    }
    fn failed(detail: impl Into<String>) -> Self {
        Outcome {
            ok: false,
            detail: detail.into(),
        }
    }
}

/// Runs jobs; shared by every scheduled occurrence of one `serve`.
pub struct Executor {
    config: Arc<Config>,
    store: StateStore,
    state_dir: PathBuf,
    backups: OnceCell<Arc<Backups>>,
    runtime: OnceCell<Arc<Runtime>>,
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn rfc3339_ms(s: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

impl Executor {
    pub fn new(config: Arc<Config>, store: StateStore, state_dir: PathBuf) -> Self {
        Executor {
            config,
            store,
            state_dir,
            backups: OnceCell::new(),
            runtime: OnceCell::new(),
        }
    }

    async fn backups(&self) -> Result<&Arc<Backups>, String> {
        self.backups
            .get_or_try_init(|| async {
                Backups::open((*self.config).clone(), self.state_dir.clone())
                    .await
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            })
            .await
    }

    async fn runtime(&self) -> Result<&Arc<Runtime>, String> {
        self.runtime
            .get_or_try_init(|| async {
                Runtime::new(Some(self.state_dir.join("compiled")))
                    .map(Arc::new)
                    .map_err(|e| format!("{e:#}"))
            })
            .await
    }

    /// Runs the job to its end and records its evidence. Errors from the
    /// state store are the only `Err`: the job's own failures are outcomes.
    pub async fn run(&self, job: &JobContext) -> Result<Outcome, StateError> {
        let s = &job.schedule;
        match s.job {
            JobKind::Backup => self.backup(job).await,
            JobKind::Verify => self.verify(job).await,
            JobKind::Prune => Ok(self.prune().await),
            JobKind::RestoreTest => self.restore_test(job).await,
            JobKind::Drill => self.drill(job).await,
            JobKind::Command => Ok(command(job).await),
        }
    }

    async fn backup(&self, job: &JobContext) -> Result<Outcome, StateError> {
        let source = job.schedule.source.clone().unwrap_or_default();
        let kind: Kind = match job.schedule.kind.as_deref().unwrap_or("full").parse() {
            Ok(k) => k,
            Err(e) => return Ok(Outcome::failed(e)),
        };
        let clock = std::time::Instant::now();
        let result = match self.backups().await {
            Ok(b) => b.create(&source, kind).await.map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        let row = backup_row(
            &job.id,
            &source,
            kind,
            result.as_ref().map_err(String::as_str),
            clock.elapsed().as_secs_f64(),
        );
        let outcome = match (&result, row.ok) {
            (Ok(report), true) => Outcome::ok(format!(
                "backup {} of {source}: {} bytes in {:.1} s",
                report.manifest.id, row.bytes, row.seconds
            )),
            (Ok(report), false) => Outcome::failed(format!(
                "backup {} of {source} incomplete on: {}",
                report.manifest.id, row.error
            )),
            (Err(e), _) => Outcome::failed(format!("backup of {source}: {e}")),
        };
        self.store.record_backup(&row).await?;
        Ok(outcome)
    }

    /// The latest backup, and one older backup picked at random: a backup
    /// that went bad after it was first checked is found eventually.
    async fn verify(&self, job: &JobContext) -> Result<Outcome, StateError> {
        let source = job.schedule.source.clone().unwrap_or_default();
        let backups = match self.backups().await {
            Ok(b) => b,
            Err(e) => return Ok(Outcome::failed(e)),
        };
        let listed = match backups.list(Some(&source)).await {
            Ok(l) => l,
            Err(e) => return Ok(Outcome::failed(format!("listing {source}: {e}"))),
        };
        let mut ids: Vec<String> = listed.iter().map(|(_, m)| m.id.clone()).collect();
        ids.sort();
        ids.dedup();
        let Some(latest) = ids.last().cloned() else {
            return Ok(Outcome::failed(format!("no backup of {source} to verify")));
        };
        let mut chosen = vec![latest];
        if let Some(older) = ids[..ids.len() - 1].choose(&mut rand::thread_rng()) {
            chosen.push(older.clone());
        }
        let mut failures = Vec::new();
        let mut checked = 0;
        for id in &chosen {
            let reports = match backups.verify(&source, id, &[]).await {
                Ok(r) => r,
                Err(e) => {
                    failures.push(format!("{id}: {e}"));
                    continue;
                }
            };
            let covers = listed
                .iter()
                .find(|(_, m)| &m.id == id)
                .and_then(|(_, m)| rfc3339_ms(&m.covers.until));
            for row in verification_rows(&job.id, &source, covers, &reports) {
                checked += 1;
                if !row.ok {
                    failures.push(format!("{id} on {}: {}", row.target, row.failed));
                }
                self.store.record_verification(&row).await?;
            }
        }
        Ok(if failures.is_empty() {
            Outcome::ok(format!(
                "verified {} ({checked} checklists passed)",
                chosen.join(" and ")
            ))
        } else {
            Outcome::failed(format!("verification failed: {}", failures.join(" | ")))
        })
    }

    async fn prune(&self) -> Outcome {
        let backups = match self.backups().await {
            Ok(b) => b,
            Err(e) => return Outcome::failed(e),
        };
        match backups.prune(false).await {
            Ok(r) => Outcome::ok(format!(
                "deleted {} backups, kept {}",
                r.deleted.len(),
                r.kept.len()
            )),
            Err(e) => Outcome::failed(format!("prune: {e}")),
        }
    }

    async fn restore_test(&self, job: &JobContext) -> Result<Outcome, StateError> {
        let source = job.schedule.source.clone().unwrap_or_default();
        let to = job.schedule.to.clone().unwrap_or_default();
        let Some(lock) = self.store.try_lock(&format!("source:{to}")).await? else {
            return Ok(Outcome::failed(format!(
                "another recovery holds source {to}; not restoring into it at the same time"
            )));
        };
        let clock = std::time::Instant::now();
        let result = match self.backups().await {
            Ok(b) => b
                .restore(&source, "latest", &to, None, None)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        lock.release().await;
        let kind = match self.config.sources.get(&source).map(|s| s.kind) {
            Some(SourceKind::Objects) => "data",
            _ => "database",
        };
        let rto = if kind == "database" {
            self.config.objectives.recovery_time_database.0
        } else {
            self.config.objectives.recovery_time_application.0
        };
        let (ok, seconds, outcome) = match result {
            Ok(r) => (
                true,
                r.seconds,
                Outcome::ok(format!(
                    "restored {} of {source} into {to}: {} tables, {} rows in {:.1} s",
                    r.id, r.tables, r.rows, r.seconds
                )),
            ),
            Err(e) => (
                false,
                clock.elapsed().as_secs_f64(),
                Outcome::failed(format!("restore test of {source} into {to}: {e}")),
            ),
        };
        self.store
            .record_recovery(&RecoveryRow {
                job_id: job.id.clone(),
                component: source,
                component_kind: kind.into(),
                test: "restore-test".into(),
                ok,
                seconds: Some(seconds),
                rto_s: i64::try_from(rto.as_secs()).ok(),
                rpo_achieved_s: None,
                rpo_s: None,
                finished_ms: ms(Utc::now()),
            })
            .await?;
        Ok(outcome)
    }

    async fn drill(&self, job: &JobContext) -> Result<Outcome, StateError> {
        let Some(path) = &job.schedule.scenario else {
            return Ok(Outcome::failed("no scenario"));
        };
        let example = match crate::drill::Example::load(&self.config.resolve(path)) {
            Ok(e) => e,
            Err(e) => return Ok(Outcome::failed(e.to_string())),
        };
        let runtime = match self.runtime().await {
            Ok(r) => r.clone(),
            Err(e) => return Ok(Outcome::failed(e)),
        };
        // Two recoveries never touch the same component at once, on any host.
        let mut keys = vec![format!("scenario:{}", example.name)];
        match super::scenario_components(&runtime, &example.plugin).await {
            Ok(names) => keys.extend(names.into_iter().map(|n| format!("component:{n}"))),
            Err(e) => return Ok(Outcome::failed(format!("drill {}: {e}", example.name))),
        }
        let locks = match super::lock_all(&self.store, &keys).await? {
            Ok(l) => l,
            Err(held) => {
                return Ok(Outcome::failed(format!(
                    "another recovery holds {held}; not drilling {} at the same time",
                    example.name
                )));
            }
        };
        let out = self.state_dir.join("runs");
        let result = example.drill(&runtime, &out, &self.state_dir).await;
        super::release_all(locks).await;
        let now = ms(Utc::now());
        let report = match result {
            Ok(r) => r,
            Err(e) => return Ok(Outcome::failed(format!("drill {}: {e}", example.name))),
        };
        let overruns = report.steps.iter().filter(|s| s.over_budget).count();
        self.store
            .record_plugin_run(&PluginRunRow {
                job_id: job.id.clone(),
                run_id: report.run_id.clone(),
                scenario: report.scenario.clone(),
                outcome: report.outcome.clone(),
                calls: i64::try_from(report.calls).unwrap_or(i64::MAX),
                denied: i64::try_from(report.denied).unwrap_or(i64::MAX),
                overruns: i64::try_from(overruns).unwrap_or(i64::MAX),
                audit_log: report.audit_log.display().to_string(),
                finished_ms: now,
            })
            .await?;
        for c in &report.components {
            self.store
                .record_recovery(&RecoveryRow {
                    job_id: job.id.clone(),
                    component: c.name.clone(),
                    component_kind: c.kind.clone(),
                    test: "drill".into(),
                    ok: c.status != "failed" && c.status != "undetected",
                    seconds: c.recovery_s,
                    rto_s: Some(i64::from(c.rto_s)),
                    rpo_achieved_s: c.achieved_rpo_s,
                    rpo_s: Some(i64::from(c.rpo_s)),
                    finished_ms: now,
                })
                .await?;
        }
        let detail = format!(
            "drill {}: {} (exit {}), audit {}",
            example.name,
            report.outcome,
            report.exit_code,
            report.audit_log.display()
        );
        Ok(if report.exit_code == 0 {
            Outcome::ok(detail)
        } else {
            Outcome::failed(detail)
        })
    }
}

/// `job = "command"`: the program with its arguments, no shell. Told which
/// occurrence it is through `DRHOST_JOB_ID`, `DRHOST_DUE` and `DRHOST_ATTEMPT`.
async fn command(job: &JobContext) -> Outcome {
    let Some((program, args)) = job.schedule.command.split_first() else {
        return Outcome::failed("empty command");
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env("DRHOST_JOB_ID", &job.id)
        .env(
            "DRHOST_DUE",
            job.due.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        )
        .env("DRHOST_ATTEMPT", job.attempt.to_string())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = match cmd.output().await {
        Ok(o) => o,
        Err(e) => return Outcome::failed(format!("cannot start {program}: {e}")),
    };
    let tail = |b: &[u8]| {
        let text = String::from_utf8_lossy(b);
        let lines: Vec<&str> = text.lines().rev().take(3).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
    };
    if out.status.success() {
        Outcome::ok(format!("{program}: {}", tail(&out.stdout)))
    } else {
        Outcome::failed(format!("{program}: {}: {}", out.status, tail(&out.stderr)))
    }
}

/// The record of a backup attempt (`result`: the report, or why it failed).
pub fn backup_row(
    job_id: &str,
    source: &str,
    kind: Kind,
    result: Result<&CreateReport, &str>,
    elapsed_s: f64,
) -> BackupRow {
    let mut row = BackupRow {
        job_id: job_id.into(),
        source: source.into(),
        kind: kind.to_string(),
        backup_id: None,
        ok: false,
        bytes: 0,
        seconds: elapsed_s,
        covers_ms: None,
        finished_ms: ms(Utc::now()),
        error: String::new(),
    };
    match result {
        Ok(report) => {
            row.backup_id = Some(report.manifest.id.clone());
            row.bytes = i64::try_from(report.manifest.ciphertext.size).unwrap_or(i64::MAX);
            row.seconds = report.seconds;
            row.covers_ms = rfc3339_ms(&report.manifest.covers.until);
            let failed: Vec<String> = report
                .targets
                .iter()
                .filter_map(|t| t.error.as_ref().map(|e| format!("{}: {e}", t.target)))
                .collect();
            row.ok = failed.is_empty();
            row.error = failed.join("; ");
        }
        Err(e) => row.error = e.into(),
    }
    row
}

/// The records of one backup's checklists, one per target. `covers_ms` is
/// the backup's recovery point.
pub fn verification_rows(
    job_id: &str,
    source: &str,
    covers_ms: Option<i64>,
    reports: &[VerifyReport],
) -> Vec<VerificationRow> {
    reports
        .iter()
        .map(|r| VerificationRow {
            job_id: job_id.into(),
            source: source.into(),
            backup_id: r.id.clone(),
            target: r.target.clone(),
            ok: r.passed(),
            covers_ms,
            failed: r
                .checks
                .iter()
                .filter(|c| c.status == crate::backup::Status::Fail)
                .map(|c| format!("{}: {}", c.name, c.detail))
                .collect::<Vec<_>>()
                .join("; "),
            finished_ms: ms(Utc::now()),
        })
        .collect()
}
