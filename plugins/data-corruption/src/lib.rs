//! The recovery plan's scenario 5, data corruption: a bad write damaged rows
//! of a MariaDB database. Detect it with data-validation queries, scope it
//! (when did it start), isolate (read-only mode), archive the binary logs,
//! restore to the moment before the corruption with the backup engine's
//! point-in-time recovery (the last full backup, then the archived binary
//! logs replayed up to that moment), replay the good transactions after the
//! corruption, and validate again before writes are allowed back.
//!
//! Grants (see examples/data-corruption): `[db.app]` read-write (validation
//! queries, `SET GLOBAL read_only`), `[backup.app]` with create, list and
//! restore, `restore-to = ["app"]`.
//!
//! The invariants are queries that count violating rows, named by the
//! policy (`[db.app.invariants]`, run by the host through `db.invariants`);
//! without them the plugin uses its state key `invariants` (one `name =
//! SELECT COUNT(*) …` per line) or defaults that suit the example's `orders`
//! table.
//!
//! As a drill it injects the disaster itself: an `orders` table with good
//! rows, a full backup, more good rows, then (a second later, so the binary
//! log's one-second resolution can tell them apart) a bad UPDATE, and a
//! second later more good rows. With the
//! state key `drill.no-backup` set it skips the full backup, and recovery
//! must fail.

use drhost_plugin::error::{Context, StepError, StepResult, outcome};
use drhost_plugin::scenario::{
    Scenario, component, contain, detect, inject, minutes, recover, verify,
};
use drhost_plugin::smoke::scalar_i64;
use drhost_plugin::time::rfc3339;
use drhost_plugin::{
    ComponentKind, Finding, Guest, Outcome, Priority, ScenarioInfo, backup, clock, context_value,
    db, finding, info, state, warn,
};

const DB: &str = "app";
const SOURCE: &str = "app";
const COMPONENT: &str = "orders-db";

const DEFAULT_INVARIANTS: &[(&str, &str)] = &[
    (
        "negative-amounts",
        "SELECT COUNT(*) FROM orders WHERE amount < 0",
    ),
    (
        "amounts-out-of-range",
        "SELECT COUNT(*) FROM orders WHERE amount > 1000000",
    ),
];

struct DataCorruption;

fn scenario() -> Scenario {
    Scenario::new("data-corruption", "0.1.0")
        .about("Scenario 5: find corrupted rows, restore to the point before the corruption, validate")
        .component(
            component(COMPONENT, ComponentKind::Data, Priority::P0)
                .rto(minutes(60))
                .rpo(minutes(15))
                .about("the orders database (MariaDB with binary logging)"),
        )
        .step(
            inject("corrupt-orders", COMPONENT)
                .within(minutes(5))
                .mutating()
                .about("write orders, take a full backup, write more, then corrupt amounts with a bad UPDATE"),
        )
        .step(
            detect("validate-data", COMPONENT)
                .within(minutes(5))
                .about("run the data-validation queries; scope: when the violating rows were written"),
        )
        .step(
            contain("stop-writes", COMPONENT)
                .within(minutes(10))
                .mutating()
                .about("read-only mode on the database, so the damage cannot spread"),
        )
        .step(
            contain("archive-logs", COMPONENT)
                .within(minutes(10))
                .mutating()
                .about("an incremental backup: the binary logs up to now, corruption included"),
        )
        .step(
            recover("restore-before-corruption", COMPONENT)
                .within(minutes(30))
                .mutating()
                .about("point-in-time recovery: last full backup, binary logs replayed up to the corruption and again after it"),
        )
        .step(
            verify("validate-again", COMPONENT)
                .within(minutes(10))
                .about("the data-validation queries find nothing"),
        )
        .step(
            verify("allow-writes", COMPONENT)
                .within(minutes(10))
                .mutating()
                .about("read-write again, once the data validates"),
        )
}

/// (name, query counting violating rows).
fn invariants() -> Vec<(String, String)> {
    match state::get("invariants").and_then(|v| String::from_utf8(v).ok()) {
        Some(text) => text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(n, q)| (n.trim().to_string(), q.trim().to_string()))
            .filter(|(n, q)| !n.is_empty() && !q.is_empty())
            .collect(),
        None => DEFAULT_INVARIANTS
            .iter()
            .map(|(n, q)| (n.to_string(), q.to_string()))
            .collect(),
    }
}

/// Each invariant's count of violating rows: the policy's
/// (`[db.app.invariants]`, run by the host), else the plugin's own.
fn violations() -> Result<Vec<(String, i64)>, StepError> {
    let named = db::invariants(DB).during("running the policy's invariants")?;
    if !named.is_empty() {
        return Ok(named
            .into_iter()
            .map(|i| (i.name, i64::try_from(i.violations).unwrap_or(i64::MAX)))
            .collect());
    }
    invariants()
        .into_iter()
        .map(|(name, sql)| Ok((name, scalar_i64(DB, &sql, &[])?)))
        .collect()
}

/// The newest write in `orders`, ms since the epoch (0 when empty).
fn newest_write_ms() -> Result<i64, StepError> {
    scalar_i64(
        DB,
        "SELECT COALESCE(CAST(UNIX_TIMESTAMP(MAX(updated_at)) * 1000 AS SIGNED), 0) FROM orders",
        &[],
    )
}

fn exec(sql: &str) -> Result<u64, StepError> {
    db::execute(DB, sql, &[]).during(sql.to_string())
}

fn inject_corruption() -> StepResult {
    exec("DROP TABLE IF EXISTS orders")?;
    exec(
        "CREATE TABLE orders (id INT PRIMARY KEY, customer VARCHAR(40) NOT NULL, amount INT NOT NULL, \
         updated_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3))",
    )?;
    exec(
        "INSERT INTO orders (id, customer, amount) SELECT seq, CONCAT('customer-', seq % 17), seq * 10 FROM seq_1_to_100",
    )?;
    let backed_up = state::get("drill.no-backup").is_none();
    if backed_up {
        let b =
            backup::create(SOURCE, backup::BackupKind::Full).during("taking the full backup")?;
        info(&format!("full backup {} before the disaster", b.id));
    }
    exec(
        "INSERT INTO orders (id, customer, amount) SELECT seq, CONCAT('customer-', seq % 17), seq * 10 FROM seq_101_to_120",
    )?;
    // The binary log counts in whole seconds: keep the bad write in a
    // second of its own, then more good orders after it.
    clock::sleep_ms(1100);
    let damaged = exec("UPDATE orders SET amount = -amount WHERE id % 3 = 0")?;
    warn(&format!("drill: corrupted the amounts of {damaged} orders"));
    clock::sleep_ms(1100);
    exec(
        "INSERT INTO orders (id, customer, amount) SELECT seq, CONCAT('customer-', seq % 17), seq * 10 FROM seq_121_to_130",
    )?;
    let last_good = newest_write_ms()?;
    Ok(Outcome::Ok(vec![
        finding("data-at-disaster-ms", last_good),
        finding("rows-corrupted", damaged),
        finding("full-backup-taken", backed_up),
    ]))
}

fn validate() -> StepResult {
    let found = violations()?;
    let bad: i64 = found.iter().map(|(_, n)| n).sum();
    let mut out: Vec<Finding> = found
        .iter()
        .map(|(n, c)| finding(format!("violations.{n}"), c))
        .collect();
    if bad == 0 {
        return Ok(Outcome::Ok(out));
    }
    // Scope: when the violating rows were written, first and last.
    let when = |agg: &str| {
        scalar_i64(
            DB,
            &format!(
                "SELECT COALESCE(CAST(UNIX_TIMESTAMP({agg}(updated_at)) * 1000 AS SIGNED), 0) FROM orders WHERE amount < 0 OR amount > 1000000"
            ),
            &[],
        )
    };
    let (since, until) = (when("MIN")?, when("MAX")?);
    warn(&format!("{bad} rows violate the data-validation queries"));
    out.push(finding("corrupted-rows", bad));
    if since > 0 {
        out.push(finding("corrupted-since-ms", since));
        out.push(finding("corrupted-until-ms", until));
    }
    Ok(Outcome::Detected(out))
}

fn stop_writes() -> StepResult {
    exec("SET GLOBAL read_only = ON")?;
    Ok(Outcome::Ok(vec![
        finding("read-only", true),
        finding("command", "mariadb -e 'SET GLOBAL read_only = ON'"),
    ]))
}

fn archive_logs() -> StepResult {
    let b = backup::create(SOURCE, backup::BackupKind::Incremental)
        .during("archiving the binary logs")?;
    Ok(Outcome::Ok(vec![
        finding("incremental", &b.id),
        finding("position", b.position.unwrap_or_default()),
        finding(
            "command",
            format!("drhost backup create {SOURCE} --kind incremental"),
        ),
    ]))
}

fn restore(context: &[Finding]) -> StepResult {
    let since: u64 = context_value(context, "corrupted-since-ms")
        .and_then(|v| v.parse().ok())
        .ok_or("validate-data did not scope the corruption (no corrupted-since-ms)")?;
    let until: u64 = context_value(context, "corrupted-until-ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or(since);
    let point = rfc3339(since);
    // The second after the last bad write: the good transactions from there on are replayed.
    let resume = rfc3339((until / 1000 + 1) * 1000);
    let r = backup::restore_skipping(SOURCE, "latest", SOURCE, &point, &resume).during(format!(
        "restoring {SOURCE} to {point}, resuming at {resume}"
    ))?;
    Ok(Outcome::Ok(vec![
        finding("point-in-time", &point),
        finding("resumed-at", &resume),
        finding("from-backup", &r.id),
        finding("rows", r.rows),
        finding(
            "command",
            format!(
                "drhost backup restore latest --source {SOURCE} --to {SOURCE} --point-in-time {point} --resume-at {resume}"
            ),
        ),
    ]))
}

fn validate_again(context: &[Finding]) -> StepResult {
    let found = violations()?;
    if let Some((name, n)) = found.iter().find(|(_, n)| *n > 0) {
        return Err(format!("{n} rows still violate {name}").into());
    }
    let mut out: Vec<Finding> = found
        .iter()
        .map(|(n, c)| finding(format!("violations.{n}"), c))
        .collect();
    if context_value(context, "data-at-disaster-ms").is_some() {
        out.push(finding("data-recovered-ms", newest_write_ms()?));
    }
    Ok(Outcome::Ok(out))
}

fn allow_writes() -> StepResult {
    if let Some((name, n)) = violations()?.into_iter().find(|(_, n)| *n > 0) {
        return Err(format!("{n} rows still violate {name}: writes stay off").into());
    }
    exec("SET GLOBAL read_only = OFF")?;
    Ok(Outcome::Ok(vec![
        finding("read-only", false),
        finding("command", "mariadb -e 'SET GLOBAL read_only = OFF'"),
    ]))
}

impl Guest for DataCorruption {
    fn info() -> ScenarioInfo {
        scenario().build()
    }

    fn run_step(id: String, context: Vec<Finding>) -> Outcome {
        outcome(match id.as_str() {
            "corrupt-orders" => inject_corruption(),
            "validate-data" => validate(),
            "stop-writes" => stop_writes(),
            "archive-logs" => archive_logs(),
            "restore-before-corruption" => restore(&context),
            "validate-again" => validate_again(&context),
            "allow-writes" => allow_writes(),
            other => Err(format!("unknown step {other}").into()),
        })
    }
}

drhost_plugin::export!(DataCorruption with_types_in drhost_plugin::bindings);

#[cfg(test)]
mod tests {
    #[test]
    fn metadata_is_valid() {
        assert_eq!(super::scenario().problems(), Vec::<String>::new());
    }
}
