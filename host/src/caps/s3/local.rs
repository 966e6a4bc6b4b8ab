//! A local directory as a bucket (the embedded default).
//!
//! Every path is resolved through cap-std, inside a directory handle: no key,
//! `..` or symlink can reach a file outside it, whatever the key validation
//! upstream lets through. An alias with a prefix gets a handle on the
//! prefix's own folder (`<bucket>/<prefix>`), opened one component at a time
//! without following symlinks, so a symlink inside it cannot lead to another
//! prefix of the same bucket either; symlinks that stay inside the folder
//! are followed. Only regular files are read: a FIFO or device planted in
//! the bucket is refused without blocking. Writes go to a temporary file in
//! the same folder and are renamed into place, so a reader never sees half
//! an object.

use super::{Backend, BackendError, BoxFut, ObjectMeta, Page, Reader, VersionMeta, VersionPage};
use cap_std::ambient_authority;
use cap_std::fs::{Dir, OpenOptions, OpenOptionsExt};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::UNIX_EPOCH;
use tokio::io::AsyncReadExt;

const TMP_PREFIX: &str = ".drhost-tmp-";

pub struct LocalBucket {
    folder: Arc<Folder>,
    path: PathBuf,
}

/// The directory keys resolve in: the bucket, or the prefix's folder in it.
struct Folder {
    bucket: Dir,
    /// Full keys start with it; "" or ends with `/` (the policy checks).
    prefix: String,
    /// Opened on first use when it did not exist yet (a read-only alias
    /// creates nothing).
    dir: Mutex<Option<Arc<Dir>>>,
}

fn io_err(key: &str, e: std::io::Error) -> BackendError {
    if e.raw_os_error() == Some(libc::ELOOP) {
        return BackendError::Invalid(format!(
            "{key:?} runs into a symlink loop, or a symlink where the alias's folder must be a real directory: {e}"
        ));
    }
    match e.kind() {
        std::io::ErrorKind::NotFound => BackendError::NotFound(key.to_string()),
        std::io::ErrorKind::PermissionDenied => BackendError::Invalid(format!(
            "{key:?} is outside the alias's folder (a symlink leading out?) or not accessible: {e}"
        )),
        _ => BackendError::Unavailable(format!("{key:?}: {e}")),
    }
}

/// Opens `name` (one component) in `parent` as a directory, refusing a symlink.
fn open_subdir_nofollow(parent: &Dir, name: &str) -> std::io::Result<Dir> {
    let mut o = OpenOptions::new();
    o.read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW);
    Ok(Dir::from_std_file(parent.open_with(name, &o)?.into_std()))
}

impl Folder {
    /// The folder's handle; `None` when it does not exist and `create` is false.
    fn dir(&self, create: bool) -> Result<Option<Arc<Dir>>, BackendError> {
        let mut slot = self
            .dir
            .lock()
            .map_err(|_| BackendError::Unavailable("local bucket lock poisoned".into()))?;
        if let Some(d) = slot.as_ref() {
            return Ok(Some(Arc::clone(d)));
        }
        let mut cur = self
            .bucket
            .try_clone()
            .map_err(|e| io_err(&self.prefix, e))?;
        for comp in self.prefix.split('/').filter(|c| !c.is_empty()) {
            if create {
                match cur.create_dir(comp) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(io_err(&self.prefix, e)),
                }
            }
            cur = match open_subdir_nofollow(&cur, comp) {
                Ok(d) => d,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                // O_DIRECTORY|O_NOFOLLOW on a symlink fails with ENOTDIR or ELOOP.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTDIR | libc::ELOOP)) => {
                    return Err(BackendError::Invalid(format!(
                        "{comp:?} in prefix {:?} is a symlink or not a directory: a local alias's folder must be a real directory",
                        self.prefix
                    )));
                }
                Err(e) => return Err(io_err(&self.prefix, e)),
            };
        }
        let d = Arc::new(cur);
        *slot = Some(Arc::clone(&d));
        Ok(Some(d))
    }

    /// A full key's path inside the folder.
    fn rel<'k>(&self, key: &'k str) -> Result<&'k str, BackendError> {
        key.strip_prefix(&self.prefix)
            .filter(|r| !r.is_empty())
            .ok_or_else(|| {
                BackendError::Invalid(format!(
                    "{key:?} is not under this alias's prefix {:?}",
                    self.prefix
                ))
            })
    }
}

/// Opens a regular file for reading. The type is checked before the open (so
/// a device is never opened) and after it (in case it was swapped), and the
/// open is non-blocking, so a FIFO cannot hang the host.
fn open_regular(dir: &Dir, rel: &str, key: &str) -> Result<cap_std::fs::File, BackendError> {
    let not_regular = || {
        BackendError::Invalid(format!(
            "{key:?} is not a regular file (a FIFO, device or socket in the bucket): refused"
        ))
    };
    let m = dir.metadata(rel).map_err(|e| io_err(key, e))?;
    if m.is_dir() {
        return Err(BackendError::NotFound(key.to_string()));
    }
    if !m.is_file() {
        return Err(not_regular());
    }
    let mut o = OpenOptions::new();
    // O_NONBLOCK has no effect on a regular file, which is all we keep.
    o.read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
    let f = dir.open_with(rel, &o).map_err(|e| io_err(key, e))?;
    let m = f.metadata().map_err(|e| io_err(key, e))?;
    if !m.is_file() {
        return Err(not_regular());
    }
    Ok(f)
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
    /// The whole directory as a bucket (backup targets, aliases without a prefix).
    pub fn open(path: &Path) -> Result<Self, String> {
        Self::open_at(path, "", false)
    }

    /// The directory as a bucket, keys resolving in `prefix`'s folder only.
    /// `prefix` is "" or ends with `/`; its folder is created now when
    /// `create` (the alias may write), else on the first write, and looked for
    /// again on each call until it exists.
    pub fn open_at(path: &Path, prefix: &str, create: bool) -> Result<Self, String> {
        if !prefix.is_empty() && !prefix.ends_with('/') {
            return Err(format!(
                "prefix {prefix:?} must end with '/': a local bucket confines an alias to a folder"
            ));
        }
        std::fs::create_dir_all(path)
            .map_err(|e| format!("cannot create bucket directory {}: {e}", path.display()))?;
        let bucket = Dir::open_ambient_dir(path, ambient_authority())
            .map_err(|e| format!("cannot open bucket directory {}: {e}", path.display()))?;
        let folder = Folder {
            bucket,
            prefix: prefix.to_string(),
            dir: Mutex::new(None),
        };
        folder.dir(create).map_err(|e| {
            format!(
                "cannot open the folder of prefix {prefix:?} in {}: {e}",
                path.display()
            )
        })?;
        Ok(LocalBucket {
            folder: Arc::new(folder),
            path: path.to_path_buf(),
        })
    }

    /// Runs `f` on the folder's handle (`None`: the folder does not exist).
    async fn blocking<T: Send + 'static>(
        &self,
        create: bool,
        f: impl FnOnce(&Folder, Option<&Dir>) -> Result<T, BackendError> + Send + 'static,
    ) -> Result<T, BackendError> {
        let folder = Arc::clone(&self.folder);
        tokio::task::spawn_blocking(move || {
            let dir = folder.dir(create)?;
            f(&folder, dir.as_deref())
        })
        .await
        .map_err(|e| BackendError::Unavailable(format!("local bucket task failed: {e}")))?
    }

    /// Every object key under `prefix`, sorted.
    fn walk(
        root: &Dir,
        prefix: &str,
    ) -> Result<Vec<(String, cap_std::fs::Metadata)>, BackendError> {
        Self::walk_for(root, prefix, false)
    }

    /// Every object key under `prefix`, or with `temporaries` every
    /// temporary file of a write in progress or interrupted instead.
    fn walk_for(
        root: &Dir,
        prefix: &str,
        temporaries: bool,
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
                let temporary = name.starts_with(TMP_PREFIX);
                let key = if dir.is_empty() {
                    name
                } else {
                    format!("{dir}/{name}")
                };
                if temporary {
                    // Matched on its folder: its name is not its key.
                    if temporaries
                        && dir.starts_with(prefix.rsplit_once('/').map_or("", |(d, _)| d))
                        && let Ok(m) = root.symlink_metadata(&key)
                        && m.is_file()
                    {
                        out.push((key, m));
                    }
                    continue;
                }
                let ft = entry.file_type().map_err(|e| io_err(&key, e))?;
                if ft.is_dir() {
                    if prefix.starts_with(&format!("{key}/"))
                        || key.starts_with(prefix)
                        || prefix.is_empty()
                    {
                        stack.push(key);
                    }
                } else if !temporaries && key.starts_with(prefix) {
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

    fn write_atomically(
        root: &Dir,
        rel: &str,
        key: &str,
        body: &[u8],
    ) -> Result<ObjectMeta, BackendError> {
        if let Some((parent, _)) = rel.rsplit_once('/') {
            root.create_dir_all(parent).map_err(|e| io_err(key, e))?;
        }
        let tmp = tmp_name(rel);
        let result = (|| {
            let mut f = root.create(&tmp)?;
            f.write_all(body)?;
            f.sync_all()?;
            // A write killed before or after it lands (crash tests).
            crate::crash::point("upload");
            root.rename(&tmp, root, rel)?;
            crate::crash::point("upload");
            Ok(())
        })();
        if let Err(e) = result {
            let _ = root.remove_file(&tmp);
            return Err(io_err(key, e));
        }
        let m = root.metadata(rel).map_err(|e| io_err(key, e))?;
        Ok(meta_of(key, &m))
    }
}

/// The folder's handle for a write (which creates it when missing).
fn writable<'d>(dir: Option<&'d Dir>, key: &str) -> Result<&'d Dir, BackendError> {
    dir.ok_or_else(|| BackendError::Unavailable(format!("{key:?}: the alias's folder is missing")))
}

impl Backend for LocalBucket {
    fn store_id(&self) -> String {
        format!("local:{}", self.path.display())
    }

    fn head<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<Option<ObjectMeta>, BackendError>> {
        let key = key.to_string();
        Box::pin(self.blocking(false, move |folder, root| {
            let rel = folder.rel(&key)?;
            check_local(rel)?;
            let Some(root) = root else { return Ok(None) };
            match root.metadata(rel) {
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
                .blocking(false, move |folder, root| {
                    let rel = folder.rel(&key)?;
                    check_local(rel)?;
                    let root = root.ok_or_else(|| BackendError::NotFound(key.clone()))?;
                    let f = open_regular(root, rel, &key)?;
                    let m = f.metadata().map_err(|e| io_err(&key, e))?;
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
        Box::pin(self.blocking(true, move |folder, root| {
            let rel = folder.rel(&key)?;
            check_local(rel)?;
            Self::write_atomically(writable(root, &key)?, rel, &key, &body)
        }))
    }

    fn put_stream<'a>(
        &'a self,
        key: &'a str,
        size: Option<u64>,
        mut reader: Reader,
    ) -> BoxFut<'a, Result<ObjectMeta, BackendError>> {
        Box::pin(async move {
            let rel = self.folder.rel(key)?.to_string();
            check_local(&rel)?;
            let tmp = tmp_name(&rel);
            let (k, r, t) = (key.to_string(), rel.clone(), tmp.clone());
            let file = self
                .blocking(true, move |_, root| {
                    let root = writable(root, &k)?;
                    if let Some((parent, _)) = r.rsplit_once('/') {
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
            let k = key.to_string();
            self.blocking(true, move |_, root| {
                let root = writable(root, &k)?;
                let fail = |e: BackendError| {
                    let _ = root.remove_file(&tmp);
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
                crate::crash::point("upload");
                root.rename(&tmp, root, &rel).map_err(|e| io_err(&k, e))?;
                crate::crash::point("upload");
                let m = root.metadata(&rel).map_err(|e| io_err(&k, e))?;
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
        Box::pin(self.blocking(false, move |folder, root| {
            let sub = prefix.strip_prefix(&folder.prefix).ok_or_else(|| {
                BackendError::Invalid(format!(
                    "{prefix:?} is not under this alias's prefix {:?}",
                    folder.prefix
                ))
            })?;
            let all = match root {
                Some(root) => Self::walk(root, sub)?,
                None => Vec::new(),
            };
            let mut objects: Vec<ObjectMeta> = all
                .iter()
                .map(|(k, m)| (format!("{}{k}", folder.prefix), m))
                .filter(|(k, _)| after.as_ref().is_none_or(|a| k > a))
                .take(max as usize + 1)
                .map(|(k, m)| meta_of(&k, m))
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
        Box::pin(self.blocking(false, move |folder, root| {
            let rel = folder.rel(&key)?;
            check_local(rel)?;
            let Some(root) = root else { return Ok(()) };
            match root.remove_file(rel) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io_err(&key, e)),
            }
        }))
    }

    fn sweep_leftovers<'a>(
        &'a self,
        prefix: &'a str,
        before_ms: u64,
        dry_run: bool,
    ) -> BoxFut<'a, Result<Vec<String>, BackendError>> {
        let prefix = prefix.to_string();
        Box::pin(self.blocking(false, move |folder, root| {
            let Some(root) = root else {
                return Ok(Vec::new());
            };
            let sub = prefix.strip_prefix(&folder.prefix).unwrap_or(&prefix);
            let mut out = Vec::new();
            for (rel, m) in Self::walk_for(root, sub, true)? {
                // A write in progress touches its file: only old ones go.
                if meta_of(&rel, &m).last_modified_ms >= before_ms {
                    continue;
                }
                if !dry_run {
                    match root.remove_file(&rel) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(io_err(&rel, e)),
                    }
                }
                out.push(format!("{}{rel}", folder.prefix));
            }
            Ok(out)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// `bucket/secret/s.txt` ("SECRET") beside `bucket/allowed/`, with
    /// symlinks from `allowed/` leading out in every way we know.
    fn fixture() -> (tempfile::TempDir, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let b = t.path().join("bucket");
        std::fs::create_dir_all(b.join("secret")).unwrap();
        std::fs::create_dir_all(b.join("allowed/real")).unwrap();
        std::fs::create_dir_all(b.join("allowed/d")).unwrap();
        std::fs::write(b.join("secret/s.txt"), "SECRET").unwrap();
        std::fs::write(b.join("allowed/real/x.txt"), "inside").unwrap();
        symlink("../secret", b.join("allowed/link")).unwrap();
        symlink(b.join("secret"), b.join("allowed/abs")).unwrap();
        symlink("..", b.join("allowed/root")).unwrap();
        symlink("../secret/s.txt", b.join("allowed/file-link")).unwrap();
        symlink("../../secret", b.join("allowed/d/mid")).unwrap();
        symlink("/etc", b.join("allowed/etc")).unwrap();
        (t, b)
    }

    async fn read(b: &LocalBucket, key: &str) -> Result<String, BackendError> {
        let (_, mut r) = b.open(key, None).await?;
        let mut s = String::new();
        r.read_to_string(&mut s).await.unwrap();
        Ok(s)
    }

    /// Every file under `dir`, not following symlinks.
    fn files(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                out.extend(files(&e.path()));
            } else {
                out.push(e.path());
            }
        }
        out.sort();
        out
    }

    const ESCAPES: &[&str] = &[
        "allowed/link/s.txt",
        "allowed/abs/s.txt",
        "allowed/root/secret/s.txt",
        "allowed/file-link",
        "allowed/d/mid/s.txt",
        "allowed/etc/passwd",
        "allowed/../secret/s.txt",
    ];

    #[tokio::test]
    async fn symlinks_in_a_prefix_folder_do_not_reach_out() {
        let (_t, b) = fixture();
        let outside_before = files(&b.join("secret"));
        let bucket = LocalBucket::open_at(&b, "allowed/", true).unwrap();
        for key in ESCAPES {
            assert!(read(&bucket, key).await.is_err(), "read {key}");
            assert!(!matches!(bucket.head(key).await, Ok(Some(_))), "head {key}");
        }
        let page = bucket.list("allowed/", None, 100).await.unwrap();
        let keys: Vec<_> = page.objects.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, ["allowed/real/x.txt"]);
        // Deleting a link removes the link, never its target.
        bucket.delete("allowed/file-link").await.unwrap();
        assert!(b.join("secret/s.txt").exists() && !b.join("allowed/file-link").exists());
        for key in ESCAPES.iter().filter(|k| **k != "allowed/file-link") {
            let new = key.replace("s.txt", "new.txt").replace("passwd", "new");
            assert!(bucket.put(&new, b"x".to_vec()).await.is_err(), "put {new}");
        }
        // A put on a link's own name replaces the link, not what it pointed to.
        symlink("../secret/s.txt", b.join("allowed/file-link")).unwrap();
        bucket
            .put("allowed/file-link", b"x".to_vec())
            .await
            .unwrap();
        assert_eq!(files(&b.join("secret")), outside_before);
        assert_eq!(
            std::fs::read_to_string(b.join("secret/s.txt")).unwrap(),
            "SECRET"
        );
    }

    #[tokio::test]
    async fn symlinks_that_stay_inside_the_folder_are_followed() {
        let (_t, b) = fixture();
        symlink("real", b.join("allowed/same")).unwrap();
        symlink("real/x.txt", b.join("allowed/y")).unwrap();
        let bucket = LocalBucket::open_at(&b, "allowed/", false).unwrap();
        assert_eq!(read(&bucket, "allowed/same/x.txt").await.unwrap(), "inside");
        assert_eq!(read(&bucket, "allowed/y").await.unwrap(), "inside");
        bucket.put("allowed/same/z", b"z".to_vec()).await.unwrap();
        assert!(b.join("allowed/real/z").is_file());
    }

    #[tokio::test]
    async fn a_prefix_folder_that_is_a_symlink_is_refused() {
        let (_t, b) = fixture();
        symlink("secret", b.join("lnk")).unwrap();
        let err = LocalBucket::open_at(&b, "lnk/", false).err().unwrap();
        assert!(err.contains("symlink"), "{err}");
        let err = LocalBucket::open_at(&b, "allowed/link/", true)
            .err()
            .unwrap();
        assert!(err.contains("symlink"), "{err}");
        let err = LocalBucket::open_at(&b, "logs-", true).err().unwrap();
        assert!(err.contains("must end with '/'"), "{err}");
    }

    #[tokio::test]
    async fn the_whole_bucket_still_confines_symlinks_to_it() {
        let (_t, b) = fixture();
        let bucket = LocalBucket::open(&b).unwrap();
        assert_eq!(read(&bucket, "allowed/link/s.txt").await.unwrap(), "SECRET");
        assert!(read(&bucket, "allowed/etc/passwd").await.is_err());
        assert!(read(&bucket, "allowed/root/../../x").await.is_err());
    }

    #[tokio::test]
    async fn a_fifo_is_refused_without_blocking() {
        let (_t, b) = fixture();
        let fifo = b.join("allowed/pipe");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path; mkfifo touches no memory of ours.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let bucket = LocalBucket::open_at(&b, "allowed/", false).unwrap();
        let r = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            bucket.open("allowed/pipe", None),
        )
        .await
        .expect("opening a FIFO must not block");
        match r {
            Err(BackendError::Invalid(m)) => assert!(m.contains("not a regular file"), "{m}"),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a FIFO was opened"),
        }
        assert!(bucket.head("allowed/pipe").await.unwrap().is_none());
        let page = bucket.list("allowed/", None, 100).await.unwrap();
        assert!(page.objects.iter().all(|o| o.key != "allowed/pipe"));
    }

    #[tokio::test]
    async fn a_read_only_alias_creates_nothing_and_finds_its_folder_later() {
        let (_t, b) = fixture();
        let bucket = LocalBucket::open_at(&b, "ro/sub/", false).unwrap();
        assert!(!b.join("ro").exists());
        assert!(bucket.head("ro/sub/a").await.unwrap().is_none());
        assert!(matches!(
            read(&bucket, "ro/sub/a").await,
            Err(BackendError::NotFound(_))
        ));
        assert!(
            bucket
                .list("ro/sub/", None, 10)
                .await
                .unwrap()
                .objects
                .is_empty()
        );
        std::fs::create_dir_all(b.join("ro/sub")).unwrap();
        std::fs::write(b.join("ro/sub/a"), "late").unwrap();
        assert_eq!(read(&bucket, "ro/sub/a").await.unwrap(), "late");
        let w = LocalBucket::open_at(&b, "rw/", true).unwrap();
        assert!(b.join("rw").is_dir());
        assert!(w.put("other/x", b"x".to_vec()).await.is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        #[test]
        fn random_keys_never_resolve_outside_the_prefix_folder(
            segs in proptest::collection::vec(
                proptest::sample::select(vec![
                    "..", ".", "", "a", "link", "abs", "root", "file-link", "d", "mid",
                    "etc", "passwd", "secret", "s.txt", "real", "x.txt", "allowed",
                ]),
                1..6,
            ),
        ) {
            let (_t, b) = fixture();
            let outside = |b: &Path| {
                files(b)
                    .into_iter()
                    .filter(|p| !p.starts_with(b.join("allowed")))
                    .map(|p| (std::fs::read(&p).ok(), p))
                    .collect::<Vec<_>>()
            };
            let before = outside(&b);
            let key = format!("allowed/{}", segs.join("/"));
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let bucket = LocalBucket::open_at(&b, "allowed/", true).unwrap();
                if let Ok(s) = read(&bucket, &key).await {
                    proptest::prop_assert_ne!(s, "SECRET", "{}", key);
                }
                let _ = bucket.put(&key, b"planted".to_vec()).await;
                let _ = bucket.delete(&key).await;
                Ok(())
            })?;
            proptest::prop_assert_eq!(outside(&b), before, "{}", key);
        }
    }
}
