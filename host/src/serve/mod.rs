//! `drhost serve`: runs the plan's schedules, keeps the state store, serves
//! `/health` and `/metrics`, and raises alerts. Several processes may share
//! one PostgreSQL state store; each occurrence then runs on exactly one.
//! docs/serve.md describes the rules; this module is their code.

pub mod alerts;
pub mod config;
pub mod http;
pub mod jobs;
pub mod metrics;
pub mod report;
pub mod scheduler;
pub mod store;

use crate::backup::config::Config;
use alerts::Alerter;
use metrics::{ProcessCounters, Snapshot};
use scheduler::{Clock, Scheduler, Tick};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use store::{AlertRow, StateError, StateStore};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
}

/// One serving process: its schedules, state store and alerting.
pub struct Daemon {
    pub config: Arc<Config>,
    pub store: StateStore,
    pub scheduler: Scheduler,
    alerter: Alerter,
    pub counters: ProcessCounters,
    /// Wakes the main loop when a job ends (alerts are checked then).
    job_ended: Arc<Notify>,
}

/// This process's name in leases and alerts: host name, pid, and a random
/// suffix (a restarted process is a different owner).
pub fn host_id() -> String {
    format!(
        "{}-{}-{:04x}",
        crate::hostname(),
        std::process::id(),
        rand::random::<u16>()
    )
}

impl Daemon {
    pub async fn new(
        config: Config,
        state_dir: PathBuf,
        clock: Arc<dyn Clock>,
        host: String,
    ) -> Result<Arc<Daemon>, ServeError> {
        let store = StateStore::for_config(&config, &state_dir).await?;
        Daemon::with_store(config, store, state_dir, clock, host)
    }

    pub fn with_store(
        config: Config,
        store: StateStore,
        state_dir: PathBuf,
        clock: Arc<dyn Clock>,
        host: String,
    ) -> Result<Arc<Daemon>, ServeError> {
        let config = Arc::new(config);
        let executor = Arc::new(jobs::Executor::new(
            config.clone(),
            store.clone(),
            state_dir,
        ));
        let mut scheduler =
            Scheduler::new(config.clone(), store.clone(), executor, clock, host.clone())
                .map_err(ServeError::Config)?;
        let job_ended = Arc::new(Notify::new());
        let notify = job_ended.clone();
        scheduler.on_job_end(Arc::new(move |_, _| notify.notify_one()));
        let alerter = Alerter::new(&config, host).map_err(ServeError::Config)?;
        Ok(Arc::new(Daemon {
            config,
            store,
            scheduler,
            alerter,
            counters: ProcessCounters::default(),
            job_ended,
        }))
    }

    pub async fn tick(&self) -> Result<Tick, StateError> {
        self.counters.ticks.fetch_add(1, Relaxed);
        self.scheduler.tick().await
    }

    pub async fn snapshot(&self) -> Result<Snapshot, StateError> {
        let now = self.scheduler.clock().now().timestamp_millis();
        let window = i64::try_from(self.config.serve.window.0.as_millis()).unwrap_or(i64::MAX);
        Snapshot::take(&self.store, &self.config, now, window).await
    }

    pub async fn check_alerts(&self) -> Result<Vec<AlertRow>, StateError> {
        let snapshot = self.snapshot().await?;
        self.alerter
            .check(&self.store, &snapshot, &self.config, &self.counters)
            .await
    }

    pub async fn metrics_text(&self) -> Result<String, StateError> {
        let snapshot = self.snapshot().await?;
        let firing: Vec<String> = self
            .store
            .alerts()
            .await?
            .into_iter()
            .filter(|a| a.firing)
            .map(|a| a.condition)
            .collect();
        Ok(metrics::render(
            &snapshot,
            &self.scheduler.running(),
            &firing,
            &self.counters,
        ))
    }

    /// Healthy when the state store answers.
    pub async fn health(&self) -> (bool, String) {
        let store = self.store.ping().await;
        let body = serde_json::json!({
            "status": if store.is_ok() { "ok" } else { "unavailable" },
            "host": self.scheduler.host(),
            "state": self.store.describe(),
            "state_error": store.as_ref().err().map(ToString::to_string),
            "schedules": self.config.schedule.len(),
            "running": self.scheduler.running(),
        });
        (store.is_ok(), format!("{body}\n"))
    }
}

/// The components a scenario declares (its `info`), to lock them before a
/// recovery. The plugin runs with no grants for this.
pub async fn scenario_components(
    runtime: &crate::runtime::Runtime,
    plugin: &std::path::Path,
) -> Result<Vec<String>, String> {
    let loaded = runtime.load(plugin).map_err(|e| e.to_string())?;
    let no_grants = Arc::new(crate::policy::Policy::deny_all());
    let probe = crate::orchestrator::read_info(runtime, &loaded, &no_grants)
        .await
        .map_err(|e| e.to_string())?;
    Ok(probe.info.components.into_iter().map(|c| c.name).collect())
}

/// Locks every key, or none: `Err(key)` names the one another recovery holds.
pub async fn lock_all(
    store: &StateStore,
    keys: &[String],
) -> Result<Result<Vec<store::RecoveryLock>, String>, StateError> {
    let mut held = Vec::new();
    for key in keys {
        match store.try_lock(key).await? {
            Some(lock) => held.push(lock),
            None => {
                for l in held {
                    l.release().await;
                }
                return Ok(Err(key.clone()));
            }
        }
    }
    Ok(Ok(held))
}

/// Releases locks taken with [`lock_all`].
pub async fn release_all(locks: Vec<store::RecoveryLock>) {
    for l in locks {
        l.release().await;
    }
}

/// How the main loop ended.
#[derive(Debug, Default)]
pub struct Stopped {
    /// Jobs stopped at a safe point because the grace period ran out.
    pub interrupted: Vec<String>,
}

/// Runs schedules, alerts and the HTTP endpoints until `shutdown` resolves
/// (SIGTERM, Ctrl-C), then lets running jobs finish within the grace period.
pub async fn run(
    daemon: Arc<Daemon>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> Stopped {
    let stop_http = CancellationToken::new();
    let http = tokio::spawn(http::serve(listener, daemon.clone(), stop_http.clone()));
    let serve = &daemon.config.serve;
    // Takeovers need someone to look: at least twice per lease.
    let look_every = (serve.lease.0 / 2).max(Duration::from_millis(200));
    let check_every = daemon.config.alerts.check_every.0;
    let mut next_check = tokio::time::Instant::now();
    tokio::pin!(shutdown);
    loop {
        if let Err(e) = daemon.tick().await {
            tracing::error!("scheduler: {e} (retrying)");
        }
        if tokio::time::Instant::now() >= next_check {
            if let Err(e) = daemon.check_alerts().await {
                tracing::error!("alerts: {e}");
            }
            next_check = tokio::time::Instant::now() + check_every;
        }
        let clock = daemon.scheduler.clock();
        let now = clock.now();
        let until_due = daemon
            .scheduler
            .next_due(now)
            .and_then(|t| (t - now).to_std().ok())
            .unwrap_or(look_every);
        let wait = until_due
            .min(look_every)
            .min(next_check.saturating_duration_since(tokio::time::Instant::now()));
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = daemon.job_ended.notified() => {
                next_check = tokio::time::Instant::now();
            }
            () = &mut shutdown => break,
        }
    }
    tracing::info!(
        "shutting down: waiting up to {:?} for {} running job(s)",
        serve.shutdown_grace.0,
        daemon.scheduler.running().len()
    );
    let interrupted = daemon.scheduler.shutdown(serve.shutdown_grace.0).await;
    if let Err(e) = daemon.check_alerts().await {
        tracing::warn!("alerts at shutdown: {e}");
    }
    stop_http.cancel();
    let _ = http.await;
    Stopped { interrupted }
}
