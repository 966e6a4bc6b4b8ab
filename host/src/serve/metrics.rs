//! The plan's metrics, computed from the state store over a window: what
//! `/metrics`, the alerts and `drhost report` all read.

use super::store::{
    BackupRow, JobRow, PluginRunRow, RecoveryRow, StateError, StateStore, VerificationRow,
};
use crate::backup::config::Config;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;

#[derive(Debug, Clone, Default, Serialize)]
pub struct SourceStats {
    pub backups_ok: u64,
    pub backups_failed: u64,
    pub verifications_ok: u64,
    pub verifications_failed: u64,
    /// The newest backup's outcome and numbers (in the window).
    pub last_backup_ok: Option<bool>,
    pub last_backup_error: String,
    pub last_backup_bytes: Option<i64>,
    pub last_backup_seconds: Option<f64>,
    pub last_verification_ok: Option<bool>,
    pub last_verification_failed: String,
    /// now − the recovery point of the newest verified backup (ever).
    pub recovery_point_s: Option<f64>,
    pub recovery_point_target_s: f64,
    /// A backup schedule exists for this source (the recovery point is watched).
    pub scheduled: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ComponentStats {
    pub kind: String,
    pub test: String,
    pub ok: bool,
    pub recovery_s: Option<f64>,
    pub rto_s: Option<i64>,
    pub at_ms: i64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    pub now_ms: i64,
    pub since_ms: i64,
    pub sources: BTreeMap<String, SourceStats>,
    /// The latest measured recovery per component.
    pub components: BTreeMap<String, ComponentStats>,
    /// Test occurrences (verify, restore-test, drill) due in the window,
    /// finished or missed, and how many succeeded.
    pub tests_due: u64,
    pub tests_succeeded: u64,
    /// (schedule, status) → count, in the window.
    #[serde(skip)]
    pub jobs: BTreeMap<(String, String), u64>,
    /// (scenario, outcome) → count.
    #[serde(skip)]
    pub plugin_runs: BTreeMap<(String, String), u64>,
    pub denials: u64,
    pub budget_overruns: u64,
    /// Schedule → newest success (ever).
    pub last_success_ms: BTreeMap<String, Option<i64>>,
    /// Schedule → when the state store first saw it.
    pub schedule_since_ms: BTreeMap<String, i64>,
    /// History behind the numbers, for reports.
    #[serde(skip)]
    pub history: History,
}

#[derive(Debug, Clone, Default)]
pub struct History {
    pub backups: Vec<BackupRow>,
    pub verifications: Vec<VerificationRow>,
    pub recoveries: Vec<RecoveryRow>,
    pub runs: Vec<PluginRunRow>,
    pub jobs: Vec<JobRow>,
}

pub fn ratio(ok: u64, all: u64) -> Option<f64> {
    (all > 0).then(|| ok as f64 / all as f64)
}

impl Snapshot {
    pub async fn take(
        store: &StateStore,
        config: &Config,
        now_ms: i64,
        window_ms: i64,
    ) -> Result<Snapshot, StateError> {
        let since_ms = now_ms.saturating_sub(window_ms);
        let backups = store.backups_since(since_ms).await?;
        let verifications = store.verifications_since(since_ms).await?;
        let recoveries = store.recoveries_since(since_ms).await?;
        let runs = store.plugin_runs_since(since_ms).await?;
        let jobs = store.jobs_since(since_ms).await?;
        let mut s = Snapshot {
            now_ms,
            since_ms,
            ..Snapshot::default()
        };
        for name in config.sources.keys() {
            let target = config.objectives.rpo_for(name).as_secs_f64();
            let newest = store.newest_verified(name).await?;
            let scheduled = config.schedule.values().any(|sc| {
                sc.job == super::config::JobKind::Backup && sc.source.as_deref() == Some(name)
            });
            s.sources.insert(
                name.clone(),
                SourceStats {
                    recovery_point_s: newest.map(|t| (now_ms - t).max(0) as f64 / 1000.0),
                    recovery_point_target_s: target,
                    scheduled,
                    ..SourceStats::default()
                },
            );
        }
        for b in &backups {
            let st = s.sources.entry(b.source.clone()).or_default();
            if b.ok {
                st.backups_ok += 1;
            } else {
                st.backups_failed += 1;
            }
            st.last_backup_ok = Some(b.ok);
            st.last_backup_error = b.error.clone();
            if b.ok {
                st.last_backup_bytes = Some(b.bytes);
                st.last_backup_seconds = Some(b.seconds);
            }
        }
        for v in &verifications {
            let st = s.sources.entry(v.source.clone()).or_default();
            if v.ok {
                st.verifications_ok += 1;
            } else {
                st.verifications_failed += 1;
            }
            st.last_verification_ok = Some(v.ok);
            st.last_verification_failed = v.failed.clone();
        }
        for r in &recoveries {
            s.components.insert(
                r.component.clone(),
                ComponentStats {
                    kind: r.component_kind.clone(),
                    test: r.test.clone(),
                    ok: r.ok,
                    recovery_s: r.seconds,
                    rto_s: r.rto_s,
                    at_ms: r.finished_ms,
                },
            );
        }
        for r in &runs {
            *s.plugin_runs
                .entry((r.scenario.clone(), r.outcome.clone()))
                .or_default() += 1;
            s.denials += u64::try_from(r.denied).unwrap_or(0);
            s.budget_overruns += u64::try_from(r.overruns).unwrap_or(0);
        }
        for j in &jobs {
            *s.jobs
                .entry((j.schedule.clone(), j.status.clone()))
                .or_default() += 1;
            if j.is_test && j.due_ms <= now_ms && j.status != "running" {
                s.tests_due += 1;
                if j.status == "succeeded" {
                    s.tests_succeeded += 1;
                }
            }
        }
        for name in config.schedule.keys() {
            s.last_success_ms
                .insert(name.clone(), store.last_success(name).await?);
            if let Ok(row) = store.schedule(name).await {
                s.schedule_since_ms.insert(name.clone(), row.since_ms);
            }
        }
        s.history = History {
            backups,
            verifications,
            recoveries,
            runs,
            jobs,
        };
        Ok(s)
    }

    pub fn backup_success(&self) -> (u64, u64) {
        self.sources.values().fold((0, 0), |(ok, all), s| {
            (ok + s.backups_ok, all + s.backups_ok + s.backups_failed)
        })
    }

    pub fn verification_success(&self) -> (u64, u64) {
        self.sources.values().fold((0, 0), |(ok, all), s| {
            (
                ok + s.verifications_ok,
                all + s.verifications_ok + s.verifications_failed,
            )
        })
    }

    /// The longest latest recovery among components of `kinds`.
    pub fn recovery_time(&self, kinds: &[&str]) -> Option<(String, f64)> {
        self.components
            .iter()
            .filter(|(_, c)| kinds.contains(&c.kind.as_str()))
            .filter_map(|(n, c)| c.recovery_s.map(|s| (n.clone(), s)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }

    /// The worst current recovery point among watched sources.
    pub fn worst_recovery_point(&self) -> Option<(String, f64)> {
        self.sources
            .iter()
            .filter(|(_, s)| s.scheduled)
            .filter_map(|(n, s)| s.recovery_point_s.map(|r| (n.clone(), r)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }
}

/// Escapes a Prometheus label value.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let l: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", label(v)))
            .collect();
        if l.is_empty() {
            let _ = writeln!(self.out, "{name} {value}");
        } else {
            let _ = writeln!(self.out, "{name}{{{}}} {value}", l.join(","));
        }
    }
}

/// Counters kept by the serving process itself (not in the state store).
#[derive(Debug, Default)]
pub struct ProcessCounters {
    pub ticks: std::sync::atomic::AtomicU64,
    pub alerts_sent: std::sync::atomic::AtomicU64,
    pub webhook_failures: std::sync::atomic::AtomicU64,
}

/// The Prometheus text exposition (version 0.0.4).
pub fn render(
    s: &Snapshot,
    running: &[String],
    firing: &[String],
    counters: &ProcessCounters,
) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let mut out = String::new();
    let mut f = Family { out: &mut out };
    let window = ((s.now_ms - s.since_ms) / 1000).to_string();
    let w = [("window_seconds", window.as_str())];

    f.head(
        "drhost_up",
        "gauge",
        "1 while drhost serve runs and reaches its state store.",
    );
    f.sample("drhost_up", &[], 1.0);

    f.head(
        "drhost_backups",
        "gauge",
        "Backups finished in the window, by source and result.",
    );
    for (name, st) in &s.sources {
        f.sample(
            "drhost_backups",
            &[("source", name), ("result", "ok")],
            st.backups_ok as f64,
        );
        f.sample(
            "drhost_backups",
            &[("source", name), ("result", "failed")],
            st.backups_failed as f64,
        );
    }
    f.head(
        "drhost_backup_success_ratio",
        "gauge",
        "Successful backups / all backups in the window (the plan: 0.999).",
    );
    if let Some(r) = {
        let (ok, all) = s.backup_success();
        ratio(ok, all)
    } {
        f.sample("drhost_backup_success_ratio", &w, r);
    }
    for (name, st) in &s.sources {
        if let Some(r) = ratio(st.backups_ok, st.backups_ok + st.backups_failed) {
            f.sample("drhost_backup_success_ratio", &[("source", name), w[0]], r);
        }
    }
    f.head(
        "drhost_verification_success_ratio",
        "gauge",
        "Passed verifications / all verifications in the window (the plan: 1).",
    );
    if let Some(r) = {
        let (ok, all) = s.verification_success();
        ratio(ok, all)
    } {
        f.sample("drhost_verification_success_ratio", &w, r);
    }
    for (name, st) in &s.sources {
        if let Some(r) = ratio(
            st.verifications_ok,
            st.verifications_ok + st.verifications_failed,
        ) {
            f.sample(
                "drhost_verification_success_ratio",
                &[("source", name), w[0]],
                r,
            );
        }
    }
    f.head(
        "drhost_recovery_point_seconds",
        "gauge",
        "Now minus the recovery point of the newest verified backup, per source.",
    );
    for (name, st) in &s.sources {
        if let Some(r) = st.recovery_point_s {
            f.sample("drhost_recovery_point_seconds", &[("source", name)], r);
        }
    }
    f.head(
        "drhost_recovery_point_target_seconds",
        "gauge",
        "The recovery point objective, per source.",
    );
    for (name, st) in &s.sources {
        f.sample(
            "drhost_recovery_point_target_seconds",
            &[("source", name)],
            st.recovery_point_target_s,
        );
    }
    f.head(
        "drhost_last_backup_bytes",
        "gauge",
        "Size of the newest successful backup, per source.",
    );
    for (name, st) in &s.sources {
        if let Some(b) = st.last_backup_bytes {
            f.sample("drhost_last_backup_bytes", &[("source", name)], b as f64);
        }
    }
    f.head(
        "drhost_last_backup_duration_seconds",
        "gauge",
        "Duration of the newest successful backup, per source.",
    );
    for (name, st) in &s.sources {
        if let Some(d) = st.last_backup_seconds {
            f.sample(
                "drhost_last_backup_duration_seconds",
                &[("source", name)],
                d,
            );
        }
    }
    f.head(
        "drhost_last_recovery_seconds",
        "gauge",
        "The latest measured recovery time (drill or restore test), per component.",
    );
    for (name, c) in &s.components {
        if let Some(r) = c.recovery_s {
            f.sample(
                "drhost_last_recovery_seconds",
                &[("component", name), ("kind", &c.kind), ("test", &c.test)],
                r,
            );
        }
    }
    f.head(
        "drhost_recovery_time_target_seconds",
        "gauge",
        "The recovery time objective, per component.",
    );
    for (name, c) in &s.components {
        if let Some(t) = c.rto_s {
            f.sample(
                "drhost_recovery_time_target_seconds",
                &[("component", name), ("kind", &c.kind)],
                t as f64,
            );
        }
    }
    f.head("drhost_test_completion_ratio", "gauge", "Test occurrences (verify, restore test, drill) that succeeded / all that came due in the window, missed ones included.");
    if let Some(r) = ratio(s.tests_succeeded, s.tests_due) {
        f.sample("drhost_test_completion_ratio", &w, r);
    }
    f.head(
        "drhost_jobs",
        "gauge",
        "Scheduled occurrences in the window, by schedule and status.",
    );
    for ((sched, status), n) in &s.jobs {
        f.sample(
            "drhost_jobs",
            &[("schedule", sched), ("status", status)],
            *n as f64,
        );
    }
    f.head(
        "drhost_job_running",
        "gauge",
        "1 while this host runs the schedule's job.",
    );
    for name in running {
        f.sample("drhost_job_running", &[("schedule", name)], 1.0);
    }
    f.head(
        "drhost_last_success_timestamp_seconds",
        "gauge",
        "When the schedule last succeeded (Unix time).",
    );
    for (name, t) in &s.last_success_ms {
        if let Some(t) = t {
            f.sample(
                "drhost_last_success_timestamp_seconds",
                &[("schedule", name)],
                *t as f64 / 1000.0,
            );
        }
    }
    f.head(
        "drhost_plugin_runs",
        "gauge",
        "Plugin runs (drills) in the window, by scenario and outcome.",
    );
    for ((scenario, outcome), n) in &s.plugin_runs {
        f.sample(
            "drhost_plugin_runs",
            &[("scenario", scenario), ("outcome", outcome)],
            *n as f64,
        );
    }
    f.head(
        "drhost_capability_denials",
        "gauge",
        "Capability calls denied by policy in the window's plugin runs.",
    );
    f.sample("drhost_capability_denials", &w, s.denials as f64);
    f.head(
        "drhost_budget_overruns",
        "gauge",
        "Steps over their time budget in the window's plugin runs.",
    );
    f.sample("drhost_budget_overruns", &w, s.budget_overruns as f64);
    f.head(
        "drhost_alert_firing",
        "gauge",
        "1 for each alert condition that holds.",
    );
    for c in firing {
        f.sample("drhost_alert_firing", &[("condition", c)], 1.0);
    }
    f.head(
        "drhost_scheduler_ticks_total",
        "counter",
        "Scheduler passes by this process.",
    );
    f.sample(
        "drhost_scheduler_ticks_total",
        &[],
        counters.ticks.load(Relaxed) as f64,
    );
    f.head(
        "drhost_alerts_sent_total",
        "counter",
        "Alerts and recovery notices sent by this process.",
    );
    f.sample(
        "drhost_alerts_sent_total",
        &[],
        counters.alerts_sent.load(Relaxed) as f64,
    );
    f.head(
        "drhost_webhook_failures_total",
        "counter",
        "Webhook deliveries that failed.",
    );
    f.sample(
        "drhost_webhook_failures_total",
        &[],
        counters.webhook_failures.load(Relaxed) as f64,
    );
    out
}
