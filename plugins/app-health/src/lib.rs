//! The recovery plan's scenario 2, detection and verification: is the
//! application server answering its health endpoint?
//!
//! The health URL comes from the plugin's state (`health-url`) or, when
//! unset, defaults to `http://127.0.0.1:8080/health`. It must be on the
//! policy's `[http] allow` list.

use drhost_plugin::{
    Component, ComponentKind, Finding, Guest, Outcome, Phase, Priority, ScenarioInfo, Step, clock,
    finding, http, info, state, warn,
};

const DEFAULT_URL: &str = "http://127.0.0.1:8080/health";
const ATTEMPTS: u32 = 3;

struct AppHealth;

fn health_url() -> String {
    state::get("health-url")
        .and_then(|v| String::from_utf8(v).ok())
        .unwrap_or_else(|| DEFAULT_URL.to_string())
}

/// One health probe: Ok(latency ms) when the endpoint answers 2xx.
fn probe(url: &str) -> Result<u64, String> {
    let start = clock::now_ms();
    let response = http::get(url)?;
    let elapsed = clock::now_ms().saturating_sub(start);
    if (200..300).contains(&response.status) {
        Ok(elapsed)
    } else {
        Err(format!("{url} answered HTTP {}", response.status))
    }
}

/// Probes up to ATTEMPTS times, a second apart, so one dropped packet does not
/// declare a disaster.
fn probe_with_retries(url: &str) -> Result<(u64, u32), Vec<String>> {
    let mut errors = Vec::new();
    for attempt in 1..=ATTEMPTS {
        match probe(url) {
            Ok(ms) => return Ok((ms, attempt)),
            Err(e) => {
                warn(&format!("health check {attempt}/{ATTEMPTS}: {e}"));
                errors.push(e);
                if attempt < ATTEMPTS {
                    clock::sleep_ms(1000);
                }
            }
        }
    }
    Err(errors)
}

impl Guest for AppHealth {
    fn info() -> ScenarioInfo {
        ScenarioInfo {
            name: "app-health".into(),
            version: "0.1.0".into(),
            description: "Scenario 2: detect an application server failure through its health endpoint, and verify recovery".into(),
            components: vec![Component {
                name: "application".into(),
                kind: ComponentKind::Application,
                priority: Priority::P0,
                rto_seconds: 1800,
                rpo_seconds: 3600,
                description: "the application server's HTTP endpoint".into(),
            }],
            steps: vec![
                Step {
                    id: "confirm-failure".into(),
                    phase: Phase::Detect,
                    component: "application".into(),
                    budget_seconds: 60,
                    mutating: false,
                    description: "probe the health endpoint, three attempts".into(),
                },
                Step {
                    id: "verify-service".into(),
                    phase: Phase::Verify,
                    component: "application".into(),
                    budget_seconds: 300,
                    mutating: false,
                    description: "the health endpoint answers 2xx again".into(),
                },
            ],
        }
    }

    fn run_step(id: String, _context: Vec<Finding>) -> Outcome {
        let url = health_url();
        match id.as_str() {
            "confirm-failure" => match probe_with_retries(&url) {
                Ok((ms, attempt)) => {
                    info(&format!("{url} healthy in {ms} ms"));
                    Outcome::Ok(vec![
                        finding("url", &url),
                        finding("latency-ms", ms),
                        finding("attempts", attempt),
                    ])
                }
                Err(errors) => Outcome::Detected(vec![
                    finding("url", &url),
                    finding("error", errors.last().cloned().unwrap_or_default()),
                    finding("attempts", ATTEMPTS),
                ]),
            },
            "verify-service" => match probe_with_retries(&url) {
                Ok((ms, _)) => Outcome::Ok(vec![finding("url", &url), finding("latency-ms", ms)]),
                Err(errors) => Outcome::Failed(errors.join("; ")),
            },
            other => Outcome::Failed(format!("unknown step {other}")),
        }
    }
}

drhost_plugin::export!(AppHealth with_types_in drhost_plugin::bindings);
