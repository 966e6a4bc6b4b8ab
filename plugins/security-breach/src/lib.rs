//! The recovery plan's scenario 6, security breach: find suspicious activity
//! in the audit table and the log objects, contain it (disable the accounts
//! and revoke their API keys in the database), preserve the evidence (copies
//! of the logs and the suspicious rows in an evidence prefix, each with its
//! sha256), notify (status page, e-mail and SMS gateways by webhook), and
//! verify the containment. The GDPR deadline — 72 hours after the breach
//! was first seen — is a finding of the notify step and so in the report.
//!
//! Tables it reads and changes (MariaDB or SQLite; see
//! examples/security-breach): `auth_events(at_ms, account, ip, action,
//! success)`, `accounts(name, disabled)`, `api_keys(id, account, revoked)`.
//! Grants: `[db.app]` read-write, `[s3.logs]` read and list, `[s3.evidence]`
//! write and read with `write-once = true` (evidence is only ever added,
//! never replaced), `[http] allow`
//! for the webhooks, listed in the state key `webhooks` ("name url" per
//! line). An account is suspicious when it has at least
//! `failed-logins-threshold` (default 10) failed logins followed by a
//! success.

use drhost_plugin::error::{Context, StepError, StepResult, outcome};
use drhost_plugin::scenario::{
    Scenario, component, contain, detect, inject, minutes, recover, verify,
};
use drhost_plugin::smoke::render;
use drhost_plugin::time::rfc3339;
use drhost_plugin::{
    ComponentKind, Finding, Guest, Outcome, Priority, ScenarioInfo, clock, context_value, db,
    finding, http, list_all, s3, state, warn,
};

const DB: &str = "app";
const LOGS: &str = "logs";
const EVIDENCE: &str = "evidence";
const COMPONENT: &str = "user-data";
const GDPR_MS: u64 = 72 * 3600 * 1000;

struct SecurityBreach;

fn scenario() -> Scenario {
    Scenario::new("security-breach", "0.1.0")
        .about("Scenario 6: unauthorized access; contain, preserve evidence, notify within the GDPR deadline")
        .component(
            component(COMPONENT, ComponentKind::Security, Priority::P0)
                .rto(minutes(60))
                .rpo(minutes(60))
                .about("user accounts and the data they reach"),
        )
        .step(
            inject("simulate-intrusion", COMPONENT)
                .within(minutes(2))
                .mutating()
                .about("a password-guessing burst, a successful login and a data export, in the audit table and the logs"),
        )
        .step(
            detect("find-suspicious-activity", COMPONENT)
                .within(minutes(5))
                .about("accounts with a burst of failed logins then a success; their IPs in the log objects"),
        )
        .step(
            contain("revoke-credentials", COMPONENT)
                .within(minutes(15))
                .mutating()
                .about("disable the accounts and revoke their API keys"),
        )
        .step(
            contain("preserve-evidence", COMPONENT)
                .within(minutes(15))
                .mutating()
                .about("copy the logs and the suspicious rows to the evidence prefix, with sha256"),
        )
        .step(
            recover("notify", COMPONENT)
                .within(minutes(60))
                .mutating()
                .about("status page, e-mail and SMS gateways; the GDPR 72-hour deadline"),
        )
        .step(
            verify("verify-contained", COMPONENT)
                .within(minutes(5))
                .about("accounts disabled, keys revoked, evidence present with its checksums"),
        )
}

fn exec(sql: &str, params: &[db::Value]) -> Result<u64, StepError> {
    db::execute(DB, sql, params).during(sql.to_string())
}

fn text(v: &str) -> db::Value {
    db::Value::Text(v.to_string())
}

fn int(v: i64) -> db::Value {
    db::Value::Int(v)
}

fn inject_intrusion() -> StepResult {
    for sql in [
        "DROP TABLE IF EXISTS auth_events",
        "DROP TABLE IF EXISTS api_keys",
        "DROP TABLE IF EXISTS accounts",
        "CREATE TABLE auth_events (at_ms BIGINT NOT NULL, account VARCHAR(64) NOT NULL, ip VARCHAR(64) NOT NULL, action VARCHAR(32) NOT NULL, success INT NOT NULL)",
        "CREATE TABLE accounts (name VARCHAR(64) PRIMARY KEY, disabled INT NOT NULL DEFAULT 0)",
        "CREATE TABLE api_keys (id VARCHAR(64) PRIMARY KEY, account VARCHAR(64) NOT NULL, revoked INT NOT NULL DEFAULT 0)",
    ] {
        exec(sql, &[])?;
    }
    for name in ["alice", "bob", "carol"] {
        exec("INSERT INTO accounts (name) VALUES (?)", &[text(name)])?;
        exec(
            "INSERT INTO api_keys (id, account) VALUES (?, ?)",
            &[text(&format!("key-{name}")), text(name)],
        )?;
    }
    let now = i64::try_from(clock::now_ms()).unwrap_or(i64::MAX);
    let start = now - 600_000;
    let mut log = String::new();
    let mut event = |at: i64, account: &str, ip: &str, action: &str, ok: bool| {
        log.push_str(&format!(
            "{at} {ip} {account} {action} {}\n",
            if ok { "ok" } else { "failed" }
        ));
        exec(
            "INSERT INTO auth_events (at_ms, account, ip, action, success) VALUES (?, ?, ?, ?, ?)",
            &[
                int(at),
                text(account),
                text(ip),
                text(action),
                int(i64::from(ok)),
            ],
        )
    };
    event(start, "alice", "198.51.100.10", "login", true)?;
    event(start + 1_000, "bob", "198.51.100.11", "login", false)?;
    event(start + 2_000, "bob", "198.51.100.11", "login", true)?;
    // The attack: a password-guessing burst on carol, then a success and an export.
    for i in 0..25 {
        event(
            start + 60_000 + i * 500,
            "carol",
            "203.0.113.7",
            "login",
            false,
        )?;
    }
    event(start + 80_000, "carol", "203.0.113.7", "login", true)?;
    event(start + 90_000, "carol", "203.0.113.7", "export", true)?;
    s3::put(LOGS, "app/auth.log", log.as_bytes()).during("writing the log object")?;
    warn("drill: 25 failed logins, a success and an export for carol from 203.0.113.7");
    Ok(Outcome::Ok(vec![finding(
        "attack-started-ms",
        start + 60_000,
    )]))
}

fn threshold() -> i64 {
    state::get("failed-logins-threshold")
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(10)
}

fn find_activity() -> StepResult {
    // Accounts with a burst of failures and, after the first failure, a success.
    let rows = db::query(
        DB,
        "SELECT f.account, COUNT(*), MIN(f.at_ms) FROM auth_events f \
         WHERE f.success = 0 AND f.action = 'login' \
         AND EXISTS (SELECT 1 FROM auth_events s WHERE s.account = f.account AND s.success = 1 AND s.action = 'login' AND s.at_ms > f.at_ms) \
         GROUP BY f.account HAVING COUNT(*) >= ? ORDER BY f.account",
        &[int(threshold())],
    )
    .during("querying the audit table")?;
    if rows.rows.is_empty() {
        return Ok(Outcome::Ok(vec![finding("suspicious-accounts", 0)]));
    }
    let mut out = Vec::new();
    let mut first_seen = u64::MAX;
    for r in &rows.rows {
        let account = r.first().map(render).unwrap_or_default();
        let since: u64 = r
            .get(2)
            .map(render)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        first_seen = first_seen.min(since);
        out.push(finding("breach-account", &account));
        out.push(finding(
            format!("failed-logins.{account}"),
            r.get(1).map(render).unwrap_or_default(),
        ));
        let ips = db::query(
            DB,
            "SELECT DISTINCT ip FROM auth_events WHERE account = ? AND success = 0",
            &[text(&account)],
        )
        .during("querying the attacker's addresses")?;
        for ip in ips.rows.iter().filter_map(|r| r.first()).map(render) {
            out.push(finding("breach-ip", ip));
        }
        let exports = db::query(
            DB,
            "SELECT COUNT(*) FROM auth_events WHERE account = ? AND action = 'export' AND success = 1",
            &[text(&account)],
        )
        .during("querying exports")?;
        out.push(finding(
            format!("exports.{account}"),
            exports
                .rows
                .first()
                .and_then(|r| r.first())
                .map(render)
                .unwrap_or_default(),
        ));
    }
    // The same addresses in the log objects.
    let ips: Vec<String> = out
        .iter()
        .filter(|f| f.key == "breach-ip")
        .map(|f| f.value.clone())
        .collect();
    for o in list_all(LOGS, "").during("listing the log objects")? {
        let body = s3::get(LOGS, &o.key).during(format!("reading {}", o.key))?;
        let text = String::from_utf8_lossy(&body);
        let hits = text
            .lines()
            .filter(|l| ips.iter().any(|ip| l.contains(ip.as_str())))
            .count();
        if hits > 0 {
            out.push(finding("log-object", &o.key));
            out.push(finding(format!("log-hits.{}", o.key), hits));
        }
    }
    out.push(finding("first-seen-ms", first_seen));
    warn(&format!(
        "suspicious activity on {} account(s)",
        rows.rows.len()
    ));
    Ok(Outcome::Detected(out))
}

fn all_values<'a>(context: &'a [Finding], key: &str) -> Vec<&'a str> {
    let mut v: Vec<&str> = context
        .iter()
        .filter(|f| f.key == key)
        .map(|f| f.value.as_str())
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

fn revoke(context: &[Finding]) -> StepResult {
    let accounts = all_values(context, "breach-account");
    let mut out = Vec::new();
    for a in &accounts {
        let disabled = exec(
            "UPDATE accounts SET disabled = 1 WHERE name = ?",
            &[text(a)],
        )?;
        let keys = exec(
            "UPDATE api_keys SET revoked = 1 WHERE account = ?",
            &[text(a)],
        )?;
        out.push(finding(format!("disabled.{a}"), disabled));
        out.push(finding(format!("keys-revoked.{a}"), keys));
    }
    out.push(finding(
        "command",
        format!(
            "UPDATE accounts SET disabled = 1 WHERE name IN ({0}); UPDATE api_keys SET revoked = 1 WHERE account IN ({0});",
            accounts.iter().map(|a| format!("'{a}'")).collect::<Vec<_>>().join(", ")
        ),
    ));
    Ok(Outcome::Ok(out))
}

fn preserve(context: &[Finding]) -> StepResult {
    let case = format!(
        "case-{}/",
        context_value(context, "first-seen-ms").unwrap_or("0")
    );
    let mut out = vec![finding("case", &case)];
    for key in all_values(context, "log-object") {
        let dst = format!("{case}logs/{key}");
        // Evidence is write-once: a second run of the same case finds it there.
        if s3::head(EVIDENCE, &dst)
            .during(format!("looking for {dst}"))?
            .is_none()
        {
            s3::copy(LOGS, key, EVIDENCE, &dst).during(format!("copying {key} to the evidence"))?;
        }
        let original = s3::checksum(LOGS, key).during(format!("checksum of {key}"))?;
        let copy = s3::checksum(EVIDENCE, &dst).during(format!("checksum of {dst}"))?;
        if original != copy {
            return Err(format!("the evidence copy of {key} differs from the original").into());
        }
        out.push(finding(format!("sha256.{dst}"), copy));
    }
    // The suspicious rows, as text, next to the logs.
    let mut rows = String::from("at_ms,account,ip,action,success\n");
    for a in all_values(context, "breach-account") {
        let r = db::query(
            DB,
            "SELECT at_ms, account, ip, action, success FROM auth_events WHERE account = ? ORDER BY at_ms",
            &[text(a)],
        )
        .during("reading the suspicious rows")?;
        for row in &r.rows {
            rows.push_str(&row.iter().map(render).collect::<Vec<_>>().join(","));
            rows.push('\n');
        }
    }
    let dst = format!("{case}auth_events.csv");
    if s3::head(EVIDENCE, &dst)
        .during(format!("looking for {dst}"))?
        .is_none()
    {
        s3::put(EVIDENCE, &dst, rows.as_bytes()).during("writing the suspicious rows")?;
    } else if s3::get(EVIDENCE, &dst).during(format!("reading {dst}"))? != rows.as_bytes() {
        return Err(format!("{dst} is already in the evidence with different content").into());
    }
    let sum = s3::checksum(EVIDENCE, &dst).during(format!("checksum of {dst}"))?;
    out.push(finding(format!("sha256.{dst}"), sum));
    Ok(Outcome::Ok(out))
}

fn notify(context: &[Finding]) -> StepResult {
    let first: u64 = context_value(context, "first-seen-ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(clock::now_ms);
    let deadline = rfc3339(first + GDPR_MS);
    let accounts = all_values(context, "breach-account").join(", ");
    let hooks = state::get("webhooks")
        .and_then(|v| String::from_utf8(v).ok())
        .unwrap_or_default();
    let body = format!(
        "{{\"event\":\"security-breach\",\"accounts\":\"{accounts}\",\"first_seen\":\"{}\",\"gdpr_deadline\":\"{deadline}\",\"status\":\"contained\"}}",
        rfc3339(first)
    );
    let mut out = vec![finding("gdpr-deadline", &deadline)];
    let mut failures = Vec::new();
    for line in hooks.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let Some((name, url)) = line.split_once(' ') else {
            failures.push(format!("webhook line {line:?} is not \"name url\""));
            continue;
        };
        match http::post(url.trim(), "application/json", body.as_bytes()) {
            Ok(r) if (200..300).contains(&r.status) => {
                out.push(finding(format!("notified.{name}"), r.status))
            }
            Ok(r) => failures.push(format!("{name}: HTTP {}", r.status)),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    if hooks.trim().is_empty() {
        failures.push("no webhooks configured (state key webhooks)".into());
    }
    if !failures.is_empty() {
        return Err(format!(
            "could not notify {} (GDPR deadline {deadline})",
            failures.join("; ")
        )
        .into());
    }
    Ok(Outcome::Ok(out))
}

fn verify_contained(context: &[Finding]) -> StepResult {
    let mut out = Vec::new();
    for a in all_values(context, "breach-account") {
        let r = db::query(
            DB,
            "SELECT (SELECT COUNT(*) FROM accounts WHERE name = ? AND disabled = 0), (SELECT COUNT(*) FROM api_keys WHERE account = ? AND revoked = 0)",
            &[text(a), text(a)],
        )
        .during("checking the containment")?;
        let row: Vec<String> = r
            .rows
            .first()
            .map(|r| r.iter().map(render).collect())
            .unwrap_or_default();
        if row != ["0", "0"] {
            return Err(
                format!("{a} is not contained: enabled accounts and live keys {row:?}").into(),
            );
        }
        out.push(finding(format!("contained.{a}"), true));
    }
    for f in context.iter().filter(|f| f.key.starts_with("sha256.")) {
        let key = &f.key["sha256.".len()..];
        let now = s3::checksum(EVIDENCE, key).during(format!("re-reading the evidence {key}"))?;
        if now != f.value {
            return Err(format!("the evidence {key} changed since it was preserved").into());
        }
        out.push(finding(format!("evidence-intact.{key}"), true));
    }
    Ok(Outcome::Ok(out))
}

impl Guest for SecurityBreach {
    fn info() -> ScenarioInfo {
        scenario().build()
    }

    fn run_step(id: String, context: Vec<Finding>) -> Outcome {
        outcome(match id.as_str() {
            "simulate-intrusion" => inject_intrusion(),
            "find-suspicious-activity" => find_activity(),
            "revoke-credentials" => revoke(&context),
            "preserve-evidence" => preserve(&context),
            "notify" => notify(&context),
            "verify-contained" => verify_contained(&context),
            other => Err(format!("unknown step {other}").into()),
        })
    }
}

drhost_plugin::export!(SecurityBreach with_types_in drhost_plugin::bindings);

#[cfg(test)]
mod tests {
    #[test]
    fn metadata_is_valid() {
        assert_eq!(super::scenario().problems(), Vec::<String>::new());
    }

    #[test]
    fn the_deadline_is_written_in_utc() {
        assert_eq!(
            super::rfc3339(1_795_862_096_789 + super::GDPR_MS),
            "2026-12-01T10:34:56.789Z"
        );
    }
}
