//! `drhost test plugin.wasm`: the conformance suite any plugin is checked
//! with. Every step runs in plan mode (nothing is changed), with the policy's
//! grants and again with none, twice, in fresh stores:
//!
//! * metadata is valid (unique steps, known components, budgets, targets);
//! * every declared step returns an outcome (no trap, within budget and memory);
//! * a step not declared mutating attempts no mutating call;
//! * under denial (no grants) the step still returns an outcome, no trap;
//! * the same inputs give the same outcome and the same capability calls.

use crate::audit::{self, AuditWriter};
use crate::bindings::{Outcome, Step};
use crate::caps::state::StateCap;
use crate::orchestrator::{RunError, build_caps, validate_info};
use crate::policy::Policy;
use crate::runtime::Runtime;
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// The step it concerns, or none for the plugin as a whole.
    pub step: Option<String>,
    pub check: &'static str,
    pub passed: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub plugin: String,
    pub sha256: String,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }
}

/// What one run of a step did: its outcome (or failure) and its calls.
#[derive(Debug, Clone, PartialEq)]
struct Trace {
    outcome: Result<String, String>,
    /// `interface.op target decision` per capability call, in order.
    calls: Vec<String>,
    mutating_calls: Vec<String>,
}

fn describe(o: &Outcome) -> String {
    let pairs = |f: &[crate::bindings::Finding]| {
        f.iter()
            .map(|f| format!("{}={}", f.key, f.value))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match o {
        Outcome::Ok(f) => format!("ok [{}]", pairs(f)),
        Outcome::Detected(f) => format!("detected [{}]", pairs(f)),
        Outcome::Failed(r) => format!("failed: {r}"),
        Outcome::Skipped(r) => format!("skipped: {r}"),
    }
}

async fn trace(
    runtime: &Runtime,
    plugin: &crate::runtime::Plugin,
    policy: &Arc<Policy>,
    step: &Step,
    log: &Path,
) -> Result<Trace, RunError> {
    let writer = AuditWriter::create(log).map_err(|e| RunError::Config(e.to_string()))?;
    let caps = Arc::new(
        build_caps(
            policy,
            Some(writer),
            StateCap::ephemeral(policy.limits.state_bytes.0),
            true,
            None,
        )
        .await?,
    );
    // The step is held to its declaration, as in a run.
    caps.gate.set_step(step);
    let budget = Duration::from_secs(u64::from(step.budget_seconds));
    let outcome = runtime
        .run_step(plugin, &caps, &step.id, &[], budget)
        .await
        .map(|o| describe(&o))
        .map_err(|e| e.to_string());
    caps.gate.flush();
    drop(caps);
    let lines = audit::read(log).map_err(|e| RunError::Config(e.to_string()))?;
    let mut calls = Vec::new();
    let mut mutating_calls = Vec::new();
    for l in lines
        .iter()
        .filter(|l| l.record.get("type").and_then(|t| t.as_str()) == Some("call"))
    {
        let r = &l.record;
        let s = |k: &str| r.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
        let call = format!(
            "{}.{} {} {}",
            s("interface"),
            s("op"),
            s("target"),
            s("decision")
        );
        if r.get("mutating").and_then(|v| v.as_bool()) == Some(true) {
            mutating_calls.push(call.clone());
        }
        calls.push(call);
    }
    Ok(Trace {
        outcome,
        calls,
        mutating_calls,
    })
}

/// Runs the suite. `work` holds the scratch audit logs.
pub async fn test(
    runtime: &Runtime,
    wasm: &Path,
    policy: Policy,
    work: &Path,
) -> Result<Report, RunError> {
    let plugin = runtime.load(wasm)?;
    let policy = Arc::new(policy);
    let none = Arc::new(Policy {
        limits: policy.limits.clone(),
        ..Policy::deny_all()
    });
    let mut checks = Vec::new();
    let info = match crate::orchestrator::read_info(runtime, &plugin, &policy).await {
        Ok(p) => p.info,
        Err(e) => {
            checks.push(Check {
                step: None,
                check: "metadata is valid",
                passed: false,
                detail: format!("info failed: {e}"),
            });
            return Ok(Report {
                plugin: wasm.display().to_string(),
                sha256: plugin.sha256.clone(),
                checks,
            });
        }
    };
    let valid = validate_info(&info, &policy.limits);
    checks.push(Check {
        step: None,
        check: "metadata is valid",
        passed: valid.is_ok(),
        detail: match &valid {
            Ok(()) => format!(
                "{} {}: {} components, {} steps",
                info.name,
                info.version,
                info.components.len(),
                info.steps.len()
            ),
            Err(e) => e.clone(),
        },
    });
    // A directory of this run's own inside `work`: earlier runs' logs stay apart.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let work = &work.join(format!("{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(work)
        .map_err(|e| RunError::Config(format!("{}: {e}", work.display())))?;
    for (i, step) in info.steps.iter().enumerate() {
        let log = |n: &str| work.join(format!("{i}-{n}.jsonl"));
        let first = trace(runtime, &plugin, &policy, step, &log("a")).await?;
        let second = trace(runtime, &plugin, &policy, step, &log("b")).await?;
        let denied = trace(runtime, &plugin, &none, step, &log("denied")).await?;
        let id = Some(step.id.clone());
        checks.push(Check {
            step: id.clone(),
            check: "returns an outcome",
            passed: first.outcome.is_ok(),
            detail: match &first.outcome {
                Ok(o) => o.clone(),
                Err(e) => e.clone(),
            },
        });
        let undeclared = !step.mutating && !first.mutating_calls.is_empty();
        checks.push(Check {
            step: id.clone(),
            check: "mutations are declared",
            passed: !undeclared,
            detail: if undeclared {
                format!(
                    "declared not mutating, but called {}",
                    first.mutating_calls.join("; ")
                )
            } else if step.mutating {
                format!(
                    "declared mutating; {} mutating call(s)",
                    first.mutating_calls.len()
                )
            } else {
                "no mutating calls".into()
            },
        });
        checks.push(Check {
            step: id.clone(),
            check: "behaves under denial",
            passed: denied.outcome.is_ok(),
            detail: match &denied.outcome {
                Ok(o) => format!("with no grants: {o}"),
                Err(e) => format!("with no grants: {e}"),
            },
        });
        let same = first == second;
        checks.push(Check {
            step: id,
            check: "deterministic",
            passed: same,
            detail: if same {
                format!(
                    "same outcome and the same {} call(s) twice",
                    first.calls.len()
                )
            } else if first.outcome != second.outcome {
                format!(
                    "outcomes differ: {:?} then {:?}",
                    first.outcome, second.outcome
                )
            } else {
                format!("calls differ: {:?} then {:?}", first.calls, second.calls)
            },
        });
    }
    Ok(Report {
        plugin: wasm.display().to_string(),
        sha256: plugin.sha256.clone(),
        checks,
    })
}

/// The report as text: one line per check.
pub fn render(report: &Report) -> String {
    let mut out = format!(
        "conformance of {} ({}…)\n",
        report.plugin,
        &report.sha256[..12.min(report.sha256.len())]
    );
    for c in &report.checks {
        out.push_str(&format!(
            "  [{}] {:<24} {:<24} {}\n",
            if c.passed { "PASS" } else { "FAIL" },
            crate::text::terminal(c.step.as_deref().unwrap_or("(plugin)")),
            c.check,
            crate::text::terminal(&c.detail)
        ));
    }
    let failed = report.checks.iter().filter(|c| !c.passed).count();
    out.push_str(&if failed == 0 {
        format!("PASSED: {} checks\n", report.checks.len())
    } else {
        format!("FAILED: {failed} of {} checks\n", report.checks.len())
    });
    out
}
