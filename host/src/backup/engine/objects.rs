//! Objects: every object under a prefix of a bucket (S3 or a local
//! directory), with its metadata (size, etag, version id, modification
//! time, sha256), as a POSIX tar: `objects/<key relative to the prefix>`
//! for each object, then `index.json` describing them all.

use super::{Dump, DumpFacts, EngineError, Inspection, Load, Place, Purpose, io_err};
use crate::backup::config::Target;
use crate::caps::s3::{Backend, local, remote};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The row count reported for an objects backup ("tables" in the manifest).
pub const TABLE: &str = "objects";
const INDEX: &str = "index.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    /// Relative to the source's prefix.
    pub key: String,
    pub size: u64,
    pub sha256: String,
    pub etag: String,
    pub version_id: Option<String>,
    pub last_modified_ms: u64,
}

pub struct Objects {
    store: Target,
    base: PathBuf,
    work: PathBuf,
    backend: tokio::sync::OnceCell<Arc<dyn Backend>>,
}

fn store_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Db(format!("object store: {e}"))
}

impl Objects {
    pub fn new(store: Target, base: PathBuf, work: PathBuf) -> Self {
        Objects {
            store,
            base,
            work,
            backend: tokio::sync::OnceCell::new(),
        }
    }

    pub fn describe(&self) -> String {
        match (&self.store.bucket, &self.store.path) {
            (Some(b), _) => format!("s3://{b}/{}", self.store.prefix),
            (None, Some(p)) => format!("{}/{}", p.display(), self.store.prefix),
            _ => "objects".into(),
        }
    }

    async fn backend(&self) -> Result<&Arc<dyn Backend>, EngineError> {
        self.backend
            .get_or_try_init(|| async {
                let grant = self.store.as_grant(&self.base);
                let b: Arc<dyn Backend> = match (&grant.path, &grant.bucket) {
                    (Some(path), _) => Arc::new(local::LocalBucket::open(path).map_err(store_err)?),
                    (None, Some(bucket)) => Arc::new(
                        remote::S3Bucket::connect(bucket, &grant)
                            .await
                            .map_err(store_err)?,
                    ),
                    (None, None) => return Err(store_err("no path or bucket")),
                };
                Ok(b)
            })
            .await
    }

    pub async fn dump(&self) -> Result<Dump, EngineError> {
        let backend = Arc::clone(self.backend().await?);
        let prefix = self.store.prefix.clone();
        let mut keys = Vec::new();
        let mut token = None;
        loop {
            let page = backend
                .list(&prefix, token.as_deref(), 1000)
                .await
                .map_err(store_err)?;
            keys.extend(page.objects.into_iter().map(|o| o.key));
            match page.next_token {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        let (reader, writer) = std::io::pipe().map_err(io_err("creating a pipe"))?;
        let handle = tokio::runtime::Handle::current();
        let producer = std::thread::spawn(move || -> Result<Vec<Entry>, EngineError> {
            let mut tar = tar::Builder::new(writer);
            let mut index = Vec::new();
            for key in keys {
                let (meta, body) = handle
                    .block_on(backend.open(&key, None))
                    .map_err(store_err)?;
                let rel = key.strip_prefix(&prefix).unwrap_or(&key).to_string();
                let mut header = tar::Header::new_gnu();
                header.set_size(meta.size);
                header.set_mode(0o644);
                header.set_mtime(meta.last_modified_ms / 1000);
                let mut hashing = HashRead {
                    inner: tokio_util::io::SyncIoBridge::new_with_handle(body, handle.clone()),
                    hasher: Sha256::new(),
                };
                tar.append_data(&mut header, format!("objects/{rel}"), &mut hashing)
                    .map_err(io_err(format!("archiving {key}")))?;
                index.push(Entry {
                    key: rel,
                    size: meta.size,
                    sha256: hex::encode(hashing.hasher.finalize()),
                    etag: meta.etag,
                    version_id: meta.version_id,
                    last_modified_ms: meta.last_modified_ms,
                });
            }
            let json = serde_json::to_vec_pretty(&index)
                .map_err(|e| EngineError::Db(format!("encoding the index: {e}")))?;
            let mut header = tar::Header::new_gnu();
            header.set_size(json.len() as u64);
            header.set_mode(0o644);
            tar.append_data(&mut header, INDEX, &json[..])
                .map_err(io_err("archiving the index"))?;
            tar.into_inner()
                .and_then(|mut w| w.flush())
                .map_err(io_err("finishing the archive"))?;
            Ok(index)
        });
        Ok(Dump {
            reader: Box::new(reader),
            finish: Box::new(move || {
                let index = producer
                    .join()
                    .map_err(|_| EngineError::Db("the archiving thread panicked".into()))??;
                Ok(DumpFacts {
                    tables: BTreeMap::from([(TABLE.to_string(), index.len() as u64)]),
                    position: None,
                    tools: BTreeMap::from([(
                        "tar".to_string(),
                        "tar crate 0.4 (POSIX ustar/GNU)".to_string(),
                    )]),
                })
            }),
        })
    }

    pub async fn load(&self, purpose: Purpose) -> Result<Load, EngineError> {
        let dir = match purpose {
            Purpose::Verify => self.work.join(format!("objects-{}", purpose.tag())),
            Purpose::Restore => self.work.join("objects-staging"),
        };
        let _ = std::fs::remove_dir_all(&dir);
        super::unpack_tar(&dir)
    }

    pub async fn inspect(&self, place: &Place) -> Result<Inspection, EngineError> {
        let Place::File(dir) = place else {
            return Err(EngineError::Config("an objects copy is a directory".into()));
        };
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || inspect_dir(&dir))
            .await
            .map_err(|e| EngineError::Db(format!("inspect task: {e}")))?
    }

    pub async fn discard(&self, place: &Place) -> Result<(), EngineError> {
        if let Place::File(dir) = place {
            match std::fs::remove_dir_all(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(format!("removing {}", dir.display()))(e)),
            }
        }
        Ok(())
    }

    /// Writes every object of the verified copy back under the prefix (each
    /// object appears whole or not at all); objects not in the backup are
    /// left as they are.
    pub async fn swap_in(&self, staged: &Place) -> Result<(), EngineError> {
        let Place::File(dir) = staged else {
            return Err(EngineError::Config("an objects copy is a directory".into()));
        };
        let backend = self.backend().await?;
        for e in read_index(dir)? {
            let path = dir.join("objects").join(&e.key);
            let file = tokio::fs::File::open(&path)
                .await
                .map_err(io_err(format!("opening {}", path.display())))?;
            backend
                .put_stream(
                    &format!("{}{}", self.store.prefix, e.key),
                    Some(e.size),
                    Box::pin(file),
                )
                .await
                .map_err(store_err)?;
        }
        self.discard(staged).await
    }
}

struct HashRead<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

fn read_index(dir: &Path) -> Result<Vec<Entry>, EngineError> {
    let bytes = std::fs::read(dir.join(INDEX)).map_err(io_err("reading index.json"))?;
    serde_json::from_slice(&bytes).map_err(|e| EngineError::Db(format!("index.json: {e}")))
}

/// Every object the index lists is present with its size and sha256.
fn inspect_dir(dir: &Path) -> Result<Inspection, EngineError> {
    let index = match read_index(dir) {
        Ok(i) => i,
        Err(e) => {
            return Ok(Inspection {
                tables: BTreeMap::new(),
                integrity: Err(e.to_string()),
            });
        }
    };
    let mut problems = Vec::new();
    let mut present = 0u64;
    for e in &index {
        let path = dir.join("objects").join(&e.key);
        match crate::digest::sha256_file(&path) {
            Ok(sha) if sha == e.sha256 => present += 1,
            Ok(_) => problems.push(format!("{}: sha256 differs from the index", e.key)),
            Err(err) => problems.push(format!("{}: {err}", e.key)),
        }
    }
    Ok(Inspection {
        tables: BTreeMap::from([(TABLE.to_string(), present)]),
        integrity: if problems.is_empty() {
            Ok(format!(
                "{} objects match their sha256 in the index",
                index.len()
            ))
        } else {
            Err(problems.join("; "))
        },
    })
}
