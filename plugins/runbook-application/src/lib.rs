//! The plan's Application Recovery Runbook, step by step, for a person to
//! follow along; each step reports the line a person would type as the
//! finding `command`.
//!
//! Grants: `[http] allow` for the application (state key `app-url`, default
//! http://127.0.0.1:3000); `[exec.show-logs]` (e.g. `/usr/bin/tail` with
//! `args = ["-n", "100", "/var/log/csoai/app.log"]`), `[exec.restart-app]`
//! and `[exec.redeploy]`. For a drill, `[http] sandbox` for the
//! application's URL: the inject step asks it to crash.

use drhost_plugin::error::{Context, StepResult, outcome};
use drhost_plugin::health::HealthCheck;
use drhost_plugin::scenario::{Scenario, component, detect, inject, minutes, recover, verify};
use drhost_plugin::{
    ComponentKind, Finding, Guest, Outcome, Priority, ScenarioInfo, context_value, exec, finding,
    http, setting, setting_words,
};

const C: &str = "application";

struct Runbook;

fn app() -> String {
    setting("app-url", "http://127.0.0.1:3000")
}

fn cmd(line: &str) -> Finding {
    finding("command", line)
}

fn scenario() -> Scenario {
    Scenario::new("runbook-application", "0.1.0")
        .about("The Application Recovery Runbook, step by step")
        .component(
            component(C, ComponentKind::Application, Priority::P0)
                .rto(minutes(30))
                .rpo(minutes(60))
                .about("the application server"),
        )
        .step(
            inject("crash-application", C)
                .within(minutes(1))
                .mutating()
                .about("ask the application to crash"),
        )
        .step(
            detect("1-verify-application-down", C)
                .within(minutes(1))
                .about("curl http://localhost:3000/health"),
        )
        .step(
            recover("2-check-application-logs", C)
                .within(minutes(2))
                .about("tail -100 /var/log/csoai/app.log"),
        )
        .step(
            recover("3-restart-application", C)
                .within(minutes(10))
                .mutating()
                .about("systemctl restart csoai-app"),
        )
        .step(
            recover("4-verify-application-running", C)
                .within(minutes(2))
                .about("curl http://localhost:3000/health"),
        )
        .step(
            recover("5-check-error-rate", C)
                .within(minutes(2))
                .about("curl http://localhost:3000/metrics | grep error_rate"),
        )
        .step(
            recover("6-redeploy-if-restart-failed", C)
                .within(minutes(15))
                .mutating()
                .about("git checkout previous-commit && npm run build && npm run start"),
        )
        .step(
            verify("7-verify-application", C)
                .within(minutes(5))
                .about("curl http://localhost:3000/health"),
        )
}

fn health(
    attempts: u32,
) -> Result<drhost_plugin::health::Healthy, drhost_plugin::health::Unhealthy> {
    HealthCheck::new(&format!("{}/health", app()))
        .attempts(attempts)
        .run()
}

fn inject_crash() -> StepResult {
    http::post_expecting_hangup(&format!("{}/crash", app())).during("crashing the application")?;
    Ok(Outcome::Ok(vec![]))
}

fn step1() -> Outcome {
    let line = cmd(&format!("curl {}/health", app()));
    match health(3) {
        Ok(h) => Outcome::Ok(vec![finding("latency-ms", h.latency_ms), line]),
        Err(sick) => {
            let mut f = sick.findings();
            f.push(line);
            Outcome::Detected(f)
        }
    }
}

fn step2() -> StepResult {
    let r = exec::run("show-logs", &setting_words("log-args"))
        .during("reading the application's log")?;
    let lines: Vec<&str> = r.stdout.lines().collect();
    let errors = lines.iter().filter(|l| l.contains("ERROR")).count();
    Ok(Outcome::Ok(vec![
        finding("lines", lines.len()),
        finding("error-lines", errors),
        finding("last-line", lines.last().copied().unwrap_or("")),
        cmd("tail -100 /var/log/csoai/app.log"),
    ]))
}

fn step3() -> StepResult {
    let r = exec::run("restart-app", &setting_words("restart-args"))
        .during("restarting the application")?;
    // A failed restart is not the end: step 6 redeploys.
    Ok(Outcome::Ok(vec![
        finding(
            "restart-exit",
            r.exit_code.map_or("killed".into(), |c| c.to_string()),
        ),
        cmd("systemctl restart csoai-app"),
    ]))
}

fn step4() -> StepResult {
    let line = cmd(&format!("curl {}/health", app()));
    Ok(Outcome::Ok(match health(5) {
        Ok(h) => vec![
            finding("healthy", true),
            finding("latency-ms", h.latency_ms),
            line,
        ],
        Err(sick) => vec![
            finding("healthy", false),
            finding("error", sick.to_string()),
            line,
        ],
    }))
}

fn step5(context: &[Finding]) -> StepResult {
    if context_value(context, "healthy") != Some("true") {
        return Ok(Outcome::Skipped("the application is not running".into()));
    }
    let r = http::get(&format!("{}/metrics", app())).during("reading the metrics")?;
    let rate = r
        .text()
        .lines()
        .find_map(|l| l.strip_prefix("error_rate "))
        .map(|v| v.trim().to_string())
        .ok_or("no error_rate in the metrics")?;
    Ok(Outcome::Ok(vec![
        finding("error-rate", rate),
        cmd(&format!("curl {}/metrics | grep error_rate", app())),
    ]))
}

fn step6(context: &[Finding]) -> StepResult {
    if context_value(context, "healthy") == Some("true") {
        return Ok(Outcome::Skipped("the restart worked".into()));
    }
    let r = exec::run("redeploy", &setting_words("redeploy-args")).during("redeploying")?;
    if r.exit_code != Some(0) {
        return Err(format!("redeploy failed: {}", r.stderr.trim()).into());
    }
    Ok(Outcome::Ok(vec![cmd(
        "git checkout previous-commit && npm run build && npm run start",
    )]))
}

fn step7() -> StepResult {
    let mut out = health(3)?.findings();
    out.push(cmd(&format!("curl {}/health", app())));
    Ok(Outcome::Ok(out))
}

impl Guest for Runbook {
    fn info() -> ScenarioInfo {
        scenario().build()
    }

    fn run_step(id: String, context: Vec<Finding>) -> Outcome {
        match id.as_str() {
            "1-verify-application-down" => step1(),
            other => outcome(match other {
                "crash-application" => inject_crash(),
                "2-check-application-logs" => step2(),
                "3-restart-application" => step3(),
                "4-verify-application-running" => step4(),
                "5-check-error-rate" => step5(&context),
                "6-redeploy-if-restart-failed" => step6(&context),
                "7-verify-application" => step7(),
                other => Err(format!("unknown step {other}").into()),
            }),
        }
    }
}

drhost_plugin::export!(Runbook with_types_in drhost_plugin::bindings);

#[cfg(test)]
mod tests {
    #[test]
    fn metadata_is_valid() {
        assert_eq!(super::scenario().problems(), Vec::<String>::new());
    }
}
