//! Bindings and small helpers for drhost scenario plugins written in Rust.
//!
//! A plugin implements [`Guest`] and exports it with
//! `drhost_plugin::export!(MyScenario with_types_in drhost_plugin::bindings);`.
//! Every capability is reachable through the re-exported modules
//! ([`s3`], [`db`], [`backup`], [`state`], [`log`], [`clock`]) and [`http`] for
//! outgoing requests.

#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "drhost:plugin/scenario@0.1.0",
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "drhost_plugin::bindings",
        generate_all,
    });
}

pub use bindings::drhost::plugin::{backup, clock, db, log, s3, state, types};
pub use bindings::export;
pub use bindings::exports::drhost::plugin::plugin::Guest;
pub use types::{Component, ComponentKind, Finding, Outcome, Phase, Priority, ScenarioInfo, Step};

pub mod http;

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
