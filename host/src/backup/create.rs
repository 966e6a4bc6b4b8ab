//! `drhost backup create`: one dump, streamed once, stored on every target.

use super::engine::Engine;
use super::manifest::{
    self, Covers, Digest, EncryptionInfo, Kind, LogPosition, Manifest, RecipientInfo,
};
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
        self.create_at(source, kind, chrono::Utc::now()).await
    }

    /// Creates a backup as if it started at `started` (its id and the time it
    /// covers): for tests of point-in-time logic without waiting for a clock.
    pub async fn create_at(
        &self,
        source: &str,
        kind: Kind,
        started: chrono::DateTime<chrono::Utc>,
    ) -> Result<CreateReport, BackupError> {
        let engine = self.engine(source)?;
        let mut stores: Vec<&super::Store> = self.stores.iter().collect();
        // Targets left out of this backup, and why.
        let mut skipped: Vec<TargetResult> = Vec::new();
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

        // A backup of a half-swapped database would keep its damage: an
        // interrupted restore into it is finished or undone first.
        // A restore killed a moment ago holds the lock until the server
        // notices its session is gone: wait a little for that.
        let Some(mut lock) = engine
            .lock_restores(std::time::Duration::from_secs(10))
            .await?
        else {
            return Err(BackupError::Failed(format!(
                "a restore into {source} is running: not backing up a database that is being replaced"
            )));
        };
        if let Some(done) = engine.finish_interrupted(&mut lock).await? {
            tracing::warn!("an interrupted restore into {source} was {done}");
        }
        lock.release().await;
        // Crash points from here to the last manifest: a kill at any of
        // them must leave no manifest that claims more than its target holds.
        crate::crash::point("backup-create");
        let clock = std::time::Instant::now();
        let id = manifest::new_id(started, kind);
        tracing::info!(source, %id, "backup started");
        let (dump, chain, ext) = match kind {
            Kind::Full => (engine.dump().await?, None, engine.extension()),
            Kind::Incremental => {
                let Engine::Mariadb(m) = &engine else {
                    return Err(BackupError::Config(format!(
                        "incremental backups need binary logs: available for MariaDB sources, not {} (take full backups)",
                        engine.kind()
                    )));
                };
                let base = self.newest(source).await?.ok_or_else(|| {
                    BackupError::Config(format!(
                        "no backup of {source} yet: an incremental continues a full backup"
                    ))
                })?;
                let from = base
                    .covers
                    .position
                    .as_deref()
                    .and_then(LogPosition::parse)
                    .ok_or_else(|| {
                        BackupError::Config(format!(
                            "backup {} of {source} records no binary log position (was log_bin off?): take a full backup",
                            base.id
                        ))
                    })?;
                // An incremental only goes where its base is: elsewhere it
                // would look complete and restore nothing.
                let key = Manifest::key(source, &base.id);
                let mut with_base = Vec::new();
                for store in stores {
                    match store.backend.head(&store.key(&key)).await {
                        Ok(Some(_)) => with_base.push(store),
                        Ok(None) => skipped.push(TargetResult {
                            target: store.name.clone(),
                            error: Some(format!(
                                "its base {} is not on this target: take a full backup to bring it back in step",
                                base.id
                            )),
                        }),
                        Err(e) => skipped.push(TargetResult {
                            target: store.name.clone(),
                            error: Some(format!("checking for its base {}: {e}", base.id)),
                        }),
                    }
                }
                if with_base.is_empty() {
                    return Err(BackupError::Failed(format!(
                        "no target holds the base {} of the incremental: take a full backup",
                        base.id
                    )));
                }
                stores = with_base;
                let inc = m.incremental(&from, &self.work_dir()).await?;
                crate::crash::point("backup-create");
                (
                    inc.dump,
                    Some((base.id, from, inc.logs, inc.next)),
                    "binlog.tar",
                )
            }
        };
        let object = format!(
            "{source}/{id}.{ext}.zst{}",
            if encrypted { ".age" } else { "" }
        );
        let (fan, readers) = FanOut::new(stores.len());
        let mut uploads = Vec::new();
        for (store, reader) in stores.iter().zip(readers) {
            let backend = store.backend.clone();
            let key = store.key(&object);
            uploads.push(tokio::spawn(async move {
                backend.put_stream(&key, None, reader).await
            }));
        }
        crate::crash::point("backup-create");
        let level = self.config.zstd_level;
        // The previous backup of this kind sizes the bar, so it can show an ETA.
        let estimate = if self.progress && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            self.newest(source)
                .await
                .ok()
                .flatten()
                .filter(|m| m.kind == kind)
                .map(|m| m.plaintext.size)
        } else {
            None
        };
        let bar = Progress::new(self.progress, &format!("backup {source}"), estimate);
        let bar2 = bar.clone();
        let sealing = tokio::task::spawn_blocking(move || {
            let reader = bar2.reader(dump.reader);
            let sealed = pipeline::seal(reader, level, &recipients, fan);
            // The dump tool's verdict comes before the streams end: a failed
            // dump must abort the uploads, not complete them.
            crate::crash::point("backup-create");
            match sealed {
                Ok((sealed, fan)) => match (dump.finish)() {
                    Ok(facts) => fan
                        .finish()
                        .inspect(|()| crate::crash::point("backup-create"))
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
            crate::crash::point("backup-create");
            results.push((store, r));
        }
        let (sealed, facts) = sealing?;

        let database = match &engine {
            Engine::Mariadb(m) => Some(m.server.database.clone()),
            _ => None,
        };
        let manifest = Manifest {
            authenticity: Default::default(),
            database,
            format: manifest::FORMAT,
            id: id.clone(),
            source: source.to_string(),
            source_kind: engine.kind(),
            kind,
            started_at: started.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            finished_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            covers: Covers {
                until: started.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                position: match &chain {
                    Some((_, _, _, next)) => Some(next.to_string()),
                    None => facts.position,
                },
            },
            object: object.clone(),
            pipeline: std::iter::once(ext.to_string())
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
            base: chain.as_ref().map(|c| c.0.clone()),
            from_position: chain.as_ref().map(|c| c.1.to_string()),
            logs: chain.map(|c| c.2).unwrap_or_default(),
        };
        let body = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| BackupError::Failed(format!("encoding the manifest: {e}")))?;
        let signature = self
            .signer
            .as_ref()
            .ok_or_else(|| {
                BackupError::Config(format!(
                    "no key to sign manifests with: set [keys] signing-key, or let drhost write {}",
                    super::signing::own_key(&self.state_dir).display()
                ))
            })?
            .sign(source, &id, &body)?;

        let mut targets = Vec::new();
        for t in skipped {
            tracing::warn!(target = %t.target, "backup {id} left out: {}", t.error.as_deref().unwrap_or(""));
            targets.push(t);
        }
        for (store, upload_error) in results {
            // The manifest goes last, and only where every byte arrived;
            // its signature just before it, so a manifest is never unsigned.
            let key = store.key(&Manifest::key(source, &id));
            crate::crash::point("backup-create");
            let error = match upload_error {
                Some(e) => Some(e),
                None => match store
                    .backend
                    .put(
                        &super::signing::signature_key(&key),
                        signature.clone().into_bytes(),
                    )
                    .await
                {
                    Err(e) => Some(format!("writing the manifest's signature: {e}")),
                    Ok(_) => {
                        crate::crash::point("backup-create");
                        store
                            .backend
                            .put(&key, body.clone())
                            .await
                            .err()
                            .map(|e| format!("writing the manifest: {e}"))
                    }
                },
            };
            crate::crash::point("backup-create");
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
        crate::crash::point("backup-create");
        tracing::info!(source, %id, "backup finished");
        Ok(CreateReport {
            manifest,
            targets,
            seconds: clock.elapsed().as_secs_f64(),
        })
    }
}

impl Backups {
    /// The newest backup of `source` on any target.
    pub async fn newest(&self, source: &str) -> Result<Option<Manifest>, BackupError> {
        let mut newest: Option<Manifest> = None;
        let mut reached = 0;
        let mut last_error = None;
        for store in &self.stores {
            let manifests = match store.manifests(source).await {
                Ok(m) => m,
                Err(e) => {
                    // A target that is down does not stop the others.
                    tracing::warn!("target {} skipped: {e}", store.name);
                    last_error = Some(e);
                    continue;
                }
            };
            reached += 1;
            if let Some(m) = manifests.into_iter().last()
                && newest.as_ref().is_none_or(|n| m.id > n.id)
            {
                newest = Some(m);
            }
        }
        match (reached, last_error) {
            (0, Some(e)) => Err(e),
            _ => Ok(newest),
        }
    }
}
