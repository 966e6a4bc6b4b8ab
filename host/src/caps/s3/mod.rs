//! The `s3` capability: object storage by alias, on S3 or a local directory.

pub mod keys;
pub mod local;
pub mod remote;

use crate::bindings::CapError;
use crate::bindings::drhost::plugin::s3 as wit;
use crate::caps::{Decision, Grant, Moved, Summarize};
use crate::policy::{Policy, S3Access, S3Grant};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt};

pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
pub type Reader = Pin<Box<dyn AsyncRead + Send>>;

/// Size of the buffer used when streaming between backends, and of S3 multipart parts.
pub const PART_SIZE: usize = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{0} does not exist")]
    NotFound(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unavailable(String),
}

impl From<BackendError> for CapError {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::NotFound(m) => CapError::NotFound(format!("{m} does not exist")),
            BackendError::TooLarge(m) => CapError::TooLarge(m),
            BackendError::Invalid(m) => CapError::Invalid(m),
            BackendError::Unavailable(m) => CapError::Unavailable(m),
        }
    }
}

/// Metadata of an object, with its full key (prefix included).
#[derive(Debug, Clone)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    pub etag: String,
    pub last_modified_ms: u64,
    pub version_id: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Page {
    pub objects: Vec<ObjectMeta>,
    pub next_token: Option<String>,
}

#[derive(Debug, Clone)]
pub struct VersionMeta {
    pub key: String,
    pub version_id: String,
    pub size: u64,
    pub last_modified_ms: u64,
    pub is_latest: bool,
    pub delete_marker: bool,
}

#[derive(Debug, Clone)]
pub struct VersionPage {
    pub versions: Vec<VersionMeta>,
    pub next_token: Option<String>,
}

/// An object store. Keys here are full keys; confinement to the alias's
/// prefix has been checked before a backend sees them.
pub trait Backend: Send + Sync {
    /// Identifies the store, so that copies within one store can be server-side.
    fn store_id(&self) -> String;
    /// The S3 bucket behind this backend, for server-side copies.
    fn s3_bucket(&self) -> Option<&remote::S3Bucket> {
        None
    }
    fn head<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<Option<ObjectMeta>, BackendError>>;
    /// Opens an object (or one version of it) for streaming.
    fn open<'a>(
        &'a self,
        key: &'a str,
        version: Option<&'a str>,
    ) -> BoxFut<'a, Result<(ObjectMeta, Reader), BackendError>>;
    fn put<'a>(
        &'a self,
        key: &'a str,
        body: Vec<u8>,
    ) -> BoxFut<'a, Result<ObjectMeta, BackendError>>;
    /// Writes `reader` to its end (exactly `size` bytes when given) with
    /// bounded memory; nothing is visible under `key` unless every byte
    /// arrived and the reader ended without an error.
    fn put_stream<'a>(
        &'a self,
        key: &'a str,
        size: Option<u64>,
        reader: Reader,
    ) -> BoxFut<'a, Result<ObjectMeta, BackendError>>;
    fn list<'a>(
        &'a self,
        prefix: &'a str,
        token: Option<&'a str>,
        max: u32,
    ) -> BoxFut<'a, Result<Page, BackendError>>;
    fn list_versions<'a>(
        &'a self,
        prefix: &'a str,
        token: Option<&'a str>,
        max: u32,
    ) -> BoxFut<'a, Result<VersionPage, BackendError>>;
    fn delete<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<(), BackendError>>;
    /// What interrupted writes left under `prefix` before `before_ms`
    /// (Unix milliseconds): temporary files of a local bucket, multipart
    /// uploads never completed nor aborted on S3. Removed unless `dry_run`;
    /// the keys are returned either way.
    fn sweep_leftovers<'a>(
        &'a self,
        prefix: &'a str,
        before_ms: u64,
        dry_run: bool,
    ) -> BoxFut<'a, Result<Vec<String>, BackendError>>;
    /// Copies within this store (server-side on S3). `src` is this store.
    fn copy_within<'a>(
        &'a self,
        src_key: &'a str,
        dst_key: &'a str,
        dst: &'a dyn Backend,
    ) -> BoxFut<'a, Result<ObjectMeta, BackendError>>;
}

/// An alias: its grant and its backend.
pub struct Alias {
    pub name: String,
    pub grant: S3Grant,
    pub backend: Arc<dyn Backend>,
}

impl Alias {
    /// Decides whether `access` is granted, naming the grant either way.
    pub fn decide(&self, access: S3Access, op: &str) -> Decision {
        let modes: Vec<String> = self.grant.access.iter().map(|a| a.to_string()).collect();
        if self.grant.allows(access) {
            Decision::Allow(
                Grant::on(
                    format!("s3.{}", self.name),
                    self.grant.sandbox,
                    format!("s3.{} access={access}", self.name),
                )
                .phases(&self.grant.phases, &self.grant.write_phases),
            )
        } else {
            Decision::Deny {
                needed: format!("s3.{} access={access}", self.name),
                message: format!(
                    "s3.{op} on alias {:?} needs {access:?} access, but [s3.{}] grants only [{}]; add \"{access}\" to its access list",
                    self.name,
                    self.name,
                    modes.join(", ")
                ),
            }
        }
    }

    /// On a write-once alias, refuses a key that already exists.
    pub async fn check_new(&self, full: &str, key: &str) -> Result<(), CapError> {
        if !self.grant.write_once {
            return Ok(());
        }
        match self.backend.head(full).await {
            Ok(None) => Ok(()),
            Ok(Some(_)) => Err(CapError::Denied(format!(
                "{key:?} exists on alias {:?}, which is write-once ([s3.{}] write-once = true): objects there are never replaced",
                self.name, self.name
            ))),
            Err(e) => Err(CapError::Unavailable(format!(
                "checking {key:?} on write-once alias {:?}: {e}",
                self.name
            ))),
        }
    }

    /// The full key for a plugin key, or why it is refused.
    pub fn key(&self, key: &str) -> Result<String, CapError> {
        keys::full_key(&self.grant.prefix, key)
            .map_err(|e| CapError::Invalid(format!("key refused on alias {:?}: {e}", self.name)))
    }

    pub fn prefix(&self, sub: &str) -> Result<String, CapError> {
        keys::full_prefix(&self.grant.prefix, sub)
            .map_err(|e| CapError::Invalid(format!("prefix refused on alias {:?}: {e}", self.name)))
    }

    /// Back from a full key to the plugin's view, if it lies under the prefix.
    pub fn relative(&self, full: &str) -> Option<String> {
        full.strip_prefix(&self.grant.prefix).map(str::to_string)
    }
}

/// All aliases of a run.
pub struct S3Cap {
    aliases: BTreeMap<String, Alias>,
    pub max_guest_bytes: u64,
    /// `[audit] anchor`: the host's, never the plugin's.
    anchor: Option<String>,
}

impl S3Cap {
    pub async fn from_policy(policy: &Policy) -> Result<Self, String> {
        let mut aliases = BTreeMap::new();
        for (name, grant) in &policy.s3 {
            let backend: Arc<dyn Backend> = match (&grant.path, &grant.bucket) {
                // Rooted at the prefix's folder: a symlink in the bucket
                // cannot reach another alias's objects.
                (Some(path), _) => Arc::new(
                    local::LocalBucket::open_at(
                        &policy.resolve_path(path),
                        &grant.prefix,
                        grant.allows(S3Access::Write),
                    )
                    .map_err(|e| format!("[s3.{name}]: {e}"))?,
                ),
                (None, Some(bucket)) => Arc::new(
                    remote::S3Bucket::connect(bucket, grant)
                        .await
                        .map_err(|e| format!("[s3.{name}]: {e}"))?,
                ),
                (None, None) => return Err(format!("[s3.{name}] has no backend")),
            };
            aliases.insert(
                name.clone(),
                Alias {
                    name: name.clone(),
                    grant: grant.clone(),
                    backend,
                },
            );
        }
        Ok(S3Cap {
            aliases,
            max_guest_bytes: policy.limits.max_guest_bytes.0,
            anchor: policy.audit.anchor.clone(),
        })
    }

    /// The alias, or the decision that denies an unknown one.
    pub fn alias(&self, name: &str, access: S3Access, op: &str) -> Result<&Alias, Decision> {
        if self.anchor.as_deref() == Some(name) {
            return Err(Decision::Deny {
                needed: format!("s3.{name} (reserved: [audit] anchor)"),
                message: format!(
                    "s3.{op}: alias {name:?} holds the audit log's heads ([audit] anchor); plugins may not use it"
                ),
            });
        }
        self.aliases.get(name).ok_or_else(|| Decision::Deny {
            needed: format!("s3.{name} access={access}"),
            message: format!(
                "s3.{op}: no alias {name:?} is granted; add an [s3.{name}] table with access = [\"{access}\"] to the policy"
            ),
        })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.aliases.keys().map(String::as_str)
    }

    /// Writes a run's audit head to the `[audit] anchor` alias (write-once:
    /// a head already there is never replaced).
    pub async fn anchor_head(&self, run_id: &str, head: &str) -> Result<(), String> {
        let Some(alias) = self.anchor.as_ref().and_then(|a| self.aliases.get(a)) else {
            return Ok(());
        };
        let key = anchor_key(run_id);
        let full = alias.key(&key).map_err(|e| format!("{e:?}"))?;
        alias
            .check_new(&full, &key)
            .await
            .map_err(|e| crate::caps::error_text(&e))?;
        alias
            .backend
            .put(&full, format!("{head}\n").into_bytes())
            .await
            .map(|_| ())
            .map_err(|e| format!("s3.{}: {e}", alias.name))
    }

    /// The head anchored for `run_id`, if any.
    pub async fn anchored_head(&self, run_id: &str) -> Result<Option<String>, String> {
        let Some(alias) = self.anchor.as_ref().and_then(|a| self.aliases.get(a)) else {
            return Err("the policy names no [audit] anchor".into());
        };
        let key = anchor_key(run_id);
        let full = alias.key(&key).map_err(|e| format!("{e:?}"))?;
        let (_, mut reader) = match alias.backend.open(&full, None).await {
            Ok(x) => x,
            Err(BackendError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(format!("s3.{}: {e}", alias.name)),
        };
        let mut text = String::new();
        (&mut reader)
            .take(256)
            .read_to_string(&mut text)
            .await
            .map_err(|e| format!("s3.{}: reading {key}: {e}", alias.name))?;
        Ok(Some(text.trim().to_string()))
    }
}

/// Where a run's head lies on the anchor alias.
fn anchor_key(run_id: &str) -> String {
    format!("audit-heads/{run_id}.sha256")
}

/// Reads a whole object into memory, refusing more than `max` bytes.
pub async fn read_capped(
    alias: &Alias,
    key: &str,
    version: Option<&str>,
    max: u64,
) -> Result<Vec<u8>, CapError> {
    let (meta, mut reader) = alias.backend.open(key, version).await?;
    let too_large = |size: u64| {
        CapError::TooLarge(format!(
            "{key:?} on alias {:?} is {size} bytes, over the {max}-byte limit for data copied into the plugin ([limits] max-guest-bytes); use s3.copy or s3.checksum, which stay in the host",
            alias.name
        ))
    };
    if meta.size > max {
        return Err(too_large(meta.size));
    }
    let mut buf = Vec::with_capacity(usize::try_from(meta.size).unwrap_or(0));
    (&mut reader)
        .take(max + 1)
        .read_to_end(&mut buf)
        .await
        .map_err(|e| CapError::Unavailable(format!("reading {key:?}: {e}")))?;
    if buf.len() as u64 > max {
        return Err(too_large(buf.len() as u64));
    }
    if buf.len() as u64 != meta.size {
        return Err(CapError::Unavailable(format!(
            "{key:?} ended after {} of {} bytes",
            buf.len(),
            meta.size
        )));
    }
    Ok(buf)
}

/// sha256 of an object, streamed.
pub async fn checksum(alias: &Alias, key: &str) -> Result<Checksum, CapError> {
    let (meta, mut reader) = alias.backend.open(key, None).await?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut total = 0u64;
    loop {
        let n = reader
            .read(&mut buf)
            .await
            .map_err(|e| CapError::Unavailable(format!("reading {key:?}: {e}")))?;
        if n == 0 {
            break;
        }
        total += n as u64;
        hasher.update(&buf[..n]);
    }
    if total != meta.size {
        return Err(CapError::Unavailable(format!(
            "{key:?} ended after {total} of {} bytes",
            meta.size
        )));
    }
    Ok(Checksum {
        hex: hex::encode(hasher.finalize()),
        bytes: total,
    })
}

pub struct Checksum {
    pub hex: String,
    pub bytes: u64,
}

impl Summarize for Checksum {
    fn moved(&self) -> Moved {
        Moved {
            bytes: Some(self.bytes),
            sha256: Some(self.hex.clone()),
            ..Moved::default()
        }
    }
}

/// Copies between two aliases: server-side within one store, streamed otherwise.
pub async fn copy(
    src: &Alias,
    src_key: &str,
    dst: &Alias,
    dst_key: &str,
) -> Result<ObjectMeta, CapError> {
    if src.backend.store_id() == dst.backend.store_id() {
        return Ok(src
            .backend
            .copy_within(src_key, dst_key, dst.backend.as_ref())
            .await?);
    }
    let (meta, reader) = src.backend.open(src_key, None).await?;
    Ok(dst
        .backend
        .put_stream(dst_key, Some(meta.size), reader)
        .await?)
}

impl ObjectMeta {
    pub fn to_wit(&self, alias: &Alias) -> wit::ObjectInfo {
        wit::ObjectInfo {
            key: alias
                .relative(&self.key)
                .unwrap_or_else(|| self.key.clone()),
            size: self.size,
            etag: self.etag.clone(),
            last_modified_ms: self.last_modified_ms,
            version_id: self.version_id.clone(),
        }
    }
}

impl Summarize for wit::ObjectInfo {
    fn moved(&self) -> Moved {
        Moved {
            bytes: Some(self.size),
            ..Moved::default()
        }
    }
}
impl Summarize for wit::ListPage {
    fn moved(&self) -> Moved {
        let mut m = Moved::default();
        m.extra.insert("objects".into(), self.objects.len().into());
        m
    }
}
impl Summarize for wit::VersionPage {
    fn moved(&self) -> Moved {
        let mut m = Moved::default();
        m.extra
            .insert("versions".into(), self.versions.len().into());
        m
    }
}

/// Turns a backend error on a full key into the plugin's view.
pub fn not_found_relative(e: BackendError, alias: &Alias) -> CapError {
    match e {
        BackendError::NotFound(k) => CapError::NotFound(format!(
            "{:?} does not exist on alias {:?}",
            alias.relative(&k).unwrap_or(k),
            alias.name
        )),
        other => other.into(),
    }
}
