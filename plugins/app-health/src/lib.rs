//! The recovery plan's scenario 2, detection and verification: is the
//! application server answering its health endpoint?
//!
//! The health URL comes from the plugin's state (`health-url`) or, when
//! unset, defaults to `http://127.0.0.1:8080/health`. It must be on the
//! policy's `[http] allow` list.

use drhost_plugin::error::{StepResult, outcome};
use drhost_plugin::health::HealthCheck;
use drhost_plugin::scenario::{Scenario, component, detect, minutes, seconds, verify};
use drhost_plugin::{
    ComponentKind, Finding, Guest, Outcome, Priority, ScenarioInfo, info, setting,
};

const DEFAULT_URL: &str = "http://127.0.0.1:8080/health";

struct AppHealth;

fn scenario() -> Scenario {
    Scenario::new("app-health", "0.1.0")
        .about("Scenario 2: detect an application server failure through its health endpoint, and verify recovery")
        .component(
            component("application", ComponentKind::Application, Priority::P0)
                .rto(minutes(30))
                .rpo(minutes(60))
                .about("the application server's HTTP endpoint"),
        )
        .step(
            detect("confirm-failure", "application")
                .within(seconds(60))
                .about("probe the health endpoint, three attempts"),
        )
        .step(
            verify("verify-service", "application")
                .within(minutes(5))
                .about("the health endpoint answers 2xx again"),
        )
}

fn health_url() -> String {
    setting("health-url", DEFAULT_URL)
}

/// Three attempts a second apart, so one dropped packet does not declare a
/// disaster.
fn confirm_failure() -> Outcome {
    match HealthCheck::new(&health_url()).run() {
        Ok(h) => {
            info(&format!("{} healthy in {} ms", h.url, h.latency_ms));
            Outcome::Ok(h.findings())
        }
        Err(sick) => Outcome::Detected(sick.findings()),
    }
}

fn verify_service() -> StepResult {
    let h = HealthCheck::new(&health_url()).run()?;
    Ok(Outcome::Ok(h.findings()))
}

impl Guest for AppHealth {
    fn info() -> ScenarioInfo {
        scenario().build()
    }

    fn run_step(id: String, _context: Vec<Finding>) -> Outcome {
        match id.as_str() {
            "confirm-failure" => confirm_failure(),
            "verify-service" => outcome(verify_service()),
            other => Outcome::Failed(format!("unknown step {other}")),
        }
    }
}

drhost_plugin::export!(AppHealth with_types_in drhost_plugin::bindings);

#[cfg(test)]
mod tests {
    #[test]
    fn metadata_is_valid() {
        assert_eq!(super::scenario().problems(), Vec::<String>::new());
    }
}
