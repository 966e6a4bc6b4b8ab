//! `drhost backup restore`: load into a staging place, verify it against the
//! manifest, and only then swap it in. Until the swap the target is untouched;
//! a failed or interrupted restore leaves at most a staging copy, which the
//! next restore replaces.

use super::engine::{Engine, Purpose};
use super::{BackupError, Backups};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub id: String,
    pub source: String,
    pub from: String,
    pub to: String,
    pub tables: usize,
    pub rows: u64,
    pub bytes: u64,
    pub seconds: f64,
}

impl Backups {
    /// Restores backup `id` ("latest" allowed) of `source` into the database of
    /// source `to`, reading from target `from` (the first target holding it
    /// when `None`).
    pub async fn restore(
        &self,
        source: &str,
        id: &str,
        to: &str,
        from: Option<&str>,
        point_in_time: Option<&str>,
    ) -> Result<RestoreReport, BackupError> {
        if let Some(t) = point_in_time {
            return Err(BackupError::Config(format!(
                "point-in-time recovery (to {t}) needs archived binary logs, which this build does not take yet; \
                 restore a full backup instead"
            )));
        }
        let clock = std::time::Instant::now();
        let (store, m) = match from {
            Some(name) => {
                let store = self.store(name)?;
                let m = store.find(source, id).await?;
                (store, m)
            }
            None => {
                let mut found = None;
                let mut misses = Vec::new();
                for store in &self.stores {
                    match store.find(source, id).await {
                        Ok(m) => {
                            found = Some((store, m));
                            break;
                        }
                        Err(e) => misses.push(e.to_string()),
                    }
                }
                found.ok_or_else(|| BackupError::NotFound(misses.join("; ")))?
            }
        };
        let target: Engine = self.engine(to)?;
        if target.kind() != m.source_kind {
            return Err(BackupError::Config(format!(
                "backup {} is a {} backup; source {to} is {}",
                m.id,
                m.source_kind,
                target.kind()
            )));
        }
        tracing::info!(id = %m.id, from = %store.name, to, "restore started");
        let loaded = self
            .load_into(
                store,
                &m,
                &target,
                Purpose::Restore,
                &format!("restore {} into {to}", m.id),
            )
            .await?;
        let checked = async {
            if let Err(e) = &loaded.opened.result {
                return Err(format!(
                    "{e}{}",
                    loaded
                        .load
                        .as_ref()
                        .err()
                        .map(|l| format!(" ({l})"))
                        .unwrap_or_default()
                ));
            }
            loaded.load.clone()?;
            if loaded.opened.plaintext.1 != m.plaintext.sha256 {
                return Err("the plaintext's sha256 differs from the manifest".to_string());
            }
            let ins = target
                .inspect(&loaded.place)
                .await
                .map_err(|e| e.to_string())?;
            ins.integrity.clone()?;
            if ins.tables != m.tables {
                let diff: Vec<String> = m
                    .tables
                    .iter()
                    .filter(|(t, n)| ins.tables.get(*t) != Some(n))
                    .map(|(t, n)| {
                        format!("{t}: {} of {n}", ins.tables.get(t).copied().unwrap_or(0))
                    })
                    .collect();
                return Err(format!(
                    "the staged copy does not match the manifest: {}",
                    diff.join(", ")
                ));
            }
            Ok(())
        }
        .await;
        if let Err(why) = checked {
            if let Err(e) = target.discard(&loaded.place).await {
                tracing::warn!("removing the staging copy {}: {e}", loaded.place);
            }
            return Err(BackupError::Failed(format!(
                "restore of {} into {to} stopped before touching {}: {why}",
                m.id,
                target.describe()
            )));
        }
        target.swap_in(&loaded.place).await?;
        tracing::info!(id = %m.id, to, "restore finished");
        Ok(RestoreReport {
            id: m.id.clone(),
            source: source.to_string(),
            from: store.name.clone(),
            to: to.to_string(),
            tables: m.tables.len(),
            rows: m.tables.values().sum(),
            bytes: m.plaintext.size,
            seconds: clock.elapsed().as_secs_f64(),
        })
    }
}
