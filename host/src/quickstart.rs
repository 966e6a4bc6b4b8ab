//! The quickstart's disaster: two local buckets holding the same files, then
//! damage to the primary (one object deleted, one corrupted), ready for the
//! storage-failover scenario to detect, restore and verify.

use std::path::Path;

/// What `setup` did, for the terminal.
pub struct Damage {
    pub objects: usize,
    pub deleted: String,
    pub corrupted: String,
}

/// Fills `dir/primary` and `dir/secondary` with the same sample objects
/// (removing earlier contents), then damages the primary.
pub fn setup(dir: &Path) -> std::io::Result<Damage> {
    let files: Vec<(String, Vec<u8>)> = (0..12)
        .map(|i| {
            let key = match i % 3 {
                0 => format!("uploads/avatars/user-{i:03}.png"),
                1 => format!("uploads/invoices/2026-11/invoice-{i:03}.pdf"),
                _ => format!("config/app-{i:03}.json"),
            };
            let body = format!("sample object {i}\n")
                .repeat(64 * (i + 1))
                .into_bytes();
            (key, body)
        })
        .collect();
    for side in ["primary", "secondary"] {
        let root = dir.join(side);
        if root.exists() {
            std::fs::remove_dir_all(&root)?;
        }
        for (key, body) in &files {
            let path = root.join(key);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(path, body)?;
        }
    }
    let deleted = files[1].0.clone();
    let corrupted = files[5].0.clone();
    std::fs::remove_file(dir.join("primary").join(&deleted))?;
    let path = dir.join("primary").join(&corrupted);
    let mut body = std::fs::read(&path)?;
    body[0] ^= 0xff;
    std::fs::write(&path, body)?;
    Ok(Damage {
        objects: files.len(),
        deleted,
        corrupted,
    })
}

/// Creates the quickstart's SQLite database: a small shop with customers and
/// orders (replacing any earlier file).
pub async fn sample_database(path: &Path) -> Result<(), sqlx::Error> {
    use sqlx::Connection;
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(std::path::PathBuf::from(p));
    }
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
    let mut c = sqlx::SqliteConnection::connect_with(&opts).await?;
    sqlx::raw_sql(
        "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL);
         CREATE TABLE orders (id INTEGER PRIMARY KEY, customer INTEGER NOT NULL REFERENCES customers(id),
                              total_cents INTEGER NOT NULL, placed_at TEXT NOT NULL);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
         INSERT INTO customers SELECT i, 'Customer ' || i, 'customer' || i || '@example.com' FROM n;
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10000)
         INSERT INTO orders SELECT i, 1 + (i * 7) % 2000, 100 + (i * 37) % 90000,
                                   datetime('2026-11-01', '+' || (i % 600) || ' minutes') FROM n;",
    )
    .execute(&mut c)
    .await?;
    c.close().await
}

/// The quickstart's database disaster: the orders table dropped and half the
/// customers deleted.
pub async fn damage_database(path: &Path) -> Result<(), sqlx::Error> {
    use sqlx::Connection;
    let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(path);
    let mut c = sqlx::SqliteConnection::connect_with(&opts).await?;
    sqlx::raw_sql("DROP TABLE orders; DELETE FROM customers WHERE id % 2 = 0;")
        .execute(&mut c)
        .await?;
    c.close().await
}
