//! The smallest useful scenario: one detect step that reports healthy and
//! remembers how often it ran. A template to copy, and the plugin the
//! benchmarks use for the cost of a whole `drhost run`.

use drhost_plugin::{
    Component, ComponentKind, Finding, Guest, Outcome, Phase, Priority, ScenarioInfo, Step,
    finding, state,
};

struct Hello;

impl Guest for Hello {
    fn info() -> ScenarioInfo {
        ScenarioInfo {
            name: "hello".into(),
            version: "0.1.0".into(),
            description: "A trivial scenario: always healthy".into(),
            components: vec![Component {
                name: "nothing".into(),
                kind: ComponentKind::Other,
                priority: Priority::P3,
                rto_seconds: 60,
                rpo_seconds: 60,
                description: "nothing at all".into(),
            }],
            steps: vec![Step {
                id: "check".into(),
                phase: Phase::Detect,
                component: "nothing".into(),
                budget_seconds: 5,
                mutating: false,
                description: "count the runs and report healthy".into(),
            }],
        }
    }

    fn run_step(_id: String, _context: Vec<Finding>) -> Outcome {
        let runs = state::get("runs")
            .and_then(|v| String::from_utf8(v).ok())
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
            + 1;
        match state::set("runs", runs.to_string().as_bytes()) {
            Ok(()) => Outcome::Ok(vec![finding("runs", runs)]),
            Err(e) => Outcome::Failed(drhost_plugin::describe(&e)),
        }
    }
}

drhost_plugin::export!(Hello with_types_in drhost_plugin::bindings);
