//! A local directory as a bucket (the embedded default).
//!
//! The directory is opened through cap-std: every path is resolved inside it,
//! so no key, `..` or symlink can reach a file outside, whatever the key
//! validation upstream lets through. Writes go to a temporary file in the
//! same folder and are renamed into place, so a reader never sees half an
//! object.

use super::{Backend, BackendError, BoxFut, ObjectMeta, Page, Reader, VersionMeta, VersionPage};
use cap_std::ambient_authority;
use cap_std::fs::Dir;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;
use tokio::io::AsyncReadExt;

const TMP_PREFIX: &str = ".drhost-tmp-";

pub struct LocalBucket {
    root: Arc<Dir>,
    path: PathBuf,
}

fn io_err(key: &str, e: std::io::Error) -> BackendError {
    match e.kind() {
        std::io::ErrorKind::NotFound => BackendError::NotFound(key.to_string()),
        std::io::ErrorKind::PermissionDenied => BackendError::Invalid(format!(
            "{key:?} is outside the bucket or not accessible: {e}"
        )),
        _ => BackendError::Unavailable(format!("{key:?}: {e}")),
    }
}

fn meta_of(key: &str, m: &cap_std::fs::Metadata) -> ObjectMeta {
    let mtime = m
        .modified()
        .ok()
        .map(|t| t.into_std())
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .unwrap_or_default();
    ObjectMeta {
        key: key.to_string(),
        size: m.len(),
        etag: format!("{:x}-{:x}", m.len(), mtime.as_nanos()),
        last_modified_ms: u64::try_from(mtime.as_millis()).unwrap_or(0),
        version_id: None,
    }
}

fn tmp_name(key: &str) -> String {
    let (dir, name) = match key.rsplit_once('/') {
        Some((d, n)) => (format!("{d}/"), n),
        None => (String::new(), key),
    };
    let nonce = std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{dir}{TMP_PREFIX}{}-{nonce:x}-{name}", std::process::id())
}

fn check_local(key: &str) -> Result<(), BackendError> {
    if key.split('/').any(|s| s.starts_with(TMP_PREFIX)) {
        return Err(BackendError::Invalid(format!(
            "{key:?} uses the reserved name {TMP_PREFIX}"
        )));
    }
    Ok(())
}

impl LocalBucket {
    pub fn open(path: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(path)
            .map_err(|e| format!("cannot create bucket directory {}: {e}", path.display()))?;
        let root = Dir::open_ambient_dir(path, ambient_authority())
            .map_err(|e| format!("cannot open bucket directory {}: {e}", path.display()))?;
        Ok(LocalBucket {
            root: Arc::new(root),
            path: path.to_path_buf(),
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Dir) -> Result<T, BackendError> + Send + 'static,
    ) -> Result<T, BackendError> {
        let root = Arc::clone(&self.root);
        tokio::task::spawn_blocking(move || f(&root))
            .await
            .map_err(|e| BackendError::Unavailable(format!("local bucket task failed: {e}")))?
    }

    /// Every object key under `prefix`, sorted.
    fn walk(
        root: &Dir,
        prefix: &str,
    ) -> Result<Vec<(String, cap_std::fs::Metadata)>, BackendError> {
        // Start at the deepest folder the prefix names, not at the root.
        let start = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let mut out = Vec::new();
        let mut stack = vec![start.to_string()];
        while let Some(dir) = stack.pop() {
            let entries = if dir.is_empty() {
                root.entries()
            } else {
                root.read_dir(&dir)
            };
            let entries = match entries {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&dir, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| io_err(&dir, e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(TMP_PREFIX) {
                    continue;
                }
                let key = if dir.is_empty() {
                    name
                } else {
                    format!("{dir}/{name}")
                };
                let ft = entry.file_type().map_err(|e| io_err(&key, e))?;
                if ft.is_dir() {
                    if prefix.starts_with(&format!("{key}/"))
                        || key.starts_with(prefix)
                        || prefix.is_empty()
                    {
                        stack.push(key);
                    }
                } else if key.starts_with(prefix) {
                    // Metadata through the sandbox: a symlink leading out fails here.
                    match root.metadata(&key) {
                        Ok(m) if m.is_file() => out.push((key, m)),
                        Ok(_) => {}
                        Err(e) => tracing::warn!("skipping {key}: {e}"),
                    }
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    fn write_atomically(root: &Dir, key: &str, body: &[u8]) -> Result<ObjectMeta, BackendError> {
        if let Some((parent, _)) = key.rsplit_once('/') {
            root.create_dir_all(parent).map_err(|e| io_err(key, e))?;
        }
        let tmp = tmp_name(key);
        let result = (|| {
            let mut f = root.create(&tmp)?;
            f.write_all(body)?;
            f.sync_all()?;
            root.rename(&tmp, root, key)
        })();
        if let Err(e) = result {
            let _ = root.remove_file(&tmp);
            return Err(io_err(key, e));
        }
        let m = root.metadata(key).map_err(|e| io_err(key, e))?;
        Ok(meta_of(key, &m))
    }
}

impl Backend for LocalBucket {
    fn store_id(&self) -> String {
        format!("local:{}", self.path.display())
    }

    fn head<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<Option<ObjectMeta>, BackendError>> {
        let key = key.to_string();
        Box::pin(self.blocking(move |root| {
            check_local(&key)?;
            match root.metadata(&key) {
                Ok(m) if m.is_file() => Ok(Some(meta_of(&key, &m))),
                Ok(_) => Ok(None),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(io_err(&key, e)),
            }
        }))
    }

    fn open<'a>(
        &'a self,
        key: &'a str,
        version: Option<&'a str>,
    ) -> BoxFut<'a, Result<(ObjectMeta, Reader), BackendError>> {
        let key = key.to_string();
        let version = version.map(str::to_string);
        Box::pin(async move {
            if let Some(v) = version.filter(|v| v != "null") {
                return Err(BackendError::NotFound(format!(
                    "{key} version {v} (local buckets keep one version, \"null\")"
                )));
            }
            let (meta, file) = self
                .blocking(move |root| {
                    check_local(&key)?;
                    let f = root.open(&key).map_err(|e| io_err(&key, e))?;
                    let m = f.metadata().map_err(|e| io_err(&key, e))?;
                    if !m.is_file() {
                        return Err(BackendError::NotFound(key));
                    }
                    Ok((meta_of(&key, &m), f.into_std()))
                })
                .await?;
            let reader: Reader = Box::pin(tokio::fs::File::from_std(file));
            Ok((meta, reader))
        })
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        body: Vec<u8>,
    ) -> BoxFut<'a, Result<ObjectMeta, BackendError>> {
        let key = key.to_string();
        Box::pin(self.blocking(move |root| {
            check_local(&key)?;
            Self::write_atomically(root, &key, &body)
        }))
    }

    fn put_stream<'a>(
        &'a self,
        key: &'a str,
        size: Option<u64>,
        mut reader: Reader,
    ) -> BoxFut<'a, Result<ObjectMeta, BackendError>> {
        Box::pin(async move {
            check_local(key)?;
            let tmp = tmp_name(key);
            let (k, t) = (key.to_string(), tmp.clone());
            let file = self
                .blocking(move |root| {
                    if let Some((parent, _)) = k.rsplit_once('/') {
                        root.create_dir_all(parent).map_err(|e| io_err(&k, e))?;
                    }
                    root.create(&t)
                        .map(|f| f.into_std())
                        .map_err(|e| io_err(&k, e))
                })
                .await?;
            let mut out = tokio::fs::File::from_std(file);
            let copied = async {
                // Big reads and writes: each one is a trip to tokio's blocking pool.
                let mut src = tokio::io::BufReader::with_capacity(
                    1 << 20,
                    (&mut reader).take(size.map_or(u64::MAX, |s| s + 1)),
                );
                let n = tokio::io::copy_buf(&mut src, &mut out).await?;
                tokio::io::AsyncWriteExt::flush(&mut out).await?;
                out.sync_all().await?;
                Ok::<u64, std::io::Error>(n)
            }
            .await;
            let (k, t) = (key.to_string(), tmp);
            self.blocking(move |root| {
                let fail = |e: BackendError| {
                    let _ = root.remove_file(&t);
                    Err(e)
                };
                match copied {
                    Err(e) => return fail(BackendError::Unavailable(format!("writing {k:?}: {e}"))),
                    Ok(n) if size.is_some_and(|s| s != n) => {
                        return fail(BackendError::Unavailable(format!(
                            "source of {k:?} gave {n} bytes where {} were expected; nothing was written",
                            size.unwrap_or_default()
                        )));
                    }
                    Ok(_) => {}
                }
                root.rename(&t, root, &k).map_err(|e| io_err(&k, e))?;
                let m = root.metadata(&k).map_err(|e| io_err(&k, e))?;
                Ok(meta_of(&k, &m))
            })
            .await
        })
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        token: Option<&'a str>,
        max: u32,
    ) -> BoxFut<'a, Result<Page, BackendError>> {
        let prefix = prefix.to_string();
        let after = token.map(str::to_string);
        Box::pin(self.blocking(move |root| {
            let all = Self::walk(root, &prefix)?;
            let mut objects: Vec<ObjectMeta> = all
                .iter()
                .filter(|(k, _)| after.as_ref().is_none_or(|a| k > a))
                .take(max as usize + 1)
                .map(|(k, m)| meta_of(k, m))
                .collect();
            let next_token = if objects.len() > max as usize {
                objects.truncate(max as usize);
                objects.last().map(|o| o.key.clone())
            } else {
                None
            };
            Ok(Page {
                objects,
                next_token,
            })
        }))
    }

    fn list_versions<'a>(
        &'a self,
        prefix: &'a str,
        token: Option<&'a str>,
        max: u32,
    ) -> BoxFut<'a, Result<VersionPage, BackendError>> {
        Box::pin(async move {
            let page = self.list(prefix, token, max).await?;
            Ok(VersionPage {
                versions: page
                    .objects
                    .into_iter()
                    .map(|o| VersionMeta {
                        key: o.key,
                        version_id: "null".into(),
                        size: o.size,
                        last_modified_ms: o.last_modified_ms,
                        is_latest: true,
                        delete_marker: false,
                    })
                    .collect(),
                next_token: page.next_token,
            })
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<(), BackendError>> {
        let key = key.to_string();
        Box::pin(self.blocking(move |root| {
            check_local(&key)?;
            match root.remove_file(&key) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io_err(&key, e)),
            }
        }))
    }

    fn copy_within<'a>(
        &'a self,
        src_key: &'a str,
        dst_key: &'a str,
        dst: &'a dyn Backend,
    ) -> BoxFut<'a, Result<ObjectMeta, BackendError>> {
        Box::pin(async move {
            let (meta, reader) = self.open(src_key, None).await?;
            dst.put_stream(dst_key, Some(meta.size), reader).await
        })
    }
}
