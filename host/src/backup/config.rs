//! `drhost.toml`: the installation's backup sources, targets, keys and retention.
//!
//! Credentials (database URLs, S3 keys, the age identity) live here and stay in
//! the host; plugins name a source or target, never see its secret.

use crate::policy::{S3Access, S3Grant, Secret};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// `"age"` (the default) or `"none"`; "none" must be written out to get plaintext backups.
    #[serde(default)]
    pub encryption: Encryption,
    #[serde(default)]
    pub keys: Keys,
    #[serde(default)]
    pub sources: BTreeMap<String, Source>,
    #[serde(default)]
    pub targets: BTreeMap<String, Target>,
    #[serde(default)]
    pub retention: Retention,
    /// zstd level (1–19). The default, 1, compressed SQL dumps here about
    /// twice as fast as zstd's own default 3, and smaller (docs/benchmarks.md).
    #[serde(default = "default_level")]
    pub zstd_level: i32,
    /// The state store of `drhost serve` and `drhost report`:
    /// `sqlite:path/state.db` (the default, under the state directory) or
    /// `postgres://…` (several hosts sharing the schedules); `env:NAME` allowed.
    pub state: Option<Secret>,
    #[serde(default)]
    pub serve: crate::serve::config::Serve,
    #[serde(default)]
    pub schedule: BTreeMap<String, crate::serve::config::Schedule>,
    #[serde(default)]
    pub alerts: crate::serve::config::Alerts,
    #[serde(default)]
    pub objectives: crate::serve::config::Objectives,
    /// Where relative paths resolve; the file's directory.
    #[serde(skip)]
    pub base: PathBuf,
}

fn default_level() -> i32 {
    1
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Encryption {
    #[default]
    Age,
    None,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Keys {
    /// age recipients (public keys, `age1…`); every backup is readable by each.
    #[serde(default)]
    pub recipients: Vec<String>,
    /// The identity (secret key) for verify and restore: a file path, or
    /// `env:NAME` holding the key itself. Only needed where backups are read.
    pub identity: Option<Secret>,
    /// The minisign secret key (no password) that signs manifests: a file
    /// path, or `env:NAME`. Default: this host's own,
    /// `STATE_DIR/backup-signing.key`, made on first use.
    pub signing_key: Option<Secret>,
    /// minisign public keys whose manifest signatures verify and restore
    /// accept, besides the signing key's own.
    #[serde(default)]
    pub signed_by: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    Sqlite,
    Mariadb,
    Postgres,
    /// Objects under a prefix of a bucket (or local directory).
    Objects,
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SourceKind::Sqlite => "sqlite",
            SourceKind::Mariadb => "mariadb",
            SourceKind::Postgres => "postgres",
            SourceKind::Objects => "objects",
        })
    }
}

/// `[sources.<name>]`: a database, or a prefix of objects, to back up.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Source {
    pub kind: SourceKind,
    /// SQLite: the database file. Objects: a local directory acting as the bucket.
    pub path: Option<PathBuf>,
    /// MariaDB/PostgreSQL: connection URL (`env:NAME` recommended).
    pub url: Option<Secret>,
    /// Objects: the bucket and the prefix backed up, and how to reach it
    /// (the same fields as a target).
    pub bucket: Option<String>,
    #[serde(default)]
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    #[serde(default)]
    pub path_style: bool,
    pub access_key_id: Option<Secret>,
    pub secret_access_key: Option<Secret>,
}

impl Source {
    /// Objects: where they live, as a target description.
    pub fn store(&self) -> Target {
        Target {
            path: self.path.clone(),
            bucket: self.bucket.clone(),
            prefix: self.prefix.clone(),
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            path_style: self.path_style,
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self.secret_access_key.clone(),
        }
    }
}

/// `[targets.<name>]`: where copies go. The same fields as an `[s3.<alias>]`
/// policy table, without access modes (drhost itself writes here).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Target {
    pub path: Option<PathBuf>,
    pub bucket: Option<String>,
    #[serde(default)]
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    #[serde(default)]
    pub path_style: bool,
    pub access_key_id: Option<Secret>,
    pub secret_access_key: Option<Secret>,
}

impl Target {
    /// The grant the s3 backends are built from (full access: drhost writes here).
    pub fn as_grant(&self, base: &Path) -> S3Grant {
        S3Grant {
            path: self.path.as_ref().map(|p| base.join(p)),
            bucket: self.bucket.clone(),
            prefix: self.prefix.clone(),
            access: vec![
                S3Access::Read,
                S3Access::List,
                S3Access::Write,
                S3Access::Delete,
            ],
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            path_style: self.path_style,
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self.secret_access_key.clone(),
            sandbox: false,
            write_once: false,
            phases: None,
            write_phases: None,
        }
    }
}

/// `[retention]`: what `drhost backup prune` keeps.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Retention {
    /// Backups younger than this many days are kept (the plan: 30).
    pub keep_days: u32,
    /// The newest N backups of each source are kept whatever their age.
    pub keep_last: u32,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            keep_days: 30,
            keep_last: 3,
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Config::parse(&text, &base).map_err(|message| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        })
    }

    pub fn parse(text: &str, base: &Path) -> Result<Self, String> {
        let mut config: Config =
            toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())?;
        config.base = base.to_path_buf();
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        match self.encryption {
            Encryption::Age
                if self.keys.recipients.is_empty()
                    && !(self.sources.is_empty() && self.targets.is_empty()) =>
            {
                return Err("backups are encrypted with age by default, and [keys] recipients is empty: \
                     add a recipient (age1…, see `drhost backup keygen`), or write encryption = \"none\" \
                     to store plaintext backups on purpose"
                    .into());
            }
            Encryption::None if !self.keys.recipients.is_empty() => {
                return Err("encryption = \"none\" but [keys] lists recipients: choose one".into());
            }
            _ => {}
        }
        for r in &self.keys.recipients {
            r.parse::<age::x25519::Recipient>().map_err(|e| {
                format!("[keys] recipient {r:?} is not an age X25519 recipient: {e}")
            })?;
        }
        if !(1..=19).contains(&self.zstd_level) {
            return Err(format!("zstd-level {} is outside 1..=19", self.zstd_level));
        }
        for (name, s) in &self.sources {
            check_name("sources", name)?;
            let store_fields = s.bucket.is_some()
                || !s.prefix.is_empty()
                || s.endpoint.is_some()
                || s.access_key_id.is_some();
            if s.kind != SourceKind::Objects && store_fields {
                return Err(format!(
                    "[sources.{name}] bucket, prefix, endpoint and keys apply to kind = \"objects\" only"
                ));
            }
            match (s.kind, &s.path, &s.url) {
                (SourceKind::Objects, path, None) => {
                    if path.is_some() == s.bucket.is_some() {
                        return Err(format!(
                            "[sources.{name}] kind = \"objects\" needs exactly one of path = \"dir\" or bucket = \"name\""
                        ));
                    }
                    if !s.prefix.is_empty() && !s.prefix.ends_with('/') {
                        return Err(format!(
                            "[sources.{name}] prefix {:?} must end with '/'",
                            s.prefix
                        ));
                    }
                }
                (SourceKind::Objects, _, Some(_)) => {
                    return Err(format!("[sources.{name}] kind = \"objects\" takes no url"));
                }
                (SourceKind::Sqlite, Some(_), None) => {}
                (SourceKind::Sqlite, _, _) => {
                    return Err(format!(
                        "[sources.{name}] kind = \"sqlite\" needs path = \"file.db\" (and no url)"
                    ));
                }
                (_, None, Some(_)) => {}
                (k, _, _) => {
                    return Err(format!(
                        "[sources.{name}] kind = \"{k}\" needs url = \"env:NAME\" (and no path)"
                    ));
                }
            }
        }
        if self.targets.is_empty() && !self.sources.is_empty() {
            return Err("no [targets.<name>] table: backups need somewhere to go".into());
        }
        for (name, t) in &self.targets {
            check_name("targets", name)?;
            match (&t.path, &t.bucket) {
                (Some(_), Some(_)) | (None, None) => {
                    return Err(format!(
                        "[targets.{name}] needs exactly one of path = \"dir\" (local) or bucket = \"name\" (S3)"
                    ));
                }
                _ => {}
            }
            if !t.prefix.is_empty() && !t.prefix.ends_with('/') {
                return Err(format!(
                    "[targets.{name}] prefix {:?} must end with '/'",
                    t.prefix
                ));
            }
        }
        crate::serve::config::validate(self)
    }

    pub fn source(&self, name: &str) -> Result<&Source, String> {
        self.sources.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.sources.keys().map(String::as_str).collect();
            format!(
                "no source {name:?} in the configuration (known: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )
        })
    }

    pub fn target(&self, name: &str) -> Result<&Target, String> {
        self.targets.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.targets.keys().map(String::as_str).collect();
            format!(
                "no target {name:?} in the configuration (known: {})",
                known.join(", ")
            )
        })
    }

    pub fn resolve(&self, p: &Path) -> PathBuf {
        self.base.join(p)
    }

    /// Every credential the file names can be had now: each `env:` secret
    /// is set and the identity file (when it is a path) can be read. A
    /// daemon checks this at start, so a gap is not found by the first
    /// restore test, hours later.
    pub fn check_secrets(&self) -> Result<(), String> {
        let mut named: Vec<(String, &Secret)> = Vec::new();
        if let Some(s) = &self.state {
            named.push(("state".into(), s));
        }
        if let Some(s) = &self.keys.signing_key {
            named.push(("[keys] signing-key".into(), s));
        }
        for (name, src) in &self.sources {
            for (key, s) in [
                ("url", &src.url),
                ("access-key-id", &src.access_key_id),
                ("secret-access-key", &src.secret_access_key),
            ] {
                if let Some(s) = s {
                    named.push((format!("[sources.{name}] {key}"), s));
                }
            }
        }
        for (name, t) in &self.targets {
            for (key, s) in [
                ("access-key-id", &t.access_key_id),
                ("secret-access-key", &t.secret_access_key),
            ] {
                if let Some(s) = s {
                    named.push((format!("[targets.{name}] {key}"), s));
                }
            }
        }
        for (what, secret) in named {
            secret.resolve().map_err(|e| format!("{what}: {e}"))?;
        }
        if let Some(identity) = &self.keys.identity {
            let value = identity
                .resolve()
                .map_err(|e| format!("[keys] identity: {e}"))?;
            if !identity.is_env() {
                let path = self.resolve(Path::new(&value));
                std::fs::File::open(&path)
                    .map_err(|e| format!("[keys] identity {}: {e}", path.display()))?;
            }
        }
        Ok(())
    }
}

fn check_name(table: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "[{table}.{name}]: names may hold only letters, digits, '-' and '_'"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";

    #[test]
    fn a_missing_recipient_is_refused_rather_than_writing_plaintext() {
        let e = Config::parse("[targets.t]\npath = \"x\"\n", Path::new(".")).unwrap_err();
        assert!(e.contains("encryption = \"none\""), "{e}");
        let c = Config::parse(
            "encryption = \"none\"\n[targets.t]\npath = \"x\"\n",
            Path::new("."),
        )
        .unwrap();
        assert_eq!(c.encryption, Encryption::None);
    }

    #[test]
    fn every_named_secret_and_the_identity_file_are_checked_at_once() {
        let text = format!(
            "[keys]\nrecipients = [\"{KEY}\"]\nidentity = \"no-such-identity.txt\"\n\
             [sources.shop]\nkind = \"mariadb\"\nurl = \"env:DRHOST_TEST_SURELY_UNSET_URL\"\n\
             [targets.local]\npath = \"b\"\n"
        );
        let dir = tempfile::tempdir().unwrap();
        let c = Config::parse(&text, dir.path()).unwrap();
        let e = c.check_secrets().unwrap_err();
        assert!(
            e.contains("[sources.shop] url") && e.contains("DRHOST_TEST_SURELY_UNSET_URL"),
            "{e}"
        );
        let c = Config::parse(
            &text.replace("env:DRHOST_TEST_SURELY_UNSET_URL", "mysql://h/db"),
            dir.path(),
        )
        .unwrap();
        let e = c.check_secrets().unwrap_err();
        assert!(
            e.contains("[keys] identity") && e.contains("no-such-identity.txt"),
            "{e}"
        );
        std::fs::write(dir.path().join("no-such-identity.txt"), "AGE-SECRET-KEY-1").unwrap();
        c.check_secrets().unwrap();
    }

    #[test]
    fn sources_and_targets_are_checked() {
        let text = format!(
            "[keys]\nrecipients = [\"{KEY}\"]\n[sources.app]\nkind = \"sqlite\"\npath = \"app.db\"\n\
             [sources.shop]\nkind = \"mariadb\"\nurl = \"env:SHOP\"\n[targets.local]\npath = \"b\"\n"
        );
        let c = Config::parse(&text, Path::new("/srv")).unwrap();
        assert_eq!(c.sources["shop"].kind, SourceKind::Mariadb);
        assert_eq!(c.retention.keep_days, 30);
        let bad = text.replace("path = \"app.db\"", "url = \"x\"");
        assert!(
            Config::parse(&bad, Path::new("."))
                .unwrap_err()
                .contains("needs path")
        );
        let bad = text.replace("age1", "age2");
        assert!(
            Config::parse(&bad, Path::new("."))
                .unwrap_err()
                .contains("not an age")
        );
        let bad = format!("{text}colour = 1\n");
        assert!(
            Config::parse(&bad, Path::new("."))
                .unwrap_err()
                .contains("unknown field")
        );
    }
}
