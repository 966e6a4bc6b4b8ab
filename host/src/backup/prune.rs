//! `drhost backup prune`: retention. Keeps backups younger than keep-days,
//! the newest keep-last, and always the newest verified full backup (or the
//! newest full when none is verified yet) with the incrementals after it.
//! A manifest is deleted before its object, so a half-pruned backup is
//! simply absent, never listed but unreadable. Data objects without a
//! manifest (the remains of backups that failed or were killed) are removed
//! once they are a day old: younger ones may belong to a backup in progress.

use super::manifest::{Kind, Manifest};
use super::{BackupError, Backups};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Pruned {
    pub target: String,
    pub source: String,
    pub id: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct PruneReport {
    pub deleted: Vec<Pruned>,
    pub kept: Vec<Pruned>,
    pub dry_run: bool,
}

impl Backups {
    pub async fn prune(&self, dry_run: bool) -> Result<PruneReport, BackupError> {
        self.prune_at(chrono::Utc::now(), dry_run).await
    }

    /// Prune as if the time were `now` (tests and what-if questions).
    pub async fn prune_at(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        dry_run: bool,
    ) -> Result<PruneReport, BackupError> {
        let r = &self.config.retention;
        let horizon = now - chrono::Duration::days(i64::from(r.keep_days));
        let mut report = PruneReport {
            dry_run,
            ..Default::default()
        };
        for store in &self.stores {
            for source in self.config.sources.keys() {
                // One listing serves the manifests and the orphan check.
                let objects = store.objects(source).await?;
                let all: Vec<Manifest> = store.manifests_among(&objects).await?;
                report
                    .deleted
                    .extend(prune_orphans(store, source, &objects, &all, now, dry_run).await?);
                let anchor = all
                    .iter()
                    .rev()
                    .find(|m| m.kind == Kind::Full && self.is_verified(&store.name, source, &m.id))
                    .or_else(|| all.iter().rev().find(|m| m.kind == Kind::Full))
                    .map(|m| m.id.clone());
                let n = all.len();
                for (i, m) in all.iter().enumerate() {
                    let started = chrono::DateTime::parse_from_rfc3339(&m.started_at)
                        .map(|t| t.with_timezone(&chrono::Utc))
                        .map_err(|e| BackupError::Failed(format!("{}: started_at: {e}", m.id)))?;
                    let keep = if n - i <= r.keep_last as usize {
                        Some(format!("one of the newest {}", r.keep_last))
                    } else if started >= horizon {
                        Some(format!("younger than {} days", r.keep_days))
                    } else if anchor.as_deref() == Some(m.id.as_str()) {
                        Some("the newest verified full backup".into())
                    } else if m.kind == Kind::Incremental
                        && anchor.as_deref().is_some_and(|a| m.id.as_str() > a)
                    {
                        Some("needed by the newest verified full backup".into())
                    } else {
                        None
                    };
                    let entry = |reason: String| Pruned {
                        target: store.name.clone(),
                        source: source.clone(),
                        id: m.id.clone(),
                        reason,
                    };
                    match keep {
                        Some(reason) => report.kept.push(entry(reason)),
                        None => {
                            if !dry_run {
                                store
                                    .backend
                                    .delete(&store.key(&Manifest::key(source, &m.id)))
                                    .await
                                    .map_err(store.err())?;
                                store
                                    .backend
                                    .delete(&store.key(&m.object))
                                    .await
                                    .map_err(store.err())?;
                            }
                            report
                                .deleted
                                .push(entry(format!("older than {} days", r.keep_days)));
                        }
                    }
                }
            }
        }
        Ok(report)
    }
}

/// How old an object without a manifest must be before prune removes it.
const ORPHAN_AGE_HOURS: i64 = 24;

/// Deletes (unless `dry_run`) the objects of `source` that no manifest refers to
/// and that are older than a day.
async fn prune_orphans(
    store: &super::Store,
    source: &str,
    objects: &[crate::caps::s3::ObjectMeta],
    manifests: &[Manifest],
    now: chrono::DateTime<chrono::Utc>,
    dry_run: bool,
) -> Result<Vec<Pruned>, BackupError> {
    let mut deleted = Vec::new();
    let referenced: std::collections::BTreeSet<String> =
        manifests.iter().map(|m| store.key(&m.object)).collect();
    let horizon = now - chrono::Duration::hours(ORPHAN_AGE_HOURS);
    for obj in objects {
        let modified = chrono::DateTime::from_timestamp_millis(
            i64::try_from(obj.last_modified_ms).unwrap_or(i64::MAX),
        )
        .unwrap_or(now);
        if obj.key.ends_with(".manifest.json")
            || referenced.contains(&obj.key)
            || modified > horizon
        {
            continue;
        }
        if !dry_run {
            store.backend.delete(&obj.key).await.map_err(store.err())?;
        }
        deleted.push(Pruned {
            target: store.name.clone(),
            source: source.to_string(),
            id: obj.key.clone(),
            reason: "remains of an incomplete backup (no manifest)".into(),
        });
    }
    Ok(deleted)
}
