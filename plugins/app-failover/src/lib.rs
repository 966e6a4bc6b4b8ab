//! The recovery plan's scenario 2, application server failure: confirm the
//! server is down through its health endpoint, route traffic to the backup
//! server through the load balancer's API, restart the failed server with
//! an allow-listed command, and verify the endpoints.
//!
//! Where things are comes from the plugin's state (`drhost state set
//! app-failover KEY VALUE`), with defaults for a local setup:
//! `primary-url` (http://127.0.0.1:8081), `backup-url` (…:8082),
//! `switch-url` (…:8080), `backup-name` (green), `restart-args` (the
//! arguments for `[exec.restart-app]`, space-separated: "8081 blue").
//!
//! Grants: `[http] allow` for the three URLs; `[exec.restart-app]` for the
//! restart; for a drill, `[http] sandbox` for the primary's `/crash`.
//!
//! As a drill it injects the failure by asking the primary to crash
//! (`POST /crash`); with the state key `drill.crash-both` the backup
//! crashes too, and recovery must fail.

use drhost_plugin::error::{Context, StepResult, outcome};
use drhost_plugin::health::HealthCheck;
use drhost_plugin::scenario::{
    Scenario, component, detect, inject, minutes, recover, seconds, verify,
};
use drhost_plugin::wait::Wait;
use drhost_plugin::{
    ComponentKind, Finding, Guest, Outcome, Priority, ScenarioInfo, exec, finding, http, info,
    setting, setting_words, state, warn,
};

const COMPONENT: &str = "application";

struct AppFailover;

fn primary() -> String {
    setting("primary-url", "http://127.0.0.1:8081")
}
fn backup() -> String {
    setting("backup-url", "http://127.0.0.1:8082")
}
fn switch() -> String {
    setting("switch-url", "http://127.0.0.1:8080")
}

fn scenario() -> Scenario {
    Scenario::new("app-failover", "0.1.0")
        .about("Scenario 2: the application server is down; route traffic to the backup server, restart the failed one, verify")
        .component(
            component(COMPONENT, ComponentKind::Application, Priority::P0)
                .rto(minutes(30))
                .rpo(minutes(60))
                .about("the application servers behind the load balancer"),
        )
        .step(
            inject("crash-primary", COMPONENT)
                .within(minutes(1))
                .mutating()
                .about("ask the primary server to crash"),
        )
        .step(
            detect("confirm-failure", COMPONENT)
                .within(minutes(1))
                .about("the primary's health endpoint, three attempts a second apart"),
        )
        .step(
            recover("route-to-backup", COMPONENT)
                .within(minutes(5))
                .mutating()
                .about("the backup is healthy; the load balancer sends traffic to it"),
        )
        .step(
            recover("restart-failed", COMPONENT)
                .within(minutes(10))
                .mutating()
                .about("restart the failed server (allow-listed command) and wait for its health"),
        )
        .step(
            verify("verify-service", COMPONENT)
                .within(minutes(5))
                .about("the load balancer's endpoint and both servers answer"),
        )
}

fn crash(base: &str) -> Result<(), drhost_plugin::error::StepError> {
    http::post_expecting_hangup(&format!("{base}/crash")).during(format!("crashing {base}"))
}

fn inject_crash() -> StepResult {
    crash(&primary())?;
    let both = state::get("drill.crash-both").is_some();
    if both {
        crash(&backup())?;
    }
    warn(&format!(
        "drill: crashed the primary{}",
        if both { " and the backup" } else { "" }
    ));
    Ok(Outcome::Ok(vec![finding("crashed-backup-too", both)]))
}

fn confirm_failure() -> Outcome {
    match HealthCheck::new(&format!("{}/health", primary())).run() {
        Ok(h) => {
            info(&format!("primary healthy in {} ms", h.latency_ms));
            Outcome::Ok(h.findings())
        }
        Err(sick) => Outcome::Detected(sick.findings()),
    }
}

fn route_to_backup() -> StepResult {
    let name = setting("backup-name", "green");
    let healthy = HealthCheck::new(&format!("{}/health", backup()))
        .run()
        .map_err(|e| format!("no healthy backup server to route to: {e}"))?;
    let switch = switch();
    let r = http::post(&format!("{switch}/route?to={name}"), "text/plain", b"")
        .during("asking the load balancer to route to the backup")?;
    if r.status != 200 {
        return Err(format!("the load balancer refused: HTTP {} {}", r.status, r.text()).into());
    }
    let active = http::get(&format!("{switch}/active")).during("reading the active backend")?;
    if active.text().trim() != name {
        return Err(format!("the load balancer still routes to {}", active.text()).into());
    }
    Ok(Outcome::Ok(vec![
        finding("routed-to", &name),
        finding("backup-latency-ms", healthy.latency_ms),
        finding(
            "command",
            format!("curl -X POST '{switch}/route?to={name}'"),
        ),
    ]))
}

fn restart_failed() -> StepResult {
    let mut args = setting_words("restart-args");
    if args.is_empty() {
        args = vec!["8081".into(), "blue".into()];
    }
    let r = exec::run("restart-app", &args).during("restarting the failed server")?;
    if r.exit_code != Some(0) {
        return Err(format!(
            "the restart command {}: {}",
            r.exit_code
                .map_or("was killed".to_string(), |c| format!("exited with {c}")),
            r.stderr.trim()
        )
        .into());
    }
    let url = format!("{}/health", primary());
    let up = Wait::new("the restarted server to answer")
        .every(seconds(1))
        .at_most(minutes(2))
        .until(|| Ok::<_, String>(HealthCheck::new(&url).attempts(1).run().ok()))?;
    Ok(Outcome::Ok(vec![
        finding("restart-output", r.stdout.trim()),
        finding("healthy-after-checks", up.attempts),
        finding("command", format!("[exec.restart-app] {}", args.join(" "))),
    ]))
}

fn verify_service() -> StepResult {
    let mut out = Vec::new();
    for (label, base) in [
        ("load-balancer", switch()),
        ("primary", primary()),
        ("backup", backup()),
    ] {
        let h = HealthCheck::new(&format!("{base}/health"))
            .run()
            .map_err(|e| format!("{label}: {e}"))?;
        out.push(finding(format!("{label}-latency-ms"), h.latency_ms));
    }
    Ok(Outcome::Ok(out))
}

impl Guest for AppFailover {
    fn info() -> ScenarioInfo {
        scenario().build()
    }

    fn run_step(id: String, _context: Vec<Finding>) -> Outcome {
        match id.as_str() {
            "confirm-failure" => confirm_failure(),
            other => outcome(match other {
                "crash-primary" => inject_crash(),
                "route-to-backup" => route_to_backup(),
                "restart-failed" => restart_failed(),
                "verify-service" => verify_service(),
                other => Err(format!("unknown step {other}").into()),
            }),
        }
    }
}

drhost_plugin::export!(AppFailover with_types_in drhost_plugin::bindings);

#[cfg(test)]
mod tests {
    #[test]
    fn metadata_is_valid() {
        assert_eq!(super::scenario().problems(), Vec::<String>::new());
    }
}
