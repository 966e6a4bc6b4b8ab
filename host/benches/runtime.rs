//! Benchmarks for the issue's performance goals, printed side by side with a
//! raw-wasmtime baseline measured in the same process:
//!
//!   cargo bench --bench runtime
//!
//! Needs the plugins built (scripts/test.sh or scripts/bench.sh does that).
//! Set DRHOST_BENCH_S3=http://127.0.0.1:PORT to include a 1 GiB copy to S3.

use drhost::audit::AuditWriter;
use drhost::bindings::{Finding, Outcome};
use drhost::caps::state::StateCap;
use drhost::orchestrator::build_caps;
use drhost::policy::Policy;
use drhost::runtime::Runtime;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

fn plugin(name: &str) -> PathBuf {
    let dir = std::env::var_os("DRHOST_TEST_PLUGINS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/target/wasm32-wasip2/release")
        });
    let p = dir.join(format!("{name}.wasm"));
    assert!(
        p.exists(),
        "{} missing: build the plugins first",
        p.display()
    );
    p
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn p90(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() * 9 / 10]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

struct Raw {
    wasi: WasiCtx,
    http: wasmtime_wasi_http::WasiHttpCtx,
    table: ResourceTable,
}

impl wasmtime_wasi_http::WasiHttpView for Raw {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        wasmtime_wasi_http::WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: Default::default(),
        }
    }
}

impl WasiView for Raw {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Raw wasmtime: the same component and call, WASI only, drhost imports as traps.
async fn raw_baseline(path: &Path, iters: usize, engine: Option<&Engine>) -> Vec<Duration> {
    let mut config = Config::new();
    config.wasm_component_model(true);
    // The same engine settings as drhost's, so the difference is drhost's own.
    config.epoch_interruption(true);
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(64)
        .total_core_instances(512)
        .total_memories(128)
        .total_tables(256);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    let engine = match engine {
        Some(e) => e.clone(),
        None => Engine::new(&config).expect("engine"),
    };
    let component = Component::from_file(&engine, path).expect("component");
    let mut linker = Linker::<Raw>::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).expect("wasi");
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).expect("http");
    // drhost's own imports become traps; noop never calls them.
    let ty = component.component_type();
    for (name, item) in ty.imports(&engine) {
        if let (true, wasmtime::component::types::ComponentItem::ComponentInstance(inst)) =
            (name.starts_with("drhost:plugin/"), item.ty)
        {
            let mut li = linker.instance(name).expect("instance");
            for (fname, fitem) in inst.exports(&engine) {
                if matches!(
                    fitem.ty,
                    wasmtime::component::types::ComponentItem::ComponentFunc(_)
                ) {
                    li.func_new(fname, |_, _, _, _| {
                        wasmtime::bail!("not linked in the baseline")
                    })
                    .expect("trap func");
                }
            }
        }
    }
    let pre = linker.instantiate_pre(&component).expect("pre");
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let start = Instant::now();
        let mut store = Store::new(
            &engine,
            Raw {
                wasi: WasiCtx::builder().build(),
                http: wasmtime_wasi_http::WasiHttpCtx::new(),
                table: ResourceTable::new(),
            },
        );
        store.set_epoch_deadline(1000);
        let instance = pre
            .instantiate_async(&mut store)
            .await
            .expect("instantiate");
        let iface = instance
            .get_export_index(&mut store, None, "drhost:plugin/plugin@0.2.0")
            .expect("interface");
        let func = instance
            .get_export_index(&mut store, Some(&iface), "run-step")
            .expect("run-step");
        let f = instance
            .get_typed_func::<(&str, &[Finding]), (Outcome,)>(&mut store, &func)
            .expect("typed");
        let (out,) = f.call_async(&mut store, ("noop", &[])).await.expect("call");
        times.push(start.elapsed());
        assert!(matches!(out, Outcome::Ok(_)));
    }
    times
}

/// Times instantiate + the `noop` step, after a warm-up.
async fn time_noop(
    runtime: &Runtime,
    plugin: &drhost::runtime::Plugin,
    caps: &Arc<drhost::caps::Caps>,
    iters: usize,
) -> Vec<Duration> {
    let budget = Duration::from_secs(30);
    for _ in 0..200 {
        runtime
            .run_step(plugin, caps, "noop", &[], budget)
            .await
            .expect("warm-up");
    }
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let start = Instant::now();
        runtime
            .run_step(plugin, caps, "noop", &[], budget)
            .await
            .expect("noop");
        times.push(start.elapsed());
    }
    times
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

fn reset_peak_rss() {
    // Linux: writing 5 to clear_refs resets VmHWM to the current RSS.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn row(name: &str, value: String, target: &str, baseline: Option<String>) {
    println!(
        "{name:<58} {value:>14} {target:>12} {:>22}",
        baseline.unwrap_or_default()
    );
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = Runtime::new(Some(dir.path().join("cache"))).expect("runtime");
    let probe_path = plugin("probe");
    runtime.load(&probe_path).expect("compile once");
    let probe = runtime.load(&probe_path).expect("load from cache");
    assert!(probe.from_cache);

    let policy = Arc::new(Policy::deny_all());
    let audit = AuditWriter::create(&dir.path().join("audit.jsonl")).expect("audit");
    let caps = Arc::new(
        build_caps(
            &policy,
            Some(audit),
            StateCap::ephemeral(1 << 20),
            false,
            None,
        )
        .await
        .expect("caps"),
    );
    let budget = Duration::from_secs(30);
    let iters = 3000;

    println!(
        "{:<58} {:>14} {:>12} {:>22}",
        "benchmark", "median", "target", "raw wasmtime 48"
    );

    let only_budgets = std::env::var("DRHOST_BENCH_ONLY").is_ok_and(|v| v == "budgets");

    // 1. Instantiate + one run-step from a precompiled component.
    if !only_budgets {
        let ours = time_noop(&runtime, &probe, &caps, iters).await;
        let raw = raw_baseline(&probe_path, iters, None).await;
        if std::env::var("DRHOST_BENCH_ONLY").is_ok_and(|v| v == "instantiate") {
            let same = raw_baseline(&probe_path, iters, Some(runtime.engine())).await;
            row(
                "  raw wasmtime on drhost's engine",
                format!("{:.1} µs", us(median(same))),
                "",
                None,
            );
        }
        let (m, r) = (median(ours.clone()), median(raw));
        row(
            "instantiate + run-step (probe, 273 KB, precompiled)",
            format!("{:.1} µs", us(m)),
            "",
            Some(format!("{:.1} µs (×{:.2})", us(r), us(m) / us(r))),
        );
        row("  p90", format!("{:.1} µs", us(p90(ours))), "", None);

        // 1b. The same for the smallest plugin (tiny: one step that calls nothing).
        let tiny_path = plugin("tiny");
        runtime.load(&tiny_path).expect("compile once");
        let tiny = runtime.load(&tiny_path).expect("load from cache");
        let ours = time_noop(&runtime, &tiny, &caps, iters).await;
        let raw = raw_baseline(&tiny_path, iters, None).await;
        let (m, r) = (median(ours.clone()), median(raw));
        row(
            "instantiate + run-step (tiny, precompiled)",
            format!("{:.1} µs", us(m)),
            "< 30 µs",
            Some(format!("{:.1} µs (×{:.2})", us(r), us(m) / us(r))),
        );
        row("  p90", format!("{:.1} µs", us(p90(ours))), "", None);
        let hello = runtime.load(&plugin("hello")).expect("hello");
        let mut times = Vec::with_capacity(iters);
        for _ in 0..iters {
            let start = Instant::now();
            runtime
                .run_step(&hello, &caps, "check", &[], budget)
                .await
                .expect("check");
            times.push(start.elapsed());
        }
        row(
            "instantiate + run-step (hello: 2 audited state calls)",
            format!("{:.1} µs", us(median(times))),
            "",
            None,
        );
        // The same scenario written in Python and JavaScript: their interpreters
        // are inside the component, so instantiating one costs far more.
        for (name, label) in [("hello_py", "Python"), ("hello_js", "JavaScript")] {
            let path = plugin(name);
            runtime.load(&path).expect("compile once");
            let guest = runtime.load(&path).expect("load from cache");
            let mut times = Vec::with_capacity(200);
            for _ in 0..200 {
                let start = Instant::now();
                runtime
                    .run_step(&guest, &caps, "check", &[], budget)
                    .await
                    .expect("check");
                times.push(start.elapsed());
            }
            row(
                &format!("instantiate + run-step (hello in {label})"),
                format!("{:.1} µs", us(median(times))),
                "",
                None,
            );
        }
    }

    if std::env::var("DRHOST_BENCH_ONLY").is_ok_and(|v| v == "instantiate") {
        return;
    }

    // 2. One audited capability call: state.get, n calls in one step.
    let n = 100_000u32;
    let n_str = n.to_string();
    let mut per_call = Vec::new();
    for _ in 0..7 {
        let zero = {
            let s = Instant::now();
            runtime
                .run_step(&probe, &caps, "state.loop", &[f("n", "0")], budget)
                .await
                .expect("loop 0");
            s.elapsed()
        };
        let many = {
            let s = Instant::now();
            runtime
                .run_step(&probe, &caps, "state.loop", &[f("n", &n_str)], budget)
                .await
                .expect("loop n");
            s.elapsed()
        };
        per_call.push(many.saturating_sub(zero) / n);
    }
    row(
        "audited capability call (state.get, round trip)",
        format!("{:.2} µs", us(median(per_call))),
        "< 2 µs",
        Some("~0.1 µs (host call)".into()),
    );

    // 2b. How far past its budget a step ends, per kind of wait. Baseline:
    // a guest busy in its own code, stopped by the epoch deadline.
    budget_overruns(&runtime, &probe, dir.path()).await;
    if only_budgets {
        return;
    }

    // 3. Whole `drhost run` of a trivial plugin, cache warm (Rust, then Python).
    let bin = env!("CARGO_BIN_EXE_drhost");
    let state = dir.path().join("state");
    let runs = dir.path().join("runs");
    let run = |wasm: &Path| {
        let s = Instant::now();
        let out = std::process::Command::new(bin)
            .arg("--state-dir")
            .arg(&state)
            .args(["run", "--json"])
            .arg(wasm)
            .arg("--out")
            .arg(&runs)
            .env("DRHOST_LOG", "warn")
            .output()
            .expect("drhost run");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json report");
        let log = drhost::audit::read(Path::new(report["audit_log"].as_str().unwrap_or_default()))
            .expect("audit log");
        let load_us = log[0]
            .record
            .get("load_us")
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        (s.elapsed(), Duration::from_micros(load_us))
    };
    for (name, target) in [
        ("hello", "< 30 ms"),
        ("hello_py", "load < 10 ms"),
        ("hello_js", "load < 10 ms"),
    ] {
        let wasm = plugin(name);
        let (first, first_load) = run(&wasm);
        let warm: Vec<(Duration, Duration)> = (0..15).map(|_| run(&wasm)).collect();
        let total = median(warm.iter().map(|w| w.0).collect());
        let load = median(warm.iter().map(|w| w.1).collect());
        row(
            &format!("drhost run {name}.wasm, cache warm: process (load)"),
            format!(
                "{:.1} ms ({:.1})",
                total.as_secs_f64() * 1e3,
                load.as_secs_f64() * 1e3
            ),
            target,
            Some(format!(
                "first {:.0} ms ({:.0})",
                first.as_secs_f64() * 1e3,
                first_load.as_secs_f64() * 1e3
            )),
        );
    }

    // 4. 1 GiB server-side/streamed copy between two aliases: host memory.
    let size: u64 = 1 << 30;
    std::fs::create_dir_all(dir.path().join("a")).expect("dir");
    let src = std::fs::File::create(dir.path().join("a/big")).expect("big file");
    src.set_len(size).expect("sparse 1 GiB");
    let mut toml =
        "[s3.a]\npath = \"a\"\naccess = [\"read\"]\n[s3.b]\npath = \"b\"\naccess = [\"write\"]\n"
            .to_string();
    let s3 = std::env::var("DRHOST_BENCH_S3").ok();
    if let Some(endpoint) = &s3 {
        toml.push_str(&format!(
            "[s3.r]\nbucket = \"drhost-bench\"\naccess = [\"write\"]\nendpoint = \"{endpoint}\"\npath-style = true\naccess-key-id = \"test\"\nsecret-access-key = \"test\"\n"
        ));
    }
    let mut p = Policy::parse(&toml).expect("policy");
    p.source = Some(dir.path().join("policy.toml"));
    let p = Arc::new(p);
    let copy_caps = Arc::new(
        build_caps(&p, None, StateCap::ephemeral(0), false, None)
            .await
            .expect("caps"),
    );
    // Peak RSS growth and throughput of one 1 GiB copy from alias a.
    let measure = |dst: &'static str| {
        let (runtime, probe, copy_caps) = (&runtime, &probe, &copy_caps);
        async move {
            reset_peak_rss();
            let before = peak_rss_kib();
            let s = Instant::now();
            let args = [
                f("alias", "a"),
                f("key", "big"),
                f("dst-alias", dst),
                f("dst-key", "big"),
            ];
            let out = runtime
                .run_step(
                    probe,
                    copy_caps,
                    "s3.copy",
                    &args,
                    Duration::from_secs(1200),
                )
                .await
                .expect("copy");
            assert!(matches!(out, Outcome::Ok(_)), "{out:?}");
            let growth = peak_rss_kib().saturating_sub(before) as f64 / 1024.0;
            (growth, 1024.0 / s.elapsed().as_secs_f64())
        }
    };
    let (growth, rate) = measure("b").await;
    row(
        "copy 1 GiB local → local alias: peak RSS growth",
        format!("{growth:.1} MiB"),
        "< 100 MiB",
        Some(format!("{rate:.0} MiB/s")),
    );
    if s3.is_some() {
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .endpoint_url(std::env::var("DRHOST_BENCH_S3").unwrap_or_default())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .force_path_style(true)
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                "test", "test", None, None, "bench",
            ))
            .build();
        let _ = aws_sdk_s3::Client::from_conf(conf)
            .create_bucket()
            .bucket("drhost-bench")
            .send()
            .await;
        let (growth, rate) = measure("r").await;
        row(
            "copy 1 GiB local → S3 alias (multipart): peak RSS growth",
            format!("{growth:.1} MiB"),
            "< 100 MiB",
            Some(format!("{rate:.0} MiB/s")),
        );
    }
}

/// Runs each kind of endless wait under a 1 s budget, five times, and prints
/// how long past the budget the step ended (median and worst).
async fn budget_overruns(runtime: &Runtime, probe: &drhost::runtime::Plugin, dir: &Path) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let port = listener.local_addr().expect("port").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in listener.incoming().flatten() {
            held.push(c);
        }
    });
    let url = format!("http://127.0.0.1:{port}/never");
    let mut toml = format!(
        "[http]\nallow = [\"{url}\"]\n\
         [exec.nap]\nprogram = \"/bin/sleep\"\nargs = [\"*\"]\ntimeout = \"10m\"\n\
         [db.s]\nurl = \"sqlite://{}?mode=rwc\"\naccess = \"read-write\"\n",
        dir.join("budget.db").display()
    );
    let mariadb = std::env::var("DRHOST_BENCH_MARIADB").ok();
    let postgres = std::env::var("DRHOST_BENCH_POSTGRES").ok();
    if let Some(u) = &mariadb {
        toml.push_str(&format!("[db.m]\nurl = \"{u}\"\naccess = \"read-write\"\n"));
    }
    if let Some(u) = &postgres {
        toml.push_str(&format!("[db.p]\nurl = \"{u}\"\naccess = \"read-write\"\n"));
    }
    let mut p = Policy::parse(&toml).expect("policy");
    p.source = Some(dir.join("policy.toml"));
    let p = Arc::new(p);
    let caps = Arc::new(
        build_caps(&p, None, StateCap::ephemeral(0), false, None)
            .await
            .expect("caps"),
    );
    let endless =
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c";
    let mut cases: Vec<(&str, &str, Vec<Finding>)> = vec![
        ("guest code (epoch deadline): baseline", "spin", vec![]),
        ("WASI clock wait", "wasi-sleep", vec![]),
        (
            "HTTP GET, server never answers",
            "http.get",
            vec![f("url", &url)],
        ),
        (
            "SQLite endless statement",
            "db.query",
            vec![f("conn", "s"), f("sql", endless)],
        ),
        (
            "exec of sleep 600",
            "exec.run",
            vec![f("name", "nap"), f("arg", "600")],
        ),
    ];
    if mariadb.is_some() {
        cases.push((
            "MariaDB SELECT SLEEP(600)",
            "db.query",
            vec![f("conn", "m"), f("sql", "SELECT SLEEP(600)")],
        ));
    }
    if postgres.is_some() {
        cases.push((
            "PostgreSQL pg_sleep(600)",
            "db.query",
            vec![f("conn", "p"), f("sql", "SELECT pg_sleep(600)")],
        ));
    }
    let budget = Duration::from_secs(1);
    for (label, step, args) in cases {
        let mut over = Vec::new();
        for _ in 0..5 {
            let s = Instant::now();
            let _ = runtime.run_step(probe, &caps, step, &args, budget).await;
            over.push(s.elapsed().saturating_sub(budget));
        }
        let worst = over.iter().max().copied().unwrap_or_default();
        row(
            &format!("past a 1 s budget: {label}"),
            format!("{:.0} ms", median(over).as_secs_f64() * 1e3),
            "≤ 1000 ms",
            Some(format!("worst {:.0} ms", worst.as_secs_f64() * 1e3)),
        );
    }
}

fn f(k: &str, v: &str) -> Finding {
    Finding {
        key: k.into(),
        value: v.into(),
    }
}
