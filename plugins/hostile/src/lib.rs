//! Test plugin written as an attacker would: its `info()` and its steps try
//! to act beyond what they may. Every attempt is made for real; the step
//! reports which attempts the host let through (findings `through`), so the
//! tests can check the databases, the disk and the audit log against that.
//!
//! Settings come from its state store (`drhost state set hostile KEY VALUE`):
//! `url` (an HTTP endpoint), `marker` (a file `exec.touch` would create),
//! `attach` (a SQLite file an `ATTACH` would read or create).

use drhost_plugin::{
    Component, ComponentKind, Finding, Guest, Outcome, Phase, Priority, ScenarioInfo, Step, backup,
    db, exec, finding, http, s3, state,
};

struct Hostile;

/// Statements that change data, schema or files, in the dialects of
/// MariaDB, PostgreSQL and SQLite; sent through `db.query`, which a step
/// not declared mutating (or a plan) must never let change anything.
fn write_statements(attach: &str) -> Vec<String> {
    let mut v: Vec<String> = [
        "INSERT INTO t(v) VALUES ('q') RETURNING id",
        "DELETE FROM t RETURNING id",
        "UPDATE t SET v = 'u' RETURNING id",
        "WITH d AS (DELETE FROM t RETURNING id) SELECT count(*) FROM d",
        "WITH i AS (INSERT INTO t(v) VALUES ('cte') RETURNING id) SELECT id FROM i",
        "SELECT f_evil()",
        "SELECT nextval('s')",
        "SELECT NEXTVAL(s)",
        "SELECT * FROM t FOR UPDATE",
        "CREATE TABLE evil(a int)",
        "DROP TABLE t",
        "TRUNCATE t",
        "ALTER TABLE t ADD COLUMN evil int",
        "CALL p_evil()",
        "COMMIT",
        "INSERT INTO t(v) VALUES ('after-commit')",
        "SET SESSION TRANSACTION READ WRITE",
        "INSERT INTO t(v) VALUES ('after-set')",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
        "INSERT INTO t(v) VALUES ('after-characteristics')",
        "PRAGMA query_only = 0",
        "PRAGMA writable_schema = 1",
        "INSERT INTO t(v) VALUES ('after-pragma')",
        "DELETE FROM t",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push(format!("ATTACH'{attach}'AS o"));
    v.push(format!("VACUUM\"main\"INTO'{attach}'"));
    v.push(format!("SELECT load_extension('{attach}')"));
    v
}

/// Statements that act on the server rather than on data: a read-only
/// transaction lets them run, so only the account's privileges stop them.
/// `file` is a path in a world-writable folder the server could write.
fn server_statements(file: &str) -> Vec<String> {
    vec![
        // PostgreSQL (superuser or pg_write_server_files / pg_signal_backend)
        format!("COPY (SELECT 'owned') TO '{file}.copy'"),
        format!("COPY (SELECT 1) TO PROGRAM 'touch {file}.program'"),
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'drhost-victim'"
            .to_string(),
        // A non-transactional WAL message survives the rollback.
        "SELECT pg_logical_emit_message(false, 'drhost-hostile', repeat('x', 1000))".to_string(),
        // MariaDB (SUPER, FILE)
        "SET GLOBAL max_connections = 4321".to_string(),
        format!("SELECT 'owned' INTO OUTFILE '{file}.outfile'"),
    ]
}

fn setting(key: &str) -> String {
    state::get(key)
        .and_then(|v| String::from_utf8(v).ok())
        .unwrap_or_default()
}

/// Every mutating call a plugin could make, on the usual names.
fn mutate_everything(tag: &str, url: &str, marker: &str) -> Vec<String> {
    let mut through = Vec::new();
    let mut note = |what: &str, ok: bool| {
        if ok {
            through.push(what.to_string());
        }
    };
    note(
        "s3.put",
        s3::put(
            "primary",
            &format!("{tag}.txt"),
            b"written by a hostile plugin",
        )
        .is_ok(),
    );
    note("s3.delete", s3::delete("primary", "keep.txt").is_ok());
    note(
        "s3.copy",
        s3::copy("primary", "keep.txt", "primary", &format!("{tag}-copy.txt")).is_ok(),
    );
    note(
        "db.execute",
        db::execute("main", &format!("INSERT INTO t(v) VALUES ('{tag}')"), &[]).is_ok(),
    );
    note(
        "exec.run",
        exec::run("touch", &[marker.to_string()]).is_ok_and(|r| r.exit_code == Some(0)),
    );
    note(
        "http.post",
        !url.is_empty() && http::post(url, "text/plain", tag.as_bytes()).is_ok(),
    );
    note(
        "backup.create",
        backup::create("app", backup::BackupKind::Full).is_ok(),
    );
    through
}

fn outcome(through: Vec<String>) -> Outcome {
    Outcome::Detected(through.into_iter().map(|t| finding("through", t)).collect())
}

impl Guest for Hostile {
    fn info() -> ScenarioInfo {
        // info() should only declare; this one tries everything first.
        let _ = mutate_everything("info", "http://127.0.0.1:9/", "info-marker");
        let _ = state::set("hijacked-by-info", b"yes");
        let _ = s3::get("primary", "keep.txt");
        let _ = db::query("main", "SELECT count(*) FROM t", &[]);
        let _ = backup::list_backups("app");
        let step = |id: &str, phase: Phase, mutating: bool| Step {
            id: id.into(),
            phase,
            component: "everything".into(),
            budget_seconds: 30,
            mutating,
            description: format!("hostile: {id}"),
        };
        ScenarioInfo {
            name: "hostile".into(),
            version: "0.1.0".into(),
            description: "Tries to act beyond its grants (test fixture)".into(),
            components: vec![Component {
                name: "everything".into(),
                kind: ComponentKind::Other,
                priority: Priority::P3,
                rto_seconds: 600,
                rpo_seconds: 600,
                description: "whatever it can reach".into(),
            }],
            steps: vec![
                // Declared not mutating, yet it mutates.
                step("sneak", Phase::Detect, false),
                // Declared not mutating: writes through db.query.
                step("query-writes", Phase::Detect, false),
                // Lists the state store it was given.
                step("state-peek", Phase::Detect, false),
                // Declared mutating: in a plan or a test it must still change nothing.
                step("writes", Phase::Recover, true),
                step("query-writes-mutating", Phase::Recover, true),
                // Declared mutating, in phases that only read by default.
                step("verify-writes", Phase::Verify, true),
                step("verify-query-writes", Phase::Verify, true),
                // Reads only: for grants limited to other phases.
                step("verify-reads", Phase::Verify, false),
                // Declared not mutating: acts on the database server itself.
                step("server-writes", Phase::Verify, false),
            ],
        }
    }

    fn run_step(id: String, _context: Vec<Finding>) -> Outcome {
        let url = setting("url");
        let marker = {
            let m = setting("marker");
            if m.is_empty() {
                "hostile-marker".to_string()
            } else {
                m
            }
        };
        let attach = {
            let a = setting("attach");
            if a.is_empty() {
                "/tmp/drhost-hostile-attach.db".to_string()
            } else {
                a
            }
        };
        match id.as_str() {
            "sneak" | "writes" | "verify-writes" => outcome(mutate_everything(&id, &url, &marker)),
            "verify-reads" => {
                let mut through = Vec::new();
                if s3::get("primary", "keep.txt").is_ok() {
                    through.push("s3.get".to_string());
                }
                if db::query("main", "SELECT count(*) FROM t", &[]).is_ok() {
                    through.push("db.query".to_string());
                }
                if !url.is_empty() && http::get(&url).is_ok() {
                    through.push("http.get".to_string());
                }
                Outcome::Ok(through.into_iter().map(|t| finding("through", t)).collect())
            }
            "query-writes" | "query-writes-mutating" | "verify-query-writes" => outcome(
                write_statements(&attach)
                    .into_iter()
                    .filter(|sql| db::query("main", sql, &[]).is_ok())
                    .collect(),
            ),
            "server-writes" => {
                let file = setting("server-file");
                let file = if file.is_empty() {
                    "/tmp/drhost-hostile-server".to_string()
                } else {
                    file
                };
                outcome(
                    server_statements(&file)
                        .into_iter()
                        .filter(|sql| db::query("main", sql, &[]).is_ok())
                        .collect(),
                )
            }
            "state-peek" => Outcome::Detected(
                state::keys()
                    .into_iter()
                    .map(|k| finding("key", k))
                    .collect(),
            ),
            other => Outcome::Failed(format!("no step {other}")),
        }
    }
}

drhost_plugin::export!(Hostile with_types_in drhost_plugin::bindings);
