//! `drhost backup …`: the command-line face of the backup engine.

use clap::Subcommand;
use drhost::backup::config::Config;
use drhost::backup::manifest::Kind;
use drhost::backup::{self, BackupError, Backups, Status};
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum BackupCommand {
    /// Back up a source to every target.
    Create {
        source: String,
        #[arg(long, default_value = "full")]
        kind: String,
    },
    /// List backups (all sources, or one) on every target.
    List { source: Option<String> },
    /// Run the 11-point checklist (the plan's 10 and the manifest's signature): ID is SOURCE/ID, ID with --source, or latest.
    Verify {
        id: String,
        #[arg(long)]
        source: Option<String>,
        /// Check this target only (repeatable); default: every target.
        #[arg(long = "target")]
        targets: Vec<String>,
        /// Check every target and prove they restore to identical content.
        #[arg(long)]
        all_targets: bool,
    },
    /// Restore a backup into a source's database: staged, verified, then swapped in.
    Restore {
        id: String,
        #[arg(long)]
        source: Option<String>,
        /// The source (as named in the configuration) whose database is replaced.
        #[arg(long)]
        to: String,
        /// Read the backup from this target; default: the first that holds it.
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        point_in_time: Option<String>,
        /// With --point-in-time: replay again from this time (RFC 3339) to the
        /// end of the archived logs, leaving out what lies between (a corruption).
        #[arg(long)]
        resume_at: Option<String>,
    },
    /// Delete backups the retention policy no longer keeps.
    Prune {
        #[arg(long)]
        dry_run: bool,
    },
    /// Print a new age identity (keep it secret) and its recipient (put it in drhost.toml).
    Keygen,
}

/// Default configuration file: `$DRHOST_CONFIG`, else `./drhost.toml`.
pub fn default_config() -> PathBuf {
    std::env::var_os("DRHOST_CONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("drhost.toml"))
}

/// Splits `SOURCE/ID`; else uses `--source`, else the only configured source.
fn resolve_id(
    config: &Config,
    id: &str,
    source: Option<String>,
) -> Result<(String, String), String> {
    if let Some((s, i)) = id.split_once('/') {
        return Ok((s.to_string(), i.to_string()));
    }
    if let Some(s) = source {
        return Ok((s, id.to_string()));
    }
    let mut names = config.sources.keys();
    match (names.next(), names.next()) {
        (Some(only), None) => Ok((only.clone(), id.to_string())),
        _ => Err(format!(
            "{id}: name the source, as SOURCE/{id} or with --source (configured: {})",
            config
                .sources
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

fn usage(e: impl std::fmt::Display) -> i32 {
    eprintln!("error: {e}");
    2
}

fn print_json<T: serde::Serialize>(v: &T) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("error: encoding JSON: {e}"),
    }
}

/// With `state` set in drhost.toml, manual backups and verifications are
/// recorded like scheduled ones: they count in /metrics and `drhost report`.
async fn state_store(backups: &Backups) -> Option<drhost::serve::store::StateStore> {
    backups.config.state.as_ref()?;
    match drhost::serve::store::StateStore::for_config(&backups.config, &backups.state_dir).await {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("not recorded in the state store: {e}");
            None
        }
    }
}

fn manual_job_id() -> String {
    format!("manual:{}", drhost::clock::new_run_id())
}

async fn record_verification(
    backups: &Backups,
    store: &drhost::serve::store::StateStore,
    source: &str,
    reports: &[backup::VerifyReport],
) {
    let listed = backups.list(Some(source)).await.unwrap_or_default();
    let job = manual_job_id();
    for r in reports {
        let covers = listed
            .iter()
            .find(|(_, m)| m.id == r.id)
            .and_then(|(_, m)| chrono::DateTime::parse_from_rfc3339(&m.covers.until).ok())
            .map(|t| t.timestamp_millis());
        for row in
            drhost::serve::jobs::verification_rows(&job, source, covers, std::slice::from_ref(r))
        {
            if let Err(e) = store.record_verification(&row).await {
                tracing::warn!("recording the verification in the state store: {e}");
            }
        }
    }
}

fn code_of(e: &BackupError) -> i32 {
    match e {
        BackupError::Config(_) => 2,
        _ => 1,
    }
}

pub async fn run(
    command: BackupCommand,
    config_path: &Path,
    state_dir: PathBuf,
    json: bool,
) -> anyhow::Result<i32> {
    if let BackupCommand::Keygen = command {
        let (secret, public) = backup::keygen();
        println!("# created: {}", chrono::Utc::now().to_rfc3339());
        println!("# public key: {public}");
        println!("{secret}");
        return Ok(0);
    }
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(2);
        }
    };
    let mut backups = match Backups::open(config, state_dir).await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(code_of(&e));
        }
    };
    backups.progress = !json;
    match command {
        BackupCommand::Keygen => Ok(0),
        BackupCommand::Create { source, kind } => {
            let kind: Kind = match kind.parse() {
                Ok(k) => k,
                Err(e) => return Ok(usage(e)),
            };
            let clock = std::time::Instant::now();
            let result = backups.create(&source, kind).await;
            if let Some(store) = state_store(&backups).await {
                let error = result
                    .as_ref()
                    .err()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                let outcome = match &result {
                    Ok(r) => Ok(r),
                    Err(_) => Err(error.as_str()),
                };
                let row = drhost::serve::jobs::backup_row(
                    &manual_job_id(),
                    &source,
                    kind,
                    outcome,
                    clock.elapsed().as_secs_f64(),
                );
                if let Err(e) = store.record_backup(&row).await {
                    tracing::warn!("recording the backup in the state store: {e}");
                }
            }
            match result {
                Ok(report) => {
                    if json {
                        print_json(&report);
                    } else {
                        let m = &report.manifest;
                        println!(
                            "backup {}/{}: {} tables, {} rows, {} bytes → {} bytes stored, in {:.2} s",
                            m.source,
                            m.id,
                            m.tables.len(),
                            m.tables.values().sum::<u64>(),
                            m.plaintext.size,
                            m.ciphertext.size,
                            report.seconds
                        );
                        for t in &report.targets {
                            match &t.error {
                                None => println!("  {}: complete", t.target),
                                Some(e) => println!(
                                    "  {}: INCOMPLETE (no manifest written): {e}",
                                    t.target
                                ),
                            }
                        }
                    }
                    Ok(if report.complete() { 0 } else { 1 })
                }
                Err(e) => Ok({
                    eprintln!("error: {e}");
                    code_of(&e)
                }),
            }
        }
        BackupCommand::List { source } => match backups.list_report(source.as_deref()).await {
            Ok(drhost::backup::Listing {
                backups: all,
                problems,
                orphans,
            }) => {
                if json {
                    let v: Vec<serde_json::Value> = all
                        .iter()
                        .map(|(t, m)| {
                            serde_json::json!({
                                "target": t,
                                "manifest": m,
                                "signed": m.authenticity.trusted(),
                                "signature_problem": m.authenticity.problem(),
                            })
                        })
                        .collect();
                    print_json(&v);
                } else {
                    println!(
                        "{:<10} {:<12} {:<30} {:>12} {:>8} {:>10} {:<6}",
                        "TARGET", "SOURCE", "ID", "BYTES", "TABLES", "ROWS", "SIGNED"
                    );
                    for (t, m) in &all {
                        println!(
                            "{:<10} {:<12} {:<30} {:>12} {:>8} {:>10} {:<6}",
                            t,
                            m.source,
                            m.id,
                            m.ciphertext.size,
                            m.tables.len(),
                            m.tables.values().sum::<u64>(),
                            if m.authenticity.trusted() {
                                "yes"
                            } else {
                                "NO"
                            }
                        );
                    }
                }
                // Not a failure: a backup may be running right now.
                for o in &orphans {
                    eprintln!(
                        "note: {o} (an interrupted or running backup, or a deleted manifest; prune removes it once a day old)"
                    );
                }
                // What is listed is real; what could not be read is said,
                // and the exit code says the listing is partial.
                for p in &problems {
                    eprintln!("warning: {p}");
                }
                Ok(if problems.is_empty() { 0 } else { 1 })
            }
            Err(e) => Ok({
                eprintln!("error: {e}");
                code_of(&e)
            }),
        },
        BackupCommand::Verify {
            id,
            source,
            targets,
            all_targets,
        } => {
            let (source, id) = match resolve_id(&backups.config, &id, source) {
                Ok(x) => x,
                Err(e) => return Ok(usage(e)),
            };
            let targets = if all_targets { Vec::new() } else { targets };
            let reports = match backups.verify(&source, &id, &targets).await {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: {e}");
                    return Ok(code_of(&e));
                }
            };
            if let Some(store) = state_store(&backups).await {
                record_verification(&backups, &store, &source, &reports).await;
            }
            let mut ok = reports.iter().all(|r| r.passed());
            let same = (all_targets || reports.len() > 1).then(|| backup::identical(&reports));
            if let Some(Err(_)) = &same {
                ok = false;
            }
            if json {
                let v = serde_json::json!({
                    "reports": reports,
                    "identical": same.as_ref().map(|s| match s { Ok(m) => serde_json::json!({"ok": true, "detail": m}), Err(m) => serde_json::json!({"ok": false, "detail": m}) }),
                    "passed": ok,
                });
                print_json(&v);
            } else {
                for r in &reports {
                    println!("backup {}/{} on target {}", r.source, r.id, r.target);
                    for (i, c) in r.checks.iter().enumerate() {
                        let s = match c.status {
                            Status::Pass => "PASS",
                            Status::Fail => "FAIL",
                            Status::Skip => "SKIP",
                        };
                        println!("  [{s}] {:>2}. {:<24} {}", i + 1, c.name, c.detail);
                    }
                }
                match &same {
                    Some(Ok(m)) => println!("[PASS] {m}"),
                    Some(Err(m)) => println!("[FAIL] {m}"),
                    None => {}
                }
                println!("{}", if ok { "VERIFIED" } else { "NOT VERIFIED" });
            }
            Ok(if ok { 0 } else { 1 })
        }
        BackupCommand::Restore {
            id,
            source,
            to,
            from,
            point_in_time,
            resume_at,
        } => {
            let (source, id) = match resolve_id(&backups.config, &id, source) {
                Ok(x) => x,
                Err(e) => return Ok(usage(e)),
            };
            match backups
                .restore_skipping(
                    &source,
                    &id,
                    &to,
                    from.as_deref(),
                    point_in_time.as_deref(),
                    resume_at.as_deref(),
                )
                .await
            {
                Ok(r) => {
                    if json {
                        print_json(&r);
                    } else {
                        println!(
                            "restored {}/{} from {} into {}: {} tables, {} rows, verified before the swap, in {:.2} s",
                            r.source, r.id, r.from, r.to, r.tables, r.rows, r.seconds
                        );
                        if let Some(p) = &r.point_in_time {
                            println!(
                                "  replayed the binary logs of {} incremental(s) up to {p}: {}",
                                r.replayed.len(),
                                r.replayed.join(", ")
                            );
                        }
                    }
                    Ok(0)
                }
                Err(e) => Ok({
                    eprintln!("error: {e}");
                    code_of(&e)
                }),
            }
        }
        BackupCommand::Prune { dry_run } => match backups.prune(dry_run).await {
            Ok(r) => {
                if json {
                    print_json(&r);
                } else {
                    let verb = if dry_run { "would delete" } else { "deleted" };
                    for p in &r.deleted {
                        println!("{verb} {}/{} on {}: {}", p.source, p.id, p.target, p.reason);
                    }
                    for p in &r.kept {
                        println!("kept {}/{} on {}: {}", p.source, p.id, p.target, p.reason);
                    }
                }
                for p in &r.problems {
                    eprintln!("warning: {p}");
                }
                Ok(if r.problems.is_empty() { 0 } else { 1 })
            }
            Err(e) => Ok({
                eprintln!("error: {e}");
                code_of(&e)
            }),
        },
    }
}
