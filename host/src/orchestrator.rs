//! Runs a scenario: validate its metadata, run detect, and if something was
//! detected contain → recover → verify; measure each step against its budget
//! and each component's recovery time against its RTO; record everything.

use crate::audit::{self, AuditWriter};
use crate::bindings::{Finding, Outcome, Phase, ScenarioInfo};
use crate::caps::{Caps, Gate};
use crate::policy::{Limits, Policy};
use crate::runtime::{CallFailure, LoadError, Plugin, Runtime};
use crate::text::terminal;
use serde::Serialize;
use serde_json::{Map, Value, json};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Documented exit codes of `drhost run`.
pub mod exit {
    pub const OK: i32 = 0;
    pub const FAILED: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const TARGET_MISSED: i32 = 3;
    pub const INVALID_PLUGIN: i32 = 4;
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("invalid plugin: {0}")]
    Metadata(String),
    #[error("invalid plugin: {0}")]
    Info(CallFailure),
    #[error("{0}")]
    Config(String),
}

impl RunError {
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Load(_) | RunError::Metadata(_) | RunError::Info(_) => exit::INVALID_PLUGIN,
            RunError::Config(_) => exit::USAGE,
        }
    }
}

pub struct RunOptions {
    pub policy: Policy,
    pub out_dir: PathBuf,
    pub state_dir: PathBuf,
    /// Run only the steps of this phase.
    pub phase: Option<Phase>,
    /// Plan mode: mutating capability calls are recorded, not executed.
    pub plan: bool,
    /// The backup engine (drhost.toml), for plugins granted `[backup.*]`.
    pub backups: Option<Arc<crate::backup::Backups>>,
    /// A drill: run the inject steps first (sandbox grants only), then
    /// measure detection, recovery and the recovery point achieved.
    pub drill: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepResult {
    pub id: String,
    pub phase: String,
    pub component: String,
    pub outcome: String,
    pub detail: String,
    pub findings: Vec<(String, String)>,
    /// When the step started, from the start of the run.
    pub started_ms: u64,
    pub duration_ms: u64,
    pub budget_s: u32,
    pub over_budget: bool,
    #[serde(skip)]
    pub ended: Option<Instant>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ComponentResult {
    pub name: String,
    /// database, application, storage, … (as the scenario declares it).
    pub kind: String,
    pub rto_s: u32,
    pub rpo_s: u32,
    /// healthy, recovered, failed; in a drill also undetected
    pub status: String,
    /// In a drill: from the end of the injection to the step that detected it.
    pub detection_s: Option<f64>,
    /// Detection (in a drill: the injection) to the last verify step.
    pub recovery_s: Option<f64>,
    pub rto_met: Option<bool>,
    /// In a drill: the newest data at the disaster (`data-at-disaster-ms`
    /// of an inject step) minus the newest data after recovery
    /// (`data-recovered-ms` of a later step), in seconds.
    pub achieved_rpo_s: Option<f64>,
    pub rpo_met: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub run_id: String,
    pub scenario: String,
    pub scenario_version: String,
    pub component_sha256: String,
    /// healthy, recovered, failed, target-missed
    pub outcome: String,
    pub exit_code: i32,
    pub steps: Vec<StepResult>,
    pub components: Vec<ComponentResult>,
    pub audit_log: PathBuf,
    pub calls: u64,
    pub denied: u64,
    /// recover (a run), a phase name, or drill.
    pub mode: String,
    /// The scenario's description, for reports.
    pub description: String,
    /// Wall-clock start, RFC 3339.
    pub started_at: String,
    pub duration_ms: u64,
}

/// Finding keys a drill reads the recovery point from.
pub const DATA_AT_DISASTER: &str = "data-at-disaster-ms";
pub const DATA_RECOVERED: &str = "data-recovered-ms";

pub fn kind_name(k: crate::bindings::ComponentKind) -> &'static str {
    use crate::bindings::ComponentKind as K;
    match k {
        K::Database => "database",
        K::Application => "application",
        K::Storage => "storage",
        K::Network => "network",
        K::Data => "data",
        K::Security => "security",
        K::Other => "other",
    }
}

pub fn priority_name(p: crate::bindings::Priority) -> &'static str {
    use crate::bindings::Priority as P;
    match p {
        P::P0 => "P0",
        P::P1 => "P1",
        P::P2 => "P2",
        P::P3 => "P3",
    }
}

pub fn phase_name(p: Phase) -> &'static str {
    crate::policy::PhaseName::from(p).as_str()
}

pub fn parse_phase(s: &str) -> Option<Phase> {
    Some(match s {
        "detect" => Phase::Detect,
        "contain" => Phase::Contain,
        "backup" => Phase::Backup,
        "recover" => Phase::Recover,
        "verify" => Phase::Verify,
        "inject" => Phase::Inject,
        _ => return None,
    })
}

/// Checks what `info` returned: unique step ids, known components, budgets
/// within the policy's `[limits] step-seconds`.
pub fn validate_info(info: &ScenarioInfo, limits: &Limits) -> Result<(), String> {
    if info.name.trim().is_empty() {
        return Err("the scenario has no name".into());
    }
    if info.steps.is_empty() {
        return Err(format!(
            "scenario {} declares no steps",
            terminal(&info.name)
        ));
    }
    // Names and ids end up in tables, file names and reports: printable only.
    let names = std::iter::once(&info.name)
        .chain(std::iter::once(&info.version))
        .chain(info.components.iter().map(|c| &c.name))
        .chain(info.steps.iter().flat_map(|s| [&s.id, &s.component]));
    for n in names {
        if n.chars().any(crate::text::is_control) {
            return Err(format!(
                "{:?} holds control characters; names, versions and step ids must be printable",
                terminal(n)
            ));
        }
    }
    let mut components = HashSet::new();
    for c in &info.components {
        if !components.insert(c.name.as_str()) {
            return Err(format!("component {:?} is declared twice", c.name));
        }
        if c.rto_seconds == 0 {
            return Err(format!("component {:?} has an RTO of 0 s", c.name));
        }
    }
    let mut ids = HashSet::new();
    for s in &info.steps {
        if s.id.trim().is_empty() {
            return Err("a step has an empty id".into());
        }
        if !ids.insert(s.id.as_str()) {
            return Err(format!("step id {:?} is used twice", s.id));
        }
        if !components.contains(s.component.as_str()) {
            return Err(format!(
                "step {:?} acts on component {:?}, which the scenario does not declare",
                s.id, s.component
            ));
        }
        if s.budget_seconds == 0 {
            return Err(format!("step {:?} has a budget of 0 s", s.id));
        }
        if u64::from(s.budget_seconds) > limits.step_seconds {
            return Err(format!(
                "step {:?} declares a budget of {} s, over the policy's [limits] step-seconds = {}; raise the limit or shorten the step",
                s.id, s.budget_seconds, limits.step_seconds
            ));
        }
    }
    Ok(())
}

fn findings_json(f: &[Finding]) -> Value {
    Value::Array(f.iter().map(|f| json!([f.key, f.value])).collect())
}

/// What `info()` declared, and what it attempted on the way.
pub struct InfoProbe {
    pub info: ScenarioInfo,
    /// Audit records of its attempts (every one denied), for the run's log.
    pub records: Vec<crate::caps::PendingRecord>,
    pub calls: u64,
    pub denied: u64,
}

/// Calls the scenario's `info()` with no capabilities at all: whatever the
/// policy grants, `info()` may log and read the clock, and every other call
/// is denied and kept for the audit log. `inspect` and every run start here,
/// so nothing a plugin does before its first step acts with its grants.
pub async fn read_info(
    runtime: &Runtime,
    plugin: &crate::runtime::Plugin,
    policy: &Arc<Policy>,
) -> Result<InfoProbe, RunError> {
    let none = Arc::new(Policy {
        limits: policy.limits.clone(),
        ..Policy::deny_all()
    });
    let mut probe = build_caps(
        &none,
        None,
        crate::caps::state::StateCap::ephemeral(0),
        true,
        None,
    )
    .await?;
    probe.gate = probe.gate.keeping();
    probe.gate.set_scope(crate::caps::Scope::Info);
    let probe = Arc::new(probe);
    let info = runtime.info(plugin, &probe).await.map_err(RunError::Info)?;
    Ok(InfoProbe {
        info,
        records: probe.gate.take_pending(),
        calls: probe.gate.counters.calls.load(Ordering::Relaxed),
        denied: probe.gate.counters.denied.load(Ordering::Relaxed),
    })
}

/// The state store a run uses: named by the policy, never by the plugin (a
/// plugin could declare any scenario's name). With `[plugin] scenario` the
/// store is that scenario's, and the plugin must declare the same name;
/// without it the store belongs to this exact component.
pub fn state_store_name(
    policy: &Policy,
    info: &ScenarioInfo,
    sha256: &str,
) -> Result<String, RunError> {
    match &policy.plugin.scenario {
        Some(name) if *name == info.name => Ok(name.clone()),
        Some(name) => Err(RunError::Config(format!(
            "the policy is for scenario {name:?} ([plugin] scenario), but the plugin declares {:?}",
            info.name
        ))),
        None => Ok(format!("sha256-{}", &sha256[..16.min(sha256.len())])),
    }
}

/// Runs a scenario end to end. Errors are for runs that could not start; a
/// run that started always ends in a report (and a complete audit log).
pub async fn run(runtime: &Runtime, wasm: &Path, opts: RunOptions) -> Result<RunReport, RunError> {
    // A signature is checked before the component's bytes are parsed.
    let verified = crate::provenance::check_signature(wasm, &opts.policy.plugin)?;
    let plugin = runtime.load(wasm)?;
    crate::provenance::check_loaded(
        wasm,
        &plugin.sha256,
        verified.as_deref(),
        &opts.policy.plugin,
    )?;
    check_backup_grants(&opts.policy, opts.backups.as_ref())?;
    check_secrets(&opts.policy)?;
    let policy = Arc::new(opts.policy);

    let probe = read_info(runtime, &plugin, &policy).await?;
    let info = probe.info;
    validate_info(&info, &policy.limits).map_err(RunError::Metadata)?;
    let has_inject = info.steps.iter().any(|s| s.phase == Phase::Inject);
    if opts.drill && !has_inject {
        return Err(RunError::Config(format!(
            "scenario {} declares no inject step, so it cannot be drilled: add a step in phase inject that causes the disaster in a sandbox",
            info.name
        )));
    }
    if !opts.drill && opts.phase == Some(Phase::Inject) {
        return Err(RunError::Config(
            "inject steps cause a disaster: they run only in `drhost drill`, against sandbox grants"
                .into(),
        ));
    }
    let mode = if opts.drill {
        "drill"
    } else {
        opts.phase.map(phase_name).unwrap_or("recover")
    };

    // Everything that can refuse the run does so before its log exists.
    let store_name = state_store_name(&policy, &info, &plugin.sha256)?;
    let mut state = crate::caps::state::StateCap::load(
        &opts.state_dir,
        &store_name,
        policy.limits.state_bytes.0,
    )
    .map_err(|e| RunError::Config(e.to_string()))?;
    if opts.plan {
        // A plan changes nothing: the store is read as it is and never written back.
        state.never_persist();
    }
    let run_id = crate::clock::new_run_id();
    let audit_path = opts.out_dir.join(&run_id).join("audit.jsonl");
    let writer = AuditWriter::create(&audit_path).map_err(|e| RunError::Config(e.to_string()))?;
    let caps = Arc::new(
        build_caps(
            &policy,
            Some(writer),
            state,
            opts.plan,
            opts.backups.clone(),
        )
        .await?,
    );

    let mut start = Map::new();
    start.insert("run_id".into(), run_id.clone().into());
    start.insert("drhost_version".into(), env!("CARGO_PKG_VERSION").into());
    start.insert("wasmtime_version".into(), crate::WASMTIME_VERSION.into());
    start.insert(
        "wit_version".into(),
        format!("drhost:plugin@{}", plugin.wit_version).into(),
    );
    start.insert("component".into(), wasm.display().to_string().into());
    start.insert("component_sha256".into(), plugin.sha256.clone().into());
    start.insert("compiled_from_cache".into(), plugin.from_cache.into());
    start.insert(
        "load_us".into(),
        u64::try_from(plugin.load_time.as_micros())
            .unwrap_or(u64::MAX)
            .into(),
    );
    start.insert(
        "policy".into(),
        policy
            .source
            .as_ref()
            .map(|p| p.display().to_string())
            .into(),
    );
    start.insert("policy_sha256".into(), policy.sha256.clone().into());
    start.insert("host".into(), crate::hostname().into());
    start.insert("scenario".into(), info.name.clone().into());
    start.insert("scenario_version".into(), info.version.clone().into());
    start.insert("mode".into(), mode.into());
    start.insert("plan".into(), opts.plan.into());
    caps.gate.record("run-start", start);
    let mut meta = Map::new();
    meta.insert(
        "components".into(),
        info.components
            .iter()
            .map(|c| json!({"name": c.name, "kind": kind_name(c.kind), "priority": priority_name(c.priority), "rto_s": c.rto_seconds, "rpo_s": c.rpo_seconds}))
            .collect(),
    );
    meta.insert(
        "steps".into(),
        info.steps
            .iter()
            .map(|s| json!({"id": s.id, "phase": phase_name(s.phase), "component": s.component, "budget_s": s.budget_seconds, "mutating": s.mutating}))
            .collect(),
    );
    caps.gate.record("scenario", meta);
    // What info() attempted (all denied) goes into the log after the run's header.
    for (kind, fields) in probe.records {
        caps.gate.record(&kind, fields);
    }
    caps.gate
        .counters
        .calls
        .fetch_add(probe.calls, Ordering::Relaxed);
    caps.gate
        .counters
        .denied
        .fetch_add(probe.denied, Ordering::Relaxed);

    let run_started = Instant::now();
    let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut runner = Runner {
        runtime,
        plugin: &plugin,
        caps: &caps,
        context: Vec::new(),
        results: Vec::new(),
        t0: run_started,
        run_budget: Duration::from_secs(policy.limits.run_seconds),
    };
    let mut detected_at: Option<Instant> = None;
    let mut detected_components: Vec<String> = Vec::new();
    // A drill starts with the disaster; recovery and detection count from its end.
    let mut disaster_at: Option<Instant> = None;
    let mut injection_failed = false;
    if opts.drill {
        for step in info.steps.iter().filter(|s| s.phase == Phase::Inject) {
            if injection_failed {
                runner.skip(step, "an earlier inject step failed");
                continue;
            }
            caps.gate.set_inject(true);
            let r = runner.step(step).await;
            caps.gate.set_inject(false);
            injection_failed |= r.outcome == "failed";
        }
        disaster_at = Some(Instant::now());
    }

    match opts.phase {
        _ if injection_failed => {
            for step in info.steps.iter().filter(|s| s.phase != Phase::Inject) {
                runner.skip(step, "the disaster could not be injected");
            }
        }
        Some(phase) => {
            for step in info.steps.iter().filter(|s| s.phase == phase) {
                runner.step(step).await;
            }
        }
        None => {
            for step in info.steps.iter().filter(|s| s.phase == Phase::Detect) {
                let r = runner.step(step).await;
                if r.outcome == "detected" {
                    detected_at.get_or_insert(r.ended.unwrap_or_else(Instant::now));
                    if !detected_components.contains(&step.component) {
                        detected_components.push(step.component.clone());
                    }
                }
            }
            if detected_at.is_some() {
                let mut failed_components: HashSet<String> = HashSet::new();
                for phase in [Phase::Contain, Phase::Recover, Phase::Verify] {
                    for step in info.steps.iter().filter(|s| s.phase == phase) {
                        if phase != Phase::Verify && failed_components.contains(&step.component) {
                            runner.skip(step, "an earlier step of this component failed");
                            continue;
                        }
                        let r = runner.step(step).await;
                        if r.outcome == "failed" {
                            failed_components.insert(step.component.clone());
                        }
                    }
                }
            }
        }
    }

    let components = measure(
        &info,
        &runner.results,
        &detected_components,
        disaster_at.or(detected_at),
        opts.drill,
    );
    let failed = runner
        .results
        .iter()
        .any(|r| r.outcome == "failed" && !r.over_budget);
    let failed = failed
        || injection_failed
        || components
            .iter()
            .any(|c| c.status == "undetected" || (opts.drill && c.status == "failed"));
    let over = runner.results.iter().any(|r| r.over_budget)
        || components
            .iter()
            .any(|c| c.rto_met == Some(false) || c.rpo_met == Some(false));
    let any_detected = detected_at.is_some();
    let (outcome, exit_code) = if failed {
        ("failed", exit::FAILED)
    } else if over {
        ("target-missed", exit::TARGET_MISSED)
    } else if opts.drill {
        ("recovered", exit::OK)
    } else if opts.phase.is_some() {
        ("completed", exit::OK)
    } else if any_detected {
        ("recovered", exit::OK)
    } else {
        ("healthy", exit::OK)
    };

    let calls = caps.gate.counters.calls.load(Ordering::Relaxed);
    let denied = caps.gate.counters.denied.load(Ordering::Relaxed);
    let mut end = Map::new();
    end.insert("outcome".into(), outcome.into());
    end.insert("exit_code".into(), exit_code.into());
    let duration_ms = u64::try_from(run_started.elapsed().as_millis()).unwrap_or(0);
    end.insert("duration_ms".into(), duration_ms.into());
    end.insert("calls".into(), calls.into());
    end.insert("denied".into(), denied.into());
    let dropped = caps
        .gate
        .counters
        .dropped_records
        .load(std::sync::atomic::Ordering::Relaxed);
    if dropped > 0 {
        end.insert("dropped_records".into(), dropped.into());
    }
    end.insert(
        "components".into(),
        serde_json::to_value(&components).unwrap_or(Value::Null),
    );
    end.insert(
        "steps".into(),
        runner
            .results
            .iter()
            .map(|r| json!({"id": r.id, "outcome": r.outcome, "duration_ms": r.duration_ms, "budget_s": r.budget_s, "over_budget": r.over_budget}))
            .collect(),
    );
    caps.gate.record("run-end", end);
    if let Some(mut w) = caps.gate.take_audit() {
        if let Err(e) = w.finish() {
            tracing::error!("{e}");
        }
        if let Err(e) = audit::store_head(&opts.state_dir, &run_id, w.head()) {
            tracing::error!("could not record the audit head in the state directory: {e}");
        }
        // Outside the host too, where whoever can rewrite the state
        // directory cannot rewrite it.
        if let Err(e) = caps.s3.anchor_head(&run_id, w.head()).await {
            tracing::error!("could not anchor the audit head ([audit] anchor): {e}");
        }
    }
    if let Err(e) = caps.state.persist() {
        tracing::error!("{e}");
    }

    Ok(RunReport {
        run_id,
        scenario: info.name.clone(),
        scenario_version: info.version.clone(),
        component_sha256: plugin.sha256.clone(),
        outcome: outcome.into(),
        exit_code,
        steps: runner.results,
        components,
        audit_log: audit_path,
        calls,
        denied,
        mode: mode.into(),
        description: info.description.clone(),
        started_at,
        duration_ms,
    })
}

/// Per component: detection and recovery times against the RTO, and in a
/// drill the recovery point achieved against the RPO.
fn measure(
    info: &ScenarioInfo,
    results: &[StepResult],
    detected_components: &[String],
    recovery_from: Option<Instant>,
    drill: bool,
) -> Vec<ComponentResult> {
    let secs = |from: Instant, to: Instant| to.saturating_duration_since(from).as_secs_f64();
    let mut out = Vec::new();
    for c in &info.components {
        let steps: Vec<&StepResult> = results.iter().filter(|r| r.component == c.name).collect();
        let injected = steps.iter().any(|r| r.phase == "inject");
        let any_failed = steps.iter().any(|r| r.outcome == "failed");
        let detected = detected_components.contains(&c.name);
        let detection_s = match (drill, recovery_from) {
            (true, Some(from)) => steps
                .iter()
                .filter(|r| r.outcome == "detected")
                .filter_map(|r| r.ended)
                .min()
                .map(|t| secs(from, t)),
            _ => None,
        };
        let (status, recovery_s, rto_met) = if !detected {
            let status = if drill && injected {
                "undetected"
            } else if any_failed {
                "failed"
            } else {
                "healthy"
            };
            (status, None, None)
        } else {
            let last_verify = steps
                .iter()
                .filter(|r| r.phase == "verify")
                .filter_map(|r| r.ended)
                .max();
            let verified = !any_failed
                && steps
                    .iter()
                    .any(|r| r.phase == "verify" && r.outcome == "ok");
            match (verified, recovery_from, last_verify) {
                (true, Some(d), Some(v)) => {
                    let s = secs(d, v);
                    ("recovered", Some(s), Some(s <= f64::from(c.rto_seconds)))
                }
                _ => ("failed", None, None),
            }
        };
        let value = |phase_inject: bool, key: &str| {
            steps
                .iter()
                .filter(|r| (r.phase == "inject") == phase_inject)
                .flat_map(|r| r.findings.iter())
                .filter(|(k, _)| k == key)
                .filter_map(|(_, v)| v.parse::<u64>().ok())
                .next_back()
        };
        let achieved_rpo_s = match (
            drill,
            value(true, DATA_AT_DISASTER),
            value(false, DATA_RECOVERED),
        ) {
            (true, Some(at), Some(got)) => Some(at.saturating_sub(got) as f64 / 1000.0),
            _ => None,
        };
        out.push(ComponentResult {
            name: c.name.clone(),
            kind: kind_name(c.kind).into(),
            rto_s: c.rto_seconds,
            rpo_s: c.rpo_seconds,
            status: status.into(),
            detection_s,
            recovery_s,
            rto_met,
            achieved_rpo_s,
            rpo_met: achieved_rpo_s.map(|r| r <= f64::from(c.rpo_seconds)),
        });
    }
    out
}

/// Every `env:` secret the policy names must be there before the first
/// step: a gap found mid-recovery is found too late. (S3 credentials are
/// resolved when the buckets are opened, also before the first step.)
pub fn check_secrets(policy: &Policy) -> Result<(), RunError> {
    for (name, g) in &policy.db {
        g.url
            .resolve()
            .map_err(|e| RunError::Config(format!("policy [db.{name}] url: {e}")))?;
        if let Some(u) = &g.read_url {
            u.resolve()
                .map_err(|e| RunError::Config(format!("policy [db.{name}] read-url: {e}")))?;
        }
    }
    for (name, g) in &policy.exec {
        for (var, value) in &g.env {
            value
                .resolve()
                .map_err(|e| RunError::Config(format!("policy [exec.{name}] env {var}: {e}")))?;
        }
    }
    Ok(())
}

/// A policy's `[backup.*]` grants need the backup engine, and name its sources.
fn check_backup_grants(
    policy: &Policy,
    backups: Option<&Arc<crate::backup::Backups>>,
) -> Result<(), RunError> {
    let Some(name) = policy.backup.keys().next() else {
        return Ok(());
    };
    let Some(b) = backups else {
        return Err(RunError::Config(format!(
            "the policy grants [backup.{name}], but no backup configuration was given (drhost run --config drhost.toml)"
        )));
    };
    for source in policy.backup.keys() {
        b.config
            .source(source)
            .map_err(|e| RunError::Config(format!("policy [backup.{source}]: {e}")))?;
    }
    Ok(())
}

/// Builds the capabilities of a run from its policy.
pub async fn build_caps(
    policy: &Arc<Policy>,
    audit: Option<AuditWriter>,
    state: crate::caps::state::StateCap,
    plan: bool,
    backups: Option<Arc<crate::backup::Backups>>,
) -> Result<Caps, RunError> {
    Ok(Caps {
        backup: crate::caps::backup::BackupCap {
            backups,
            grants: policy.backup.clone(),
        },
        gate: {
            let g = Gate::with_mode(audit, plan);
            g.set_audit_cap(policy.limits.audit_bytes.0);
            g
        },
        exec: crate::caps::exec::ExecCap {
            grants: policy.exec.clone(),
            base_dir: policy
                .source
                .as_ref()
                .and_then(|p| p.parent())
                .map(Path::to_path_buf),
        },
        net: crate::caps::net::NetCap {
            policy: policy.net.clone(),
        },
        s3: crate::caps::s3::S3Cap::from_policy(policy)
            .await
            .map_err(|e| RunError::Config(format!("policy: {e}")))?,
        db: crate::caps::db::DbCap::from_policy(policy),
        http: crate::caps::http::HttpCap {
            policy: policy.http.clone(),
            max_response_bytes: policy.max_response_bytes(),
        },
        state,
        policy: Arc::clone(policy),
    })
}

struct Runner<'a> {
    runtime: &'a Runtime,
    plugin: &'a Plugin,
    caps: &'a Arc<Caps>,
    context: Vec<Finding>,
    results: Vec<StepResult>,
    t0: Instant,
    /// `[limits] run-seconds`: no step runs past it.
    run_budget: Duration,
}

impl Runner<'_> {
    async fn step(&mut self, step: &crate::bindings::Step) -> StepResult {
        let left = self.run_budget.saturating_sub(self.t0.elapsed());
        if left.is_zero() {
            let why = format!(
                "not started: the run's budget of {} s ([limits] run-seconds) is spent",
                self.run_budget.as_secs()
            );
            self.end_unstarted(step, "failed", &why);
            tracing::warn!("■ {} {why}", step.id);
            return self.results[self.results.len() - 1].clone();
        }
        let gate = &self.caps.gate;
        gate.set_step(step);
        let mut f = Map::new();
        f.insert("step".into(), step.id.clone().into());
        f.insert("phase".into(), phase_name(step.phase).into());
        f.insert("component".into(), step.component.clone().into());
        f.insert("budget_s".into(), step.budget_seconds.into());
        f.insert("mutating".into(), step.mutating.into());
        gate.record("step-start", f);
        tracing::info!("▶ {} [{}]", step.id, phase_name(step.phase));

        // The run's end cuts a step short too.
        let budget = Duration::from_secs(step.budget_seconds.into()).min(left);
        let started = Instant::now();
        let started_ms =
            u64::try_from(started.saturating_duration_since(self.t0).as_millis()).unwrap_or(0);
        let result = self
            .runtime
            .run_step(self.plugin, self.caps, &step.id, &self.context, budget)
            .await;
        let elapsed = started.elapsed();
        let (outcome, detail, findings, over_budget) = match result {
            Ok(Outcome::Ok(f)) => ("ok", String::new(), f, false),
            Ok(Outcome::Detected(f)) => ("detected", String::new(), f, false),
            Ok(Outcome::Failed(r)) => ("failed", r, vec![], false),
            Ok(Outcome::Skipped(r)) => ("skipped", r, vec![], false),
            Err(e @ CallFailure::Budget { .. }) => ("failed", e.to_string(), vec![], true),
            Err(e) => ("failed", e.to_string(), vec![], false),
        };
        let over_budget = over_budget || elapsed > budget;
        let (detail, findings) =
            cap_findings(detail, findings, self.caps.policy.limits.findings_bytes.0);
        let mut f = Map::new();
        f.insert("step".into(), step.id.clone().into());
        f.insert("outcome".into(), outcome.into());
        if !detail.is_empty() {
            f.insert("detail".into(), detail.clone().into());
        }
        f.insert("findings".into(), findings_json(&findings));
        let duration_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        f.insert("duration_ms".into(), duration_ms.into());
        f.insert("budget_s".into(), step.budget_seconds.into());
        f.insert("over_budget".into(), over_budget.into());
        gate.record("step-end", f);
        gate.flush();
        match outcome {
            "failed" => tracing::warn!("■ {} failed: {}", terminal(&step.id), terminal(&detail)),
            _ => tracing::info!("■ {} {outcome} in {duration_ms} ms", step.id),
        }
        self.context.extend(findings.iter().cloned());
        let r = StepResult {
            id: step.id.clone(),
            phase: phase_name(step.phase).into(),
            component: step.component.clone(),
            outcome: outcome.into(),
            detail,
            findings: findings.into_iter().map(|f| (f.key, f.value)).collect(),
            started_ms,
            duration_ms,
            budget_s: step.budget_seconds,
            over_budget,
            ended: Some(Instant::now()),
        };
        self.results.push(r.clone());
        r
    }

    fn skip(&mut self, step: &crate::bindings::Step, why: &str) {
        self.end_unstarted(step, "skipped", why);
    }

    /// Records a step that never ran.
    fn end_unstarted(&mut self, step: &crate::bindings::Step, outcome: &str, why: &str) {
        let mut f = Map::new();
        f.insert("step".into(), step.id.clone().into());
        f.insert("outcome".into(), outcome.into());
        f.insert("detail".into(), why.into());
        self.caps.gate.record("step-end", f);
        self.results.push(StepResult {
            id: step.id.clone(),
            phase: phase_name(step.phase).into(),
            component: step.component.clone(),
            outcome: outcome.into(),
            detail: why.into(),
            findings: vec![],
            started_ms: u64::try_from(self.t0.elapsed().as_millis()).unwrap_or(0),
            duration_ms: 0,
            budget_s: step.budget_seconds,
            over_budget: false,
            ended: None,
        });
    }
}

/// Keeps a step's reason and findings within `cap` bytes
/// (`[limits] findings-bytes`), saying what was dropped.
fn cap_findings(detail: String, findings: Vec<Finding>, cap: u64) -> (String, Vec<Finding>) {
    let cap = usize::try_from(cap).unwrap_or(usize::MAX);
    let mut detail = detail;
    if detail.len() > cap {
        let total = detail.len();
        let mut end = cap;
        while !detail.is_char_boundary(end) {
            end -= 1;
        }
        detail.truncate(end);
        detail.push_str(&format!(
            "…[{} more bytes over [limits] findings-bytes]",
            total - end
        ));
    }
    let mut used = detail.len();
    let (mut kept, mut dropped, mut dropped_bytes) = (Vec::new(), 0usize, 0usize);
    for f in findings {
        let n = f.key.len() + f.value.len();
        if used + n <= cap {
            used += n;
            kept.push(f);
        } else {
            dropped += 1;
            dropped_bytes += n;
        }
    }
    if dropped > 0 {
        kept.push(Finding {
            key: "drhost-dropped".into(),
            value: format!(
                "{dropped} finding(s), {dropped_bytes} bytes, over [limits] findings-bytes"
            ),
        });
    }
    (detail, kept)
}

/// The terminal table of a finished run.
pub fn render_table(r: &RunReport) -> String {
    let mut out = format!(
        "{} {} — run {}\n\n{:<28} {:<8} {:<9} {:>10} {:>8}  {}\n",
        terminal(&r.scenario),
        terminal(&r.scenario_version),
        r.run_id,
        "STEP",
        "PHASE",
        "OUTCOME",
        "DURATION",
        "BUDGET",
        "DETAIL"
    );
    for s in &r.steps {
        let dur = if s.duration_ms >= 1000 {
            format!("{:.1} s", s.duration_ms as f64 / 1000.0)
        } else {
            format!("{} ms", s.duration_ms)
        };
        let mark = if s.over_budget { " (over)" } else { "" };
        out.push_str(&format!(
            "{:<28} {:<8} {:<9} {:>10} {:>6} s  {}{mark}\n",
            terminal(&s.id),
            s.phase,
            s.outcome,
            dur,
            s.budget_s,
            terminal(&s.detail)
        ));
    }
    out.push_str(&format!(
        "\n{:<28} {:<10} {:>12} {:>8}\n",
        "COMPONENT", "STATUS", "RECOVERY", "RTO"
    ));
    for c in &r.components {
        let rec = c
            .recovery_s
            .map(|s| format!("{s:.1} s"))
            .unwrap_or_else(|| "-".into());
        let met = match c.rto_met {
            Some(true) => " met",
            Some(false) => " MISSED",
            None => "",
        };
        out.push_str(&format!(
            "{:<28} {:<10} {:>12} {:>6} s{met}\n",
            terminal(&c.name),
            c.status,
            rec,
            c.rto_s
        ));
        if let Some(d) = c.detection_s {
            out.push_str(&format!(
                "{:<28} detected {d:.1} s after the disaster\n",
                ""
            ));
        }
        if let Some(rpo) = c.achieved_rpo_s {
            let met = if c.rpo_met == Some(true) {
                "met"
            } else {
                "MISSED"
            };
            out.push_str(&format!(
                "{:<28} data lost: {rpo:.1} s (RPO {} s) {met}\n",
                "", c.rpo_s
            ));
        }
    }
    out.push_str(&format!(
        "\noutcome: {} (exit {}) · {} capability calls, {} denied\naudit log: {}\n",
        r.outcome,
        r.exit_code,
        r.calls,
        r.denied,
        r.audit_log.display()
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(k: &str, v: &str) -> Finding {
        Finding {
            key: k.into(),
            value: v.into(),
        }
    }

    #[test]
    fn a_step_keeps_its_reason_and_findings_within_the_cap_and_says_what_it_dropped() {
        let (d, kept) = cap_findings("é".repeat(100), vec![f("a", "1")], 51);
        assert!(d.starts_with(&"é".repeat(25)), "{d}");
        assert!(
            d.ends_with("…[150 more bytes over [limits] findings-bytes]"),
            "{d}"
        );
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].key, "drhost-dropped");

        let many: Vec<Finding> = (0..100).map(|i| f("k", &"v".repeat(i))).collect();
        let (d, kept) = cap_findings("why".into(), many, 100);
        assert_eq!(d, "why");
        let used: usize = kept[..kept.len() - 1]
            .iter()
            .map(|f| f.key.len() + f.value.len())
            .sum();
        assert!(used + 3 <= 100);
        assert!(
            kept.last()
                .unwrap()
                .value
                .contains("over [limits] findings-bytes")
        );
    }
}
