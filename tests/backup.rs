//! The backup engine against real parts: SQLite files, the MariaDB and
//! PostgreSQL servers, the S3 test server, and the real `age`, `zstd`,
//! `mariadb` and `pg_restore` tools for restores by hand.

mod common;

use common::*;
use drhost::backup::config::Config;
use drhost::backup::manifest::{Kind, Manifest};
use drhost::backup::{Backups, Status, VerifyReport};
use sqlx::{Connection, Executor};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A directory with an age key pair and a drhost.toml built from `body`.
struct Setup {
    dir: tempfile::TempDir,
    recipient: String,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (secret, recipient) = drhost::backup::keygen();
        std::fs::write(dir.path().join("key.txt"), format!("{secret}\n")).unwrap();
        Setup { dir, recipient }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn config(&self, body: &str) -> Config {
        // Top-level settings in `body` must come before the first table.
        let split = body
            .find("\n[")
            .map(|i| i + 1)
            .filter(|_| !body.starts_with('['))
            .unwrap_or(0);
        let (top, tables) = body.split_at(split);
        let text = format!(
            "{top}[keys]\nrecipients = [\"{}\"]\nidentity = \"key.txt\"\n{tables}",
            self.recipient
        );
        std::fs::write(self.path("drhost.toml"), &text).unwrap();
        Config::load(&self.path("drhost.toml")).unwrap()
    }

    async fn backups(&self, body: &str) -> Backups {
        Backups::open(self.config(body), self.path("state"))
            .await
            .unwrap()
    }
}

const TWO_LOCAL_TARGETS: &str =
    "[targets.primary]\npath = \"primary\"\n[targets.local]\npath = \"local\"\n";

fn sqlite_source(setup: &Setup, rows: u32) -> String {
    let db = setup.path("app.db");
    let out = Command::new("sqlite3")
        .arg(&db)
        .arg(format!(
            "PRAGMA journal_mode=WAL; CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT);\
             CREATE TABLE orders(id INTEGER PRIMARY KEY, user INT, total REAL);\
             WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<{rows}) \
             INSERT INTO users SELECT x, 'user' || x FROM c;\
             INSERT INTO orders SELECT id, id, id * 1.5 FROM users;"
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    "[sources.app]\nkind = \"sqlite\"\npath = \"app.db\"\n".into()
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

fn status(r: &VerifyReport, check: &str) -> (Status, String) {
    let c = r.checks.iter().find(|c| c.name == check).unwrap();
    (c.status, c.detail.clone())
}

fn assert_all_pass(r: &VerifyReport) {
    for c in &r.checks {
        assert_eq!(c.status, Status::Pass, "{}: {}", c.name, c.detail);
    }
    assert_eq!(r.checks.len(), drhost::backup::CHECKS.len());
}

/// Runs a shell pipeline and returns its stdout.
fn sh(script: &str) -> String {
    let out = Command::new("bash")
        .arg("-o")
        .arg("pipefail")
        .arg("-c")
        .arg(script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test]
async fn a_sqlite_backup_reaches_both_targets_verifies_and_restores_over_damage() {
    let s = Setup::new();
    let src = sqlite_source(&s, 20_000);
    let b = s.backups(&format!("{src}{TWO_LOCAL_TARGETS}")).await;
    let report = b.create("app", Kind::Full).await.unwrap();
    assert!(report.complete());
    let m = &report.manifest;
    assert_eq!(m.tables.get("users"), Some(&20_000));
    assert_eq!(m.pipeline, ["sqlite", "zstd", "age"]);
    for target in ["primary", "local"] {
        let stored = std::fs::read(s.path(target).join(&m.object)).unwrap();
        assert!(stored.starts_with(b"age-encryption.org/v1\n"));
        assert_eq!(drhost::digest::sha256_hex(&stored), m.ciphertext.sha256);
        let on_disk: Manifest = Manifest::parse(
            &std::fs::read(s.path(target).join(Manifest::key("app", &m.id))).unwrap(),
        )
        .unwrap();
        assert_eq!(&on_disk, m);
    }

    let reports = b.verify("app", "latest", &[]).await.unwrap();
    assert_eq!(reports.len(), 2);
    reports.iter().for_each(assert_all_pass);
    assert!(drhost::backup::identical(&reports).is_ok());

    let db = s.path("app.db");
    sqlite3(&db, "DROP TABLE users; DELETE FROM orders WHERE id > 10;");
    let r = b
        .restore("app", "latest", "app", Some("primary"), None)
        .await
        .unwrap();
    assert_eq!(r.rows, 40_000);
    assert_eq!(
        sqlite3(
            &db,
            "SELECT count(*) FROM users; SELECT count(*) FROM orders;"
        ),
        "20000\n20000"
    );
    assert_eq!(sqlite3(&db, "PRAGMA integrity_check"), "ok");
    assert!(!s.path("app.db.drhost-staging").exists());
}

#[tokio::test]
async fn plaintext_copies_stay_private_and_a_killed_runs_leftovers_are_swept() {
    use std::os::unix::fs::PermissionsExt;
    let s = Setup::new();
    let src = sqlite_source(&s, 100);
    let b = s.backups(&format!("{src}{TWO_LOCAL_TARGETS}")).await;
    // What a backup killed a day ago left: a whole plaintext snapshot.
    let work = s.path("state").join("backup-work");
    std::fs::create_dir_all(&work).unwrap();
    let left = work.join("snapshot-verify_deadbeef.sqlite");
    std::fs::copy(s.path("app.db"), &left).unwrap();
    let two_days_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(48 * 3600);
    std::fs::File::options()
        .write(true)
        .open(&left)
        .unwrap()
        .set_modified(two_days_ago)
        .unwrap();
    let recent = work.join("snapshot-verify_cafebabe.sqlite");
    std::fs::copy(s.path("app.db"), &recent).unwrap();

    assert!(b.create("app", Kind::Full).await.unwrap().complete());
    let mode = std::fs::metadata(&work).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "{mode:o}");
    assert!(!left.exists(), "the old leftover is swept");
    assert!(
        recent.exists(),
        "a copy that may belong to a live run stays"
    );
}

#[tokio::test]
async fn a_sqlite_backup_restores_by_hand_with_age_and_zstd() {
    let s = Setup::new();
    let src = sqlite_source(&s, 1_000);
    let b = s.backups(&format!("{src}{TWO_LOCAL_TARGETS}")).await;
    let m = b.create("app", Kind::Full).await.unwrap().manifest;
    let object = s.path("local").join(&m.object);
    let out = s.path("by-hand.db");
    sh(&format!(
        "age -d -i {} {} | zstd -d > {}",
        s.path("key.txt").display(),
        object.display(),
        out.display()
    ));
    assert_eq!(
        drhost::digest::sha256_file(&out).unwrap(),
        m.plaintext.sha256
    );
    assert_eq!(sqlite3(&out, "SELECT count(*) FROM orders"), "1000");
}

/// Decrypts a stored backup, changes its plaintext with `sql`, and stores it
/// again with a manifest whose digests match: the damage is then only in
/// the content, which points 8 and 9 must catch.
fn reseal(s: &Setup, target: &str, m: &Manifest, sql: &str) {
    let object = s.path(target).join(&m.object);
    let plain = s.path("plain.db");
    sh(&format!(
        "age -d -i {} {} | zstd -d > {}",
        s.path("key.txt").display(),
        object.display(),
        plain.display()
    ));
    sqlite3(&plain, sql);
    sh(&format!(
        "zstd -q -c {} | age -r {} > {}",
        plain.display(),
        s.recipient,
        object.display()
    ));
    let mut changed = m.clone();
    changed.plaintext.size = std::fs::metadata(&plain).unwrap().len();
    changed.plaintext.sha256 = drhost::digest::sha256_file(&plain).unwrap();
    changed.ciphertext.size = std::fs::metadata(&object).unwrap().len();
    changed.ciphertext.sha256 = drhost::digest::sha256_file(&object).unwrap();
    std::fs::write(
        s.path(target).join(Manifest::key("app", &m.id)),
        serde_json::to_vec(&changed).unwrap(),
    )
    .unwrap();
}

#[tokio::test]
async fn verification_names_each_kind_of_damage() {
    let s = Setup::new();
    let src = sqlite_source(&s, 5_000);
    let targets = "[targets.a]\npath = \"a\"\n[targets.b]\npath = \"b\"\n[targets.c]\npath = \"c\"\n\
                   [targets.d]\npath = \"d\"\n[targets.e]\npath = \"e\"\n[targets.f]\npath = \"f\"\n";
    let b = s.backups(&format!("{src}{targets}")).await;
    let m = b.create("app", Kind::Full).await.unwrap().manifest;
    let object = |t: &str| s.path(t).join(&m.object);
    // Verified once on c, before the damage: the mark goes when it fails.
    assert!(b.verify("app", &m.id, &["c".into()]).await.unwrap()[0].passed());
    assert!(b.is_verified("c", "app", &m.id));

    // a: missing object. b: truncated. c: one flipped byte. d: a table dropped.
    // e: rows missing. f: intact, but read with the wrong key.
    std::fs::remove_file(object("a")).unwrap();
    let bytes = std::fs::read(object("b")).unwrap();
    std::fs::write(object("b"), &bytes[..bytes.len() / 2]).unwrap();
    let mut flipped = bytes.clone();
    let at = flipped.len() / 2;
    flipped[at] ^= 0x01;
    std::fs::write(object("c"), &flipped).unwrap();
    reseal(&s, "d", &m, "DROP TABLE users;");
    reseal(&s, "e", &m, "DELETE FROM orders WHERE id % 2 = 0;");

    let (b_ref, id) = (&b, m.id.as_str());
    let check = |t: &str| {
        let t = t.to_string();
        async move { b_ref.verify("app", id, &[t]).await.unwrap().remove(0) }
    };
    let r = check("a").await;
    assert_eq!(status(&r, "file exists").0, Status::Fail);
    assert_eq!(status(&r, "restorable").0, Status::Skip);

    let r = check("b").await;
    let (st, detail) = status(&r, "size reasonable");
    assert_eq!(st, Status::Fail, "{detail}");
    assert!(detail.contains("the manifest says"), "{detail}");
    assert_eq!(status(&r, "downloadable").0, Status::Fail);
    assert_eq!(status(&r, "extractable").0, Status::Fail);

    let r = check("c").await;
    assert!(!b.is_verified("c", "app", &m.id));
    assert_eq!(status(&r, "size reasonable").0, Status::Pass);
    let (st, detail) = status(&r, "downloadable");
    assert_eq!(st, Status::Fail);
    assert!(detail.contains("sha256"), "{detail}");
    assert_eq!(status(&r, "extractable").0, Status::Fail);
    assert_eq!(status(&r, "no corruption detected").0, Status::Skip);

    let r = check("d").await;
    assert_eq!(status(&r, "extractable").0, Status::Pass);
    assert_eq!(status(&r, "restorable").0, Status::Pass);
    let (st, detail) = status(&r, "all tables present");
    assert_eq!(st, Status::Fail);
    assert!(detail.contains("users"), "{detail}");
    assert_eq!(status(&r, "no corruption detected").0, Status::Fail);

    let r = check("e").await;
    assert_eq!(status(&r, "all tables present").0, Status::Pass);
    let (st, detail) = status(&r, "all records present");
    assert_eq!(st, Status::Fail);
    assert!(detail.contains("orders: 2500 of 5000"), "{detail}");

    // The wrong key: another identity in the configuration.
    let (other, _) = drhost::backup::keygen();
    std::fs::write(s.path("key.txt"), other).unwrap();
    let b = s.backups(&format!("{src}{targets}")).await;
    let r = b
        .verify("app", &m.id, &["f".into()])
        .await
        .unwrap()
        .remove(0);
    assert_eq!(status(&r, "downloadable").0, Status::Pass);
    let (st, detail) = status(&r, "extractable");
    assert_eq!(st, Status::Fail);
    assert!(detail.contains("does not match any recipient"), "{detail}");

    // No identity at all: the object cannot be decrypted here, which is
    // point 5's failure, not point 4's.
    let text = std::fs::read_to_string(s.path("drhost.toml")).unwrap();
    std::fs::write(
        s.path("drhost.toml"),
        text.replace("identity = \"key.txt\"\n", ""),
    )
    .unwrap();
    let b = Backups::open(
        Config::load(&s.path("drhost.toml")).unwrap(),
        s.path("state"),
    )
    .await
    .unwrap();
    let r = b
        .verify("app", &m.id, &["f".into()])
        .await
        .unwrap()
        .remove(0);
    assert_eq!(status(&r, "downloadable").0, Status::Skip);
    let (st, detail) = status(&r, "extractable");
    assert_eq!(st, Status::Fail);
    assert!(detail.contains("set [keys] identity"), "{detail}");
}

#[tokio::test]
async fn a_backup_far_smaller_than_its_history_is_flagged() {
    let s = Setup::new();
    let src = sqlite_source(&s, 20_000);
    let b = s
        .backups(&format!("{src}[targets.t]\npath = \"t\"\n"))
        .await;
    b.create("app", Kind::Full).await.unwrap();
    sqlite3(
        &s.path("app.db"),
        "DELETE FROM users WHERE id > 100; DELETE FROM orders; VACUUM;",
    );
    let m = b.create("app", Kind::Full).await.unwrap().manifest;
    let r = b.verify("app", &m.id, &[]).await.unwrap().remove(0);
    let (st, detail) = status(&r, "size reasonable");
    assert_eq!(st, Status::Fail);
    assert!(detail.contains("far smaller"), "{detail}");
    // Everything else about it is sound.
    assert_eq!(status(&r, "all records present").0, Status::Pass);
}

#[tokio::test]
async fn a_restore_from_a_damaged_backup_leaves_the_target_as_it_was() {
    let s = Setup::new();
    let src = sqlite_source(&s, 3_000);
    let b = s
        .backups(&format!("{src}[targets.t]\npath = \"t\"\n"))
        .await;
    let m = b.create("app", Kind::Full).await.unwrap().manifest;
    let object = s.path("t").join(&m.object);
    let mut bytes = std::fs::read(&object).unwrap();
    let at = bytes.len() - 100;
    bytes[at] ^= 0x80;
    std::fs::write(&object, &bytes).unwrap();
    let db = s.path("app.db");
    sqlite3(
        &db,
        "INSERT INTO users VALUES (99999, 'written after the backup');",
    );
    let before = sqlite3(&db, "SELECT count(*), max(id) FROM users");
    let e = b
        .restore("app", "latest", "app", None, None)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("stopped before touching"), "{e}");
    assert_eq!(sqlite3(&db, "SELECT count(*), max(id) FROM users"), before);
    assert!(
        !s.path("app.db.drhost-staging").exists(),
        "staging copy removed"
    );
}

#[tokio::test]
async fn unencrypted_backups_need_an_explicit_setting_and_are_reported_as_such() {
    let s = Setup::new();
    sqlite_source(&s, 10);
    let body = "[sources.app]\nkind = \"sqlite\"\npath = \"app.db\"\n[targets.t]\npath = \"t\"\n";
    std::fs::write(s.path("drhost.toml"), body).unwrap();
    let e = Config::load(&s.path("drhost.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("encryption = \"none\""), "{e}");
    std::fs::write(
        s.path("drhost.toml"),
        format!("encryption = \"none\"\n{body}"),
    )
    .unwrap();
    let b = Backups::open(
        Config::load(&s.path("drhost.toml")).unwrap(),
        s.path("state"),
    )
    .await
    .unwrap();
    let m = b.create("app", Kind::Full).await.unwrap().manifest;
    assert_eq!(m.pipeline, ["sqlite", "zstd"]);
    assert!(m.object.ends_with(".sqlite.zst"));
    let r = b.verify("app", "latest", &[]).await.unwrap().remove(0);
    let (st, detail) = status(&r, "encrypted");
    assert_eq!(st, Status::Fail);
    assert!(detail.contains("not encrypted"), "{detail}");
    assert_eq!(status(&r, "all records present").0, Status::Pass);
    // Point 10 does not claim an authentication that never happened.
    let (_, detail) = status(&r, "no corruption detected");
    assert!(!detail.contains("authenticated"), "{detail}");
}

#[tokio::test]
async fn prune_keeps_recent_backups_and_the_newest_verified_full() {
    let s = Setup::new();
    let src = sqlite_source(&s, 100);
    let b = s
        .backups(&format!(
            "{src}[targets.t]\npath = \"t\"\n[retention]\nkeep-days = 30\nkeep-last = 1\n"
        ))
        .await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(b.create("app", Kind::Full).await.unwrap().manifest.id);
    }
    // Only the second one is verified.
    assert!(b.verify("app", &ids[1], &[]).await.unwrap()[0].passed());
    let later = chrono::Utc::now() + chrono::Duration::days(40);

    let dry = b.prune_at(later, true).await.unwrap();
    let deleted: Vec<&str> = dry.deleted.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(deleted, [ids[0].as_str(), ids[2].as_str()]);
    assert_eq!(
        b.list(Some("app")).await.unwrap().len(),
        4,
        "a dry run deletes nothing"
    );

    let done = b.prune_at(later, false).await.unwrap();
    assert_eq!(done.deleted.len(), 2);
    let left: Vec<String> = b
        .list(Some("app"))
        .await
        .unwrap()
        .into_iter()
        .map(|(_, m)| m.id)
        .collect();
    assert_eq!(left, [ids[1].clone(), ids[3].clone()]);
    assert!(
        !s.path("t")
            .join(format!("app/{}.sqlite.zst.age", ids[0]))
            .exists()
    );

    // Nothing is old yet today.
    assert!(b.prune(false).await.unwrap().deleted.is_empty());
}

// ---- MariaDB ----

async fn mariadb_database(rows: u32) -> (String, String) {
    let name = format!("drhost_bk_{}", unique().replace('-', "_"));
    let mut c = sqlx::MySqlConnection::connect(&mariadb_url())
        .await
        .unwrap();
    c.execute(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name}; CREATE DATABASE {name}; USE {name};\
         CREATE TABLE items (id INT PRIMARY KEY, label VARCHAR(200), note TEXT);\
         INSERT INTO items SELECT seq, CONCAT('item (', seq, ')'), IF(seq % 7 = 0, NULL, CONCAT(SHA2(seq, 256), ' it''s; x')) FROM seq_1_to_{rows};\
         CREATE TABLE empty_one (id INT);"
    )))
    .await
    .unwrap();
    let url = mariadb_url();
    let base = url.rsplit_once('/').unwrap().0;
    (name.clone(), format!("{base}/{name}"))
}

async fn mariadb_scalar(db: &str, sql: &str) -> i64 {
    let base = mariadb_url();
    let base = base.rsplit_once('/').unwrap().0;
    let mut c = sqlx::MySqlConnection::connect(&format!("{base}/{db}"))
        .await
        .unwrap();
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(&mut c)
        .await
        .unwrap()
}

fn s3_target(name: &str, bucket: &str, endpoint: &str) -> String {
    format!(
        "[targets.{name}]\nbucket = \"{bucket}\"\nprefix = \"db/\"\nendpoint = \"{endpoint}\"\npath-style = true\n\
         region = \"us-east-1\"\naccess-key-id = \"test\"\nsecret-access-key = \"test\"\n"
    )
}

async fn new_bucket() -> String {
    let bucket = format!("drhost-bk-{}", unique());
    s3_admin()
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    bucket
}

#[tokio::test]
async fn a_mariadb_backup_goes_to_s3_and_a_local_copy_and_restores_identically() {
    let (db, url) = mariadb_database(20_000).await;
    let bucket = new_bucket().await;
    let s = Setup::new();
    let body = format!(
        "[sources.shop]\nkind = \"mariadb\"\nurl = \"{url}\"\n{}[targets.local]\npath = \"local\"\n",
        s3_target("primary", &bucket, &s3_endpoint())
    );
    let b = s.backups(&body).await;
    let report = b.create("shop", Kind::Full).await.unwrap();
    assert!(report.complete(), "{:?}", report.targets);
    let m = &report.manifest;
    assert_eq!(m.tables.get("items"), Some(&20_000));
    assert_eq!(m.tables.get("empty_one"), Some(&0));
    assert!(m.tools.contains_key("mariadb-dump"));
    let listed = s3_admin()
        .list_objects_v2()
        .bucket(&bucket)
        .prefix("db/shop/")
        .send()
        .await
        .unwrap();
    assert_eq!(
        listed.contents().len(),
        3,
        "object, manifest and signature under the prefix"
    );

    let reports = b.verify("shop", &m.id, &[]).await.unwrap();
    reports.iter().for_each(assert_all_pass);
    assert!(drhost::backup::identical(&reports).is_ok());

    // The disaster: a table dropped and rows lost; restore from S3.
    mariadb_scalar(&db, "SELECT 1").await;
    let mut c = sqlx::MySqlConnection::connect(&url).await.unwrap();
    c.execute("DROP TABLE empty_one; DELETE FROM items WHERE id > 10")
        .await
        .unwrap();
    let r = b
        .restore("shop", "latest", "shop", Some("primary"), None)
        .await
        .unwrap();
    assert_eq!(r.rows, 20_000);
    assert_eq!(
        mariadb_scalar(&db, "SELECT COUNT(*) FROM items").await,
        20_000
    );
    assert_eq!(
        mariadb_scalar(&db, "SELECT COUNT(*) FROM empty_one").await,
        0
    );
    assert_eq!(
        mariadb_scalar(
            &db,
            &format!(
                "SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name LIKE '{db}_drhost%'"
            )
        )
        .await,
        0,
        "no staging or old databases are left behind"
    );
}

#[tokio::test]
async fn a_mariadb_backup_restores_by_hand_with_age_zstd_and_the_mariadb_client() {
    let (_db, url) = mariadb_database(500).await;
    let s = Setup::new();
    let b = s
        .backups(&format!("[sources.shop]\nkind = \"mariadb\"\nurl = \"{url}\"\n[targets.local]\npath = \"local\"\n"))
        .await;
    let m = b.create("shop", Kind::Full).await.unwrap().manifest;
    let (name, _) = mariadb_database(0).await;
    let object = s.path("local").join(&m.object);
    sh(&format!(
        "age -d -i {} {} | zstd -d | mariadb -h 127.0.0.1 -P 3306 -u root {name}",
        s.path("key.txt").display(),
        object.display()
    ));
    assert_eq!(
        mariadb_scalar(&name, "SELECT COUNT(*) FROM items").await,
        500
    );
}

#[tokio::test]
async fn a_dump_cut_off_mid_stream_leaves_no_backup_and_the_next_one_succeeds() {
    let (db, url) = mariadb_database(60_000).await;
    let proxy = vanishing_proxy("127.0.0.1:3306".into(), 1 << 20).await;
    let s = Setup::new();
    let proxied = url.replace("127.0.0.1:3306", &proxy);
    let body =
        |u: &str| format!("[sources.shop]\nkind = \"mariadb\"\nurl = \"{u}\"\n{TWO_LOCAL_TARGETS}");
    let b = s.backups(&body(&proxied)).await;
    let e = b.create("shop", Kind::Full).await.unwrap_err().to_string();
    assert!(e.contains("mariadb-dump failed"), "{e}");
    assert!(
        b.list(Some("shop")).await.unwrap().is_empty(),
        "no manifest anywhere"
    );
    for t in ["primary", "local"] {
        let leftovers: Vec<_> = walk(&s.path(t));
        assert!(leftovers.is_empty(), "{t}: {leftovers:?}");
    }
    let b = s.backups(&body(&url)).await;
    let m = b.create("shop", Kind::Full).await.unwrap().manifest;
    assert_eq!(m.tables["items"], 60_000);
    let _ = db;
}

#[tokio::test]
async fn an_s3_target_vanishing_mid_upload_gets_no_manifest_while_the_other_completes() {
    let (_db, url) = mariadb_database(60_000).await;
    let bucket = new_bucket().await;
    let proxy = vanishing_proxy(s3_endpoint().trim_start_matches("http://").into(), 1 << 20).await;
    let s = Setup::new();
    let body = format!(
        "zstd-level = 1\n[sources.shop]\nkind = \"mariadb\"\nurl = \"{url}\"\n{}[targets.local]\npath = \"local\"\n",
        s3_target("primary", &bucket, &format!("http://{proxy}"))
    );
    let b = s.backups(&body).await;
    let report = b.create("shop", Kind::Full).await.unwrap();
    let primary = report
        .targets
        .iter()
        .find(|t| t.target == "primary")
        .unwrap();
    assert!(primary.error.is_some(), "the cut target failed");
    let local = report.targets.iter().find(|t| t.target == "local").unwrap();
    assert!(local.error.is_none(), "{:?}", local.error);
    let listed = s3_admin()
        .list_objects_v2()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    assert!(
        listed.contents().is_empty(),
        "nothing visible on the cut target: {:?}",
        listed.contents()
    );
    let uploads = s3_admin()
        .list_multipart_uploads()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    assert!(
        uploads.uploads().is_empty(),
        "the multipart upload was aborted"
    );
    let r = b
        .verify("shop", "latest", &["local".into()])
        .await
        .unwrap()
        .remove(0);
    assert_all_pass(&r);
}

#[tokio::test]
async fn a_dead_target_or_a_damaged_manifest_blocks_only_itself() {
    // An S3 endpoint nobody listens on, named first so it is tried first.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let s = Setup::new();
    let src = sqlite_source(&s, 100);
    let body = format!(
        "{src}{}[targets.local]\npath = \"local\"\n",
        s3_target("adead", "nowhere", &format!("http://127.0.0.1:{dead}"))
    );
    let b = s.backups(&body).await;
    let report = b.create("app", Kind::Full).await.unwrap();
    let local = report.targets.iter().find(|t| t.target == "local").unwrap();
    assert!(local.error.is_none(), "{:?}", local.error);
    let id = report.manifest.id.clone();

    // list: the local backup, and the dead target named as a problem.
    let drhost::backup::Listing {
        backups: listed,
        problems,
        orphans,
    } = b.list_report(Some("app")).await.unwrap();
    assert!(orphans.is_empty(), "{orphans:?}");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].0, "local");
    assert!(problems.iter().any(|p| p.contains("adead")), "{problems:?}");

    // verify: the dead target fails its own report only.
    let reports = b.verify("app", "latest", &[]).await.unwrap();
    let by = |t: &str| reports.iter().find(|r| r.target == t).unwrap();
    assert!(!by("adead").passed());
    assert!(by("local").passed(), "{:?}", by("local").checks);

    // restore: falls back to the target that answers.
    sqlite3(&s.path("app.db"), "DELETE FROM users;");
    b.restore("app", "latest", "app", None, None).await.unwrap();
    assert_eq!(
        sqlite3(&s.path("app.db"), "SELECT count(*) FROM users"),
        "100"
    );

    // prune: the local target is pruned, the dead one reported.
    let later = chrono::Utc::now() + chrono::Duration::days(400);
    let pruned = b.prune_at(later, true).await.unwrap();
    assert!(
        pruned.problems.iter().any(|p| p.contains("adead")),
        "{:?}",
        pruned.problems
    );
    assert!(
        pruned
            .kept
            .iter()
            .any(|p| p.target == "local" && p.id == id)
    );

    // A damaged manifest hides its own backup, not the others, and makes
    // prune leave unreferenced objects alone.
    let second = b.create("app", Kind::Full).await.unwrap().manifest;
    let manifest = s.path("local").join(Manifest::key("app", &second.id));
    std::fs::write(&manifest, b"{ not json").unwrap();
    let drhost::backup::Listing {
        backups: listed,
        problems,
        ..
    } = b.list_report(Some("app")).await.unwrap();
    let ids: Vec<&str> = listed.iter().map(|(_, m)| m.id.as_str()).collect();
    assert_eq!(ids, [id.as_str()]);
    assert!(
        problems.iter().any(|p| p.contains(&second.id)),
        "{problems:?}"
    );
    let pruned = b.prune_at(later, false).await.unwrap();
    assert!(
        pruned.deleted.iter().all(|p| !p.id.contains(&second.id)),
        "{:?}",
        pruned.deleted
    );
    assert!(s.path("local").join(&second.object).exists());
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

// ---- PostgreSQL ----

async fn postgres_database(rows: u32) -> (String, String) {
    let name = format!("drhost_bk_{}", unique().replace('-', "_"));
    let admin = postgres_url();
    let base = admin.rsplit_once('/').unwrap().0.to_string();
    let mut c = sqlx::PgConnection::connect(&format!("{base}/postgres"))
        .await
        .unwrap();
    c.execute(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .await
    .unwrap();
    c.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .unwrap();
    let url = format!("{base}/{name}");
    let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
    c.execute(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE items (id INT PRIMARY KEY, label TEXT);\
         INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, {rows}) g;\
         CREATE SCHEMA audit; CREATE TABLE audit.events (at TIMESTAMPTZ DEFAULT now(), what TEXT);\
         INSERT INTO audit.events(what) SELECT 'e' || g FROM generate_series(1, 10) g;"
    )))
    .await
    .unwrap();
    (name, url)
}

async fn pg_scalar(url: &str, sql: &str) -> i64 {
    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(&mut c)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_postgres_backup_counts_rows_in_its_snapshot_verifies_and_restores() {
    let (_name, url) = postgres_database(10_000).await;
    let s = Setup::new();
    let b = s
        .backups(&format!(
            "[sources.pg]\nkind = \"postgres\"\nurl = \"{url}\"\n{TWO_LOCAL_TARGETS}"
        ))
        .await;
    let m = b.create("pg", Kind::Full).await.unwrap().manifest;
    assert_eq!(m.tables.get("public.items"), Some(&10_000));
    assert_eq!(m.tables.get("audit.events"), Some(&10));
    assert!(
        m.covers
            .position
            .as_deref()
            .is_some_and(|p| p.starts_with("lsn "))
    );
    let reports = b.verify("pg", "latest", &[]).await.unwrap();
    reports.iter().for_each(assert_all_pass);

    let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
    c.execute("DELETE FROM items WHERE id > 5; DROP SCHEMA audit CASCADE")
        .await
        .unwrap();
    drop(c);
    b.restore("pg", "latest", "pg", None, None).await.unwrap();
    assert_eq!(pg_scalar(&url, "SELECT count(*) FROM items").await, 10_000);
    assert_eq!(
        pg_scalar(&url, "SELECT count(*) FROM audit.events").await,
        10
    );
}

#[tokio::test]
async fn a_postgres_backup_restores_by_hand_with_age_zstd_and_pg_restore() {
    let (_name, url) = postgres_database(300).await;
    let s = Setup::new();
    let b = s
        .backups(&format!("[sources.pg]\nkind = \"postgres\"\nurl = \"{url}\"\n[targets.local]\npath = \"local\"\n"))
        .await;
    let m = b.create("pg", Kind::Full).await.unwrap().manifest;
    let (empty, empty_url) = {
        let (n, u) = postgres_database(0).await;
        let mut c = sqlx::PgConnection::connect(&u).await.unwrap();
        c.execute("DROP TABLE items; DROP SCHEMA audit CASCADE")
            .await
            .unwrap();
        (n, u)
    };
    sh(&format!(
        "age -d -i {} {} | zstd -d | pg_restore --no-owner -h 127.0.0.1 -U postgres -d {empty}",
        s.path("key.txt").display(),
        s.path("local").join(&m.object).display()
    ));
    assert_eq!(
        pg_scalar(&empty_url, "SELECT count(*) FROM items").await,
        300
    );
}

#[test]
fn the_cli_backs_up_verifies_and_restores_with_a_printed_checklist() {
    let s = Setup::new();
    let src = sqlite_source(&s, 2_000);
    s.config(&format!("{src}{TWO_LOCAL_TARGETS}"));
    let drhost = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_drhost"))
            .args(args)
            .arg("--config")
            .arg(s.path("drhost.toml"))
            .env("DRHOST_STATE_DIR", s.path("state"))
            .output()
            .unwrap()
    };
    let out = drhost(&["backup", "create", "app"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = drhost(&["backup", "verify", "latest", "--all-targets"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for (i, name) in drhost::backup::CHECKS.iter().enumerate() {
        assert!(
            text.contains(&format!("[PASS] {:>2}. {name}", i + 1)),
            "{text}"
        );
    }
    assert!(
        text.contains("2 targets restore to identical content"),
        "{text}"
    );
    let out = drhost(&["backup", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    sqlite3(&s.path("app.db"), "DELETE FROM users");
    let out = drhost(&["backup", "restore", "latest", "--to", "app"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        sqlite3(&s.path("app.db"), "SELECT count(*) FROM users"),
        "2000"
    );
    let out = drhost(&[
        "backup",
        "restore",
        "latest",
        "--to",
        "app",
        "--point-in-time",
        "2099-01-01T00:00:00Z",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("point-in-time recovery replays binary logs: MariaDB sources only"),
        "{err}"
    );
}

// ---- The backup capability, driven by a plugin ----

const BACKUP_GRANT: &str = "[backup.app]\naccess = [\"create\", \"list\", \"verify\", \"restore\"]\nrestore-to = [\"app\"]\n";

#[tokio::test]
async fn a_plugin_backs_up_verifies_and_restores_through_granted_host_operations() {
    let s = Setup::new();
    let src = sqlite_source(&s, 4_000);
    let b = std::sync::Arc::new(s.backups(&format!("{src}{TWO_LOCAL_TARGETS}")).await);
    let caps = caps_with(BACKUP_GRANT, s.dir.path(), false, Some(b.clone())).await;

    let made = ok(&caps, "backup.create", &[("source", "app")]).await;
    let id = get(&made, "id").unwrap().to_string();
    assert_eq!(get(&made, "targets"), Some("local,primary"));
    assert_eq!(get(&made, "rows"), Some("8000"));
    let listed = ok(&caps, "backup.list", &[("source", "app")]).await;
    assert_eq!(all(&listed, "id"), [id.as_str()]);
    let checked = ok(
        &caps,
        "backup.verify",
        &[("source", "app"), ("id", "latest"), ("target", "primary")],
    )
    .await;
    assert_eq!(all(&checked, "passed"), ["primary true"]);
    assert_eq!(all(&checked, "check").len(), drhost::backup::CHECKS.len());

    sqlite3(&s.path("app.db"), "DELETE FROM orders");
    let r = ok(
        &caps,
        "backup.restore",
        &[("source", "app"), ("id", &id), ("to", "app")],
    )
    .await;
    assert_eq!(get(&r, "rows"), Some("8000"));
    assert_eq!(
        sqlite3(&s.path("app.db"), "SELECT count(*) FROM orders"),
        "4000"
    );

    flush(&caps);
    let calls: Vec<_> = audit_records(s.dir.path())
        .into_iter()
        .filter(|r| r["interface"] == "backup")
        .collect();
    let ops: Vec<&str> = calls.iter().map(|r| r["op"].as_str().unwrap()).collect();
    assert_eq!(ops, ["create", "list", "verify", "restore"]);
    assert!(calls.iter().all(|r| r["decision"] == "allow"));
    assert_eq!(calls[0]["backup_id"], id.as_str());
    assert_eq!(
        calls[3]["grant"],
        "backup.app access=restore restore-to=app"
    );
}

#[tokio::test]
async fn backup_operations_are_denied_without_their_grant_and_planned_in_plan_mode() {
    let s = Setup::new();
    let src = sqlite_source(&s, 100);
    let b = std::sync::Arc::new(s.backups(&format!("{src}{TWO_LOCAL_TARGETS}")).await);
    let policy = "[backup.app]\naccess = [\"list\", \"restore\"]\nrestore-to = [\"elsewhere\"]\n";
    let caps = caps_with(policy, s.dir.path(), false, Some(b.clone())).await;
    let e = failed(&caps, "backup.create", &[("source", "app")]).await;
    assert!(
        e.contains("denied") && e.contains("[backup.app] does not grant Create"),
        "{e}"
    );
    let e = failed(
        &caps,
        "backup.verify",
        &[("source", "other"), ("id", "latest")],
    )
    .await;
    assert!(e.contains("add a [backup.other] table"), "{e}");
    let e = failed(
        &caps,
        "backup.restore",
        &[("source", "app"), ("id", "latest"), ("to", "app")],
    )
    .await;
    assert!(
        e.contains("may not restore into \"app\"; add it to restore-to"),
        "{e}"
    );

    let plan = caps_with(BACKUP_GRANT, s.dir.path(), true, Some(b.clone())).await;
    let e = failed(&plan, "backup.create", &[("source", "app")]).await;
    assert!(e.starts_with("planned"), "{e}");
    assert!(
        b.list(None).await.unwrap().is_empty(),
        "plan mode wrote nothing"
    );
    flush(&caps);
    flush(&plan);
    let decisions: Vec<String> = audit_records(s.dir.path())
        .into_iter()
        .filter(|r| r["interface"] == "backup")
        .map(|r| {
            format!(
                "{} {}",
                r["op"].as_str().unwrap(),
                r["decision"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(decisions.len(), 4);
    for d in ["create deny", "verify deny", "restore deny", "create plan"] {
        assert!(decisions.contains(&d.to_string()), "{decisions:?}");
    }
}

// ---- Incrementals and point-in-time recovery (MariaDB with binary logs) ----

fn at(text: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&chrono::Utc)
}

async fn binlog_exec(url: &str, sql: &str) {
    let mut c = sqlx::MySqlConnection::connect(url).await.unwrap();
    // Back to the real clock before the session ends (this server is shared
    // by the tests; see docs/status.md on fake clocks that outlive sessions).
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "{}; SET TIMESTAMP = DEFAULT",
        sql.trim().trim_end_matches(';')
    )))
    .execute(&mut c)
    .await
    .unwrap();
}

/// The binary log's current file and position.
async fn binlog_mark(url: &str) -> (String, u64) {
    use sqlx::Row;
    let mut c = sqlx::MySqlConnection::connect(url).await.unwrap();
    let row = sqlx::query("SHOW MASTER STATUS")
        .fetch_one(&mut c)
        .await
        .unwrap();
    (row.get::<String, _>(0), row.get::<u64, _>(1))
}

/// The text of every binary log event since `mark`, across later files too.
async fn binlog_events_since(url: &str, mark: &(String, u64)) -> Vec<String> {
    use sqlx::Row;
    let mut c = sqlx::MySqlConnection::connect(url).await.unwrap();
    let files: Vec<String> = sqlx::query("SHOW BINARY LOGS")
        .fetch_all(&mut c)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<String, _>(0))
        .filter(|f| *f >= mark.0)
        .collect();
    let mut out = Vec::new();
    for f in files {
        let from = if f == mark.0 { mark.1 } else { 4 };
        let sql = format!("SHOW BINLOG EVENTS IN '{f}' FROM {from}");
        for r in sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&mut c)
            .await
            .unwrap()
        {
            out.push(r.try_get::<String, _>("Info").unwrap_or_default());
        }
    }
    out
}

async fn binlog_scalar(url: &str, sql: &str) -> i64 {
    let mut c = sqlx::MySqlConnection::connect(url).await.unwrap();
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(&mut c)
        .await
        .unwrap()
}

/// MariaDB 10.11 hands a finished session's thread to the next connection;
/// a thread that replayed binary logs kept the logs' clock, so new
/// connections saw NOW() in 2030 (the replay now runs with the thread cache off).
async fn assert_new_connections_see_the_real_clock(url: &str) {
    for _ in 0..5 {
        let skew = binlog_scalar(url, "SELECT CAST(UNIX_TIMESTAMP() AS SIGNED)").await
            - chrono::Utc::now().timestamp();
        assert!(
            skew.abs() < 60,
            "a new connection's clock is off by {skew} s"
        );
    }
}

/// Held by the tests that write events with fake times (2030) on the
/// binary-logging server: `--stop-datetime` stops at the first event at or
/// after the point, so another test's fake times would end a replay early.
static FAKE_CLOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The plan's data-corruption scenario: good writes, then a destructive
/// one; restore to a point between them. Event times are set with
/// `SET TIMESTAMP` and backups are taken "at" given times, so the test
/// needs no waiting.
#[tokio::test]
async fn point_in_time_recovery_replays_the_binary_logs_up_to_the_point_before_the_corruption() {
    let _clock = FAKE_CLOCK.lock().await;
    let base = mariadb_binlog_url();
    let base = base.rsplit_once('/').unwrap().0.to_string();
    let db = format!("drhost_pitr_{}", unique().replace('-', "_"));
    binlog_exec(&format!("{base}/test"), &format!("CREATE DATABASE {db}")).await;
    let url = format!("{base}/{db}");
    binlog_exec(
        &url,
        "CREATE TABLE ledger (id INT PRIMARY KEY, amount INT); \
         INSERT INTO ledger SELECT seq, seq FROM seq_1_to_1000;",
    )
    .await;
    let s = Setup::new();
    binlog_exec(
        &format!("{base}/test"),
        &format!("CREATE DATABASE {db}_copy"),
    )
    .await;
    let b = s
        .backups(&format!(
            "[sources.ledger]\nkind = \"mariadb\"\nurl = \"{url}\"\n\
             [sources.copy]\nkind = \"mariadb\"\nurl = \"{url}_copy\"\n\
             [targets.local]\npath = \"local\"\n"
        ))
        .await;
    let full = b
        .create_at("ledger", Kind::Full, at("2030-01-01T00:00:00Z"))
        .await
        .unwrap()
        .manifest;
    assert_eq!(full.database.as_deref(), Some(db.as_str()));
    // Verifying the full restores it into a scratch database, out of the
    // binary log: replicas never apply it, incrementals never archive it.
    let mark = binlog_mark(&url).await;
    assert!(b.verify("ledger", &full.id, &[]).await.unwrap()[0].passed());
    let logged = binlog_events_since(&url, &mark).await;
    assert!(
        !logged.iter().any(|e| e.contains("_drhost_verify_")),
        "{logged:?}"
    );
    assert!(
        full.covers
            .position
            .as_deref()
            .is_some_and(|p| p.starts_with("binlog.")),
        "{:?}",
        full.covers
    );

    // 00:10 good writes; then note the position; 00:20 the corruption.
    binlog_exec(
        &url,
        "SET TIMESTAMP = UNIX_TIMESTAMP('2030-01-01 00:10:00'); \
         INSERT INTO ledger SELECT seq, seq FROM seq_1001_to_1500;",
    )
    .await;
    let mut c = sqlx::MySqlConnection::connect(&url).await.unwrap();
    let row = sqlx::query("SHOW MASTER STATUS")
        .fetch_one(&mut c)
        .await
        .unwrap();
    use sqlx::Row;
    let good = format!("{}:{}", row.get::<String, _>(0), row.get::<u64, _>(1));
    binlog_exec(
        &url,
        "SET TIMESTAMP = UNIX_TIMESTAMP('2030-01-01 00:20:00'); \
         DELETE FROM ledger WHERE id % 3 = 0; UPDATE ledger SET amount = 0;",
    )
    .await;
    // 00:25, after the corruption: more good writes.
    binlog_exec(
        &url,
        "SET TIMESTAMP = UNIX_TIMESTAMP('2030-01-01 00:25:00'); \
         INSERT INTO ledger SELECT seq, seq FROM seq_1501_to_1600;",
    )
    .await;
    let inc = b
        .create_at("ledger", Kind::Incremental, at("2030-01-01T00:30:00Z"))
        .await
        .unwrap()
        .manifest;
    assert_eq!(inc.base.as_deref(), Some(full.id.as_str()));
    assert_eq!(inc.from_position, full.covers.position);
    assert!(!inc.logs.is_empty());
    assert!(inc.object.ends_with(".binlog.tar.zst.age"));
    let r = b.verify("ledger", &inc.id, &[]).await.unwrap().remove(0);
    assert!(r.passed(), "{:?}", r.checks);
    assert_eq!(status(&r, "integrity").0, Status::Pass);
    assert_eq!(status(&r, "all records present").0, Status::Skip);

    // Restore to 00:15 (by time), and to the noted position: the good writes, not the damage.
    for point in ["2030-01-01T00:15:00Z", good.as_str()] {
        binlog_exec(&url, "DROP TABLE ledger").await;
        let rep = b
            .restore("ledger", "latest", "ledger", None, Some(point))
            .await
            .unwrap();
        assert_eq!(rep.replayed, std::slice::from_ref(&inc.id));
        assert_eq!(
            binlog_scalar(&url, "SELECT COUNT(*) FROM ledger").await,
            1500,
            "{point}"
        );
        assert_eq!(
            binlog_scalar(&url, "SELECT CAST(SUM(amount = id) AS SIGNED) FROM ledger").await,
            1500,
            "{point}"
        );
        assert_new_connections_see_the_real_clock(&url).await;
    }
    // Into another database: the source's events are replayed there, and
    // the source is left alone.
    let before = binlog_scalar(&url, "SELECT COUNT(*) FROM ledger").await;
    let rep = b
        .restore(
            "ledger",
            "latest",
            "copy",
            None,
            Some("2030-01-01T00:15:00Z"),
        )
        .await
        .unwrap();
    assert_eq!(rep.replayed, std::slice::from_ref(&inc.id));
    let copy = format!("{url}_copy");
    assert_eq!(
        binlog_scalar(&copy, "SELECT COUNT(*) FROM ledger").await,
        1500
    );
    assert_eq!(
        binlog_scalar(&copy, "SELECT CAST(SUM(amount = id) AS SIGNED) FROM ledger").await,
        1500
    );
    assert_eq!(
        binlog_scalar(&url, "SELECT COUNT(*) FROM ledger").await,
        before
    );
    // Leave the corruption (00:20) out and keep what came after it (00:25).
    binlog_exec(&url, "DROP TABLE ledger").await;
    let rep = b
        .restore_skipping(
            "ledger",
            "latest",
            "ledger",
            None,
            Some("2030-01-01T00:15:00Z"),
            Some("2030-01-01T00:22:00Z"),
        )
        .await
        .unwrap();
    assert_eq!(rep.replayed, std::slice::from_ref(&inc.id));
    assert_eq!(
        binlog_scalar(&url, "SELECT COUNT(*) FROM ledger").await,
        1600
    );
    assert_eq!(
        binlog_scalar(&url, "SELECT CAST(SUM(amount = id) AS SIGNED) FROM ledger").await,
        1600
    );
    let e = b
        .restore_skipping(
            "ledger",
            "latest",
            "ledger",
            None,
            Some("2030-01-01T00:15:00Z"),
            Some("2030-01-01T00:10:00Z"),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("is not after the point in time"), "{e}");
    // Past the end of the archived logs is refused, naming how far they reach.
    let e = b
        .restore(
            "ledger",
            "latest",
            "ledger",
            None,
            Some("2030-01-01T01:00:00Z"),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("reach only 2030-01-01T00:30:00"), "{e}");
    // Without a point: the full backup alone.
    b.restore("ledger", "latest", "ledger", None, None)
        .await
        .unwrap();
    assert_eq!(
        binlog_scalar(&url, "SELECT COUNT(*) FROM ledger").await,
        1000
    );
}

#[tokio::test]
async fn an_incremental_goes_only_to_targets_that_hold_its_base() {
    let base = mariadb_binlog_url();
    let base = base.rsplit_once('/').unwrap().0.to_string();
    let db = format!("drhost_incbase_{}", unique().replace('-', "_"));
    binlog_exec(&format!("{base}/test"), &format!("CREATE DATABASE {db}")).await;
    let url = format!("{base}/{db}");
    binlog_exec(
        &url,
        "CREATE TABLE t (id INT PRIMARY KEY); INSERT INTO t VALUES (1);",
    )
    .await;
    let s = Setup::new();
    let b = s
        .backups(&format!(
            "[sources.app]\nkind = \"mariadb\"\nurl = \"{url}\"\n\
             [targets.a]\npath = \"a\"\n[targets.b]\npath = \"b\"\n"
        ))
        .await;
    let full = b.create("app", Kind::Full).await.unwrap().manifest;
    // The full reached only target a (b's copy is gone).
    std::fs::remove_file(s.path("b").join(Manifest::key("app", &full.id))).unwrap();
    binlog_exec(&url, "INSERT INTO t VALUES (2);").await;
    let report = b.create("app", Kind::Incremental).await.unwrap();
    let by = |t: &str| report.targets.iter().find(|r| r.target == t).unwrap();
    assert!(by("a").error.is_none(), "{:?}", by("a").error);
    let why = by("b").error.as_deref().unwrap_or_default();
    assert!(
        why.contains(&format!("its base {} is not on this target", full.id)),
        "{why}"
    );
    assert!(
        !s.path("b")
            .join(Manifest::key("app", &report.manifest.id))
            .exists()
    );
}

// ---- drhost killed with SIGKILL in the middle ----

/// `drhost backup …` as a child process with this setup's configuration.
fn drhost_child(s: &Setup, args: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_drhost"))
        .args(args)
        .arg("--config")
        .arg(s.path("drhost.toml"))
        .env("DRHOST_STATE_DIR", s.path("state"))
        .env("DRHOST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

async fn kill_when(child: &mut tokio::process::Child, reached: &tokio::sync::Notify) {
    tokio::time::timeout(std::time::Duration::from_secs(120), reached.notified())
        .await
        .expect("the transfer reached the stalled proxy");
    child.start_kill().unwrap(); // SIGKILL
    let status = child.wait().await.unwrap();
    assert!(!status.success());
}

#[tokio::test]
async fn a_backup_killed_mid_upload_leaves_no_manifest_and_the_next_one_succeeds() {
    let (_db, url) = mariadb_database(60_000).await;
    let bucket = new_bucket().await;
    let (proxy, reached) =
        stalling_proxy(s3_endpoint().trim_start_matches("http://").into(), 1 << 20).await;
    let s = Setup::new();
    let body = |endpoint: &str| {
        format!(
            "zstd-level = 1\n[sources.shop]\nkind = \"mariadb\"\nurl = \"{url}\"\n{}[targets.local]\npath = \"local\"\n",
            s3_target("primary", &bucket, endpoint)
        )
    };
    s.config(&body(&format!("http://{proxy}")));
    let mut child = drhost_child(&s, &["backup", "create", "shop"]);
    kill_when(&mut child, &reached).await;

    let b = s.backups(&body(&s3_endpoint())).await;
    assert!(
        b.list(Some("shop")).await.unwrap().is_empty(),
        "no manifest on any target"
    );
    let listed = s3_admin()
        .list_objects_v2()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    assert!(listed.contents().is_empty(), "{:?}", listed.contents());

    let m = b.create("shop", Kind::Full).await.unwrap().manifest;
    let reports = b.verify("shop", &m.id, &[]).await.unwrap();
    reports.iter().for_each(assert_all_pass);
    // Whatever the killed backup left on the local target has no manifest:
    // prune removes it once it is a day old, and nothing of the new backup.
    let later = chrono::Utc::now() + chrono::Duration::days(2);
    b.prune_at(later, false).await.unwrap();
    for store in &b.stores {
        let keys: Vec<String> = store
            .objects("shop")
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
        // The object, its manifest and the manifest's signature.
        assert_eq!(keys.len(), 3, "{}: {keys:?}", store.name);
        assert!(keys.iter().all(|k| k.contains(&m.id)), "{keys:?}");
    }
    assert!(
        b.verify("shop", &m.id, &[])
            .await
            .unwrap()
            .iter()
            .all(|r| r.passed())
    );
}

#[tokio::test]
async fn a_restore_killed_mid_download_leaves_the_target_as_it_was_and_the_next_one_succeeds() {
    let (db, url) = mariadb_database(60_000).await;
    let bucket = new_bucket().await;
    let s = Setup::new();
    let body = |endpoint: &str| {
        format!(
            "[sources.shop]\nkind = \"mariadb\"\nurl = \"{url}\"\n{}",
            s3_target("primary", &bucket, endpoint)
        )
    };
    let b = s.backups(&body(&s3_endpoint())).await;
    b.create("shop", Kind::Full).await.unwrap();
    let mut c = sqlx::MySqlConnection::connect(&url).await.unwrap();
    c.execute("DELETE FROM items WHERE id > 100").await.unwrap();

    let (proxy, reached) =
        stalling_proxy(s3_endpoint().trim_start_matches("http://").into(), 1 << 20).await;
    s.config(&body(&format!("http://{proxy}")));
    let mut child = drhost_child(&s, &["backup", "restore", "latest", "--to", "shop"]);
    kill_when(&mut child, &reached).await;
    assert_eq!(
        mariadb_scalar(&db, "SELECT COUNT(*) FROM items").await,
        100,
        "target untouched"
    );

    let b = s.backups(&body(&s3_endpoint())).await;
    b.restore("shop", "latest", "shop", None, None)
        .await
        .unwrap();
    assert_eq!(
        mariadb_scalar(&db, "SELECT COUNT(*) FROM items").await,
        60_000
    );
    assert_eq!(
        mariadb_scalar(
            &db,
            &format!("SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name LIKE '{db}_drhost%'")
        )
        .await,
        0,
        "the interrupted restore's staging database is gone"
    );
}

#[tokio::test]
async fn a_verify_stopped_mid_download_leaves_no_scratch_database() {
    let (db, url) = mariadb_database(60_000).await;
    let bucket = new_bucket().await;
    let s = Setup::new();
    let body = |endpoint: &str| {
        format!(
            "[sources.shop]\nkind = \"mariadb\"\nurl = \"{url}\"\n{}",
            s3_target("primary", &bucket, endpoint)
        )
    };
    let m = s
        .backups(&body(&s3_endpoint()))
        .await
        .create("shop", Kind::Full)
        .await
        .unwrap()
        .manifest;
    let (proxy, _reached) =
        stalling_proxy(s3_endpoint().trim_start_matches("http://").into(), 1 << 20).await;
    let b = s.backups(&body(&format!("http://{proxy}"))).await;
    let scratch = format!(
        "SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name LIKE '{db}\\_drhost\\_verify\\_%'"
    );
    // Stopped as a step's budget stops it: the future is dropped while the
    // scratch database is half loaded.
    let mut verify = Box::pin(b.verify("shop", &m.id, &[]));
    // Runs the verify until its scratch database exists; the stalled target
    // keeps it from ever finishing the download.
    let mut loading = false;
    for _ in 0..600 {
        tokio::select! {
            r = &mut verify => panic!("the verify ended through a stalled target: {r:?}"),
            _ = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
        }
        if mariadb_scalar(&db, &scratch).await == 1 {
            loading = true;
            break;
        }
    }
    assert!(loading, "the verify never created its scratch database");
    drop(verify);
    // The removal waits for the killed tool's session to end: 30 s at most.
    for _ in 0..600 {
        if mariadb_scalar(&db, &scratch).await == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let base = mariadb_url();
    let mut c = sqlx::MySqlConnection::connect(&base).await.unwrap();
    let sessions: Vec<(Option<String>, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT CAST(db AS CHAR), CAST(state AS CHAR), CAST(LEFT(info, 120) AS CHAR) FROM information_schema.processlist",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    panic!("the stopped verify's scratch database is still on the server; sessions: {sessions:#?}");
}

#[tokio::test]
async fn a_forged_or_unsigned_manifest_fails_verify_is_not_restored_and_prune_leaves_it_alone() {
    let s = Setup::new();
    let body = format!("{}{TWO_LOCAL_TARGETS}", sqlite_source(&s, 300));
    let b = s.backups(&body).await;
    let m = b.create("app", Kind::Full).await.unwrap().manifest;
    let public = b.signer.as_ref().unwrap().public();
    let manifest = |target: &str| s.path(target).join(format!("app/{}.manifest.json", m.id));
    // The standard CLI checks drhost's signature with the public key alone.
    let by_hand = |path: &Path| {
        Command::new("minisign")
            .args(["-V", "-q", "-P", &public, "-m"])
            .arg(path)
            .output()
            .unwrap()
    };
    assert!(by_hand(&manifest("primary")).status.success());

    // Forged on primary: the manifest rewritten (another row count, as if
    // it described another object); its signature left as it was.
    let text = std::fs::read_to_string(manifest("primary")).unwrap();
    std::fs::write(
        manifest("primary"),
        text.replace("\"users\": 300", "\"users\": 299"),
    )
    .unwrap();
    assert!(!by_hand(&manifest("primary")).status.success());
    // Unsigned on local: the signature removed.
    let sig = |target: &str| {
        let mut p = manifest(target).into_os_string();
        p.push(".minisig");
        PathBuf::from(p)
    };
    std::fs::remove_file(sig("local")).unwrap();

    let b = s.backups(&body).await;
    for (target, expect) in [
        ("primary", "signature is bad"),
        ("local", "has no signature"),
    ] {
        let r = b.verify("app", &m.id, &[target.to_string()]).await.unwrap();
        let (status, detail) = status(&r[0], "manifest signed");
        assert_eq!(status, Status::Fail, "{target}: {detail}");
        assert!(detail.contains(expect), "{target}: {detail}");
    }
    let refused = b
        .restore("app", &m.id, "app", None, None)
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("is not restored from"), "{refused}");
    // Prune counts neither and deletes neither.
    let later = chrono::Utc::now() + chrono::Duration::days(400);
    let pruned = b.prune_at(later, false).await.unwrap();
    assert!(pruned.deleted.is_empty(), "{:?}", pruned.deleted);
    assert_eq!(pruned.problems.len(), 2, "{:?}", pruned.problems);
    assert!(manifest("primary").exists() && manifest("local").exists());

    // Signed again (as an operator would sign a manifest checked by hand,
    // with the host's key and the CLI): trusted again.
    let out = Command::new("minisign")
        .args(["-S", "-s"])
        .arg(s.path("state/backup-signing.key"))
        .args(["-t", &format!("drhost manifest app/{}", m.id), "-m"])
        .arg(manifest("local"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let b = s.backups(&body).await;
    let r = b
        .verify("app", &m.id, &["local".to_string()])
        .await
        .unwrap();
    assert_all_pass(&r[0]);
    b.restore("app", &m.id, "app", None, None).await.unwrap();
}

#[tokio::test]
async fn prune_removes_what_interrupted_writes_left_once_it_is_a_day_old() {
    let s = Setup::new();
    let bucket = new_bucket().await;
    let body = format!(
        "{}[targets.local]\npath = \"local\"\n{}",
        sqlite_source(&s, 50),
        s3_target("primary", &bucket, &s3_endpoint())
    );
    let b = s.backups(&body).await;
    b.create("app", Kind::Full).await.unwrap();
    // A local write killed midway leaves its temporary file: one from three
    // days ago, one from a write that may still be running.
    let folder = s.path("local/app");
    let old = folder.join(".drhost-tmp-1-a-20260101T000000000Z-full.db.zst.age");
    let fresh = folder.join(".drhost-tmp-2-b-20260101T000000000Z-full.db.zst.age");
    for f in [&old, &fresh] {
        std::fs::write(f, b"partial").unwrap();
    }
    let three_days = std::time::SystemTime::now() - std::time::Duration::from_secs(3 * 86400);
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(three_days)
        .unwrap();
    // An S3 upload killed midway leaves a multipart upload, invisible and billed.
    let admin = s3_admin();
    let upload = admin
        .create_multipart_upload()
        .bucket(&bucket)
        .key("db/app/20260101T000000000Z-full.db.zst.age")
        .send()
        .await
        .unwrap();
    let uploads = || async {
        s3_admin()
            .list_multipart_uploads()
            .bucket(&bucket)
            .send()
            .await
            .unwrap()
            .uploads()
            .len()
    };
    assert_eq!(uploads().await, 1);

    let now = chrono::Utc::now();
    let r = b.prune_at(now, false).await.unwrap();
    let leftovers: Vec<&str> = r
        .deleted
        .iter()
        .filter(|p| p.reason == "left by an interrupted write")
        .map(|p| p.id.as_str())
        .collect();
    assert!(
        !old.exists() && fresh.exists(),
        "only the old temporary file goes: {leftovers:?}"
    );
    // moto lists every upload as started on 2010-11-10 (a fixed value in its
    // response), so here the upload is old at once; S3 gives the real time.
    assert_eq!(uploads().await, 0, "{:?}", upload.upload_id());
    assert_eq!(leftovers.len(), 2, "{leftovers:?}");
    // A day later the fresh temporary file goes too, and the backup stays whole.
    b.prune_at(now + chrono::Duration::days(2), false)
        .await
        .unwrap();
    assert!(!fresh.exists());
    let r = b.verify("app", "latest", &[]).await.unwrap();
    r.iter().for_each(assert_all_pass);
}

#[tokio::test]
async fn a_restore_whose_download_fails_midway_falls_back_to_the_next_target() {
    let (db, url) = mariadb_database(60_000).await;
    let bucket = new_bucket().await;
    let s = Setup::new();
    // The S3 target comes first (targets are tried in name order).
    let body = |endpoint: &str| {
        format!(
            "[sources.shop]\nkind = \"mariadb\"\nurl = \"{url}\"\n{}[targets.z-local]\npath = \"local\"\n",
            s3_target("a-s3", &bucket, endpoint)
        )
    };
    let m = s
        .backups(&body(&s3_endpoint()))
        .await
        .create("shop", Kind::Full)
        .await
        .unwrap()
        .manifest;
    let mut c = sqlx::MySqlConnection::connect(&url).await.unwrap();
    c.execute("DELETE FROM items WHERE id > 100").await.unwrap();
    // The S3 endpoint vanishes after 1 MiB: the download breaks midway.
    let proxy = vanishing_proxy(s3_endpoint().trim_start_matches("http://").into(), 1 << 20).await;
    let b = s.backups(&body(&format!("http://{proxy}"))).await;
    let r = b.restore("shop", &m.id, "shop", None, None).await.unwrap();
    assert_eq!(r.from, "z-local");
    assert_eq!(
        mariadb_scalar(&db, "SELECT COUNT(*) FROM items").await,
        60_000
    );
    // Named explicitly, a failing target is not replaced by another.
    let proxy = vanishing_proxy(s3_endpoint().trim_start_matches("http://").into(), 1 << 20).await;
    let b = s.backups(&body(&format!("http://{proxy}"))).await;
    let e = b
        .restore("shop", &m.id, "shop", Some("a-s3"), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("stopped before touching") && e.contains("from a-s3"),
        "{e}"
    );
}

#[tokio::test]
async fn a_backup_whose_manifest_was_deleted_is_listed_as_an_orphan_not_hidden() {
    let s = Setup::new();
    let body = format!(
        "{}[targets.local]\npath = \"local\"\n",
        sqlite_source(&s, 10)
    );
    let b = s.backups(&body).await;
    let m = b.create("app", Kind::Full).await.unwrap().manifest;
    std::fs::remove_file(s.path("local").join(Manifest::key("app", &m.id))).unwrap();
    let listing = b.list_report(Some("app")).await.unwrap();
    assert!(listing.backups.is_empty());
    assert!(listing.problems.is_empty(), "{:?}", listing.problems);
    let orphans = listing.orphans.join("\n");
    assert!(orphans.contains(&m.object), "{orphans}");
    assert!(orphans.contains(".minisig"), "{orphans}");
}

// ---- Objects ----

#[tokio::test]
async fn a_prefix_of_objects_is_backed_up_with_its_metadata_verified_and_restored() {
    // The source: a versioned S3 bucket; the backup goes to a local target.
    let bucket = new_bucket().await;
    let admin = s3_admin();
    admin
        .put_bucket_versioning()
        .bucket(&bucket)
        .versioning_configuration(
            aws_sdk_s3::types::VersioningConfiguration::builder()
                .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let files = [
        ("config/app.json", "{\"replicas\": 3}\n".repeat(10)),
        (
            "config/nested/deep/feature-flags.yaml",
            "beta: true\n".repeat(50),
        ),
        ("config/big.bin", "x".repeat(3 << 20)),
    ];
    for (key, body) in &files {
        admin
            .put_object()
            .bucket(&bucket)
            .key(*key)
            .body(body.clone().into_bytes().into())
            .send()
            .await
            .unwrap();
    }
    admin
        .put_object()
        .bucket(&bucket)
        .key("outside/not-in-backup")
        .body(b"no".to_vec().into())
        .send()
        .await
        .unwrap();

    let s = Setup::new();
    let source = format!(
        "[sources.cfg]\nkind = \"objects\"\nbucket = \"{bucket}\"\nprefix = \"config/\"\nendpoint = \"{}\"\npath-style = true\n\
         region = \"us-east-1\"\naccess-key-id = \"test\"\nsecret-access-key = \"test\"\n",
        s3_endpoint()
    );
    let b = s.backups(&format!("{source}{TWO_LOCAL_TARGETS}")).await;
    let m = b.create("cfg", Kind::Full).await.unwrap().manifest;
    assert_eq!(m.tables.get("objects"), Some(&3));
    assert!(m.object.ends_with(".objects.tar.zst.age"));
    b.verify("cfg", "latest", &[])
        .await
        .unwrap()
        .iter()
        .for_each(assert_all_pass);

    // By hand: the archive holds the objects and an index with their version ids.
    let out = s.path("by-hand");
    std::fs::create_dir_all(&out).unwrap();
    sh(&format!(
        "age -d -i {} {} | zstd -d | tar -x -C {}",
        s.path("key.txt").display(),
        s.path("local").join(&m.object).display(),
        out.display()
    ));
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("index.json")).unwrap()).unwrap();
    let entries = index.as_array().unwrap();
    assert_eq!(entries.len(), 3);
    assert!(
        entries
            .iter()
            .all(|e| e["version_id"].is_string() && e["sha256"].as_str().unwrap().len() == 64)
    );
    assert_eq!(
        std::fs::read_to_string(out.join("objects/nested/deep/feature-flags.yaml")).unwrap(),
        files[1].1
    );

    // The disaster: one object deleted, one overwritten. Restore.
    admin
        .delete_object()
        .bucket(&bucket)
        .key("config/app.json")
        .send()
        .await
        .unwrap();
    admin
        .put_object()
        .bucket(&bucket)
        .key("config/big.bin")
        .body(b"corrupt".to_vec().into())
        .send()
        .await
        .unwrap();
    let r = b
        .restore("cfg", "latest", "cfg", Some("primary"), None)
        .await
        .unwrap();
    assert_eq!(r.rows, 3);
    for (key, body) in &files {
        let got = admin
            .get_object()
            .bucket(&bucket)
            .key(*key)
            .send()
            .await
            .unwrap();
        let bytes = got.body.collect().await.unwrap().into_bytes();
        assert_eq!(bytes.as_ref(), body.as_bytes(), "{key}");
    }
}

/// Everything a restore replaces in `db`: each table with its row count,
/// each trigger, view and routine with its definition.
async fn mariadb_shape(db: &str) -> Vec<String> {
    let base = mariadb_url();
    mariadb_shape_at(base.rsplit_once('/').unwrap().0, db).await
}

/// [`mariadb_shape`] on the server at `base` (`mysql://…:port`), with each
/// table's row checksum.
async fn mariadb_shape_at(base: &str, db: &str) -> Vec<String> {
    use sqlx::Row;
    let mut c = sqlx::MySqlConnection::connect(&format!("{base}/{db}"))
        .await
        .unwrap();
    let mut shape = Vec::new();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT CAST(table_name AS CHAR) FROM information_schema.tables \
         WHERE table_schema = ? AND table_type = 'BASE TABLE' ORDER BY table_name",
    )
    .bind(db)
    .fetch_all(&mut c)
    .await
    .unwrap();
    for t in tables {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM `{t}`")))
            .fetch_one(&mut c)
            .await
            .unwrap();
        let row = sqlx::query(sqlx::AssertSqlSafe(format!("CHECKSUM TABLE `{t}`")))
            .fetch_one(&mut c)
            .await
            .unwrap();
        let sum = row
            .try_get::<Option<u64>, _>(1)
            .map(|v| v.map(|v| v.to_string()))
            .or_else(|_| {
                row.try_get::<Option<i64>, _>(1)
                    .map(|v| v.map(|v| v.to_string()))
            })
            .unwrap();
        shape.push(format!("table {t}: {n} rows, checksum {sum:?}"));
    }
    for (kind, sql) in [
        (
            "trigger",
            "SELECT CONCAT(trigger_name, ' ON ', event_object_table, ': ', action_statement) FROM information_schema.triggers WHERE trigger_schema = ? ORDER BY 1",
        ),
        (
            "view",
            "SELECT CONCAT(table_name, ': ', view_definition) FROM information_schema.views WHERE table_schema = ? ORDER BY 1",
        ),
        (
            "routine",
            "SELECT CONCAT(routine_name, ': ', routine_definition) FROM information_schema.routines WHERE routine_schema = ? ORDER BY 1",
        ),
    ] {
        let rows: Vec<String> = sqlx::query_scalar(sql)
            .bind(db)
            .fetch_all(&mut c)
            .await
            .unwrap();
        shape.extend(rows.into_iter().map(|r| format!("{kind} {r}")));
    }
    shape
}

/// Rebuilds `db` as production looks before the restore: other rows, other
/// triggers, views and routines than the backup's, and a table of its own.
async fn mariadb_production(db: &str) {
    let mut c = sqlx::MySqlConnection::connect(&mariadb_url())
        .await
        .unwrap();
    c.execute(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {db}; CREATE DATABASE {db}; USE {db};\
         CREATE TABLE items (id INT PRIMARY KEY, label VARCHAR(200), note TEXT);\
         INSERT INTO items SELECT seq, 'old', NULL FROM seq_1_to_20;\
         CREATE TABLE flags (a INT, b INT, flag INT);\
         CREATE TABLE only_in_production (id INT);\
         CREATE TRIGGER stamp_it BEFORE INSERT ON items FOR EACH ROW SET NEW.note = 'stamped';\
         CREATE VIEW small_items AS SELECT id FROM items WHERE id < 5;\
         CREATE FUNCTION tripled(x INT) RETURNS INT DETERMINISTIC RETURN x * 3;"
    )))
    .await
    .unwrap();
}

#[tokio::test]
async fn a_mariadb_restore_killed_at_any_step_of_its_swap_leaves_the_target_old_or_new_and_the_next_command_recovers()
 {
    let (db, url) = mariadb_database(50).await;
    let mut c = sqlx::MySqlConnection::connect(&url).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE flags (a INT, b INT, flag INT);
         CREATE TRIGGER flag_it BEFORE INSERT ON flags FOR EACH ROW SET NEW.flag = (NEW.a > 5);
         CREATE TRIGGER flag_more AFTER UPDATE ON flags FOR EACH ROW SET @flags = 1;
         CREATE VIEW big_items AS SELECT id FROM items WHERE id > 40;
         CREATE FUNCTION doubled(x INT) RETURNS INT DETERMINISTIC RETURN x * 2;",
    )
    .execute(&mut c)
    .await
    .unwrap();
    let s = Setup::new();
    let body = format!(
        "[sources.shop]\nkind = \"mariadb\"\nurl = \"{url}\"\n[targets.local]\npath = \"local\"\n"
    );
    let id = s
        .backups(&body)
        .await
        .create("shop", Kind::Full)
        .await
        .unwrap()
        .manifest
        .id;
    mariadb_production(&db).await;
    let old = mariadb_shape(&db).await;
    let leftovers = format!(
        "SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name LIKE '{db}\\_drhost\\_%'"
    );
    // What a restore that is not interrupted leaves: the backup's tables,
    // triggers, views and routines (views and routines of production that
    // the backup lacks stay).
    s.backups(&body)
        .await
        .restore("shop", &id, "shop", None, None)
        .await
        .unwrap();
    let new = mariadb_shape(&db).await;
    assert_ne!(old, new);
    let said = crash_every_step(
        &s,
        &id,
        "shop",
        "mariadb-swap",
        async || mariadb_production(&db).await,
        async |k, after| {
            let now = mariadb_shape(&db).await;
            match after {
                // Half swapped is allowed only until the next command.
                After::Killed => {}
                After::Recovered => {
                    assert!(now == old || now == new, "k={k}: half swapped: {now:#?}");
                    assert_eq!(
                        mariadb_scalar(&db, &leftovers).await,
                        0,
                        "k={k}: scratch databases left"
                    );
                }
                After::Completed => assert_eq!(now, new),
            }
        },
    )
    .await;
    let points = said.len();
    assert!(points >= 15, "only {points} crash points in the swap");
    // Only a crash after the swap's last statement leaves nothing to do.
    let silent: Vec<usize> = said
        .iter()
        .enumerate()
        .filter(|(_, said)| !said.contains("an interrupted restore into shop was"))
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(silent, [points], "crashes the next command did not report");
}

/// When a [`crash_every_step`] check runs.
#[derive(Clone, Copy, Debug)]
enum After {
    /// The restore was just killed.
    Killed,
    /// The next command (`backup create`) ran after the kill.
    Recovered,
    /// The restore ran to its end: k was past the last crash point.
    Completed,
}

/// `drhost ARGS` with this setup's configuration, killed at crash point
/// `crash` (`name:n`) when given.
async fn drhost_run(s: &Setup, args: &[&str], crash: Option<String>) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_drhost"));
    cmd.args(args)
        .arg("--config")
        .arg(s.path("drhost.toml"))
        .env("DRHOST_STATE_DIR", s.path("state"))
        .env("DRHOST_LOG", "warn")
        .env_remove("DRHOST_CRASH_AT");
    if let Some(at) = crash {
        cmd.env("DRHOST_CRASH_AT", at);
    }
    cmd.output().await.unwrap()
}

/// `drhost ARGS`, which must succeed; returns what it said on stderr.
async fn drhost_ok(s: &Setup, args: &[&str], at: &str) -> String {
    let out = drhost_run(s, args, None).await;
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{at}: drhost {args:?}: {said}");
    said
}

/// Runs `drhost ARGS` killed at crash point `point:k` for k = 1, 2, … until
/// it completes. Before each run `reset`; after each kill `check(Killed)`,
/// then `recover` (the next command, which asserts its own success), then
/// `check(Recovered)`; `check(Completed)` once the command ran to its end.
/// Returns what each `recover` returned: one per kill position reached.
async fn crash_sweep(
    s: &Setup,
    args: &[&str],
    point: &str,
    mut reset: impl AsyncFnMut(),
    mut recover: impl AsyncFnMut(&str) -> String,
    mut check: impl AsyncFnMut(&str, After),
) -> Vec<String> {
    use std::os::unix::process::ExitStatusExt;
    let mut said = Vec::new();
    for k in 1..200 {
        let at = format!("{point}:{k}");
        reset().await;
        let out = drhost_run(s, args, Some(at.clone())).await;
        if out.status.success() {
            check(&at, After::Completed).await;
            return said;
        }
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGKILL),
            "{at}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        check(&at, After::Killed).await;
        said.push(recover(&at).await);
        check(&at, After::Recovered).await;
    }
    panic!("drhost {args:?} never completed");
}

/// Runs `drhost backup restore ID --to TO` killed at crash point `point:k`
/// for k = 1, 2, … until it completes; `check` sees the target after each
/// kill, after the next `backup create` of it (which must succeed), and at
/// the end. Returns what each of those `backup create`s said (stderr), one
/// per crash point.
async fn crash_every_step(
    s: &Setup,
    id: &str,
    to: &str,
    point: &str,
    reset: impl AsyncFnMut(),
    mut check: impl AsyncFnMut(usize, After),
) -> Vec<String> {
    crash_sweep(
        s,
        &["backup", "restore", id, "--to", to],
        point,
        reset,
        async |at| drhost_ok(s, &["backup", "create", to], at).await,
        async |at, after| {
            let k = at.rsplit_once(':').unwrap().1.parse().unwrap();
            check(k, after).await
        },
    )
    .await
}

#[tokio::test]
async fn a_postgres_restore_killed_at_any_step_of_its_swap_leaves_the_target_whole_and_no_copy_behind()
 {
    let (name, url) = postgres_database(300).await;
    let s = Setup::new();
    let body = format!(
        "[sources.pg]\nkind = \"postgres\"\nurl = \"{url}\"\n[targets.local]\npath = \"local\"\n"
    );
    let id = s
        .backups(&body)
        .await
        .create("pg", Kind::Full)
        .await
        .unwrap()
        .manifest
        .id;
    let admin = postgres_url();
    let maintenance = format!("{}/postgres", admin.rsplit_once('/').unwrap().0);
    let points = crash_every_step(
        &s,
        &id,
        "pg",
        "postgres-swap",
        async || {
            let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
            c.execute("DELETE FROM items WHERE id > 100").await.unwrap();
        },
        async |k, _| {
            // Whole: the backup's 300 rows or production's 100, never none.
            let n = pg_scalar(&url, "SELECT COUNT(*) FROM items").await;
            assert!(n == 300 || n == 100, "k={k}: {n} rows");
            assert_eq!(
                pg_scalar(&url, "SELECT COUNT(*) FROM audit.events").await,
                10
            );
        },
    )
    .await
    .len();
    assert!(points >= 3, "{points} crash points");
    assert_eq!(
        pg_scalar(
            &maintenance,
            &format!("SELECT COUNT(*) FROM pg_database WHERE datname LIKE '{name}\\_drhost\\_%'")
        )
        .await,
        0,
        "no staging or replaced database left"
    );
}

#[tokio::test]
async fn a_sqlite_restore_killed_at_any_step_of_its_swap_leaves_the_file_whole() {
    let s = Setup::new();
    let body = format!(
        "{}[targets.local]\npath = \"local\"\n",
        sqlite_source(&s, 300)
    );
    let id = s
        .backups(&body)
        .await
        .create("app", Kind::Full)
        .await
        .unwrap()
        .manifest
        .id;
    let db = s.path("app.db");
    let points = crash_every_step(
        &s,
        &id,
        "app",
        "sqlite-swap",
        async || {
            sqlite3(&db, "DELETE FROM users WHERE id > 100");
        },
        async |k, _| {
            assert_eq!(sqlite3(&db, "PRAGMA integrity_check"), "ok", "k={k}");
            let n = sqlite3(&db, "SELECT COUNT(*) FROM users");
            assert!(n == "300" || n == "100", "k={k}: {n} users");
        },
    )
    .await
    .len();
    assert!(points >= 2, "{points} crash points");
    let staged: Vec<_> = std::fs::read_dir(s.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("drhost-staging"))
        .collect();
    assert!(staged.is_empty(), "{staged:?}");
}

#[tokio::test]
async fn a_mariadb_restore_brings_back_triggers_views_and_functions_as_they_were() {
    let (db, url) = mariadb_database(50).await;
    let mut c = sqlx::MySqlConnection::connect(&url).await.unwrap();
    // Created under the server's default sql_mode, where `||` means OR.
    sqlx::raw_sql(
        "SET SESSION sql_mode = DEFAULT;
         CREATE TABLE flags (a INT, b INT, flag INT);
         CREATE TRIGGER flag_it BEFORE INSERT ON flags FOR EACH ROW SET NEW.flag = (NEW.a > 5 || NEW.b > 5);
         CREATE VIEW big_items AS SELECT id FROM items WHERE id > 40;
         CREATE FUNCTION doubled(x INT) RETURNS INT DETERMINISTIC RETURN x * 2;",
    )
    .execute(&mut c)
    .await
    .unwrap();
    let s = Setup::new();
    let b = s
        .backups(&format!("[sources.shop]\nkind = \"mariadb\"\nurl = \"{url}\"\n[targets.local]\npath = \"local\"\n"))
        .await;
    b.create("shop", Kind::Full).await.unwrap();
    sqlx::raw_sql(
        "DROP VIEW big_items; DROP TRIGGER flag_it; DROP FUNCTION doubled; DELETE FROM items",
    )
    .execute(&mut c)
    .await
    .unwrap();
    b.restore("shop", "latest", "shop", None, None)
        .await
        .unwrap();
    assert_eq!(
        mariadb_scalar(&db, "SELECT COUNT(*) FROM big_items").await,
        10
    );
    assert_eq!(mariadb_scalar(&db, "SELECT doubled(21)").await, 42);
    sqlx::raw_sql("INSERT INTO flags (a, b) VALUES (9, 1)")
        .execute(&mut c)
        .await
        .unwrap();
    assert_eq!(
        mariadb_scalar(&db, "SELECT flag FROM flags WHERE a = 9").await,
        1,
        "the trigger kept its sql_mode: || is OR, not concatenation"
    );
}

// ---- drhost killed at every crash point of create, PITR and prune ----

/// After a `backup create` was killed, or the next one ran: every manifest
/// on every target is signed and names an object that is there whole (its
/// size), and every backup `list` shows verifies on its target (each once:
/// `verified` remembers those checked).
async fn assert_no_backup_claims_what_it_lacks(
    b: &Backups,
    source: &str,
    verified: &mut std::collections::BTreeSet<(String, String)>,
    at: &str,
) {
    let listing = b.list_report(Some(source)).await.unwrap();
    assert!(listing.problems.is_empty(), "{at}: {:?}", listing.problems);
    for store in &b.stores {
        let objects = store.objects(source).await.unwrap();
        for m in store.manifests_among(&objects).await.unwrap() {
            assert!(m.authenticity.trusted(), "{at}: {} unsigned", m.id);
            let size = objects
                .iter()
                .find(|o| o.key == store.key(&m.object))
                .map(|o| o.size);
            assert_eq!(
                size,
                Some(m.ciphertext.size),
                "{at}: {} on {} claims an object it lacks",
                m.id,
                store.name
            );
        }
    }
    for (target, m) in &listing.backups {
        if verified.insert((target.clone(), m.id.clone())) {
            let r = b
                .verify(source, &m.id, std::slice::from_ref(target))
                .await
                .unwrap();
            // Every check passes; "size reasonable" may only flag an
            // incremental smaller than its history's median (their size
            // follows the shared server's traffic; the stored size is
            // checked against the manifest above).
            let failed: Vec<_> = r[0]
                .checks
                .iter()
                .filter(|c| c.status == Status::Fail)
                .filter(|c| {
                    !(m.kind == Kind::Incremental
                        && c.name == "size reasonable"
                        && c.detail.contains("far smaller than the median"))
                })
                .collect();
            assert!(failed.is_empty(), "{at}: {} on {target}: {failed:?}", m.id);
        }
    }
}

/// A prune a day later (keep-last 1, keep-days 0) leaves on every target
/// exactly the objects its manifests name: no object without a manifest,
/// no temporary file, no multipart upload.
async fn assert_a_later_prune_removes_the_leftovers(
    b: &Backups,
    source: &str,
    local: &Path,
    bucket: &str,
    at: &str,
) {
    let r = b
        .prune_at(chrono::Utc::now() + chrono::Duration::days(2), false)
        .await
        .unwrap();
    assert!(r.problems.is_empty(), "{at}: {:?}", r.problems);
    for store in &b.stores {
        let objects = store.objects(source).await.unwrap();
        let manifests = store.manifests_among(&objects).await.unwrap();
        assert!(
            !manifests.is_empty(),
            "{at}: no backup left on {}",
            store.name
        );
        let keys: std::collections::BTreeSet<String> = objects.into_iter().map(|o| o.key).collect();
        assert_eq!(
            keys,
            store.named_keys(source, &manifests),
            "{at}: {}",
            store.name
        );
    }
    let tmp: Vec<PathBuf> = walk(local)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".drhost-tmp"))
        .collect();
    assert!(tmp.is_empty(), "{at}: {tmp:?}");
    let uploads = s3_admin()
        .list_multipart_uploads()
        .bucket(bucket)
        .send()
        .await
        .unwrap();
    assert!(
        uploads.uploads().is_empty(),
        "{at}: {:?}",
        uploads.uploads()
    );
}

/// Sweeps every crash point of `backup create` (its own and its uploads')
/// with `args`; after each kill and after the next command (`recover`)
/// checks the two invariants above. Returns the kill positions reached.
async fn crash_create(
    s: &Setup,
    b: &Backups,
    source: &str,
    args: &[&str],
    bucket: &str,
    mut reset: impl AsyncFnMut(),
    mut recover: impl AsyncFnMut(&str) -> String,
) -> Vec<(String, usize)> {
    let mut verified = std::collections::BTreeSet::new();
    let mut reached = Vec::new();
    for point in ["backup-create", "upload"] {
        let kills = crash_sweep(
            s,
            args,
            point,
            async || reset().await,
            async |at| recover(at).await,
            async |at, after| {
                assert_no_backup_claims_what_it_lacks(b, source, &mut verified, at).await;
                if !matches!(after, After::Killed) {
                    assert_a_later_prune_removes_the_leftovers(
                        b,
                        source,
                        &s.path("local"),
                        bucket,
                        at,
                    )
                    .await;
                }
            },
        )
        .await
        .len();
        reached.push((point.to_string(), kills));
    }
    reached
}

const PRUNE_ALL_BUT_ONE: &str = "[retention]\nkeep-days = 0\nkeep-last = 1\n";

#[tokio::test]
async fn a_sqlite_backup_killed_at_any_point_to_s3_and_local_leaves_no_manifest_claiming_a_missing_or_short_object_and_the_next_backup_and_prune_recover()
 {
    let s = Setup::new();
    let bucket = new_bucket().await;
    let source = sqlite_source(&s, 50);
    // 8.5 MiB that does not compress: nine 1 MiB chunks through the
    // pipeline, two parts of an S3 multipart upload.
    sqlite3(
        &s.path("app.db"),
        "CREATE TABLE blobs(id INTEGER PRIMARY KEY, data BLOB);\
         WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<17) \
         INSERT INTO blobs SELECT x, randomblob(524288) FROM c;",
    );
    let body = format!(
        "zstd-level = 1\n{source}[targets.local]\npath = \"local\"\n{}{PRUNE_ALL_BUT_ONE}",
        s3_target("primary", &bucket, &s3_endpoint())
    );
    let b = s.backups(&body).await;
    let create = ["backup", "create", "app"];
    let reached = crash_create(
        &s,
        &b,
        "app",
        &create,
        &bucket,
        async || {},
        async |at| drhost_ok(&s, &create, at).await,
    )
    .await;
    let total: usize = reached.iter().map(|r| r.1).sum();
    eprintln!("kill positions: {reached:?}");
    assert!(total >= 20, "{reached:?}");
    assert!(reached.iter().all(|r| r.1 >= 8), "{reached:?}");
}

/// A MariaDB database on the binary-logging server with a trigger, a view
/// and a function; returns (server base url, database).
async fn binlog_database() -> (String, String) {
    let base = mariadb_binlog_url();
    let base = base.rsplit_once('/').unwrap().0.to_string();
    let db = format!("drhost_bk_{}", unique().replace('-', "_"));
    binlog_exec(&format!("{base}/test"), &format!("CREATE DATABASE {db}")).await;
    binlog_exec(
        &format!("{base}/{db}"),
        "CREATE TABLE ledger (id INT PRIMARY KEY, amount INT, note VARCHAR(20));\
         INSERT INTO ledger SELECT seq, seq, NULL FROM seq_1_to_200;\
         CREATE TRIGGER noted BEFORE INSERT ON ledger FOR EACH ROW SET NEW.note = 'new';\
         CREATE VIEW big AS SELECT id FROM ledger WHERE amount > 100;\
         CREATE FUNCTION doubled(x INT) RETURNS INT DETERMINISTIC RETURN x * 2;",
    )
    .await;
    (base, db)
}

#[tokio::test]
async fn a_mariadb_full_backup_killed_at_any_point_to_s3_and_local_leaves_no_manifest_claiming_a_missing_or_short_object_and_the_next_backup_and_prune_recover()
 {
    let (base, db) = binlog_database().await;
    let s = Setup::new();
    let bucket = new_bucket().await;
    let body = format!(
        "[sources.shop]\nkind = \"mariadb\"\nurl = \"{base}/{db}\"\n[targets.local]\npath = \"local\"\n{}{PRUNE_ALL_BUT_ONE}",
        s3_target("primary", &bucket, &s3_endpoint())
    );
    let b = s.backups(&body).await;
    let create = ["backup", "create", "shop"];
    let reached = crash_create(
        &s,
        &b,
        "shop",
        &create,
        &bucket,
        async || {},
        async |at| drhost_ok(&s, &create, at).await,
    )
    .await;
    let total: usize = reached.iter().map(|r| r.1).sum();
    eprintln!("kill positions: {reached:?}");
    assert!(total >= 20, "{reached:?}");
}

#[tokio::test]
async fn a_mariadb_incremental_killed_at_any_point_to_s3_and_local_leaves_no_manifest_claiming_a_missing_or_short_object_and_the_next_incremental_and_prune_recover()
 {
    let (base, db) = binlog_database().await;
    let url = format!("{base}/{db}");
    let s = Setup::new();
    let bucket = new_bucket().await;
    let body = format!(
        "[sources.shop]\nkind = \"mariadb\"\nurl = \"{url}\"\n[targets.local]\npath = \"local\"\n{}{PRUNE_ALL_BUT_ONE}",
        s3_target("primary", &bucket, &s3_endpoint())
    );
    let b = s.backups(&body).await;
    b.create("shop", Kind::Full).await.unwrap();
    let newest_everywhere = async || {
        let mut newest = std::collections::BTreeSet::new();
        for store in &b.stores {
            newest.insert(store.manifests("shop").await.unwrap().pop().map(|m| m.id));
        }
        newest.len() == 1
    };
    let incremental = ["backup", "create", "shop", "--kind", "incremental"];
    let mut row = 1000;
    let reached = crash_create(
        &s,
        &b,
        "shop",
        &incremental,
        &bucket,
        async || {
            // Something for the incremental to hold.
            row += 1;
            binlog_exec(
                &url,
                &format!("INSERT INTO ledger (id, amount) VALUES ({row}, 1)"),
            )
            .await;
            // A kill between the targets' manifests leaves the newest backup
            // on one target only; an incremental goes only where its base
            // is, so a full brings the targets back in step first.
            if !newest_everywhere().await {
                b.create("shop", Kind::Full).await.unwrap();
            }
        },
        async |at| {
            let partial = !newest_everywhere().await;
            let out = drhost_run(&s, &incremental, None).await;
            let said = String::from_utf8_lossy(&out.stderr).into_owned();
            // Complete, or (the base being on one target only) complete where
            // its base is and the other target reported.
            let ok = out.status.success()
                || (partial
                    && out.status.code() == Some(1)
                    && said.contains("is not on this target"));
            assert!(ok, "{at}: {said}");
            said
        },
    )
    .await;
    let total: usize = reached.iter().map(|r| r.1).sum();
    eprintln!("kill positions: {reached:?}");
    assert!(total >= 20, "{reached:?}");
}

/// Rebuilds `db` on the binary-logging server as production looks before a
/// restore: other rows, trigger, view and function than any backup's.
async fn binlog_production(base: &str, db: &str) {
    binlog_exec(
        &format!("{base}/test"),
        &format!(
            "DROP DATABASE IF EXISTS {db}; CREATE DATABASE {db}; USE {db};\
             CREATE TABLE ledger (id INT PRIMARY KEY, amount INT, note VARCHAR(20));\
             INSERT INTO ledger SELECT seq, 7, 'old' FROM seq_1_to_30;\
             CREATE TABLE only_in_production (id INT);\
             CREATE TRIGGER noted BEFORE INSERT ON ledger FOR EACH ROW SET NEW.note = 'production';\
             CREATE VIEW big AS SELECT id FROM ledger WHERE amount > 5;\
             CREATE FUNCTION doubled(x INT) RETURNS INT DETERMINISTIC RETURN x + x + 1;"
        ),
    )
    .await;
}

/// The binary-logging server's thread cache size, read while no replay
/// runs (under the lock every replay holds).
async fn binlog_thread_cache(base: &str) -> i64 {
    let mut c = sqlx::MySqlConnection::connect(&format!("{base}/test"))
        .await
        .unwrap();
    let got: i64 = sqlx::query_scalar("SELECT GET_LOCK('drhost-replay', 600)")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(got, 1);
    let n = sqlx::query_scalar("SELECT CAST(@@GLOBAL.thread_cache_size AS SIGNED)")
        .fetch_one(&mut c)
        .await
        .unwrap();
    c.close().await.unwrap();
    n
}

async fn binlog_leftovers(base: &str, db: &str) -> i64 {
    binlog_scalar(
        &format!("{base}/test"),
        &format!(
            "SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name LIKE '{db}\\_drhost\\_%'"
        ),
    )
    .await
}

/// One test for both, run one after the other: each kill may leave the
/// server's thread cache off until the next replay, which this test checks.
#[tokio::test]
async fn a_point_in_time_restore_killed_at_any_step_in_place_or_into_another_database_leaves_it_entirely_old_or_new_and_rerunning_it_succeeds()
 {
    let _clock = FAKE_CLOCK.lock().await;
    let (base, db) = binlog_database().await;
    let url = format!("{base}/{db}");
    let copy = format!("{db}_copy");
    let s = Setup::new();
    let b = s
        .backups(&format!(
            "[sources.shop]\nkind = \"mariadb\"\nurl = \"{url}\"\n\
             [sources.copy]\nkind = \"mariadb\"\nurl = \"{base}/{copy}\"\n\
             [targets.local]\npath = \"local\"\n"
        ))
        .await;
    b.create_at("shop", Kind::Full, at("2030-01-01T00:00:00Z"))
        .await
        .unwrap();
    // Three incrementals, each after a batch of writes five minutes before
    // it; the point (00:25) leaves the third batch out.
    for (i, minute) in [10, 20, 30].into_iter().enumerate() {
        binlog_exec(
            &url,
            &format!(
                "SET TIMESTAMP = UNIX_TIMESTAMP('2030-01-01 00:{:02}:00');\
                 INSERT INTO ledger (id, amount) SELECT seq, seq FROM seq_{}_to_{};\
                 UPDATE ledger SET amount = amount + 1 WHERE id % 3 = {i};",
                minute - 5,
                1000 + i * 100,
                1050 + i * 100
            ),
        )
        .await;
        b.create_at(
            "shop",
            Kind::Incremental,
            at(&format!("2030-01-01T00:{minute:02}:00Z")),
        )
        .await
        .unwrap();
    }
    let cache = binlog_thread_cache(&base).await;
    for (to, target) in [("shop", &db), ("copy", &copy)] {
        let pitr = [
            "backup",
            "restore",
            "shop/latest",
            "--to",
            to,
            "--point-in-time",
            "2030-01-01T00:25:00Z",
        ];
        binlog_production(&base, target).await;
        let old = mariadb_shape_at(&base, target).await;
        drhost_ok(&s, &pitr, "uninterrupted").await;
        let new = mariadb_shape_at(&base, target).await;
        assert_ne!(old, new);
        let rows = binlog_scalar(&format!("{base}/{target}"), "SELECT COUNT(*) FROM ledger").await;
        assert_eq!(rows, 302, "the full's 200 rows and two batches of 51");
        let kills = crash_sweep(
            &s,
            &pitr,
            "restore",
            async || binlog_production(&base, target).await,
            async |at| drhost_ok(&s, &pitr, at).await,
            async |at, after| {
                let now = mariadb_shape_at(&base, target).await;
                if let After::Killed = after {
                    // Before the swap untouched; after it, restored.
                    assert!(now == old || now == new, "{at}: half restored: {now:#?}");
                    return;
                }
                assert_eq!(now, new, "{at}");
                assert_eq!(binlog_leftovers(&base, target).await, 0, "{at}");
                assert_eq!(
                    binlog_thread_cache(&base).await,
                    cache,
                    "{at}: thread cache"
                );
            },
        )
        .await
        .len();
        eprintln!("{to}: {kills} kill positions");
        assert!(kills >= 20, "{to}: {kills} kill positions");
    }
    let rows = binlog_scalar(&url, "SELECT COUNT(*) FROM ledger").await;
    assert_eq!(rows, 302, "into another database, the source is left alone");
}

#[tokio::test]
async fn a_mariadb_restore_into_another_database_killed_at_any_step_of_its_swap_leaves_it_old_or_new_and_the_next_command_recovers()
 {
    let (db, url) = mariadb_database(50).await;
    let mut c = sqlx::MySqlConnection::connect(&url).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE flags (a INT, b INT, flag INT);
         CREATE TRIGGER flag_it BEFORE INSERT ON flags FOR EACH ROW SET NEW.flag = (NEW.a > 5);
         CREATE VIEW big_items AS SELECT id FROM items WHERE id > 40;
         CREATE FUNCTION doubled(x INT) RETURNS INT DETERMINISTIC RETURN x * 2;",
    )
    .execute(&mut c)
    .await
    .unwrap();
    let copy = format!("{db}_copy");
    let base = url.rsplit_once('/').unwrap().0;
    let s = Setup::new();
    let body = format!(
        "[sources.shop]\nkind = \"mariadb\"\nurl = \"{url}\"\n\
         [sources.copy]\nkind = \"mariadb\"\nurl = \"{base}/{copy}\"\n[targets.local]\npath = \"local\"\n"
    );
    let b = s.backups(&body).await;
    let id = b.create("shop", Kind::Full).await.unwrap().manifest.id;
    let source = mariadb_shape(&db).await;
    mariadb_production(&copy).await;
    let old = mariadb_shape(&copy).await;
    b.restore("shop", &id, "copy", None, None).await.unwrap();
    let new = mariadb_shape(&copy).await;
    assert_ne!(old, new);
    let points = crash_every_step(
        &s,
        &format!("shop/{id}"),
        "copy",
        "mariadb-swap",
        async || mariadb_production(&copy).await,
        async |k, after| {
            let now = mariadb_shape(&copy).await;
            match after {
                After::Killed => {}
                After::Recovered => {
                    assert!(now == old || now == new, "k={k}: half swapped: {now:#?}");
                    assert_eq!(
                        mariadb_scalar(
                            &copy,
                            &format!("SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name LIKE '{copy}\\_drhost\\_%'")
                        )
                        .await,
                        0,
                        "k={k}: scratch databases left"
                    );
                }
                After::Completed => assert_eq!(now, new),
            }
        },
    )
    .await
    .len();
    eprintln!("{points} kill positions");
    assert!(points >= 15, "only {points} crash points in the swap");
    assert_eq!(mariadb_shape(&db).await, source, "the source is left alone");
}

/// Every target's signed manifests: each one's object is there whole, and
/// each incremental's chain reaches back to a full on the same target.
/// Returns the ids on each target.
async fn assert_whole_chains(b: &Backups, source: &str, at: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for store in &b.stores {
        let objects = store.objects(source).await.unwrap();
        let all = store.manifests_among(&objects).await.unwrap();
        for m in &all {
            assert!(m.authenticity.trusted(), "{at}: {}", m.id);
            let size = objects
                .iter()
                .find(|o| o.key == store.key(&m.object))
                .map(|o| o.size);
            assert_eq!(
                size,
                Some(m.ciphertext.size),
                "{at}: {} on {}",
                m.id,
                store.name
            );
            let mut cur = m;
            while cur.kind == Kind::Incremental {
                let base = cur.base.as_deref().unwrap();
                cur = all.iter().find(|p| p.id == base).unwrap_or_else(|| {
                    panic!("{at}: {} on {} lost its base {base}", m.id, store.name)
                });
            }
        }
        out.push(all.into_iter().map(|m| m.id).collect());
    }
    out
}

#[tokio::test]
async fn a_prune_killed_between_any_two_deletions_keeps_every_kept_chain_whole_and_the_newest_verified_full_and_restores_still_work()
 {
    let (base, db) = binlog_database().await;
    let url = format!("{base}/{db}");
    let copy = format!("{db}_copy");
    binlog_exec(&format!("{base}/test"), &format!("CREATE DATABASE {copy}")).await;
    let s = Setup::new();
    let bucket = new_bucket().await;
    let b = s
        .backups(&format!(
            "[sources.shop]\nkind = \"mariadb\"\nurl = \"{url}\"\n\
             [sources.copy]\nkind = \"mariadb\"\nurl = \"{base}/{copy}\"\n\
             [targets.local]\npath = \"local\"\n{}\
             [retention]\nkeep-days = 1\nkeep-last = 2\n",
            s3_target("primary", &bucket, &s3_endpoint())
        ))
        .await;
    // History (backups dated 2020, so prune finds them old): F1 I I, F2 I I,
    // F3 I — each after a batch of writes. Prune keeps the newest two (F3,
    // its incremental) and the newest verified full, F2, with its chain.
    // The point in its window is a log position (just after F2's first
    // incremental): fake event times would stop other tests' replays.
    let mut ids = Vec::new();
    let mut window_end = None;
    for (i, (minute, kind)) in [
        (10, Kind::Full),
        (15, Kind::Incremental),
        (20, Kind::Incremental),
        (30, Kind::Full),
        (35, Kind::Incremental),
        (40, Kind::Incremental),
        (50, Kind::Full),
        (55, Kind::Incremental),
    ]
    .into_iter()
    .enumerate()
    {
        binlog_exec(
            &url,
            &format!(
                "INSERT INTO ledger (id, amount) SELECT seq, seq FROM seq_{}_to_{};",
                1000 + i * 100,
                1020 + i * 100
            ),
        )
        .await;
        let at_ = at(&format!("2020-01-01T00:{minute:02}:00Z"));
        ids.push(b.create_at("shop", kind, at_).await.unwrap().manifest.id);
        if i == 4 {
            let (file, pos) = binlog_mark(&url).await;
            window_end = Some(format!("{file}:{pos}"));
        }
    }
    let window_end = window_end.unwrap();
    let reports = b.verify("shop", &ids[3], &[]).await.unwrap();
    assert!(reports.iter().all(|r| r.passed()), "{reports:?}");
    let kept: Vec<String> = ids[3..].to_vec();
    // What a restore of the latest full and a point-in-time restore inside
    // the kept window (F2 and its first incremental) give.
    let pitr = window_end.as_str();
    b.restore("shop", "latest", "copy", None, None)
        .await
        .unwrap();
    let latest = mariadb_shape_at(&base, &copy).await;
    b.restore("shop", "latest", "copy", None, Some(pitr))
        .await
        .unwrap();
    let window = mariadb_shape_at(&base, &copy).await;
    assert_ne!(latest, window);

    // The history as it was, to put back before each kill.
    sh(&format!(
        "cp -a {0}/local {0}/local.pristine",
        s.dir.path().display()
    ));
    let admin = s3_admin();
    let list = |prefix: &'static str| {
        let admin = admin.clone();
        let bucket = bucket.clone();
        async move {
            let out = admin
                .list_objects_v2()
                .bucket(&bucket)
                .prefix(prefix)
                .send()
                .await
                .unwrap();
            out.contents()
                .iter()
                .map(|o| o.key().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    let copy_all = async |from: &'static str, to: &str| {
        for key in list(from).await {
            admin
                .copy_object()
                .bucket(&bucket)
                .copy_source(format!("{bucket}/{key}"))
                .key(format!("{to}{}", key.strip_prefix(from).unwrap()))
                .send()
                .await
                .unwrap();
        }
    };
    copy_all("db/", "pristine/").await;
    let mut turn = 0;
    let kills = crash_sweep(
        &s,
        &["backup", "prune"],
        "prune",
        async || {
            // In place: the local target keeps its directory open.
            sh(&format!(
                "find {0}/local -mindepth 1 -delete && cp -a {0}/local.pristine/. {0}/local/",
                s.dir.path().display()
            ));
            for key in list("db/").await {
                admin
                    .delete_object()
                    .bucket(&bucket)
                    .key(key)
                    .send()
                    .await
                    .unwrap();
            }
            copy_all("pristine/", "db/").await;
        },
        async |at| drhost_ok(&s, &["backup", "prune"], at).await,
        async |at, after| {
            let on = assert_whole_chains(&b, "shop", at).await;
            if let After::Killed = after {
                for ids in &on {
                    assert!(kept.iter().all(|k| ids.contains(k)), "{at}: {ids:?}");
                }
                // From each target in turn: the latest full, and a point in
                // the window, restore as before.
                turn += 1;
                let from = b.stores[turn % b.stores.len()].name.clone();
                b.restore("shop", "latest", "copy", Some(&from), None)
                    .await
                    .unwrap();
                assert_eq!(mariadb_shape_at(&base, &copy).await, latest, "{at}");
                b.restore("shop", "latest", "copy", Some(&from), Some(pitr))
                    .await
                    .unwrap();
                assert_eq!(mariadb_shape_at(&base, &copy).await, window, "{at}");
                return;
            }
            for ids in &on {
                assert_eq!(*ids, kept, "{at}");
            }
            // What the kill left (objects whose manifest went) goes a day later.
            b.prune_at(chrono::Utc::now() + chrono::Duration::days(2), false)
                .await
                .unwrap();
            for store in &b.stores {
                let objects = store.objects("shop").await.unwrap();
                let manifests = store.manifests_among(&objects).await.unwrap();
                let keys: std::collections::BTreeSet<String> =
                    objects.into_iter().map(|o| o.key).collect();
                assert_eq!(keys, store.named_keys("shop", &manifests), "{at}");
            }
        },
    )
    .await
    .len();
    eprintln!("{kills} kill positions");
    assert!(kills >= 20, "{kills} kill positions");
}

/// A point-in-time restore whose window holds an earlier in-place restore
/// never runs drhost's own swap against production (its statements naming
/// databases run without a default database, so a replay never sees them)
/// and is refused by the marker the swap left in the target's events: the
/// events after an in-place restore apply to the restored data, which no
/// replay of older backups can rebuild. Before that restore it still works.
#[tokio::test]
async fn a_point_in_time_restore_across_an_earlier_in_place_restore_is_refused_and_leaves_production_alone()
 {
    let base = mariadb_binlog_url();
    let base = base.rsplit_once('/').unwrap().0.to_string();
    let db = format!("drhost_span_{}", unique().replace('-', "_"));
    binlog_exec(&format!("{base}/test"), &format!("CREATE DATABASE {db}")).await;
    binlog_exec(
        &format!("{base}/test"),
        &format!("CREATE DATABASE {db}_copy"),
    )
    .await;
    let url = format!("{base}/{db}");
    binlog_exec(
        &url,
        "CREATE TABLE ledger (id INT PRIMARY KEY, amount INT); \
         CREATE TRIGGER ledger_bi BEFORE INSERT ON ledger FOR EACH ROW SET NEW.amount = NEW.amount; \
         INSERT INTO ledger SELECT seq, seq FROM seq_1_to_1000;",
    )
    .await;
    let s = Setup::new();
    let b = s
        .backups(&format!(
            "[sources.ledger]\nkind = \"mariadb\"\nurl = \"{url}\"\n\
             [sources.copy]\nkind = \"mariadb\"\nurl = \"{url}_copy\"\n\
             [targets.local]\npath = \"local\"\n"
        ))
        .await;
    let full = b
        .create_at("ledger", Kind::Full, at("2030-02-01T00:00:00Z"))
        .await
        .unwrap()
        .manifest;
    binlog_exec(
        &url,
        "SET TIMESTAMP = UNIX_TIMESTAMP('2030-02-01 00:10:00'); \
         INSERT INTO ledger SELECT seq, seq FROM seq_1001_to_1500;",
    )
    .await;
    let mut c = sqlx::MySqlConnection::connect(&url).await.unwrap();
    let row = sqlx::query("SHOW MASTER STATUS")
        .fetch_one(&mut c)
        .await
        .unwrap();
    use sqlx::Row;
    let before_restore = format!("{}:{}", row.get::<String, _>(0), row.get::<u64, _>(1));
    // The in-place restore: production is the full backup again (1000 rows).
    b.restore("ledger", &full.id, "ledger", None, None)
        .await
        .unwrap();
    binlog_exec(
        &url,
        "SET TIMESTAMP = UNIX_TIMESTAMP('2030-02-01 00:20:00'); \
         INSERT INTO ledger SELECT seq, seq FROM seq_2001_to_2100;",
    )
    .await;
    b.create_at("ledger", Kind::Incremental, at("2030-02-01T00:30:00Z"))
        .await
        .unwrap();
    let production = async || {
        (
            binlog_scalar(&url, "SELECT COUNT(*) FROM ledger").await,
            binlog_scalar(
                &url,
                &format!(
                    "SELECT COUNT(*) FROM information_schema.triggers WHERE trigger_schema = '{db}'"
                ),
            )
            .await,
            binlog_scalar(
                &format!("{base}/test"),
                &format!(
                    "SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name LIKE '{db}\\_drhost%'"
                ),
            )
            .await,
        )
    };
    let as_it_was = production().await;
    assert_eq!(as_it_was, (1100, 1, 0));
    // In place and into another database: refused, naming the cause;
    // production keeps its rows and its trigger, and no scratch is left.
    for to in ["ledger", "copy"] {
        let e = b
            .restore("ledger", "latest", to, None, Some("2030-02-01T00:25:00Z"))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("in-place restore"), "{to}: {e}");
        assert_eq!(production().await, as_it_was, "{to}");
    }
    // Up to a point before the in-place restore: the replay works.
    let rep = b
        .restore("ledger", "latest", "copy", None, Some(&before_restore))
        .await
        .unwrap();
    assert_eq!(rep.replayed.len(), 1);
    assert_eq!(
        binlog_scalar(&format!("{url}_copy"), "SELECT COUNT(*) FROM ledger").await,
        1500
    );
    assert_eq!(production().await, as_it_was);
}
