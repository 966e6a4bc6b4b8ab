//! `drhost drill`: a run that first injects the disaster into a sandbox,
//! then detects, recovers and verifies, and measures what was achieved
//! against the targets. Examples declare their drill in `drill.toml`, so
//! `drhost drill --all examples/` runs every one (the plan's annual full test).

use crate::backup::Backups;
use crate::orchestrator::{self, RunError, RunOptions, RunReport};
use crate::policy::Policy;
use crate::runtime::Runtime;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    #[error("{path}: {message}")]
    Manifest { path: PathBuf, message: String },
    #[error("no drills under {0}: an example declares one in <example>/drill.toml")]
    NoneFound(PathBuf),
    #[error("{0}")]
    Policy(#[from] crate::policy::PolicyError),
    #[error("backup configuration {path}: {message}")]
    Backups { path: PathBuf, message: String },
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("{example}: setup {command:?} failed: {message}")]
    Setup {
        example: String,
        command: String,
        message: String,
    },
}

/// `drill.toml`: which plugin, policy and backup configuration a drill uses.
/// Relative paths resolve against the file's directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub plugin: PathBuf,
    pub policy: PathBuf,
    /// drhost.toml for plugins granted `[backup.*]`.
    pub config: Option<PathBuf>,
    /// One line shown when the drill starts.
    #[serde(default)]
    pub description: String,
    /// Run with bash in the example's directory before the drill (start the
    /// services it needs, write state); a failure stops this drill.
    pub setup: Option<String>,
    /// Run after the drill, whatever happened (stop what setup started).
    pub teardown: Option<String>,
}

/// A drill found under an examples directory.
#[derive(Debug, Clone)]
pub struct Example {
    /// The example's directory name.
    pub name: String,
    pub plugin: PathBuf,
    pub policy: PathBuf,
    pub config: Option<PathBuf>,
    pub description: String,
    /// The example's directory (where setup and teardown run).
    pub dir: PathBuf,
    pub setup: Option<String>,
    pub teardown: Option<String>,
}

impl Example {
    pub fn load(manifest: &Path) -> Result<Example, DrillError> {
        let err = |message: String| DrillError::Manifest {
            path: manifest.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(manifest).map_err(|e| err(e.to_string()))?;
        let m: Manifest = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        let dir = manifest.parent().unwrap_or(Path::new("."));
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "drill".into());
        Ok(Example {
            name,
            plugin: dir.join(m.plugin),
            policy: dir.join(m.policy),
            config: m.config.map(|c| dir.join(c)),
            description: m.description,
            dir: dir.to_path_buf(),
            setup: m.setup,
            teardown: m.teardown,
        })
    }

    /// A drill of one plugin, without a manifest.
    pub fn single(plugin: PathBuf, policy: PathBuf, config: Option<PathBuf>) -> Example {
        let name = plugin
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        Example {
            name,
            dir: plugin
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from(".")),
            plugin,
            policy,
            config,
            description: String::new(),
            setup: None,
            teardown: None,
        }
    }

    /// Setup, the drill, teardown. `DRHOST` (this program) and
    /// `DRHOST_STATE_DIR` are passed to the scripts.
    pub async fn drill(
        &self,
        runtime: &Runtime,
        out: &Path,
        state_dir: &Path,
    ) -> Result<RunReport, DrillError> {
        if let Some(cmd) = &self.setup {
            self.script(cmd, state_dir)
                .map_err(|message| DrillError::Setup {
                    example: self.name.clone(),
                    command: cmd.clone(),
                    message,
                })?;
        }
        let result = run(
            runtime,
            &self.plugin,
            &self.policy,
            self.config.as_deref(),
            out,
            state_dir,
        )
        .await;
        if let Some(cmd) = &self.teardown
            && let Err(e) = self.script(cmd, state_dir)
        {
            tracing::warn!("{}: teardown {cmd:?} failed: {e}", self.name);
        }
        result
    }

    fn script(&self, cmd: &str, state_dir: &Path) -> Result<(), String> {
        let me = std::env::current_exe().map_err(|e| e.to_string())?;
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(cmd)
            .current_dir(&self.dir)
            .env("DRHOST", me)
            .env("DRHOST_STATE_DIR", state_dir)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| format!("could not start bash: {e}"))?;
        if out.status.success() {
            return Ok(());
        }
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(5).collect();
        Err(format!(
            "{}: {}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        ))
    }
}

/// Every `<dir>/*/drill.toml`, in name order.
pub fn discover(dir: &Path) -> Result<Vec<Example>, DrillError> {
    let entries = std::fs::read_dir(dir).map_err(|e| DrillError::Manifest {
        path: dir.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut manifests: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path().join("drill.toml"))
        .filter(|p| p.is_file())
        .collect();
    manifests.sort();
    if manifests.is_empty() {
        return Err(DrillError::NoneFound(dir.to_path_buf()));
    }
    manifests.iter().map(|m| Example::load(m)).collect()
}

/// The drill policy beside a plugin: `<stem>.<env>.policy.toml`.
pub fn policy_beside(plugin: &Path, env: &str) -> PathBuf {
    let stem = plugin
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    plugin.with_file_name(format!("{stem}.{env}.policy.toml"))
}

/// Runs one drill; `out` holds the run records.
pub async fn run(
    runtime: &Runtime,
    plugin: &Path,
    policy: &Path,
    config: Option<&Path>,
    out: &Path,
    state_dir: &Path,
) -> Result<RunReport, DrillError> {
    let policy = Policy::load(policy)?;
    let backups = match (policy.backup.is_empty(), config) {
        (true, _) => None,
        (false, None) => None, // the orchestrator names what is missing
        (false, Some(path)) => {
            let err = |message: String| DrillError::Backups {
                path: path.to_path_buf(),
                message,
            };
            let c = crate::backup::config::Config::load(path).map_err(|e| err(e.to_string()))?;
            let b = Backups::open(c, state_dir.to_path_buf())
                .await
                .map_err(|e| err(e.to_string()))?;
            Some(Arc::new(b))
        }
    };
    let opts = RunOptions {
        policy,
        out_dir: out.to_path_buf(),
        state_dir: state_dir.to_path_buf(),
        phase: None,
        plan: false,
        backups,
        drill: true,
    };
    Ok(orchestrator::run(runtime, plugin, opts).await?)
}
