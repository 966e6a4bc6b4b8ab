//! The component host: loading and refusing components, budgets, memory,
//! traps, guest output, the compile cache, and denial by default.

mod common;

use common::*;
use drhost::bindings::Outcome;
use drhost::policy::Policy;
use drhost::runtime::{CallFailure, LoadError};
use std::time::{Duration, Instant};

#[test]
fn bytes_that_are_not_wasm_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.wasm");
    std::fs::write(&p, b"#!/bin/sh\necho hi\n").unwrap();
    let err = runtime().load(&p).err().expect("refused");
    assert!(matches!(err, LoadError::NotWasm { .. }), "{err}");
    assert!(err.to_string().contains("not a WebAssembly binary"));
}

#[test]
fn a_truncated_component_is_refused_with_the_compiler_error() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(plugin_path("probe")).unwrap();
    let p = dir.path().join("cut.wasm");
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let err = runtime().load(&p).err().expect("refused");
    assert!(matches!(err, LoadError::Invalid { .. }), "{err}");
}

#[test]
fn a_core_module_is_refused_as_not_a_component() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("core.wasm");
    // The smallest valid core module: magic and version 1, no sections.
    std::fs::write(&p, b"\0asm\x01\0\0\0").unwrap();
    let err = runtime().load(&p).err().expect("refused");
    assert!(matches!(err, LoadError::CoreModule { .. }), "{err}");
    assert!(err.to_string().contains("wasm32-wasip2"));
}

#[test]
fn a_component_built_for_another_wit_version_names_both_versions() {
    let err = runtime()
        .load(&plugin_path("bad-version"))
        .err()
        .expect("refused");
    let msg = err.to_string();
    assert!(matches!(err, LoadError::WrongVersion { .. }), "{msg}");
    assert!(msg.contains("drhost:plugin@0.3.0"), "{msg}");
    assert!(msg.contains("drhost:plugin@0.2.0"), "{msg}");
}

#[test]
fn a_component_of_another_world_is_not_a_scenario() {
    let err = runtime()
        .load(&plugin_path("foreign-world"))
        .err()
        .expect("refused");
    let msg = err.to_string();
    assert!(matches!(err, LoadError::NotScenario { .. }), "{msg}");
    assert!(msg.contains("acme:thing/greet@1.0.0"), "{msg}");
}

#[test]
fn a_second_load_comes_from_the_compile_cache() {
    let first = runtime().load(&plugin_path("app-health")).unwrap();
    let second = runtime().load(&plugin_path("app-health")).unwrap();
    assert_eq!(first.sha256, second.sha256);
    assert!(second.from_cache, "second load compiled again");
}

#[tokio::test]
async fn a_plugin_that_loops_forever_is_stopped_at_its_budget() {
    let dir = tempfile::tempdir().unwrap();
    let caps = caps("", dir.path()).await;
    let started = Instant::now();
    let r = runtime()
        .run_step(probe(), &caps, "spin", &[], Duration::from_secs(1))
        .await;
    let err = r.expect_err("the step must not finish");
    assert_eq!(
        err,
        CallFailure::Budget {
            step: "spin".into(),
            budget_s: 1
        }
    );
    assert_eq!(err.to_string(), "step spin exceeded its budget of 1 s");
    assert!(started.elapsed() < Duration::from_secs(5));
    // The host keeps running: the next step works.
    ok(&caps, "noop", &[]).await;
}

#[tokio::test]
async fn a_plugin_that_grows_memory_without_bound_hits_the_policy_limit() {
    let dir = tempfile::tempdir().unwrap();
    let caps = caps("[limits]\nmemory = \"16 MiB\"\n", dir.path()).await;
    let r = step(&caps, "grow", &[]).await;
    match r {
        Err(CallFailure::Memory { limit, .. }) => assert_eq!(limit, 16 << 20),
        other => panic!("expected a memory failure, got {other:?}"),
    }
    ok(&caps, "noop", &[]).await;
}

#[tokio::test]
async fn a_python_exception_or_a_javascript_error_fails_the_step_with_its_own_line() {
    let dir = tempfile::tempdir().unwrap();
    let caps = caps("", dir.path()).await;
    for (name, expect) in [
        ("hello-py", "ValueError: the disk is on fire"),
        // componentize-js prints the message without the error's type.
        ("hello-js", ": the disk is on fire"),
    ] {
        let plugin = load(name);
        let raise = ctx(&[("raise", "the disk is on fire")]);
        match runtime()
            .run_step(&plugin, &caps, "check", &raise, Duration::from_secs(20))
            .await
        {
            Err(CallFailure::Trap { message, .. }) => {
                // One line: the error itself, not the traceback or stack.
                assert!(message.ends_with(expect), "{name}: {message}");
                assert!(!message.contains('\n'), "{name}: {message}");
            }
            other => panic!("{name}: expected a trap, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_trap_fails_the_step_with_its_message_and_the_host_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let caps = caps("", dir.path()).await;
    match step(&caps, "trap", &[]).await {
        Err(CallFailure::Trap { step, message }) => {
            assert_eq!(step, "trap");
            // The kind of trap and the panic's own message, in one line.
            assert_eq!(
                message,
                "unreachable (the guest aborted): probe was asked to trap"
            );
        }
        other => panic!("expected a trap, got {other:?}"),
    }
    match step(&caps, "recurse", &[]).await {
        Err(CallFailure::Trap { message, .. }) => {
            // Rust keeps its stack in linear memory: an overflow is an
            // out-of-bounds access there, and says so.
            assert!(message.contains("stack overflow"), "{message}")
        }
        other => panic!("expected a stack overflow, got {other:?}"),
    }
    ok(&caps, "noop", &[]).await;
}

#[tokio::test]
async fn guest_output_goes_to_the_audit_log_and_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let caps = caps("[limits]\noutput-bytes = 200\n", dir.path()).await;
    ok(&caps, "stdout", &[("lines", "1000")]).await;
    flush(&caps);
    let out: Vec<_> = audit_records(dir.path())
        .into_iter()
        .filter(|r| r["type"] == "guest-output")
        .collect();
    assert_eq!(out.len(), 1);
    assert!(
        out[0]["text"]
            .as_str()
            .unwrap()
            .starts_with("probe line 0\n")
    );
    assert!(out[0]["text"].as_str().unwrap().len() <= 200);
    assert!(out[0]["dropped_bytes"].as_u64().unwrap() > 10_000);
}

#[tokio::test]
async fn with_no_policy_every_capability_is_denied_and_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let caps = caps("", dir.path()).await;
    let s3 = failed(&caps, "s3.get", &[("alias", "primary"), ("key", "a")]).await;
    assert!(s3.contains("no alias \"primary\" is granted"), "{s3}");
    assert!(s3.contains("[s3.primary]"), "{s3}");
    let db = failed(&caps, "db.query", &[("conn", "main"), ("sql", "SELECT 1")]).await;
    assert!(db.contains("[db.main]"), "{db}");
    let http = failed(&caps, "http.get", &[("url", "http://127.0.0.1:9/")]).await;
    assert!(http.contains("denied"), "{http}");
    flush(&caps);
    let denials: Vec<_> = audit_records(dir.path())
        .into_iter()
        .filter(|r| r["type"] == "call" && r["decision"] == "deny")
        .collect();
    assert_eq!(denials.len(), 3);
    assert_eq!(denials[0]["grant"], "s3.primary access=read");
    assert_eq!(denials[1]["grant"], "db.main access=read-only");
}

#[tokio::test]
async fn state_is_always_available_and_capped() {
    let dir = tempfile::tempdir().unwrap();
    let caps = caps("[limits]\nstate-bytes = 64\n", dir.path()).await;
    ok(&caps, "state.set", &[("key", "k"), ("value", "v1")]).await;
    let f = ok(&caps, "state.get", &[("key", "k")]).await;
    assert_eq!(get(&f, "value"), Some("v1"));
    let big = "x".repeat(100);
    let err = failed(&caps, "state.set", &[("key", "k"), ("value", &big)]).await;
    assert!(err.contains("state-bytes"), "{err}");
}

#[tokio::test]
async fn context_reaches_the_step() {
    let dir = tempfile::tempdir().unwrap();
    let caps = caps("", dir.path()).await;
    match step(&caps, "context-echo", &[("a", "1"), ("b", "2")]).await {
        Ok(Outcome::Ok(f)) => assert_eq!(f.len(), 2),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn nothing_else_of_wasi_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let caps = caps("", dir.path()).await;
    let f = ok(&caps, "wasi-closed", &[]).await;
    assert_eq!(get(&f, "env"), Some("0"), "environment leaked");
    assert_eq!(get(&f, "args"), Some("0"), "arguments leaked");
    assert!(get(&f, "read-root").unwrap().starts_with("Err"), "{f:?}");
    assert!(get(&f, "write-tmp").unwrap().starts_with("Err"), "{f:?}");
    assert!(get(&f, "tcp").unwrap().starts_with("Err"), "{f:?}");
    assert!(!std::path::Path::new("/tmp/drhost-probe").exists());
}

#[tokio::test]
async fn inspect_shows_what_the_policy_grants() {
    let policy = drhost::policy::Policy::parse(
        "[s3.primary]\npath = \"p\"\naccess = [\"read\", \"list\"]\n",
    )
    .unwrap();
    let text = drhost::inspect::inspect(runtime(), &plugin_path("storage-failover"), policy)
        .await
        .unwrap();
    assert!(text.contains("storage-failover 0.1.0"), "{text}");
    assert!(text.contains("restore-from-secondary"), "{text}");
    assert!(text.contains("drhost:plugin/s3@0.2.0"), "{text}");
    assert!(text.contains("granted: primary [read,list]"), "{text}");
    // Per phase: a read-only alias reads everywhere but in inject steps,
    // which need sandbox = true.
    let row = text
        .lines()
        .find(|l| l.trim_start().starts_with("s3.primary"))
        .expect("phase table row");
    assert_eq!(
        row.split_whitespace().collect::<Vec<_>>(),
        ["s3.primary", "r", "r", "r", "r", "r", "-"],
        "{text}"
    );
    assert!(
        text.contains("object-storage           storage      P1"),
        "{text}"
    );
    // app-health needs HTTP, which this policy does not grant.
    let text = drhost::inspect::inspect(
        runtime(),
        &plugin_path("app-health"),
        drhost::policy::Policy::deny_all(),
    )
    .await
    .unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("wasi:http/outgoing-handler"))
        .expect("http import listed");
    assert!(line.contains("NOT GRANTED"), "{line}");
}

#[test]
fn a_scenario_missing_an_export_is_refused_naming_it() {
    let err = runtime()
        .load(&plugin_path("missing-export"))
        .err()
        .expect("refused");
    let msg = err.to_string();
    assert!(matches!(err, LoadError::Mismatch { .. }), "{msg}");
    assert!(msg.contains("does not have export `info`"), "{msg}");
}

#[tokio::test]
async fn a_policy_pin_refuses_any_other_component() {
    let dir = tempfile::tempdir().unwrap();
    let policy =
        drhost::policy::Policy::parse(&format!("[plugin]\nsha256 = \"{}\"\n", "0".repeat(64)))
            .unwrap();
    let err = drhost::orchestrator::run(
        runtime(),
        &plugin_path("hello"),
        run_opts(dir.path(), policy),
    )
    .await
    .expect_err("refused");
    assert_eq!(err.exit_code(), 4);
    assert!(err.to_string().contains("the policy pins"), "{err}");
    assert!(!dir.path().join("runs").exists(), "nothing may run");
}

#[test]
fn a_component_changed_in_place_is_hashed_again() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("plugin.wasm");
    std::fs::copy(plugin_path("hello"), &p).unwrap();
    let first = runtime().load(&p).unwrap();
    // Same file, unchanged: known by its identity, from the cache.
    let again = runtime().load(&p).unwrap();
    assert_eq!(again.sha256, first.sha256);
    assert!(again.from_cache);
    // Rewritten in place with other bytes: the index must not be trusted.
    std::fs::write(&p, std::fs::read(plugin_path("app-health")).unwrap()).unwrap();
    let changed = runtime().load(&p).unwrap();
    let expected = drhost::digest::sha256_file(&plugin_path("app-health")).unwrap();
    assert_eq!(changed.sha256, expected);
    assert_ne!(changed.sha256, first.sha256);
}

// ---- The conformance suite (drhost test) ----

async fn conformance(name: &str, policy: Policy) -> drhost::conformance::Report {
    let dir = tempfile::tempdir().unwrap();
    drhost::conformance::test(runtime(), &plugin_path(name), policy, dir.path())
        .await
        .unwrap()
}

#[tokio::test]
async fn the_same_scenario_in_rust_python_and_javascript_passes_conformance_identically() {
    let mut reports = Vec::new();
    for name in ["hello", "hello-py", "hello-js"] {
        let r = conformance(name, Policy::deny_all()).await;
        assert!(r.passed(), "{}", drhost::conformance::render(&r));
        reports.push(r);
    }
    // Past the metadata line (which names each plugin), every step's checks,
    // outcomes and call counts are the same.
    let steps = |r: &drhost::conformance::Report| {
        r.checks[1..]
            .iter()
            .map(|c| (c.step.clone(), c.check, c.passed, c.detail.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(steps(&reports[0]), steps(&reports[1]));
    assert_eq!(steps(&reports[0]), steps(&reports[2]));
    assert!(
        reports[0]
            .checks
            .iter()
            .any(|c| c.detail == "same outcome and the same 2 call(s) twice")
    );
}

#[tokio::test]
async fn conformance_reports_traps_undeclared_writes_and_nondeterminism() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("b")).unwrap();
    let policy = Policy::parse(&format!(
        "[s3.primary]\npath = \"{}\"\naccess = [\"read\", \"list\", \"write\"]\n",
        dir.path().join("b").display()
    ))
    .unwrap();
    let r = conformance("probe", policy).await;
    assert!(!r.passed());
    let verdict = |step: &str, check: &str| {
        r.checks
            .iter()
            .find(|c| c.step.as_deref() == Some(step) && c.check == check)
            .map(|c| (c.passed, c.detail.clone()))
            .unwrap()
    };
    let (ok, detail) = verdict("sneaky-put", "mutations are declared");
    assert!(
        !ok && detail.contains("declared not mutating, but called s3.put primary:sneaky deny"),
        "{detail}"
    );
    assert!(
        verdict("s3.put", "mutations are declared").0,
        "declared writes pass"
    );
    let (ok, detail) = verdict("random", "deterministic");
    assert!(!ok && detail.contains("outcomes differ"), "{detail}");
    let (ok, detail) = verdict("trap", "returns an outcome");
    assert!(
        !ok && detail.contains("trapped") && detail.contains("probe was asked to trap"),
        "{detail}"
    );
    let (ok, detail) = verdict("spin", "behaves under denial");
    assert!(!ok && detail.contains("exceeded its budget"), "{detail}");
    for check in [
        "returns an outcome",
        "mutations are declared",
        "behaves under denial",
        "deterministic",
    ] {
        assert!(verdict("noop", check).0, "{check}");
    }
    // Plan mode throughout: the undeclared write did not happen.
    assert!(!dir.path().join("b/sneaky").exists());
}

#[tokio::test]
async fn the_audit_anchor_alias_is_the_hosts_alone() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("heads")).unwrap();
    let caps = caps(
        "[s3.heads]\npath = \"heads\"\naccess = [\"read\", \"write\"]\nwrite-once = true\n\
         [audit]\nanchor = \"heads\"\n",
        dir.path(),
    )
    .await;
    let why = failed(
        &caps,
        "s3.put",
        &[
            ("alias", "heads"),
            ("key", "audit-heads/forged.sha256"),
            ("body", "x"),
        ],
    )
    .await;
    assert!(
        why.contains("denied") && why.contains("[audit] anchor"),
        "{why}"
    );
    assert!(!dir.path().join("heads/audit-heads").exists());
}
