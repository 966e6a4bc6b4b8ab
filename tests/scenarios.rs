//! Whole runs: the reference plugins through `drhost run`, exit codes, the
//! audit log they leave, and its verification.

mod common;

use common::*;
use drhost::audit::{self, Verdict};
use drhost::orchestrator::{self, RunOptions};
use drhost::policy::Policy;
use std::path::Path;
use std::process::Command;

fn drhost() -> Command {
    Command::new(env!("CARGO_BIN_EXE_drhost"))
}

fn storage_policy(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("storage.policy.toml");
    std::fs::write(
        &p,
        "[s3.primary]\npath = \"buckets/primary\"\naccess = [\"read\", \"list\", \"write\", \"delete\"]\nwrite-phases = [\"recover\", \"verify\"]\n\
         [s3.secondary]\npath = \"buckets/secondary\"\naccess = [\"read\", \"list\"]\n\
         [s3.config]\npath = \"config\"\naccess = [\"write\"]\n",
    )
    .unwrap();
    p
}

#[tokio::test]
async fn storage_failover_detects_restores_and_verifies_then_finds_all_healthy() {
    let dir = tempfile::tempdir().unwrap();
    let damage = drhost::quickstart::setup(&dir.path().join("buckets")).unwrap();
    let policy_path = storage_policy(dir.path());
    let opts = || run_opts(dir.path(), Policy::load(&policy_path).unwrap());
    let wasm = plugin_path("storage-failover");
    let report = orchestrator::run(runtime(), &wasm, opts()).await.unwrap();
    assert_eq!(
        report.outcome,
        "recovered",
        "{}",
        orchestrator::render_table(&report)
    );
    assert_eq!(report.exit_code, 0);
    let outcomes: Vec<(&str, &str)> = report
        .steps
        .iter()
        .map(|s| (s.id.as_str(), s.outcome.as_str()))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("confirm-failure", "detected"),
            ("restore-from-secondary", "ok"),
            ("repoint-application", "ok"),
            ("verify-integrity", "ok"),
            ("verify-upload-download", "ok")
        ]
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("config/storage.json")).unwrap(),
        "{\"bucket\": \"primary\"}\n"
    );
    assert_eq!(report.components[0].status, "recovered");
    assert_eq!(report.components[0].rto_met, Some(true));
    let primary = dir.path().join("buckets/primary");
    let secondary = dir.path().join("buckets/secondary");
    for key in [&damage.deleted, &damage.corrupted] {
        assert_eq!(
            std::fs::read(primary.join(key)).unwrap(),
            std::fs::read(secondary.join(key)).unwrap()
        );
    }
    assert!(
        !primary
            .join(".drhost-canary")
            .read_dir()
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
    );

    // The log verifies, against its head in the state directory too.
    let head = audit::load_head(&dir.path().join("state"), &report.run_id).expect("head stored");
    assert!(matches!(
        audit::verify(&report.audit_log, Some(&head), None).unwrap(),
        Verdict::Ok { .. }
    ));
    let records = audit::read(&report.audit_log).unwrap();
    let first = &records[0].record;
    assert_eq!(first["type"], "run-start");
    for k in [
        "drhost_version",
        "wasmtime_version",
        "component_sha256",
        "policy_sha256",
        "wit_version",
        "host",
        "ts",
    ] {
        assert!(
            first.get(k).is_some_and(|v| !v.is_null()),
            "run-start lacks {k}"
        );
    }
    assert_eq!(records.last().unwrap().record["type"], "run-end");
    let copies = records
        .iter()
        .filter(|l| l.record.get("op").and_then(|v| v.as_str()) == Some("copy"))
        .count();
    assert_eq!(copies, 2);

    // A second run finds nothing to do.
    let again = orchestrator::run(runtime(), &wasm, opts()).await.unwrap();
    assert_eq!(again.outcome, "healthy");
    assert_eq!(again.steps.len(), 1);
}

#[tokio::test]
async fn storage_failover_restores_an_s3_primary_from_a_local_secondary() {
    let dir = tempfile::tempdir().unwrap();
    drhost::quickstart::setup(&dir.path().join("buckets")).unwrap();
    let s3 = s3_admin();
    let bucket = format!("drhost-sf-{}", unique());
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let policy = format!(
        "[s3.primary]\nbucket = \"{bucket}\"\nprefix = \"files/\"\naccess = [\"read\", \"list\", \"write\", \"delete\"]\nwrite-phases = [\"recover\", \"verify\"]\nendpoint = \"{}\"\npath-style = true\naccess-key-id = \"test\"\nsecret-access-key = \"test\"\n\
         [s3.secondary]\npath = \"buckets/secondary\"\naccess = [\"read\", \"list\"]\n\
         [s3.config]\npath = \"config\"\naccess = [\"write\"]\n",
        s3_endpoint()
    );
    let path = dir.path().join("p.toml");
    std::fs::write(&path, policy).unwrap();
    let report = orchestrator::run(
        runtime(),
        &plugin_path("storage-failover"),
        run_opts(dir.path(), Policy::load(&path).unwrap()),
    )
    .await
    .unwrap();
    assert_eq!(
        report.outcome,
        "recovered",
        "{}",
        orchestrator::render_table(&report)
    );
    let listed = s3.list_objects_v2().bucket(&bucket).send().await.unwrap();
    assert_eq!(listed.key_count(), Some(12));
}

#[test]
fn the_cli_exit_codes_follow_the_documentation() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    // 4: invalid plugin.
    let bad = dir.path().join("bad.wasm");
    std::fs::write(&bad, b"nope").unwrap();
    let out = drhost()
        .arg("--state-dir")
        .arg(&state)
        .arg("run")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = drhost()
        .arg("--state-dir")
        .arg(&state)
        .arg("run")
        .arg(plugin_path("bad-version"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("drhost:plugin@0.3.0"));
    // 2: a policy with an unknown key, reported with its line.
    let policy = dir.path().join("p.toml");
    std::fs::write(
        &policy,
        "[s3.primary]\npath = \"x\"\naccess = [\"read\"]\nacess = 1\n",
    )
    .unwrap();
    let out = drhost()
        .arg("--state-dir")
        .arg(&state)
        .args(["run", "--policy"])
        .arg(&policy)
        .arg(plugin_path("storage-failover"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 4") && err.contains("acess"), "{err}");
    // 1: with no policy the storage scenario cannot even list its buckets.
    let out = drhost()
        .arg("--state-dir")
        .arg(&state)
        .args(["run", "--out"])
        .arg(dir.path().join("runs"))
        .arg(plugin_path("storage-failover"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn audit_verify_names_the_line_that_was_changed() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    drhost::quickstart::setup(&dir.path().join("buckets")).unwrap();
    let policy = storage_policy(dir.path());
    let out = drhost()
        .arg("--state-dir")
        .arg(&state)
        .args(["run", "--json", "--policy"])
        .arg(&policy)
        .arg("--out")
        .arg(dir.path().join("runs"))
        .arg(plugin_path("storage-failover"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let log = Path::new(report["audit_log"].as_str().unwrap()).to_path_buf();
    let verify = || {
        drhost()
            .arg("--state-dir")
            .arg(&state)
            .args(["audit", "verify"])
            .arg(&log)
            .output()
            .unwrap()
    };
    let ok = verify();
    assert_eq!(ok.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&ok.stdout).starts_with("OK:"));

    let text = std::fs::read_to_string(&log).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines[4] = lines[4]
        .replacen("\"allow\"", "\"deny\"", 1)
        .replacen("ok", "OK", 1);
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    let broken = verify();
    assert_eq!(broken.status.code(), Some(1));
    let said = String::from_utf8_lossy(&broken.stdout);
    assert!(said.contains("BROKEN at line 5"), "{said}");

    // Cut short: the summary record is gone.
    let original: Vec<&str> = text.lines().collect();
    std::fs::write(&log, original[..original.len() - 1].join("\n") + "\n").unwrap();
    let cut = drhost()
        .args(["audit", "verify"])
        .arg(&log)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&cut.stdout).starts_with("INCOMPLETE"),
        "{}",
        String::from_utf8_lossy(&cut.stdout)
    );
    // With the stored head, the cut is also a mismatch.
    let cut = verify();
    assert!(String::from_utf8_lossy(&cut.stdout).starts_with("BROKEN"));

    let show = drhost().args(["audit", "show"]).arg(&log).output().unwrap();
    assert!(String::from_utf8_lossy(&show.stdout).contains("confirm-failure"));
}

#[tokio::test]
async fn app_health_is_healthy_while_the_endpoint_answers_and_fails_verification_when_it_is_gone() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                .await;
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("p.toml");
    std::fs::write(
        &policy,
        format!(
            "[plugin]\nscenario = \"app-health\"\n\n[http]\nallow = [\"http://127.0.0.1:{port}/health\"]\n"
        ),
    )
    .unwrap();
    // The health URL is the plugin's own state: set it the way `drhost state set` does.
    let state_dir = dir.path().join("state");
    let url = format!("http://127.0.0.1:{port}/health");
    let store = drhost::caps::state::StateCap::load(&state_dir, "app-health", 1 << 20).unwrap();
    store.set("health-url", url.into_bytes()).unwrap();
    store.persist().unwrap();
    let opts = || run_opts(dir.path(), Policy::load(&policy).unwrap());
    let wasm = plugin_path("app-health");
    let up = orchestrator::run(runtime(), &wasm, opts()).await.unwrap();
    assert_eq!(up.outcome, "healthy", "{}", orchestrator::render_table(&up));
    server.abort();
    let _ = server.await;
    let down = orchestrator::run(runtime(), &wasm, opts()).await.unwrap();
    assert_eq!(
        down.steps[0].outcome,
        "detected",
        "{}",
        orchestrator::render_table(&down)
    );
    assert_eq!(down.outcome, "failed");
    assert_eq!(down.exit_code, 1);
}

#[tokio::test]
async fn a_step_over_its_budget_ends_the_run_with_exit_3() {
    let dir = tempfile::tempdir().unwrap();
    // The probe's only contain step spins until it is stopped (budget 2 s).
    let report = orchestrator::run(
        runtime(),
        &plugin_path("probe"),
        RunOptions {
            phase: orchestrator::parse_phase("contain"),
            ..run_opts(dir.path(), Policy::deny_all())
        },
    )
    .await
    .unwrap();
    assert_eq!(report.steps.len(), 1);
    let spin = &report.steps[0];
    assert_eq!(spin.id, "spin");
    assert!(spin.over_budget);
    assert_eq!(spin.detail, "step spin exceeded its budget of 2 s");
    assert_eq!(report.outcome, "target-missed");
    assert_eq!(report.exit_code, 3);
    let records = audit::read(&report.audit_log).unwrap();
    let end = records
        .iter()
        .find(|l| l.record.get("type").and_then(|t| t.as_str()) == Some("step-end"))
        .unwrap();
    assert_eq!(end.record["over_budget"], true);
}

#[test]
fn run_finds_the_policy_beside_the_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("x.wasm");
    std::fs::copy(plugin_path("hello"), &wasm).unwrap();
    std::fs::write(
        dir.path().join("x.policy.toml"),
        "[limits]\nmemory = \"32 MiB\"\n",
    )
    .unwrap();
    let out = drhost()
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(["run", "--json", "--out"])
        .arg(dir.path().join("runs"))
        .arg(&wasm)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let log = audit::read(Path::new(report["audit_log"].as_str().unwrap())).unwrap();
    let policy = log[0].record["policy"].as_str().unwrap();
    assert!(policy.ends_with("x.policy.toml"), "{policy}");
    assert_eq!(report["outcome"], "healthy");
}

/// Runs a hello plugin twice: healthy, counting its runs in its state, and
/// loaded from the compile cache the second time.
async fn runs_and_keeps_its_state(name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let wasm = plugin_path(name);
    let opts = || run_opts(dir.path(), Policy::deny_all());
    let first = orchestrator::run(runtime(), &wasm, opts()).await.unwrap();
    assert_eq!(
        first.outcome,
        "healthy",
        "{}",
        orchestrator::render_table(&first)
    );
    assert_eq!(
        first.steps[0].findings,
        [("runs".to_string(), "1".to_string())]
    );
    let second = orchestrator::run(runtime(), &wasm, opts()).await.unwrap();
    assert_eq!(
        second.steps[0].findings,
        [("runs".to_string(), "2".to_string())]
    );
    let start = &audit::read(&second.audit_log).unwrap()[0].record;
    assert_eq!(start["compiled_from_cache"], true);
}

#[tokio::test]
async fn a_python_plugin_runs_and_keeps_its_state_like_a_rust_one() {
    runs_and_keeps_its_state("hello-py").await;
}

#[tokio::test]
async fn a_javascript_plugin_runs_and_keeps_its_state_like_a_rust_one() {
    runs_and_keeps_its_state("hello-js").await;
}

#[tokio::test]
async fn plan_mode_records_mutating_calls_without_executing_them() {
    let dir = tempfile::tempdir().unwrap();
    let damage = drhost::quickstart::setup(&dir.path().join("buckets")).unwrap();
    let policy_path = storage_policy(dir.path());
    let report = orchestrator::run(
        runtime(),
        &plugin_path("storage-failover"),
        RunOptions {
            plan: true,
            ..run_opts(dir.path(), Policy::load(&policy_path).unwrap())
        },
    )
    .await
    .unwrap();
    // Detection reads; the restore's copies are planned, so nothing changes.
    assert_eq!(report.steps[0].outcome, "detected");
    assert!(
        report.steps[1]
            .detail
            .contains("planned: plan mode: s3.copy"),
        "{}",
        report.steps[1].detail
    );
    assert!(
        !dir.path()
            .join("buckets/primary")
            .join(&damage.deleted)
            .exists()
    );
    let records = audit::read(&report.audit_log).unwrap();
    assert_eq!(records[0].record["plan"], true);
    let planned = records
        .iter()
        .filter(|l| l.record.get("decision").and_then(|d| d.as_str()) == Some("plan"))
        .count();
    assert!(planned >= 1);
    assert!(records.iter().all(|l| {
        l.record.get("op").and_then(|o| o.as_str()) != Some("copy")
            || l.record.get("decision").and_then(|d| d.as_str()) == Some("plan")
    }));
}

/// `drhost new` in each language: the project builds with its own script and
/// passes the conformance suite unchanged.
#[tokio::test]
async fn drhost_new_writes_projects_that_build_and_pass_conformance_in_each_language() {
    use drhost::scaffold::{Lang, create};
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for (name, lang) in [
        ("check-rs", Lang::Rust),
        ("check-py", Lang::Python),
        ("check-js", Lang::Js),
    ] {
        let project = dir.path().join(name);
        let files = create(&project, name, lang).unwrap();
        assert!(
            files
                .iter()
                .any(|f| f.ends_with(format!("{name}.policy.toml")))
        );
        let out = std::process::Command::new(project.join("build.sh"))
            // Reuse what the test command already built and installed.
            .env("CARGO_TARGET_DIR", root.join("plugins/target"))
            .env(
                "COMPONENTIZE_JS",
                root.join("plugins/js/node_modules/.bin/componentize-js"),
            )
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let wasm = project.join(format!("{name}.wasm"));
        let policy = Policy::load(&project.join(format!("{name}.policy.toml"))).unwrap();
        let report = drhost::conformance::test(runtime(), &wasm, policy, &dir.path().join("work"))
            .await
            .unwrap();
        assert!(report.passed(), "{}", drhost::conformance::render(&report));
    }
    let e = create(&dir.path().join("check-rs"), "check-rs", Lang::Rust).unwrap_err();
    assert!(e.to_string().contains("not empty"), "{e}");
    let e = create(&dir.path().join("x"), "Bad Name", Lang::Rust).unwrap_err();
    assert!(e.to_string().contains("lowercase"), "{e}");
}

/// A step's id, outcome and findings.
type StepTrace = (String, String, Vec<(String, String)>);

/// The same scenario in Rust, Python and JavaScript, against the same damage:
/// the same outcomes, findings and sequence of capability calls.
#[tokio::test]
async fn storage_failover_in_three_languages_recovers_with_the_same_calls() {
    let mut seen = Vec::new();
    for name in [
        "storage-failover",
        "storage-failover-py",
        "storage-failover-js",
    ] {
        let dir = tempfile::tempdir().unwrap();
        drhost::quickstart::setup(&dir.path().join("buckets")).unwrap();
        let policy = Policy::load(&storage_policy(dir.path())).unwrap();
        let report = orchestrator::run(runtime(), &plugin_path(name), run_opts(dir.path(), policy))
            .await
            .unwrap();
        assert_eq!(
            report.outcome,
            "recovered",
            "{name}: {}",
            orchestrator::render_table(&report)
        );
        // Outcomes and findings, except the canary's key (it holds the time).
        let steps: Vec<StepTrace> = report
            .steps
            .iter()
            .map(|s| {
                let findings = s
                    .findings
                    .iter()
                    .filter(|(k, _)| k != "canary")
                    .cloned()
                    .collect();
                (s.id.clone(), s.outcome.clone(), findings)
            })
            .collect();
        let calls: Vec<String> = audit::read(&report.audit_log)
            .unwrap()
            .into_iter()
            .filter(|l| l.record["type"] == "call")
            .map(|l| {
                let r = &l.record;
                let target = r["target"].as_str().unwrap_or("");
                // The canary key holds the time: keep only its folder.
                let target = target.split(".drhost-canary/").next().unwrap_or(target);
                format!(
                    "{} {}.{} {} {}",
                    r["step"], r["interface"], r["op"], target, r["decision"]
                )
            })
            .collect();
        assert!(calls.len() > 20, "{name}: {calls:?}");
        seen.push((name, steps, calls));
    }
    for (name, steps, calls) in &seen[1..] {
        assert_eq!(steps, &seen[0].1, "{name}: outcomes and findings");
        assert_eq!(calls, &seen[0].2, "{name}: capability calls");
    }
}

/// Starts `drhost run` of the probe's contain phase (one step that spins to
/// its budget) and sends `signal` once the log shows that step has started.
/// Returns the log, or `None` when the run ended before the signal (a very
/// loaded machine): the caller tries again.
fn killed_in_first_step(dir: &Path, signal: i32) -> Option<std::path::PathBuf> {
    let runs = dir.join(format!("runs-{}", unique()));
    let mut child = drhost()
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(["run", "--phase", "contain", "--out"])
        .arg(&runs)
        .arg(plugin_path("probe"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let log = loop {
        if let Ok(Some(_)) = child.try_wait() {
            return None;
        }
        let found = std::fs::read_dir(&runs)
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok())
            .map(|e| e.path().join("audit.jsonl"))
            .filter(|log| {
                std::fs::read_to_string(log)
                    .is_ok_and(|t| t.contains("\"type\":\"step-start\"") && t.contains("\"spin\""))
            });
        if let Some(log) = found {
            break log;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    // SAFETY: signals the child this test started.
    unsafe { libc::kill(child.id() as i32, signal) };
    let status = child.wait().unwrap();
    // It died of the signal, not of the end of its step.
    (status.code().is_none()).then_some(log)
}

fn a_run_killed_in_its_first_step_verifies_as_incomplete(signal: i32) {
    let dir = tempfile::tempdir().unwrap();
    let log = (0..3)
        .find_map(|_| killed_in_first_step(dir.path(), signal))
        .expect("the run ended before it could be killed, three times");
    let out = drhost()
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(["audit", "verify"])
        .arg(&log)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.starts_with("INCOMPLETE: "), "{said}");
    assert_eq!(out.status.code(), Some(1));
    // The header and the step's start are there.
    let records = audit::read(&log).unwrap();
    assert_eq!(records[0].record["type"], "run-start");
    assert!(records.iter().any(|r| r.record["type"] == "step-start"));
}

#[test]
fn a_run_killed_by_sigkill_in_its_first_step_verifies_as_incomplete() {
    a_run_killed_in_its_first_step_verifies_as_incomplete(libc::SIGKILL);
}

#[test]
fn a_run_killed_by_sigterm_in_its_first_step_verifies_as_incomplete() {
    a_run_killed_in_its_first_step_verifies_as_incomplete(libc::SIGTERM);
}

#[test]
fn an_anchored_head_catches_a_log_rewritten_together_with_the_state_directory() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    drhost::quickstart::setup(&dir.path().join("buckets")).unwrap();
    let policy = storage_policy(dir.path());
    let mut text = std::fs::read_to_string(&policy).unwrap();
    text.push_str(
        "[s3.heads]\npath = \"heads\"\naccess = [\"read\", \"write\"]\nwrite-once = true\n\
         [audit]\nanchor = \"heads\"\n",
    );
    std::fs::write(&policy, text).unwrap();
    let out = drhost()
        .arg("--state-dir")
        .arg(&state)
        .args(["run", "--json", "--policy"])
        .arg(&policy)
        .arg("--out")
        .arg(dir.path().join("runs"))
        .arg(plugin_path("storage-failover"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let log = Path::new(report["audit_log"].as_str().unwrap()).to_path_buf();
    let run_id = report["run_id"].as_str().unwrap().to_string();
    assert!(
        dir.path()
            .join(format!("heads/audit-heads/{run_id}.sha256"))
            .is_file()
    );
    let verify = || {
        drhost()
            .arg("--state-dir")
            .arg(&state)
            .args(["audit", "verify", "--anchor"])
            .arg(&policy)
            .arg(&log)
            .output()
            .unwrap()
    };
    let ok = verify();
    let said = String::from_utf8_lossy(&ok.stdout);
    assert!(
        said.contains("matches the head anchored in s3.heads"),
        "{said}"
    );
    assert_eq!(ok.status.code(), Some(0));

    // Whoever can write the host's files cuts the log's last record and
    // removes the head kept in the state directory: only the anchor knows.
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    std::fs::write(&log, lines[..lines.len() - 1].join("\n") + "\n").unwrap();
    std::fs::remove_file(audit::head_file(&state, &run_id)).unwrap();
    let cut = verify();
    let said = String::from_utf8_lossy(&cut.stdout);
    assert!(said.starts_with("BROKEN"), "{said}");
    assert_eq!(cut.status.code(), Some(1));
}
