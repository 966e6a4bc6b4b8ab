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
