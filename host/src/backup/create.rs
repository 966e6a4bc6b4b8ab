//! `drhost backup create`: one dump, streamed once, stored on every target.

use super::manifest::{self, Covers, Digest, EncryptionInfo, Kind, Manifest, RecipientInfo};
use super::pipeline::{self, FanOut};
use super::progress::Progress;
use super::{BackupError, Backups};
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Serialize)]
pub struct TargetResult {
    pub target: String,
    /// `None` when the backup is complete there (manifest written).
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CreateReport {
    pub manifest: Manifest,
    pub targets: Vec<TargetResult>,
    pub seconds: f64,
}

impl CreateReport {
    /// Complete on every target.
    pub fn complete(&self) -> bool {
        self.targets.iter().all(|t| t.error.is_none())
    }
}

impl Backups {
    pub async fn create(&self, source: &str, kind: Kind) -> Result<CreateReport, BackupError> {
        let engine = self.engine(source)?;
        if kind == Kind::Incremental {
            return Err(BackupError::Config(format!(
                "incremental backups of {} sources are not available yet: take a full backup",
                engine.kind()
            )));
        }
        let stores: Vec<&super::Store> = self.stores.iter().collect();
        if stores.is_empty() {
            return Err(BackupError::Config("no targets configured".into()));
        }
        let recipients: Vec<age::x25519::Recipient> = self
            .config
            .keys
            .recipients
            .iter()
            .map(|r| {
                r.parse()
                    .map_err(|e| BackupError::Config(format!("recipient {r}: {e}")))
            })
            .collect::<Result<_, _>>()?;
        let encrypted = self.config.encryption == super::config::Encryption::Age;
        if encrypted && recipients.is_empty() {
            // Config validation refuses this too; a backup must never fall back to plaintext.
            return Err(BackupError::Config(
                "no age recipients: refusing to write an unencrypted backup".into(),
            ));
        }

        let started = chrono::Utc::now();
        let clock = std::time::Instant::now();
        let id = manifest::new_id(started, kind);
        let object = format!(
            "{source}/{id}.{}.zst{}",
            engine.extension(),
            if encrypted { ".age" } else { "" }
        );
        tracing::info!(source, %id, "backup started");

        let dump = engine.dump().await?;
        let (fan, readers) = FanOut::new(stores.len());
        let mut uploads = Vec::new();
        for (store, reader) in stores.iter().zip(readers) {
            let backend = store.backend.clone();
            let key = store.key(&object);
            uploads.push(tokio::spawn(async move {
                backend.put_stream(&key, None, reader).await
            }));
        }
        let level = self.config.zstd_level;
        let bar = Progress::new(self.progress, &format!("backup {source}"), None);
        let bar2 = bar.clone();
        let sealing = tokio::task::spawn_blocking(move || {
            let reader = bar2.reader(dump.reader);
            let sealed = pipeline::seal(reader, level, &recipients, fan);
            // The dump tool's verdict comes before the streams end: a failed
            // dump must abort the uploads, not complete them.
            match sealed {
                Ok((sealed, fan)) => match (dump.finish)() {
                    Ok(facts) => fan
                        .finish()
                        .map(|()| (sealed, facts))
                        .map_err(|e| BackupError::Failed(format!("sending the last bytes: {e}"))),
                    Err(e) => Err(BackupError::Engine(e)),
                },
                Err(e) => {
                    // Reap the tool; its complaint usually explains the broken stream.
                    let tool = (dump.finish)().err();
                    Err(match tool {
                        Some(t) => BackupError::Engine(t),
                        None => BackupError::Failed(format!("compressing or encrypting: {e}")),
                    })
                }
            }
        })
        .await
        .map_err(|e| BackupError::Failed(format!("backup task: {e}")))?;
        bar.finish();

        let mut results = Vec::new();
        for (store, upload) in stores.iter().zip(uploads) {
            let r = match upload.await {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(e) => Some(format!("upload task: {e}")),
            };
            results.push((store, r));
        }
        let (sealed, facts) = sealing?;

        let manifest = Manifest {
            format: manifest::FORMAT,
            id: id.clone(),
            source: source.to_string(),
            source_kind: engine.kind(),
            kind,
            started_at: started.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            finished_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            covers: Covers {
                until: started.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                position: facts.position,
            },
            object: object.clone(),
            pipeline: std::iter::once(engine.extension().to_string())
                .chain(std::iter::once("zstd".to_string()))
                .chain(encrypted.then(|| "age".to_string()))
                .collect(),
            plaintext: Digest {
                size: sealed.plaintext.0,
                sha256: sealed.plaintext.1,
            },
            ciphertext: Digest {
                size: sealed.ciphertext.0,
                sha256: sealed.ciphertext.1,
            },
            tables: facts.tables,
            tools: {
                let mut t: BTreeMap<String, String> = facts.tools;
                t.insert("drhost".into(), env!("CARGO_PKG_VERSION").into());
                t.insert("zstd".into(), zstd::zstd_safe::version_string().to_string());
                t.insert(
                    "age".into(),
                    "age crate 0.11 (age-encryption.org/v1)".into(),
                );
                t
            },
            encryption: EncryptionInfo {
                scheme: if encrypted { "age" } else { "none" }.into(),
                recipients: self
                    .config
                    .keys
                    .recipients
                    .iter()
                    .map(|r| RecipientInfo {
                        recipient: r.clone(),
                        fingerprint: manifest::fingerprint(r),
                    })
                    .collect(),
            },
        };
        let body = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| BackupError::Failed(format!("encoding the manifest: {e}")))?;

        let mut targets = Vec::new();
        for (store, upload_error) in results {
            // The manifest goes last, and only where every byte arrived.
            let error = match upload_error {
                Some(e) => Some(e),
                None => store
                    .backend
                    .put(&store.key(&Manifest::key(source, &id)), body.clone())
                    .await
                    .err()
                    .map(|e| format!("writing the manifest: {e}")),
            };
            if let Some(e) = &error {
                tracing::warn!(target = %store.name, "backup {id} incomplete: {e}");
            }
            targets.push(TargetResult {
                target: store.name.clone(),
                error,
            });
        }
        if targets.iter().all(|t| t.error.is_some()) {
            let why: Vec<String> = targets
                .iter()
                .map(|t| format!("{}: {}", t.target, t.error.as_deref().unwrap_or("")))
                .collect();
            return Err(BackupError::Failed(format!(
                "backup {id} of {source} reached no target: {}",
                why.join("; ")
            )));
        }
        tracing::info!(source, %id, "backup finished");
        Ok(CreateReport {
            manifest,
            targets,
            seconds: clock.elapsed().as_secs_f64(),
        })
    }
}
