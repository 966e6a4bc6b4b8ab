//! The backup engine: dump → zstd → age → every target at once, a manifest
//! written last, the plan's 10-point verification checklist, staged restores
//! and retention. One module per command, as in restic's rustic_core.

pub mod config;
pub mod engine;
pub mod manifest;
pub mod pipeline;
pub mod progress;
pub mod signing;

mod create;
mod prune;
mod restore;
mod verify;

pub use create::{CreateReport, TargetResult};
pub use prune::{PruneReport, Pruned};
pub use restore::RestoreReport;
pub use verify::{CHECKS, Check, Status, VerifyReport, identical};

use crate::caps::s3::{Backend, BackendError, ObjectMeta, local, remote};
use config::Config;
use engine::{Engine, EngineError};
use manifest::Manifest;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::AsyncReadExt;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("target {target}: {source}")]
    Target {
        target: String,
        source: BackendError,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Failed(String),
}

/// A target's store and prefix.
pub struct Store {
    pub name: String,
    pub backend: Arc<dyn Backend>,
    pub prefix: String,
    /// The keys manifests read from here are checked against.
    pub trust: Arc<signing::Trust>,
}

impl Store {
    pub fn key(&self, relative: &str) -> String {
        format!("{}{relative}", self.prefix)
    }

    fn err(&self) -> impl FnOnce(BackendError) -> BackupError + '_ {
        move |source| BackupError::Target {
            target: self.name.clone(),
            source,
        }
    }

    /// Every object under `source/` on this target (full keys).
    pub async fn objects(&self, source: &str) -> Result<Vec<ObjectMeta>, BackupError> {
        let prefix = self.key(&format!("{source}/"));
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .backend
                .list(&prefix, token.as_deref(), 1000)
                .await
                .map_err(self.err())?;
            out.extend(page.objects);
            match page.next_token {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        Ok(out)
    }

    /// Every manifest of `source` on this target, oldest first. A manifest
    /// that cannot be read is reported, not skipped silently.
    pub async fn manifests(&self, source: &str) -> Result<Vec<Manifest>, BackupError> {
        let objects = self.objects(source).await?;
        self.manifests_among(&objects).await
    }

    /// The manifests among objects already listed, oldest first.
    pub async fn manifests_among(
        &self,
        objects: &[ObjectMeta],
    ) -> Result<Vec<Manifest>, BackupError> {
        Ok(self.manifests_checked(objects).await?.0)
    }

    /// The manifests among objects already listed, oldest first, and the
    /// keys of those that could not be read or parsed: one damaged manifest
    /// hides its own backup, never the others.
    pub async fn manifests_checked(
        &self,
        objects: &[ObjectMeta],
    ) -> Result<(Vec<Manifest>, Vec<String>), BackupError> {
        let mut out = Vec::new();
        let mut unreadable = Vec::new();
        for obj in objects {
            if obj.key.ends_with(".manifest.json") {
                match self.read_manifest(&obj.key).await {
                    Ok(m) => out.push(m),
                    Err(e) => {
                        tracing::warn!("skipping a manifest: {e}");
                        unreadable.push(e.to_string());
                    }
                }
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok((out, unreadable))
    }

    async fn read_manifest(&self, key: &str) -> Result<Manifest, BackupError> {
        let (_, mut reader) = self.backend.open(key, None).await.map_err(self.err())?;
        let mut bytes = Vec::new();
        (&mut reader)
            .take(4 << 20)
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| {
                BackupError::Failed(format!("target {}: reading {key}: {e}", self.name))
            })?;
        let mut m = Manifest::parse(&bytes)
            .map_err(|e| BackupError::Failed(format!("target {}: {key}: {e}", self.name)))?;
        // A manifest copied to another backup's name is not that backup.
        if self.key(&Manifest::key(&m.source, &m.id)) != key {
            return Err(BackupError::Failed(format!(
                "target {}: {key} holds the manifest of {}/{}",
                self.name, m.source, m.id
            )));
        }
        let signature = self.read_signature(&signing::signature_key(key)).await?;
        m.authenticity = self
            .trust
            .check(&m.source, &m.id, &bytes, signature.as_deref());
        Ok(m)
    }

    /// A manifest's signature, `None` when there is none (one request).
    async fn read_signature(&self, key: &str) -> Result<Option<Vec<u8>>, BackupError> {
        let mut reader = match self.backend.open(key, None).await {
            Ok((_, reader)) => reader,
            Err(BackendError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(self.err()(e)),
        };
        let mut bytes = Vec::new();
        (&mut reader)
            .take(64 << 10)
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| {
                BackupError::Failed(format!("target {}: reading {key}: {e}", self.name))
            })?;
        Ok(Some(bytes))
    }

    /// Every key the manifests of `source` account for: each manifest, its
    /// signature and its object. Anything else under `source/` is an orphan.
    pub fn named_keys(&self, source: &str, manifests: &[Manifest]) -> BTreeSet<String> {
        manifests
            .iter()
            .flat_map(|m| {
                let key = self.key(&Manifest::key(source, &m.id));
                [self.key(&m.object), signing::signature_key(&key), key]
            })
            .collect()
    }

    /// The manifest of `id` (or the newest when `id` is "latest").
    pub async fn find(&self, source: &str, id: &str) -> Result<Manifest, BackupError> {
        let all = self.manifests(source).await?;
        self.pick(&all, source, id).cloned()
    }

    /// `id` (or the newest when "latest") among manifests already listed.
    pub fn pick<'m>(
        &self,
        all: &'m [Manifest],
        source: &str,
        id: &str,
    ) -> Result<&'m Manifest, BackupError> {
        let found = if id == "latest" {
            all.last()
        } else {
            all.iter().find(|m| m.id == id)
        };
        found.ok_or_else(|| {
            BackupError::NotFound(format!(
                "no backup {id} of source {source} on target {}",
                self.name
            ))
        })
    }
}

/// What `backup list` found.
pub struct Listing {
    /// Every backup read, with its target.
    pub backups: Vec<(String, Manifest)>,
    /// Targets or manifests that could not be read (the listing is partial).
    pub problems: Vec<String>,
    /// Objects no manifest names: a backup interrupted or still running, or
    /// a manifest deleted. `prune` removes them once a day old.
    pub orphans: Vec<String>,
}

/// An installation's backups: its configuration and its open targets.
pub struct Backups {
    pub config: Config,
    pub stores: Vec<Store>,
    /// Scratch space (snapshots, verification copies) and verification records.
    pub state_dir: PathBuf,
    /// Show progress bars (on a terminal).
    pub progress: bool,
    /// Signs the manifests this host writes.
    pub signer: Option<signing::Signer>,
}

impl Backups {
    pub async fn open(config: Config, state_dir: PathBuf) -> Result<Self, BackupError> {
        let signer = match signing::Signer::load(
            config.keys.signing_key.as_ref(),
            &config.base,
            &state_dir,
        )? {
            Some(s) => Some(s),
            // This host's own key, made now; a host that cannot write its
            // state directory can still read and check backups.
            None => match signing::Signer::create(&state_dir) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!("no backup signing key: {e}");
                    None
                }
            },
        };
        let trust = Arc::new(signing::Trust::new(
            &config.keys.signed_by,
            signer.as_ref().map(signing::Signer::public),
        )?);
        let mut stores = Vec::new();
        for (name, target) in &config.targets {
            let grant = target.as_grant(&config.base);
            let backend: Arc<dyn Backend> = match (&grant.path, &grant.bucket) {
                (Some(path), _) => {
                    std::fs::create_dir_all(path).map_err(|e| {
                        BackupError::Config(format!("[targets.{name}] {}: {e}", path.display()))
                    })?;
                    Arc::new(
                        local::LocalBucket::open(path)
                            .map_err(|e| BackupError::Config(format!("[targets.{name}]: {e}")))?,
                    )
                }
                (None, Some(bucket)) => Arc::new(
                    remote::S3Bucket::connect(bucket, &grant)
                        .await
                        .map_err(|e| BackupError::Config(format!("[targets.{name}]: {e}")))?,
                ),
                (None, None) => {
                    return Err(BackupError::Config(format!(
                        "[targets.{name}] has no backend"
                    )));
                }
            };
            stores.push(Store {
                name: name.clone(),
                backend,
                prefix: target.prefix.clone(),
                trust: Arc::clone(&trust),
            });
        }
        Ok(Backups {
            config,
            stores,
            state_dir,
            progress: false,
            signer,
        })
    }

    pub fn store(&self, name: &str) -> Result<&Store, BackupError> {
        self.stores.iter().find(|s| s.name == name).ok_or_else(|| {
            let known: Vec<&str> = self.stores.iter().map(|s| s.name.as_str()).collect();
            BackupError::Config(format!(
                "no target {name:?} in the configuration (known: {})",
                known.join(", ")
            ))
        })
    }

    /// The stores named, or all of them.
    fn stores_named(&self, names: &[String]) -> Result<Vec<&Store>, BackupError> {
        if names.is_empty() {
            return Ok(self.stores.iter().collect());
        }
        names.iter().map(|n| self.store(n)).collect()
    }

    pub fn engine(&self, source: &str) -> Result<Engine, BackupError> {
        let s = self.config.source(source).map_err(BackupError::Config)?;
        Ok(Engine::new(&self.config, source, s, self.work_dir())?)
    }

    pub(crate) fn work_dir(&self) -> PathBuf {
        self.state_dir.join("backup-work")
    }

    fn identity(&self) -> Result<Option<age::x25519::Identity>, BackupError> {
        let Some(secret) = &self.config.keys.identity else {
            return Ok(None);
        };
        let text = match secret.is_env() {
            true => secret.resolve().map_err(BackupError::Config)?,
            false => {
                let path = self.config.resolve(std::path::Path::new(
                    &secret.resolve().map_err(BackupError::Config)?,
                ));
                std::fs::read_to_string(&path).map_err(|e| {
                    BackupError::Config(format!("[keys] identity {}: {e}", path.display()))
                })?
            }
        };
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("AGE-SECRET-KEY-"))
            .ok_or_else(|| {
                BackupError::Config("[keys] identity holds no AGE-SECRET-KEY-… line".into())
            })?;
        line.parse::<age::x25519::Identity>()
            .map(Some)
            .map_err(|e| BackupError::Config(format!("[keys] identity: {e}")))
    }

    /// The identity, required to read an encrypted backup.
    fn identity_for(&self, m: &Manifest) -> Result<Option<age::x25519::Identity>, BackupError> {
        let id = self.identity()?;
        if m.encrypted() && id.is_none() {
            return Err(BackupError::Config(format!(
                "backup {} is encrypted: set [keys] identity (a key file, or env:NAME) to read it",
                m.id
            )));
        }
        Ok(if m.encrypted() { id } else { None })
    }

    /// Every backup of `source` (or of every source) on every target.
    pub async fn list(&self, source: Option<&str>) -> Result<Vec<(String, Manifest)>, BackupError> {
        Ok(self.list_report(source).await?.backups)
    }

    /// Every backup on every reachable target, and what could not be read
    /// (`target: reason`): a target that is down, or a damaged manifest,
    /// hides only itself.
    pub async fn list_report(&self, source: Option<&str>) -> Result<Listing, BackupError> {
        let sources: Vec<String> = match source {
            Some(s) => {
                self.config.source(s).map_err(BackupError::Config)?;
                vec![s.to_string()]
            }
            None => self.config.sources.keys().cloned().collect(),
        };
        let mut out = Vec::new();
        let mut problems = Vec::new();
        let mut orphans = Vec::new();
        for store in &self.stores {
            for s in &sources {
                let listed = match store.objects(s).await {
                    Ok(objects) => store
                        .manifests_checked(&objects)
                        .await
                        .map(|(m, u)| (objects, m, u)),
                    Err(e) => Err(e),
                };
                match listed {
                    Ok((objects, manifests, unreadable)) => {
                        // An object no manifest names: a backup interrupted
                        // (or running), or one whose manifest was deleted.
                        if unreadable.is_empty() {
                            let named = store.named_keys(s, &manifests);
                            orphans.extend(objects.iter().filter(|o| !named.contains(&o.key)).map(
                                |o| format!("target {}: {} has no manifest", store.name, o.key),
                            ));
                        }
                        out.extend(manifests.into_iter().map(|m| (store.name.clone(), m)));
                        problems.extend(unreadable);
                    }
                    Err(e) => {
                        tracing::warn!("target {} skipped: {e}", store.name);
                        problems.push(e.to_string());
                    }
                }
            }
        }
        Ok(Listing {
            backups: out,
            problems,
            orphans,
        })
    }

    /// Where verification results are remembered (prune keeps the newest
    /// verified full backup).
    fn verified_marker(&self, target: &str, source: &str, id: &str) -> PathBuf {
        self.state_dir
            .join("backups-verified")
            .join(target)
            .join(source)
            .join(id)
    }

    pub fn is_verified(&self, target: &str, source: &str, id: &str) -> bool {
        self.verified_marker(target, source, id).exists()
    }
}

/// Generates an age identity; returns (secret key text, public recipient).
pub fn keygen() -> (String, String) {
    use age::secrecy::ExposeSecret;
    let id = age::x25519::Identity::generate();
    (
        id.to_string().expose_secret().to_string(),
        id.to_public().to_string(),
    )
}
