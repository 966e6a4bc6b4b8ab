//! Turns schedules into runs: claims due occurrences in the state store,
//! runs them, renews their leases, takes over the jobs of hosts that died.
//!
//! The rules (docs/serve.md):
//! * A schedule seen for the first time starts now: earlier occurrences are
//!   not run.
//! * An occurrence claimed within `late-after` of its time runs. When
//!   several came due since the last claim (downtime, or the previous run
//!   still going), the older ones are recorded as missed, and the latest one
//!   runs under `catch-up = "latest"` (the default) or is recorded as
//!   missed under `catch-up = "none"`.
//! * A schedule never has two runs at once: a claim requires that no run is
//!   in progress.
//! * A run whose lease expired is taken over by the next host that looks,
//!   up to `max-attempts` in all; then it is recorded as failed.

use super::config::{CatchUp, Schedule, Timetable};
use super::jobs::{Executor, JobContext, Outcome};
use super::store::{JobRow, StateError, StateStore};
use crate::backup::config::Config;
use chrono::{DateTime, TimeZone, Utc};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Where "now" comes from: the system clock, or a clock a test moves.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that only moves when told to.
pub struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> Self {
        ManualClock(Mutex::new(start))
    }
    pub fn set(&self, t: DateTime<Utc>) {
        if let Ok(mut g) = self.0.lock() {
            *g = t;
        }
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        self.0.lock().map(|g| *g).unwrap_or_else(|_| Utc::now())
    }
}

/// What one tick did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tick {
    /// `schedule@due` started by this host.
    pub started: Vec<String>,
    /// Occurrences recorded as missed.
    pub missed: Vec<String>,
    /// Runs taken over from a host whose lease expired.
    pub taken_over: Vec<String>,
    /// Runs given up after `max-attempts`.
    pub abandoned: Vec<String>,
}

struct Running {
    due_ms: i64,
    cancel: CancellationToken,
    handle: JoinHandle<()>,
}

/// Called after every job, with its schedule and outcome.
pub type AfterJob = Arc<dyn Fn(&str, &Outcome) + Send + Sync>;

pub struct Scheduler {
    config: Arc<Config>,
    store: StateStore,
    executor: Arc<Executor>,
    clock: Arc<dyn Clock>,
    host: String,
    timetables: BTreeMap<String, Timetable>,
    running: Arc<Mutex<HashMap<String, Running>>>,
    after_job: Option<AfterJob>,
}

pub fn job_id(schedule: &str, due_ms: i64) -> String {
    let due = Utc
        .timestamp_millis_opt(due_ms)
        .single()
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| due_ms.to_string());
    format!("{schedule}@{due}")
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// At most this many missed occurrences are listed one by one.
const MISSED_LISTED: usize = 1000;

impl Scheduler {
    pub fn new(
        config: Arc<Config>,
        store: StateStore,
        executor: Arc<Executor>,
        clock: Arc<dyn Clock>,
        host: String,
    ) -> Result<Self, String> {
        let mut timetables = BTreeMap::new();
        for (name, s) in &config.schedule {
            let tz = s.timezone.as_deref().unwrap_or(&config.serve.timezone);
            timetables.insert(
                name.clone(),
                Timetable::new(&s.cron, tz).map_err(|e| format!("[schedule.{name}] {e}"))?,
            );
        }
        Ok(Scheduler {
            config,
            store,
            executor,
            clock,
            host,
            timetables,
            running: Arc::default(),
            after_job: None,
        })
    }

    pub fn on_job_end(&mut self, f: AfterJob) {
        self.after_job = Some(f);
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The earliest next occurrence of any schedule after `now`.
    pub fn next_due(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.timetables
            .values()
            .filter_map(|t| t.next_after(now))
            .min()
    }

    /// Names of the schedules with a run in progress on this host.
    pub fn running(&self) -> Vec<String> {
        self.running
            .lock()
            .map(|r| r.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn lease_until(&self) -> i64 {
        self.clock.now().timestamp_millis() + millis(self.config.serve.lease.0)
    }

    /// Looks at every schedule once, as of the clock's now.
    pub async fn tick(&self) -> Result<Tick, StateError> {
        self.reap();
        let now = self.clock.now();
        // Schedules are independent: their claims go to the store side by
        // side (a few round trips each; the pool bounds how many at once).
        let mut pending = Vec::with_capacity(self.config.schedule.len());
        for (name, schedule) in &self.config.schedule {
            pending.push(self.tick_one(name, schedule, now));
        }
        let results = futures::future::join_all(pending).await;
        let mut tick = Tick::default();
        for r in results {
            let t = r?;
            tick.started.extend(t.started);
            tick.missed.extend(t.missed);
            tick.taken_over.extend(t.taken_over);
            tick.abandoned.extend(t.abandoned);
        }
        tick.started.sort();
        tick.missed.sort();
        tick.taken_over.sort();
        tick.abandoned.sort();
        Ok(tick)
    }

    /// One schedule's part of a tick.
    async fn tick_one(
        &self,
        name: &str,
        schedule: &Schedule,
        now: DateTime<Utc>,
    ) -> Result<Tick, StateError> {
        let now_ms = now.timestamp_millis();
        let mut tick = Tick::default();
        if self.is_running_here(name) {
            return Ok(tick);
        }
        let Some(table) = self.timetables.get(name) else {
            return Ok(tick);
        };
        let row = self.store.ensure_schedule(name, now_ms).await?;
        if let Some(due) = row.running_due_ms {
            let expired = row.lease_until_ms.is_none_or(|l| l < now_ms);
            if !expired {
                return Ok(tick);
            }
            if !self
                .store
                .take_over(&row, &self.host, self.lease_until())
                .await?
            {
                return Ok(tick);
            }
            let id = job_id(name, due);
            let attempt = row.attempts + 1;
            if attempt > i64::from(self.config.serve.max_attempts) {
                let detail = format!(
                    "abandoned: the lease expired {attempt} times (hosts died or were stopped while running it; last owner {})",
                    row.owner.as_deref().unwrap_or("unknown")
                );
                tracing::error!(schedule = %name, "{id}: {detail}");
                self.store
                    .job_finished(&id, "failed", now_ms, &detail)
                    .await?;
                self.store.release(name, due, &self.host).await?;
                tick.abandoned.push(id);
                return Ok(tick);
            }
            tracing::warn!(
                schedule = %name,
                "{id}: taking over from {} (lease expired), attempt {attempt}",
                row.owner.as_deref().unwrap_or("unknown")
            );
            self.start(
                name,
                schedule,
                due,
                attempt,
                "taken over after its host's lease expired",
            )
            .await?;
            tick.taken_over.push(id);
            return Ok(tick);
        }
        let from = Utc
            .timestamp_millis_opt(row.last_due_ms)
            .single()
            .unwrap_or(now);
        let Some(first) = table.next_after(from) else {
            return Ok(tick);
        };
        if first > now {
            return Ok(tick);
        }
        let latest = table.latest_at_or_before(now).unwrap_or(first).max(first);
        let mut missed = Vec::new();
        let mut t = first;
        while t < latest && missed.len() < MISSED_LISTED {
            missed.push(t);
            match table.next_after(t) {
                Some(n) => t = n,
                None => break,
            }
        }
        let on_time = now - latest
            <= chrono::Duration::from_std(self.config.serve.late_after.0).unwrap_or_default();
        let run = on_time || schedule.catch_up == CatchUp::Latest;
        let claimed = self
            .store
            .claim(
                name,
                row.last_due_ms,
                latest.timestamp_millis(),
                run,
                &self.host,
                self.lease_until(),
            )
            .await?;
        if !claimed {
            return Ok(tick); // another host claimed it first
        }
        if !run {
            missed.push(latest);
        }
        for m in &missed {
            let id = job_id(name, m.timestamp_millis());
            self.store
                .job_started(&JobRow {
                    id: id.clone(),
                    schedule: name.to_string(),
                    job: schedule.job.name().into(),
                    subject: subject(schedule),
                    due_ms: m.timestamp_millis(),
                    status: "missed".into(),
                    owner: None,
                    attempts: 0,
                    started_ms: None,
                    finished_ms: None,
                    is_test: schedule.job.is_test(),
                    detail: format!(
                        "not run: no run was possible at its time (noticed at {})",
                        now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    ),
                })
                .await?;
            tick.missed.push(id);
        }
        if !missed.is_empty() {
            tracing::warn!(schedule = %name, "{} occurrence(s) missed", missed.len());
        }
        if run {
            let note = if on_time {
                String::new()
            } else {
                format!(
                    "caught up: due {}, started {}",
                    latest.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                )
            };
            self.start(name, schedule, latest.timestamp_millis(), 1, &note)
                .await?;
            tick.started.push(job_id(name, latest.timestamp_millis()));
        }
        Ok(tick)
    }

    fn is_running_here(&self, name: &str) -> bool {
        self.running
            .lock()
            .map(|r| r.contains_key(name))
            .unwrap_or(false)
    }

    /// Forgets finished runs.
    fn reap(&self) {
        if let Ok(mut r) = self.running.lock() {
            r.retain(|_, run| !run.handle.is_finished());
        }
    }

    async fn start(
        &self,
        name: &str,
        schedule: &Schedule,
        due_ms: i64,
        attempt: i64,
        note: &str,
    ) -> Result<(), StateError> {
        let id = job_id(name, due_ms);
        let now_ms = self.clock.now().timestamp_millis();
        self.store
            .job_started(&JobRow {
                id: id.clone(),
                schedule: name.into(),
                job: schedule.job.name().into(),
                subject: subject(schedule),
                due_ms,
                status: "running".into(),
                owner: Some(self.host.clone()),
                attempts: attempt,
                started_ms: Some(now_ms),
                finished_ms: None,
                is_test: schedule.job.is_test(),
                detail: note.into(),
            })
            .await?;
        tracing::info!(schedule = %name, job = schedule.job.name(), "{id}: started (attempt {attempt})");
        let ctx = JobContext {
            id,
            schedule_name: name.into(),
            schedule: schedule.clone(),
            due: Utc
                .timestamp_millis_opt(due_ms)
                .single()
                .unwrap_or_else(Utc::now),
            attempt,
            note: note.to_string(),
        };
        let cancel = CancellationToken::new();
        let handle = tokio::spawn(run_one(RunArgs {
            ctx,
            store: self.store.clone(),
            executor: self.executor.clone(),
            clock: self.clock.clone(),
            host: self.host.clone(),
            lease: self.config.serve.lease.0,
            timeout: schedule.timeout.as_ref().map(|t| t.0),
            cancel: cancel.clone(),
            after: self.after_job.clone(),
        }));
        if let Ok(mut r) = self.running.lock() {
            r.insert(
                name.to_string(),
                Running {
                    due_ms,
                    cancel,
                    handle,
                },
            );
        }
        Ok(())
    }

    /// Waits for every run started so far.
    pub async fn wait_idle(&self) {
        let handles: Vec<JoinHandle<()>> = match self.running.lock() {
            Ok(mut r) => r.drain().map(|(_, run)| run.handle).collect(),
            Err(_) => Vec::new(),
        };
        for h in handles {
            let _ = h.await;
        }
    }

    /// Shutdown: waits up to `grace` for running jobs, then stops the rest
    /// at their next await point. Stopped runs are recorded as interrupted
    /// and their leases expire at once, so another host (or this one, when
    /// it comes back) takes them over.
    pub async fn shutdown(&self, grace: Duration) -> Vec<String> {
        let runs: Vec<(String, Running)> = match self.running.lock() {
            Ok(mut r) => r.drain().collect(),
            Err(_) => Vec::new(),
        };
        let deadline = tokio::time::Instant::now() + grace;
        let mut stopped = Vec::new();
        for (name, mut run) in runs {
            if tokio::time::timeout_at(deadline, &mut run.handle)
                .await
                .is_ok()
            {
                continue;
            }
            run.cancel.cancel();
            let _ = run.handle.await;
            stopped.push(job_id(&name, run.due_ms));
        }
        stopped
    }
}

fn subject(s: &Schedule) -> String {
    if let Some(src) = &s.source {
        return src.clone();
    }
    if let Some(p) = &s.scenario {
        return p.display().to_string();
    }
    s.command
        .first()
        .cloned()
        .unwrap_or_else(|| s.job.name().into())
}

struct RunArgs {
    ctx: JobContext,
    store: StateStore,
    executor: Arc<Executor>,
    clock: Arc<dyn Clock>,
    host: String,
    lease: Duration,
    timeout: Option<Duration>,
    cancel: CancellationToken,
    after: Option<AfterJob>,
}

enum End {
    Done(Result<Outcome, StateError>),
    TimedOut,
    Cancelled,
    LeaseLost,
}

/// Runs a job while renewing its lease; records how it ended.
async fn run_one(a: RunArgs) {
    let name = a.ctx.schedule_name.clone();
    let due_ms = a.ctx.due.timestamp_millis();
    let id = a.ctx.id.clone();
    let job = a.executor.run(&a.ctx);
    tokio::pin!(job);
    let renew_every = (a.lease / 3).max(Duration::from_millis(200));
    let mut renew = tokio::time::interval(renew_every);
    renew.tick().await;
    let deadline = async {
        match a.timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let end = loop {
        tokio::select! {
            r = &mut job => break End::Done(r),
            () = &mut deadline => break End::TimedOut,
            () = a.cancel.cancelled() => break End::Cancelled,
            _ = renew.tick() => {
                let until = a.clock.now().timestamp_millis() + millis(a.lease);
                match a.store.renew(&name, due_ms, &a.host, until).await {
                    Ok(true) => {}
                    Ok(false) => break End::LeaseLost,
                    Err(e) => tracing::warn!("{id}: renewing the lease: {e}"),
                }
            }
        }
    };
    let now_ms = a.clock.now().timestamp_millis();
    let (status, outcome) = match end {
        End::Done(Ok(o)) => (if o.ok { "succeeded" } else { "failed" }, o),
        End::Done(Err(e)) => (
            "failed",
            Outcome {
                ok: false,
                detail: format!("state store: {e}"),
            },
        ),
        End::TimedOut => (
            "failed",
            Outcome {
                ok: false,
                detail: format!(
                    "timed out after {}s and stopped",
                    a.timeout.map(|t| t.as_secs()).unwrap_or(0)
                ),
            },
        ),
        End::Cancelled => (
            "interrupted",
            Outcome {
                ok: false,
                detail: "stopped by shutdown; another host (or this one on restart) runs it again"
                    .into(),
            },
        ),
        End::LeaseLost => {
            // Another host took the job over: it records the outcome.
            tracing::warn!("{id}: lease lost to another host; stopped");
            return;
        }
    };
    match status {
        "succeeded" => tracing::info!(schedule = %name, "{id}: succeeded: {}", outcome.detail),
        _ => tracing::error!(schedule = %name, "{id}: {status}: {}", outcome.detail),
    }
    let detail = match a.ctx.note.as_str() {
        "" => outcome.detail.clone(),
        note => format!("{note}; {}", outcome.detail),
    };
    if let Err(e) = a.store.job_finished(&id, status, now_ms, &detail).await {
        tracing::error!("{id}: recording the outcome: {e}");
    }
    let released = if status == "interrupted" {
        // Expire the lease now rather than release: the occurrence is run again.
        a.store.renew(&name, due_ms, &a.host, 0).await
    } else {
        a.store.release(&name, due_ms, &a.host).await
    };
    if let Err(e) = released {
        tracing::error!("{id}: releasing the schedule: {e}");
    }
    if let Some(f) = &a.after {
        f(&name, &outcome);
    }
}
