//! `drhost backup prune`: retention. Keeps backups younger than keep-days,
//! the newest keep-last, and always the newest verified full backup (or the
//! newest full when none is verified yet) with the incrementals that
//! continue it; every kept incremental keeps its whole chain (see [`decide`]).
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
    /// Targets or manifests that could not be read: pruned around, not
    /// through (`target: reason`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
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
        let mut report = PruneReport {
            dry_run,
            ..Default::default()
        };
        for store in &self.stores {
            for source in self.config.sources.keys() {
                // A target that is down, or fails midway, does not stop the
                // others: its problem is reported and the next one pruned.
                if let Err(e) = self
                    .prune_one(store, source, now, dry_run, &mut report)
                    .await
                {
                    tracing::warn!("prune of {source} on {} stopped: {e}", store.name);
                    report.problems.push(e.to_string());
                }
            }
        }
        Ok(report)
    }

    async fn prune_one(
        &self,
        store: &super::Store,
        source: &str,
        now: chrono::DateTime<chrono::Utc>,
        dry_run: bool,
        report: &mut PruneReport,
    ) -> Result<(), BackupError> {
        let r = &self.config.retention;
        // What interrupted writes left (temporary files, multipart uploads
        // never completed), once as old as orphans must be.
        let horizon = now - chrono::Duration::hours(ORPHAN_AGE_HOURS);
        let leftovers = store
            .backend
            .sweep_leftovers(
                &store.key(&format!("{source}/")),
                u64::try_from(horizon.timestamp_millis()).unwrap_or(0),
                dry_run,
            )
            .await
            .map_err(store.err())?;
        // Crash points between every deletion: a prune killed at any of
        // them must leave whole chains and the newest verified full.
        crate::crash::point("prune");
        report
            .deleted
            .extend(leftovers.into_iter().map(|key| Pruned {
                target: store.name.clone(),
                source: source.to_string(),
                id: key,
                reason: "left by an interrupted write".into(),
            }));
        // One listing serves the manifests and the orphan check.
        let objects = store.objects(source).await?;
        let (all, unreadable) = store.manifests_checked(&objects).await?;
        if unreadable.is_empty() {
            report
                .deleted
                .extend(prune_orphans(store, source, &objects, &all, now, dry_run).await?);
        } else {
            // An object whose manifest cannot be read right now is not
            // an orphan: leave every unreferenced object alone.
            report.problems.extend(unreadable);
        }
        // Only signed manifests count: forged ones could otherwise push
        // real backups out of keep-last. The others are left alone and
        // reported (with their objects, which they still reference).
        let (all, untrusted): (Vec<Manifest>, Vec<Manifest>) =
            all.into_iter().partition(|m| m.authenticity.trusted());
        for m in &untrusted {
            report.problems.push(format!(
                "target {}: backup {} of {source} left alone: {}",
                store.name,
                m.id,
                m.authenticity.problem().unwrap_or_default()
            ));
        }
        let verified = |id: &str| self.is_verified(&store.name, source, id);
        let plan = decide(&all, &verified, now, r.keep_days, r.keep_last)?;
        let entry = |m: &Manifest, reason: String| Pruned {
            target: store.name.clone(),
            source: source.to_string(),
            id: m.id.clone(),
            reason,
        };
        // Newest first, so that at every moment each incremental
        // left has its base: a prune cut short leaves whole chains.
        if !dry_run {
            for (m, keep) in all.iter().zip(&plan).rev() {
                if keep.is_some() {
                    continue;
                }
                let key = store.key(&Manifest::key(source, &m.id));
                store.backend.delete(&key).await.map_err(store.err())?;
                crate::crash::point("prune");
                store
                    .backend
                    .delete(&store.key(&m.object))
                    .await
                    .map_err(store.err())?;
                crate::crash::point("prune");
                store
                    .backend
                    .delete(&super::signing::signature_key(&key))
                    .await
                    .map_err(store.err())?;
                crate::crash::point("prune");
            }
        }
        for (m, keep) in all.iter().zip(plan) {
            match keep {
                Some(reason) => report.kept.push(entry(m, reason)),
                None => report
                    .deleted
                    .push(entry(m, format!("older than {} days", r.keep_days))),
            }
        }
        Ok(())
    }
}

/// Why each backup of one source on one target is kept (`None`: deleted).
/// `all` is in id order, oldest first. Kept: the newest `keep_last`, those
/// younger than `keep_days`, the newest verified full (the newest full when
/// none is verified) with the incrementals that continue it — and, for
/// every incremental kept, its whole chain back to its full, so no kept
/// incremental ever loses the base a point-in-time recovery starts from.
pub fn decide(
    all: &[Manifest],
    verified: &dyn Fn(&str) -> bool,
    now: chrono::DateTime<chrono::Utc>,
    keep_days: u32,
    keep_last: u32,
) -> Result<Vec<Option<String>>, BackupError> {
    let horizon = now - chrono::Duration::days(i64::from(keep_days));
    let n = all.len();
    let index: std::collections::HashMap<&str, usize> = all
        .iter()
        .enumerate()
        .map(|(i, m)| (m.id.as_str(), i))
        .collect();
    let anchor = all
        .iter()
        .rev()
        .find(|m| m.kind == Kind::Full && verified(&m.id))
        .or_else(|| all.iter().rev().find(|m| m.kind == Kind::Full))
        .map(|m| m.id.as_str());
    // The full an incremental's chain starts from (None when broken).
    let root = |i: usize| -> Option<usize> {
        let mut cur = i;
        for _ in 0..=n {
            match all[cur].kind {
                Kind::Full => return Some(cur),
                Kind::Incremental => cur = *index.get(all[cur].base.as_deref()?)?,
            }
        }
        None
    };
    let anchor_index = anchor.and_then(|a| index.get(a).copied());
    let mut plan = Vec::with_capacity(n);
    for (i, m) in all.iter().enumerate() {
        let started = chrono::DateTime::parse_from_rfc3339(&m.started_at)
            .map(|t| t.with_timezone(&chrono::Utc))
            .map_err(|e| BackupError::Failed(format!("{}: started_at: {e}", m.id)))?;
        plan.push(if n - i <= keep_last as usize {
            Some(format!("one of the newest {keep_last}"))
        } else if started >= horizon {
            Some(format!("younger than {keep_days} days"))
        } else if anchor == Some(m.id.as_str()) {
            Some("the newest verified full backup".into())
        } else if m.kind == Kind::Incremental && anchor_index.is_some() && root(i) == anchor_index {
            Some("continues the newest verified full backup".into())
        } else {
            None
        });
    }
    // Every kept incremental keeps its chain.
    for i in (0..n).rev() {
        if plan[i].is_none() || all[i].kind != Kind::Incremental {
            continue;
        }
        let mut cur = &all[i];
        while let Some(j) = cur.base.as_deref().and_then(|b| index.get(b).copied()) {
            if plan[j].is_none() {
                plan[j] = Some(format!("in the chain of {}, which is kept", all[i].id));
            }
            cur = &all[j];
            if cur.kind == Kind::Full {
                break;
            }
        }
    }
    Ok(plan)
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
    let referenced = store.named_keys(source, manifests);
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
            crate::crash::point("prune");
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

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(id: &str, kind: Kind, base: Option<&str>) -> Manifest {
        let json = serde_json::json!({
            "format": 1, "id": id, "source": "app", "source_kind": "mariadb",
            "kind": kind, "started_at": "2026-01-01T00:00:00Z",
            "finished_at": "2026-01-01T00:00:01Z",
            "covers": {"until": "2026-01-01T00:00:00Z", "position": null},
            "object": format!("app/{id}"), "pipeline": [],
            "plaintext": {"size": 1, "sha256": "00"}, "ciphertext": {"size": 1, "sha256": "00"},
            "tables": {}, "tools": {}, "encryption": {"scheme": "none", "recipients": []},
            "base": base,
        });
        serde_json::from_value(json).unwrap()
    }

    fn at(id: &str, kind: Kind, base: Option<&str>, started: &str) -> Manifest {
        let mut m = manifest(id, kind, base);
        m.started_at = started.to_string();
        m
    }

    proptest::proptest! {
        /// The invariants docs/backup-format.md promises, over random
        /// histories: fulls and incrementals (each on an earlier backup),
        /// spread over 60 days, some fulls verified, any retention.
        #[test]
        fn prune_keeps_what_it_promises(
            history in proptest::collection::vec((proptest::bool::ANY, 0usize..1000, 0u32..1440, proptest::bool::ANY), 1..40),
            keep_days in 0u32..20,
            keep_last in 0u32..6,
        ) {
            let now = chrono::DateTime::parse_from_rfc3339("2026-03-01T00:00:00Z")
                .unwrap()
                .with_timezone(&chrono::Utc);
            let mut all: Vec<Manifest> = Vec::new();
            let mut verified_ids = std::collections::HashSet::new();
            let mut minutes = 0i64;
            for (i, (full, base, gap, verified)) in history.iter().enumerate() {
                minutes += i64::from(*gap) * 60 / 24 + 1; // up to an hour apart, 60 days at most
                let started = (now - chrono::Duration::days(60) + chrono::Duration::minutes(minutes)).to_rfc3339();
                let id = format!("{i:03}");
                let m = if *full || i == 0 {
                    if *verified {
                        verified_ids.insert(id.clone());
                    }
                    at(&id, Kind::Full, None, &started)
                } else {
                    let base = all[base % i].id.clone();
                    at(&id, Kind::Incremental, Some(&base), &started)
                };
                all.push(m);
            }
            let is_verified = |id: &str| verified_ids.contains(id);
            let plan = decide(&all, &is_verified, now, keep_days, keep_last).unwrap();
            let kept = |id: &str| all.iter().zip(&plan).any(|(m, k)| m.id == id && k.is_some());
            // 1. Every kept incremental keeps its whole chain back to its full.
            for (m, k) in all.iter().zip(&plan) {
                if k.is_some() && let Some(base) = &m.base {
                    proptest::prop_assert!(kept(base), "{} kept without its base {base}", m.id);
                }
            }
            // 2. The newest verified full is kept; with none verified, the newest full.
            let anchor = all.iter().rev().find(|m| m.kind == Kind::Full && is_verified(&m.id))
                .or_else(|| all.iter().rev().find(|m| m.kind == Kind::Full));
            if let Some(a) = anchor {
                proptest::prop_assert!(kept(&a.id), "the anchor {} was deleted", a.id);
                // 4. ... with every incremental whose chain starts from it
                // (the point-in-time window after it).
                for m in &all {
                    let mut cur = m;
                    while let Some(b) = &cur.base {
                        cur = all.iter().find(|x| &x.id == b).unwrap();
                    }
                    if m.kind == Kind::Incremental && cur.id == a.id {
                        proptest::prop_assert!(kept(&m.id), "{} continues the anchor {}", m.id, a.id);
                    }
                }
            }
            // 3. The newest keep-last, and everything younger than keep-days.
            let horizon = now - chrono::Duration::days(i64::from(keep_days));
            for (i, m) in all.iter().enumerate() {
                let started = chrono::DateTime::parse_from_rfc3339(&m.started_at).unwrap();
                if all.len() - i <= keep_last as usize || started >= horizon {
                    proptest::prop_assert!(kept(&m.id), "{} should be kept", m.id);
                }
            }
        }
    }

    #[test]
    fn a_kept_incremental_keeps_its_full_and_an_unrelated_chain_goes_whole() {
        use Kind::{Full, Incremental};
        // F1 verified; F2 not, with three incrementals on it; all old.
        let all = vec![
            manifest("1-f1", Full, None),
            manifest("2-f2", Full, None),
            manifest("3-i1", Incremental, Some("2-f2")),
            manifest("4-i2", Incremental, Some("3-i1")),
            manifest("5-i3", Incremental, Some("4-i2")),
        ];
        let later = chrono::DateTime::parse_from_rfc3339("2027-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let verified = |id: &str| id == "1-f1";
        // keep-last 0: F2's chain is not needed by F1, so it goes whole.
        let plan = decide(&all, &verified, later, 30, 0).unwrap();
        let kept: Vec<&str> = all
            .iter()
            .zip(&plan)
            .filter(|(_, k)| k.is_some())
            .map(|(m, _)| m.id.as_str())
            .collect();
        assert_eq!(kept, ["1-f1"]);
        // keep-last 1 keeps the newest incremental: its chain back to F2 stays.
        let plan = decide(&all, &verified, later, 30, 1).unwrap();
        assert!(plan.iter().all(Option::is_some), "{plan:?}");
        assert_eq!(
            plan[1].as_deref(),
            Some("in the chain of 5-i3, which is kept")
        );
    }
}
