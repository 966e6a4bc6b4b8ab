//! The db capability against real MariaDB, PostgreSQL and SQLite, including
//! every read-only escape we know of: each must leave the data untouched.

mod common;

use common::*;
use sqlx::Connection;
use std::sync::OnceLock;

/// Creates the read-only accounts and fixture tables once per test binary.
fn setup() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        std::thread::spawn(|| {
            tokio::runtime::Runtime::new().unwrap().block_on(async {
                setup_mariadb().await;
                setup_postgres().await;
            })
        })
        .join()
        .expect("database set-up");
    });
}

async fn setup_mariadb() {
    let mut c = sqlx::MySqlConnection::connect(&mariadb_url())
        .await
        .expect("MariaDB on 127.0.0.1:3306");
    for sql in [
        "CREATE TABLE IF NOT EXISTS drhost_ro_t (id INT PRIMARY KEY, v VARCHAR(20))",
        "DELETE FROM drhost_ro_t",
        "INSERT INTO drhost_ro_t VALUES (1, 'one'), (2, 'two'), (3, 'three')",
        "CREATE USER IF NOT EXISTS 'drhost_ro'@'localhost'",
        "CREATE USER IF NOT EXISTS 'drhost_ro'@'%'",
        "GRANT SELECT ON test.* TO 'drhost_ro'@'localhost'",
        "GRANT SELECT ON test.* TO 'drhost_ro'@'%'",
    ] {
        sqlx::raw_sql(sql)
            .execute(&mut c)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

const PG_DB: &str = "drhost_ro_test";

fn pg_url_for(user: &str, db: &str) -> String {
    let base = url::Url::parse(&postgres_url()).unwrap();
    format!(
        "postgres://{user}@{}:{}/{db}",
        base.host_str().unwrap(),
        base.port().unwrap_or(5432)
    )
}

async fn setup_postgres() {
    let mut c = sqlx::PgConnection::connect(&postgres_url())
        .await
        .expect("PostgreSQL on 127.0.0.1:5432");
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(PG_DB)
        .fetch_optional(&mut c)
        .await
        .unwrap();
    if exists.is_none() {
        sqlx::raw_sql("CREATE DATABASE drhost_ro_test")
            .execute(&mut c)
            .await
            .unwrap();
    }
    sqlx::raw_sql(
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'drhost_ro') THEN CREATE ROLE drhost_ro LOGIN; END IF; END $$",
    )
    .execute(&mut c)
    .await
    .unwrap();
    let mut d = sqlx::PgConnection::connect(&pg_url_for("postgres", PG_DB))
        .await
        .unwrap();
    // A role that can only read: no TEMP, no large objects, SELECT on one table.
    for sql in [
        "REVOKE TEMP ON DATABASE drhost_ro_test FROM PUBLIC",
        "REVOKE CREATE ON SCHEMA public FROM PUBLIC",
        "REVOKE EXECUTE ON FUNCTION lo_from_bytea(oid, bytea), lo_create(oid), lo_creat(integer), lo_put(oid, bigint, bytea), lo_import(text), lo_import(text, oid), lo_unlink(oid), lowrite(integer, bytea), lo_truncate(integer, integer), lo_truncate64(integer, bigint), pg_logical_emit_message(boolean, text, text), pg_logical_emit_message(boolean, text, bytea) FROM PUBLIC",
        "CREATE TABLE IF NOT EXISTS ro_t (id INT PRIMARY KEY, v TEXT)",
        "DELETE FROM ro_t",
        "INSERT INTO ro_t VALUES (1, 'one'), (2, 'two'), (3, 'three')",
        "GRANT CONNECT ON DATABASE drhost_ro_test TO drhost_ro",
        "GRANT USAGE ON SCHEMA public TO drhost_ro",
        "GRANT SELECT ON ro_t TO drhost_ro",
    ] {
        sqlx::raw_sql(sql)
            .execute(&mut d)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

fn grant(name: &str, url: &str, access: &str) -> String {
    format!("[db.{name}]\nurl = \"{url}\"\naccess = \"{access}\"\n")
}

fn mariadb_ro_url() -> String {
    let base = url::Url::parse(&mariadb_url()).unwrap();
    format!(
        "mysql://drhost_ro@{}:{}/test",
        base.host_str().unwrap(),
        base.port().unwrap_or(3306)
    )
}

async fn mariadb_rows() -> Vec<(i32, String)> {
    let mut c = sqlx::MySqlConnection::connect(&mariadb_url())
        .await
        .unwrap();
    sqlx::query_as("SELECT id, v FROM drhost_ro_t ORDER BY id")
        .fetch_all(&mut c)
        .await
        .unwrap()
}

async fn pg_rows() -> Vec<(i32, String)> {
    let mut c = sqlx::PgConnection::connect(&pg_url_for("postgres", PG_DB))
        .await
        .unwrap();
    sqlx::query_as("SELECT id, v FROM ro_t ORDER BY id")
        .fetch_all(&mut c)
        .await
        .unwrap()
}

fn intact() -> Vec<(i32, String)> {
    vec![(1, "one".into()), (2, "two".into()), (3, "three".into())]
}

#[tokio::test]
async fn sqlite_query_execute_and_ping_with_typed_values() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("app.db").display());
    let caps = caps(&grant("app", &url, "read-write"), dir.path()).await;
    ok(
        &caps,
        "db.execute",
        &[
            ("conn", "app"),
            (
                "sql",
                "CREATE TABLE t (id INTEGER, name TEXT, score REAL, blob BLOB)",
            ),
        ],
    )
    .await;
    let n = ok(
        &caps,
        "db.execute",
        &[
            ("conn", "app"),
            ("sql", "INSERT INTO t VALUES (?, ?, ?, ?)"),
            ("param", "int:7"),
            ("param", "text:seven"),
            ("param", "float:7.5"),
            ("param", "bytes:raw"),
        ],
    )
    .await;
    assert_eq!(get(&n, "affected"), Some("1"));
    let rows = ok(
        &caps,
        "db.query",
        &[
            ("conn", "app"),
            (
                "sql",
                "SELECT id, name, score, blob, NULL FROM t WHERE id = ?",
            ),
            ("param", "int:7"),
        ],
    )
    .await;
    assert_eq!(get(&rows, "rows"), Some("1"));
    assert_eq!(
        get(&rows, "row"),
        Some("int:7,text:seven,float:7.5,bytes:raw,null")
    );
    let ping = ok(&caps, "db.ping", &[("conn", "app")]).await;
    assert!(get(&ping, "latency-us").unwrap().parse::<u64>().is_ok());
}

#[tokio::test]
async fn sqlite_read_only_holds_against_every_escape() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ro.db");
    {
        let mut c =
            sqlx::SqliteConnection::connect(&format!("sqlite://{}?mode=rwc", path.display()))
                .await
                .unwrap();
        sqlx::raw_sql("CREATE TABLE t (id INTEGER); INSERT INTO t VALUES (1), (2), (3);")
            .execute(&mut c)
            .await
            .unwrap();
    }
    let caps = caps(
        &grant("ro", &format!("sqlite://{}", path.display()), "read-only"),
        dir.path(),
    )
    .await;
    let q = |sql: &'static str| [("conn", "ro"), ("sql", sql)];
    // Reading works.
    let rows = ok(&caps, "db.query", &q("SELECT count(*) FROM t")).await;
    assert_eq!(get(&rows, "row"), Some("int:3"));
    // execute is refused by the grant.
    let err = failed(&caps, "db.execute", &q("DELETE FROM t")).await;
    assert!(err.contains("needs read-write"), "{err}");
    // Writes through query are refused by SQLite itself (file opened read-only).
    let err = failed(&caps, "db.query", &q("DELETE FROM t RETURNING id")).await;
    assert!(err.starts_with("denied:"), "{err}");
    // Switching query_only off does not help: the file is read-only.
    let _ = step(&caps, "db.query", &q("PRAGMA query_only = 0")).await;
    let err = failed(
        &caps,
        "db.query",
        &q("INSERT INTO t VALUES (4) RETURNING id"),
    )
    .await;
    assert!(err.starts_with("denied:"), "{err}");
    // VACUUM INTO and ATTACH would write or read other files: SQLite's
    // authorizer refuses them, however the statement is spelt.
    let target = dir.path().join("copy.db");
    for sql in [
        format!("VACUUM INTO '{}'", target.display()),
        format!("VACUUM\"main\"INTO'{}'", target.display()),
        format!(
            "ATTACH DATABASE '{}' AS x",
            dir.path().join("x.db").display()
        ),
        format!("ATTACH'{}'AS o", dir.path().join("y.db").display()),
    ] {
        let err = failed(&caps, "db.query", &[("conn", "ro"), ("sql", &sql)]).await;
        assert!(err.starts_with("denied:"), "{sql}: {err}");
    }
    assert!(!target.exists());
    assert!(!dir.path().join("x.db").exists());
    assert!(!dir.path().join("y.db").exists());
    // A second statement in the same call is still read-only.
    let _ = step(&caps, "db.query", &q("SELECT 1; DELETE FROM t")).await;
    let rows = ok(&caps, "db.query", &q("SELECT count(*) FROM t")).await;
    assert_eq!(get(&rows, "row"), Some("int:3"));
}

#[tokio::test]
async fn mariadb_query_and_execute_on_a_read_write_connection() {
    setup();
    let dir = tempfile::tempdir().unwrap();
    let caps = caps(&grant("main", &mariadb_url(), "read-write"), dir.path()).await;
    let table = format!("drhost_rw_{}", unique().replace('-', "_"));
    let create = format!(
        "CREATE TABLE {table} (id BIGINT, name VARCHAR(20), at DATETIME, amount DECIMAL(10,2))"
    );
    ok(&caps, "db.execute", &[("conn", "main"), ("sql", &create)]).await;
    let insert = format!("INSERT INTO {table} VALUES (?, ?, '2026-11-27 03:00:00', 12.50)");
    let n = ok(
        &caps,
        "db.execute",
        &[
            ("conn", "main"),
            ("sql", &insert),
            ("param", "int:1"),
            ("param", "text:alice"),
        ],
    )
    .await;
    assert_eq!(get(&n, "affected"), Some("1"));
    let select = format!("SELECT id, name, at, amount FROM {table} WHERE name = ?");
    let rows = ok(
        &caps,
        "db.query",
        &[("conn", "main"), ("sql", &select), ("param", "text:alice")],
    )
    .await;
    assert_eq!(
        get(&rows, "row"),
        Some("int:1,text:alice,text:2026-11-27 03:00:00,text:12.50")
    );
    ok(
        &caps,
        "db.execute",
        &[("conn", "main"), ("sql", &format!("DROP TABLE {table}"))],
    )
    .await;
    ok(&caps, "db.ping", &[("conn", "main")]).await;
}

#[tokio::test]
async fn mariadb_read_only_holds_against_every_escape() {
    setup();
    let dir = tempfile::tempdir().unwrap();
    let caps = caps(&grant("ro", &mariadb_ro_url(), "read-only"), dir.path()).await;
    let rows = ok(
        &caps,
        "db.query",
        &[("conn", "ro"), ("sql", "SELECT count(*) FROM drhost_ro_t")],
    )
    .await;
    assert_eq!(get(&rows, "row"), Some("int:3"));
    for sql in [
        "DROP TABLE drhost_ro_t",
        "TRUNCATE TABLE drhost_ro_t",
        "DELETE FROM drhost_ro_t",
        "INSERT INTO drhost_ro_t VALUES (9, 'nine')",
    ] {
        let err = failed(&caps, "db.query", &[("conn", "ro"), ("sql", sql)]).await;
        assert!(
            err.starts_with("denied:") || err.starts_with("invalid:"),
            "{sql}: {err}"
        );
    }
    // Undoing the session's read-only setting does not give write access.
    let _ = step(
        &caps,
        "db.query",
        &[("conn", "ro"), ("sql", "SET SESSION tx_read_only = 0")],
    )
    .await;
    let err = failed(
        &caps,
        "db.query",
        &[("conn", "ro"), ("sql", "UPDATE drhost_ro_t SET v = 'x'")],
    )
    .await;
    assert!(
        err.starts_with("denied:") || err.starts_with("invalid:"),
        "{err}"
    );
    // Ending the read-only transaction inside the statement string is refused.
    let err = failed(
        &caps,
        "db.query",
        &[("conn", "ro"), ("sql", "COMMIT; DELETE FROM drhost_ro_t")],
    )
    .await;
    assert!(
        err.starts_with("invalid:") || err.starts_with("denied:"),
        "{err}"
    );
    let err = failed(
        &caps,
        "db.execute",
        &[("conn", "ro"), ("sql", "DELETE FROM drhost_ro_t")],
    )
    .await;
    assert!(err.contains("needs read-write"), "{err}");
    assert_eq!(mariadb_rows().await, intact());
}

#[tokio::test]
async fn mariadb_read_only_grant_on_a_writing_account_is_refused() {
    setup();
    let dir = tempfile::tempdir().unwrap();
    let caps = caps(&grant("ro", &mariadb_url(), "read-only"), dir.path()).await;
    let err = failed(&caps, "db.query", &[("conn", "ro"), ("sql", "SELECT 1")]).await;
    assert!(
        err.contains("read-only, but its account can write"),
        "{err}"
    );
    assert!(!err.contains("root@"), "the URL must not leak: {err}");
}

#[tokio::test]
async fn postgres_query_and_execute_on_a_read_write_connection() {
    setup();
    let dir = tempfile::tempdir().unwrap();
    let caps = caps(&grant("main", &postgres_url(), "read-write"), dir.path()).await;
    let table = format!("drhost_rw_{}", unique().replace('-', "_"));
    ok(
        &caps,
        "db.execute",
        &[
            ("conn", "main"),
            (
                "sql",
                &format!("CREATE TABLE {table} (id BIGINT, name TEXT, ok BOOL, at TIMESTAMPTZ)"),
            ),
        ],
    )
    .await;
    let insert = format!("INSERT INTO {table} VALUES ($1, $2, $3, '2026-11-27T03:00:00Z')");
    let n = ok(
        &caps,
        "db.execute",
        &[
            ("conn", "main"),
            ("sql", &insert),
            ("param", "int:1"),
            ("param", "text:bob"),
            ("param", "bool:true"),
        ],
    )
    .await;
    assert_eq!(get(&n, "affected"), Some("1"));
    let rows = ok(
        &caps,
        "db.query",
        &[
            ("conn", "main"),
            (
                "sql",
                &format!("SELECT id, name, ok FROM {table} WHERE id = $1"),
            ),
            ("param", "int:1"),
        ],
    )
    .await;
    assert_eq!(get(&rows, "row"), Some("int:1,text:bob,bool:true"));
    ok(
        &caps,
        "db.execute",
        &[("conn", "main"), ("sql", &format!("DROP TABLE {table}"))],
    )
    .await;
}

#[tokio::test]
async fn postgres_read_only_holds_against_every_escape() {
    setup();
    let dir = tempfile::tempdir().unwrap();
    let caps = caps(
        &grant("ro", &pg_url_for("drhost_ro", PG_DB), "read-only"),
        dir.path(),
    )
    .await;
    let rows = ok(
        &caps,
        "db.query",
        &[("conn", "ro"), ("sql", "SELECT count(*)::int8 FROM ro_t")],
    )
    .await;
    assert_eq!(get(&rows, "row"), Some("int:3"));
    for sql in [
        "DELETE FROM ro_t RETURNING id",
        "SELECT lo_from_bytea(0, 'x'::bytea)",
        "CREATE TEMP TABLE x AS SELECT 1",
        "SET transaction_read_only = off",
    ] {
        let _ = step(&caps, "db.query", &[("conn", "ro"), ("sql", sql)]).await;
    }
    let err = failed(
        &caps,
        "db.query",
        &[("conn", "ro"), ("sql", "DELETE FROM ro_t RETURNING id")],
    )
    .await;
    assert!(err.starts_with("denied:"), "{err}");
    let err = failed(
        &caps,
        "db.query",
        &[
            ("conn", "ro"),
            ("sql", "SELECT lo_from_bytea(0, 'x'::bytea)"),
        ],
    )
    .await;
    assert!(err.starts_with("denied:"), "{err}");
    let err = failed(
        &caps,
        "db.query",
        &[("conn", "ro"), ("sql", "COMMIT; DELETE FROM ro_t")],
    )
    .await;
    assert!(
        err.starts_with("invalid:") || err.starts_with("denied:"),
        "{err}"
    );
    assert_eq!(pg_rows().await, intact());
    let mut c = sqlx::PgConnection::connect(&pg_url_for("postgres", PG_DB))
        .await
        .unwrap();
    let los: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_largeobject_metadata")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(los, 0, "a large object was written");
}

#[tokio::test]
async fn postgres_read_only_grant_on_a_writing_role_is_refused() {
    setup();
    let dir = tempfile::tempdir().unwrap();
    let caps = caps(
        &grant("ro", &pg_url_for("postgres", PG_DB), "read-only"),
        dir.path(),
    )
    .await;
    let err = failed(&caps, "db.query", &[("conn", "ro"), ("sql", "SELECT 1")]).await;
    assert!(err.contains("read-only, but its role can write"), "{err}");
    assert!(err.contains("superuser"), "{err}");
}

#[tokio::test]
async fn results_over_the_row_cap_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("r.db").display());
    let caps = caps(
        &format!("[db.m]\nurl = \"{url}\"\naccess = \"read-write\"\nmax-rows = 5\n"),
        dir.path(),
    )
    .await;
    let err = failed(
        &caps,
        "db.query",
        &[("conn", "m"), ("sql", "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100) SELECT x FROM c")],
    )
    .await;
    assert!(
        err.starts_with("too large:") && err.contains("more than 5 rows"),
        "{err}"
    );
}

/// `url` with query parameters added.
fn with_params(url: &str, params: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{params}")
}

/// PostgreSQL's TLS is ended in the relay (so it can read message headers)
/// and means what the URL's sslmode says: encrypted when asked for, the
/// certificate chain checked for verify-ca, the host name too for
/// verify-full. The test server is Debian's, with `ssl = on` and the
/// snakeoil certificate (self-signed, for `localhost`).
#[tokio::test]
async fn postgres_tls_is_the_relays_and_checks_what_sslmode_says() {
    let snakeoil = "/etc/ssl/certs/ssl-cert-snakeoil.pem";
    let dir = tempfile::tempdir().unwrap();
    let encrypted = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    let url = postgres_url();
    let localhost = url.replace("127.0.0.1", "localhost");
    // Each connects and reports whether its session is encrypted.
    for (what, url, tls) in [
        ("prefer (the default)", url.clone(), "bool:true"),
        ("require", with_params(&url, "sslmode=require"), "bool:true"),
        (
            "disable",
            with_params(&url, "sslmode=disable"),
            "bool:false",
        ),
        (
            "verify-ca with the server's root",
            with_params(&url, &format!("sslmode=verify-ca&sslrootcert={snakeoil}")),
            "bool:true",
        ),
        (
            "verify-full to the certificate's name",
            with_params(
                &localhost,
                &format!("sslmode=verify-full&sslrootcert={snakeoil}"),
            ),
            "bool:true",
        ),
    ] {
        let caps = caps(&grant("main", &url, "read-write"), dir.path()).await;
        let rows = ok(&caps, "db.query", &[("conn", "main"), ("sql", encrypted)]).await;
        assert_eq!(get(&rows, "row"), Some(tls), "{what}");
    }
    // On the server's Unix socket PostgreSQL offers no TLS: plaintext under
    // prefer, a refusal that says so where TLS is required.
    let mut pg = sqlx::PgConnection::connect(&url).await.unwrap();
    let dirs: String = sqlx::query_scalar("SHOW unix_socket_directories")
        .fetch_one(&mut pg)
        .await
        .unwrap();
    let socket_dir = dirs.split(',').next().unwrap().trim().to_string();
    let socket = format!("postgres://postgres@localhost/test?host={socket_dir}");
    let on_socket = caps(&grant("main", &socket, "read-write"), dir.path()).await;
    let rows = ok(
        &on_socket,
        "db.query",
        &[("conn", "main"), ("sql", encrypted)],
    )
    .await;
    assert_eq!(get(&rows, "row"), Some("bool:false"), "Unix socket");
    // Refused: a name the certificate does not carry, a root nobody trusts,
    // TLS required where the server offers none.
    for (what, url, why) in [
        (
            "require on a Unix socket",
            with_params(&socket, "sslmode=require"),
            "Unix socket",
        ),
        (
            "verify-full to an address the certificate does not name",
            with_params(&url, &format!("sslmode=verify-full&sslrootcert={snakeoil}")),
            "not valid for name \"127.0.0.1\"",
        ),
        (
            "verify-ca without the server's root",
            with_params(&url, "sslmode=verify-ca"),
            "UnknownIssuer",
        ),
        (
            "a root file that is not there",
            with_params(&url, "sslmode=verify-ca&sslrootcert=/nonexistent/root.pem"),
            "/nonexistent/root.pem",
        ),
    ] {
        let caps = caps(&grant("main", &url, "read-write"), dir.path()).await;
        let e = failed(&caps, "db.query", &[("conn", "main"), ("sql", "SELECT 1")]).await;
        assert!(e.contains(why), "{what}: {e}");
    }
}
