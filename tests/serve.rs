//! `drhost serve`: schedules on a clock the tests move, the state store on
//! SQLite and on the real PostgreSQL (every store test runs on both), the
//! jobs against real SQLite databases and local targets, alerts to a real
//! webhook receiver, `/metrics` scraped over HTTP and parsed as Prometheus
//! text, and several real `drhost serve` processes sharing PostgreSQL.

mod common;

use chrono::{DateTime, Utc};
use drhost::backup::config::Config;
use drhost::serve::Daemon;
use drhost::serve::scheduler::{ManualClock, job_id};
use drhost::serve::store::StateStore;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// A state store of its own: a SQLite file, or a fresh PostgreSQL database.
struct Db {
    url: String,
    _dir: Option<tempfile::TempDir>,
}

impl Db {
    fn sqlite() -> Db {
        let dir = tempfile::tempdir().unwrap();
        Db {
            url: format!("sqlite:{}", dir.path().join("state.db").display()),
            _dir: Some(dir),
        }
    }

    async fn postgres() -> Db {
        let name = format!("drhost_st_{}", common::unique().replace('-', "_"));
        let admin = sqlx::PgPool::connect(&common::postgres_url())
            .await
            .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let mut url = url::Url::parse(&common::postgres_url()).unwrap();
        url.set_path(&format!("/{name}"));
        Db {
            url: url.to_string(),
            _dir: None,
        }
    }

    async fn store(&self) -> StateStore {
        StateStore::open(&self.url).await.unwrap()
    }
}

/// Runs a test body once on SQLite and once on PostgreSQL.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name(super::Db::sqlite()).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name(super::Db::postgres().await).await
                }
            }
        )*
    };
}

on_both_stores!(
    each_occurrence_runs_on_exactly_one_of_two_hosts,
    a_new_schedule_starts_now_and_missed_runs_follow_the_catch_up_rule,
    a_schedule_never_overlaps_itself,
    a_dead_hosts_job_is_taken_over_after_its_lease_and_given_up_after_max_attempts,
    a_job_over_its_timeout_is_stopped_and_recorded_as_failed,
    backups_verifications_and_restore_tests_are_recorded_and_measured,
    alerts_are_sent_once_per_interval_and_cleared_with_a_notice,
    a_recovery_lock_keeps_a_second_recovery_out_until_released,
    migrations_run_once_and_a_reopened_store_keeps_its_history,
);

/// A working directory with a drhost.toml.
struct Setup {
    dir: tempfile::TempDir,
    recipient: String,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let (secret, recipient) = drhost::backup::keygen();
        std::fs::write(dir.path().join("key.txt"), format!("{secret}\n")).unwrap();
        Setup { dir, recipient }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// `top` holds top-level keys; `tables` the rest.
    fn config(&self, db: &Db, top: &str, tables: &str) -> Config {
        let text = format!(
            "state = \"{}\"\n{top}\n[keys]\nrecipients = [\"{}\"]\nidentity = \"key.txt\"\n{tables}",
            db.url, self.recipient
        );
        std::fs::write(self.path("drhost.toml"), &text).unwrap();
        Config::load(&self.path("drhost.toml")).unwrap()
    }

    /// A serving host on `db` with this configuration, not yet ticking.
    async fn daemon(
        &self,
        db: &Db,
        top: &str,
        tables: &str,
        clock: &Arc<ManualClock>,
        host: &str,
    ) -> Arc<Daemon> {
        let config = self.config(db, top, tables);
        self.daemon_on(config, db.store().await, clock, host).await
    }

    async fn daemon_on(
        &self,
        config: Config,
        store: StateStore,
        clock: &Arc<ManualClock>,
        host: &str,
    ) -> Arc<Daemon> {
        let clock: Arc<dyn drhost::serve::scheduler::Clock> = clock.clone();
        Daemon::with_store(config, store, self.path("state"), clock, host.into()).unwrap()
    }
}

fn sqlite3(db: &Path, sql: &str) -> String {
    let out = Command::new("sqlite3").arg(db).arg(sql).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Moves the clock to `at`, looks at the schedules, waits for what started.
async fn tick_at(d: &Daemon, clock: &ManualClock, at: &str) -> drhost::serve::scheduler::Tick {
    clock.set(utc(at));
    let tick = d.tick().await.unwrap();
    d.scheduler.wait_idle().await;
    tick
}

fn command_schedule(name: &str, cron: &str, script: &str, extra: &str) -> String {
    format!(
        "[schedule.{name}]\ncron = \"{cron}\"\njob = \"command\"\ncommand = [\"sh\", \"-c\", {}]\n{extra}\n",
        toml_str(script)
    )
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.into()).to_string()
}

async fn each_occurrence_runs_on_exactly_one_of_two_hosts(db: Db) {
    let s = Setup::new();
    let marks = s.path("marks");
    let tables = command_schedule(
        "ping",
        "*/15 * * * *",
        &format!("echo \"$DRHOST_JOB_ID\" >> {}", marks.display()),
        "",
    );
    let clock = Arc::new(ManualClock::new(utc("2026-11-27T10:07:00Z")));
    let a = s.daemon(&db, "", &tables, &clock, "host-a").await;
    let b = s.daemon(&db, "", &tables, &clock, "host-b").await;
    a.tick().await.unwrap();
    b.tick().await.unwrap();
    for at in [
        "2026-11-27T10:15:00Z",
        "2026-11-27T10:30:00Z",
        "2026-11-27T10:45:00Z",
    ] {
        clock.set(utc(at));
        let (ta, tb) = tokio::join!(a.tick(), b.tick());
        let started = ta.unwrap().started.len() + tb.unwrap().started.len();
        assert_eq!(
            started, 1,
            "at {at}: exactly one host starts the occurrence"
        );
        a.scheduler.wait_idle().await;
        b.scheduler.wait_idle().await;
    }
    let lines = std::fs::read_to_string(&marks).unwrap();
    assert_eq!(
        lines.lines().collect::<Vec<_>>(),
        [
            "ping@2026-11-27T10:15:00Z",
            "ping@2026-11-27T10:30:00Z",
            "ping@2026-11-27T10:45:00Z"
        ]
    );
    let jobs = a.store.jobs_since(0).await.unwrap();
    assert_eq!(jobs.len(), 3);
    assert!(
        jobs.iter()
            .all(|j| j.status == "succeeded" && j.attempts == 1),
        "{jobs:?}"
    );
}

async fn a_new_schedule_starts_now_and_missed_runs_follow_the_catch_up_rule(db: Db) {
    let s = Setup::new();
    let tables = command_schedule("latest", "*/15 * * * *", "true", "")
        + &command_schedule("none", "*/15 * * * *", "true", "catch-up = \"none\"");
    let clock = Arc::new(ManualClock::new(utc("2026-11-27T10:07:00Z")));
    let d = s.daemon(&db, "", &tables, &clock, "h").await;
    // First sight at 10:07: the 10:00 occurrence predates the schedule.
    let t = d.tick().await.unwrap();
    assert!(t.started.is_empty() && t.missed.is_empty(), "{t:?}");
    // Down from 10:07 to 11:20: 10:15, 10:30, 10:45, 11:00 and 11:15 passed.
    clock.set(utc("2026-11-27T11:20:00Z"));
    let t = d.tick().await.unwrap();
    assert_eq!(t.started, ["latest@2026-11-27T11:15:00Z"]);
    let mut missed = t.missed.clone();
    missed.sort();
    assert_eq!(
        missed,
        [
            "latest@2026-11-27T10:15:00Z",
            "latest@2026-11-27T10:30:00Z",
            "latest@2026-11-27T10:45:00Z",
            "latest@2026-11-27T11:00:00Z",
            "none@2026-11-27T10:15:00Z",
            "none@2026-11-27T10:30:00Z",
            "none@2026-11-27T10:45:00Z",
            "none@2026-11-27T11:00:00Z",
            "none@2026-11-27T11:15:00Z",
        ]
    );
    d.scheduler.wait_idle().await;
    let caught = d
        .store
        .job("latest@2026-11-27T11:15:00Z")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(caught.status, "succeeded");
    assert!(caught.detail.contains("caught up"), "{}", caught.detail);
    // Both are back on time at 11:30.
    clock.set(utc("2026-11-27T11:30:00Z"));
    let mut started = d.tick().await.unwrap().started;
    started.sort();
    assert_eq!(
        started,
        ["latest@2026-11-27T11:30:00Z", "none@2026-11-27T11:30:00Z"]
    );
    d.scheduler.wait_idle().await;
    // Missed occurrences count against the test completion rate only for
    // tests; these are commands, so the window holds 2 + 2 runs and 9 misses.
    let jobs = d.store.jobs_since(0).await.unwrap();
    assert_eq!(jobs.iter().filter(|j| j.status == "missed").count(), 9);
    assert_eq!(jobs.iter().filter(|j| j.status == "succeeded").count(), 3);
}

async fn a_schedule_never_overlaps_itself(db: Db) {
    let s = Setup::new();
    let gate = s.path("gate");
    let runs = s.path("runs");
    // The first run waits for the gate file; later runs pass straight through.
    let script = format!(
        "echo \"$DRHOST_JOB_ID start\" >> {r}; while [ ! -e {g} ]; do sleep 0.02; done; echo \"$DRHOST_JOB_ID end\" >> {r}",
        r = runs.display(),
        g = gate.display()
    );
    let tables = command_schedule("slow", "*/15 * * * *", &script, "");
    // The test clock jumps 15 minutes while the run goes on: a lease longer
    // than that keeps the other host from (rightly) taking it over.
    let top = "[serve]\nlease = \"1h\"\n";
    let clock = Arc::new(ManualClock::new(utc("2026-11-27T10:07:00Z")));
    let d = s.daemon(&db, top, &tables, &clock, "h").await;
    let other = s.daemon(&db, top, &tables, &clock, "h2").await;
    d.tick().await.unwrap();
    clock.set(utc("2026-11-27T10:15:00Z"));
    assert_eq!(d.tick().await.unwrap().started.len(), 1);
    // 10:30 comes due while 10:15 still runs: neither host starts it.
    clock.set(utc("2026-11-27T10:30:00Z"));
    assert!(d.tick().await.unwrap().started.is_empty());
    assert!(other.tick().await.unwrap().started.is_empty());
    std::fs::write(&gate, "").unwrap();
    d.scheduler.wait_idle().await;
    // The waiting occurrence runs once the previous one has ended.
    assert_eq!(
        d.tick().await.unwrap().started,
        ["slow@2026-11-27T10:30:00Z"]
    );
    d.scheduler.wait_idle().await;
    let log = std::fs::read_to_string(&runs).unwrap();
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        [
            "slow@2026-11-27T10:15:00Z start",
            "slow@2026-11-27T10:15:00Z end",
            "slow@2026-11-27T10:30:00Z start",
            "slow@2026-11-27T10:30:00Z end"
        ]
    );
}

async fn a_dead_hosts_job_is_taken_over_after_its_lease_and_given_up_after_max_attempts(db: Db) {
    let s = Setup::new();
    let marks = s.path("marks");
    let tables = command_schedule(
        "job",
        "0 * * * *",
        &format!(
            "echo \"$DRHOST_JOB_ID $DRHOST_ATTEMPT\" >> {}",
            marks.display()
        ),
        "",
    );
    let top = "[serve]\nlease = \"60s\"\nmax-attempts = 2\n";
    let clock = Arc::new(ManualClock::new(utc("2026-11-27T09:30:00Z")));
    let store = db.store().await;
    let d = s
        .daemon_on(
            s.config(&db, top, &tables),
            store.clone(),
            &clock,
            "survivor",
        )
        .await;
    d.tick().await.unwrap();
    // A host that died right after claiming 10:00 (its lease ran to 10:01).
    let row = store.schedule("job").await.unwrap();
    let due = utc("2026-11-27T10:00:00Z").timestamp_millis();
    let lease = utc("2026-11-27T10:01:00Z").timestamp_millis();
    assert!(
        store
            .claim("job", row.last_due_ms, due, true, "dead-host", lease)
            .await
            .unwrap()
    );
    // While its lease holds, nobody touches the job.
    clock.set(utc("2026-11-27T10:00:30Z"));
    let t = d.tick().await.unwrap();
    assert!(t.started.is_empty() && t.taken_over.is_empty(), "{t:?}");
    // After it, the survivor runs it again: attempt 2.
    clock.set(utc("2026-11-27T10:01:01Z"));
    assert_eq!(
        d.tick().await.unwrap().taken_over,
        ["job@2026-11-27T10:00:00Z"]
    );
    d.scheduler.wait_idle().await;
    assert_eq!(
        std::fs::read_to_string(&marks).unwrap(),
        "job@2026-11-27T10:00:00Z 2\n"
    );
    let j = store
        .job("job@2026-11-27T10:00:00Z")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((j.status.as_str(), j.attempts), ("succeeded", 2));

    // 11:00 is claimed by a host that dies, then by another that dies too:
    // after max-attempts (2) the job is recorded as failed, not run a third time.
    let due = utc("2026-11-27T11:00:00Z").timestamp_millis();
    let row = store.schedule("job").await.unwrap();
    assert!(
        store
            .claim("job", row.last_due_ms, due, true, "dead-1", due + 60_000)
            .await
            .unwrap()
    );
    let row = store.schedule("job").await.unwrap();
    assert!(
        store
            .take_over(&row, "dead-2", due + 120_000)
            .await
            .unwrap()
    );
    clock.set(utc("2026-11-27T11:02:01Z"));
    let t = d.tick().await.unwrap();
    assert_eq!(t.abandoned, ["job@2026-11-27T11:00:00Z"], "{t:?}");
    let row = store.schedule("job").await.unwrap();
    assert_eq!(row.running_due_ms, None, "the schedule is free again");
    assert_eq!(std::fs::read_to_string(&marks).unwrap().lines().count(), 1);
}

async fn a_job_over_its_timeout_is_stopped_and_recorded_as_failed(db: Db) {
    let s = Setup::new();
    let tables = command_schedule("hang", "0 * * * *", "exec sleep 600", "timeout = \"300ms\"");
    let clock = Arc::new(ManualClock::new(utc("2026-11-27T09:30:00Z")));
    let d = s.daemon(&db, "", &tables, &clock, "h").await;
    d.tick().await.unwrap();
    tick_at(&d, &clock, "2026-11-27T10:00:00Z").await;
    let j = d
        .store
        .job("hang@2026-11-27T10:00:00Z")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(j.status, "failed");
    assert!(j.detail.contains("timed out"), "{}", j.detail);
    assert_eq!(d.store.schedule("hang").await.unwrap().running_due_ms, None);
}

fn sqlite_app(s: &Setup) {
    sqlite3(
        &s.path("app.db"),
        "CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT);\
         WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<500) \
         INSERT INTO users SELECT x, 'user' || x FROM c;",
    );
}

const BACKUP_TABLES: &str = "[sources.app]\nkind = \"sqlite\"\npath = \"app.db\"\n\
    [sources.scratch]\nkind = \"sqlite\"\npath = \"scratch.db\"\n\
    [targets.primary]\npath = \"primary\"\n[targets.local]\npath = \"local\"\n\
    [schedule.backup]\ncron = \"*/15 * * * *\"\njob = \"backup\"\nsource = \"app\"\nkind = \"full\"\n\
    [schedule.verify]\ncron = \"5,20,35,50 * * * *\"\njob = \"verify\"\nsource = \"app\"\n\
    [schedule.restore]\ncron = \"10 * * * *\"\njob = \"restore-test\"\nsource = \"app\"\nto = \"scratch\"\n";

async fn backups_verifications_and_restore_tests_are_recorded_and_measured(db: Db) {
    let s = Setup::new();
    sqlite_app(&s);
    let clock = Arc::new(ManualClock::new(utc("2026-11-27T09:59:00Z")));
    let d = s.daemon(&db, "", BACKUP_TABLES, &clock, "h").await;
    d.tick().await.unwrap();
    for at in [
        "2026-11-27T10:00:00Z",
        "2026-11-27T10:05:00Z",
        "2026-11-27T10:10:00Z",
        "2026-11-27T10:15:00Z",
        "2026-11-27T10:20:00Z",
    ] {
        tick_at(&d, &clock, at).await;
    }
    let jobs = d.store.jobs_since(0).await.unwrap();
    for j in &jobs {
        assert_eq!(j.status, "succeeded", "{} {}", j.id, j.detail);
    }
    assert_eq!(jobs.len(), 5);
    let backups = d.store.backups_since(0).await.unwrap();
    assert_eq!(backups.len(), 2);
    assert!(
        backups
            .iter()
            .all(|b| b.ok && b.bytes > 0 && b.backup_id.is_some())
    );
    // 10:20 verified the latest backup and, at random, the only older one.
    let v = d.store.verifications_since(0).await.unwrap();
    let at_1020: Vec<_> = v
        .iter()
        .filter(|v| v.job_id == "verify@2026-11-27T10:20:00Z")
        .collect();
    let ids: std::collections::BTreeSet<_> = at_1020.iter().map(|v| v.backup_id.clone()).collect();
    assert_eq!(ids.len(), 2, "latest and one older: {at_1020:?}");
    assert_eq!(at_1020.len(), 4, "two backups on two targets");
    assert!(v.iter().all(|v| v.ok), "{v:?}");
    // The restore test put the data into the scratch database.
    assert_eq!(
        sqlite3(&s.path("scratch.db"), "SELECT COUNT(*) FROM users"),
        "500"
    );
    let r = d.store.recoveries_since(0).await.unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(
        (
            r[0].component.as_str(),
            r[0].component_kind.as_str(),
            r[0].ok
        ),
        ("app", "database", true)
    );

    let snap = d.snapshot().await.unwrap();
    assert_eq!(snap.backup_success(), (2, 2));
    assert_eq!(
        snap.verification_success(),
        (v.len() as u64, v.len() as u64)
    );
    // Recovery point: now (10:20 on the test clock) minus the newest
    // verified backup's time (taken on the real clock, just now) — so
    // the point is "in the future" of the test clock and clamps to 0.
    let app = &snap.sources["app"];
    assert!(app.recovery_point_s.is_some());
    assert_eq!(app.recovery_point_target_s, 900.0);
    assert_eq!((snap.tests_succeeded, snap.tests_due), (3, 3));
}

/// A webhook receiver: records each POST body.
async fn webhook_sink() -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let kept = got.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let kept = kept.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let kept = kept.clone();
                        async move {
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            kept.lock()
                                .unwrap()
                                .push(serde_json::from_slice(&body).unwrap());
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                            ))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (format!("http://{addr}/hook"), got)
}

async fn alerts_are_sent_once_per_interval_and_cleared_with_a_notice(db: Db) {
    let s = Setup::new();
    sqlite_app(&s);
    let (url, got) = webhook_sink().await;
    let top = format!("[alerts]\nwebhooks = [\"{url}\"]\nrepeat-after = \"1h\"\n");
    let tables = "[sources.app]\nkind = \"sqlite\"\npath = \"app.db\"\n\
        [targets.primary]\npath = \"primary\"\n\
        [schedule.backup]\ncron = \"*/15 * * * *\"\njob = \"backup\"\nsource = \"app\"\n";
    let clock = Arc::new(ManualClock::new(utc("2026-11-27T09:59:00Z")));
    let d = s.daemon(&db, &top, tables, &clock, "h").await;
    d.tick().await.unwrap();
    // The database file disappears: the 10:00 backup fails.
    std::fs::rename(s.path("app.db"), s.path("app.db.moved")).unwrap();
    tick_at(&d, &clock, "2026-11-27T10:00:00Z").await;
    let sent = d.check_alerts().await.unwrap();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].condition, "backup-failed:app");
    // Still failing ten minutes later: no second alert within the hour.
    clock.set(utc("2026-11-27T10:10:00Z"));
    assert!(d.check_alerts().await.unwrap().is_empty());
    // An hour after the first: announced again, and the recovery point
    // (no verified backup since 09:59, target 15 min) is now alerted too.
    tick_at(&d, &clock, "2026-11-27T11:00:00Z").await;
    let mut again: Vec<String> = d
        .check_alerts()
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.condition)
        .collect();
    again.sort();
    assert_eq!(again, ["backup-failed:app", "rpo-exceeded:app"]);
    // The database is back; the next backup succeeds: a recovery notice.
    std::fs::rename(s.path("app.db.moved"), s.path("app.db")).unwrap();
    tick_at(&d, &clock, "2026-11-27T11:15:00Z").await;
    let cleared = d.check_alerts().await.unwrap();
    assert_eq!(cleared.len(), 1, "{cleared:?}");
    assert!(!cleared[0].firing);
    let got = got.lock().unwrap().clone();
    let seen: Vec<(String, String)> = got
        .iter()
        .map(|v| {
            (
                v["status"].as_str().unwrap().to_string(),
                v["condition"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("alert".to_string(), "backup-failed:app".to_string()),
            ("alert".to_string(), "backup-failed:app".to_string()),
            ("alert".to_string(), "rpo-exceeded:app".to_string()),
            ("resolved".to_string(), "backup-failed:app".to_string()),
        ]
    );
    assert_eq!(got[0]["kind"], "backup-failed");
    assert_eq!(got[0]["subject"], "app");
    assert_eq!(got[0]["host"], "h");
    assert!(
        got[0]["message"]
            .as_str()
            .unwrap()
            .contains("latest backup of app failed")
    );
}

async fn a_recovery_lock_keeps_a_second_recovery_out_until_released(db: Db) {
    let a = db.store().await;
    // A second store is a second host on PostgreSQL; on SQLite drhost is one host.
    let b = if db.url.starts_with("postgres") {
        db.store().await
    } else {
        a.clone()
    };
    let held = a
        .try_lock("component:shop-db")
        .await
        .unwrap()
        .expect("free at first");
    assert!(b.try_lock("component:shop-db").await.unwrap().is_none());
    let other = b
        .try_lock("component:web")
        .await
        .unwrap()
        .expect("another component is free");
    held.release().await;
    let again = b
        .try_lock("component:shop-db")
        .await
        .unwrap()
        .expect("free after release");
    again.release().await;
    other.release().await;
}

async fn migrations_run_once_and_a_reopened_store_keeps_its_history(db: Db) {
    let a = db.store().await;
    a.ensure_schedule("x", 42).await.unwrap();
    let b = db.store().await;
    assert_eq!(b.schedule("x").await.unwrap().since_ms, 42);
    // A later ensure does not move the start.
    assert_eq!(b.ensure_schedule("x", 99).await.unwrap().since_ms, 42);
}

#[tokio::test]
async fn a_postgres_advisory_lock_dies_with_its_session() {
    let db = Db::postgres().await;
    let a = db.store().await;
    let held = a.try_lock("component:db").await.unwrap().unwrap();
    // Kill the session holding it, as a host's death would.
    let admin = sqlx::PgPool::connect(&db.url).await.unwrap();
    let killed = sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         AND pid <> pg_backend_pid()",
    )
    .fetch_all(&admin)
    .await
    .unwrap();
    assert_eq!(killed.len(), 1, "one session held the lock");
    let b = db.store().await;
    until("the lock to be freed with its session", 10, || async {
        match b.try_lock("component:db").await.unwrap() {
            Some(l) => {
                l.release().await;
                true
            }
            None => false,
        }
    })
    .await;
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_as_prometheus_text_and_health_answers() {
    let db = Db::sqlite();
    let s = Setup::new();
    sqlite_app(&s);
    let clock = Arc::new(ManualClock::new(utc("2026-11-27T09:59:00Z")));
    let d = s.daemon(&db, "", BACKUP_TABLES, &clock, "h").await;
    d.tick().await.unwrap();
    for at in [
        "2026-11-27T10:00:00Z",
        "2026-11-27T10:05:00Z",
        "2026-11-27T10:10:00Z",
    ] {
        tick_at(&d, &clock, at).await;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(drhost::serve::run(d.clone(), listener, async {
        let _ = stop_rx.await;
    }));
    let metrics = http_get(&format!("http://{addr}/metrics")).await;
    assert_eq!(metrics.0, 200);
    let lines = metrics.1.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    let value = |name: &str, label: Option<(&str, &str)>| -> f64 {
        let s = scrape
            .samples
            .iter()
            .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .unwrap_or_else(|| panic!("{name} {label:?} missing:\n{}", metrics.1));
        match s.value {
            prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => panic!("{name}: unexpected type"),
        }
    };
    assert_eq!(value("drhost_up", None), 1.0);
    assert_eq!(
        value("drhost_backup_success_ratio", Some(("source", "app"))),
        1.0
    );
    assert_eq!(
        value("drhost_verification_success_ratio", Some(("source", "app"))),
        1.0
    );
    assert_eq!(value("drhost_backups", Some(("result", "ok"))), 1.0);
    assert!(value("drhost_last_backup_bytes", Some(("source", "app"))) > 0.0);
    assert_eq!(
        value(
            "drhost_recovery_point_target_seconds",
            Some(("source", "app"))
        ),
        900.0
    );
    assert!(value("drhost_recovery_point_seconds", Some(("source", "app"))) >= 0.0);
    assert!(value("drhost_last_recovery_seconds", Some(("component", "app"))) > 0.0);
    assert_eq!(
        value(
            "drhost_recovery_time_target_seconds",
            Some(("component", "app"))
        ),
        900.0
    );
    assert_eq!(value("drhost_test_completion_ratio", None), 1.0);
    assert_eq!(value("drhost_jobs", Some(("schedule", "verify"))), 1.0);
    assert_eq!(value("drhost_capability_denials", None), 0.0);
    let health = http_get(&format!("http://{addr}/health")).await;
    assert_eq!(health.0, 200);
    let h: serde_json::Value = serde_json::from_str(&health.1).unwrap();
    assert_eq!(h["status"], "ok");
    assert_eq!(http_get(&format!("http://{addr}/nothing")).await.0, 404);
    stop_tx.send(()).unwrap();
    let stopped = server.await.unwrap();
    assert!(stopped.interrupted.is_empty());

    // The same history as the plan's table.
    let report = drhost::serve::report::DrReport::build(d.snapshot().await.unwrap(), &d.config);
    let md = report.markdown();
    for row in [
        "| Backup Success Rate | 99.9% | 100.00% | yes |",
        "| Backup Verification Rate | 100% | 100.00% | yes |",
        "| Recovery Time (Database) | < 15.0 min |",
        "| Recovery Time (Application) | < 30.0 min | - | - |",
        "| Test Completion Rate | 100% | 100.00% | yes |",
    ] {
        assert!(md.contains(row), "{row} missing from:\n{md}");
    }
    let html = report.html();
    assert!(
        html.contains("<svg") && html.contains("Backup sizes"),
        "{html}"
    );
}

async fn http_get(url: &str) -> (u16, String) {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let resp = client.get(url.parse().unwrap()).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[test]
fn bad_schedules_are_refused_with_the_reason() {
    let s = Setup::new();
    let db = Db::sqlite();
    let write = |tables: &str| {
        let text = format!(
            "state = \"{}\"\n[keys]\nrecipients = [\"{}\"]\n[sources.app]\nkind = \"sqlite\"\npath = \"a.db\"\n[targets.t]\npath = \"t\"\n{tables}",
            db.url, s.recipient
        );
        std::fs::write(s.path("drhost.toml"), text).unwrap();
        Config::load(&s.path("drhost.toml"))
            .unwrap_err()
            .to_string()
    };
    let e = write("[schedule.x]\ncron = \"0 25 * * *\"\njob = \"prune\"\n");
    assert!(
        e.contains("[schedule.x] cron expression \"0 25 * * *\""),
        "{e}"
    );
    let e = write(
        "[schedule.x]\ncron = \"0 2 * * *\"\njob = \"prune\"\ntimezone = \"Europe/Nowhere\"\n",
    );
    assert!(e.contains("unknown time zone \"Europe/Nowhere\""), "{e}");
    let e = write("[schedule.x]\ncron = \"0 2 * * *\"\njob = \"restore-test\"\nsource = \"app\"\n");
    assert!(e.contains("needs to = \"<scratch source>\""), "{e}");
    let e = write(
        "[schedule.x]\ncron = \"0 2 * * *\"\njob = \"restore-test\"\nsource = \"app\"\nto = \"app\"\n",
    );
    assert!(e.contains("not the source backed up"), "{e}");
    let e = write("[schedule.x]\ncron = \"0 2 * * *\"\njob = \"backup\"\nsource = \"shop\"\n");
    assert!(e.contains("no source \"shop\""), "{e}");
    let e = write(
        "[schedule.x]\ncron = \"0 2 * * *\"\njob = \"backup\"\nsource = \"app\"\nkind = \"differential\"\n",
    );
    assert!(e.contains("unknown backup kind"), "{e}");
    let e = write(
        "[schedule.x]\ncron = \"0 2 * * *\"\njob = \"drill\"\nscenario = \"nowhere/drill.toml\"\n",
    );
    assert!(e.contains("does not exist"), "{e}");
    let e = write("[alerts]\nwebhooks = [\"ftp://x\"]\n");
    assert!(e.contains("only http and https"), "{e}");
}

// ---- several real `drhost serve` processes on one PostgreSQL store ----

struct Serve {
    child: std::process::Child,
}

impl Serve {
    /// Starts `drhost serve` in a process group of its own (a kill takes its
    /// jobs with it, as a machine's death would).
    fn start(dir: &Path, state: &str) -> Serve {
        use std::os::unix::process::CommandExt;
        let log = std::fs::File::create(dir.join(format!("serve-{state}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_drhost"))
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(dir.join("drhost.toml"))
            .env("DRHOST_STATE_DIR", dir.join(state))
            .env("DRHOST_LOG", "info,sqlx=warn")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap();
        Serve { child }
    }

    /// SIGTERM goes to drhost alone (as systemd's KillMode=mixed and
    /// Kubernetes send it); SIGKILL to the whole group, jobs included.
    fn signal(&self, sig: i32) {
        let pid = self.child.id() as i32;
        let target = if sig == libc::SIGKILL { -pid } else { pid };
        // SAFETY: kill(2) on a process (group) we started.
        unsafe { libc::kill(target, sig) };
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
    }
}

/// Polls the store until `done` holds, up to a deadline.
async fn until<F, Fut>(what: &str, secs: u64, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while !done().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn serve_config(dir: &Path, db: &Db, lease: &str, tables: &str) {
    std::fs::write(
        dir.join("drhost.toml"),
        format!(
            "state = \"{}\"\nencryption = \"none\"\n[serve]\nlease = \"{lease}\"\nlate-after = \"30s\"\nshutdown-grace = \"20s\"\n{tables}",
            db.url
        ),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_serve_processes_run_each_occurrence_exactly_once() {
    let db = Db::postgres().await;
    let dir = tempfile::tempdir().unwrap();
    let marks = dir.path().join("marks");
    let tables = command_schedule(
        "tick",
        "* * * * * *",
        &format!("echo \"$DRHOST_JOB_ID\" >> {}", marks.display()),
        "",
    );
    serve_config(dir.path(), &db, "5s", &tables);
    let hosts: Vec<Serve> = ["a", "b", "c"]
        .iter()
        .map(|h| Serve::start(dir.path(), h))
        .collect();
    let store = db.store().await;
    until("12 succeeded runs", 60, || async {
        store
            .jobs_since(0)
            .await
            .unwrap()
            .iter()
            .filter(|j| j.status == "succeeded")
            .count()
            >= 12
    })
    .await;
    for h in &hosts {
        h.signal(libc::SIGTERM);
    }
    for mut h in hosts {
        let status = h.child.wait().unwrap();
        assert!(status.success(), "serve exits 0 after SIGTERM: {status}");
    }
    let jobs = store.jobs_since(0).await.unwrap();
    let ran: Vec<&str> = jobs
        .iter()
        .filter(|j| j.status == "succeeded")
        .map(|j| j.id.as_str())
        .collect();
    let text = std::fs::read_to_string(&marks).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    let total = lines.len();
    lines.sort();
    lines.dedup();
    assert_eq!(lines.len(), total, "an occurrence ran twice:\n{text}");
    let mut ran_sorted = ran.clone();
    ran_sorted.sort();
    assert_eq!(lines, ran_sorted, "the file and the state store agree");
    let owners: std::collections::BTreeMap<String, usize> = jobs
        .iter()
        .filter_map(|j| j.owner.clone())
        .fold(Default::default(), |mut m, o| {
            *m.entry(o).or_default() += 1;
            m
        });
    eprintln!("runs per host: {owners:?}");
    assert!(
        jobs.iter().all(|j| j.status != "running"),
        "nothing left running: {jobs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_serve_process_loses_its_job_to_another_within_the_lease() {
    let db = Db::postgres().await;
    let dir = tempfile::tempdir().unwrap();
    // The first attempt hangs (and would hang forever); a second attempt finishes.
    let script = "if [ \"$DRHOST_ATTEMPT\" = 1 ]; then exec sleep 600; fi; echo done";
    // Every second; the hanging run holds the schedule, so one job matters.
    let tables = command_schedule("job", "* * * * * *", script, "");
    serve_config(dir.path(), &db, "3s", &tables);
    let store = db.store().await;
    let first = Serve::start(dir.path(), "first");
    until("the first host to claim a run", 30, || async {
        store
            .schedule("job")
            .await
            .is_ok_and(|r| r.running_due_ms.is_some())
    })
    .await;
    // The first attempt hangs, so the claim stays as it is.
    let claimed = store.schedule("job").await.unwrap();
    let due = claimed.running_due_ms.unwrap();
    let second = Serve::start(dir.path(), "second");
    // The second host cannot run the schedule while the first holds it.
    first.signal(libc::SIGKILL);
    let killed = std::time::Instant::now();
    let id = job_id("job", due);
    until("the job taken over and finished", 30, || {
        let store = &store;
        let id = &id;
        async move {
            store
                .job(id)
                .await
                .unwrap()
                .is_some_and(|j| j.status == "succeeded")
        }
    })
    .await;
    let takeover = killed.elapsed();
    let j = store.job(&id).await.unwrap().unwrap();
    assert_eq!(j.attempts, 2);
    assert_ne!(j.owner, claimed.owner, "another host finished it");
    assert!(j.detail.contains("done"), "{}", j.detail);
    // The lease is 3 s: the takeover cannot come before it ran out, and
    // comes within a couple of looks after.
    assert!(takeover <= Duration::from_secs(10), "took {takeover:?}");
    eprintln!("takeover after SIGKILL: {takeover:?} (lease 3 s)");
    drop(second);
    drop(first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_running_job_finish_before_serve_exits() {
    let db = Db::sqlite();
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate");
    let script = format!(
        "touch {g}.started; while [ ! -e {g} ]; do sleep 0.02; done; echo finished",
        g = gate.display()
    );
    let tables = command_schedule("job", "* * * * * *", &script, "");
    serve_config(dir.path(), &db, "5s", &tables);
    let mut serve = Serve::start(dir.path(), "s");
    let started = dir.path().join("gate.started");
    until("the job to start", 30, || {
        let started = started.clone();
        async move { started.exists() }
    })
    .await;
    serve.signal(libc::SIGTERM);
    // It is still running its job: serve has not exited.
    assert!(serve.child.try_wait().unwrap().is_none());
    std::fs::write(&gate, "").unwrap();
    let status = serve.child.wait().unwrap();
    assert!(status.success());
    let store = db.store().await;
    let jobs = store.jobs_since(0).await.unwrap();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0].status, "succeeded");
    assert!(jobs[0].detail.contains("finished"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_drill_records_its_plugin_run_and_recovery_times() {
    let db = Db::sqlite();
    let s = Setup::new();
    let drill = s.path("storage");
    std::fs::create_dir_all(&drill).unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart");
    std::fs::copy(
        example.join("storage-failover.drill.policy.toml"),
        drill.join("drill.policy.toml"),
    )
    .unwrap();
    std::fs::write(
        drill.join("drill.toml"),
        format!(
            "plugin = {}\npolicy = \"drill.policy.toml\"\n",
            toml_str(
                &common::plugin_path("storage-failover")
                    .display()
                    .to_string()
            )
        ),
    )
    .unwrap();
    let tables = "[schedule.quarterly-drill]\ncron = \"0 10 1 1,4,7,10 *\"\njob = \"drill\"\n\
        scenario = \"storage/drill.toml\"\nalert-if-not-run-within = \"92d\"\n";
    let clock = Arc::new(ManualClock::new(utc("2026-12-31T12:00:00Z")));
    let d = s.daemon(&db, "", tables, &clock, "h").await;
    d.tick().await.unwrap();
    clock.set(utc("2027-01-01T10:00:00Z"));
    assert_eq!(
        d.tick().await.unwrap().started,
        ["quarterly-drill@2027-01-01T10:00:00Z"]
    );
    d.scheduler.wait_idle().await;
    let j = d
        .store
        .job("quarterly-drill@2027-01-01T10:00:00Z")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(j.status, "succeeded", "{}", j.detail);
    let runs = d.store.plugin_runs_since(0).await.unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(
        (runs[0].scenario.as_str(), runs[0].denied),
        ("storage-failover", 0)
    );
    assert!(
        Path::new(&runs[0].audit_log).is_file(),
        "the run's audit log is kept"
    );
    let rec = d.store.recoveries_since(0).await.unwrap();
    assert!(
        !rec.is_empty() && rec.iter().all(|r| r.test == "drill" && r.ok),
        "{rec:?}"
    );
    assert!(rec.iter().any(|r| r.component_kind == "storage"), "{rec:?}");
    let snap = d.snapshot().await.unwrap();
    assert_eq!((snap.tests_succeeded, snap.tests_due), (1, 1));
    // The test window is 92 days: no alert now, one 93 days on.
    assert!(d.check_alerts().await.unwrap().is_empty());
    clock.set(utc("2027-04-03T12:00:00Z"));
    let late: Vec<String> = d
        .check_alerts()
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.condition)
        .collect();
    assert_eq!(late, ["test-not-run:quarterly-drill"]);
}

#[test]
fn the_kubernetes_example_holds_a_valid_configuration() {
    let yaml = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/deploy/kubernetes/serve.yaml"),
    )
    .unwrap();
    let start = yaml.find("drhost.toml: |\n").unwrap() + "drhost.toml: |\n".len();
    let toml: String = yaml[start..]
        .lines()
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    let c = Config::parse(&toml, Path::new(".")).unwrap();
    assert_eq!(c.schedule["incremental"].cron, "*/15 * * * *");
    assert_eq!(c.schedule.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_backups_and_verifications_are_recorded_when_a_state_store_is_set() {
    let db = Db::sqlite();
    let s = Setup::new();
    sqlite_app(&s);
    s.config(
        &db,
        "",
        "[sources.app]\nkind = \"sqlite\"\npath = \"app.db\"\n[targets.primary]\npath = \"primary\"\n",
    );
    for args in [&["create", "app"][..], &["verify", "latest"][..]] {
        let out = Command::new(env!("CARGO_BIN_EXE_drhost"))
            .arg("backup")
            .arg("--config")
            .arg(s.path("drhost.toml"))
            .args(args)
            .env("DRHOST_STATE_DIR", s.path("state"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let store = db.store().await;
    let b = store.backups_since(0).await.unwrap();
    assert_eq!(b.len(), 1);
    assert!(b[0].ok && b[0].job_id.starts_with("manual:"), "{b:?}");
    let v = store.verifications_since(0).await.unwrap();
    assert_eq!(v.len(), 1);
    assert!(v[0].ok && v[0].backup_id == *b[0].backup_id.as_ref().unwrap());
    assert_eq!(store.newest_verified("app").await.unwrap(), b[0].covers_ms);

    // `drhost report` reads the same store.
    let report = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_drhost"))
            .arg("report")
            .arg("--config")
            .arg(s.path("drhost.toml"))
            .args(args)
            .env("DRHOST_STATE_DIR", s.path("state"))
            .output()
            .unwrap()
    };
    let out = report(&["--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 6, "the plan's six metrics");
    assert_eq!(rows[0]["metric"], "Backup Success Rate");
    assert_eq!(rows[0]["actual"], "100.00%");
    assert_eq!(
        rows[1]["basis"],
        "1 of 1 verifications (11-point checklist) passed"
    );
    let out = report(&["--html", "--out", s.path("report.html").to_str().unwrap()]);
    assert!(out.status.success());
    let html = std::fs::read_to_string(s.path("report.html")).unwrap();
    assert!(html.contains("<h1>Disaster Recovery Metrics</h1>"));
    // A failed backup makes the success rate miss its target: exit 3.
    std::fs::remove_file(s.path("app.db")).unwrap();
    let failed = Command::new(env!("CARGO_BIN_EXE_drhost"))
        .args(["backup", "--config"])
        .arg(s.path("drhost.toml"))
        .args(["create", "app"])
        .env("DRHOST_STATE_DIR", s.path("state"))
        .output()
        .unwrap();
    assert!(!failed.status.success());
    let out = report(&[]);
    assert_eq!(out.status.code(), Some(3));
    let md = String::from_utf8_lossy(&out.stdout);
    assert!(
        md.contains("| Backup Success Rate | 99.9% | 50.00% | **NO** | 1 of 2 backups succeeded |"),
        "{md}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drhost_run_will_not_recover_a_component_another_host_is_recovering() {
    let db = Db::postgres().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("drhost.toml"),
        format!("state = \"{}\"\nencryption = \"none\"\n", db.url),
    )
    .unwrap();
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_drhost"))
            .arg("run")
            .arg(common::plugin_path("hello"))
            .arg("--config")
            .arg(dir.path().join("drhost.toml"))
            .arg("--out")
            .arg(dir.path().join("runs"))
            .env("DRHOST_STATE_DIR", dir.path().join("state"))
            .output()
            .unwrap()
    };
    // Another host holds the hello scenario's component, "nothing".
    let other = db.store().await;
    let held = other.try_lock("component:nothing").await.unwrap().unwrap();
    let out = run();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("another recovery holds the lock on component:nothing"),
        "{err}"
    );
    held.release().await;
    let out = run();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // And the run let go of it.
    let again = other.try_lock("component:nothing").await.unwrap();
    assert!(again.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_still_running_after_the_shutdown_grace_is_interrupted_and_run_again() {
    let db = Db::sqlite();
    let s = Setup::new();
    let gate = s.path("gate");
    let script = format!(
        "touch {g}.started; while [ ! -e {g} ]; do sleep 0.02; done; echo \"attempt $DRHOST_ATTEMPT\"",
        g = gate.display()
    );
    let tables = command_schedule("job", "0 * * * *", &script, "");
    let top = "[serve]\nshutdown-grace = \"200ms\"\nlisten = \"127.0.0.1:0\"\n";
    let clock = Arc::new(ManualClock::new(utc("2026-11-27T09:59:00Z")));
    let store = db.store().await;
    let d = s
        .daemon_on(s.config(&db, top, &tables), store.clone(), &clock, "first")
        .await;
    d.tick().await.unwrap();
    clock.set(utc("2026-11-27T10:00:00Z"));
    let started = s.path("gate.started");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stopped = drhost::serve::run(d.clone(), listener, async {
        until("the job to start", 30, || {
            let started = started.clone();
            async move { started.exists() }
        })
        .await;
    })
    .await;
    assert_eq!(stopped.interrupted, ["job@2026-11-27T10:00:00Z"]);
    let j = store
        .job("job@2026-11-27T10:00:00Z")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(j.status, "interrupted", "{}", j.detail);
    // Its lease is expired at once: the next host to look runs it again.
    let row = store.schedule("job").await.unwrap();
    assert_eq!(row.lease_until_ms, Some(0));
    std::fs::write(&gate, "").unwrap();
    let next = s
        .daemon_on(s.config(&db, top, &tables), store.clone(), &clock, "second")
        .await;
    assert_eq!(
        next.tick().await.unwrap().taken_over,
        ["job@2026-11-27T10:00:00Z"]
    );
    next.scheduler.wait_idle().await;
    let j = store
        .job("job@2026-11-27T10:00:00Z")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((j.status.as_str(), j.attempts), ("succeeded", 2));
    assert!(j.detail.contains("attempt 2"), "{}", j.detail);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_backup_fails_its_verification_and_raises_an_alert() {
    let db = Db::sqlite();
    let s = Setup::new();
    sqlite_app(&s);
    let (url, got) = webhook_sink().await;
    let top = format!("[alerts]\nwebhooks = [\"{url}\"]\n");
    let tables = "[sources.app]\nkind = \"sqlite\"\npath = \"app.db\"\n\
        [targets.primary]\npath = \"primary\"\n\
        [schedule.backup]\ncron = \"0 * * * *\"\njob = \"backup\"\nsource = \"app\"\n\
        [schedule.verify]\ncron = \"30 * * * *\"\njob = \"verify\"\nsource = \"app\"\n";
    let clock = Arc::new(ManualClock::new(utc("2026-11-27T09:59:00Z")));
    let d = s.daemon(&db, &top, tables, &clock, "h").await;
    d.tick().await.unwrap();
    tick_at(&d, &clock, "2026-11-27T10:00:00Z").await;
    // Flip one byte of the stored object (bit rot, or tampering).
    let object = walk(&s.path("primary"))
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with(".age"))
        .expect("the backup's object");
    let mut bytes = std::fs::read(&object).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&object, bytes).unwrap();
    tick_at(&d, &clock, "2026-11-27T10:30:00Z").await;
    let j = d
        .store
        .job("verify@2026-11-27T10:30:00Z")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(j.status, "failed");
    assert!(j.detail.contains("downloadable"), "{}", j.detail);
    let sent: Vec<String> = d
        .check_alerts()
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.condition)
        .collect();
    // No backup has passed a verification for 31 minutes: the recovery
    // point (15 min target) is exceeded too.
    assert_eq!(sent, ["verification-failed:app", "rpo-exceeded:app"]);
    let got = got.lock().unwrap().clone();
    let failed = got
        .iter()
        .find(|n| n["condition"] == "verification-failed:app")
        .unwrap();
    assert!(
        failed["message"].as_str().unwrap().contains("downloadable"),
        "{failed}"
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A credential the file names but the host lacks stops `drhost serve` at
/// start (exit 2, naming it), not at the first job that needs it.
#[test]
fn serve_refuses_to_start_without_a_named_secret_or_the_identity_file() {
    let dir = tempfile::tempdir().unwrap();
    let age_key = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";
    for (config, named) in [
        (
            "[sources.shop]\nkind = \"mariadb\"\nurl = \"env:DRHOST_TEST_SURELY_UNSET_SHOP\"\n"
                .to_string(),
            "[sources.shop] url: environment variable DRHOST_TEST_SURELY_UNSET_SHOP is not set",
        ),
        (
            "[keys]\nidentity = \"missing-identity.txt\"\n".to_string(),
            "[keys] identity",
        ),
    ] {
        let text = format!(
            "[keys]\nrecipients = [\"{age_key}\"]\n{}[targets.local]\npath = \"b\"\n",
            config.replace("[keys]\n", "")
        );
        std::fs::write(dir.path().join("drhost.toml"), text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_drhost"))
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(dir.path().join("drhost.toml"))
            .env("DRHOST_STATE_DIR", dir.path().join("state"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(named), "{err}");
    }
}
