//! Drills (`drhost drill`): the disaster injected into a sandbox, recovery
//! measured against the targets, JUnit and reports written; and the two
//! capabilities drills brought, `exec` and `net`.

mod common;

use common::*;
use drhost::bindings::Outcome;
use drhost::orchestrator::{self, RunError};
use drhost::policy::Policy;
use std::path::{Path, PathBuf};
use std::process::Command;

fn drhost() -> Command {
    Command::new(env!("CARGO_BIN_EXE_drhost"))
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The quickstart's drill policy, copied into `dir` so its sandbox
/// buckets (relative paths) land there.
fn drill_policy(dir: &Path) -> PathBuf {
    let p = dir.join("storage-failover.drill.policy.toml");
    std::fs::copy(
        repo().join("examples/quickstart/storage-failover.drill.policy.toml"),
        &p,
    )
    .unwrap();
    p
}

/// A drill of a built plugin with its records and state under `dir`.
async fn drill_plugin(
    dir: &Path,
    plugin: &str,
    policy: &Path,
    config: Option<&Path>,
) -> orchestrator::RunReport {
    name_the_scenario(policy, plugin);
    drhost::drill::run(
        runtime(),
        &plugin_path(plugin),
        policy,
        config,
        &dir.join("runs"),
        &dir.join("state"),
    )
    .await
    .unwrap()
}

/// The state store is named by the policy (`[plugin] scenario`), never by
/// the plugin: the tests seed it under the scenario's name, so their
/// policies name it too.
fn name_the_scenario(policy: &Path, scenario: &str) {
    let text = std::fs::read_to_string(policy).unwrap();
    if !text.contains("[plugin]") {
        std::fs::write(
            policy,
            format!("[plugin]\nscenario = \"{scenario}\"\n\n{text}"),
        )
        .unwrap();
    }
}

async fn drill(
    dir: &Path,
    policy: &Path,
) -> Result<orchestrator::RunReport, drhost::drill::DrillError> {
    drhost::drill::run(
        runtime(),
        &plugin_path("storage-failover"),
        policy,
        None,
        &dir.join("runs"),
        &dir.join("state"),
    )
    .await
}

#[tokio::test]
async fn storage_drill_injects_the_disaster_detects_recovers_and_meets_its_targets() {
    let dir = tempfile::tempdir().unwrap();
    let r = drill(dir.path(), &drill_policy(dir.path())).await.unwrap();
    let table = orchestrator::render_table(&r);
    assert_eq!(r.mode, "drill");
    assert_eq!(
        (r.outcome.as_str(), r.exit_code),
        ("recovered", 0),
        "{table}"
    );
    let phases: Vec<(&str, &str)> = r
        .steps
        .iter()
        .map(|s| (s.id.as_str(), s.outcome.as_str()))
        .collect();
    assert_eq!(
        phases,
        [
            ("lose-and-corrupt-objects", "ok"),
            ("confirm-failure", "detected"),
            ("restore-from-secondary", "ok"),
            ("repoint-application", "ok"),
            ("verify-integrity", "ok"),
            ("verify-upload-download", "ok"),
        ]
    );
    let detect = &r.steps[1];
    assert_eq!(get(&detect.findings, "missing"), Some("2"), "{table}");
    assert_eq!(get(&detect.findings, "corrupted"), Some("1"), "{table}");
    let c = &r.components[0];
    assert_eq!(c.status, "recovered");
    assert!(c.detection_s.is_some_and(|d| d >= 0.0), "{c:?}");
    assert_eq!(c.rto_met, Some(true), "{c:?}");
    // Every object of the data set came back: nothing was lost.
    assert_eq!(c.achieved_rpo_s, Some(0.0), "{c:?}");
    assert_eq!(c.rpo_met, Some(true));
    // The primary holds the data set again, intact.
    let primary = dir.path().join("work/drill/primary/drill");
    let mut names: Vec<String> = std::fs::read_dir(&primary)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 6);
    for n in &names {
        let body = std::fs::read_to_string(primary.join(n)).unwrap();
        assert_eq!(body, format!("drill data drill/{n}"));
    }
    // The inject step's calls are in the audit log, each allowed by a sandbox grant.
    let records = drhost::audit::read(&r.audit_log).unwrap();
    let injected: Vec<_> = records
        .iter()
        .filter(|l| l.record["type"] == "call" && l.record["step"] == "lose-and-corrupt-objects")
        .collect();
    assert!(injected.len() > 10);
    assert!(injected.iter().all(|l| l.record["decision"] == "allow"));
}

#[tokio::test]
async fn storage_drill_with_the_secondary_also_damaged_misses_the_rpo_and_the_report_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        drhost::caps::state::StateCap::load(&dir.path().join("state"), "storage-failover", 1 << 20)
            .unwrap();
    store
        .set("drill.damage-secondary", b"yes".to_vec())
        .unwrap();
    store.persist().unwrap();
    let r = drill(dir.path(), &drill_policy(dir.path())).await.unwrap();
    let c = &r.components[0];
    // The two newest objects (written at now and now - 10 min) are gone from
    // both buckets: the newest data left is 20 minutes old, over the 15-minute RPO.
    assert_eq!(c.achieved_rpo_s, Some(1200.0), "{c:?}");
    assert_eq!(c.rpo_met, Some(false));
    assert_eq!(c.rto_met, Some(true));
    assert_eq!((r.outcome.as_str(), r.exit_code), ("target-missed", 3));

    let md = drhost::report::markdown(&r);
    assert!(md.contains("a target was missed"), "{md}");
    assert!(md.contains("| 20 min 0 s ❌ | 15 min 0 s |"), "{md}");
    let xml = drhost::report::junit(&[&r]);
    assert!(
        xml.contains("<failure message=\"lost 20 min 0 s of data, over the RPO of 15 min 0 s\"/>"),
        "{xml}"
    );
    assert!(xml.contains("failures=\"1\""), "{xml}");
}

#[tokio::test]
async fn an_inject_step_cannot_touch_a_grant_that_is_not_marked_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("p.toml");
    // The run policy's grants, without sandbox = true.
    std::fs::write(
        &policy,
        "[s3.primary]\npath = \"prod/primary\"\naccess = [\"read\", \"list\", \"write\", \"delete\"]\n\
         write-phases = [\"inject\", \"recover\", \"verify\"]\n\
         [s3.secondary]\npath = \"prod/secondary\"\naccess = [\"read\", \"list\", \"write\", \"delete\"]\n",
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("prod/primary")).unwrap();
    std::fs::write(dir.path().join("prod/primary/keep.txt"), "production").unwrap();
    let r = drill(dir.path(), &policy).await.unwrap();
    assert_eq!((r.outcome.as_str(), r.exit_code), ("failed", 1));
    let inject = &r.steps[0];
    assert_eq!(inject.outcome, "failed");
    assert!(
        inject
            .detail
            .contains("mark [s3.primary] sandbox = true in the drill's policy"),
        "{}",
        inject.detail
    );
    assert!(
        r.steps[1..]
            .iter()
            .all(|s| s.outcome == "skipped" && s.detail == "the disaster could not be injected")
    );
    // Production is as it was.
    let left: Vec<_> = std::fs::read_dir(dir.path().join("prod/primary"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["keep.txt"]);
    assert!(drhost::report::markdown(&r).contains("the drill failed"));
}

#[tokio::test]
async fn inject_steps_run_only_in_a_drill_and_only_scenarios_with_one_can_be_drilled() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = run_opts(dir.path(), Policy::deny_all());
    opts.phase = orchestrator::parse_phase("inject");
    let err = orchestrator::run(runtime(), &plugin_path("storage-failover"), opts)
        .await
        .expect_err("refused");
    assert!(matches!(err, RunError::Config(_)));
    assert!(err.to_string().contains("only in `drhost drill`"), "{err}");

    // A normal run of a scenario with an inject step never runs it.
    let policy = dir.path().join("p.toml");
    std::fs::write(
        &policy,
        "[s3.primary]\npath = \"b/p\"\naccess = [\"read\", \"list\", \"write\", \"delete\"]\n\
         write-phases = [\"recover\", \"verify\"]\n\
         [s3.secondary]\npath = \"b/s\"\naccess = [\"read\", \"list\"]\n",
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("b/s")).unwrap();
    let r = orchestrator::run(
        runtime(),
        &plugin_path("storage-failover"),
        run_opts(dir.path(), Policy::load(&policy).unwrap()),
    )
    .await
    .unwrap();
    assert!(r.steps.iter().all(|s| s.phase != "inject"));
    assert_eq!(r.outcome, "healthy");

    let err = drhost::drill::run(
        runtime(),
        &plugin_path("app-health"),
        &policy,
        None,
        &dir.path().join("runs"),
        &dir.path().join("state"),
    )
    .await
    .expect_err("refused");
    assert!(err.to_string().contains("declares no inject step"), "{err}");
}

#[test]
fn drill_cli_writes_junit_and_reports_and_drills_every_example_with_all() {
    let dir = tempfile::tempdir().unwrap();
    let policy = drill_policy(dir.path());
    let out = drhost()
        .arg("drill")
        .arg(plugin_path("storage-failover"))
        .arg("--policy")
        .arg(&policy)
        .args([
            "--junit",
            "junit.xml",
            "--report",
            "report",
            "--out",
            "runs",
        ])
        .env("DRHOST_STATE_DIR", dir.path().join("state"))
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("data lost: 0.0 s (RPO 900 s) met"),
        "{stdout}"
    );
    let junit = std::fs::read_to_string(dir.path().join("junit.xml")).unwrap();
    // Six steps and two targets.
    assert!(
        junit.contains("tests=\"8\" failures=\"0\" skipped=\"0\""),
        "{junit}"
    );
    assert!(
        junit.contains("name=\"inject lose-and-corrupt-objects\""),
        "{junit}"
    );
    assert!(junit.contains("name=\"object-storage RTO\""), "{junit}");
    let svg = std::fs::read_to_string(dir.path().join("report/timeline.svg")).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("RTO object-storage 60 min 0 s"),
        "{svg}"
    );
    let html = std::fs::read_to_string(dir.path().join("report/report.html")).unwrap();
    assert!(
        html.contains("<svg") && html.contains("the drill passed"),
        "{html}"
    );
    let md = std::fs::read_to_string(dir.path().join("report/report.md")).unwrap();
    assert!(md.contains("![steps against their budgets](timeline.svg)"));

    // --all: every <dir>/*/drill.toml, one report directory each.
    let examples = dir.path().join("examples");
    for name in ["one", "two"] {
        let d = examples.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(&policy, d.join("drill.policy.toml")).unwrap();
        std::fs::write(
            d.join("drill.toml"),
            format!(
                "description = \"{name}\"\nplugin = {:?}\npolicy = \"drill.policy.toml\"\n",
                plugin_path("storage-failover")
            ),
        )
        .unwrap();
    }
    let out = drhost()
        .args([
            "drill", "--all", "examples", "--report", "all", "--junit", "all.xml",
        ])
        .env("DRHOST_STATE_DIR", dir.path().join("state"))
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("all/one/report.html").is_file());
    assert!(dir.path().join("all/two/report.html").is_file());
    let junit = std::fs::read_to_string(dir.path().join("all.xml")).unwrap();
    assert_eq!(junit.matches("<testsuite ").count(), 2);

    let out = drhost()
        .args(["drill", "--all", "nowhere"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

// ---- exec ----

const EXEC_POLICY: &str = r#"
[exec.greet]
program = "/bin/echo"
args = ["hello", "*"]

[exec.nap]
program = "/bin/sleep"
args = ["*"]
timeout = "300ms"

[exec.count]
program = "/usr/bin/seq"
args = ["*"]
max-output = "100 bytes"
"#;

#[tokio::test]
async fn exec_runs_only_the_granted_program_with_arguments_matching_its_patterns() {
    let dir = tempfile::tempdir().unwrap();
    let caps = caps(EXEC_POLICY, dir.path()).await;
    let f = ok(
        &caps,
        "exec.run",
        &[
            ("name", "greet"),
            ("arg", "hello"),
            ("arg", "world; rm -rf /"),
        ],
    )
    .await;
    // No shell: the argument reaches echo as it is.
    assert_eq!(get(&f, "stdout"), Some("hello world; rm -rf /\n"));
    assert_eq!(get(&f, "exit"), Some("0"));

    let why = failed(
        &caps,
        "exec.run",
        &[("name", "greet"), ("arg", "bye"), ("arg", "x")],
    )
    .await;
    assert!(
        why.contains("argument 1 \"bye\" does not match \"hello\""),
        "{why}"
    );
    let why = failed(&caps, "exec.run", &[("name", "greet"), ("arg", "hello")]).await;
    assert!(
        why.contains("1 arguments given, the grant has 2 patterns"),
        "{why}"
    );
    let why = failed(&caps, "exec.run", &[("name", "shell")]).await;
    assert!(why.contains("add [exec.shell]"), "{why}");

    flush(&caps);
    let records = audit_records(dir.path());
    let denied = records
        .iter()
        .filter(|r| r["interface"] == "exec" && r["decision"] == "deny")
        .count();
    assert_eq!(denied, 3);
    let allowed = records
        .iter()
        .find(|r| r["interface"] == "exec" && r["decision"] == "allow")
        .unwrap();
    assert_eq!(allowed["exit_code"], 0);
    assert_eq!(allowed["grant"], "exec.greet program=/bin/echo");
}

#[tokio::test]
async fn exec_kills_a_program_past_its_timeout_and_caps_its_output() {
    let dir = tempfile::tempdir().unwrap();
    let caps = caps(EXEC_POLICY, dir.path()).await;
    let f = ok(&caps, "exec.run", &[("name", "nap"), ("arg", "30")]).await;
    assert_eq!(get(&f, "exit"), Some("killed"));

    let f = ok(&caps, "exec.run", &[("name", "count"), ("arg", "100000")]).await;
    assert_eq!(get(&f, "truncated"), Some("true"));
    assert_eq!(get(&f, "stdout").unwrap().len(), 100);
    assert_eq!(get(&f, "exit"), Some("0"));

    // Plan mode records the run instead of starting the program.
    let plan = caps_with(EXEC_POLICY, dir.path(), true, None).await;
    let why = failed(
        &plan,
        "exec.run",
        &[("name", "greet"), ("arg", "hello"), ("arg", "x")],
    )
    .await;
    assert!(why.starts_with("planned:"), "{why}");
}

// ---- net ----

#[tokio::test]
async fn net_resolves_and_probes_only_the_hosts_and_ports_the_policy_lists() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let open = listener.local_addr().unwrap().port();
    // A port that was free a moment ago: nothing listens on it.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let caps = caps(
        &format!("[net]\nallow = [\"localhost\", \"127.0.0.1:{open}\", \"127.0.0.1:{closed}\"]\n"),
        dir.path(),
    )
    .await;
    let f = ok(&caps, "net.resolve", &[("host", "localhost")]).await;
    assert!(all(&f, "address").contains(&"127.0.0.1"), "{f:?}");
    let f = ok(
        &caps,
        "net.probe",
        &[("host", "127.0.0.1"), ("port", &open.to_string())],
    )
    .await;
    assert!(get(&f, "connect-us").is_some());
    let why = failed(
        &caps,
        "net.probe",
        &[("host", "127.0.0.1"), ("port", &closed.to_string())],
    )
    .await;
    assert!(why.starts_with("unavailable:"), "{why}");
    let why = failed(&caps, "net.probe", &[("host", "localhost"), ("port", "22")]).await;
    assert!(
        why.contains("localhost:22 is not in the policy's [net] allow list"),
        "{why}"
    );
    let why = failed(&caps, "net.resolve", &[("host", "example.com")]).await;
    assert!(why.starts_with("denied:"), "{why}");
    drop(listener);
}

#[tokio::test]
async fn an_inject_step_of_the_probe_is_denied_outside_the_sandbox_but_allowed_inside() {
    // The gate, directly: an inject step may use only sandbox grants.
    let dir = tempfile::tempdir().unwrap();
    let caps = caps(
        "[s3.sandbox]\npath = \"s\"\naccess = [\"write\"]\nsandbox = true\n\
         [s3.prod]\npath = \"p\"\naccess = [\"write\"]\n",
        dir.path(),
    )
    .await;
    caps.gate.set_inject(true);
    let f = ok(&caps, "inject.put", &[("alias", "sandbox"), ("key", "k")]).await;
    assert_eq!(get(&f, "data-at-disaster-ms"), Some("1"));
    let why = failed(&caps, "inject.put", &[("alias", "prod"), ("key", "k")]).await;
    assert!(why.contains("mark [s3.prod] sandbox = true"), "{why}");
    assert!(dir.path().join("s/k").exists());
    assert!(!dir.path().join("p/k").exists());
    caps.gate.set_inject(false);
    // Outside injection the same grant works as usual.
    assert!(matches!(
        step(&caps, "inject.put", &[("alias", "prod"), ("key", "k")]).await,
        Ok(Outcome::Ok(_))
    ));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("p/k")).unwrap(),
        "injected"
    );
}

// ---- scenario 5, data corruption, on the private MariaDB with binary logging ----

/// The two data-corruption drills take turns on their server: a replay from
/// a time starts at the first event at or after it (mariadb-binlog's rule),
/// so another session's writes committed in between could pull an earlier
/// transaction into the replay.
static BINLOG: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A fresh database on the binlog server, a drhost.toml backing it up to a
/// local target, and the drill policy granting it as a sandbox.
async fn corruption_drill_setup(dir: &Path) -> (PathBuf, PathBuf, String) {
    use sqlx::{Connection, Executor};
    let base = mariadb_drill_url();
    let base = base.rsplit_once('/').unwrap().0.to_string();
    let db = format!("drhost_bk_dc_{}", unique().replace('-', "_"));
    let mut c = sqlx::MySqlConnection::connect(&format!("{base}/test"))
        .await
        .unwrap();
    c.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .await
        .unwrap();
    let url = format!("{base}/{db}");
    create_reader(&format!("{base}/test")).await;
    let reader = as_reader(&url);
    let (secret, recipient) = drhost::backup::keygen();
    std::fs::write(dir.join("key.txt"), format!("{secret}\n")).unwrap();
    let config = dir.join("drhost.toml");
    std::fs::write(
        &config,
        format!(
            "[keys]\nrecipients = [\"{recipient}\"]\nidentity = \"key.txt\"\n\
             [sources.app]\nkind = \"mariadb\"\nurl = \"{url}\"\n\
             [targets.local]\npath = \"backups\"\n"
        ),
    )
    .unwrap();
    let policy = dir.join("data-corruption.drill.policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[plugin]\nscenario = \"data-corruption\"\n\
             [db.app]\nurl = \"{url}\"\nread-url = \"{reader}\"\naccess = \"read-write\"\nsandbox = true\n\
             write-phases = [\"inject\", \"contain\", \"recover\", \"verify\"]\n\
             [db.app.invariants]\nno-negative-amounts = \"SELECT COUNT(*) FROM orders WHERE amount < 0\"\n\
             amounts-below-a-million = \"SELECT COUNT(*) FROM orders WHERE amount >= 1000000\"\n\
             [backup.app]\naccess = [\"create\", \"list\", \"verify\", \"restore\"]\nrestore-to = [\"app\"]\nsandbox = true\n"
        ),
    )
    .unwrap();
    (policy, config, url)
}

async fn scalar(url: &str, sql: &str) -> i64 {
    use sqlx::Connection;
    let mut c = sqlx::MySqlConnection::connect(url).await.unwrap();
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(&mut c)
        .await
        .unwrap()
}

#[tokio::test]
async fn data_corruption_drill_restores_to_the_point_before_the_bad_write_and_loses_nothing() {
    let _turn = BINLOG.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (policy, config, url) = corruption_drill_setup(dir.path()).await;
    let r = drhost::drill::run(
        runtime(),
        &plugin_path("data-corruption"),
        &policy,
        Some(&config),
        &dir.path().join("runs"),
        &dir.path().join("state"),
    )
    .await
    .unwrap();
    let table = orchestrator::render_table(&r);
    assert_eq!(
        (r.outcome.as_str(), r.exit_code),
        ("recovered", 0),
        "{table}"
    );
    let outcomes: Vec<(&str, &str)> = r
        .steps
        .iter()
        .map(|s| (s.id.as_str(), s.outcome.as_str()))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("corrupt-orders", "ok"),
            ("validate-data", "detected"),
            ("stop-writes", "ok"),
            ("archive-logs", "ok"),
            ("restore-before-corruption", "ok"),
            ("validate-again", "ok"),
            ("allow-writes", "ok"),
        ],
        "{table}"
    );
    assert_eq!(get(&r.steps[1].findings, "corrupted-rows"), Some("40"));
    // The invariants the policy names, with what they found.
    assert_eq!(
        get(&r.steps[1].findings, "violations.no-negative-amounts"),
        Some("40")
    );
    assert_eq!(
        get(&r.steps[1].findings, "violations.amounts-below-a-million"),
        Some("0")
    );
    // All 130 good orders are there: the 20 written after the full backup
    // and the 10 written after the corruption replayed from the binary log,
    // the bad UPDATE between them left out.
    assert_eq!(scalar(&url, "SELECT COUNT(*) FROM orders").await, 130);
    assert_eq!(
        scalar(&url, "SELECT COUNT(*) FROM orders WHERE amount < 0").await,
        0
    );
    assert_eq!(
        scalar(&url, "SELECT CAST(SUM(amount) AS SIGNED) FROM orders").await,
        85_150
    );
    let c = &r.components[0];
    assert_eq!(c.achieved_rpo_s, Some(0.0), "{c:?}");
    assert_eq!((c.rto_met, c.rpo_met), (Some(true), Some(true)));
    // Runbook lines: the command a person would type for each step.
    let md = drhost::report::markdown(&r);
    assert!(
        md.contains("drhost backup restore latest --source app --to app --point-in-time")
            && md.contains("--resume-at"),
        "{md}"
    );
}

#[tokio::test]
async fn data_corruption_drill_without_a_backup_fails_and_says_why() {
    let _turn = BINLOG.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (policy, config, url) = corruption_drill_setup(dir.path()).await;
    let store =
        drhost::caps::state::StateCap::load(&dir.path().join("state"), "data-corruption", 1 << 20)
            .unwrap();
    store.set("drill.no-backup", b"yes".to_vec()).unwrap();
    store.persist().unwrap();
    let r = drhost::drill::run(
        runtime(),
        &plugin_path("data-corruption"),
        &policy,
        Some(&config),
        &dir.path().join("runs"),
        &dir.path().join("state"),
    )
    .await
    .unwrap();
    let table = orchestrator::render_table(&r);
    assert_eq!((r.outcome.as_str(), r.exit_code), ("failed", 1), "{table}");
    assert_eq!(r.components[0].status, "failed");
    let failed: Vec<&orchestrator::StepResult> =
        r.steps.iter().filter(|s| s.outcome == "failed").collect();
    assert!(!failed.is_empty(), "{table}");
    assert!(
        failed[0].detail.contains("full backup"),
        "{}",
        failed[0].detail
    );
    // Writes stay off while the data does not validate.
    let allow = r.steps.iter().find(|s| s.id == "allow-writes").unwrap();
    assert_eq!(allow.outcome, "failed");
    assert!(allow.detail.contains("writes stay off"), "{}", allow.detail);
    // The corrupted rows are still there: nothing pretended to fix them.
    assert_eq!(
        scalar(&url, "SELECT COUNT(*) FROM orders WHERE amount < 0").await,
        40
    );
    let xml = drhost::report::junit(&[&r]);
    assert!(xml.contains("the component was not recovered"), "{xml}");
}

// ---- scenario 2, application server failure, with real HTTP servers ----

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.0 request over a plain socket; the status and body, or None
/// when nothing answers.
fn http(method: &str, port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(s, "{method} {path} HTTP/1.0\r\nContent-Length: 0\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    Some((
        status,
        text.split("\r\n\r\n").nth(1).unwrap_or("").to_string(),
    ))
}

fn fixture(name: &str) -> PathBuf {
    repo().join("tests/fixtures").join(name)
}

/// Two application servers (blue, green) and a switch in front of them.
struct AppSetup {
    blue: u16,
    green: u16,
    switch: u16,
    switch_process: std::process::Child,
}

impl AppSetup {
    fn start() -> AppSetup {
        let (blue, green, switch) = (free_port(), free_port(), free_port());
        start_app(blue, "blue");
        start_app(green, "green");
        let switch_process = start_fixture(
            "switch.py",
            switch,
            &[
                format!("blue=http://127.0.0.1:{blue}"),
                format!("green=http://127.0.0.1:{green}"),
            ],
            "/active",
        );
        AppSetup {
            blue,
            green,
            switch,
            switch_process,
        }
    }

    fn policy(&self, dir: &Path) -> PathBuf {
        let p = dir.join("app-failover.drill.policy.toml");
        std::fs::write(
            &p,
            format!(
                "[http]\nallow = [\"http://127.0.0.1:{b}/\", \"http://127.0.0.1:{g}/\", \"http://127.0.0.1:{s}/\"]\n\
                 sandbox = [\"http://127.0.0.1:{b}/\", \"http://127.0.0.1:{g}/\"]\n\
                 [exec.restart-app]\nprogram = {prog:?}\nargs = [\"*\", \"blue\"]\ntimeout = \"20s\"\nleaves-running = true\n",
                b = self.blue,
                g = self.green,
                s = self.switch,
                prog = fixture("start-app.sh"),
            ),
        )
        .unwrap();
        p
    }

    fn state(&self, dir: &Path, extra: &[(&str, &str)]) {
        let store =
            drhost::caps::state::StateCap::load(&dir.join("state"), "app-failover", 1 << 20)
                .unwrap();
        for (k, v) in [
            ("primary-url", format!("http://127.0.0.1:{}", self.blue)),
            ("backup-url", format!("http://127.0.0.1:{}", self.green)),
            ("switch-url", format!("http://127.0.0.1:{}", self.switch)),
            ("restart-args", format!("{} blue", self.blue)),
        ] {
            store.set(k, v.into_bytes()).unwrap();
        }
        for (k, v) in extra {
            store.set(k, v.as_bytes().to_vec()).unwrap();
        }
        store.persist().unwrap();
    }
}

impl Drop for AppSetup {
    fn drop(&mut self) {
        for port in [self.blue, self.green] {
            let _ = http("POST", port, "/crash");
        }
        let _ = self.switch_process.kill();
        let _ = self.switch_process.wait();
    }
}

#[tokio::test]
async fn app_failover_drill_routes_to_the_backup_restarts_the_failed_server_and_verifies() {
    let apps = AppSetup::start();
    let dir = tempfile::tempdir().unwrap();
    apps.state(dir.path(), &[]);
    let r = drill_plugin(dir.path(), "app-failover", &apps.policy(dir.path()), None).await;
    let table = orchestrator::render_table(&r);
    assert_eq!(
        (r.outcome.as_str(), r.exit_code),
        ("recovered", 0),
        "{table}"
    );
    let outcomes: Vec<(&str, &str)> = r
        .steps
        .iter()
        .map(|s| (s.id.as_str(), s.outcome.as_str()))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("crash-primary", "ok"),
            ("confirm-failure", "detected"),
            ("route-to-backup", "ok"),
            ("restart-failed", "ok"),
            ("verify-service", "ok"),
        ],
        "{table}"
    );
    // Traffic goes to green; blue was restarted by the allow-listed command.
    assert_eq!(http("GET", apps.switch, "/active").unwrap().1, "green");
    assert_eq!(
        http("GET", apps.blue, "/health").unwrap(),
        (200, "ok blue".into())
    );
    let c = &r.components[0];
    assert_eq!(c.rto_met, Some(true), "{c:?}");
    // An application server holds no data: the RPO is not measured, and says so.
    assert_eq!(c.achieved_rpo_s, None);
    let xml = drhost::report::junit(&[&r]);
    assert!(xml.contains("<skipped message=\"not measured"), "{xml}");
    // The restart went through the exec gate, with its arguments recorded.
    let records = drhost::audit::read(&r.audit_log).unwrap();
    let restart = records
        .iter()
        .map(|l| serde_json::Value::Object(l.record.clone()))
        .find(|r| r["interface"] == "exec")
        .unwrap();
    assert_eq!(restart["decision"], "allow");
    assert_eq!(restart["exit_code"], 0);
    assert_eq!(restart["args"]["args"][1], "blue");
}

#[tokio::test]
async fn app_failover_drill_with_the_backup_down_as_well_fails_and_says_why() {
    let apps = AppSetup::start();
    let dir = tempfile::tempdir().unwrap();
    apps.state(dir.path(), &[("drill.crash-both", "yes")]);
    let r = drill_plugin(dir.path(), "app-failover", &apps.policy(dir.path()), None).await;
    let table = orchestrator::render_table(&r);
    assert_eq!((r.outcome.as_str(), r.exit_code), ("failed", 1), "{table}");
    let route = r.steps.iter().find(|s| s.id == "route-to-backup").unwrap();
    assert_eq!(route.outcome, "failed");
    assert!(
        route
            .detail
            .starts_with("no healthy backup server to route to"),
        "{}",
        route.detail
    );
    let restart = r.steps.iter().find(|s| s.id == "restart-failed").unwrap();
    assert_eq!(restart.outcome, "skipped");
    assert_eq!(r.components[0].status, "failed");
    assert!(drhost::report::markdown(&r).contains("no healthy backup server"));
}

// ---- scenario 4, network failure: two paths, a DNS provider's API ----

struct NetSetup {
    primary: u16,
    backup: u16,
    dns: u16,
    dns_process: std::process::Child,
}

fn start_app(port: u16, name: &str) {
    let out = Command::new(fixture("start-app.sh"))
        .args([port.to_string(), name.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts a python fixture server and waits until it answers GET `path`.
fn start_fixture(script: &str, port: u16, args: &[String], path: &str) -> std::process::Child {
    let child = Command::new("python3")
        .arg(fixture(script))
        .arg(port.to_string())
        .args(args)
        .spawn()
        .unwrap();
    let ready = (0..200).any(|_| {
        http("GET", port, path).is_some() || {
            std::thread::sleep(std::time::Duration::from_millis(25));
            false
        }
    });
    assert!(ready, "{script} did not start");
    child
}

impl NetSetup {
    fn start() -> NetSetup {
        let (primary, backup, dns) = (free_port(), free_port(), free_port());
        start_app(primary, "primary");
        start_app(backup, "backup");
        let dns_process = start_fixture(
            "dnsapi.py",
            dns,
            &[format!("app.example.com=localhost:{primary}")],
            "/records/app.example.com",
        );
        NetSetup {
            primary,
            backup,
            dns,
            dns_process,
        }
    }

    fn prepare(&self, dir: &Path, extra: &[(&str, &str)]) -> PathBuf {
        let (p, b, d) = (self.primary, self.backup, self.dns);
        let policy = dir.join("network-failover.drill.policy.toml");
        std::fs::write(
            &policy,
            format!(
                "[net]\nallow = [\"localhost:{p}\", \"localhost:{b}\"]\nsandbox = true\n\
                 [http]\nallow = [\"http://127.0.0.1:{d}/\", \"http://localhost:{p}/\", \"http://localhost:{b}/\"]\n\
                 addresses = [\"127.0.0.0/8\"]\n\
                 sandbox = [\"http://localhost:{p}/\", \"http://localhost:{b}/\"]\n\
                 write-phases = [\"inject\", \"contain\", \"recover\", \"verify\"]\n\
                 [exec.restore-primary]\nprogram = {prog:?}\nargs = [\"*\", \"primary\"]\ntimeout = \"20s\"\nleaves-running = true\n\
                 write-phases = [\"recover\", \"verify\"]\n",
                prog = fixture("start-app.sh"),
            ),
        )
        .unwrap();
        let store =
            drhost::caps::state::StateCap::load(&dir.join("state"), "network-failover", 1 << 20)
                .unwrap();
        for (k, v) in [
            ("primary", format!("localhost:{p}")),
            ("backup", format!("localhost:{b}")),
            ("dns-api", format!("http://127.0.0.1:{d}")),
            ("record", "app.example.com".to_string()),
            ("restore-args", format!("{p} primary")),
        ] {
            store.set(k, v.into_bytes()).unwrap();
        }
        for (k, v) in extra {
            store.set(k, v.as_bytes().to_vec()).unwrap();
        }
        store.persist().unwrap();
        policy
    }

    fn record(&self) -> String {
        http("GET", self.dns, "/records/app.example.com").unwrap().1
    }
}

impl Drop for NetSetup {
    fn drop(&mut self) {
        for port in [self.primary, self.backup] {
            let _ = http("POST", port, "/crash");
        }
        let _ = self.dns_process.kill();
        let _ = self.dns_process.wait();
    }
}

#[tokio::test]
async fn network_drill_fails_the_dns_record_over_verifies_and_fails_back() {
    let net = NetSetup::start();
    let dir = tempfile::tempdir().unwrap();
    let policy = net.prepare(dir.path(), &[]);
    let r = drill_plugin(dir.path(), "network-failover", &policy, None).await;
    let table = orchestrator::render_table(&r);
    assert_eq!(
        (r.outcome.as_str(), r.exit_code),
        ("recovered", 0),
        "{table}"
    );
    let outcomes: Vec<(&str, &str)> = r
        .steps
        .iter()
        .map(|s| (s.id.as_str(), s.outcome.as_str()))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("cut-primary-path", "ok"),
            ("check-connectivity", "detected"),
            ("fail-over-dns", "ok"),
            ("verify-failover", "ok"),
            ("fail-back", "ok"),
        ],
        "{table}"
    );
    let detect = &r.steps[1];
    assert!(
        get(&detect.findings, "primary-unreachable").is_some(),
        "{table}"
    );
    assert!(
        get(&detect.findings, "backup-connect-us").is_some(),
        "{table}"
    );
    assert_eq!(
        get(&r.steps[3].findings, "record"),
        Some(format!("localhost:{}", net.backup).as_str())
    );
    // Failed back: the record points at the restored primary, which answers.
    assert_eq!(net.record(), format!("localhost:{}", net.primary));
    assert_eq!(http("GET", net.primary, "/health").unwrap().0, 200);
    // Name resolution and probes went through the net gate.
    let records = drhost::audit::read(&r.audit_log).unwrap();
    let net_calls = records
        .iter()
        .filter(|l| l.record.get("interface").is_some_and(|i| i == "net"))
        .count();
    assert!(net_calls >= 6, "{net_calls}");
    assert_eq!(r.components[0].rto_met, Some(true));
}

#[tokio::test]
async fn network_drill_with_both_paths_cut_fails_and_leaves_the_record_alone() {
    let net = NetSetup::start();
    let dir = tempfile::tempdir().unwrap();
    let policy = net.prepare(dir.path(), &[("drill.cut-both", "yes")]);
    let r = drill_plugin(dir.path(), "network-failover", &policy, None).await;
    let table = orchestrator::render_table(&r);
    assert_eq!((r.outcome.as_str(), r.exit_code), ("failed", 1), "{table}");
    let failover = r.steps.iter().find(|s| s.id == "fail-over-dns").unwrap();
    assert!(
        failover.detail.contains("is unreachable as well"),
        "{}",
        failover.detail
    );
    let back = r.steps.iter().find(|s| s.id == "fail-back").unwrap();
    assert_eq!(back.outcome, "skipped");
    assert_eq!(net.record(), format!("localhost:{}", net.primary));
}

// ---- scenario 6, security breach: MariaDB audit table, log objects, webhooks ----

struct BreachSetup {
    url: String,
    sink: u16,
    sink_process: std::process::Child,
}

impl BreachSetup {
    async fn start() -> BreachSetup {
        use sqlx::{Connection, Executor};
        let base = mariadb_url();
        let base = base.rsplit_once('/').unwrap().0.to_string();
        let db = format!("drhost_bk_sec_{}", unique().replace('-', "_"));
        create_reader(&format!("{base}/test")).await;
        let mut c = sqlx::MySqlConnection::connect(&format!("{base}/test"))
            .await
            .unwrap();
        c.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
            .await
            .unwrap();
        let sink = free_port();
        let sink_process = start_fixture("sink.py", sink, &[], "/received");
        BreachSetup {
            url: format!("{base}/{db}"),
            sink,
            sink_process,
        }
    }

    /// The policy, and the webhooks in the plugin's state.
    fn prepare(&self, dir: &Path, webhooks: &[(&str, String)]) -> PathBuf {
        let policy = dir.join("security-breach.drill.policy.toml");
        let urls: Vec<String> = webhooks.iter().map(|(_, u)| format!("{u:?}")).collect();
        std::fs::write(
            &policy,
            format!(
                "[db.app]\nurl = \"{}\"\nread-url = \"{}\"\naccess = \"read-write\"\nsandbox = true\n\
                 [s3.logs]\npath = \"logs\"\naccess = [\"read\", \"list\", \"write\"]\nsandbox = true\n\
                 [s3.evidence]\npath = \"evidence\"\naccess = [\"read\", \"write\"]\nwrite-once = true\n\
                 [http]\nallow = [{}]\n",
                self.url,
                as_reader(&self.url),
                urls.join(", ")
            ),
        )
        .unwrap();
        let store =
            drhost::caps::state::StateCap::load(&dir.join("state"), "security-breach", 1 << 20)
                .unwrap();
        let lines: Vec<String> = webhooks.iter().map(|(n, u)| format!("{n} {u}")).collect();
        store
            .set("webhooks", lines.join("\n").into_bytes())
            .unwrap();
        store.persist().unwrap();
        policy
    }

    fn hooks(&self) -> Vec<(&'static str, String)> {
        ["status-page", "email", "sms"]
            .into_iter()
            .map(|n| (n, format!("http://127.0.0.1:{}/{n}", self.sink)))
            .collect()
    }
}

impl Drop for BreachSetup {
    fn drop(&mut self) {
        let _ = self.sink_process.kill();
        let _ = self.sink_process.wait();
    }
}

#[tokio::test]
async fn security_drill_finds_the_intrusion_contains_it_preserves_evidence_and_notifies() {
    let b = BreachSetup::start().await;
    let dir = tempfile::tempdir().unwrap();
    let policy = b.prepare(dir.path(), &b.hooks());
    let r = drill_plugin(dir.path(), "security-breach", &policy, None).await;
    let table = orchestrator::render_table(&r);
    assert_eq!(
        (r.outcome.as_str(), r.exit_code),
        ("recovered", 0),
        "{table}"
    );
    let detect = r
        .steps
        .iter()
        .find(|s| s.id == "find-suspicious-activity")
        .unwrap();
    assert_eq!(detect.outcome, "detected");
    assert_eq!(all(&detect.findings, "breach-account"), ["carol"]);
    assert_eq!(all(&detect.findings, "breach-ip"), ["203.0.113.7"]);
    assert_eq!(get(&detect.findings, "failed-logins.carol"), Some("25"));
    assert_eq!(get(&detect.findings, "log-hits.app/auth.log"), Some("27"));
    // Contained in the database: carol disabled, her key revoked; the others untouched.
    assert_eq!(
        scalar(&b.url, "SELECT COUNT(*) FROM accounts WHERE disabled = 1").await,
        1
    );
    assert_eq!(
        scalar(
            &b.url,
            "SELECT revoked FROM api_keys WHERE account = 'carol'"
        )
        .await,
        1
    );
    // Evidence: each object's sha256 in the findings (and so in the audit log) matches the file.
    let preserve = r
        .steps
        .iter()
        .find(|s| s.id == "preserve-evidence")
        .unwrap();
    let sums: Vec<&(String, String)> = preserve
        .findings
        .iter()
        .filter(|(k, _)| k.starts_with("sha256."))
        .collect();
    assert_eq!(sums.len(), 2, "{:?}", preserve.findings);
    for (k, v) in sums {
        let file = dir.path().join("evidence").join(&k["sha256.".len()..]);
        assert_eq!(&drhost::digest::sha256_file(&file).unwrap(), v);
    }
    // Three webhooks, each with the GDPR deadline 72 hours after first sight.
    let notify = r.steps.iter().find(|s| s.id == "notify").unwrap();
    let deadline = get(&notify.findings, "gdpr-deadline").unwrap().to_string();
    let received = http("GET", b.sink, "/received").unwrap().1;
    assert_eq!(received.lines().count(), 3, "{received}");
    for n in ["/status-page", "/email", "/sms"] {
        assert!(received.contains(n), "{received}");
    }
    assert!(
        received.contains(&format!("\"gdpr_deadline\":\"{deadline}\"")),
        "{received}"
    );
    let md = drhost::report::markdown(&r);
    assert!(md.contains(&format!("- gdpr-deadline: {deadline}")), "{md}");
}

#[tokio::test]
async fn security_drill_fails_when_a_notification_gateway_is_down_and_names_it() {
    let b = BreachSetup::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut hooks = b.hooks();
    // The e-mail gateway is down: nothing listens on its port.
    hooks[1].1 = format!("http://127.0.0.1:{}/email", free_port());
    let policy = b.prepare(dir.path(), &hooks);
    let r = drill_plugin(dir.path(), "security-breach", &policy, None).await;
    let table = orchestrator::render_table(&r);
    assert_eq!((r.outcome.as_str(), r.exit_code), ("failed", 1), "{table}");
    let notify = r.steps.iter().find(|s| s.id == "notify").unwrap();
    assert_eq!(notify.outcome, "failed");
    assert!(
        notify.detail.starts_with("could not notify email:"),
        "{}",
        notify.detail
    );
    assert!(notify.detail.contains("GDPR deadline"), "{}", notify.detail);
    // Containment happened before: the account is disabled regardless.
    assert_eq!(
        scalar(&b.url, "SELECT COUNT(*) FROM accounts WHERE disabled = 1").await,
        1
    );
    assert!(drhost::report::markdown(&r).contains("could not notify email"));
}

// ---- scenario 1, database failure: a real primary, its replica, a proxy in front ----

/// The primary/replica pair is one per test run: its tests take turns.
static PAIR: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn port_of(url: &str) -> u16 {
    url.rsplit_once(':')
        .unwrap()
        .1
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// The account drill policies name in `read-url` (SELECT and SLAVE MONITOR
/// on everything): root's server privileges reach past a read-only
/// transaction, so drhost never reads through root in a read-only phase.
async fn create_reader(admin: &str) {
    run_sql(
        admin,
        "CREATE USER IF NOT EXISTS 'drhost_reader'@'%' IDENTIFIED BY 'drhost-reader'; \
         CREATE USER IF NOT EXISTS 'drhost_reader'@'localhost' IDENTIFIED BY 'drhost-reader'; \
         GRANT SELECT, SLAVE MONITOR ON *.* TO 'drhost_reader'@'%'; \
         GRANT SELECT, SLAVE MONITOR ON *.* TO 'drhost_reader'@'localhost'",
    )
    .await;
}

/// `url` with root replaced by the reader account.
fn as_reader(url: &str) -> String {
    url.replacen("root@", "drhost_reader:drhost-reader@", 1)
}

async fn run_sql(url: &str, sql: &str) {
    use sqlx::Connection;
    let mut c = sqlx::MySqlConnection::connect(url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(&mut c)
        .await
        .unwrap();
}

struct DbSetup {
    db: String,
    proxy: u16,
    control: u16,
    proxy_process: std::process::Child,
}

impl DbSetup {
    /// Replication (re)attached and caught up, a fresh database on both
    /// servers, and a proxy in front of the primary.
    async fn start() -> DbSetup {
        let primary = mariadb_primary_url();
        let replica = mariadb_replica_url();
        run_sql(
            &replica,
            &format!(
                "STOP SLAVE; RESET SLAVE ALL; CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={}, \
                 MASTER_USER='root', MASTER_PASSWORD='', MASTER_USE_GTID=slave_pos; START SLAVE; SET GLOBAL read_only = ON",
                port_of(&primary)
            ),
        )
        .await;
        let db = format!("drhost_bk_dbf_{}", unique().replace('-', "_"));
        // Replicated before the database, which the replica is awaited for.
        create_reader(&primary).await;
        run_sql(&primary, &format!("CREATE DATABASE {db}")).await;
        // The standby a backup is restored into: the replica's own, not replicated.
        run_sql(
            &replica,
            &format!("SET SESSION sql_log_bin = 0; CREATE DATABASE {db}_standby"),
        )
        .await;
        // Replication is asynchronous: wait until the replica has the database.
        let mut there = false;
        for _ in 0..200 {
            if scalar(
                &replica,
                &format!(
                    "SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = '{db}'"
                ),
            )
            .await
                == 1
            {
                there = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(there, "the replica did not receive {db}");
        let (control, proxy) = (free_port(), free_port());
        let proxy_process = start_fixture(
            "tcpproxy.py",
            control,
            &[proxy.to_string(), port_of(&primary).to_string()],
            "/health",
        );
        DbSetup {
            db,
            proxy,
            control,
            proxy_process,
        }
    }

    fn url(&self, base: &str, suffix: &str) -> String {
        let base = base.rsplit_once('/').unwrap().0;
        format!("{base}/{}{suffix}", self.db)
    }

    fn prepare(&self, dir: &Path, extra: &[(&str, &str)]) -> (PathBuf, PathBuf) {
        let primary = mariadb_primary_url();
        let replica = mariadb_replica_url();
        let control = format!("http://127.0.0.1:{}", self.control);
        let via_proxy = format!("mysql://root@127.0.0.1:{}/{}", self.proxy, self.db);
        let policy = dir.join("db-failover.drill.policy.toml");
        std::fs::write(
            &policy,
            format!(
                "[db.primary]\nurl = \"{via_proxy}\"\nread-url = \"{}\"\naccess = \"read-write\"\nsandbox = true\n\
                 [db.replica]\nurl = \"{}\"\nread-url = \"{}\"\naccess = \"read-write\"\nsandbox = true\n\
                 [db.standby]\nurl = \"{}\"\nread-url = \"{}\"\naccess = \"read-write\"\n\
                 [backup.app]\naccess = [\"list\", \"verify\", \"restore\"]\nrestore-to = [\"standby\"]\n\
                 [s3.config]\npath = \"config\"\naccess = [\"write\"]\n\
                 [http]\nallow = [\"{control}/\"]\nsandbox = [\"{control}/\"]\n",
                as_reader(&via_proxy),
                self.url(&replica, ""),
                as_reader(&self.url(&replica, "")),
                self.url(&replica, "_standby"),
                as_reader(&self.url(&replica, "_standby")),
            ),
        )
        .unwrap();
        let (secret, recipient) = drhost::backup::keygen();
        std::fs::write(dir.join("key.txt"), format!("{secret}\n")).unwrap();
        let config = dir.join("drhost.toml");
        std::fs::write(
            &config,
            format!(
                "[keys]\nrecipients = [\"{recipient}\"]\nidentity = \"key.txt\"\n\
                 [sources.app]\nkind = \"mariadb\"\nurl = \"{}\"\n\
                 [sources.standby]\nkind = \"mariadb\"\nurl = \"{}\"\n\
                 [targets.local]\npath = \"backups\"\n",
                self.url(&primary, ""),
                self.url(&replica, "_standby"),
            ),
        )
        .unwrap();
        let store = drhost::caps::state::StateCap::load(&dir.join("state"), "db-failover", 1 << 20)
            .unwrap();
        store.set("primary-control", control.into_bytes()).unwrap();
        for (k, v) in extra {
            store.set(k, v.as_bytes().to_vec()).unwrap();
        }
        store.persist().unwrap();
        (policy, config)
    }
}

impl Drop for DbSetup {
    fn drop(&mut self) {
        let _ = self.proxy_process.kill();
        let _ = self.proxy_process.wait();
    }
}

#[tokio::test]
async fn database_drill_promotes_the_replica_repoints_the_application_and_loses_nothing() {
    let _turn = PAIR.lock().await;
    let s = DbSetup::start().await;
    let dir = tempfile::tempdir().unwrap();
    // The application's metrics, read for the error rate.
    let app = free_port();
    start_app(app, "app");
    let metrics = format!("http://127.0.0.1:{app}/metrics");
    let (policy, config) = s.prepare(dir.path(), &[("error-rate-url", &metrics)]);
    let mut text = std::fs::read_to_string(&policy).unwrap();
    text = text.replace(
        "allow = [",
        &format!("allow = [\"http://127.0.0.1:{app}/\", "),
    );
    std::fs::write(&policy, text).unwrap();
    let r = drill_plugin(dir.path(), "db-failover", &policy, Some(&config)).await;
    let _ = http("POST", app, "/crash");
    let table = orchestrator::render_table(&r);
    assert_eq!(
        (r.outcome.as_str(), r.exit_code),
        ("recovered", 0),
        "{table}"
    );
    let outcomes: Vec<(&str, &str)> = r
        .steps
        .iter()
        .map(|s| (s.id.as_str(), s.outcome.as_str()))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("cut-primary", "ok"),
            ("confirm-failure", "detected"),
            ("promote-replica", "ok"),
            ("restore-from-backup", "skipped"),
            ("repoint-application", "ok"),
            ("smoke-queries", "ok"),
        ],
        "{table}"
    );
    // The replica is a writable primary now, and the application is pointed at it.
    let replica = mariadb_replica_url();
    assert_eq!(scalar(&replica, "SELECT @@read_only").await, 0);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("config/database.json")).unwrap(),
        "{\"database\": \"replica\"}\n"
    );
    assert_eq!(get(&r.steps[1].findings, "error-rate"), Some("0.00"));
    let c = &r.components[0];
    // The heartbeat written just before the disaster survived the failover.
    assert_eq!(c.achieved_rpo_s, Some(0.0), "{c:?}");
    assert_eq!((c.rto_met, c.rpo_met), (Some(true), Some(true)));
    assert!(c.detection_s.is_some());
}

#[tokio::test]
async fn database_drill_without_a_replica_restores_the_latest_verified_backup_into_the_standby() {
    let _turn = PAIR.lock().await;
    let s = DbSetup::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (policy, config) = s.prepare(dir.path(), &[("drill.no-replica", "yes")]);
    // Last night's backup of the application's database.
    let primary = mariadb_primary_url();
    let five_minutes_ago = drhost::clock::now_ms() - 300_000;
    run_sql(
        &s.url(&primary, ""),
        &format!(
            "CREATE TABLE heartbeat (at_ms BIGINT PRIMARY KEY); INSERT INTO heartbeat VALUES ({five_minutes_ago})"
        ),
    )
    .await;
    let c = drhost::backup::config::Config::load(&config).unwrap();
    let b = drhost::backup::Backups::open(c, dir.path().join("state"))
        .await
        .unwrap();
    b.create("app", drhost::backup::manifest::Kind::Full)
        .await
        .unwrap();
    let r = drill_plugin(dir.path(), "db-failover", &policy, Some(&config)).await;
    let table = orchestrator::render_table(&r);
    let restore = r
        .steps
        .iter()
        .find(|s| s.id == "restore-from-backup")
        .unwrap();
    assert_eq!(restore.outcome, "ok", "{table}");
    assert!(get(&restore.findings, "verified").is_some());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("config/database.json")).unwrap(),
        "{\"database\": \"standby\"}\n"
    );
    // The heartbeat written at the disaster is newer than the backup, whose
    // newest row is five minutes old: about five minutes of data are lost,
    // within the 15-minute RPO.
    let c = &r.components[0];
    assert_eq!(c.status, "recovered", "{table}");
    assert!(
        c.achieved_rpo_s
            .is_some_and(|s| (300.0..360.0).contains(&s)),
        "{c:?}"
    );
    assert_eq!((c.rpo_met, r.exit_code), (Some(true), 0), "{table}");
}

#[tokio::test]
async fn database_drill_without_a_replica_or_a_backup_fails_and_says_why() {
    let _turn = PAIR.lock().await;
    let s = DbSetup::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (policy, config) = s.prepare(dir.path(), &[("drill.no-replica", "yes")]);
    let r = drill_plugin(dir.path(), "db-failover", &policy, Some(&config)).await;
    let table = orchestrator::render_table(&r);
    assert_eq!((r.outcome.as_str(), r.exit_code), ("failed", 1), "{table}");
    let promote = r.steps.iter().find(|s| s.id == "promote-replica").unwrap();
    assert_eq!(promote.outcome, "skipped");
    assert!(
        promote
            .detail
            .starts_with("no healthy replica: its SQL thread is stopped"),
        "{}",
        promote.detail
    );
    let restore = r
        .steps
        .iter()
        .find(|s| s.id == "restore-from-backup")
        .unwrap();
    assert_eq!(restore.outcome, "failed");
    assert_eq!(
        restore.detail,
        "no healthy replica and no full backup of app to restore"
    );
    assert!(!dir.path().join("config/database.json").exists());
    assert!(drhost::report::markdown(&r).contains("no full backup of app"));
}

// ---- the three runbooks: every step does its line and prints it ----

/// Every step but the injection reports the command a person would type,
/// and the report shows them.
fn assert_runbook(r: &orchestrator::RunReport) {
    let table = orchestrator::render_table(r);
    assert_eq!(
        (r.outcome.as_str(), r.exit_code),
        ("recovered", 0),
        "{table}"
    );
    for s in r
        .steps
        .iter()
        .filter(|s| s.phase != "inject" && s.outcome != "skipped")
    {
        assert!(
            get(&s.findings, drhost::report::COMMAND).is_some(),
            "{} has no command: {:?}",
            s.id,
            s.findings
        );
    }
    let md = drhost::report::markdown(r);
    assert!(md.matches("- by hand:").count() >= 6, "{md}");
}

fn app_grants(port: u16) -> String {
    format!(
        "[exec.restart-app]\nprogram = {:?}\nargs = [\"{port}\", \"app\"]\ntimeout = \"20s\"\nleaves-running = true\n",
        fixture("restart-app.sh")
    )
}

fn runbook_state(dir: &Path, scenario: &str, pairs: &[(&str, String)]) {
    let store = drhost::caps::state::StateCap::load(&dir.join("state"), scenario, 1 << 20).unwrap();
    for (k, v) in pairs {
        store.set(k, v.clone().into_bytes()).unwrap();
    }
    store.persist().unwrap();
}

async fn drill_with(
    dir: &Path,
    plugin: &str,
    policy_text: &str,
    config: Option<&Path>,
) -> orchestrator::RunReport {
    let policy = dir.join(format!("{plugin}.drill.policy.toml"));
    std::fs::write(&policy, policy_text).unwrap();
    drill_plugin(dir, plugin, &policy, config).await
}

#[tokio::test]
async fn storage_runbook_follows_the_plan_line_by_line() {
    let app = free_port();
    start_app(app, "app");
    let dir = tempfile::tempdir().unwrap();
    runbook_state(
        dir.path(),
        "runbook-storage",
        &[
            ("health-url", format!("http://127.0.0.1:{app}/health")),
            ("restart-args", format!("{app} app")),
        ],
    );
    let policy = format!(
        "[s3.primary]\npath = \"primary\"\naccess = [\"read\", \"list\", \"write\", \"delete\"]\nsandbox = true\n\
         [s3.backup]\npath = \"backup\"\naccess = [\"read\", \"list\", \"write\"]\nsandbox = true\n\
         [s3.config]\npath = \"config\"\naccess = [\"write\"]\n\
         [http]\nallow = [\"http://127.0.0.1:{app}/\"]\n{}",
        app_grants(app)
    );
    let r = drill_with(dir.path(), "runbook-storage", &policy, None).await;
    assert_runbook(&r);
    assert_eq!(
        std::fs::read_dir(dir.path().join("primary/files"))
            .unwrap()
            .count(),
        5
    );
    let _ = http("POST", app, "/crash");
}

#[tokio::test]
async fn application_runbook_follows_the_plan_line_by_line() {
    let app = free_port();
    start_app(app, "app");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    std::fs::write(
        &log,
        "INFO started\nERROR upstream timeout\nINFO request ok\n",
    )
    .unwrap();
    runbook_state(
        dir.path(),
        "runbook-application",
        &[
            ("app-url", format!("http://127.0.0.1:{app}")),
            ("restart-args", format!("{app} app")),
            ("log-args", format!("-n 100 {}", log.display())),
        ],
    );
    let policy = format!(
        "[http]\nallow = [\"http://127.0.0.1:{app}/\"]\nsandbox = [\"http://127.0.0.1:{app}/\"]\n\
         [exec.show-logs]\nprogram = \"/usr/bin/tail\"\nargs = [\"-n\", \"100\", {log:?}]\nread-only = true\n{}",
        app_grants(app)
    );
    let r = drill_with(dir.path(), "runbook-application", &policy, None).await;
    assert_runbook(&r);
    let logs = r
        .steps
        .iter()
        .find(|s| s.id == "2-check-application-logs")
        .unwrap();
    assert_eq!(get(&logs.findings, "error-lines"), Some("1"));
    let rate = r
        .steps
        .iter()
        .find(|s| s.id == "5-check-error-rate")
        .unwrap();
    assert_eq!(get(&rate.findings, "error-rate"), Some("0.00"));
    let redeploy = r
        .steps
        .iter()
        .find(|s| s.id == "6-redeploy-if-restart-failed")
        .unwrap();
    assert_eq!(
        (redeploy.outcome.as_str(), redeploy.detail.as_str()),
        ("skipped", "the restart worked")
    );
    let _ = http("POST", app, "/crash");
}

#[tokio::test]
async fn database_runbook_follows_the_plan_line_by_line() {
    let app = free_port();
    start_app(app, "app");
    let base = mariadb_url();
    let base = base.rsplit_once('/').unwrap().0.to_string();
    let db = format!("drhost_bk_rb_{}", unique().replace('-', "_"));
    run_sql(
        &format!("{base}/test"),
        &format!("CREATE DATABASE {db}; CREATE DATABASE {db}_standby"),
    )
    .await;
    create_reader(&format!("{base}/test")).await;
    let reader = as_reader(&base);
    let (control, proxy) = (free_port(), free_port());
    let mut proxy_process = start_fixture(
        "tcpproxy.py",
        control,
        &[proxy.to_string(), port_of(&base).to_string()],
        "/health",
    );
    let dir = tempfile::tempdir().unwrap();
    let (secret, recipient) = drhost::backup::keygen();
    std::fs::write(dir.path().join("key.txt"), format!("{secret}\n")).unwrap();
    let config = dir.path().join("drhost.toml");
    std::fs::write(
        &config,
        format!(
            "[keys]\nrecipients = [\"{recipient}\"]\nidentity = \"key.txt\"\n\
             [sources.app]\nkind = \"mariadb\"\nurl = \"{base}/{db}\"\n\
             [sources.standby]\nkind = \"mariadb\"\nurl = \"{base}/{db}_standby\"\n\
             [targets.local]\npath = \"backups\"\n"
        ),
    )
    .unwrap();
    runbook_state(
        dir.path(),
        "runbook-database",
        &[
            ("primary-control", format!("http://127.0.0.1:{control}")),
            ("health-url", format!("http://127.0.0.1:{app}/health")),
            ("restart-args", format!("{app} app")),
        ],
    );
    let policy = format!(
        "[db.app]\nurl = \"mysql://root@127.0.0.1:{proxy}/{db}\"\n\
         read-url = \"mysql://drhost_reader:drhost-reader@127.0.0.1:{proxy}/{db}\"\n\
         access = \"read-write\"\nsandbox = true\n\
         [db.standby]\nurl = \"{base}/{db}_standby\"\nread-url = \"{reader}/{db}_standby\"\naccess = \"read-write\"\n\
         [backup.app]\naccess = [\"create\", \"list\", \"verify\", \"restore\"]\nrestore-to = [\"standby\"]\nsandbox = true\n\
         [s3.config]\npath = \"config\"\naccess = [\"write\"]\n\
         [http]\nallow = [\"http://127.0.0.1:{control}/\", \"http://127.0.0.1:{app}/\"]\nsandbox = [\"http://127.0.0.1:{control}/\"]\n{}",
        app_grants(app)
    );
    let r = drill_with(dir.path(), "runbook-database", &policy, Some(&config)).await;
    assert_runbook(&r);
    assert_eq!(
        scalar(
            &format!("{base}/{db}_standby"),
            "SELECT COUNT(*) FROM users"
        )
        .await,
        250
    );
    let _ = http("POST", app, "/crash");
    let _ = proxy_process.kill();
    let _ = proxy_process.wait();
}

/// The plan's annual full test, as the README shows it: every example's
/// drill, each setting up its own services (private MariaDB servers, HTTP
/// fixtures) and tearing them down.
#[test]
fn every_example_drill_passes_with_drill_all() {
    let dir = tempfile::tempdir().unwrap();
    let out = drhost()
        .args(["drill", "--all"])
        .arg(repo().join("examples"))
        .arg("--junit")
        .arg(dir.path().join("junit.xml"))
        .arg("--report")
        .arg(dir.path().join("reports"))
        .arg("--out")
        .arg(dir.path().join("runs"))
        .env("DRHOST_STATE_DIR", dir.path().join("state"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let junit = std::fs::read_to_string(dir.path().join("junit.xml")).unwrap();
    let examples = [
        "app-failover",
        "data-corruption",
        "db-failover",
        "network-failover",
        "quickstart",
        "runbook-application",
        "runbook-database",
        "runbook-storage",
        "security-breach",
    ];
    assert_eq!(
        junit.matches("<testsuite ").count(),
        examples.len(),
        "{junit}"
    );
    assert!(!junit.contains("<failure"), "{junit}");
    for e in examples {
        assert!(
            dir.path()
                .join("reports")
                .join(e)
                .join("report.html")
                .is_file(),
            "{e}"
        );
    }
}

#[tokio::test]
async fn a_write_once_alias_creates_objects_but_never_replaces_one() {
    let dir = tempfile::tempdir().unwrap();
    let caps = caps(
        "[s3.evidence]\npath = \"ev\"\naccess = [\"read\", \"write\"]\nwrite-once = true\n\
         [s3.logs]\npath = \"logs\"\naccess = [\"read\", \"write\"]\n",
        dir.path(),
    )
    .await;
    ok(
        &caps,
        "s3.put",
        &[
            ("alias", "evidence"),
            ("key", "case/a.log"),
            ("body", "first"),
        ],
    )
    .await;
    let why = failed(
        &caps,
        "s3.put",
        &[
            ("alias", "evidence"),
            ("key", "case/a.log"),
            ("body", "second"),
        ],
    )
    .await;
    assert!(why.contains("write-once"), "{why}");
    ok(
        &caps,
        "s3.put",
        &[("alias", "logs"), ("key", "x.log"), ("body", "log")],
    )
    .await;
    let why = failed(
        &caps,
        "s3.copy",
        &[
            ("alias", "logs"),
            ("key", "x.log"),
            ("dst-alias", "evidence"),
            ("dst-key", "case/a.log"),
        ],
    )
    .await;
    assert!(why.contains("write-once"), "{why}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("ev/case/a.log")).unwrap(),
        "first"
    );
    // A new key is fine.
    ok(
        &caps,
        "s3.copy",
        &[
            ("alias", "logs"),
            ("key", "x.log"),
            ("dst-alias", "evidence"),
            ("dst-key", "case/x.log"),
        ],
    )
    .await;
}
