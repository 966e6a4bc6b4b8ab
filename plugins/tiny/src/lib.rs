//! Benchmark fixture: the smallest scenario, one step that calls nothing.
//! It measures what drhost adds to instantiating a component and calling it.

use drhost_plugin::{
    Component, ComponentKind, Finding, Guest, Outcome, Phase, Priority, ScenarioInfo, Step,
};

struct Tiny;

impl Guest for Tiny {
    fn info() -> ScenarioInfo {
        ScenarioInfo {
            name: "tiny".into(),
            version: "0.1.0".into(),
            description: "Does nothing (benchmark fixture)".into(),
            components: vec![Component {
                name: "nothing".into(),
                kind: ComponentKind::Other,
                priority: Priority::P3,
                rto_seconds: 60,
                rpo_seconds: 60,
                description: "nothing".into(),
            }],
            steps: vec![Step {
                id: "noop".into(),
                phase: Phase::Detect,
                component: "nothing".into(),
                budget_seconds: 1,
                mutating: false,
                description: "returns at once".into(),
            }],
        }
    }

    fn run_step(_id: String, _context: Vec<Finding>) -> Outcome {
        Outcome::Ok(Vec::new())
    }
}

drhost_plugin::export!(Tiny with_types_in drhost_plugin::bindings);
