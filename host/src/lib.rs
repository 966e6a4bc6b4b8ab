//! drhost: a disaster-recovery runtime. Scenario plugins are sandboxed
//! WebAssembly components; the host grants them scoped capabilities from a
//! policy, moves the bytes, and records everything in a hash-chained audit log.

pub mod audit;
pub mod backup;
pub mod bindings;
pub mod caps;
pub mod clock;
pub mod conformance;
pub mod crash;
pub mod digest;
pub mod drill;
pub mod host;
pub mod inspect;
pub mod orchestrator;
pub mod policy;
pub mod provenance;
pub mod quickstart;
pub mod report;
pub mod runtime;
pub mod scaffold;
pub mod serve;
pub mod text;

/// The wasmtime version drhost is built with (recorded in every audit log).
pub const WASMTIME_VERSION: &str = "48.0.8";

/// This machine's name, for the audit log.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// The default state directory: `$DRHOST_STATE_DIR`, else
/// `$XDG_STATE_HOME/drhost`, else `~/.local/state/drhost`.
pub fn default_state_dir() -> std::path::PathBuf {
    if let Some(d) = std::env::var_os("DRHOST_STATE_DIR") {
        return d.into();
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME") {
        return std::path::PathBuf::from(d).join("drhost");
    }
    match std::env::var_os("HOME") {
        Some(h) => std::path::PathBuf::from(h).join(".local/state/drhost"),
        None => std::path::PathBuf::from(".drhost-state"),
    }
}
