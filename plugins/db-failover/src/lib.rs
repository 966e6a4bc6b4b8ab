//! The recovery plan's scenario 1, database failure: confirm the primary is
//! unreachable, fail over by promoting a healthy replica, or — when there is
//! none — restore the latest backup that passes the verification checklist
//! into the standby; re-point the
//! application; verify with smoke queries.
//!
//! Connections (grants): `primary` (what the application uses), `replica`
//! (read-write: promotion stops replication and lifts read-only). Backups:
//! `[backup.app]` with list, verify and restore, `restore-to = ["standby"]`. The
//! application finds its database through a configuration object the plugin
//! may write: `[s3.config]` with write, key `database.json`, holding the
//! *name* of the connection to use (`{"database": "replica"}`). The
//! application's deployment maps names to credentials, so re-pointing never
//! moves a secret (docs/drills.md, "Re-pointing an application").
//!
//! As a drill it writes a heartbeat row through the primary, then cuts the
//! primary's network path (the proxy in front of it: `[http] sandbox` for
//! its control URL in state key `primary-control`). With the state key
//! `drill.no-replica` it also stops replication on the replica, so the
//! fallback to a backup must carry the recovery.

use drhost_plugin::error::{Context, StepError, StepResult, outcome};
use drhost_plugin::scenario::{
    Scenario, component, detect, inject, minutes, recover, seconds, verify,
};
use drhost_plugin::smoke::{Expect, Smoke, render, scalar_i64};
use drhost_plugin::wait::Wait;
use drhost_plugin::{
    ComponentKind, Finding, Guest, Outcome, Priority, ScenarioInfo, backup, clock, context_value,
    db, finding, http, info, s3, state, warn,
};

const COMPONENT: &str = "database";
const PRIMARY: &str = "primary";
const REPLICA: &str = "replica";
const STANDBY: &str = "standby";
const SOURCE: &str = "app";
const CONFIG: &str = "config";
/// A replica further behind than this is not promoted.
const MAX_LAG_S: i64 = 60;

struct DbFailover;

fn scenario() -> Scenario {
    Scenario::new("db-failover", "0.1.0")
        .about("Scenario 1: the primary database is down; promote the replica or restore the latest backup, re-point the application, verify")
        .component(
            component(COMPONENT, ComponentKind::Database, Priority::P0)
                .rto(minutes(15))
                .rpo(minutes(15))
                .about("the application's MariaDB primary, its replica and its backups"),
        )
        .step(
            inject("cut-primary", COMPONENT)
                .within(minutes(1))
                .mutating()
                .about("write a heartbeat, then cut the primary's network path"),
        )
        .step(
            detect("confirm-failure", COMPONENT)
                .within(minutes(1))
                .about("ping the primary, three attempts; the application's error rate"),
        )
        .step(
            recover("promote-replica", COMPONENT)
                .within(minutes(5))
                .mutating()
                .about("a healthy replica: apply what it received, stop replication, lift read-only"),
        )
        .step(
            recover("restore-from-backup", COMPONENT)
                .within(minutes(15))
                .mutating()
                .about("no replica promoted: restore the latest backup into the standby"),
        )
        .step(
            recover("repoint-application", COMPONENT)
                .within(minutes(2))
                .mutating()
                .about("write the new connection's name to the application's configuration object"),
        )
        .step(
            verify("smoke-queries", COMPONENT)
                .within(minutes(5))
                .about("the new database answers, is writable, and holds the heartbeat"),
        )
}

fn exec(conn: &str, sql: &str) -> Result<u64, StepError> {
    db::execute(conn, sql, &[]).during(format!("{conn}: {sql}"))
}

fn inject_outage() -> StepResult {
    exec(
        PRIMARY,
        "CREATE TABLE IF NOT EXISTS heartbeat (at_ms BIGINT PRIMARY KEY)",
    )?;
    let now = i64::try_from(clock::now_ms()).unwrap_or(i64::MAX);
    db::execute(
        PRIMARY,
        "INSERT INTO heartbeat (at_ms) VALUES (?)",
        &[db::Value::Int(now)],
    )
    .during("writing the heartbeat")?;
    if state::get("drill.no-replica").is_some() {
        exec(REPLICA, "STOP SLAVE")?;
        warn("drill: replication stopped on the replica");
    }
    let control = state::get("primary-control")
        .and_then(|v| String::from_utf8(v).ok())
        .ok_or("state key primary-control (the proxy's control URL) is not set")?;
    http::post_expecting_hangup(&format!("{control}/crash")).during("cutting the primary")?;
    warn("drill: the primary's network path is cut");
    Ok(Outcome::Ok(vec![finding("data-at-disaster-ms", now)]))
}

/// The application's error rate, when its metrics URL is configured (state
/// `error-rate-url`, a Prometheus-style `error_rate` line): evidence for the
/// report beside the pings.
fn error_rate() -> Option<Finding> {
    let url = String::from_utf8(state::get("error-rate-url")?).ok()?;
    let text = match http::get(&url) {
        Ok(r) => r.text(),
        Err(e) => return Some(finding("error-rate", format!("unknown: {e}"))),
    };
    let rate = text.lines().find_map(|l| l.strip_prefix("error_rate "))?;
    Some(finding("error-rate", rate.trim()))
}

fn confirm_failure() -> Outcome {
    let rate = error_rate();
    let mut errors = Vec::new();
    for attempt in 1..=3 {
        match db::ping(PRIMARY) {
            Ok(us) => {
                info(&format!("primary answers in {us} µs"));
                let mut out = vec![finding("ping-us", us)];
                out.extend(rate);
                return Outcome::Ok(out);
            }
            Err(e) => errors.push(drhost_plugin::describe(&e)),
        }
        if attempt < 3 {
            clock::sleep_ms(1000);
        }
    }
    let mut out = vec![
        finding(
            "primary-unreachable",
            errors.last().cloned().unwrap_or_default(),
        ),
        finding("attempts", errors.len()),
    ];
    out.extend(rate);
    Outcome::Detected(out)
}

/// The replica's SHOW SLAVE STATUS, as column → value.
fn slave_status() -> Result<Option<Vec<(String, String)>>, StepError> {
    let rows = db::query(REPLICA, "SHOW SLAVE STATUS", &[]).during("asking the replica")?;
    Ok(rows.rows.first().map(|row| {
        rows.columns
            .iter()
            .zip(row)
            .map(|(c, v)| (c.name.clone(), render(v)))
            .collect()
    }))
}

fn field<'a>(status: &'a [(String, String)], name: &str) -> &'a str {
    status
        .iter()
        .find(|(c, _)| c == name)
        .map_or("", |(_, v)| v.as_str())
}

/// Why the replica cannot be promoted, or its lag in seconds.
fn replica_health() -> Result<Result<i64, String>, StepError> {
    if let Err(e) = db::ping(REPLICA) {
        return Ok(Err(format!("unreachable: {}", drhost_plugin::describe(&e))));
    }
    let Some(status) = slave_status()? else {
        return Ok(Err("it is not replicating".into()));
    };
    if field(&status, "Slave_SQL_Running") != "Yes" {
        return Ok(Err(format!(
            "its SQL thread is stopped ({})",
            field(&status, "Last_SQL_Error")
        )));
    }
    match field(&status, "Seconds_Behind_Master").parse::<i64>() {
        Ok(lag) if lag <= MAX_LAG_S => Ok(Ok(lag)),
        Ok(lag) => Ok(Err(format!("it is {lag} s behind (limit {MAX_LAG_S} s)"))),
        // NULL while the I/O thread cannot reach the primary: judge by what it has applied.
        Err(_) => Ok(Ok(0)),
    }
}

fn promote() -> StepResult {
    let lag = match replica_health()? {
        Ok(lag) => lag,
        Err(why) => return Ok(Outcome::Skipped(format!("no healthy replica: {why}"))),
    };
    // Apply everything already received before replication stops.
    Wait::new("the replica to apply its relay log")
        .every(seconds(1))
        .at_most(minutes(3))
        .until(|| {
            let s = slave_status()?.unwrap_or_default();
            let done = field(&s, "Read_Master_Log_Pos") == field(&s, "Exec_Master_Log_Pos")
                && field(&s, "Master_Log_File") == field(&s, "Relay_Master_Log_File");
            Ok::<_, StepError>(done.then_some(()))
        })?;
    exec(REPLICA, "STOP SLAVE")?;
    exec(REPLICA, "RESET SLAVE ALL")?;
    exec(REPLICA, "SET GLOBAL read_only = OFF")?;
    Ok(Outcome::Ok(vec![
        finding("promoted", REPLICA),
        finding("lag-s", lag),
        finding(
            "command",
            "mariadb -h REPLICA -e 'STOP SLAVE; RESET SLAVE ALL; SET GLOBAL read_only = OFF'",
        ),
    ]))
}

fn restore_from_backup(context: &[Finding]) -> StepResult {
    if let Some(p) = context_value(context, "promoted") {
        return Ok(Outcome::Skipped(format!("{p} was promoted")));
    }
    let backups = backup::list_backups(SOURCE).during("listing the backups")?;
    let fulls: Vec<&backup::BackupInfo> = backups
        .iter()
        .rev()
        .filter(|b| b.kind == backup::BackupKind::Full)
        .collect();
    if fulls.is_empty() {
        return Err("no healthy replica and no full backup of app to restore".into());
    }
    // The newest full backup that passes the checklist now, on some target.
    let mut rejected = Vec::new();
    let mut chosen = None;
    for b in fulls {
        let reports = backup::verify(SOURCE, &b.id, None).during(format!("verifying {}", b.id))?;
        if reports.iter().any(|r| r.passed) {
            chosen = Some(b);
            break;
        }
        warn(&format!(
            "backup {} failed its checklist; trying an older one",
            b.id
        ));
        rejected.push(b.id.clone());
    }
    let Some(latest) = chosen else {
        return Err(format!(
            "no healthy replica, and no full backup of app passes its checklist ({})",
            rejected.join(", ")
        )
        .into());
    };
    let r = backup::restore(SOURCE, &latest.id, STANDBY, None)
        .during(format!("restoring {} into the standby", latest.id))?;
    // The standby takes the writes from now on.
    exec(STANDBY, "SET GLOBAL read_only = OFF")?;
    Ok(Outcome::Ok(vec![
        finding("promoted", STANDBY),
        finding("verified", &latest.id),
        finding("restored", &r.id),
        finding("rows", r.rows),
        finding(
            "command",
            format!(
                "drhost backup restore {} --source {SOURCE} --to {STANDBY}",
                r.id
            ),
        ),
    ]))
}

fn repoint(context: &[Finding]) -> StepResult {
    let target = context_value(context, "promoted").ok_or("nothing was promoted or restored")?;
    let body = format!("{{\"database\": \"{target}\"}}\n");
    s3::put(CONFIG, "database.json", body.as_bytes()).during("writing database.json")?;
    Ok(Outcome::Ok(vec![
        finding("database", target),
        finding(
            "command",
            format!("echo '{}' > config/database.json", body.trim()),
        ),
    ]))
}

fn smoke(context: &[Finding]) -> StepResult {
    let conn = context_value(context, "promoted").ok_or("nothing was promoted or restored")?;
    let mut out = Smoke::on(conn)
        .query("answers", "SELECT 1", Expect::Int(1))
        .query("writable", "SELECT @@read_only", Expect::Int(0))
        .query(
            "heartbeat rows",
            "SELECT COUNT(*) FROM heartbeat",
            Expect::AtLeast(1),
        )
        .run()?;
    if context_value(context, "data-at-disaster-ms").is_some() {
        let newest = scalar_i64(conn, "SELECT COALESCE(MAX(at_ms), 0) FROM heartbeat", &[])?;
        out.push(finding("data-recovered-ms", newest));
    }
    Ok(Outcome::Ok(out))
}

impl Guest for DbFailover {
    fn info() -> ScenarioInfo {
        scenario().build()
    }

    fn run_step(id: String, context: Vec<Finding>) -> Outcome {
        match id.as_str() {
            "confirm-failure" => confirm_failure(),
            other => outcome(match other {
                "cut-primary" => inject_outage(),
                "promote-replica" => promote(),
                "restore-from-backup" => restore_from_backup(&context),
                "repoint-application" => repoint(&context),
                "smoke-queries" => smoke(&context),
                other => Err(format!("unknown step {other}").into()),
            }),
        }
    }
}

drhost_plugin::export!(DbFailover with_types_in drhost_plugin::bindings);

#[cfg(test)]
mod tests {
    #[test]
    fn metadata_is_valid() {
        assert_eq!(super::scenario().problems(), Vec::<String>::new());
    }
}
