//! The Rust SDK for drhost scenario plugins.
//!
//! A plugin implements [`Guest`] and exports it with
//! `drhost_plugin::export!(MyScenario with_types_in drhost_plugin::bindings);`.
//! Every capability is reachable through the re-exported modules
//! ([`s3`], [`db`], [`backup`], [`exec`], [`net`], [`state`], [`log`],
//! [`clock`]) and [`http`] for
//! outgoing requests. On top of them:
//!
//! * [`scenario`]: the metadata as the plan writes it (components with RTO
//!   and RPO, numbered steps with budgets), with [`scenario::Scenario::problems`]
//!   to check it in a unit test;
//! * [`error`]: [`error::StepError`] and [`error::Context::during`], so a
//!   step is a function with `?` and its failure reads as one line;
//! * [`health`]: HTTP health checks with retries;
//! * [`listing`]: two listings compared by size and host-side sha256;
//! * [`smoke`]: smoke queries with expected values;
//! * [`wait`]: polling for a condition within the step's budget;
//! * [`time`]: RFC 3339 times for APIs and point-in-time restores.
//!
//! A whole plugin, as `plugins/app-health` writes it:
//!
//! ```no_run
//! use drhost_plugin::error::{StepResult, outcome};
//! use drhost_plugin::health::HealthCheck;
//! use drhost_plugin::scenario::{Scenario, component, detect, minutes, seconds, verify};
//! use drhost_plugin::{ComponentKind, Finding, Guest, Outcome, Priority, ScenarioInfo};
//!
//! struct AppHealth;
//!
//! const URL: &str = "http://127.0.0.1:8080/health";
//!
//! impl Guest for AppHealth {
//!     fn info() -> ScenarioInfo {
//!         Scenario::new("app-health", "0.1.0")
//!             .component(
//!                 component("application", ComponentKind::Application, Priority::P0)
//!                     .rto(minutes(30))
//!                     .rpo(minutes(60)),
//!             )
//!             .step(detect("confirm-failure", "application").within(seconds(60)))
//!             .step(verify("verify-service", "application").within(minutes(5)))
//!             .build()
//!     }
//!
//!     fn run_step(id: String, _context: Vec<Finding>) -> Outcome {
//!         match id.as_str() {
//!             "confirm-failure" => match HealthCheck::new(URL).run() {
//!                 Ok(h) => Outcome::Ok(h.findings()),
//!                 Err(sick) => Outcome::Detected(sick.findings()),
//!             },
//!             "verify-service" => outcome(verify_service()),
//!             other => Outcome::Failed(format!("unknown step {other}")),
//!         }
//!     }
//! }
//!
//! fn verify_service() -> StepResult {
//!     let h = HealthCheck::new(URL).attempts(5).run()?;
//!     Ok(Outcome::Ok(h.findings()))
//! }
//!
//! drhost_plugin::export!(AppHealth with_types_in drhost_plugin::bindings);
//! ```

#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "drhost:plugin/scenario@0.2.0",
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "drhost_plugin::bindings",
        generate_all,
    });
}

pub use bindings::drhost::plugin::{backup, clock, db, exec, log, net, s3, state, types};
pub use bindings::export;
pub use bindings::exports::drhost::plugin::plugin::Guest;
pub use types::{Component, ComponentKind, Finding, Outcome, Phase, Priority, ScenarioInfo, Step};

pub mod error;
pub mod health;
pub mod http;
pub mod listing;
pub mod scenario;
pub mod smoke;
pub mod time;
pub mod wait;

/// A capability error as one readable line: `denied: …`, `not found: …`.
pub fn describe(e: &types::Error) -> String {
    match e {
        types::Error::Denied(m) => format!("denied: {m}"),
        types::Error::NotFound(m) => format!("not found: {m}"),
        types::Error::TooLarge(m) => format!("too large: {m}"),
        types::Error::Invalid(m) => format!("invalid: {m}"),
        types::Error::Unavailable(m) => format!("unavailable: {m}"),
        types::Error::Planned(m) => format!("planned: {m}"),
    }
}

/// A finding, from anything printable.
pub fn finding(key: impl Into<String>, value: impl ToString) -> Finding {
    Finding {
        key: key.into(),
        value: value.to_string(),
    }
}

/// The last value of `key` in a step's context (later findings win).
pub fn context_value<'a>(context: &'a [Finding], key: &str) -> Option<&'a str> {
    context
        .iter()
        .rev()
        .find(|f| f.key == key)
        .map(|f| f.value.as_str())
}

/// Logs at info level.
pub fn info(message: &str) {
    log::log(log::Level::Info, message);
}

/// Logs at warn level.
pub fn warn(message: &str) {
    log::log(log::Level::Warn, message);
}

/// A text setting from the plugin's state (`drhost state set SCENARIO KEY
/// VALUE`), or `default` when unset.
pub fn setting(key: &str, default: &str) -> String {
    state::get(key)
        .and_then(|v| String::from_utf8(v).ok())
        .unwrap_or_else(|| default.to_string())
}

/// A setting holding space-separated words, e.g. arguments for `exec.run`;
/// empty when unset.
pub fn setting_words(key: &str) -> Vec<String> {
    setting(key, "")
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Lists every key under `prefix` of an alias, following pagination.
pub fn list_all(alias: &str, prefix: &str) -> Result<Vec<s3::ObjectInfo>, types::Error> {
    let mut out = Vec::new();
    let mut token = None;
    loop {
        let page = s3::list_objects(alias, prefix, token.as_deref(), 1000)?;
        out.extend(page.objects);
        match page.next_token {
            Some(t) => token = Some(t),
            None => return Ok(out),
        }
    }
}
