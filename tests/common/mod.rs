//! Shared set-up for the integration tests: the built plugins, one runtime
//! with a compile cache shared by every test binary, and capabilities built
//! from an inline policy, as a run would build them.
#![allow(dead_code)]

use drhost::audit::AuditWriter;
use drhost::bindings::{Finding, Outcome};
use drhost::caps::Caps;
use drhost::caps::state::StateCap;
use drhost::orchestrator::build_caps;
use drhost::policy::Policy;
use drhost::runtime::{CallFailure, Plugin, Runtime};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Where the test command put the built plugins.
pub fn plugin_dir() -> PathBuf {
    match std::env::var_os("DRHOST_TEST_PLUGINS") {
        Some(d) => PathBuf::from(d),
        None => {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/target/wasm32-wasip2/release")
        }
    }
}

pub fn plugin_path(name: &str) -> PathBuf {
    let p = plugin_dir().join(format!("{}.wasm", name.replace('-', "_")));
    assert!(
        p.exists(),
        "{} is missing: run the test command from the README (it builds the plugins)",
        p.display()
    );
    p
}

/// The S3 test server's endpoint (started by the test command).
pub fn s3_endpoint() -> String {
    std::env::var("DRHOST_TEST_S3").unwrap_or_else(|_| "http://127.0.0.1:9000".into())
}

/// An administrator's client for the S3 test server (moto takes any credentials).
pub fn s3_admin() -> aws_sdk_s3::Client {
    use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(s3_endpoint())
        .region(Region::new("us-east-1"))
        .force_path_style(true)
        .credentials_provider(Credentials::new("test", "test", None, None, "tests"))
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

pub fn mariadb_url() -> String {
    std::env::var("DRHOST_TEST_MARIADB")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

/// The private MariaDB with binary logging that the test command starts.
pub fn mariadb_binlog_url() -> String {
    std::env::var("DRHOST_TEST_MARIADB_BINLOG")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3307/test".into())
}

pub fn postgres_url() -> String {
    std::env::var("DRHOST_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// One runtime per test binary; its compile cache is shared by all of them.
pub fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/drhost-test-cache");
        Runtime::new(Some(cache)).expect("runtime")
    })
}

pub fn load(name: &str) -> Plugin {
    runtime().load(&plugin_path(name)).expect("plugin loads")
}

pub fn probe() -> &'static Plugin {
    static P: OnceLock<Plugin> = OnceLock::new();
    P.get_or_init(|| load("probe"))
}

/// Capabilities from inline policy text, with an audit log in `dir`.
pub async fn caps(policy: &str, dir: &Path) -> Arc<Caps> {
    caps_with(policy, dir, false, None).await
}

/// Capabilities from inline policy text, in plan mode or not, with a backup engine or not.
pub async fn caps_with(
    policy: &str,
    dir: &Path,
    plan: bool,
    backups: Option<Arc<drhost::backup::Backups>>,
) -> Arc<Caps> {
    let mut p = Policy::parse(policy).expect("policy parses");
    p.source = Some(dir.join("policy.toml"));
    let p = Arc::new(p);
    let audit =
        AuditWriter::create(&dir.join(format!("audit-{}.jsonl", unique()))).expect("audit log");
    Arc::new(
        build_caps(
            &p,
            Some(audit),
            StateCap::ephemeral(p.limits.state_bytes.0),
            plan,
            backups,
        )
        .await
        .expect("caps"),
    )
}

/// Options for a whole run with its records and state under `dir`.
pub fn run_opts(dir: &Path, policy: Policy) -> drhost::orchestrator::RunOptions {
    drhost::orchestrator::RunOptions {
        policy,
        out_dir: dir.join("runs"),
        state_dir: dir.join("state"),
        phase: None,
        plan: false,
        backups: None,
        drill: false,
    }
}

pub fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn ctx(pairs: &[(&str, &str)]) -> Vec<Finding> {
    pairs
        .iter()
        .map(|(k, v)| Finding {
            key: k.to_string(),
            value: v.to_string(),
        })
        .collect()
}

/// Runs one probe step; the guest's outcome, or why the call failed.
pub async fn step(
    caps: &Arc<Caps>,
    id: &str,
    args: &[(&str, &str)],
) -> Result<Outcome, CallFailure> {
    runtime()
        .run_step(probe(), caps, id, &ctx(args), Duration::from_secs(20))
        .await
}

/// Runs one probe step under `budget`.
pub async fn step_within(
    caps: &Arc<Caps>,
    id: &str,
    args: &[(&str, &str)],
    budget: Duration,
) -> Result<Outcome, CallFailure> {
    runtime()
        .run_step(probe(), caps, id, &ctx(args), budget)
        .await
}

/// Expects an ok outcome and returns its findings as pairs.
pub async fn ok(caps: &Arc<Caps>, id: &str, args: &[(&str, &str)]) -> Vec<(String, String)> {
    match step(caps, id, args).await {
        Ok(Outcome::Ok(f)) => f.into_iter().map(|f| (f.key, f.value)).collect(),
        other => panic!("{id} {args:?}: expected ok, got {other:?}"),
    }
}

/// Expects a failed outcome and returns its reason.
pub async fn failed(caps: &Arc<Caps>, id: &str, args: &[(&str, &str)]) -> String {
    match step(caps, id, args).await {
        Ok(Outcome::Failed(reason)) => reason,
        other => panic!("{id} {args:?}: expected failed, got {other:?}"),
    }
}

pub fn get<'a>(f: &'a [(String, String)], key: &str) -> Option<&'a str> {
    f.iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

pub fn all<'a>(f: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    f.iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// The records of every audit log in `dir`.
/// (Values, not maps: indexing a missing field gives null instead of panicking.)
pub fn audit_records(dir: &Path) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("dir") {
        let p = e.expect("entry").path();
        if p.extension().is_some_and(|x| x == "jsonl") {
            out.extend(
                drhost::audit::read(&p)
                    .expect("log")
                    .into_iter()
                    .map(|l| serde_json::Value::Object(l.record)),
            );
        }
    }
    out
}

/// Flushes the gate's log so a test can read it.
pub fn flush(caps: &Arc<Caps>) {
    caps.gate.flush();
}

/// A TCP proxy to `upstream` (host:port) that dies for good once `limit`
/// bytes have passed through it in either direction: a server vanishing
/// mid-transfer. Returns the proxy's host:port.
pub async fn vanishing_proxy(upstream: String, limit: u64) -> String {
    proxy(upstream, limit, false).await.0
}

/// A TCP proxy that, once `limit` bytes have passed, stops forwarding but
/// keeps every connection open: a transfer hung in the middle. The `Notify`
/// fires when that point is reached (a permit is stored, so waiting after
/// the fact returns at once).
pub async fn stalling_proxy(upstream: String, limit: u64) -> (String, Arc<tokio::sync::Notify>) {
    proxy(upstream, limit, true).await
}

async fn proxy(upstream: String, limit: u64, stall: bool) -> (String, Arc<tokio::sync::Notify>) {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicU64::new(0));
    let dead = Arc::new(AtomicBool::new(false));
    let cut = Arc::new(tokio::sync::Notify::new());
    let reached = Arc::new(tokio::sync::Notify::new());
    let reached2 = reached.clone();
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = cut.notified() => return,
            };
            let Ok((client, _)) = accepted else { return };
            if dead.load(Ordering::SeqCst) && !stall {
                return;
            }
            let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                return;
            };
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            for (mut from, mut to) in [
                (
                    Box::new(cr) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
                    Box::new(sw) as Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
                ),
                (Box::new(sr), Box::new(cw)),
            ] {
                let (seen, dead, cut, reached) =
                    (seen.clone(), dead.clone(), cut.clone(), reached2.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 << 10];
                    loop {
                        if dead.load(Ordering::SeqCst) {
                            if stall {
                                // Hold both ends open, forwarding nothing.
                                let _keep = (from, to);
                                std::future::pending::<()>().await;
                            }
                            return;
                        }
                        let n = match from.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if seen.fetch_add(n as u64, Ordering::SeqCst) + n as u64 > limit {
                            dead.store(true, Ordering::SeqCst);
                            reached.notify_one();
                            if !stall {
                                cut.notify_one();
                            }
                            continue;
                        }
                        if to.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }
    });
    (addr.to_string(), reached)
}

/// The private MariaDB primary and its replica that the test command starts.
pub fn mariadb_primary_url() -> String {
    std::env::var("DRHOST_TEST_MARIADB_PRIMARY")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3308/test".into())
}

pub fn mariadb_replica_url() -> String {
    std::env::var("DRHOST_TEST_MARIADB_REPLICA")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3309/test".into())
}

/// A private MariaDB with binary logging for the data-corruption drills only.
pub fn mariadb_drill_url() -> String {
    std::env::var("DRHOST_TEST_MARIADB_DRILL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3310/test".into())
}
