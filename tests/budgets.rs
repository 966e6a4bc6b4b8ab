//! Nothing outlives its budget: a step waiting in a host call of any kind
//! (a WASI clock, HTTP, a database statement on each engine, a program and
//! what it leaves behind) is cut at its budget, and the work it started
//! stops too — the servers' statements are cancelled, the processes killed.
//!
//! Each hang below would last 600 s; the tests check that the step ends
//! long before (budget + a margin for a loaded machine) and that nothing it
//! started is still running afterwards. How far past the budget a step
//! really ends is measured in `scripts/bench-budgets.sh`, not here.

mod common;

use common::*;
use drhost::runtime::CallFailure;
use sqlx::Connection;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const BUDGET: Duration = Duration::from_secs(2);
/// Far below the 600 s each hang would last, far above the real overrun.
const MARGIN: Duration = Duration::from_secs(8);

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

/// Runs `id` under [`BUDGET`] and checks that it was cut there.
async fn cut_at_budget(caps: &std::sync::Arc<drhost::caps::Caps>, id: &str, args: &[(&str, &str)]) {
    let started = Instant::now();
    let r = step_within(caps, id, args, BUDGET).await;
    let took = started.elapsed();
    assert!(
        took < BUDGET + MARGIN,
        "{id} {args:?} held the step {took:?} against a budget of {BUDGET:?}"
    );
    match r {
        Err(CallFailure::Budget { budget_s, .. }) => assert_eq!(budget_s, BUDGET.as_secs()),
        // A host call that gives up at the budget returns its error to the
        // guest, which fails the step itself.
        Ok(drhost::bindings::Outcome::Failed(why)) => {
            assert!(why.contains("budget"), "{id}: {why}")
        }
        other => panic!("{id} {args:?}: expected a cut at the budget, got {other:?}"),
    }
}

/// Polls `cond` until it holds (the server applies a cancel asynchronously).
async fn eventually(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    for _ in 0..100 {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}");
}

#[tokio::test]
async fn a_wasi_clock_wait_is_cut_at_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let caps = caps("", dir.path()).await;
    cut_at_budget(&caps, "wasi-sleep", &[]).await;
}

#[tokio::test]
async fn an_http_request_to_a_server_that_never_answers_is_cut_at_the_budget() {
    // Accepts connections and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in listener.incoming().flatten() {
            held.push(c);
        }
    });
    let url = format!("http://127.0.0.1:{port}/health");
    let dir = tempfile::tempdir().unwrap();
    let caps = caps(&format!("[http]\nallow = [\"{url}\"]\n"), dir.path()).await;
    cut_at_budget(&caps, "http.get", &[("url", &url)]).await;
}

#[tokio::test]
async fn a_mariadb_statement_is_cut_at_the_budget_and_stopped_on_the_server() {
    let url = mariadb_url();
    let dir = tempfile::tempdir().unwrap();
    let caps = caps(
        &format!("[db.m]\nurl = \"{url}\"\naccess = \"read-write\"\n"),
        dir.path(),
    )
    .await;
    let marker = format!("drhost_budget_{}", unique().replace('-', "_"));
    // A statement that lifts its own time limit and, busy computing, never
    // notices that its client went away: only a KILL QUERY stops it.
    let sql = format!(
        "SET STATEMENT max_statement_time = 0 FOR SELECT BENCHMARK(4000000000, SHA2('x', 256)) AS {marker}"
    );
    cut_at_budget(&caps, "db.query", &[("conn", "m"), ("sql", &sql)]).await;
    let mut admin = sqlx::MySqlConnection::connect(&url).await.unwrap();
    eventually("the statement still runs on the server", async || {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM information_schema.processlist WHERE info LIKE CONCAT('%', ?, '%') AND id <> CONNECTION_ID()",
        )
        .bind(&marker)
        .fetch_one(&mut admin)
        .await
        .unwrap();
        n == 0
    })
    .await;
}

#[tokio::test]
async fn a_postgres_statement_is_cut_at_the_budget_and_stopped_on_the_server() {
    let url = postgres_url();
    let dir = tempfile::tempdir().unwrap();
    let caps = caps(
        &format!("[db.p]\nurl = \"{url}\"\naccess = \"read-write\"\n"),
        dir.path(),
    )
    .await;
    let marker = format!("drhost_budget_{}", unique().replace('-', "_"));
    let mut admin = sqlx::PgConnection::connect(&url).await.unwrap();
    // Work done at COMMIT (a deferred trigger) runs without statement_timeout.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {marker} (v int); \
         CREATE FUNCTION {marker}_slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(600); RETURN NULL; END $$; \
         CREATE CONSTRAINT TRIGGER {marker}_t AFTER INSERT ON {marker} DEFERRABLE INITIALLY DEFERRED \
           FOR EACH ROW EXECUTE FUNCTION {marker}_slow()"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    let sql = format!("INSERT INTO {marker} VALUES (42)");
    cut_at_budget(&caps, "db.execute", &[("conn", "p"), ("sql", &sql)]).await;
    eventually("the statement still runs on the server", async || {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%' || $1 || '%' AND pid <> pg_backend_pid()",
        )
        .bind(&marker)
        .fetch_one(&mut admin)
        .await
        .unwrap();
        n == 0
    })
    .await;
    // Cancelled, not committed late.
    let rows: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {marker}"
    )))
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert_eq!(rows, 0);
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP TABLE {marker}; DROP FUNCTION {marker}_slow()"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
}

#[tokio::test]
async fn a_sqlite_statement_that_never_ends_is_interrupted_at_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let caps = caps(
        &format!(
            "[db.s]\nurl = \"sqlite://{}?mode=rwc\"\naccess = \"read-write\"\n",
            db.display()
        ),
        dir.path(),
    )
    .await;
    let endless =
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c";
    cut_at_budget(&caps, "db.query", &[("conn", "s"), ("sql", endless)]).await;
    // The database answers the next statement (that SQLite itself stops
    // the statement is tested in caps::db's unit tests, without the host's
    // own cut racing it).
    let rows = ok(
        &caps,
        "db.query",
        &[("conn", "s"), ("sql", "SELECT 41 + 1")],
    )
    .await;
    assert!(rows.contains(&("row".into(), "int:42".into())), "{rows:?}");
}

#[tokio::test]
async fn a_program_that_never_ends_is_killed_at_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let caps = caps(
        "[exec.nap]\nprogram = \"/bin/sleep\"\nargs = [\"*\"]\ntimeout = \"10m\"\n",
        dir.path(),
    )
    .await;
    let started = Instant::now();
    let r = step_within(
        &caps,
        "exec.run",
        &[("name", "nap"), ("arg", "600")],
        BUDGET,
    )
    .await;
    assert!(started.elapsed() < BUDGET + MARGIN, "{r:?}");
    // Killed at what was left of the budget: the call reports it.
    match r {
        Ok(drhost::bindings::Outcome::Ok(f)) => {
            assert!(
                f.iter().any(|f| f.key == "exit" && f.value == "killed"),
                "{f:?}"
            )
        }
        Err(CallFailure::Budget { .. }) => {}
        other => panic!("expected the program killed, got {other:?}"),
    }
}

/// Whether a process is gone (or a zombie nobody reaped yet).
fn gone(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

/// Runs `fixture` (a program that leaves a process behind and writes its
/// pid to the file it is given) through `exec.run`, with `extra` grant
/// lines. Returns the findings, how long the call took, and the pid.
async fn start_leaving_behind(
    fixture_name: &str,
    extra: &str,
) -> (Vec<(String, String)>, Duration, String) {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("daemon.pid");
    let caps = caps(
        &format!(
            "[exec.start]\nprogram = {:?}\nargs = [{{ path-under = {:?} }}]\n{extra}",
            fixture(fixture_name),
            dir.path()
        ),
        dir.path(),
    )
    .await;
    let started = Instant::now();
    let f = ok(
        &caps,
        "exec.run",
        &[("name", "start"), ("arg", pidfile.to_str().unwrap())],
    )
    .await;
    let took = started.elapsed();
    let pid = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .to_string();
    (f, took, pid)
}

#[tokio::test]
async fn what_a_program_leaves_behind_is_killed_even_out_of_its_process_group() {
    // The left-behind process holds the program's stdout: the call must
    // not wait for it.
    let (f, took, pid) = start_leaving_behind("daemonize.sh", "").await;
    assert!(took < MARGIN, "{f:?}");
    assert!(f.contains(&("exit".into(), "0".into())), "{f:?}");
    eventually("the setsid child survived", async || gone(&pid)).await;
}

#[tokio::test]
async fn a_daemon_that_hides_its_session_and_environment_is_killed_with_its_cgroup() {
    let (f, _, pid) = start_leaving_behind("daemonize-hidden.sh", "").await;
    assert!(f.contains(&("exit".into(), "0".into())), "{f:?}");
    eventually("the hidden daemon survived", async || gone(&pid)).await;
}

#[tokio::test]
async fn a_grant_that_leaves_a_service_running_keeps_it_and_does_not_wait_for_it() {
    let (f, took, pid) = start_leaving_behind("daemonize.sh", "leaves-running = true\n").await;
    assert!(took < MARGIN, "{f:?}");
    assert!(!gone(&pid), "the service was killed");
    // SAFETY: test clean-up, signals the process it started.
    unsafe { libc::kill(pid.parse().unwrap(), libc::SIGKILL) };
}

#[tokio::test]
async fn a_flood_of_calls_stops_at_the_audit_budget_and_the_log_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let caps = caps("[limits]\naudit-bytes = \"256 KiB\"\n", dir.path()).await;
    ok(&caps, "state.loop", &[("n", "200000")]).await;
    caps.gate.flush();
    let log = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .unwrap();
    let size = std::fs::metadata(&log).unwrap().len();
    assert!(size <= (256 << 10) + 2048, "{size} bytes");
    let records = drhost::audit::read(&log).unwrap();
    let cuts: Vec<_> = records
        .iter()
        .filter(|r| r.record["type"] == "audit-cut")
        .collect();
    assert_eq!(cuts.len(), 1);
    let denied = caps
        .gate
        .counters
        .denied
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(denied + records.len() as u64 >= 200_000, "{denied}");
}
