//! `drhost serve` and `drhost report`: the command-line face of `drhost::serve`.

use anyhow::Context;
use drhost::backup::config::Config;
use drhost::policy::DurationText;
use drhost::serve::report::DrReport;
use drhost::serve::scheduler::{Clock, SystemClock};
use drhost::serve::{self, Daemon};
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn load(config: &Path) -> anyhow::Result<Config> {
    Config::load(config).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Resolves when SIGTERM or SIGINT arrives.
async fn termination() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received"),
            }
        }
        Err(e) => {
            tracing::warn!("cannot watch SIGTERM ({e}); Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

pub async fn serve(
    config_path: &Path,
    state_dir: PathBuf,
    listen: Option<String>,
    list: bool,
) -> anyhow::Result<i32> {
    let mut config = load(config_path)?;
    if let Some(addr) = listen {
        config.serve.listen = addr;
    }
    if list {
        print!("{}", schedule_listing(&config)?);
        return Ok(0);
    }
    config
        .check_secrets()
        .map_err(|e| anyhow::anyhow!("{}: {e}", config_path.display()))?;
    let host = serve::host_id();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let daemon = Daemon::new(config, state_dir, clock, host.clone()).await?;
    let addr = daemon.config.serve.listen.clone();
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|source| serve::ServeError::Listen {
            addr: addr.clone(),
            source,
        })?;
    let bound = listener.local_addr().map(|a| a.to_string()).unwrap_or(addr);
    tracing::info!(
        "drhost serve {host}: {} schedule(s), state {}, http://{bound}/metrics",
        daemon.config.schedule.len(),
        daemon.store.describe()
    );
    let stopped = serve::run(daemon, listener, termination()).await;
    if stopped.interrupted.is_empty() {
        tracing::info!("stopped; no job was interrupted");
    } else {
        tracing::warn!(
            "stopped; interrupted at a safe point (to be run again): {}",
            stopped.interrupted.join(", ")
        );
    }
    Ok(0)
}

/// `drhost serve --list`: each schedule and its next three times.
fn schedule_listing(config: &Config) -> anyhow::Result<String> {
    use std::fmt::Write;
    let now = chrono::Utc::now();
    let mut out = String::new();
    for (name, s) in &config.schedule {
        let tz = s.timezone.as_deref().unwrap_or(&config.serve.timezone);
        let table = serve::config::Timetable::new(&s.cron, tz).map_err(anyhow::Error::msg)?;
        let mut next = Vec::new();
        let mut t = now;
        for _ in 0..3 {
            match table.next_after(t) {
                Some(n) => {
                    next.push(n.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
                    t = n;
                }
                None => break,
            }
        }
        let _ = writeln!(
            out,
            "{name}: {} \"{}\" ({tz}) next: {}",
            s.job.name(),
            s.cron,
            next.join(", ")
        );
    }
    Ok(out)
}

pub async fn report(
    config_path: &Path,
    state_dir: PathBuf,
    since: &str,
    json: bool,
    html: bool,
    out: Option<PathBuf>,
) -> anyhow::Result<i32> {
    let config = load(config_path)?;
    let window = DurationText::parse(since).map_err(anyhow::Error::msg)?;
    let store = serve::store::StateStore::for_config(&config, &state_dir).await?;
    let now = chrono::Utc::now().timestamp_millis();
    let snapshot = serve::metrics::Snapshot::take(
        &store,
        &config,
        now,
        i64::try_from(window.0.as_millis()).unwrap_or(i64::MAX),
    )
    .await?;
    let report = DrReport::build(snapshot, &config);
    let text = if json {
        serde_json::to_string_pretty(&report)? + "\n"
    } else if html {
        report.html()
    } else {
        report.markdown()
    };
    match out {
        Some(path) => {
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?
        }
        None => print!("{text}"),
    }
    Ok(if report.all_met() { 0 } else { 3 })
}

/// When drhost.toml exists and names a state store: locks on the plugin's
/// components for the length of a recovery. `Ok(None)`: no state store, no
/// locks (one host). An error when another recovery holds one.
pub async fn recovery_locks(
    config_path: &Path,
    state_dir: &Path,
    runtime: &drhost::runtime::Runtime,
    plugin: &Path,
) -> anyhow::Result<Option<Vec<serve::store::RecoveryLock>>> {
    if !config_path.exists() {
        return Ok(None);
    }
    let config = load(config_path)?;
    if config.state.is_none() {
        return Ok(None);
    }
    let store = serve::store::StateStore::for_config(&config, state_dir).await?;
    let names = serve::scenario_components(runtime, plugin)
        .await
        .map_err(anyhow::Error::msg)?;
    let keys: Vec<String> = names.iter().map(|n| format!("component:{n}")).collect();
    match serve::lock_all(&store, &keys).await? {
        Ok(locks) => Ok(Some(locks)),
        Err(held) => anyhow::bail!(
            "another recovery holds the lock on {held} (state store {}); not recovering it twice at once",
            store.describe()
        ),
    }
}
