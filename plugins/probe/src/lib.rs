//! Test plugin: each step performs one capability call named by its id,
//! with its arguments taken from the context, and reports the result as
//! findings. The integration tests drive it to exercise every capability
//! (and every denial) through a real component. It also has steps that
//! misbehave on purpose: spin forever, grow memory without bound, trap.

use drhost_plugin::{
    Component, ComponentKind, Finding, Guest, Outcome, Phase, Priority, ScenarioInfo, Step, backup,
    context_value, db, exec, finding, net, s3, state,
};

struct Probe;

const STEPS: &[(&str, Phase, bool)] = &[
    ("noop", Phase::Detect, false),
    ("context-echo", Phase::Verify, false),
    ("s3.head", Phase::Detect, false),
    ("s3.get", Phase::Detect, false),
    ("s3.put", Phase::Recover, true),
    ("s3.list", Phase::Detect, false),
    ("s3.checksum", Phase::Verify, false),
    ("s3.copy", Phase::Recover, true),
    ("s3.delete", Phase::Recover, true),
    ("s3.list-versions", Phase::Detect, false),
    ("s3.get-version", Phase::Detect, false),
    ("db.query", Phase::Detect, false),
    ("db.execute", Phase::Recover, true),
    ("db.ping", Phase::Detect, false),
    ("http.get", Phase::Detect, false),
    ("backup.create", Phase::Backup, true),
    ("backup.list", Phase::Detect, false),
    ("backup.verify", Phase::Verify, false),
    ("backup.restore", Phase::Recover, true),
    ("state.set", Phase::Recover, false),
    ("state.get", Phase::Detect, false),
    ("stdout", Phase::Detect, false),
    ("state.loop", Phase::Detect, false),
    ("wasi-closed", Phase::Detect, false),
    ("spin", Phase::Contain, false),
    ("grow", Phase::Detect, false),
    ("trap", Phase::Detect, false),
    ("recurse", Phase::Detect, false),
    ("wasi-sleep", Phase::Detect, false),
    ("sneaky-put", Phase::Detect, false),
    ("random", Phase::Detect, false),
    ("exec.run", Phase::Recover, true),
    ("net.resolve", Phase::Detect, false),
    ("net.probe", Phase::Detect, false),
    ("inject.put", Phase::Inject, true),
];

fn backup_findings(b: &backup::BackupInfo) -> Vec<Finding> {
    vec![
        finding("id", &b.id),
        finding("targets", b.targets.join(",")),
        finding("rows", b.tables.iter().map(|t| t.rows).sum::<u64>()),
    ]
}

fn arg<'a>(ctx: &'a [Finding], key: &str) -> &'a str {
    context_value(ctx, key).unwrap_or("")
}

trait Reason {
    fn reason(&self) -> String;
}
impl Reason for drhost_plugin::types::Error {
    fn reason(&self) -> String {
        drhost_plugin::describe(self)
    }
}
impl Reason for String {
    fn reason(&self) -> String {
        self.clone()
    }
}

fn err(e: impl Reason) -> Outcome {
    Outcome::Failed(e.reason())
}

fn object(prefix: &str, o: &s3::ObjectInfo) -> Vec<Finding> {
    vec![
        finding(format!("{prefix}key"), &o.key),
        finding(format!("{prefix}size"), o.size),
    ]
}

/// Parameters come as `param` findings written `int:5`, `text:abc`, `null`, ...
fn params(ctx: &[Finding]) -> Vec<db::Value> {
    ctx.iter()
        .filter(|f| f.key == "param")
        .map(|f| match f.value.split_once(':') {
            Some(("int", v)) => db::Value::Int(v.parse().unwrap_or(0)),
            Some(("float", v)) => db::Value::Float(v.parse().unwrap_or(0.0)),
            Some(("bool", v)) => db::Value::Boolean(v == "true"),
            Some(("bytes", v)) => db::Value::Bytes(v.as_bytes().to_vec()),
            Some(("text", v)) => db::Value::Text(v.to_string()),
            _ => db::Value::Null,
        })
        .collect()
}

fn show(v: &db::Value) -> String {
    match v {
        db::Value::Null => "null".into(),
        db::Value::Boolean(b) => format!("bool:{b}"),
        db::Value::Int(i) => format!("int:{i}"),
        db::Value::Float(x) => format!("float:{x}"),
        db::Value::Text(s) => format!("text:{s}"),
        db::Value::Bytes(b) => format!("bytes:{}", String::from_utf8_lossy(b)),
    }
}

impl Guest for Probe {
    fn info() -> ScenarioInfo {
        ScenarioInfo {
            name: "probe".into(),
            version: "0.1.0".into(),
            description: "Exercises one capability per step (test plugin)".into(),
            components: vec![Component {
                name: "probe".into(),
                kind: ComponentKind::Other,
                priority: Priority::P3,
                rto_seconds: 60,
                rpo_seconds: 60,
                description: "the thing under test".into(),
            }],
            steps: STEPS
                .iter()
                .map(|(id, phase, mutating)| Step {
                    id: id.to_string(),
                    phase: *phase,
                    component: "probe".into(),
                    budget_seconds: 2,
                    mutating: *mutating,
                    description: format!("probe {id}"),
                })
                .collect(),
        }
    }

    fn run_step(id: String, ctx: Vec<Finding>) -> Outcome {
        let alias = arg(&ctx, "alias");
        let key = arg(&ctx, "key");
        match id.as_str() {
            "noop" => Outcome::Ok(vec![]),
            "context-echo" => Outcome::Ok(ctx),
            "s3.head" => match s3::head(alias, key) {
                Ok(Some(o)) => Outcome::Ok(object("", &o)),
                Ok(None) => Outcome::Ok(vec![finding("missing", key)]),
                Err(e) => err(e),
            },
            "s3.get" => match s3::get(alias, key) {
                Ok(b) => Outcome::Ok(vec![
                    finding("size", b.len()),
                    finding("body", String::from_utf8_lossy(&b)),
                ]),
                Err(e) => err(e),
            },
            "s3.put" => match s3::put(alias, key, arg(&ctx, "body").as_bytes()) {
                Ok(o) => Outcome::Ok(object("", &o)),
                Err(e) => err(e),
            },
            "s3.list" => {
                let max = arg(&ctx, "max").parse().unwrap_or(1000);
                let token = context_value(&ctx, "token");
                match s3::list_objects(alias, arg(&ctx, "prefix"), token, max) {
                    Ok(page) => {
                        let mut out: Vec<Finding> = page
                            .objects
                            .iter()
                            .map(|o| finding("key", &o.key))
                            .collect();
                        if let Some(t) = page.next_token {
                            out.push(finding("next-token", t));
                        }
                        Outcome::Ok(out)
                    }
                    Err(e) => err(e),
                }
            }
            "s3.checksum" => match s3::checksum(alias, key) {
                Ok(sum) => Outcome::Ok(vec![finding("sha256", sum)]),
                Err(e) => err(e),
            },
            "s3.copy" => match s3::copy(alias, key, arg(&ctx, "dst-alias"), arg(&ctx, "dst-key")) {
                Ok(o) => Outcome::Ok(object("", &o)),
                Err(e) => err(e),
            },
            "s3.delete" => match s3::delete(alias, key) {
                Ok(()) => Outcome::Ok(vec![]),
                Err(e) => err(e),
            },
            "s3.list-versions" => match s3::list_versions(alias, arg(&ctx, "prefix"), None, 1000) {
                Ok(page) => Outcome::Ok(
                    page.versions
                        .iter()
                        .map(|v| {
                            finding(
                                "version",
                                format!(
                                    "{} {} {} latest={} deleted={}",
                                    v.key, v.version_id, v.size, v.is_latest, v.delete_marker
                                ),
                            )
                        })
                        .collect(),
                ),
                Err(e) => err(e),
            },
            "s3.get-version" => match s3::get_version(alias, key, arg(&ctx, "version")) {
                Ok(b) => Outcome::Ok(vec![finding("body", String::from_utf8_lossy(&b))]),
                Err(e) => err(e),
            },
            "db.query" => {
                match db::query(arg(&ctx, "conn"), arg(&ctx, "sql"), &params(&ctx)) {
                    Ok(rows) => {
                        let mut out = vec![finding("rows", rows.rows.len())];
                        out.extend(rows.columns.iter().map(|c| finding("column", &c.name)));
                        out.extend(rows.rows.iter().map(|r| {
                            finding("row", r.iter().map(show).collect::<Vec<_>>().join(","))
                        }));
                        Outcome::Ok(out)
                    }
                    Err(e) => err(e),
                }
            }
            "db.execute" => match db::execute(arg(&ctx, "conn"), arg(&ctx, "sql"), &params(&ctx)) {
                Ok(n) => Outcome::Ok(vec![finding("affected", n)]),
                Err(e) => err(e),
            },
            "db.ping" => match db::ping(arg(&ctx, "conn")) {
                Ok(us) => Outcome::Ok(vec![finding("latency-us", us)]),
                Err(e) => err(e),
            },
            "backup.create" => {
                match backup::create(arg(&ctx, "source"), backup::BackupKind::Full) {
                    Ok(b) => Outcome::Ok(backup_findings(&b)),
                    Err(e) => err(e),
                }
            }
            "backup.list" => match backup::list_backups(arg(&ctx, "source")) {
                Ok(all) => Outcome::Ok(all.iter().flat_map(backup_findings).collect()),
                Err(e) => err(e),
            },
            "backup.verify" => {
                let target = Some(arg(&ctx, "target")).filter(|t| !t.is_empty());
                match backup::verify(arg(&ctx, "source"), arg(&ctx, "id"), target) {
                    Ok(reports) => Outcome::Ok(
                        reports
                            .iter()
                            .flat_map(|r| {
                                std::iter::once(finding(
                                    "passed",
                                    format!("{} {}", r.target, r.passed),
                                ))
                                .chain(r.checks.iter().map(|c| {
                                    finding(
                                        "check",
                                        format!("{} {:?} {}", c.name, c.status, c.detail),
                                    )
                                }))
                            })
                            .collect(),
                    ),
                    Err(e) => err(e),
                }
            }
            "backup.restore" => {
                let pit = Some(arg(&ctx, "point-in-time")).filter(|t| !t.is_empty());
                match backup::restore(arg(&ctx, "source"), arg(&ctx, "id"), arg(&ctx, "to"), pit) {
                    Ok(r) => Outcome::Ok(vec![
                        finding("id", &r.id),
                        finding("rows", r.rows),
                        finding("read-from", &r.read_from),
                    ]),
                    Err(e) => err(e),
                }
            }
            // Misbehaving on purpose, for the conformance suite: a write in a
            // step declared not mutating, and an outcome that changes each run.
            "sneaky-put" => match s3::put("primary", "sneaky", b"x") {
                Ok(_) => Outcome::Ok(vec![]),
                Err(e) => err(e),
            },
            "exec.run" => {
                let args: Vec<String> = ctx
                    .iter()
                    .filter(|f| f.key == "arg")
                    .map(|f| f.value.clone())
                    .collect();
                match exec::run(arg(&ctx, "name"), &args) {
                    Ok(r) => Outcome::Ok(vec![
                        finding(
                            "exit",
                            r.exit_code.map_or("killed".to_string(), |c| c.to_string()),
                        ),
                        finding("stdout", r.stdout),
                        finding("stderr", r.stderr),
                        finding("truncated", r.truncated),
                    ]),
                    Err(e) => err(e),
                }
            }
            "net.resolve" => match net::resolve(arg(&ctx, "host")) {
                Ok(a) => Outcome::Ok(a.into_iter().map(|a| finding("address", a)).collect()),
                Err(e) => err(e),
            },
            "net.probe" => {
                let port = arg(&ctx, "port").parse().unwrap_or(0);
                match net::probe_tcp(arg(&ctx, "host"), port, 2000) {
                    Ok(us) => Outcome::Ok(vec![finding("connect-us", us)]),
                    Err(e) => err(e),
                }
            }
            "inject.put" => match s3::put(alias, key, b"injected") {
                Ok(_) => Outcome::Ok(vec![finding("data-at-disaster-ms", 1)]),
                Err(e) => err(e),
            },
            "random" => {
                use std::hash::BuildHasher;
                // RandomState is seeded from wasi:random: a new value each instance.
                let n = std::collections::hash_map::RandomState::new().hash_one(1u8);
                Outcome::Ok(vec![finding("random", n)])
            }
            "http.get" => match drhost_plugin::http::get(arg(&ctx, "url")) {
                Ok(r) => Outcome::Ok(vec![
                    finding("status", r.status),
                    finding("location", r.header("location").unwrap_or_default()),
                    finding("body", r.text()),
                ]),
                Err(e) => err(e),
            },
            "state.set" => match state::set(key, arg(&ctx, "value").as_bytes()) {
                Ok(()) => Outcome::Ok(vec![]),
                Err(e) => err(e),
            },
            "state.get" => match state::get(key) {
                Some(v) => Outcome::Ok(vec![finding("value", String::from_utf8_lossy(&v))]),
                None => Outcome::Ok(vec![finding("missing", key)]),
            },
            "state.loop" => {
                // For benchmarks: n audited host calls in one step.
                let n: u32 = arg(&ctx, "n").parse().unwrap_or(0);
                let mut found = 0u32;
                for _ in 0..n {
                    found += u32::from(state::get("bench").is_some());
                }
                Outcome::Ok(vec![finding("found", found)])
            }
            "wasi-closed" => {
                // Everything WASI offers beyond the granted capabilities is closed.
                let env = std::env::vars().count();
                let args = std::env::args().count();
                let root = std::fs::read_dir("/")
                    .map(|d| d.count())
                    .map_err(|e| e.to_string());
                let tmp = std::fs::write("/tmp/drhost-probe", b"x").map_err(|e| e.to_string());
                let tcp = std::net::TcpStream::connect("127.0.0.1:22").map_err(|e| e.to_string());
                Outcome::Ok(vec![
                    finding("env", env),
                    finding("args", args),
                    finding("read-root", format!("{root:?}")),
                    finding("write-tmp", format!("{tmp:?}")),
                    finding("tcp", format!("{:?}", tcp.map(|_| "connected"))),
                ])
            }
            "stdout" => {
                // Guest stdout must land in the host's log, bounded.
                for i in 0..arg(&ctx, "lines").parse::<u32>().unwrap_or(1) {
                    println!("probe line {i}");
                }
                Outcome::Ok(vec![])
            }
            "spin" => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "grow" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "trap" => panic!("probe was asked to trap"),
            "recurse" => Outcome::Ok(vec![finding("depth", deeper(0))]),
            // Waits in a WASI clock poll, where no guest code runs.
            "wasi-sleep" => {
                std::thread::sleep(std::time::Duration::from_secs(600));
                Outcome::Ok(vec![])
            }
            other => Outcome::Skipped(format!("unknown step {other}")),
        }
    }
}

/// Recurses until the stack runs out.
fn deeper(n: u64) -> u64 {
    let pad = std::hint::black_box([n; 64]);
    if pad[0] == u64::MAX {
        return 0;
    }
    1 + deeper(pad[63] + 1)
}

drhost_plugin::export!(Probe with_types_in drhost_plugin::bindings);
