//! A scenario's metadata, written the way the recovery plan writes it: the
//! components with their recovery targets, then the numbered steps with
//! their time budgets.
//!
//! ```
//! use drhost_plugin::scenario::{Scenario, component, detect, recover, verify, minutes};
//! use drhost_plugin::{ComponentKind, Priority};
//!
//! let plan = Scenario::new("database-failover", "0.1.0")
//!     .about("Scenario 1: the primary database is down")
//!     .component(
//!         component("database", ComponentKind::Database, Priority::P0)
//!             .rto(minutes(15))
//!             .rpo(minutes(15))
//!             .about("the primary MariaDB"),
//!     )
//!     .step(detect("confirm-failure", "database").within(minutes(1)).about("ping the primary"))
//!     .step(recover("promote-replica", "database").within(minutes(5)).mutating())
//!     .step(verify("smoke-queries", "database").within(minutes(5)));
//! assert!(plan.problems().is_empty());
//!
//! let info = plan.build();
//! assert_eq!(info.steps[1].budget_seconds, 300);
//! assert!(info.steps[1].mutating);
//! assert_eq!(info.components[0].rto_seconds, 900);
//! ```

use crate::{Component, ComponentKind, Phase, Priority, ScenarioInfo, Step};
use std::collections::BTreeSet;
use std::time::Duration;

/// `n` minutes.
pub const fn minutes(n: u64) -> Duration {
    Duration::from_secs(n * 60)
}

/// `n` seconds.
pub const fn seconds(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Whole seconds, saturating at what the interface can carry.
fn secs(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

/// A scenario under construction. [`Scenario::build`] turns it into the
/// [`ScenarioInfo`] that `Guest::info` returns.
#[derive(Clone, Debug)]
pub struct Scenario {
    info: ScenarioInfo,
}

impl Scenario {
    /// A scenario with a name (shown in reports and audit logs) and a version.
    pub fn new(name: &str, version: &str) -> Self {
        Scenario {
            info: ScenarioInfo {
                name: name.into(),
                version: version.into(),
                description: String::new(),
                components: Vec::new(),
                steps: Vec::new(),
            },
        }
    }

    /// One line describing the scenario.
    pub fn about(mut self, description: &str) -> Self {
        self.info.description = description.into();
        self
    }

    /// Adds a component; steps name it.
    pub fn component(mut self, component: ComponentSpec) -> Self {
        self.info.components.push(component.0);
        self
    }

    /// Adds the next step. The host runs steps phase by phase, in the order
    /// they were added within a phase.
    pub fn step(mut self, step: StepSpec) -> Self {
        self.info.steps.push(step.0);
        self
    }

    /// What is wrong with the metadata, one line per problem; empty when it
    /// is valid. `drhost test` checks the same rules; calling this in a unit
    /// test finds mistakes before a build.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let i = &self.info;
        if i.name.trim().is_empty() {
            out.push("the scenario has no name".into());
        }
        let mut names = BTreeSet::new();
        for c in &i.components {
            if !names.insert(c.name.as_str()) {
                out.push(format!("component {:?} is declared twice", c.name));
            }
            if c.rto_seconds == 0 {
                out.push(format!("component {:?} has no RTO", c.name));
            }
            if c.rpo_seconds == 0 {
                out.push(format!("component {:?} has no RPO", c.name));
            }
        }
        let mut ids = BTreeSet::new();
        for s in &i.steps {
            if !ids.insert(s.id.as_str()) {
                out.push(format!("step {:?} is declared twice", s.id));
            }
            if s.budget_seconds == 0 {
                out.push(format!("step {:?} has no time budget", s.id));
            }
            match i.components.iter().find(|c| c.name == s.component) {
                None => out.push(format!(
                    "step {:?} acts on {:?}, which is not a declared component",
                    s.id, s.component
                )),
                Some(c) if s.budget_seconds > c.rto_seconds && c.rto_seconds > 0 => {
                    out.push(format!(
                        "step {:?} may take {} s, more than the RTO of {:?} ({} s)",
                        s.id, s.budget_seconds, c.name, c.rto_seconds
                    ))
                }
                Some(_) => {}
            }
        }
        if i.steps.is_empty() {
            out.push("the scenario has no steps".into());
        }
        out
    }

    /// The metadata for `Guest::info`.
    pub fn build(self) -> ScenarioInfo {
        self.info
    }
}

/// A component under construction; see [`component`].
#[derive(Clone, Debug)]
pub struct ComponentSpec(Component);

/// A component the scenario protects. Set its targets with
/// [`ComponentSpec::rto`] and [`ComponentSpec::rpo`].
pub fn component(name: &str, kind: ComponentKind, priority: Priority) -> ComponentSpec {
    ComponentSpec(Component {
        name: name.into(),
        kind,
        priority,
        rto_seconds: 0,
        rpo_seconds: 0,
        description: String::new(),
    })
}

impl ComponentSpec {
    /// Recovery time objective: from detection to verified recovery.
    pub fn rto(mut self, d: Duration) -> Self {
        self.0.rto_seconds = secs(d);
        self
    }

    /// Recovery point objective: the most data loss that is acceptable.
    pub fn rpo(mut self, d: Duration) -> Self {
        self.0.rpo_seconds = secs(d);
        self
    }

    /// One line describing the component.
    pub fn about(mut self, description: &str) -> Self {
        self.0.description = description.into();
        self
    }
}

/// A step under construction; start one with [`detect`], [`contain`],
/// [`backup`], [`recover`], [`verify`] or [`inject`].
#[derive(Clone, Debug)]
pub struct StepSpec(Step);

fn step(id: &str, phase: Phase, component: &str) -> StepSpec {
    StepSpec(Step {
        id: id.into(),
        phase,
        component: component.into(),
        budget_seconds: 0,
        mutating: false,
        description: String::new(),
    })
}

/// A detection step: reports `detected` when it finds the disaster.
pub fn detect(id: &str, component: &str) -> StepSpec {
    step(id, Phase::Detect, component)
}

/// A containment step (isolate, stop writes, revoke), run after detection.
pub fn contain(id: &str, component: &str) -> StepSpec {
    step(id, Phase::Contain, component)
}

/// A backup step, run only with `--phase backup`.
pub fn backup(id: &str, component: &str) -> StepSpec {
    step(id, Phase::Backup, component)
}

/// A step that causes the disaster, run only by `drhost drill` and only
/// against grants the drill's policy marks `sandbox = true`. Report the
/// newest data written before the disaster as `data-at-disaster-ms`, and
/// have a later step report `data-recovered-ms`: the drill measures the
/// recovery point from the two.
pub fn inject(id: &str, component: &str) -> StepSpec {
    step(id, Phase::Inject, component)
}

/// A recovery step (fail over, restore, re-point).
pub fn recover(id: &str, component: &str) -> StepSpec {
    step(id, Phase::Recover, component)
}

/// A verification step, run after recovery.
pub fn verify(id: &str, component: &str) -> StepSpec {
    step(id, Phase::Verify, component)
}

impl StepSpec {
    /// The step's time budget; the host stops the step when it is used up.
    pub fn within(mut self, budget: Duration) -> Self {
        self.0.budget_seconds = secs(budget);
        self
    }

    /// Declares that the step changes something outside the plugin's state.
    /// Plan runs record such steps' writes instead of making them, and
    /// `drhost test` reports an undeclared write.
    pub fn mutating(mut self) -> Self {
        self.0.mutating = true;
        self
    }

    /// One line describing the step, shown in reports.
    pub fn about(mut self, description: &str) -> Self {
        self.0.description = description.into();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_name_each_mistake() {
        let s = Scenario::new("", "0")
            .component(component("db", ComponentKind::Database, Priority::P0).rto(minutes(15)))
            .component(component("db", ComponentKind::Database, Priority::P0))
            .step(detect("a", "db").within(minutes(1)))
            .step(detect("a", "nope").within(minutes(1)))
            .step(recover("b", "db"))
            .step(recover("c", "db").within(minutes(20)));
        let p = s.problems();
        for want in [
            "no name",
            "\"db\" is declared twice",
            "\"db\" has no RPO",
            "\"db\" has no RTO",
            "step \"a\" is declared twice",
            "\"nope\", which is not a declared component",
            "step \"b\" has no time budget",
            "more than the RTO of \"db\"",
        ] {
            assert!(
                p.iter().any(|l| l.contains(want)),
                "{want} missing in {p:#?}"
            );
        }
    }
}
