//! The wasmtime side: one engine, a compile cache, loading and checking
//! components, and running one export call in a fresh store with a deadline.

use crate::bindings::{self, Finding, Outcome, ScenarioInfo, ScenarioPre};
use crate::caps::Caps;
use crate::host::HostState;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};

/// How often the epoch ticks; budgets are enforced to this resolution.
const TICK: Duration = Duration::from_millis(10);
/// Largest linear memory any policy may allow (pool reservation per memory).
pub const MAX_MEMORY: u64 = 4 << 30;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a WebAssembly binary (it does not start with \\0asm)")]
    NotWasm { path: PathBuf },
    #[error(
        "{path} is a core WebAssembly module, not a component: build the plugin for wasm32-wasip2 (or wrap it with `wasm-tools component new`)"
    )]
    CoreModule { path: PathBuf },
    #[error("{path} is not a valid component: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error(
        "{path} was built for {found}, which this drhost does not support: it implements drhost:plugin@{supported} (compatible: 0.2.x). Rebuild the plugin against wit/ of this drhost"
    )]
    WrongVersion {
        path: PathBuf,
        found: String,
        supported: String,
    },
    #[error(
        "{path} is not a drhost scenario: it exports [{exports}], but not drhost:plugin/plugin@{supported}"
    )]
    NotScenario {
        path: PathBuf,
        exports: String,
        supported: String,
    },
    #[error("{path} does not fit the drhost:plugin/scenario world: {message}")]
    Mismatch { path: PathBuf, message: String },
    #[error("{path} has sha256 {actual}, but the policy pins {expected}")]
    PinMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("{path} is not signed as the policy requires: {message}")]
    Unsigned { path: PathBuf, message: String },
}

/// Why a call into the guest did not return an outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallFailure {
    /// Stopped by the epoch deadline.
    Budget { step: String, budget_s: u64 },
    /// Ran out of the memory the policy allows.
    Memory { step: String, limit: u64 },
    /// Any other trap.
    Trap { step: String, message: String },
}

impl std::fmt::Display for CallFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallFailure::Budget { step, budget_s } => {
                write!(f, "step {step} exceeded its budget of {budget_s} s")
            }
            CallFailure::Memory { step, limit } => write!(
                f,
                "step {step} exceeded the memory limit of {} ([limits] memory) and trapped",
                crate::policy::ByteSize(*limit)
            ),
            CallFailure::Trap { step, message } => write!(f, "step {step} trapped: {message}"),
        }
    }
}

/// The shared engine, linker and compile cache.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    cache_dir: Option<PathBuf>,
    stop_ticker: Arc<AtomicBool>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

/// A loaded, checked component, ready to instantiate.
pub struct Plugin {
    pub path: PathBuf,
    pub sha256: String,
    pub wit_version: String,
    pub imports: Vec<String>,
    pub from_cache: bool,
    pub load_time: Duration,
    pre: ScenarioPre<HostState>,
}

fn engine_config(pooling: bool) -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    if pooling {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(64)
            .total_core_instances(512)
            .total_memories(128)
            .total_tables(256)
            .max_memories_per_component(16)
            .max_tables_per_component(32)
            .max_core_instances_per_component(64)
            .max_memory_size(MAX_MEMORY as usize);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    config
}

impl Runtime {
    /// `cache_dir`: where compiled components are kept (None: no cache).
    pub fn new(cache_dir: Option<PathBuf>) -> anyhow::Result<Self> {
        // The pooling allocator makes instantiation cheap; fall back to
        // on-demand allocation where the address space cannot be reserved.
        let engine = match Engine::new(&engine_config(true)) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!("pooling allocator unavailable ({e}); using on-demand allocation");
                Engine::new(&engine_config(false)).map_err(|e| anyhow::anyhow!("{e}"))?
            }
        };
        let mut linker = Linker::<HostState>::new(&engine);
        let link =
            |r: wasmtime::Result<()>| r.map_err(|e| anyhow::anyhow!("linking host functions: {e}"));
        link(wasmtime_wasi::p2::add_to_linker_async(&mut linker))?;
        link(wasmtime_wasi_http::p2::add_only_http_to_linker_async(
            &mut linker,
        ))?;
        use bindings::drhost::plugin as p;
        link(p::types::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s))?;
        link(p::log::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s))?;
        link(p::clock::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s))?;
        link(p::state::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s))?;
        link(p::s3::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s))?;
        link(p::db::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s))?;
        link(p::exec::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s))?;
        link(p::net::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s))?;
        link(p::backup::add_to_linker::<_, HasSelf<_>>(
            &mut linker,
            |s| s,
        ))?;

        let stop = Arc::new(AtomicBool::new(false));
        let (e, s) = (engine.clone(), Arc::clone(&stop));
        std::thread::Builder::new()
            .name("drhost-epoch".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    e.increment_epoch();
                }
            })?;
        Ok(Runtime {
            engine,
            linker,
            cache_dir,
            stop_ticker: stop,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    fn cache_path(&self, sha: &str) -> Option<PathBuf> {
        use std::hash::{Hash, Hasher};
        let dir = self.cache_dir.as_ref()?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        Some(dir.join(format!("{sha}-{:016x}.cwasm", h.finish())))
    }

    /// Compiles (or loads from the cache) and checks a component file.
    pub fn load(&self, path: &Path) -> Result<Plugin, LoadError> {
        let start = Instant::now();
        let read_err = |source| LoadError::Read {
            path: path.to_path_buf(),
            source,
        };
        // Fast path: a file we have seen, unchanged since (same inode, size,
        // mtime and ctime), maps straight to its compiled artifact without
        // reading and hashing megabytes of component on every run.
        let seen = std::fs::metadata(path).map_err(read_err)?;
        if let Some((sha256, component)) = self.known(&seen) {
            let (pre, wit_version, imports) = self.check(path, &component)?;
            tracing::debug!(
                "loaded {} from the cache index in {:?}",
                path.display(),
                start.elapsed()
            );
            return Ok(Plugin {
                path: path.to_path_buf(),
                sha256,
                wit_version,
                imports,
                from_cache: true,
                load_time: start.elapsed(),
                pre,
            });
        }
        let bytes = std::fs::read(path).map_err(read_err)?;
        let sha256 = crate::digest::sha256_hex(&bytes);
        let (component, from_cache) = self.compile(path, &bytes, &sha256)?;
        let (pre, wit_version, imports) = self.check(path, &component)?;
        self.remember(&seen, &sha256);
        tracing::debug!(
            "loaded {} ({} bytes, {}) in {:?}",
            path.display(),
            bytes.len(),
            if from_cache {
                "from the cache"
            } else {
                "compiled"
            },
            start.elapsed()
        );
        Ok(Plugin {
            path: path.to_path_buf(),
            sha256,
            wit_version,
            imports,
            from_cache,
            load_time: start.elapsed(),
            pre,
        })
    }

    /// The index entry for a file's identity. ctime is part of it because no
    /// user can set it: any write to the file, or any attempt to restore its
    /// mtime afterwards, changes it.
    fn index_path(&self, meta: &std::fs::Metadata) -> Option<PathBuf> {
        use std::os::unix::fs::MetadataExt;
        let dir = self.cache_dir.as_ref()?;
        Some(dir.join("index").join(format!(
            "{:x}-{:x}-{:x}-{}.{}-{}.{}",
            meta.dev(),
            meta.ino(),
            meta.size(),
            meta.mtime(),
            meta.mtime_nsec(),
            meta.ctime(),
            meta.ctime_nsec()
        )))
    }

    fn known(&self, meta: &std::fs::Metadata) -> Option<(String, Component)> {
        let sha = std::fs::read_to_string(self.index_path(meta)?).ok()?;
        let sha = sha.trim();
        if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let artifact = self.cache_path(sha)?;
        // SAFETY: as in `compile`: our own cache, checked by wasmtime for
        // engine compatibility.
        let component = unsafe { Component::deserialize_file(&self.engine, &artifact) }.ok()?;
        Some((sha.to_string(), component))
    }

    fn remember(&self, meta: &std::fs::Metadata, sha: &str) {
        let Some(path) = self.index_path(meta) else {
            return;
        };
        let write = || -> std::io::Result<()> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(&tmp, sha)?;
            std::fs::rename(&tmp, &path)
        };
        if let Err(e) = write() {
            tracing::debug!("could not index {}: {e}", path.display());
        }
    }

    /// Compiles a component into the cache without running it (`drhost compile`).
    pub fn precompile(&self, path: &Path) -> Result<(String, bool), LoadError> {
        let plugin = self.load(path)?;
        Ok((plugin.sha256, plugin.from_cache))
    }

    fn compile(
        &self,
        path: &Path,
        bytes: &[u8],
        sha: &str,
    ) -> Result<(Component, bool), LoadError> {
        if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
            return Err(LoadError::NotWasm {
                path: path.to_path_buf(),
            });
        }
        if bytes[4..8] == [1, 0, 0, 0] {
            return Err(LoadError::CoreModule {
                path: path.to_path_buf(),
            });
        }
        let cached = self.cache_path(sha);
        if let Some(c) = &cached
            && c.exists()
        {
            // SAFETY: the file is one this runtime serialized into its own
            // cache directory, keyed by the component's sha256 and the
            // engine's compatibility hash; deserialize_file still checks that
            // it was produced by a compatible engine.
            match unsafe { Component::deserialize_file(&self.engine, c) } {
                Ok(component) => return Ok((component, true)),
                Err(e) => tracing::warn!("ignoring unusable cache entry {}: {e}", c.display()),
            }
        }
        let component = Component::new(&self.engine, bytes).map_err(|e| LoadError::Invalid {
            path: path.to_path_buf(),
            message: format!("{e:#}"),
        })?;
        if let Some(c) = cached
            && let Err(e) = write_cache(&c, &component)
        {
            tracing::warn!("could not cache compiled component at {}: {e}", c.display());
        }
        Ok((component, false))
    }

    fn check(
        &self,
        path: &Path,
        component: &Component,
    ) -> Result<(ScenarioPre<HostState>, String, Vec<String>), LoadError> {
        let ty = component.component_type();
        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        let imports: Vec<String> = ty
            .imports(&self.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        let ours = exports
            .iter()
            .find_map(|e| e.strip_prefix("drhost:plugin/plugin@"))
            .map(str::to_string);
        let found_version = match ours {
            Some(v) => v,
            None => {
                if let Some(other) = exports
                    .iter()
                    .chain(&imports)
                    .find_map(|e| e.strip_prefix("drhost:plugin/"))
                    .and_then(|e| e.split_once('@'))
                    && !compatible(other.1)
                {
                    return Err(LoadError::WrongVersion {
                        path: path.to_path_buf(),
                        found: format!("drhost:plugin@{}", other.1),
                        supported: bindings::WIT_VERSION.into(),
                    });
                }
                return Err(LoadError::NotScenario {
                    path: path.to_path_buf(),
                    exports: exports.join(", "),
                    supported: bindings::WIT_VERSION.into(),
                });
            }
        };
        if !compatible(&found_version) {
            return Err(LoadError::WrongVersion {
                path: path.to_path_buf(),
                found: format!("drhost:plugin@{found_version}"),
                supported: bindings::WIT_VERSION.into(),
            });
        }
        let pre = self
            .linker
            .instantiate_pre(component)
            .map_err(|e| LoadError::Mismatch {
                path: path.to_path_buf(),
                message: format!("{e:#}"),
            })?;
        let pre = ScenarioPre::new(pre).map_err(|e| LoadError::Mismatch {
            path: path.to_path_buf(),
            message: format!("{e:#}"),
        })?;
        Ok((pre, found_version, imports))
    }

    fn store(&self, caps: &Arc<Caps>, budget: Duration) -> Store<HostState> {
        let mut store = Store::new(&self.engine, HostState::new(Arc::clone(caps), budget));
        store.limiter(|s| &mut s.limiter);
        let ticks = budget.as_millis() / TICK.as_millis() + 1;
        store.set_epoch_deadline(u64::try_from(ticks).unwrap_or(u64::MAX));
        store.epoch_deadline_trap();
        store
    }

    /// Calls `info` in a fresh store.
    pub async fn info(
        &self,
        plugin: &Plugin,
        caps: &Arc<Caps>,
    ) -> Result<ScenarioInfo, CallFailure> {
        let budget = INFO_BUDGET;
        let mut store = self.store(caps, budget);
        let call = async {
            let s = plugin.pre.instantiate_async(&mut store).await?;
            s.drhost_plugin_plugin().call_info(&mut store).await
        };
        let result = within_budget(budget, call).await;
        let said = self.drain_output(&mut store, "info");
        finish(result, &store, "info", budget, &said)
    }

    /// Runs one step in a fresh store (a trapped instance cannot be entered again).
    pub async fn run_step(
        &self,
        plugin: &Plugin,
        caps: &Arc<Caps>,
        id: &str,
        context: &[Finding],
        budget: Duration,
    ) -> Result<Outcome, CallFailure> {
        let mut store = self.store(caps, budget);
        let call = async {
            let s = plugin.pre.instantiate_async(&mut store).await?;
            s.drhost_plugin_plugin()
                .call_run_step(&mut store, id, context)
                .await
        };
        let result = within_budget(budget, call).await;
        let said = self.drain_output(&mut store, id);
        finish(result, &store, id, budget, &said)
    }

    /// Moves what the guest printed into the log and the audit trail, and
    /// returns it (a trap is explained by its last words).
    fn drain_output(&self, store: &mut Store<HostState>, step: &str) -> String {
        let (bytes, dropped) = store.data().stdout.take();
        if bytes.is_empty() && dropped == 0 {
            return String::new();
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        for line in text.lines() {
            tracing::info!(target: "plugin-output", "[{step}] {}", crate::text::terminal(line));
        }
        let mut f = serde_json::Map::new();
        f.insert("step".into(), step.into());
        f.insert("text".into(), text.into());
        if dropped > 0 {
            f.insert("dropped_bytes".into(), dropped.into());
            tracing::warn!("[{step}] {dropped} bytes of output dropped ([limits] output-bytes)");
        }
        store.data().caps.gate.record("guest-output", f);
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// `info()` only declares: ten seconds is plenty.
const INFO_BUDGET: Duration = Duration::from_secs(10);

/// How long past its budget a step may run before the host cuts it. The
/// epoch deadline stops guest code at the budget itself; this cut stops a
/// step that is waiting in a host call (a socket, a database, a child
/// process, a WASI clock): the call's future is dropped, which closes its
/// connections and kills its processes.
pub const BUDGET_GRACE: Duration = Duration::from_millis(250);

/// Runs a guest call, cutting it at `budget` + [`BUDGET_GRACE`] wherever it
/// waits (`None` when cut).
async fn within_budget<T>(
    budget: Duration,
    call: impl std::future::Future<Output = wasmtime::Result<T>>,
) -> Option<wasmtime::Result<T>> {
    tokio::time::timeout(budget + BUDGET_GRACE, call).await.ok()
}

fn finish<T>(
    result: Option<wasmtime::Result<T>>,
    store: &Store<HostState>,
    step: &str,
    budget: Duration,
    said: &str,
) -> Result<T, CallFailure> {
    match result {
        Some(r) => r.map_err(|e| classify(e, store, step, budget, said)),
        None => {
            tracing::warn!("step {step}: cut at its budget of {budget:?} while in a host call");
            Err(CallFailure::Budget {
                step: step.to_string(),
                budget_s: budget.as_secs(),
            })
        }
    }
}

fn compatible(version: &str) -> bool {
    // 0.x: the minor version is the compatibility boundary.
    let mut ours = bindings::WIT_VERSION.split('.');
    let mut theirs = version.split('.');
    ours.next() == theirs.next() && ours.next() == theirs.next()
}

fn classify(
    e: wasmtime::Error,
    store: &Store<HostState>,
    step: &str,
    budget: Duration,
    said: &str,
) -> CallFailure {
    let trap = e.downcast_ref::<wasmtime::Trap>().copied();
    if trap == Some(wasmtime::Trap::Interrupt) {
        return CallFailure::Budget {
            step: step.to_string(),
            budget_s: budget.as_secs(),
        };
    }
    if store.data().limiter.hit {
        return CallFailure::Memory {
            step: step.to_string(),
            limit: store.data().limiter.limit as u64,
        };
    }
    CallFailure::Trap {
        step: step.to_string(),
        message: trap_message(trap, &format!("{e:#}"), said),
    }
}

/// One line that says why a guest trapped: the kind of trap, and the
/// guest's own last words (a Rust panic's message, a Python exception, a
/// JavaScript error) when it printed any.
fn trap_message(trap: Option<wasmtime::Trap>, error: &str, said: &str) -> String {
    use wasmtime::Trap;
    let kind = match trap {
        Some(Trap::StackOverflow) => "stack overflow".to_string(),
        Some(Trap::UnreachableCodeReached) => "unreachable (the guest aborted)".to_string(),
        // A Rust or C guest keeps its stack in linear memory: running out
        // of it shows up as an access below the memory's start.
        Some(Trap::MemoryOutOfBounds) => {
            "out-of-bounds memory access (a guest bug, often a stack overflow)".to_string()
        }
        Some(Trap::IntegerDivisionByZero) => "integer division by zero".to_string(),
        Some(Trap::IndirectCallToNull | Trap::BadSignature) => "bad indirect call".to_string(),
        Some(other) => other.to_string(),
        // Not a trap: the first line of the error (an instantiation
        // failure, a host error), without the guest backtrace.
        None => error
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with("error while executing at wasm backtrace"))
            .unwrap_or("trap")
            .to_string(),
    };
    match last_words(said) {
        Some(words) => format!("{kind}: {words}"),
        None => kind,
    }
}

/// The line of guest output that explains a crash.
fn last_words(said: &str) -> Option<String> {
    let lines: Vec<&str> = said.lines().map(str::trim_end).collect();
    // Python: the traceback's exception is its first unindented line after
    // the header. It comes first: componentize-py's runtime then panics
    // ("Python function threw an unexpected exception"), which says less.
    if let Some(i) = lines
        .iter()
        .rposition(|l| l.starts_with("Traceback (most recent call last)"))
        && let Some(line) = lines[i + 1..]
            .iter()
            .find(|l| !l.is_empty() && !l.starts_with(char::is_whitespace))
    {
        return Some(line.trim().to_string());
    }
    // Rust: "thread '…' panicked at src/lib.rs:5:9:" then the message.
    if let Some(i) = lines.iter().rposition(|l| l.contains(" panicked at ")) {
        let msg: Vec<&str> = lines[i + 1..]
            .iter()
            .take_while(|l| !l.is_empty() && !l.starts_with("note: "))
            .copied()
            .collect();
        if !msg.is_empty() {
            return Some(msg.join(" ").trim().to_string());
        }
        return Some(lines[i].trim().to_string());
    }
    // componentize-js: the error's message, then "Stack:" and its frames,
    // then the engine's own "Redirecting call to abort()…".
    if let Some(i) = lines.iter().rposition(|l| l.trim() == "Stack:")
        && let Some(line) = lines[..i].iter().rev().find(|l| !l.trim().is_empty())
    {
        return Some(line.trim().to_string());
    }
    // Other JavaScript errors are followed by stack frames
    // ("fn@file:line:col", "  at …").
    lines
        .iter()
        .rev()
        .map(|l| l.trim())
        .find(|l| {
            !l.is_empty()
                && !l.starts_with("at ")
                && !l.starts_with("note: ")
                && !l.starts_with("Stack:")
                && !is_js_frame(l)
        })
        .map(str::to_string)
}

fn is_js_frame(line: &str) -> bool {
    match line.rsplit_once('@') {
        Some((_, place)) => {
            place.ends_with(|c: char| c.is_ascii_digit())
                && place.contains(':')
                && !place.contains(' ')
        }
        None => false,
    }
}

fn write_cache(path: &Path, component: &Component) -> anyhow::Result<()> {
    let bytes = component.serialize().map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[cfg(test)]
mod last_words_tests {
    use super::last_words;

    #[test]
    fn the_line_that_explains_a_crash_is_found_for_each_language() {
        // componentize-py: the traceback, then its runtime's own panic.
        let py = "Traceback (most recent call last):\n  File \"/0/app.py\", line 43, in run_step\n\
                  ValueError: the disk is on fire\n\nthread '<unnamed>' (1) panicked at runtime/src/lib.rs:1280:25:\n\
                  Python function threw an unexpected exception\nnote: run with `RUST_BACKTRACE=1`\n";
        assert_eq!(
            last_words(py).as_deref(),
            Some("ValueError: the disk is on fire")
        );
        let rust =
            "thread 'main' panicked at src/lib.rs:5:9:\nindex out of bounds\nnote: run with\n";
        assert_eq!(last_words(rust).as_deref(), Some("index out of bounds"));
        let js = "the disk is on fire\nStack:\n  runStep@plugins/js/hello/hello.js:39:13\n\n\
                  Redirecting call to abort() to mozalloc_abort\n\n";
        assert_eq!(last_words(js).as_deref(), Some("the disk is on fire"));
    }
}
