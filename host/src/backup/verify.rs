//! `drhost backup verify`: the plan's 10-point checklist plus the manifest's
//! signature, each point a real check with its own result. One download feeds the hash, the decryption,
//! the decompression and a restore into a scratch database.

use super::engine::mariadb::Mariadb;
use super::engine::{Engine, Inspection, Load, Place, Purpose};
use super::manifest::{Kind, Manifest};
use super::pipeline::{self, AGE_MAGIC, OpenError, Opened};
use super::progress::Progress;
use super::{BackupError, Backups, Store};
use serde::Serialize;
use std::sync::Arc;
use tokio::io::AsyncReadExt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    /// Not run because an earlier point failed, or not applicable.
    Skip,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub target: String,
    pub id: String,
    pub source: String,
    pub checks: Vec<Check>,
    /// Restored content, for comparing targets.
    #[serde(skip)]
    pub restored: Option<Inspection>,
    pub plaintext_sha256: Option<String>,
}

impl VerifyReport {
    /// No point failed. (Points are skipped only after a failure, or where
    /// they do not apply: tables and rows of an incremental.)
    pub fn passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.status != Status::Fail)
    }
}

/// The checklist's names, in the plan's order.
pub const CHECKS: [&str; 11] = [
    "file exists",
    "size reasonable",
    "encrypted",
    "downloadable",
    "extractable",
    "restorable",
    "integrity",
    "all tables present",
    "all records present",
    "no corruption detected",
    // Not in the plan's list: the manifest that all the above trusts is
    // the one this host (or a key in [keys] signed-by) wrote.
    "manifest signed",
];

struct Sheet(Vec<Check>);

impl Sheet {
    fn set(&mut self, name: &'static str, ok: bool, detail: impl Into<String>) {
        self.put(name, if ok { Status::Pass } else { Status::Fail }, detail);
    }
    fn put(&mut self, name: &'static str, status: Status, detail: impl Into<String>) {
        self.0.push(Check {
            name,
            status,
            detail: detail.into(),
        });
    }
    fn skip_rest(&mut self, why: &str) {
        for name in CHECKS {
            if !self.0.iter().any(|c| c.name == name) {
                self.put(name, Status::Skip, why);
            }
        }
    }
    fn failed(&self) -> bool {
        self.0.iter().any(|c| c.status == Status::Fail)
    }
    /// The checks in the checklist's order.
    fn finish(mut self) -> Vec<Check> {
        self.0
            .sort_by_key(|c| CHECKS.iter().position(|n| *n == c.name));
        self.0
    }
}

/// Result of streaming one backup into a place.
pub(crate) struct Loaded {
    pub opened: Opened,
    pub place: Place,
    pub load: Result<(), String>,
}

/// A verification's scratch copy (a database, or an incremental's unpacked
/// logs), removed when dropped: a verify cut at its budget or failing
/// midway leaves nothing on the server.
struct Scratch {
    engine: Arc<Engine>,
    place: Option<Place>,
}

impl Scratch {
    fn new(engine: Arc<Engine>, place: Place) -> Self {
        Scratch {
            engine,
            place: Some(place),
        }
    }

    /// Removes it now, and says so if that fails.
    async fn discard(mut self) {
        if let Some(place) = self.place.take()
            && let Err(e) = remove(&self.engine, &place).await
        {
            tracing::warn!("removing the scratch copy {place}: {e}");
        }
    }
}

async fn remove(engine: &Engine, place: &Place) -> Result<(), String> {
    match place {
        Place::File(dir) if dir.is_dir() => std::fs::remove_dir_all(dir).map_err(|e| e.to_string()),
        place => engine.discard(place).await.map_err(|e| e.to_string()),
    }
}

/// Kills a loading tool when dropped (harmless once it has exited: the pidfd
/// names that process only).
struct KillOnDrop(Option<super::engine::Tool>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(tool) = &self.0 {
            tool.kill();
        }
    }
}

/// A reader that fails once `stop` fires, even while it waits for bytes that
/// never come.
struct Stoppable<R> {
    inner: R,
    stop: std::pin::Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Stoppable<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.stop.as_mut().poll(cx).is_ready() {
            return std::task::Poll::Ready(Err(std::io::Error::other(
                "stopped: the verify or restore reading it ended",
            )));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

/// Prepares a scratch database in a task of its own: if this verify is
/// dropped while the database is being created, the task still finishes and,
/// finding nobody to hand it to, removes it.
async fn load_detached(engine: &Arc<Engine>) -> Result<Load, super::engine::EngineError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let engine = Arc::clone(engine);
    tokio::spawn(async move {
        let load = engine.load(Purpose::Verify).await;
        if let Err(Ok(Load {
            place,
            sink,
            finish,
            tool,
        })) = tx.send(load)
        {
            if let Some(tool) = tool {
                tool.kill();
            }
            drop(sink);
            let _ = tokio::task::spawn_blocking(finish).await;
            if let Err(e) = remove(&engine, &place).await {
                tracing::warn!("removing the scratch copy {place} of a verify that stopped: {e}");
            }
        }
    });
    rx.await.map_err(|_| {
        super::engine::EngineError::Config("preparing the scratch copy: the task ended".into())
    })?
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let Some(place) = self.place.take() else {
            return;
        };
        let engine = Arc::clone(&self.engine);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    if let Err(e) = remove(&engine, &place).await {
                        tracing::warn!(
                            "removing the scratch copy {place} of a verify that stopped: {e}"
                        );
                    }
                });
            }
            Err(_) => tracing::warn!("the scratch copy {place} is left behind"),
        }
    }
}

impl Backups {
    /// Streams the backup's object from `store` through the decoder into a
    /// fresh place of `engine`.
    pub(crate) async fn load_into(
        &self,
        store: &Store,
        m: &Manifest,
        load: Load,
        label: &str,
    ) -> Result<Loaded, BackupError> {
        let identity = self.identity_for(m)?;
        let (_, reader) = store
            .backend
            .open(&store.key(&m.object), None)
            .await
            .map_err(store.err())?;
        let bar = Progress::new(self.progress, label, Some(m.ciphertext.size));
        let bar2 = bar.clone();
        // Dropping this future (a verify or restore stopped at its budget)
        // stops the download even mid-wait, which ends the blocking pipeline
        // and closes the loading tool's input: the tool exits and lets go of
        // the tables it holds, so its scratch copy can be dropped.
        let stop = tokio_util::sync::CancellationToken::new();
        let _stop_when_dropped = stop.clone().drop_guard();
        // The tool may be past reading (waiting on the server, its input
        // full): it is killed too, so it lets go of what it holds.
        let _kill_when_dropped = KillOnDrop(load.tool);
        let reader = Stoppable {
            inner: reader,
            stop: Box::pin(stop.cancelled_owned()),
        };
        let src = tokio_util::io::SyncIoBridge::new(reader);
        let place = load.place.clone();
        let (opened, finished) = tokio::task::spawn_blocking(move || {
            let opened = pipeline::open(bar2.reader(src), identity.as_ref(), load.sink);
            // The sink is closed now: the loading tool sees its end of input.
            (opened, (load.finish)())
        })
        .await
        .map_err(|e| BackupError::Failed(format!("load task: {e}")))?;
        bar.finish();
        Ok(Loaded {
            opened,
            place,
            load: finished.map_err(|e| e.to_string()),
        })
    }

    /// Runs the checklist for one backup on one target.
    pub async fn verify_on(
        &self,
        store: &Store,
        source: &str,
        id: &str,
    ) -> Result<VerifyReport, BackupError> {
        // One listing serves both the backup and its history (point 2).
        let all = store.manifests(source).await?;
        let m = store.pick(&all, source, id)?.clone();
        let engine = Arc::new(self.engine(source)?);
        let mut sheet = Sheet(Vec::new());
        let mut report = VerifyReport {
            target: store.name.clone(),
            id: m.id.clone(),
            source: source.to_string(),
            checks: Vec::new(),
            restored: None,
            plaintext_sha256: None,
        };
        // 11. manifest signed: judged first, whatever else fails.
        match m.authenticity.problem() {
            None => sheet.set(
                CHECKS[10],
                true,
                match &m.authenticity {
                    super::signing::Authenticity::Signed(key) => format!("by key {key}"),
                    _ => String::new(),
                },
            ),
            Some(why) => sheet.set(CHECKS[10], false, why),
        }

        // 1. file exists
        let key = store.key(&m.object);
        let head = store.backend.head(&key).await.map_err(store.err())?;
        let Some(head) = head else {
            sheet.set(
                CHECKS[0],
                false,
                format!("{key} is missing on {}", store.name),
            );
            sheet.skip_rest("no object to check");
            report.checks = sheet.finish();
            return Ok(report);
        };
        sheet.set(CHECKS[0], true, key.clone());

        // 2. size reasonable: the manifest's size, and not far below the history.
        let history: Vec<u64> = all
            .iter()
            .filter(|h| h.kind == m.kind && h.id < m.id)
            .map(|h| h.plaintext.size)
            .collect();
        let recent: Vec<u64> = history.iter().rev().take(10).copied().collect();
        let median = median(&recent);
        let (ok, detail) = if head.size != m.ciphertext.size {
            (
                false,
                format!(
                    "{} bytes stored, the manifest says {}",
                    head.size, m.ciphertext.size
                ),
            )
        } else if let Some(med) = median
            && m.plaintext.size * 2 < med
        {
            (
                false,
                format!(
                    "{} bytes of data, far smaller than the median {med} of the last {} {} backups",
                    m.plaintext.size,
                    recent.len(),
                    m.kind
                ),
            )
        } else {
            (
                true,
                match median {
                    Some(med) => format!("{} bytes (median of previous: {med})", head.size),
                    None => format!("{} bytes (first backup of its kind)", head.size),
                },
            )
        };
        sheet.set(CHECKS[1], ok, detail);

        // 3. encrypted: judged on the bytes, not the configuration.
        let (_, mut r) = store.backend.open(&key, None).await.map_err(store.err())?;
        let mut magic = Vec::new();
        (&mut r)
            .take(AGE_MAGIC.len() as u64)
            .read_to_end(&mut magic)
            .await
            .map_err(|e| BackupError::Failed(format!("reading {key}: {e}")))?;
        drop(r);
        let is_age = magic == AGE_MAGIC;
        match (m.encrypted(), is_age) {
            (true, true) => sheet.set(CHECKS[2], true, "age header present"),
            (true, false) => sheet.set(
                CHECKS[2],
                false,
                "the manifest says age but the object has no age header",
            ),
            (false, true) => sheet.set(
                CHECKS[2],
                false,
                "an age header in a backup recorded as unencrypted",
            ),
            (false, false) => sheet.set(
                CHECKS[2],
                false,
                "not encrypted (encryption = \"none\" in the configuration)",
            ),
        }

        // Without the identity the object cannot be decrypted here: that is
        // point 5's failure, and nothing is downloaded for it.
        if let Err(e) = self.identity_for(&m) {
            sheet.put(
                CHECKS[3],
                Status::Skip,
                "not read: it could not be decrypted here",
            );
            sheet.set(CHECKS[4], false, e.to_string());
            sheet.skip_rest("the backup cannot be decrypted on this host");
            report.checks = sheet.finish();
            return Ok(report);
        }

        // 4–6: one pass: download, decrypt, decompress, restore into scratch
        // (an incremental's binary logs: unpack into a scratch directory).
        let label = format!("verify {} on {}", m.id, store.name);
        let load = match m.kind {
            Kind::Full => load_detached(&engine).await,
            Kind::Incremental => Mariadb::unpack(
                &self
                    .work_dir()
                    .join(format!("verify-logs-{}", Purpose::Verify.tag())),
            ),
        };
        // From here the scratch copy exists: removed however this ends (a
        // failed download, or the caller dropping this future at its budget).
        let scratch = load
            .as_ref()
            .ok()
            .map(|l| Scratch::new(Arc::clone(&engine), l.place.clone()));
        let loaded = match load {
            Ok(load) => self.load_into(store, &m, load, &label).await,
            Err(e) => Err(e.into()),
        };
        let loaded = match loaded {
            Ok(l) => l,
            Err(e) => {
                sheet.set(CHECKS[3], false, e.to_string());
                sheet.skip_rest("the object could not be read");
                report.checks = sheet.finish();
                return Ok(report);
            }
        };
        let result = self.judge(&mut sheet, &m, &loaded, &engine).await;
        if let Some(scratch) = scratch {
            scratch.discard().await;
        }
        report.restored = result?;
        if !sheet.failed() {
            report.plaintext_sha256 = Some(m.plaintext.sha256.clone());
            self.mark_verified(&store.name, source, &m.id);
        }
        report.checks = sheet.finish();
        Ok(report)
    }

    async fn judge(
        &self,
        sheet: &mut Sheet,
        m: &Manifest,
        loaded: &Loaded,
        engine: &Engine,
    ) -> Result<Option<Inspection>, BackupError> {
        let o = &loaded.opened;
        let download_failed = matches!(o.result, Err(OpenError::Download(_)));
        let downloaded = !download_failed
            && o.ciphertext.0 == m.ciphertext.size
            && o.ciphertext.1 == m.ciphertext.sha256;
        sheet.set(
            CHECKS[3],
            downloaded,
            if downloaded {
                format!("{} bytes read, sha256 matches the manifest", o.ciphertext.0)
            } else if let Err(OpenError::Download(e)) = &o.result {
                format!("reading failed after {} bytes: {e}", o.ciphertext.0)
            } else {
                format!(
                    "{} bytes with sha256 {}, the manifest says {} bytes with {}",
                    o.ciphertext.0,
                    short(&o.ciphertext.1),
                    m.ciphertext.size,
                    short(&m.ciphertext.sha256)
                )
            },
        );
        let extracted = match &o.result {
            Ok(()) if o.plaintext.1 == m.plaintext.sha256 => {
                sheet.set(
                    CHECKS[4],
                    true,
                    format!("{} bytes of plaintext, sha256 matches", o.plaintext.0),
                );
                true
            }
            Ok(()) => {
                sheet.set(
                    CHECKS[4],
                    false,
                    format!(
                        "plaintext sha256 {} differs from the manifest's {}",
                        short(&o.plaintext.1),
                        short(&m.plaintext.sha256)
                    ),
                );
                false
            }
            Err(OpenError::Sink(e)) => {
                // The decoder was fine; the loading tool stopped reading.
                sheet.set(
                    CHECKS[4],
                    true,
                    "decrypted and decompressed until the restore stopped",
                );
                sheet.set(
                    CHECKS[5],
                    false,
                    format!(
                        "{}: {e}",
                        loaded
                            .load
                            .as_ref()
                            .err()
                            .map(String::as_str)
                            .unwrap_or("the restore tool stopped reading")
                    ),
                );
                sheet.skip_rest("the backup did not restore");
                return Ok(None);
            }
            Err(e) => {
                sheet.set(CHECKS[4], false, e.to_string());
                false
            }
        };
        if !extracted {
            sheet.skip_rest("the backup could not be extracted");
            return Ok(None);
        }
        if let Err(e) = &loaded.load {
            sheet.set(CHECKS[5], false, e.clone());
            sheet.skip_rest("the backup did not restore");
            return Ok(None);
        }
        if m.kind == Kind::Incremental {
            // Binary logs hold changes, not tables: they are decoded in full;
            // the counts are checked when a chain is restored.
            let Place::File(dir) = loaded.place.clone() else {
                return Ok(None);
            };
            let logs = m.logs.clone();
            let decoded = tokio::task::spawn_blocking(move || Mariadb::decode_check(&dir, &logs))
                .await
                .map_err(|e| BackupError::Failed(format!("decode task: {e}")))?;
            match decoded {
                Ok(what) => {
                    sheet.set(
                        CHECKS[5],
                        true,
                        format!("{} binary log(s) unpacked", m.logs.len()),
                    );
                    sheet.set(CHECKS[6], true, what);
                }
                Err(e) => {
                    sheet.set(CHECKS[5], false, e.to_string());
                    sheet.skip_rest("the binary logs do not decode");
                    return Ok(None);
                }
            }
            sheet.put(
                CHECKS[7],
                Status::Skip,
                "not applicable: an incremental holds changes, not tables",
            );
            sheet.put(
                CHECKS[8],
                Status::Skip,
                "not applicable: an incremental holds changes, not rows",
            );
            sheet.set(
                CHECKS[9],
                true,
                if m.encrypted() {
                    "authenticated decryption, zstd checksums and a full decode agree"
                } else {
                    "zstd checksums and a full decode agree (not encrypted: nothing authenticates the bytes)"
                },
            );
            return Ok(None);
        }
        sheet.set(CHECKS[5], true, format!("restored into {}", loaded.place));
        let inspection = engine.inspect(&loaded.place).await?;
        match &inspection.integrity {
            Ok(what) => sheet.set(CHECKS[6], true, what.clone()),
            Err(what) => sheet.set(CHECKS[6], false, what.clone()),
        }
        let missing: Vec<&String> = m
            .tables
            .keys()
            .filter(|t| !inspection.tables.contains_key(*t))
            .collect();
        let extra: Vec<&String> = inspection
            .tables
            .keys()
            .filter(|t| !m.tables.contains_key(*t))
            .collect();
        sheet.set(
            CHECKS[7],
            missing.is_empty() && extra.is_empty(),
            if missing.is_empty() && extra.is_empty() {
                format!("{} tables", m.tables.len())
            } else {
                format!("missing: {missing:?}; not in the manifest: {extra:?}")
            },
        );
        let wrong: Vec<String> = m
            .tables
            .iter()
            .filter_map(|(t, n)| {
                let got = inspection.tables.get(t).copied().unwrap_or(0);
                (got != *n).then(|| format!("{t}: {got} of {n}"))
            })
            .collect();
        let rows: u64 = m.tables.values().sum();
        sheet.set(
            CHECKS[8],
            wrong.is_empty(),
            if wrong.is_empty() {
                format!("{rows} rows")
            } else {
                wrong.join(", ")
            },
        );
        // Corruption is about the data path and the content (points 4–9);
        // size and encryption are judged on their own.
        let clean = sheet
            .0
            .iter()
            .filter(|c| CHECKS[3..9].contains(&c.name))
            .all(|c| c.status == Status::Pass);
        sheet.set(
            CHECKS[9],
            clean,
            if !clean {
                "see the failures above"
            } else if m.encrypted() {
                "authenticated decryption, zstd checksums, engine checks and counts all agree"
            } else {
                "zstd checksums, engine checks and counts all agree (not encrypted: nothing authenticates the bytes)"
            },
        );
        Ok(Some(inspection))
    }

    fn mark_verified(&self, target: &str, source: &str, id: &str) {
        let marker = self.verified_marker(target, source, id);
        let written = marker
            .parent()
            .map(std::fs::create_dir_all)
            .unwrap_or(Ok(()))
            .and_then(|()| std::fs::write(&marker, chrono::Utc::now().to_rfc3339()));
        if let Err(e) = written {
            tracing::warn!("recording the verification of {id}: {e}");
        }
    }

    fn unmark_verified(&self, target: &str, source: &str, id: &str) {
        let marker = self.verified_marker(target, source, id);
        match std::fs::remove_file(&marker) {
            Ok(()) => {
                tracing::warn!("{id} on {target} no longer verifies: its verified mark is removed")
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::error!("removing the verified mark of {id} on {target}: {e}"),
        }
    }

    /// The checklist on each named target (all when empty). With several
    /// targets, a last report line compares their restored content.
    pub async fn verify(
        &self,
        source: &str,
        id: &str,
        targets: &[String],
    ) -> Result<Vec<VerifyReport>, BackupError> {
        let stores = self.stores_named(targets)?;
        let mut reports = Vec::new();
        // "latest" means the same backup everywhere: resolve it on the first target.
        let id = if id == "latest" {
            // On the first target that answers.
            let mut found = Err(BackupError::Config("no targets".into()));
            for store in &stores {
                found = store.find(source, "latest").await;
                if !matches!(found, Err(BackupError::Target { .. })) {
                    break;
                }
            }
            found?.id
        } else {
            id.to_string()
        };
        for store in stores {
            let result = self.verify_on(store, source, &id).await;
            // A backup that fails verification now is not verified, whatever
            // an earlier run found: prune must not count on it.
            // (A target that cannot be reached right now proves nothing.)
            let failed = match &result {
                Ok(r) => !r.passed(),
                Err(BackupError::NotFound(_)) => true,
                Err(_) => false,
            };
            if failed {
                self.unmark_verified(&store.name, source, &id);
            }
            // A missing manifest or a target that cannot be reached fails
            // that target's report only.
            let (first, rest) = match result {
                Ok(r) => {
                    reports.push(r);
                    continue;
                }
                Err(BackupError::NotFound(msg)) => (msg, "no manifest on this target"),
                Err(e) => (e.to_string(), "the target could not be read"),
            };
            let mut sheet = Sheet(Vec::new());
            sheet.set(CHECKS[0], false, first);
            sheet.skip_rest(rest);
            reports.push(VerifyReport {
                target: store.name.clone(),
                id: id.clone(),
                source: source.to_string(),
                checks: sheet.0,
                restored: None,
                plaintext_sha256: None,
            });
        }
        Ok(reports)
    }
}

/// Whether every report restored the same content (same plaintext, same tables and rows).
pub fn identical(reports: &[VerifyReport]) -> Result<String, String> {
    let mut first: Option<(&str, &Inspection, &str)> = None;
    for r in reports {
        let (Some(ins), Some(sha)) = (&r.restored, &r.plaintext_sha256) else {
            // Say why: "did not restore" alone reads as a restore that was
            // tried, even for a backup that is not there.
            let why = r
                .checks
                .iter()
                .find(|c| c.status == Status::Fail)
                .map(|c| format!("{}: {}", c.name, c.detail))
                .unwrap_or_else(|| "it did not pass verification".into());
            return Err(format!("{} cannot be compared ({why})", r.target));
        };
        match first {
            None => first = Some((&r.target, ins, sha)),
            Some((t, i, s)) => {
                if s != sha || i.tables != ins.tables {
                    return Err(format!(
                        "{} and {} restore to different content",
                        t, r.target
                    ));
                }
            }
        }
    }
    Ok(format!(
        "{} targets restore to identical content",
        reports.len()
    ))
}

fn median(v: &[u64]) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_unstable();
    Some(s[s.len() / 2])
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}
