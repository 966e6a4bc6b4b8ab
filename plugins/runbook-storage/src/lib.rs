//! The plan's Storage Recovery Runbook, step by step, for a person to follow
//! along: each step does what the runbook line does and reports, as the
//! finding `command`, the line a person would type (shown in the report).
//!
//! Grants: `[s3.primary]` read, list, write; `[s3.backup]` read, list;
//! `[s3.config]` write (the application's `storage.json`);
//! `[exec.restart-app]`; `[http] allow` for the application's health URL
//! (state key `health-url`, default http://127.0.0.1:3000/health). For a
//! drill also `sandbox = true` on both buckets: the inject step writes a data
//! set to both and empties the primary.

use drhost_plugin::error::{Context, StepResult, outcome};
use drhost_plugin::health::HealthCheck;
use drhost_plugin::listing::compare_aliases;
use drhost_plugin::scenario::{Scenario, component, detect, inject, minutes, recover, verify};
use drhost_plugin::{
    ComponentKind, Finding, Guest, Outcome, Priority, ScenarioInfo, clock, exec, finding, list_all,
    s3, setting, setting_words,
};

const PRIMARY: &str = "primary";
const BACKUP: &str = "backup";
const COMPONENT: &str = "object-storage";

struct Runbook;

fn scenario() -> Scenario {
    let c = COMPONENT;
    Scenario::new("runbook-storage", "0.1.0")
        .about("The Storage Recovery Runbook, step by step")
        .component(
            component(c, ComponentKind::Storage, Priority::P1)
                .rto(minutes(60))
                .rpo(minutes(15))
                .about("the application's bucket and its backup bucket"),
        )
        .step(
            inject("empty-primary", c)
                .within(minutes(2))
                .mutating()
                .about("write a data set to both buckets, then empty the primary"),
        )
        .step(
            detect("1-verify-bucket-down", c)
                .within(minutes(5))
                .about("aws s3 ls s3://primary/"),
        )
        .step(
            recover("2-check-backup-bucket", c)
                .within(minutes(5))
                .about("the backup bucket holds the data"),
        )
        .step(
            recover("3-restore-from-backup", c)
                .within(minutes(30))
                .mutating()
                .about("aws s3 sync s3://backup/ s3://primary/"),
        )
        .step(
            recover("4-verify-restoration", c)
                .within(minutes(10))
                .about("every object back, same sha256"),
        )
        .step(
            recover("5-update-application", c)
                .within(minutes(2))
                .mutating()
                .about("point the application at the restored bucket"),
        )
        .step(
            recover("6-restart-application", c)
                .within(minutes(10))
                .mutating()
                .about("systemctl restart csoai-app"),
        )
        .step(
            verify("7-verify-application", c)
                .within(minutes(5))
                .about("curl http://localhost:3000/health"),
        )
}

fn cmd(line: &str) -> Finding {
    finding("command", line)
}

fn inject_empty() -> StepResult {
    let now = clock::now_ms();
    for i in 0..5 {
        let key = format!("files/{i}.txt");
        let body = format!("file {i}, {now}");
        s3::put(BACKUP, &key, body.as_bytes()).during(format!("writing backup/{key}"))?;
        s3::put(PRIMARY, &key, body.as_bytes()).during(format!("writing primary/{key}"))?;
    }
    for o in list_all(PRIMARY, "").during("listing the primary")? {
        s3::delete(PRIMARY, &o.key).during(format!("deleting primary/{}", o.key))?;
    }
    Ok(Outcome::Ok(vec![finding("emptied", PRIMARY)]))
}

fn step1() -> StepResult {
    let out = match list_all(PRIMARY, "") {
        Err(e) => Outcome::Detected(vec![finding("primary", drhost_plugin::describe(&e))]),
        Ok(objs) => {
            let c = compare_aliases(BACKUP, PRIMARY, "", &[])?;
            let f = vec![
                finding("objects", objs.len()),
                finding("missing", c.missing.len()),
                finding("corrupted", c.corrupted.len()),
                cmd("aws s3 ls s3://csoai-storage/"),
            ];
            if c.is_clean() {
                Outcome::Ok(f)
            } else {
                Outcome::Detected(f)
            }
        }
    };
    Ok(out)
}

fn step2() -> StepResult {
    let objs = list_all(BACKUP, "").during("listing the backup bucket")?;
    if objs.is_empty() {
        return Err("the backup bucket is empty: nothing to restore from".into());
    }
    let bytes: u64 = objs.iter().map(|o| o.size).sum();
    Ok(Outcome::Ok(vec![
        finding("objects", objs.len()),
        finding("bytes", bytes),
        cmd("aws s3 ls s3://csoai-storage-backup/ --summarize"),
    ]))
}

fn step3() -> StepResult {
    let c = compare_aliases(BACKUP, PRIMARY, "", &[])?;
    let mut copied = 0;
    for key in c.damaged() {
        s3::copy(BACKUP, key, PRIMARY, key).during(format!("copying {key}"))?;
        copied += 1;
    }
    Ok(Outcome::Ok(vec![
        finding("copied", copied),
        cmd("aws s3 sync s3://csoai-storage-backup/ s3://csoai-storage/"),
    ]))
}

fn step4() -> StepResult {
    let c = compare_aliases(BACKUP, PRIMARY, "", &[])?;
    if !c.is_clean() {
        return Err(format!(
            "{} missing, {} corrupted after the sync",
            c.missing.len(),
            c.corrupted.len()
        )
        .into());
    }
    Ok(Outcome::Ok(vec![
        finding("objects", c.checked),
        cmd("aws s3 ls s3://csoai-storage/ --recursive | wc -l"),
    ]))
}

fn step5() -> StepResult {
    s3::put("config", "storage.json", b"{\"bucket\": \"primary\"}\n")
        .during("writing storage.json")?;
    Ok(Outcome::Ok(vec![cmd("export S3_BUCKET=\"csoai-storage\"")]))
}

fn step6() -> StepResult {
    let args = setting_words("restart-args");
    let r = exec::run("restart-app", &args).during("restarting the application")?;
    if r.exit_code != Some(0) {
        return Err(format!("restart failed: {}", r.stderr.trim()).into());
    }
    Ok(Outcome::Ok(vec![
        finding("output", r.stdout.trim()),
        cmd("systemctl restart csoai-app"),
    ]))
}

fn step7() -> StepResult {
    let url = setting("health-url", "http://127.0.0.1:3000/health");
    let h = HealthCheck::new(&url).run()?;
    let mut out = h.findings();
    out.push(cmd(&format!("curl {url}")));
    Ok(Outcome::Ok(out))
}

impl Guest for Runbook {
    fn info() -> ScenarioInfo {
        scenario().build()
    }

    fn run_step(id: String, _context: Vec<Finding>) -> Outcome {
        outcome(match id.as_str() {
            "empty-primary" => inject_empty(),
            "1-verify-bucket-down" => step1(),
            "2-check-backup-bucket" => step2(),
            "3-restore-from-backup" => step3(),
            "4-verify-restoration" => step4(),
            "5-update-application" => step5(),
            "6-restart-application" => step6(),
            "7-verify-application" => step7(),
            other => Err(format!("unknown step {other}").into()),
        })
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
