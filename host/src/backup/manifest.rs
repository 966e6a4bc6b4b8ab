//! The manifest: a backup's description, written to a target after its data.
//! Its presence is what makes a backup exist (docs/backup-format.md).

use super::config::SourceKind;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Version of the manifest format; readers refuse a newer one.
pub const FORMAT: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Full,
    Incremental,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Full => "full",
            Kind::Incremental => "incremental",
        })
    }
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "full" => Ok(Kind::Full),
            "incremental" => Ok(Kind::Incremental),
            other => Err(format!(
                "unknown backup kind {other:?} (full or incremental)"
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientInfo {
    /// The age recipient (a public key).
    pub recipient: String,
    /// First 16 hex digits of the sha256 of the recipient string.
    pub fingerprint: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptionInfo {
    /// "age" or "none".
    pub scheme: String,
    pub recipients: Vec<RecipientInfo>,
}

/// What point in the source's history the backup holds: the bound for RPO.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Covers {
    /// The moment the snapshot was taken (RFC 3339, UTC).
    pub until: String,
    /// The engine's log position at that moment, when it has one
    /// (MariaDB `binlog-file:position`, PostgreSQL snapshot id).
    pub position: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// `<UTC timestamp>-<kind>`, unique within the source.
    pub id: String,
    pub source: String,
    pub source_kind: SourceKind,
    pub kind: Kind,
    pub started_at: String,
    pub finished_at: String,
    pub covers: Covers,
    /// The data object's key, relative to the target's prefix.
    pub object: String,
    /// Transformations from the plaintext to the object, in order.
    pub pipeline: Vec<String>,
    /// The plaintext: the database's own dump or file format.
    pub plaintext: Digest,
    /// The object as stored.
    pub ciphertext: Digest,
    /// Tables and their row counts in the backup.
    pub tables: BTreeMap<String, u64>,
    /// Versions of the tools that produced it.
    pub tools: BTreeMap<String, String>,
    pub encryption: EncryptionInfo,
    /// Incrementals: the backup this one continues (full or incremental).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// Incrementals: the log position the changes start at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_position: Option<String>,
    /// Incrementals: the binary log files inside the (tar) plaintext, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logs: Vec<String>,
    /// MariaDB: the database the backup was taken of. A replay keeps that
    /// database's events from the logs, whatever database it restores into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// Whether its signature checked out when it was read (never stored:
    /// the signature is a file of its own, see `signing`).
    #[serde(skip)]
    pub authenticity: super::signing::Authenticity,
}

impl Manifest {
    /// `<source>/<id>.manifest.json`, relative to the target prefix.
    pub fn key(source: &str, id: &str) -> String {
        format!("{source}/{id}.manifest.json")
    }

    pub fn encrypted(&self) -> bool {
        self.encryption.scheme == "age"
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        #[derive(Deserialize)]
        struct Probe {
            format: u32,
        }
        let probe: Probe =
            serde_json::from_slice(bytes).map_err(|e| format!("not a drhost manifest: {e}"))?;
        if probe.format > FORMAT {
            return Err(format!(
                "manifest format {} is newer than this drhost understands ({FORMAT})",
                probe.format
            ));
        }
        serde_json::from_slice(bytes).map_err(|e| format!("invalid manifest: {e}"))
    }
}

/// A backup id for a start time: sortable, and safe as a key segment.
pub fn new_id(started: chrono::DateTime<chrono::Utc>, kind: Kind) -> String {
    format!("{}-{kind}", started.format("%Y%m%dT%H%M%S%3fZ"))
}

/// The fingerprint recorded for an age recipient.
pub fn fingerprint(recipient: &str) -> String {
    crate::digest::sha256_hex(recipient.as_bytes())[..16].to_string()
}

/// A binary log position, `file:offset`; ordered as the server writes them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LogPosition {
    pub file: String,
    pub offset: u64,
}

impl LogPosition {
    pub fn parse(s: &str) -> Option<Self> {
        let (file, offset) = s.rsplit_once(':')?;
        Some(LogPosition {
            file: file.to_string(),
            offset: offset.parse().ok()?,
        })
    }
}

impl std::fmt::Display for LogPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.offset)
    }
}
