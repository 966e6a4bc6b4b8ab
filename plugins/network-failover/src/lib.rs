//! The recovery plan's scenario 4, network failure: the path to the service
//! is lost. Check connectivity and name resolution of the endpoints, fail
//! over by pointing the service's DNS record at the backup path through the
//! DNS provider's HTTP API, verify, and fail back once the primary path is
//! restored.
//!
//! Settings come from the plugin's state (`drhost state set
//! network-failover KEY VALUE`): `primary` and `backup` ("host:port" of the
//! two paths; defaults localhost:8081 and localhost:8082), `dns-api` (base URL
//! of the provider's API, default http://127.0.0.1:8053), `record` (the
//! record's name, default app.example.com), `restore-args` (arguments for
//! `[exec.restore-primary]`, which brings the primary path back).
//!
//! Grants: `[net] allow` for both endpoints; `[http] allow` for the DNS API;
//! `[exec.restore-primary]`; for a drill, `[http] sandbox` for the primary
//! endpoint's `/crash` (the injected outage). With the state key
//! `drill.cut-both` the backup path is cut too, and recovery must fail.

use drhost_plugin::error::{Context, StepError, StepResult, outcome};
use drhost_plugin::scenario::{
    Scenario, component, detect, inject, minutes, recover, seconds, verify,
};
use drhost_plugin::wait::Wait;
use drhost_plugin::{
    ComponentKind, Finding, Guest, Outcome, Priority, ScenarioInfo, context_value, exec, finding,
    http, info, net, setting, setting_words, state, warn,
};
use std::time::Duration;

const COMPONENT: &str = "network";

struct NetworkFailover;

fn primary() -> String {
    setting("primary", "localhost:8081")
}
fn backup() -> String {
    setting("backup", "localhost:8082")
}
fn record_url() -> String {
    format!(
        "{}/records/{}",
        setting("dns-api", "http://127.0.0.1:8053"),
        setting("record", "app.example.com")
    )
}

fn scenario() -> Scenario {
    Scenario::new("network-failover", "0.1.0")
        .about("Scenario 4: the primary network path is lost; fail the DNS record over to the backup path, verify, fail back")
        .component(
            component(COMPONENT, ComponentKind::Network, Priority::P0)
                .rto(minutes(30))
                .rpo(minutes(60))
                .about("the paths to the service, chosen by its DNS record"),
        )
        .step(
            inject("cut-primary-path", COMPONENT)
                .within(minutes(1))
                .mutating()
                .about("take the primary path's endpoint down"),
        )
        .step(
            detect("check-connectivity", COMPONENT)
                .within(minutes(5))
                .about("resolve and probe both paths; read where the DNS record points"),
        )
        .step(
            recover("fail-over-dns", COMPONENT)
                .within(minutes(10))
                .mutating()
                .about("point the DNS record at the backup path (provider API)"),
        )
        .step(
            verify("verify-failover", COMPONENT)
                .within(minutes(5))
                .about("the record points at the backup path, and it answers"),
        )
        .step(
            verify("fail-back", COMPONENT)
                .within(minutes(15))
                .mutating()
                .about("restore the primary path, wait until it answers, point the record back"),
        )
}

fn split(endpoint: &str) -> Result<(String, u16), StepError> {
    let (host, port) = endpoint
        .rsplit_once(':')
        .ok_or_else(|| format!("endpoint {endpoint:?} is not host:port"))?;
    let port = port
        .parse()
        .map_err(|_| format!("endpoint {endpoint:?}: bad port"))?;
    Ok((host.to_string(), port))
}

/// Connect time in µs, or why the endpoint is unreachable.
fn probe(endpoint: &str) -> Result<Result<u64, String>, StepError> {
    let (host, port) = split(endpoint)?;
    net::resolve(&host).during(format!("resolving {host}"))?;
    match net::probe_tcp(&host, port, 2000) {
        Ok(us) => Ok(Ok(us)),
        Err(drhost_plugin::types::Error::Unavailable(why)) => Ok(Err(why)),
        Err(e) => Err(StepError::Capability {
            during: format!("probing {endpoint}"),
            error: e,
        }),
    }
}

fn dns_record() -> Result<String, StepError> {
    let r = http::get(&record_url()).during("reading the DNS record")?;
    if r.status != 200 {
        return Err(format!("the DNS API answered HTTP {}: {}", r.status, r.text()).into());
    }
    Ok(r.text().trim().to_string())
}

fn set_dns_record(value: &str) -> Result<(), StepError> {
    let r = http::request("PUT", &record_url(), &[], Some(value.as_bytes()))
        .during("updating the DNS record")?;
    if r.status != 200 || r.text().trim() != value {
        return Err(format!(
            "the DNS API refused the update: HTTP {} {}",
            r.status,
            r.text()
        )
        .into());
    }
    Ok(())
}

/// Crashes the endpoint and returns once it no longer answers: it answers the
/// request before it exits, so returning earlier would race the next probe.
fn cut(label: &str, endpoint: &str) -> Result<(), StepError> {
    let (host, port) = split(endpoint)?;
    http::post_expecting_hangup(&format!("http://{host}:{port}/crash"))
        .during(format!("cutting {endpoint}"))?;
    Wait::new(&format!("the {label} path to go down"))
        .every(Duration::from_millis(100))
        .at_most(seconds(10))
        .until(|| Ok::<_, StepError>(probe(endpoint)?.err().map(|_| ())))?;
    Ok(())
}

fn inject_outage() -> StepResult {
    cut("primary", &primary())?;
    let both = state::get("drill.cut-both").is_some();
    if both {
        cut("backup", &backup())?;
    }
    warn(&format!(
        "drill: cut the primary path{}",
        if both { " and the backup path" } else { "" }
    ));
    Ok(Outcome::Ok(vec![finding("backup-cut-too", both)]))
}

fn check_connectivity() -> StepResult {
    let (primary, backup) = (primary(), backup());
    let record = dns_record()?;
    let mut out = vec![finding("record", &record)];
    let mut down = Vec::new();
    for (label, endpoint) in [("primary", &primary), ("backup", &backup)] {
        match probe(endpoint)? {
            Ok(us) => out.push(finding(format!("{label}-connect-us"), us)),
            Err(why) => {
                warn(&format!("{label} path {endpoint} unreachable: {why}"));
                out.push(finding(format!("{label}-unreachable"), why));
                down.push(endpoint.clone());
            }
        }
    }
    // A disaster when the path the record points at is down.
    if down.contains(&record) {
        out.push(finding("record-points-at-unreachable", &record));
        return Ok(Outcome::Detected(out));
    }
    info(&format!("the record points at {record}, which answers"));
    Ok(Outcome::Ok(out))
}

fn fail_over() -> StepResult {
    let backup = backup();
    if let Err(why) = probe(&backup)? {
        return Err(format!("the backup path {backup} is unreachable as well: {why}").into());
    }
    set_dns_record(&backup)?;
    Ok(Outcome::Ok(vec![
        finding("record", &backup),
        finding(
            "command",
            format!("curl -X PUT --data '{backup}' {}", record_url()),
        ),
    ]))
}

fn verify_failover() -> StepResult {
    let record = dns_record()?;
    let backup = backup();
    if record != backup {
        return Err(format!("the record points at {record}, not the backup path {backup}").into());
    }
    let us = probe(&record)?.map_err(|why| format!("{record} does not answer: {why}"))?;
    Ok(Outcome::Ok(vec![
        finding("record", record),
        finding("connect-us", us),
    ]))
}

fn fail_back(context: &[Finding]) -> StepResult {
    let primary = primary();
    // Only when the failover happened; otherwise there is nothing to undo.
    if context_value(context, "record") != Some(backup().as_str()) {
        return Ok(Outcome::Skipped("no failover to undo".into()));
    }
    let args = setting_words("restore-args");
    let r = exec::run("restore-primary", &args).during("restoring the primary path")?;
    if r.exit_code != Some(0) {
        return Err(format!("restoring the primary path failed: {}", r.stderr.trim()).into());
    }
    let back = Wait::new("the primary path to answer")
        .every(seconds(1))
        .at_most(minutes(5))
        .until(|| Ok::<_, StepError>(probe(&primary)?.ok()))?;
    set_dns_record(&primary)?;
    Ok(Outcome::Ok(vec![
        finding("record", &primary),
        finding("primary-connect-us", back.value),
        finding(
            "command",
            format!("curl -X PUT --data '{primary}' {}", record_url()),
        ),
    ]))
}

impl Guest for NetworkFailover {
    fn info() -> ScenarioInfo {
        scenario().build()
    }

    fn run_step(id: String, context: Vec<Finding>) -> Outcome {
        outcome(match id.as_str() {
            "cut-primary-path" => inject_outage(),
            "check-connectivity" => check_connectivity(),
            "fail-over-dns" => fail_over(),
            "verify-failover" => verify_failover(),
            "fail-back" => fail_back(&context),
            other => Err(format!("unknown step {other}").into()),
        })
    }
}

drhost_plugin::export!(NetworkFailover with_types_in drhost_plugin::bindings);

#[cfg(test)]
mod tests {
    #[test]
    fn metadata_is_valid() {
        assert_eq!(super::scenario().problems(), Vec::<String>::new());
    }
}
