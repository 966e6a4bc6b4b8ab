//! The host's memory stays bounded whatever a plugin's query returns: one
//! huge value on each engine (a 400 MB PostgreSQL `repeat`, in plaintext
//! and over TLS, a 300 MB
//! MariaDB row of BLOB columns, an 800 MB SQLite `zeroblob`) is refused
//! before the host holds it, and the host's peak resident memory grows by
//! far less than the value.
//!
//! One test in its own binary: the peak is the process's, so nothing else
//! may run beside it.

mod common;

use common::*;
use sqlx::{Connection, Executor};

/// A field of /proc/self/status, in KiB.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"))
}

/// Far below each value, far above what the relay lets through
/// (2 × 8 MiB + 4 MiB per answer) and the engine's own buffers.
const GROWTH_KIB: u64 = 128 << 10;

#[tokio::test]
async fn host_memory_stays_bounded_whatever_a_query_returns() {
    let dir = tempfile::tempdir().unwrap();
    let table = format!("drhost_mem_{}", unique().replace('-', "_"));
    let mut my = sqlx::MySqlConnection::connect(&mariadb_url())
        .await
        .unwrap();
    my.execute(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {table} (b LONGBLOB); INSERT INTO {table} VALUES (REPEAT('x', 15000000))"
    )))
    .await
    .unwrap();
    let lite = format!("sqlite://{}?mode=rwc", dir.path().join("m.db").display());
    let policy = format!(
        "[db.my]\nurl = \"{}\"\naccess = \"read-write\"\n\
         [db.pg]\nurl = \"{}?sslmode=disable\"\naccess = \"read-write\"\n\
         [db.pgtls]\nurl = \"{}?sslmode=require\"\naccess = \"read-write\"\n\
         [db.lite]\nurl = \"{lite}\"\naccess = \"read-write\"\n",
        mariadb_url(),
        postgres_url(),
        postgres_url()
    );
    let caps = caps(&policy, dir.path()).await;
    // Connected and warmed up: what follows is the huge answers alone.
    for conn in ["my", "pg", "pgtls", "lite"] {
        ok(&caps, "db.query", &[("conn", conn), ("sql", "SELECT 1")]).await;
    }
    let twenty = vec!["b"; 20].join(", ");
    let huge = [
        ("pg", "SELECT repeat('x', 400000000)".to_string()),
        // Inside TLS too: the relay ends it and reads the headers.
        ("pgtls", "SELECT repeat('x', 400000000)".to_string()),
        ("my", format!("SELECT {twenty} FROM {table}")),
        ("lite", "SELECT zeroblob(800000000)".to_string()),
    ];
    for (conn, sql) in &huge {
        // Linux 4.0+: resets the peak to what is resident now.
        std::fs::write("/proc/self/clear_refs", "5").unwrap();
        let base = status_kib("VmRSS");
        let why = failed(&caps, "db.query", &[("conn", conn), ("sql", sql)]).await;
        assert!(why.contains("max-guest-bytes"), "{conn}: {why}");
        let grew = status_kib("VmHWM").saturating_sub(base);
        eprintln!("{conn}: the peak grew by {} KiB", grew);
        assert!(
            grew < GROWTH_KIB,
            "{conn}: the host's peak memory grew by {} MiB ({why})",
            grew >> 10
        );
    }
    // The connections still work after the cut: the pool replaces the closed one.
    for conn in ["my", "pg", "pgtls"] {
        ok(&caps, "db.query", &[("conn", conn), ("sql", "SELECT 1")]).await;
    }
    my.execute(sqlx::AssertSqlSafe(format!("DROP TABLE {table}")))
        .await
        .unwrap();
}
