//! The `drhost` command line: parse, call the library, render.

use anyhow::Context;
use clap::{Parser, Subcommand};
use drhost::audit::{self, Verdict};
use drhost::orchestrator::{self, RunOptions, exit};
use drhost::policy::Policy;
use drhost::runtime::Runtime;
use drhost::text;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod cli_backup;
mod cli_serve;

#[derive(Parser)]
#[command(
    name = "drhost",
    version,
    about = "Executable, sandboxed, auditable disaster recovery"
)]
struct Cli {
    /// Where drhost keeps its state: compile cache, plugin state, audit heads.
    #[arg(long, global = true, env = "DRHOST_STATE_DIR")]
    state_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a scenario: detect, and if something is wrong contain, recover, verify.
    Run {
        /// The scenario component (.wasm).
        plugin: PathBuf,
        /// Policy file; default: <plugin>.policy.toml beside the plugin, else no grants.
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Directory for run records (<out>/<run-id>/audit.jsonl).
        #[arg(long, default_value = "runs")]
        out: PathBuf,
        /// Run only the steps of one phase (detect, contain, backup, recover, verify).
        #[arg(long)]
        phase: Option<String>,
        /// Print the report as JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Plan mode: run the steps, but record mutating calls instead of executing them.
        #[arg(long)]
        plan: bool,
        /// Backup configuration, for policies that grant [backup.*]; default:
        /// $DRHOST_CONFIG, else ./drhost.toml.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Drill a scenario: inject its disaster into a sandbox, then detect,
    /// recover and verify, and measure detection, recovery time and the
    /// recovery point against the targets. Exit 0 when every target is met,
    /// 1 when the recovery failed, 3 when a target was missed.
    Drill {
        /// The scenario component (.wasm). Not with --all.
        plugin: Option<PathBuf>,
        /// The drill's policy; default: <plugin>.<env>.policy.toml beside the plugin.
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Environment name that picks the policy beside the plugin.
        #[arg(long, default_value = "drill")]
        env: String,
        /// Write JUnit XML here (one test case per step and per target).
        #[arg(long)]
        junit: Option<PathBuf>,
        /// Write report.md, report.html and timeline.svg into this directory
        /// (with --all, one subdirectory per example).
        #[arg(long)]
        report: Option<PathBuf>,
        /// Directory for run records (<out>/<run-id>/audit.jsonl).
        #[arg(long, default_value = "runs")]
        out: PathBuf,
        /// Backup configuration, for policies that grant [backup.*].
        #[arg(long)]
        config: Option<PathBuf>,
        /// Drill every example under this directory that has a drill.toml.
        #[arg(long)]
        all: Option<PathBuf>,
        /// Print the reports as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a plugin's metadata, its imports, and what the policy grants.
    Inspect {
        plugin: PathBuf,
        #[arg(long)]
        policy: Option<PathBuf>,
    },
    /// Check a plugin against the conformance suite (every step in plan mode,
    /// with the policy's grants and with none, twice).
    Test {
        plugin: PathBuf,
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a new plugin project (source, WIT, policy, README, build script).
    New {
        name: String,
        /// rust, python or js.
        #[arg(long, default_value = "rust")]
        lang: String,
        /// Where to write it; default: ./NAME.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Compile a plugin into the cache ahead of time.
    Compile { plugins: Vec<PathBuf> },
    /// Verify or show an audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Read or change a scenario's state store (what its `state` interface sees).
    State {
        #[command(subcommand)]
        command: StateCommand,
    },
    /// Back up, verify, restore and prune databases (configured in drhost.toml).
    Backup {
        /// The configuration file; default: $DRHOST_CONFIG, else ./drhost.toml.
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        /// Print reports as JSON.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: cli_backup::BackupCommand,
    },
    /// Run the schedules in drhost.toml: backups, verification, prune,
    /// restore tests, drills; serve /health and /metrics; send alerts.
    Serve {
        /// The configuration file; default: $DRHOST_CONFIG, else ./drhost.toml.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Address for /health and /metrics (overrides [serve] listen).
        #[arg(long)]
        listen: Option<String>,
        /// Print each schedule's next times and exit.
        #[arg(long)]
        list: bool,
    },
    /// The plan's Disaster Recovery Metrics, target against actual, from the
    /// state store. Exits 3 when a measured metric misses its target.
    Report {
        #[arg(long)]
        config: Option<PathBuf>,
        /// The window: 30d, 12h, …
        #[arg(long, default_value = "30d")]
        since: String,
        #[arg(long, conflicts_with = "html")]
        json: bool,
        /// HTML with charts.
        #[arg(long)]
        html: bool,
        /// Write to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Prepare the quickstart: two local buckets with a damaged primary (DIR),
    /// or a sample SQLite database (--sample-db) and its disaster (--damage-db).
    Quickstart {
        /// Directory that will hold primary/ and secondary/.
        dir: Option<PathBuf>,
        /// Create the sample shop database at this path.
        #[arg(long)]
        sample_db: Option<PathBuf>,
        /// Drop a table and delete rows in the sample database at this path.
        #[arg(long)]
        damage_db: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum StateCommand {
    /// List the keys and values (as text where they are UTF-8).
    List { scenario: String },
    /// Set a key to a text value.
    Set {
        scenario: String,
        key: String,
        value: String,
    },
    /// Remove a key.
    Delete { scenario: String, key: String },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain; name the first record that does not chain.
    Verify {
        file: PathBuf,
        /// Fail (exit 1) when the state directory holds no head for the run:
        /// a chain alone does not show that the log was not rewritten.
        #[arg(long)]
        require_head: bool,
        /// Also compare with the head the run wrote to the `[audit] anchor`
        /// alias of this policy (fails when it is missing or differs).
        #[arg(long, value_name = "POLICY")]
        anchor: Option<PathBuf>,
    },
    /// Print a readable timeline.
    Show { file: PathBuf },
}

/// Log lines on stderr: timestamped (UTC), coloured only on a terminal
/// without `NO_COLOR`, one JSON object a line with `DRHOST_LOG_FORMAT=json`
/// (for daemons and log collectors); `DRHOST_LOG` filters, as `RUST_LOG`.
fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("DRHOST_LOG")
        // sqlx warns about any statement over 1 s; counting or checking
        // a large table during verification takes longer by design.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx::query=error"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    if std::env::var("DRHOST_LOG_FORMAT").is_ok_and(|f| f == "json") {
        fmt.json().with_current_span(true).init();
    } else {
        let colour = std::io::stderr().is_terminal()
            && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        fmt.with_ansi(colour).init();
    }
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::USAGE as u8);
        }
    };
    match rt.block_on(dispatch(cli)) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit::USAGE as u8)
        }
    }
}

/// `x.wasm` → `x.policy.toml` beside it, if present.
fn default_policy(plugin: &Path) -> Option<PathBuf> {
    let p = plugin.with_extension("policy.toml");
    p.exists().then_some(p)
}

fn load_policy(explicit: Option<PathBuf>, plugin: &Path) -> anyhow::Result<Policy> {
    match explicit.or_else(|| default_policy(plugin)) {
        Some(p) => Ok(Policy::load(&p)?),
        None => {
            tracing::info!("no policy given or found beside the plugin: it runs with no grants");
            Ok(Policy::deny_all())
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    let state_dir = cli.state_dir.unwrap_or_else(drhost::default_state_dir);
    match cli.command {
        Command::Run {
            plugin,
            policy,
            out,
            phase,
            json,
            plan,
            config,
        } => {
            let policy = match load_policy(policy, &plugin) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return Ok(exit::USAGE);
                }
            };
            let phase = match phase.as_deref().map(|p| (p, orchestrator::parse_phase(p))) {
                None => None,
                Some((_, Some(p))) => Some(p),
                Some((p, None)) => {
                    eprintln!(
                        "error: unknown phase {p:?} (detect, contain, backup, recover, verify)"
                    );
                    return Ok(exit::USAGE);
                }
            };
            let config_path = config.unwrap_or_else(cli_backup::default_config);
            let runtime = Runtime::new(Some(state_dir.join("cache")))?;
            // With a state store shared by several hosts, a recovery locks its
            // components: two hosts never fail over the same database at once.
            let locks = if plan {
                None
            } else {
                match cli_serve::recovery_locks(&config_path, &state_dir, &runtime, &plugin).await {
                    Ok(l) => l,
                    Err(e) => {
                        eprintln!("error: {e:#}");
                        return Ok(exit::USAGE);
                    }
                }
            };
            // The backup engine is opened only for plugins granted backups.
            let backups = if policy.backup.is_empty() {
                None
            } else {
                let path = config_path;
                let opened = match drhost::backup::config::Config::load(&path) {
                    Ok(c) => drhost::backup::Backups::open(c, state_dir.clone())
                        .await
                        .map_err(anyhow::Error::from),
                    Err(e) => Err(e.into()),
                };
                match opened {
                    Ok(b) => Some(std::sync::Arc::new(b)),
                    Err(e) => {
                        eprintln!("error: the policy grants backups: {e:#}");
                        return Ok(exit::USAGE);
                    }
                }
            };
            let opts = RunOptions {
                policy,
                out_dir: out,
                state_dir,
                phase,
                plan,
                backups,
                drill: false,
            };
            let result = orchestrator::run(&runtime, &plugin, opts).await;
            if let Some(l) = locks {
                drhost::serve::release_all(l).await;
            }
            match result {
                Ok(report) => {
                    if json {
                        println!("{}", serde_json::to_string_pretty(&report)?);
                    } else {
                        print!("{}", orchestrator::render_table(&report));
                    }
                    Ok(report.exit_code)
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    Ok(e.exit_code())
                }
            }
        }
        Command::Drill {
            plugin,
            policy,
            env,
            junit,
            report,
            out,
            config,
            all,
            json,
        } => {
            let examples = match (plugin, all) {
                (Some(_), Some(_)) | (None, None) => {
                    eprintln!("error: give a plugin or --all DIR");
                    return Ok(exit::USAGE);
                }
                (None, Some(dir)) => match drhost::drill::discover(&dir) {
                    Ok(e) => e,
                    Err(e) => {
                        eprintln!("error: {e}");
                        return Ok(exit::USAGE);
                    }
                },
                (Some(plugin), None) => {
                    let policy =
                        policy.unwrap_or_else(|| drhost::drill::policy_beside(&plugin, &env));
                    let config = config.or_else(|| {
                        let d = cli_backup::default_config();
                        d.is_file().then_some(d)
                    });
                    vec![drhost::drill::Example::single(plugin, policy, config)]
                }
            };
            let several = examples.len() > 1;
            let runtime = Runtime::new(Some(state_dir.join("cache")))?;
            let mut reports = Vec::new();
            let mut code = exit::OK;
            for ex in &examples {
                if several {
                    eprintln!("== drill {}: {}", ex.name, ex.description);
                }
                match ex.drill(&runtime, &out, &state_dir).await {
                    Ok(r) => {
                        if !json {
                            print!("{}", orchestrator::render_table(&r));
                        }
                        if let Some(dir) = &report {
                            let dir = if several {
                                dir.join(&ex.name)
                            } else {
                                dir.clone()
                            };
                            let files = drhost::report::write_reports(&r, &dir)?;
                            eprintln!("report: {}", files[1].display());
                        }
                        code = code.max(r.exit_code);
                        reports.push(r);
                    }
                    Err(e) => {
                        eprintln!("error: drill {}: {e}", ex.name);
                        code = code.max(match &e {
                            drhost::drill::DrillError::Run(r) => r.exit_code(),
                            _ => exit::USAGE,
                        });
                    }
                }
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&reports)?);
            }
            if let Some(path) = junit {
                let refs: Vec<&orchestrator::RunReport> = reports.iter().collect();
                std::fs::write(&path, drhost::report::junit(&refs))
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(code)
        }
        Command::Inspect { plugin, policy } => {
            let policy = load_policy(policy, &plugin)?;
            let runtime = Runtime::new(Some(state_dir.join("cache")))?;
            match drhost::inspect::inspect(&runtime, &plugin, policy).await {
                Ok(text) => {
                    print!("{text}");
                    Ok(exit::OK)
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    Ok(e.exit_code())
                }
            }
        }
        Command::Test {
            plugin,
            policy,
            json,
        } => {
            let policy = match load_policy(policy, &plugin) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return Ok(exit::USAGE);
                }
            };
            let runtime = Runtime::new(Some(state_dir.join("cache")))?;
            let work = state_dir
                .join("conformance")
                .join(format!("{}", std::process::id()));
            let result = drhost::conformance::test(&runtime, &plugin, policy, &work).await;
            let _ = std::fs::remove_dir_all(&work);
            match result {
                Ok(report) => {
                    if json {
                        println!("{}", serde_json::to_string_pretty(&report)?);
                    } else {
                        print!("{}", drhost::conformance::render(&report));
                    }
                    Ok(if report.passed() { exit::OK } else { 1 })
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    Ok(e.exit_code())
                }
            }
        }
        Command::New { name, lang, dir } => {
            let lang: drhost::scaffold::Lang = match lang.parse() {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("error: {e}");
                    return Ok(exit::USAGE);
                }
            };
            let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
            match drhost::scaffold::create(&dir, &name, lang) {
                Ok(files) => {
                    for f in files {
                        println!("wrote {}", f.display());
                    }
                    println!("next: see {}", dir.join("README.md").display());
                    Ok(exit::OK)
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    Ok(exit::USAGE)
                }
            }
        }
        Command::Compile { plugins } => {
            let runtime = Runtime::new(Some(state_dir.join("cache")))?;
            let mut code = exit::OK;
            for p in plugins {
                let start = std::time::Instant::now();
                match runtime.precompile(&p) {
                    Ok((sha, cached)) => println!(
                        "{}: {} ({}…) in {:.0} ms",
                        p.display(),
                        if cached { "already cached" } else { "compiled" },
                        &sha[..12],
                        start.elapsed().as_secs_f64() * 1000.0
                    ),
                    Err(e) => {
                        eprintln!("error: {e}");
                        code = exit::INVALID_PLUGIN;
                    }
                }
            }
            Ok(code)
        }
        Command::Audit {
            command:
                AuditCommand::Verify {
                    file,
                    require_head,
                    anchor,
                },
        } => {
            let run_id = file
                .parent()
                .and_then(|d| d.file_name())
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let head = audit::load_head(&state_dir, &run_id);
            let verdict = audit::verify(&file, head.as_deref(), Some(&run_id))
                .with_context(|| format!("verifying {}", file.display()))?;
            if let Some(policy) = anchor {
                let policy = Policy::load(&policy)?;
                let alias = policy.audit.anchor.clone().unwrap_or_default();
                let s3 = drhost::caps::s3::S3Cap::from_policy(&policy)
                    .await
                    .map_err(anyhow::Error::msg)?;
                let anchored = s3
                    .anchored_head(&run_id)
                    .await
                    .map_err(anyhow::Error::msg)?;
                let last = match &verdict {
                    Verdict::Ok { head, .. } | Verdict::Incomplete { head, .. } => Some(head),
                    Verdict::Broken { .. } => None,
                };
                match (anchored, last) {
                    (None, _) => {
                        println!("NOT ANCHORED: s3.{alias} holds no head for run {run_id:?}");
                        return Ok(1);
                    }
                    (Some(a), Some(h)) if a != *h => {
                        println!(
                            "BROKEN: the log's last hash {}… differs from the head anchored in s3.{alias} ({}…): the log was rewritten or cut",
                            h.get(..12).unwrap_or(h),
                            text::terminal(a.get(..12).unwrap_or(&a))
                        );
                        return Ok(1);
                    }
                    (Some(_), Some(h)) => {
                        if matches!(verdict, Verdict::Ok { .. }) {
                            println!(
                                "OK: chain intact, head {h} matches the head anchored in s3.{alias}"
                            );
                            return Ok(0);
                        }
                    }
                    (Some(_), None) => {}
                }
            }
            match verdict {
                Verdict::Ok { records, head: h } if head.is_some() => {
                    println!(
                        "OK: {records} records, chain intact, head {h} matches the head recorded when the run ended"
                    );
                    Ok(0)
                }
                Verdict::Ok { records, head: h } => {
                    println!(
                        "OK, NOT ANCHORED: {records} records, chain intact (head {h}), but {} holds no head for run {run_id:?}, so a log rewritten with a recomputed chain would pass too",
                        state_dir.display()
                    );
                    Ok(if require_head { 1 } else { 0 })
                }
                Verdict::Incomplete { records, head } => {
                    println!(
                        "INCOMPLETE: {records} records chain (head {head}), but the run summary is missing: the log was cut short"
                    );
                    Ok(1)
                }
                Verdict::Broken { line, reason } => {
                    println!("BROKEN at line {line}: {}", text::terminal(&reason));
                    Ok(1)
                }
            }
        }
        Command::Audit {
            command: AuditCommand::Show { file },
        } => {
            let lines = audit::read(&file)?;
            print!("{}", audit::render_timeline(&lines));
            Ok(0)
        }
        Command::State { command } => {
            use drhost::caps::state::StateCap;
            let cap = u64::MAX;
            match command {
                StateCommand::List { scenario } => {
                    let store = StateCap::load(&state_dir, &scenario, cap)?;
                    for key in store.keys() {
                        let value = store.get(&key).unwrap_or_default();
                        // Keys and values are the plugin's: escaped, one line each.
                        let key = text::terminal(&key);
                        match String::from_utf8(value) {
                            Ok(v) => println!("{key} = {}", text::terminal(&v)),
                            Err(e) => println!("{key} = <{} bytes>", e.as_bytes().len()),
                        }
                    }
                }
                StateCommand::Set {
                    scenario,
                    key,
                    value,
                } => {
                    let store = StateCap::load(&state_dir, &scenario, cap)?;
                    store
                        .set(&key, value.into_bytes())
                        .map_err(|e| anyhow::anyhow!(drhost::caps::error_text(&e)))?;
                    store.persist()?;
                }
                StateCommand::Delete { scenario, key } => {
                    let store = StateCap::load(&state_dir, &scenario, cap)?;
                    if !store.delete(&key) {
                        eprintln!("{scenario} has no key {key:?}");
                        return Ok(1);
                    }
                    store.persist()?;
                }
            }
            Ok(0)
        }
        Command::Backup {
            config,
            json,
            command,
        } => {
            let config = config.unwrap_or_else(cli_backup::default_config);
            cli_backup::run(command, &config, state_dir, json).await
        }
        Command::Serve {
            config,
            listen,
            list,
        } => {
            let config = config.unwrap_or_else(cli_backup::default_config);
            cli_serve::serve(&config, state_dir, listen, list).await
        }
        Command::Report {
            config,
            since,
            json,
            html,
            out,
        } => {
            let config = config.unwrap_or_else(cli_backup::default_config);
            cli_serve::report(&config, state_dir, &since, json, html, out).await
        }
        Command::Quickstart {
            dir,
            sample_db,
            damage_db,
        } => {
            if let Some(db) = sample_db {
                drhost::quickstart::sample_database(&db)
                    .await
                    .with_context(|| format!("creating {}", db.display()))?;
                println!("created {} (2000 customers, 10000 orders)", db.display());
            }
            if let Some(db) = damage_db {
                drhost::quickstart::damage_database(&db)
                    .await
                    .with_context(|| format!("damaging {}", db.display()))?;
                println!(
                    "damaged {}: dropped the orders table, deleted half of the customers",
                    db.display()
                );
            }
            if let Some(dir) = dir {
                let d = drhost::quickstart::setup(&dir)
                    .with_context(|| format!("preparing buckets in {}", dir.display()))?;
                println!(
                    "prepared {} objects in {dir}/primary and {dir}/secondary; damaged the primary: deleted {}, corrupted {}",
                    d.objects,
                    d.deleted,
                    d.corrupted,
                    dir = dir.display(),
                );
            }
            Ok(0)
        }
    }
}
