//! `drhost backup restore`: load into a staging place, verify it, and only
//! then swap it in. Until the swap the target is untouched; a failed or
//! interrupted restore leaves at most a staging copy, which the next restore
//! replaces.
//!
//! Point-in-time recovery (MariaDB): the last full backup before the point,
//! then the binary logs of the incrementals that follow it, replayed into
//! the staging database up to the point (a time, or a binlog position).

use super::engine::mariadb::{Mariadb, Stop};
use super::engine::{Engine, Inspection, Place, Purpose};
use super::manifest::{Kind, LogPosition, Manifest};
use super::verify::Loaded;
use super::{BackupError, Backups, Store};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub id: String,
    pub source: String,
    pub from: String,
    pub to: String,
    /// Incrementals replayed on top of the full backup (point-in-time).
    pub replayed: Vec<String>,
    pub point_in_time: Option<String>,
    pub tables: usize,
    pub rows: u64,
    pub bytes: u64,
    pub seconds: f64,
}

/// `2026-11-27T02:15:00Z` (any RFC 3339 time) or `binlog.000042:1234`.
pub fn parse_stop(text: &str) -> Result<Stop, BackupError> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(Stop::Time(t.with_timezone(&chrono::Utc)));
    }
    if let Some(p) = LogPosition::parse(text) {
        return Ok(Stop::Position(p));
    }
    Err(BackupError::Config(format!(
        "point in time {text:?} is neither an RFC 3339 time (2026-11-27T02:15:00Z) nor a binary log position (binlog.000042:1234)"
    )))
}

/// Whether a backup's snapshot lies at or before the stop.
fn before(m: &Manifest, stop: &Stop) -> bool {
    match stop {
        Stop::Time(t) => chrono::DateTime::parse_from_rfc3339(&m.covers.until)
            .is_ok_and(|u| u.with_timezone(&chrono::Utc) <= *t),
        Stop::Position(p) => position(m).is_some_and(|q| q <= *p),
    }
}

fn position(m: &Manifest) -> Option<LogPosition> {
    m.covers.position.as_deref().and_then(LogPosition::parse)
}

impl Backups {
    /// Restores backup `id` ("latest" allowed) of `source` into the database of
    /// source `to`, reading from target `from` (the first target holding it
    /// when `None`). With `point_in_time`, replays binary logs up to it.
    pub async fn restore(
        &self,
        source: &str,
        id: &str,
        to: &str,
        from: Option<&str>,
        point_in_time: Option<&str>,
    ) -> Result<RestoreReport, BackupError> {
        self.restore_skipping(source, id, to, from, point_in_time, None)
            .await
    }

    /// A point-in-time restore that then replays again from `resume_at` (an
    /// RFC 3339 time) to the end of the archived binary logs: what lies
    /// between the point and `resume_at` — a corruption — is left out, and
    /// the good transactions after it are kept. Binary log times have a
    /// resolution of one second.
    pub async fn restore_skipping(
        &self,
        source: &str,
        id: &str,
        to: &str,
        from: Option<&str>,
        point_in_time: Option<&str>,
        resume_at: Option<&str>,
    ) -> Result<RestoreReport, BackupError> {
        let clock = std::time::Instant::now();
        let stop = point_in_time.map(parse_stop).transpose()?;
        let resume = match resume_at.map(parse_stop).transpose()? {
            None => None,
            Some(_) if stop.is_none() => {
                return Err(BackupError::Config(
                    "resuming after a point needs the point (--point-in-time)".into(),
                ));
            }
            Some(Stop::Time(t)) => Some(t),
            Some(Stop::Position(_)) => {
                return Err(BackupError::Config(
                    "resume at a time (RFC 3339), not a binary log position".into(),
                ));
            }
        };
        if let (Some(Stop::Time(p)), Some(r)) = (&stop, &resume)
            && r <= p
        {
            return Err(BackupError::Config(format!(
                "resume-at {r} is not after the point in time {p}"
            )));
        }
        let (store, full, chain) = self
            .plan_restore(source, id, from, stop.as_ref(), resume.is_some(), &[])
            .await?;
        let target: Engine = self.engine(to)?;
        if target.kind() != full.source_kind {
            return Err(BackupError::Config(format!(
                "backup {} is a {} backup; source {to} is {}",
                full.id,
                full.source_kind,
                target.kind()
            )));
        }
        let mut lock = target
            .lock_restores(std::time::Duration::from_secs(30))
            .await?
            .ok_or_else(|| {
                BackupError::Failed(format!(
                    "another restore into {to} is running (it holds the restore lock)"
                ))
            })?;
        if let Some(done) = target.finish_interrupted(&mut lock).await? {
            tracing::warn!("an interrupted restore into {to} was {done}");
        }
        // Crash points up to the swap: a kill at any of them must leave the
        // target as it was (the swap has its own, `<engine>-swap`).
        crate::crash::point("restore");
        // Staged and checked from the first target holding the backup; when
        // that copy cannot be read whole or does not check out, from the
        // next one (unless the caller named the target).
        let (mut store, mut full, mut chain) = (store, full, chain);
        let mut failed: Vec<String> = Vec::new();
        let mut tried: Vec<&str> = Vec::new();
        let (staged, mut staging_file, ins) = loop {
            tracing::info!(id = %full.id, from = %store.name, to, incrementals = chain.len(), "restore started");
            let why = match self
                .stage(
                    store,
                    &full,
                    &chain,
                    &target,
                    source,
                    to,
                    stop.as_ref(),
                    resume,
                )
                .await
            {
                Ok(staged) => break staged,
                Err(why) => why,
            };
            tracing::warn!("restore of {} from {}: {why}", full.id, store.name);
            failed.push(format!("from {}: {why}", store.name));
            tried.push(store.name.as_str());
            let next = match from {
                Some(_) => None,
                None => self
                    .plan_restore(
                        source,
                        &full.id,
                        None,
                        stop.as_ref(),
                        resume.is_some(),
                        &tried,
                    )
                    .await
                    .ok(),
            };
            match next {
                Some((s, f, c)) => (store, full, chain) = (s, f, c),
                None => {
                    return Err(BackupError::Failed(format!(
                        "restore of {} into {to} stopped before touching {}: {}",
                        full.id,
                        target.describe(),
                        failed.join("; ")
                    )));
                }
            }
        };
        // The swap renames the staging file into place (or fails and
        // discards it): either way the guard has nothing left to do.
        if let Some(g) = staging_file.take() {
            g.keep();
        }
        crate::crash::point("restore");
        if let Err(e) = target.swap_in(&staged, &mut lock).await {
            if let Err(d) = target.discard(&staged).await {
                tracing::warn!("removing the staging copy {staged}: {d}");
            }
            return Err(e.into());
        }
        crate::crash::point("restore");
        lock.release().await;
        tracing::info!(id = %full.id, to, "restore finished");
        Ok(RestoreReport {
            id: full.id.clone(),
            source: source.to_string(),
            from: store.name.clone(),
            to: to.to_string(),
            replayed: chain.iter().map(|m| m.id.clone()).collect(),
            point_in_time: point_in_time.map(str::to_string),
            tables: ins.tables.len(),
            rows: ins.tables.values().sum(),
            bytes: full.plaintext.size,
            seconds: clock.elapsed().as_secs_f64(),
        })
    }

    /// Loads `full` from `store` into a staging copy beside the target,
    /// replays `chain`, and checks the copy against the manifests; the
    /// staging copy is discarded when anything fails.
    #[allow(clippy::too_many_arguments)]
    async fn stage(
        &self,
        store: &Store,
        full: &Manifest,
        chain: &[Manifest],
        target: &Engine,
        source: &str,
        to: &str,
        stop: Option<&Stop>,
        resume: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<(Place, Option<super::engine::RemoveOnDrop>, Inspection), String> {
        let load = target
            .load(Purpose::Restore)
            .await
            .map_err(|e| e.to_string())?;
        let loaded = self
            .load_into(store, full, load, &format!("restore {} into {to}", full.id))
            .await
            .map_err(|e| e.to_string())?;
        let staged = loaded.place.clone();
        crate::crash::point("restore");
        // A restore dropped midway (a step cut at its budget) leaves no
        // staging file beside the target. (A staging database is replaced
        // by the next restore: its name is fixed.)
        let staging_file = match &staged {
            Place::File(p) => Some(super::engine::RemoveOnDrop::new(p.clone())),
            Place::Database(_) => None,
        };
        let checked = async {
            check_loaded(&loaded, full)?;
            let ins = target
                .inspect_loaded(&staged)
                .await
                .map_err(|e| e.to_string())?;
            ins.integrity.clone()?;
            same_tables(&ins, full)?;
            crate::crash::point("restore");
            if chain.is_empty() {
                return Ok(ins);
            }
            let Engine::Mariadb(m) = target else {
                return Err("point-in-time recovery needs a MariaDB source".to_string());
            };
            // The logs hold the events of the database that was backed up:
            // replay those, whatever database this restore goes into.
            let source_db = self.backed_up_database(source, full)?;
            for inc in chain {
                self.replay(store, m, &source_db, &staged, inc, None, stop)
                    .await?;
            }
            if let Some(t) = resume {
                for inc in chain {
                    self.replay(store, m, &source_db, &staged, inc, Some(t), None)
                        .await?;
                }
            }
            let ins = target.inspect(&staged).await.map_err(|e| e.to_string())?;
            ins.integrity.clone()?;
            crate::crash::point("restore");
            Ok(ins)
        }
        .await;
        match checked {
            Ok(ins) => Ok((staged, staging_file, ins)),
            Err(why) => {
                if let Err(e) = target.discard(&staged).await {
                    tracing::warn!("removing the staging copy {staged}: {e}");
                }
                Err(why)
            }
        }
    }

    /// Chooses the target (the first holding the backup, leaving out those
    /// in `skip`), the full backup and the incrementals to replay.
    async fn plan_restore(
        &self,
        source: &str,
        id: &str,
        from: Option<&str>,
        stop: Option<&Stop>,
        to_the_end: bool,
        skip: &[&str],
    ) -> Result<(&Store, Manifest, Vec<Manifest>), BackupError> {
        let stores: Vec<&Store> = match from {
            Some(name) => vec![self.store(name)?],
            None => self
                .stores
                .iter()
                .filter(|s| !skip.contains(&s.name.as_str()))
                .collect(),
        };
        let mut misses = Vec::new();
        for store in stores {
            // A target that is down: try the next one.
            let all = match store.manifests(source).await {
                Ok(all) => all,
                Err(e) => {
                    misses.push(e.to_string());
                    continue;
                }
            };
            // Only manifests signed by a trusted key are restored from: a
            // forged one could point at any object encrypted to us.
            let (all, untrusted): (Vec<Manifest>, Vec<Manifest>) =
                all.into_iter().partition(|m| m.authenticity.trusted());
            let named = untrusted
                .iter()
                .rev()
                .find(|m| id == "latest" || m.id == id);
            if let Some(m) = named {
                misses.push(format!(
                    "backup {} on {} is not restored from: {} (check it by hand: \
                     minisign -V -P <public key> -m {}/{}.manifest.json)",
                    m.id,
                    store.name,
                    m.authenticity.problem().unwrap_or_default(),
                    source,
                    m.id
                ));
            }
            let full = match (id, stop) {
                ("latest", Some(stop)) => all
                    .iter()
                    .rev()
                    .find(|m| m.kind == Kind::Full && before(m, stop))
                    .cloned(),
                ("latest", None) => all.iter().rev().find(|m| m.kind == Kind::Full).cloned(),
                (id, _) => all.iter().find(|m| m.id == id).cloned(),
            };
            let Some(full) = full else {
                misses.push(format!("no full backup {id} of {source} on {}", store.name));
                continue;
            };
            if full.kind != Kind::Full {
                return Err(BackupError::Config(format!(
                    "{} is an incremental: restore a full backup, with --point-in-time to replay incrementals",
                    full.id
                )));
            }
            let Some(stop) = stop else {
                return Ok((store, full, Vec::new()));
            };
            if full.source_kind != super::config::SourceKind::Mariadb {
                return Err(BackupError::Config(format!(
                    "point-in-time recovery replays binary logs: MariaDB sources only, and {source} is {}",
                    full.source_kind
                )));
            }
            // Follow the chain of incrementals until one reaches past the stop.
            let mut chain = Vec::new();
            let mut prev = full.id.clone();
            let mut reached = !before(&full, stop);
            for m in all
                .iter()
                .filter(|m| m.id > full.id && m.kind == Kind::Incremental)
            {
                if (reached && !to_the_end) || m.base.as_deref() != Some(prev.as_str()) {
                    break;
                }
                chain.push(m.clone());
                prev = m.id.clone();
                reached = !before(m, stop);
            }
            if !reached {
                let last = chain.last().unwrap_or(&full);
                return Err(BackupError::Failed(format!(
                    "the backups of {source} on {} reach only {} ({}); the point lies later: take an incremental backup first",
                    store.name,
                    last.covers.until,
                    last.covers.position.as_deref().unwrap_or("no position")
                )));
            }
            return Ok((store, full, chain));
        }
        Err(BackupError::NotFound(misses.join("; ")))
    }

    /// The database a MariaDB backup was taken of: recorded in its manifest
    /// (since format 1 with `database`), else the source's database now.
    fn backed_up_database(&self, source: &str, full: &Manifest) -> Result<String, String> {
        if let Some(db) = &full.database {
            return Ok(db.clone());
        }
        match self.engine(source) {
            Ok(Engine::Mariadb(m)) => Ok(m.server.database.clone()),
            Ok(_) => Err(format!("source {source} is not a MariaDB database")),
            Err(e) => Err(format!(
                "the backup does not name the database it was taken of, and source {source} cannot tell: {e}"
            )),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn replay(
        &self,
        store: &Store,
        engine: &Mariadb,
        source_db: &str,
        staged: &Place,
        inc: &Manifest,
        from_time: Option<chrono::DateTime<chrono::Utc>>,
        stop: Option<&Stop>,
    ) -> Result<(), String> {
        let dir = self
            .work_dir()
            .join(format!("replay-{}", Purpose::Verify.tag()));
        let result = async {
            let load = Mariadb::unpack(&dir).map_err(|e| e.to_string())?;
            let loaded = self
                .load_into(store, inc, load, &format!("fetch {}", inc.id))
                .await
                .map_err(|e| e.to_string())?;
            check_loaded(&loaded, inc)?;
            crate::crash::point("restore");
            let start = inc
                .from_position
                .as_deref()
                .and_then(LogPosition::parse)
                .map(|p| p.offset);
            engine
                .replay(source_db, staged, &dir, &inc.logs, start, from_time, stop)
                .await
                .map_err(|e| format!("replaying {}: {e}", inc.id))?;
            crate::crash::point("restore");
            Ok(())
        }
        .await;
        let _ = std::fs::remove_dir_all(&dir);
        result
    }
}

fn check_loaded(loaded: &Loaded, m: &Manifest) -> Result<(), String> {
    if let Err(e) = &loaded.opened.result {
        let tool = loaded
            .load
            .as_ref()
            .err()
            .map(|l| format!(" ({l})"))
            .unwrap_or_default();
        return Err(format!("{}: {e}{tool}", m.id));
    }
    loaded.load.clone()?;
    if loaded.opened.plaintext.1 != m.plaintext.sha256 {
        return Err(format!(
            "{}: the plaintext's sha256 differs from the manifest",
            m.id
        ));
    }
    Ok(())
}

fn same_tables(ins: &Inspection, m: &Manifest) -> Result<(), String> {
    if ins.tables == m.tables {
        return Ok(());
    }
    let diff: Vec<String> = m
        .tables
        .iter()
        .filter(|(t, n)| ins.tables.get(*t) != Some(n))
        .map(|(t, n)| format!("{t}: {} of {n}", ins.tables.get(t).copied().unwrap_or(0)))
        .collect();
    Err(format!(
        "the staged copy does not match the manifest: {}",
        diff.join(", ")
    ))
}
