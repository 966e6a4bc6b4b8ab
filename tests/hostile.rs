//! The sandbox against a hostile plugin (`plugins/hostile`), through the
//! command line as an operator would run it: `inspect`, `run`, `run --plan`,
//! `run --phase`, `test`. Each test checks what the plugin could have
//! changed on disk, in the real databases, in a bucket, on an HTTP server and
//! in the audit log; none of it may change where the mode forbids it.

mod common;

use common::*;
use sqlx::Connection;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::sync::Arc;

fn drhost() -> Command {
    Command::new(env!("CARGO_BIN_EXE_drhost"))
}

#[derive(Clone, Copy, Debug)]
enum Engine {
    MariaDb,
    Postgres,
    Sqlite,
}

/// Runs set-up statements as the administrator, on any of the three engines.
async fn run_sql(url: &str, sql: &[&str]) {
    sqlx::any::install_default_drivers();
    let mut c = sqlx::AnyConnection::connect(url).await.unwrap();
    for s in sql {
        sqlx::raw_sql(sqlx::AssertSqlSafe(s.to_string()))
            .execute(&mut c)
            .await
            .unwrap_or_else(|e| panic!("{s}: {e}"));
    }
}

/// A database holding the table, sequence, function and procedure the
/// hostile plugin aims at, and a fingerprint of everything in it.
struct Db {
    engine: Engine,
    url: String,
    /// Servers only: an account that may only read the database (the
    /// policies' `read-url`).
    read_url: Option<String>,
}

impl Db {
    async fn new(engine: Engine, dir: &Path) -> Db {
        let name = format!("drhost_bk_hostile_{}", unique().replace('-', "_"));
        let create = format!("CREATE DATABASE {name}");
        let url = match engine {
            Engine::MariaDb => {
                run_sql(&mariadb_url(), &[&create]).await;
                mariadb_url().replace("/test", &format!("/{name}"))
            }
            Engine::Postgres => {
                run_sql(&postgres_url(), &[&create]).await;
                postgres_url().replace("/test", &format!("/{name}"))
            }
            Engine::Sqlite => format!("sqlite://{}?mode=rwc", dir.join("app.db").display()),
        };
        let fixture: &[&str] = match engine {
            Engine::MariaDb => &[
                "CREATE TABLE t (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(40))",
                "INSERT INTO t(v) VALUES ('one'), ('two'), ('three')",
                "CREATE SEQUENCE s",
                "CREATE FUNCTION f_evil() RETURNS INT MODIFIES SQL DATA BEGIN INSERT INTO t(v) VALUES ('f'); RETURN 1; END",
                "CREATE PROCEDURE p_evil() BEGIN SET SESSION TRANSACTION READ WRITE; COMMIT; INSERT INTO t(v) VALUES ('p'); END",
            ],
            Engine::Postgres => &[
                "CREATE TABLE t (id SERIAL PRIMARY KEY, v TEXT)",
                "INSERT INTO t(v) VALUES ('one'), ('two'), ('three')",
                "CREATE SEQUENCE s",
                "CREATE FUNCTION f_evil() RETURNS int LANGUAGE plpgsql AS $$ BEGIN INSERT INTO t(v) VALUES ('f'); RETURN 1; END $$",
                "CREATE PROCEDURE p_evil() LANGUAGE plpgsql AS $$ BEGIN INSERT INTO t(v) VALUES ('p'); COMMIT; END $$",
            ],
            Engine::Sqlite => &[
                "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)",
                "INSERT INTO t(v) VALUES ('one'), ('two'), ('three')",
            ],
        };
        run_sql(&url, fixture).await;
        let read_url = match engine {
            Engine::MariaDb => {
                run_sql(
                    &url,
                    &[
                        "CREATE USER IF NOT EXISTS 'drhost_hostile_ro'@'%' IDENTIFIED BY 'ro-secret'",
                        "CREATE USER IF NOT EXISTS 'drhost_hostile_ro'@'localhost' IDENTIFIED BY 'ro-secret'",
                        &format!("GRANT SELECT ON {name}.* TO 'drhost_hostile_ro'@'%'"),
                        &format!("GRANT SELECT ON {name}.* TO 'drhost_hostile_ro'@'localhost'"),
                    ],
                )
                .await;
                Some(url.replacen("root@", "drhost_hostile_ro:ro-secret@", 1))
            }
            Engine::Postgres => {
                // A role that can only read: no TEMP, no large objects.
                run_sql(
                    &url,
                    &[
                        "DO $$ BEGIN CREATE ROLE drhost_hostile_ro LOGIN; \
                         EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$",
                        &format!("REVOKE TEMP ON DATABASE {name} FROM PUBLIC"),
                        "REVOKE CREATE ON SCHEMA public FROM PUBLIC",
                        "REVOKE EXECUTE ON FUNCTION lo_from_bytea(oid, bytea), lo_create(oid), lo_creat(integer), \
                         lo_put(oid, bigint, bytea), lo_import(text), lo_import(text, oid), lo_unlink(oid), \
                         lowrite(integer, bytea), lo_truncate(integer, integer), lo_truncate64(integer, bigint), \
                         pg_logical_emit_message(boolean, text, text), pg_logical_emit_message(boolean, text, bytea) FROM PUBLIC",
                        &format!("GRANT CONNECT ON DATABASE {name} TO drhost_hostile_ro"),
                        "GRANT USAGE ON SCHEMA public TO drhost_hostile_ro",
                        "GRANT SELECT ON t TO drhost_hostile_ro",
                    ],
                )
                .await;
                let user = url.split("://").nth(1).and_then(|r| r.split('@').next());
                Some(match user {
                    Some(u) => url.replacen(&format!("{u}@"), "drhost_hostile_ro@", 1),
                    None => unreachable!("{url} names no user"),
                })
            }
            Engine::Sqlite => None,
        };
        Db {
            engine,
            url,
            read_url,
        }
    }

    /// The `[db.main]` table of a read-write grant, with `read-url` on servers.
    fn grant(&self) -> String {
        let mut g = format!(
            "[db.main]\nurl = \"{}\"\naccess = \"read-write\"\n",
            self.url
        );
        if let Some(r) = &self.read_url {
            g.push_str(&format!("read-url = \"{r}\"\n"));
        }
        g
    }

    /// Every row of `t`, the tables, and the sequence's position.
    async fn fingerprint(&self) -> String {
        match self.engine {
            Engine::MariaDb => {
                let mut c = sqlx::MySqlConnection::connect(&self.url).await.unwrap();
                let rows: Vec<(i32, String)> = sqlx::query_as("SELECT id, v FROM t ORDER BY id")
                    .fetch_all(&mut c)
                    .await
                    .unwrap_or_default();
                let tables: Vec<String> = sqlx::query_scalar(
                    "SELECT CAST(table_name AS CHAR) FROM information_schema.tables WHERE table_schema = DATABASE() ORDER BY 1",
                )
                .fetch_all(&mut c)
                .await
                .unwrap();
                let cols: Vec<String> = sqlx::query_scalar(
                    "SELECT CAST(column_name AS CHAR) FROM information_schema.columns WHERE table_schema = DATABASE() ORDER BY 1",
                )
                .fetch_all(&mut c)
                .await
                .unwrap();
                let seq: Option<i64> = sqlx::query_scalar("SELECT next_not_cached_value FROM s")
                    .fetch_optional(&mut c)
                    .await
                    .unwrap_or(None);
                format!("{rows:?} {tables:?} {cols:?} seq={seq:?}")
            }
            Engine::Postgres => {
                let mut c = sqlx::PgConnection::connect(&self.url).await.unwrap();
                let rows: Vec<(i32, String)> = sqlx::query_as("SELECT id, v FROM t ORDER BY id")
                    .fetch_all(&mut c)
                    .await
                    .unwrap_or_default();
                let tables: Vec<String> = sqlx::query_scalar(
                    "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
                )
                .fetch_all(&mut c)
                .await
                .unwrap();
                let cols: Vec<String> = sqlx::query_scalar(
                    "SELECT column_name::text FROM information_schema.columns WHERE table_schema = 'public' ORDER BY 1",
                )
                .fetch_all(&mut c)
                .await
                .unwrap();
                let seq: (i64, bool) = sqlx::query_as("SELECT last_value, is_called FROM s")
                    .fetch_one(&mut c)
                    .await
                    .unwrap();
                format!("{rows:?} {tables:?} {cols:?} seq={seq:?}")
            }
            Engine::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
                let rows: Vec<(i64, String)> = sqlx::query_as("SELECT id, v FROM t ORDER BY id")
                    .fetch_all(&mut c)
                    .await
                    .unwrap_or_default();
                let schema: Vec<String> =
                    sqlx::query_scalar("SELECT sql FROM sqlite_master ORDER BY name")
                        .fetch_all(&mut c)
                        .await
                        .unwrap();
                format!("{rows:?} {schema:?}")
            }
        }
    }
}

/// Every request an HTTP sink received: method and path.
type Requests = Arc<std::sync::Mutex<Vec<(String, String)>>>;

/// An HTTP server that answers 200 and records each request's method and
/// path. It runs on a thread of its own: some tests wait for `drhost`
/// synchronously.
fn http_sink() -> (u16, Requests) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let port = std_listener.local_addr().unwrap().port();
    let requests: Requests = Arc::default();
    let seen = Arc::clone(&requests);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
            while let Ok((mut sock, _)) = listener.accept().await {
                let seen = Arc::clone(&seen);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let n = sock.read(&mut buf).await.unwrap_or(0);
                    let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let mut words = head.split_whitespace();
                    if let (Some(method), Some(path)) = (words.next(), words.next()) {
                        seen.lock().unwrap().push((method.into(), path.into()));
                    }
                    let _ = sock
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                        )
                        .await;
                });
            }
        });
    });
    (port, requests)
}

/// One attack's surroundings: a bucket with `keep.txt`, a database, an HTTP
/// sink, a granted `touch`, and the hostile plugin's settings in its store.
struct Scene {
    dir: tempfile::TempDir,
    db: Db,
    url: String,
    requests: Requests,
    attach: PathBuf,
    /// Where a database server could write files (a world-writable folder).
    server_file: String,
    /// PostgreSQL: a session a plugin might try to terminate.
    victim: tokio::sync::Mutex<Option<sqlx::PgConnection>>,
}

impl Scene {
    async fn new(engine: Engine) -> Scene {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("bucket")).unwrap();
        std::fs::write(dir.path().join("bucket/keep.txt"), "precious").unwrap();
        let db = Db::new(engine, dir.path()).await;
        let (port, requests) = http_sink();
        let url = format!("http://127.0.0.1:{port}/hook");
        let attach = dir.path().join("attached.db");
        let server_file = format!("/tmp/drhost-hostile-{}", unique());
        let victim = match engine {
            Engine::Postgres => {
                let opts = sqlx::postgres::PgConnectOptions::from_str(&postgres_url())
                    .unwrap()
                    .application_name("drhost-victim");
                Some(sqlx::PgConnection::connect_with(&opts).await.unwrap())
            }
            _ => None,
        };
        let s = Scene {
            dir,
            db,
            url,
            requests,
            attach,
            server_file,
            victim: tokio::sync::Mutex::new(victim),
        };
        let store =
            drhost::caps::state::StateCap::load(&s.path("state"), "hostile", 1 << 20).unwrap();
        store.set("url", s.url.clone().into_bytes()).unwrap();
        store
            .set("attach", s.attach.display().to_string().into_bytes())
            .unwrap();
        store
            .set("server-file", s.server_file.clone().into_bytes())
            .unwrap();
        store.persist().unwrap();
        s
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// Read-write grants on everything the plugin aims at.
    fn policy(&self, extra: &str) -> PathBuf {
        let p = self.path("hostile.policy.toml");
        std::fs::write(
            &p,
            format!(
                "[plugin]\nscenario = \"hostile\"\n\n\
                 [s3.primary]\npath = \"bucket\"\naccess = [\"read\", \"list\", \"write\", \"delete\"]\n\n\
                 {}\n\
                 [http]\nallow = [\"{}\"]\n\n\
                 [exec.touch]\nprogram = \"/usr/bin/touch\"\nargs = [\"*\"]\n\n{extra}",
                self.db.grant(), self.url
            ),
        )
        .unwrap();
        p
    }

    fn drhost(&self, args: &[&str]) -> std::process::Output {
        drhost()
            .arg("--state-dir")
            .arg(self.path("state"))
            .args(args)
            .output()
            .unwrap()
    }

    fn run(&self, extra_args: &[&str], policy: &Path) -> (serde_json::Value, i32) {
        let mut args = vec!["run", "--json", "--out"];
        let runs = self.path("runs");
        args.push(runs.to_str().unwrap());
        args.extend_from_slice(&["--policy", policy.to_str().unwrap()]);
        args.extend_from_slice(extra_args);
        let wasm = plugin_path("hostile");
        args.push(wasm.to_str().unwrap());
        let out = self.drhost(&args);
        let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{e}: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (report, out.status.code().unwrap_or(-1))
    }

    /// What nothing may have changed: the bucket, the marker, the sink, the
    /// attached file.
    fn assert_untouched_outside_the_database(&self) {
        let mut names: Vec<String> = std::fs::read_dir(self.path("bucket"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["keep.txt"], "the bucket changed");
        assert_eq!(
            std::fs::read_to_string(self.path("bucket/keep.txt")).unwrap(),
            "precious"
        );
        assert!(
            !self.path("hostile-marker").exists(),
            "exec.touch ran: the marker exists"
        );
        let requests = self.requests.lock().unwrap().clone();
        assert!(
            requests.iter().all(|(method, _)| method == "GET"),
            "a mutating HTTP request reached the sink: {requests:?}"
        );
        assert!(
            !self.attach.exists(),
            "ATTACH or VACUUM INTO created a file"
        );
    }

    /// Nothing the `server-writes` statements aim at changed: no server
    /// file, no global setting, the victim session alive.
    async fn assert_server_untouched(&self) {
        for ext in ["copy", "program", "outfile"] {
            let f = format!("{}.{ext}", self.server_file);
            assert!(!Path::new(&f).exists(), "the database server wrote {f}");
        }
        match self.db.engine {
            Engine::MariaDb => {
                let mut c = sqlx::MySqlConnection::connect(&self.db.url).await.unwrap();
                let n: u64 = sqlx::query_scalar("SELECT @@GLOBAL.max_connections")
                    .fetch_one(&mut c)
                    .await
                    .unwrap();
                assert_ne!(n, 4321, "SET GLOBAL reached the server");
            }
            Engine::Postgres => {
                let mut v = self.victim.lock().await;
                let c = v.as_mut().unwrap();
                let alive: Result<i32, _> = sqlx::query_scalar("SELECT 1").fetch_one(c).await;
                assert!(alive.is_ok(), "the victim session was terminated");
            }
            Engine::Sqlite => {}
        }
    }
}

fn audit_of(report: &serde_json::Value) -> Vec<serde_json::Value> {
    drhost::audit::read(Path::new(report["audit_log"].as_str().unwrap()))
        .unwrap()
        .into_iter()
        .map(|l| serde_json::Value::Object(l.record))
        .collect()
}

fn calls<'a>(log: &'a [serde_json::Value], step: &str) -> Vec<&'a serde_json::Value> {
    log.iter()
        .filter(|r| r["type"] == "call" && r["step"] == step)
        .collect()
}

/// Statements that succeed in a read-only transaction and change nothing:
/// session settings that drhost sets again before every statement, and a
/// `COMMIT` of the empty read-only transaction. The fingerprints show that
/// nothing changed; the rest must not even succeed.
fn harmless(sql: &str) -> bool {
    sql == "COMMIT" || sql.starts_with("SET SESSION")
}

fn writes_through(report: &serde_json::Value, step: &str) -> Vec<String> {
    through(report, step)
        .into_iter()
        .filter(|s| !harmless(s))
        .collect()
}

fn through(report: &serde_json::Value, step: &str) -> Vec<String> {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["id"] == step)
        .flat_map(|s| s["findings"].as_array().unwrap().clone())
        .filter(|f| f[0] == "through")
        .map(|f| f[1].as_str().unwrap().to_string())
        .collect()
}

// ---- info() ---------------------------------------------------------------

#[tokio::test]
async fn inspect_never_lets_info_act_with_the_policys_grants() {
    let s = Scene::new(Engine::Sqlite).await;
    let before = s.db.fingerprint().await;
    let policy = s.policy("");
    let wasm = plugin_path("hostile");
    let out = s.drhost(&[
        "inspect",
        "--policy",
        policy.to_str().unwrap(),
        wasm.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("info() attempted"), "{text}");
    s.assert_untouched_outside_the_database();
    assert_eq!(s.db.fingerprint().await, before);
}

#[tokio::test]
async fn info_in_a_run_is_denied_everything_and_every_attempt_is_audited() {
    let s = Scene::new(Engine::Sqlite).await;
    let before = s.db.fingerprint().await;
    let policy = s.policy("");
    // No contain steps: only info() runs.
    let (report, _) = s.run(&["--phase", "contain"], &policy);
    let log = audit_of(&report);
    let info = calls(&log, "info");
    // s3 put/delete/copy, db.execute, exec, http, backup, state.set, s3.get, db.query, backup.list
    assert!(info.len() >= 10, "{info:#?}");
    assert!(info.iter().all(|r| r["decision"] == "deny"), "{info:#?}");
    assert!(
        info.iter()
            .all(|r| r["grant"] == "none: info() runs without capabilities")
    );
    assert!(report["denied"].as_u64().unwrap() >= info.len() as u64);
    s.assert_untouched_outside_the_database();
    assert_eq!(s.db.fingerprint().await, before);
    // The state write in info() did not land.
    let store = drhost::caps::state::StateCap::load(&s.path("state"), "hostile", 1 << 20).unwrap();
    assert_eq!(store.get("hijacked-by-info"), None);
    let out = s.drhost(&["audit", "verify", report["audit_log"].as_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
}

// ---- steps declared not mutating --------------------------------------------

async fn a_step_declared_not_mutating_changes_nothing(engine: Engine) {
    let s = Scene::new(engine).await;
    let before = s.db.fingerprint().await;
    let policy = s.policy("");
    let (report, _) = s.run(&["--phase", "detect"], &policy);
    assert_eq!(
        through(&report, "sneak"),
        Vec::<String>::new(),
        "{report:#}"
    );
    assert_eq!(
        writes_through(&report, "query-writes"),
        Vec::<String>::new(),
        "{report:#}"
    );
    s.assert_untouched_outside_the_database();
    assert_eq!(s.db.fingerprint().await, before, "{engine:?}");
    let log = audit_of(&report);
    let refused: Vec<_> = calls(&log, "sneak")
        .into_iter()
        .filter(|r| r["mutating"] == true)
        .collect();
    assert!(!refused.is_empty());
    for r in &refused {
        assert_eq!(r["decision"], "deny", "{r}");
        assert!(
            r["grant"].as_str().unwrap() == "step sneak declared mutating: true"
                || r["grant"].as_str().unwrap().starts_with("backup."),
            "{r}"
        );
    }
}

#[tokio::test]
async fn a_step_declared_not_mutating_changes_nothing_on_mariadb() {
    a_step_declared_not_mutating_changes_nothing(Engine::MariaDb).await;
}

#[tokio::test]
async fn a_step_declared_not_mutating_changes_nothing_on_postgres() {
    a_step_declared_not_mutating_changes_nothing(Engine::Postgres).await;
}

#[tokio::test]
async fn a_step_declared_not_mutating_changes_nothing_on_sqlite() {
    a_step_declared_not_mutating_changes_nothing(Engine::Sqlite).await;
}

// ---- plan mode ----------------------------------------------------------------

async fn a_plan_changes_nothing(engine: Engine) {
    let s = Scene::new(engine).await;
    let before = s.db.fingerprint().await;
    let policy = s.policy("");
    let (report, _) = s.run(&["--plan"], &policy);
    // The recover steps ran (the detect steps report something)…
    assert!(
        report["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|st| st["id"] == "writes"),
        "{report:#}"
    );
    // …and nothing got through, not even writes sent as queries.
    for step in ["sneak", "query-writes", "writes", "query-writes-mutating"] {
        assert_eq!(
            writes_through(&report, step),
            Vec::<String>::new(),
            "{step}: {report:#}"
        );
    }
    s.assert_untouched_outside_the_database();
    s.assert_server_untouched().await;
    assert_eq!(through(&report, "server-writes"), Vec::<String>::new());
    assert_eq!(s.db.fingerprint().await, before, "{engine:?}");
    // The declared mutations are on record as planned.
    let log = audit_of(&report);
    let planned = calls(&log, "writes")
        .into_iter()
        .filter(|r| r["decision"] == "plan")
        .count();
    assert!(planned >= 4, "{log:#?}");
    // The store was not written back.
    let store = drhost::caps::state::StateCap::load(&s.path("state"), "hostile", 1 << 20).unwrap();
    assert_eq!(store.get("hijacked-by-info"), None);
}

#[tokio::test]
async fn a_plan_changes_nothing_on_mariadb() {
    a_plan_changes_nothing(Engine::MariaDb).await;
}

#[tokio::test]
async fn a_plan_changes_nothing_on_postgres() {
    a_plan_changes_nothing(Engine::Postgres).await;
}

#[tokio::test]
async fn a_plan_changes_nothing_on_sqlite() {
    a_plan_changes_nothing(Engine::Sqlite).await;
}

// ---- drhost test -----------------------------------------------------------

async fn drhost_test_changes_nothing(engine: Engine) {
    let s = Scene::new(engine).await;
    let before = s.db.fingerprint().await;
    let policy = s.policy("");
    let wasm = plugin_path("hostile");
    let out = s.drhost(&[
        "test",
        "--json",
        "--policy",
        policy.to_str().unwrap(),
        wasm.to_str().unwrap(),
    ]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // The undeclared mutations are reported…
    let flagged = report["checks"].as_array().unwrap().iter().any(|c| {
        c["step"] == "sneak" && c["check"] == "mutations are declared" && c["passed"] == false
    });
    assert!(flagged, "{report:#}");
    assert_eq!(out.status.code(), Some(1));
    // …and nothing changed anywhere.
    s.assert_untouched_outside_the_database();
    assert_eq!(s.db.fingerprint().await, before, "{engine:?}");
}

#[tokio::test]
async fn drhost_test_changes_nothing_on_mariadb() {
    drhost_test_changes_nothing(Engine::MariaDb).await;
}

#[tokio::test]
async fn drhost_test_changes_nothing_on_postgres() {
    drhost_test_changes_nothing(Engine::Postgres).await;
}

#[tokio::test]
async fn drhost_test_changes_nothing_on_sqlite() {
    drhost_test_changes_nothing(Engine::Sqlite).await;
}

// ---- SQLite files beyond the database -----------------------------------------

#[tokio::test]
async fn sqlite_attach_and_vacuum_into_are_refused_even_on_a_read_write_grant_in_a_mutating_step() {
    let s = Scene::new(Engine::Sqlite).await;
    let policy = s.policy("");
    let (report, _) = s.run(&["--phase", "recover"], &policy);
    let got = through(&report, "query-writes-mutating");
    // A mutating step may write its database…
    assert!(got.iter().any(|q| q.starts_with("INSERT")), "{got:?}");
    // …but never reach another file.
    assert!(
        !got.iter().any(|q| q.starts_with("ATTACH")
            || q.starts_with("VACUUM")
            || q.contains("load_extension")
            || q.starts_with("PRAGMA writable_schema")),
        "{got:?}"
    );
    assert!(!s.attach.exists());
}

// ---- state ---------------------------------------------------------------------

#[tokio::test]
async fn a_plugin_cannot_reach_another_scenarios_state_by_declaring_its_name() {
    let s = Scene::new(Engine::Sqlite).await;
    // Without [plugin] scenario the store is the component's own, whatever
    // name the plugin declares ("hostile" here, whose store holds `url`).
    let policy = s.path("anon.policy.toml");
    std::fs::write(&policy, "[limits]\nmemory = \"64 MiB\"\n").unwrap();
    let (report, _) = s.run(&["--phase", "detect"], &policy);
    let keys: Vec<String> = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|st| st["id"] == "state-peek")
        .flat_map(|st| st["findings"].as_array().unwrap().clone())
        .map(|f| f[1].as_str().unwrap().to_string())
        .collect();
    assert!(!keys.contains(&"url".to_string()), "{keys:?}");
    // A policy for another scenario is refused outright.
    let other = s.path("victim.policy.toml");
    std::fs::write(&other, "[plugin]\nscenario = \"victim\"\n").unwrap();
    let wasm = plugin_path("hostile");
    let runs = s.path("victim-runs");
    let out = s.drhost(&[
        "run",
        "--out",
        runs.to_str().unwrap(),
        "--policy",
        other.to_str().unwrap(),
        wasm.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the policy is for scenario \"victim\""),
        "{err}"
    );
    // Refused before the run started: no log, empty or otherwise.
    assert!(!runs.exists(), "a refused run left a log behind");
}

// ---- denials inside a provider -------------------------------------------------

#[tokio::test]
async fn a_write_once_refusal_is_counted_and_names_the_grant_it_lacks() {
    let s = Scene::new(Engine::Sqlite).await;
    std::fs::write(s.path("bucket/writes.txt"), "first").unwrap();
    let policy = s.path("once.policy.toml");
    std::fs::write(
        &policy,
        "[plugin]\nscenario = \"hostile\"\n\n[s3.primary]\npath = \"bucket\"\naccess = [\"read\", \"write\"]\nwrite-once = true\n",
    )
    .unwrap();
    let (report, _) = s.run(&["--phase", "recover"], &policy);
    let log = audit_of(&report);
    let put = calls(&log, "writes")
        .into_iter()
        .find(|r| r["op"] == "put")
        .unwrap()
        .clone();
    assert_eq!(put["decision"], "deny", "{put}");
    assert!(
        put["grant"]
            .as_str()
            .unwrap()
            .starts_with("s3.primary write-once=false"),
        "{put}"
    );
    let denied_in_log = log
        .iter()
        .filter(|r| r["type"] == "call" && r["decision"] == "deny")
        .count() as u64;
    assert_eq!(report["denied"].as_u64().unwrap(), denied_in_log);
    assert_eq!(
        std::fs::read_to_string(s.path("bucket/writes.txt")).unwrap(),
        "first"
    );
}

// ---- secrets ---------------------------------------------------------------------

#[tokio::test]
async fn a_missing_secret_stops_the_run_before_any_plugin_code_for_every_capability() {
    let s = Scene::new(Engine::Sqlite).await;
    for (section, what) in [
        (
            "[db.other]\nurl = \"env:DRHOST_TEST_SURELY_UNSET_DB\"\naccess = \"read-write\"\n",
            "[db.other] url: environment variable DRHOST_TEST_SURELY_UNSET_DB is not set",
        ),
        (
            "[exec.other]\nprogram = \"/bin/true\"\nenv = { TOKEN = \"env:DRHOST_TEST_SURELY_UNSET_EXEC\" }\n",
            "[exec.other] env TOKEN: environment variable DRHOST_TEST_SURELY_UNSET_EXEC is not set",
        ),
    ] {
        let policy = s.policy(section);
        let wasm = plugin_path("hostile");
        let out = s.drhost(&[
            "run",
            "--out",
            s.path("runs").to_str().unwrap(),
            "--policy",
            policy.to_str().unwrap(),
            wasm.to_str().unwrap(),
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(what), "{err}");
        assert!(!s.path("runs").exists(), "a run started");
    }
}

// ---- signed plugins ------------------------------------------------------------

/// Runs the standard `minisign` CLI (installed by the test command).
fn minisign(args: &[&std::ffi::OsStr]) {
    let out = Command::new("minisign")
        .args(args)
        .output()
        .expect("minisign (installed by the test command)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A key pair without a password; returns the public key line.
fn minisign_key(dir: &Path, name: &str) -> String {
    let (public, secret) = (
        dir.join(format!("{name}.pub")),
        dir.join(format!("{name}.sec")),
    );
    minisign(&[
        "-G".as_ref(),
        "-W".as_ref(),
        "-f".as_ref(),
        "-p".as_ref(),
        public.as_os_str(),
        "-s".as_ref(),
        secret.as_os_str(),
    ]);
    std::fs::read_to_string(&public)
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .to_string()
}

fn minisign_sign(dir: &Path, key: &str, file: &Path) {
    let secret = dir.join(format!("{key}.sec"));
    minisign(&[
        "-S".as_ref(),
        "-s".as_ref(),
        secret.as_os_str(),
        "-m".as_ref(),
        file.as_os_str(),
    ]);
}

#[test]
fn a_policy_that_requires_a_signature_refuses_unsigned_wrongly_signed_and_altered_plugins() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ours = minisign_key(d, "ours");
    let _theirs = minisign_key(d, "theirs");
    let wasm = d.join("hostile.wasm");
    std::fs::copy(plugin_path("hostile"), &wasm).unwrap();
    let policy = d.join("p.toml");
    std::fs::write(
        &policy,
        format!("[plugin]\nscenario = \"hostile\"\nsigned-by = [\"{ours}\"]\n"),
    )
    .unwrap();
    let run = || {
        drhost()
            .arg("--state-dir")
            .arg(d.join("state"))
            .args(["run", "--phase", "verify", "--out"])
            .arg(d.join("runs"))
            .arg("--policy")
            .arg(&policy)
            .arg(&wasm)
            .output()
            .unwrap()
    };
    let refused = |why: &str| {
        let out = run();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(4), "{why}: {err}");
        assert!(
            err.contains("is not signed as the policy requires"),
            "{why}: {err}"
        );
        assert_eq!(
            err.lines().filter(|l| l.contains("error:")).count(),
            1,
            "{why}: one line: {err}"
        );
        err
    };
    let err = refused("no signature");
    assert!(err.contains("hostile.wasm.minisig"), "{err}");
    minisign_sign(d, "theirs", &wasm);
    let err = refused("signed by another key");
    assert!(err.contains("does not verify"), "{err}");
    minisign_sign(d, "ours", &wasm);
    let out = run();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One byte appended after signing.
    let mut bytes = std::fs::read(&wasm).unwrap();
    bytes.push(0);
    std::fs::write(&wasm, bytes).unwrap();
    refused("altered after signing");
}

// ---- phases -----------------------------------------------------------------------

async fn verify_steps_only_read_by_default(engine: Engine) {
    let s = Scene::new(engine).await;
    let before = s.db.fingerprint().await;
    let policy = s.policy("");
    let (report, _) = s.run(&["--phase", "verify"], &policy);
    // Declared mutating, but verify may not write through these grants.
    assert_eq!(
        through(&report, "verify-writes"),
        Vec::<String>::new(),
        "{report:#}"
    );
    assert_eq!(
        writes_through(&report, "verify-query-writes"),
        Vec::<String>::new(),
        "{report:#}"
    );
    s.assert_untouched_outside_the_database();
    s.assert_server_untouched().await;
    assert_eq!(
        through(&report, "server-writes"),
        Vec::<String>::new(),
        "{report:#}"
    );
    assert_eq!(s.db.fingerprint().await, before, "{engine:?}");
    let log = audit_of(&report);
    let put = calls(&log, "verify-writes")
        .into_iter()
        .find(|r| r["op"] == "put")
        .unwrap()
        .clone();
    assert_eq!(put["decision"], "deny");
    assert_eq!(put["grant"], "s3.primary write-phases += verify", "{put}");
    // Reads still work in verify.
    let reads = through(&report, "verify-reads");
    assert_eq!(reads, ["s3.get", "db.query", "http.get"], "{report:#}");
}

#[tokio::test]
async fn verify_steps_only_read_by_default_on_mariadb() {
    verify_steps_only_read_by_default(Engine::MariaDb).await;
}

#[tokio::test]
async fn verify_steps_only_read_by_default_on_postgres() {
    verify_steps_only_read_by_default(Engine::Postgres).await;
}

#[tokio::test]
async fn verify_steps_only_read_by_default_on_sqlite() {
    verify_steps_only_read_by_default(Engine::Sqlite).await;
}

/// Root reads nothing for a read-only mode: a read-only transaction would
/// not stop its server statements, so without `read-url` every read-only
/// query on it is refused, naming the remedy.
async fn a_privileged_account_never_serves_a_read_only_mode(engine: Engine) {
    let s = Scene::new(engine).await;
    let policy = s.path("root.policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[plugin]\nscenario = \"hostile\"\n\n\
             [db.main]\nurl = \"{}\"\naccess = \"read-write\"\n",
            s.db.url
        ),
    )
    .unwrap();
    let (report, _) = s.run(&["--phase", "verify"], &policy);
    assert_eq!(through(&report, "server-writes"), Vec::<String>::new());
    assert_eq!(through(&report, "verify-reads"), Vec::<String>::new());
    s.assert_server_untouched().await;
    let log = audit_of(&report);
    let refused: Vec<_> = calls(&log, "server-writes")
        .into_iter()
        .filter(|r| r["interface"] == "db")
        .collect();
    assert_eq!(refused.len(), 6, "{log:#?}");
    for r in refused {
        assert_eq!(r["decision"], "deny", "{r}");
        let why = r["error"].as_str().unwrap_or_default();
        assert!(why.contains("add read-url to [db.main]"), "{r}");
    }
}

#[tokio::test]
async fn a_privileged_account_never_serves_a_read_only_mode_on_mariadb() {
    a_privileged_account_never_serves_a_read_only_mode(Engine::MariaDb).await;
}

#[tokio::test]
async fn a_privileged_account_never_serves_a_read_only_mode_on_postgres() {
    a_privileged_account_never_serves_a_read_only_mode(Engine::Postgres).await;
}

#[tokio::test]
async fn a_read_url_that_can_write_is_refused() {
    let s = Scene::new(Engine::Postgres).await;
    let policy = s.path("bad-read-url.policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[plugin]\nscenario = \"hostile\"\n\n\
             [db.main]\nurl = \"{0}\"\naccess = \"read-write\"\nread-url = \"{0}\"\n",
            s.db.url
        ),
    )
    .unwrap();
    let (report, _) = s.run(&["--phase", "verify"], &policy);
    assert_eq!(through(&report, "verify-reads"), Vec::<String>::new());
    let log = audit_of(&report);
    let r = calls(&log, "verify-reads")
        .into_iter()
        .find(|r| r["interface"] == "db")
        .unwrap()
        .clone();
    assert_eq!(r["decision"], "deny", "{r}");
    assert!(
        r["error"]
            .as_str()
            .unwrap_or_default()
            .contains("read-url names a role that can write"),
        "{r}"
    );
}

#[tokio::test]
async fn write_phases_opens_one_grant_for_writes_in_verify_and_no_other() {
    let s = Scene::new(Engine::Sqlite).await;
    let before = s.db.fingerprint().await;
    let policy = s.path("verify-writes.policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[plugin]\nscenario = \"hostile\"\n\n\
             [s3.primary]\npath = \"bucket\"\naccess = [\"read\", \"list\", \"write\", \"delete\"]\n\
             write-phases = [\"recover\", \"verify\"]\n\n\
             [db.main]\nurl = \"{}\"\naccess = \"read-write\"\n",
            s.db.url
        ),
    )
    .unwrap();
    let (report, _) = s.run(&["--phase", "verify"], &policy);
    // (The copy fails only because the delete before it removed its source.)
    let got = through(&report, "verify-writes");
    assert_eq!(got, ["s3.put", "s3.delete"], "{report:#}");
    assert!(s.path("bucket/verify-writes.txt").exists());
    // db.main keeps the default: verify reads it, in the engine's read-only mode.
    assert_eq!(s.db.fingerprint().await, before);
}

#[tokio::test]
async fn a_grant_limited_to_some_phases_cannot_be_used_in_others() {
    let s = Scene::new(Engine::Sqlite).await;
    let policy = s.path("phases.policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[plugin]\nscenario = \"hostile\"\n\n\
             [s3.primary]\npath = \"bucket\"\naccess = [\"read\"]\nphases = [\"recover\"]\n\n\
             [db.main]\nurl = \"{}\"\naccess = \"read-write\"\nphases = [\"detect\", \"verify\"]\n",
            s.db.url
        ),
    )
    .unwrap();
    let (report, _) = s.run(&["--phase", "verify"], &policy);
    assert_eq!(through(&report, "verify-reads"), ["db.query"], "{report:#}");
    let log = audit_of(&report);
    let get = calls(&log, "verify-reads")
        .into_iter()
        .find(|r| r["interface"] == "s3" && r["op"] == "get")
        .unwrap()
        .clone();
    assert_eq!(get["decision"], "deny");
    assert_eq!(get["grant"], "s3.primary phases += verify", "{get}");
}

// ---- URLs, keys and arguments that try to climb out -------------------------------

#[tokio::test]
async fn http_path_tricks_never_reach_a_path_outside_the_grant() {
    let (port, requests) = http_sink();
    let dir = tempfile::tempdir().unwrap();
    let caps = caps(
        &format!("[http]\nallow = [\"http://127.0.0.1:{port}/health\"]\n"),
        dir.path(),
    )
    .await;
    let base = format!("http://127.0.0.1:{port}");
    // The grant itself works.
    ok(&caps, "http.get", &[("url", &format!("{base}/health"))]).await;
    for trick in [
        "/health/../admin",
        "/health/%2e%2e/admin",
        "/health/%2E%2E/admin",
        "/health/..%2fadmin",
        "/health/..%2Fadmin",
        "/health/.%2e/admin",
        "/health/%2e./admin",
        "/health\\..\\admin",
        "/health/..\\admin",
        "//health/../admin",
        "/health//../../admin",
        "/health/%252e%252e/admin",
        "/health/..;/admin",
        "/health/%00/../admin",
        "/healthz",
        "/health-admin",
        "/health%2f..%2fadmin",
        "/./admin",
        "/admin/../health/../admin",
    ] {
        let url = format!("{base}{trick}");
        let _ = step(&caps, "http.get", &[("url", &url)]).await;
    }
    let seen: Vec<String> = requests
        .lock()
        .unwrap()
        .iter()
        .map(|(_, p)| p.clone())
        .collect();
    assert!(!seen.is_empty());
    for p in &seen {
        assert!(
            p == "/health" || p.starts_with("/health/"),
            "a request reached {p}: {seen:?}"
        );
        assert!(!p.contains(".."), "a dot segment was sent: {seen:?}");
    }
}

#[tokio::test]
async fn s3_symlinks_inside_a_local_bucket_never_reach_another_prefix() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let bucket = dir.path().join("bucket");
    std::fs::create_dir_all(bucket.join("allowed")).unwrap();
    std::fs::create_dir_all(bucket.join("secret")).unwrap();
    std::fs::write(bucket.join("secret/s.txt"), "SECRET").unwrap();
    std::fs::write(bucket.join("allowed/ok.txt"), "fine").unwrap();
    symlink("../secret", bucket.join("allowed/dir")).unwrap();
    symlink("../secret/s.txt", bucket.join("allowed/file")).unwrap();
    symlink(bucket.join("secret/s.txt"), bucket.join("allowed/abs")).unwrap();
    symlink("..", bucket.join("allowed/up")).unwrap();
    symlink("/etc/passwd", bucket.join("allowed/passwd")).unwrap();
    let caps = caps(
        &format!(
            "[s3.a]\npath = \"{}\"\nprefix = \"allowed/\"\naccess = [\"read\", \"list\", \"write\", \"delete\"]\n",
            bucket.display()
        ),
        dir.path(),
    )
    .await;
    let body = ok(&caps, "s3.get", &[("alias", "a"), ("key", "ok.txt")]).await;
    assert_eq!(get(&body, "body"), Some("fine"));
    for key in ["dir/s.txt", "file", "abs", "up/secret/s.txt", "passwd"] {
        if let Ok(drhost::bindings::Outcome::Ok(f)) =
            step(&caps, "s3.get", &[("alias", "a"), ("key", key)]).await
        {
            let f: Vec<_> = f.into_iter().map(|f| (f.key, f.value)).collect();
            panic!("{key} was read: {f:?}")
        }
    }
    // Writes through the links do not land in another prefix.
    for key in ["dir/new.txt", "up/secret/new.txt"] {
        let _ = step(
            &caps,
            "s3.put",
            &[("alias", "a"), ("key", key), ("body", "planted")],
        )
        .await;
    }
    let _ = step(
        &caps,
        "s3.put",
        &[("alias", "a"), ("key", "file"), ("body", "x")],
    )
    .await;
    let mut secret: Vec<_> = std::fs::read_dir(bucket.join("secret"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    secret.sort();
    assert_eq!(secret, ["s.txt"]);
    assert_eq!(
        std::fs::read_to_string(bucket.join("secret/s.txt")).unwrap(),
        "SECRET"
    );
    // A listing does not wander through them either.
    let listed = ok(&caps, "s3.list", &[("alias", "a"), ("prefix", "")]).await;
    for k in all(&listed, "key") {
        assert!(!k.contains("s.txt"), "listed {k}");
    }
}

#[tokio::test]
async fn a_fifo_planted_in_a_local_bucket_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = dir.path().join("bucket");
    std::fs::create_dir_all(&bucket).unwrap();
    let fifo = std::ffi::CString::new(bucket.join("pipe").to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let caps = caps(
        &format!(
            "[s3.a]\npath = \"{}\"\naccess = [\"read\"]\n",
            bucket.display()
        ),
        dir.path(),
    )
    .await;
    // Refused for what it is, not stopped later: a blocked host call would
    // hold the step (budgets do not reach host calls yet, issue 13).
    let why = failed(&caps, "s3.get", &[("alias", "a"), ("key", "pipe")]).await;
    assert!(why.contains("not a regular file"), "{why}");
}

#[tokio::test]
async fn exec_patterns_never_let_an_argument_climb_out_or_become_an_option() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("a.txt"), "inside").unwrap();
    std::fs::write(dir.path().join("secret.txt"), "SECRET").unwrap();
    let caps = caps(
        &format!(
            "[exec.cat]\nprogram = \"/bin/cat\"\nargs = [\"{}/*\"]\n",
            data.display()
        ),
        dir.path(),
    )
    .await;
    let d = data.display().to_string();
    let f = ok(
        &caps,
        "exec.run",
        &[("name", "cat"), ("arg", &format!("{d}/a.txt"))],
    )
    .await;
    assert_eq!(get(&f, "stdout"), Some("inside"));
    for climb in [
        format!("{d}/../secret.txt"),
        format!("{d}/./../secret.txt"),
        format!("{d}/x/../../secret.txt"),
        format!("{d}/.."),
        format!("{d}//../secret.txt"),
    ] {
        if let Ok(drhost::bindings::Outcome::Ok(f)) =
            step(&caps, "exec.run", &[("name", "cat"), ("arg", &climb)]).await
        {
            let f: Vec<_> = f.into_iter().map(|f| (f.key, f.value)).collect();
            panic!("{climb} was allowed: {f:?}");
        }
    }
    // `*` alone never matches an option.
    let caps = caps_with(
        "[exec.echo]\nprogram = \"/bin/echo\"\nargs = [\"*\"]\n",
        dir.path(),
        false,
        None,
    )
    .await;
    for option in ["-n", "--help", "-e\\x41"] {
        let why = failed(&caps, "exec.run", &[("name", "echo"), ("arg", option)]).await;
        assert!(why.starts_with("denied"), "{option}: {why}");
    }
}
