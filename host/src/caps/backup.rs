//! The `backup` capability: plugins drive the host's backup engine by
//! source name; the policy grants operations per source.

use crate::backup::Backups;
use crate::caps::{Decision, Grant};
use crate::policy::{BackupAccess, BackupGrant};
use std::collections::BTreeMap;
use std::sync::Arc;

pub struct BackupCap {
    /// The engine, when the run was given a drhost.toml.
    pub backups: Option<Arc<Backups>>,
    pub grants: BTreeMap<String, BackupGrant>,
}

impl BackupCap {
    pub fn decide(&self, source: &str, access: BackupAccess, op: &str) -> Decision {
        match self.grants.get(source) {
            Some(g) if g.access.contains(&access) => Decision::Allow(
                Grant::on(
                    format!("backup.{source}"),
                    g.sandbox,
                    format!("backup.{source} access={access}"),
                )
                .phases(&g.phases, &g.write_phases),
            ),
            Some(_) => Decision::Deny {
                needed: format!("backup.{source} access={access}"),
                message: format!(
                    "backup.{op}: [backup.{source}] does not grant {access:?}; add it to its access list"
                ),
            },
            None => Decision::Deny {
                needed: format!("backup.{source} access={access}"),
                message: format!(
                    "backup.{op}: no source {source:?} is granted; add a [backup.{source}] table with access = [\"{access}\"] to the policy"
                ),
            },
        }
    }

    /// A restore also needs the destination listed in `restore-to`.
    pub fn decide_restore(&self, source: &str, to: &str) -> Decision {
        match self.decide(source, BackupAccess::Restore, "restore") {
            Decision::Allow(g) => match self.grants.get(source) {
                Some(grant) if grant.restore_to.iter().any(|t| t == to) => {
                    // The destination is replaced: in a drill it must be a sandbox too.
                    let to_sandbox = self.grants.get(to).is_some_and(|t| t.sandbox);
                    let dest = Grant::on(format!("backup.{to}"), to_sandbox, "")
                        .phases(&grant.phases, &grant.write_phases);
                    Decision::Allow(g.touching(dest, &format!("restore-to={to}")))
                }
                _ => Decision::Deny {
                    needed: format!("backup.{source} restore-to={to}"),
                    message: format!(
                        "backup.restore: [backup.{source}] may not restore into {to:?}; add it to restore-to"
                    ),
                },
            },
            deny => deny,
        }
    }
}

use crate::backup::manifest::{Kind, Manifest};
use crate::backup::{BackupError, RestoreReport, Status, VerifyReport};
use crate::bindings::CapError;
use crate::bindings::drhost::plugin::backup as wit;
use crate::caps::{Moved, Summarize};
use serde_json::json;

impl From<BackupError> for CapError {
    fn from(e: BackupError) -> Self {
        match e {
            BackupError::Config(m) => CapError::Invalid(m),
            BackupError::NotFound(m) => CapError::NotFound(m),
            other => CapError::Unavailable(other.to_string()),
        }
    }
}

pub fn kind_from_wit(k: wit::BackupKind) -> Kind {
    match k {
        wit::BackupKind::Full => Kind::Full,
        wit::BackupKind::Incremental => Kind::Incremental,
    }
}

fn millis(rfc3339: &str) -> u64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .map(|t| u64::try_from(t.timestamp_millis()).unwrap_or(0))
        .unwrap_or(0)
}

pub fn info(m: &Manifest, targets: Vec<String>) -> wit::BackupInfo {
    wit::BackupInfo {
        id: m.id.clone(),
        source: m.source.clone(),
        kind: match m.kind {
            Kind::Full => wit::BackupKind::Full,
            Kind::Incremental => wit::BackupKind::Incremental,
        },
        covers_until_ms: millis(&m.covers.until),
        position: m.covers.position.clone(),
        stored_bytes: m.ciphertext.size,
        plaintext_bytes: m.plaintext.size,
        tables: m
            .tables
            .iter()
            .map(|(name, rows)| wit::TableCount {
                name: name.clone(),
                rows: *rows,
            })
            .collect(),
        targets,
    }
}

/// Backups merged across targets, oldest first.
pub fn merge(all: Vec<(String, Manifest)>) -> Vec<wit::BackupInfo> {
    let mut by_id: BTreeMap<String, (Manifest, Vec<String>)> = BTreeMap::new();
    for (target, m) in all {
        by_id
            .entry(m.id.clone())
            .or_insert_with(|| (m, Vec::new()))
            .1
            .push(target);
    }
    by_id.into_values().map(|(m, t)| info(&m, t)).collect()
}

pub fn report(r: &VerifyReport) -> wit::VerifyReport {
    wit::VerifyReport {
        target: r.target.clone(),
        id: r.id.clone(),
        passed: r.passed(),
        checks: r
            .checks
            .iter()
            .map(|c| wit::Check {
                name: c.name.to_string(),
                status: match c.status {
                    Status::Pass => wit::CheckStatus::Pass,
                    Status::Fail => wit::CheckStatus::Fail,
                    Status::Skip => wit::CheckStatus::Skip,
                },
                detail: c.detail.clone(),
            })
            .collect(),
    }
}

pub fn restored(r: &RestoreReport) -> wit::RestoreReport {
    wit::RestoreReport {
        id: r.id.clone(),
        read_from: r.from.clone(),
        restored_to: r.to.clone(),
        tables: u32::try_from(r.tables).unwrap_or(u32::MAX),
        rows: r.rows,
        plaintext_bytes: r.bytes,
        duration_ms: (r.seconds * 1000.0) as u64,
    }
}

impl Summarize for wit::BackupInfo {
    fn moved(&self) -> Moved {
        let mut m = Moved {
            bytes: Some(self.stored_bytes),
            ..Moved::default()
        };
        m.extra.insert("backup_id".into(), json!(self.id));
        m.extra.insert("targets".into(), json!(self.targets));
        m
    }
}

impl Summarize for Vec<wit::BackupInfo> {
    fn moved(&self) -> Moved {
        let mut m = Moved::default();
        m.extra.insert("count".into(), json!(self.len()));
        m
    }
}

impl Summarize for Vec<wit::VerifyReport> {
    fn moved(&self) -> Moved {
        let mut m = Moved::default();
        let verdicts: Vec<_> = self
            .iter()
            .map(|r| json!({"target": r.target, "id": r.id, "passed": r.passed}))
            .collect();
        m.extra.insert("verified".into(), json!(verdicts));
        m
    }
}

impl Summarize for wit::RestoreReport {
    fn moved(&self) -> Moved {
        let mut m = Moved {
            bytes: Some(self.plaintext_bytes),
            ..Moved::default()
        };
        m.extra.insert("backup_id".into(), json!(self.id));
        m.extra.insert("rows".into(), json!(self.rows));
        m
    }
}
