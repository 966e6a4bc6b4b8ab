//! The plan's Database Recovery Runbook, step by step, for a person to
//! follow along: each step does what the runbook line does, the drhost way
//! (backups through the backup engine, never a file on the operator's
//! disk), and reports the line a person would type as the finding `command`.
//!
//! Grants: `[db.app]` (the database the application uses), `[db.standby]`
//! (the new host), `[backup.app]` list, verify and restore with
//! `restore-to = ["standby"]`, `[s3.config]` write, `[exec.restart-app]`,
//! `[http] allow` for the health URL (state key `health-url`). For a drill
//! also `sandbox = true` on `db.app` and `backup.app` (with create), and
//! `[http] sandbox` for the proxy's control URL (state `primary-control`).

use drhost_plugin::error::{Context, StepResult, outcome};
use drhost_plugin::health::HealthCheck;
use drhost_plugin::scenario::{Scenario, component, detect, inject, minutes, recover, verify};
use drhost_plugin::smoke::{Expect, Smoke};
use drhost_plugin::{
    ComponentKind, Finding, Guest, Outcome, Priority, ScenarioInfo, backup, db, exec, finding,
    http, s3, setting, setting_words,
};

const C: &str = "database";

struct Runbook;

fn cmd(line: &str) -> Finding {
    finding("command", line)
}

fn scenario() -> Scenario {
    Scenario::new("runbook-database", "0.1.0")
        .about("The Database Recovery Runbook, step by step")
        .component(
            component(C, ComponentKind::Database, Priority::P0)
                .rto(minutes(15))
                .rpo(minutes(15))
                .about("the application's database, its backups and a standby host"),
        )
        .step(
            inject("cut-database", C)
                .within(minutes(5))
                .mutating()
                .about("a users table, a full backup, then the database's network path cut"),
        )
        .step(
            detect("1-verify-database-down", C)
                .within(minutes(1))
                .about("mysql -e 'SELECT 1'"),
        )
        .step(
            recover("2-check-backup-status", C)
                .within(minutes(2))
                .about("the newest backups"),
        )
        .step(
            recover("3-download-latest-backup", C)
                .within(minutes(10))
                .about("every byte of the latest backup read and checked"),
        )
        .step(
            recover("4-restore-database", C)
                .within(minutes(15))
                .mutating()
                .about("restore into the standby host"),
        )
        .step(
            recover("5-verify-restoration", C)
                .within(minutes(2))
                .about("SELECT COUNT(*) FROM users"),
        )
        .step(
            recover("6-update-connection-string", C)
                .within(minutes(2))
                .mutating()
                .about("point the application at the standby"),
        )
        .step(
            recover("7-restart-application", C)
                .within(minutes(5))
                .mutating()
                .about("systemctl restart csoai-app"),
        )
        .step(
            verify("8-verify-application", C)
                .within(minutes(5))
                .about("curl http://localhost:3000/health"),
        )
}

fn inject_cut() -> StepResult {
    for sql in [
        "DROP TABLE IF EXISTS users",
        "CREATE TABLE users (id INT PRIMARY KEY, name VARCHAR(40) NOT NULL)",
        "INSERT INTO users SELECT seq, CONCAT('user-', seq) FROM seq_1_to_250",
    ] {
        db::execute("app", sql, &[]).during(sql.to_string())?;
    }
    let b = backup::create("app", backup::BackupKind::Full).during("taking the full backup")?;
    let control = setting("primary-control", "");
    http::post_expecting_hangup(&format!("{control}/crash")).during("cutting the database")?;
    Ok(Outcome::Ok(vec![finding("backup", b.id)]))
}

fn step1() -> Outcome {
    match db::ping("app") {
        Ok(us) => Outcome::Ok(vec![
            finding("ping-us", us),
            cmd("mysql -h $DB_HOST -e \"SELECT 1;\""),
        ]),
        Err(e) => Outcome::Detected(vec![
            finding("error", drhost_plugin::describe(&e)),
            cmd("mysql -h $DB_HOST -e \"SELECT 1;\""),
        ]),
    }
}

fn step2() -> StepResult {
    let all = backup::list_backups("app").during("listing the backups")?;
    let mut out: Vec<Finding> = all
        .iter()
        .rev()
        .take(5)
        .map(|b| {
            finding(
                "backup",
                format!(
                    "{} {:?} {} bytes on {}",
                    b.id,
                    b.kind,
                    b.stored_bytes,
                    b.targets.join(",")
                ),
            )
        })
        .collect();
    if out.is_empty() {
        return Err("no backups of app".into());
    }
    out.push(cmd(
        "drhost backup list app   # was: aws s3 ls s3://csoai-backups/ | tail -5",
    ));
    Ok(Outcome::Ok(out))
}

fn step3() -> StepResult {
    let reports = backup::verify("app", "latest", None).during("checking the latest backup")?;
    let r = reports
        .first()
        .ok_or("no copy of the latest backup was checked")?;
    if !r.passed {
        let failed: Vec<String> = r
            .checks
            .iter()
            .filter(|c| c.status == backup::CheckStatus::Fail)
            .map(|c| format!("{}: {}", c.name, c.detail))
            .collect();
        return Err(format!(
            "backup {} failed its checklist: {}",
            r.id,
            failed.join("; ")
        )
        .into());
    }
    Ok(Outcome::Ok(vec![
        finding("checked", &r.id),
        finding("target", &r.target),
        cmd(
            "drhost backup verify latest --source app   # was: aws s3 cp s3://csoai-backups/csoai_latest.sql.gz .",
        ),
    ]))
}

fn step4() -> StepResult {
    let r =
        backup::restore("app", "latest", "standby", None).during("restoring into the standby")?;
    Ok(Outcome::Ok(vec![
        finding("restored", &r.id),
        finding("rows", r.rows),
        cmd(&format!(
            "drhost backup restore {} --source app --to standby   # was: gunzip -c backup.sql.gz | mysql",
            r.id
        )),
    ]))
}

fn step5() -> StepResult {
    let mut out = Smoke::on("standby")
        .query("users", "SELECT COUNT(*) FROM users", Expect::AtLeast(1))
        .run()?;
    out.push(cmd("mysql -h $NEW_HOST -e \"SELECT COUNT(*) FROM users;\""));
    Ok(Outcome::Ok(out))
}

fn step6() -> StepResult {
    s3::put("config", "database.json", b"{\"database\": \"standby\"}\n")
        .during("writing database.json")?;
    Ok(Outcome::Ok(vec![cmd(
        "export DATABASE_URL=\"mysql://user:password@new-host:3306/csoai\"",
    )]))
}

fn step7() -> StepResult {
    let args = setting_words("restart-args");
    let r = exec::run("restart-app", &args).during("restarting the application")?;
    if r.exit_code != Some(0) {
        return Err(format!("restart failed: {}", r.stderr.trim()).into());
    }
    Ok(Outcome::Ok(vec![cmd("systemctl restart csoai-app")]))
}

fn step8() -> StepResult {
    let url = setting("health-url", "http://127.0.0.1:3000/health");
    let mut out = HealthCheck::new(&url).run()?.findings();
    out.push(cmd(&format!("curl {url}")));
    Ok(Outcome::Ok(out))
}

impl Guest for Runbook {
    fn info() -> ScenarioInfo {
        scenario().build()
    }

    fn run_step(id: String, _context: Vec<Finding>) -> Outcome {
        match id.as_str() {
            "1-verify-database-down" => step1(),
            other => outcome(match other {
                "cut-database" => inject_cut(),
                "2-check-backup-status" => step2(),
                "3-download-latest-backup" => step3(),
                "4-restore-database" => step4(),
                "5-verify-restoration" => step5(),
                "6-update-connection-string" => step6(),
                "7-restart-application" => step7(),
                "8-verify-application" => step8(),
                other => Err(format!("unknown step {other}").into()),
            }),
        }
    }
}

drhost_plugin::export!(Runbook with_types_in drhost_plugin::bindings);

#[cfg(test)]
mod tests {
    #[test]
    fn metadata_is_valid() {
        assert_eq!(super::scenario().problems(), Vec::<String>::new());
    }
}
