//! Capabilities and the gate every capability call passes through.
//!
//! Each capability module has the same three parts: the grant (what the
//! policy says and how a request is matched against it), the provider (the
//! backend that does the work), and the host binding (the WIT `Host` trait
//! implementation in `host.rs`). The binding never touches a backend
//! directly: it asks the [`Gate`] to check the grant, run the call, and write
//! the audit record, so no capability can forget any of the three.

pub mod backup;
pub mod db;
pub mod exec;
pub mod http;
pub mod net;
pub mod output;
pub mod s3;
pub mod state;

use crate::audit::AuditWriter;
use crate::bindings::CapError;
use crate::policy::Policy;
use serde_json::{Map, Value, json};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// What is being asked, for the audit record and the denial message.
#[derive(Debug, Clone)]
pub struct Call {
    pub interface: &'static str,
    pub op: &'static str,
    /// Alias or connection name, plus key or URL where there is one.
    pub target: String,
    /// Summary of arguments, secrets never included.
    pub args: Map<String, Value>,
    pub mutating: bool,
}

impl Call {
    pub fn new(interface: &'static str, op: &'static str, target: impl Into<String>) -> Self {
        Call {
            interface,
            op,
            target: target.into(),
            args: Map::new(),
            mutating: false,
        }
    }

    pub fn arg(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.args.insert(key.into(), value.into());
        self
    }

    pub fn mutating(mut self) -> Self {
        self.mutating = true;
        self
    }
}

/// The policy's answer: the grant that allows the call, or why not.
pub enum Decision {
    /// Allowed by this grant (e.g. `s3.primary access=read`).
    Allow(String),
    /// Denied; `needed` is the grant that would allow it, `message` says why.
    Deny { needed: String, message: String },
}

/// What moved, for the audit record.
#[derive(Debug, Default, Clone)]
pub struct Moved {
    pub bytes: Option<u64>,
    pub sha256: Option<String>,
    pub extra: Map<String, Value>,
}

/// Results know how to summarise themselves for the audit log.
pub trait Summarize {
    fn moved(&self) -> Moved {
        Moved::default()
    }
}

impl Summarize for () {}
impl Summarize for bool {}
impl Summarize for u64 {}
impl Summarize for String {}
impl Summarize for Vec<u8> {
    fn moved(&self) -> Moved {
        Moved {
            bytes: Some(self.len() as u64),
            sha256: Some(crate::digest::sha256_hex(self)),
            ..Moved::default()
        }
    }
}
impl<T: Summarize> Summarize for Option<T> {
    fn moved(&self) -> Moved {
        self.as_ref().map(Summarize::moved).unwrap_or_default()
    }
}

/// Counters for the run summary.
#[derive(Debug, Default)]
pub struct Counters {
    pub calls: AtomicU64,
    pub denied: AtomicU64,
}

/// Checks, runs and records every capability call of a run.
pub struct Gate {
    /// Plan mode: mutating calls are recorded, not executed.
    plan: bool,
    audit: Mutex<Option<AuditWriter>>,
    step: Mutex<String>,
    pub counters: Counters,
    /// A drill's inject step is running: only sandbox grants may be used.
    inject: AtomicBool,
    /// Grants marked `sandbox = true`, as the decisions name them
    /// (`s3.alias`, `db.name`, `exec.name`, `backup.source`, `http.allow URL`).
    sandbox: Vec<String>,
}

impl Gate {
    pub fn new(audit: Option<AuditWriter>) -> Self {
        Self::with_mode(audit, false)
    }

    /// A gate in plan mode (`plan = true`) records mutating calls and returns
    /// `planned` instead of executing them.
    pub fn with_mode(audit: Option<AuditWriter>, plan: bool) -> Self {
        Gate {
            plan,
            audit: Mutex::new(audit),
            step: Mutex::new(String::new()),
            counters: Counters::default(),
            inject: AtomicBool::new(false),
            sandbox: Vec::new(),
        }
    }

    /// The grants a drill's inject steps may use.
    pub fn with_sandbox(mut self, sandbox: Vec<String>) -> Self {
        self.sandbox = sandbox;
        self
    }

    /// Marks the start (true) or end (false) of an inject step.
    pub fn set_inject(&self, on: bool) {
        self.inject.store(on, Ordering::SeqCst);
    }

    /// Whether every part of an allowing grant is a sandbox grant. A backup
    /// restore also replaces its `restore-to` source, which must be one too.
    fn sandboxed(&self, grant: &str) -> Result<(), String> {
        for part in grant.split("; ") {
            if part.starts_with("state ") {
                continue;
            }
            let resource = part.split(' ').next().unwrap_or(part);
            let ok = self
                .sandbox
                .iter()
                .any(|s| part == s || resource == s.as_str());
            if !ok {
                return Err(resource.to_string());
            }
            if let Some(to) = part.split(" restore-to=").nth(1) {
                let to = format!("backup.{to}");
                if !self.sandbox.contains(&to) {
                    return Err(to);
                }
            }
        }
        Ok(())
    }

    pub fn set_step(&self, step: &str) {
        if let Ok(mut s) = self.step.lock() {
            step.clone_into(&mut s);
        }
    }

    /// Appends a record to the audit log (no-op without a log).
    pub fn record(&self, kind: &str, fields: Map<String, Value>) {
        let Ok(mut guard) = self.audit.lock() else {
            return;
        };
        if let Some(w) = guard.as_mut()
            && let Err(e) = w.append(kind, fields)
        {
            tracing::error!("audit log write failed: {e}");
        }
    }

    pub fn flush(&self) {
        if let Ok(mut guard) = self.audit.lock()
            && let Some(w) = guard.as_mut()
            && let Err(e) = w.flush()
        {
            tracing::error!("audit log flush failed: {e}");
        }
    }

    /// Takes the writer out at the end of a run.
    pub fn take_audit(&self) -> Option<AuditWriter> {
        self.audit.lock().ok().and_then(|mut g| g.take())
    }

    /// The one path every capability call takes: decide, run, record.
    pub async fn call<T, F, Fut>(
        &self,
        call: Call,
        decision: Decision,
        run: F,
    ) -> Result<T, CapError>
    where
        T: Summarize,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, CapError>>,
    {
        self.counters.calls.fetch_add(1, Ordering::Relaxed);
        let start = Instant::now();
        let planned = self.plan && call.mutating;
        let decision = match decision {
            Decision::Allow(grant) if self.inject.load(Ordering::SeqCst) => {
                match self.sandboxed(&grant) {
                    Ok(()) => Decision::Allow(grant),
                    Err(resource) => Decision::Deny {
                        needed: format!("{resource} sandbox"),
                        message: format!(
                            "a drill's inject step may only use sandbox resources: mark [{resource}] sandbox = true in the drill's policy if it holds no production data"
                        ),
                    },
                }
            }
            d => d,
        };
        let (grant, result) = match decision {
            Decision::Allow(grant) if planned => (
                grant,
                Err(CapError::Planned(format!(
                    "plan mode: {}.{} on {} was recorded, not executed",
                    call.interface, call.op, call.target
                ))),
            ),
            Decision::Allow(grant) => (grant, run().await),
            Decision::Deny { needed, message } => {
                self.counters.denied.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "denied {}.{} on {}: {message}",
                    call.interface,
                    call.op,
                    call.target
                );
                (needed, Err(CapError::Denied(message)))
            }
        };
        let denied = matches!(result, Err(CapError::Denied(_)));
        let mut f = Map::with_capacity(12);
        f.insert("step".into(), Value::String(self.current_step()));
        f.insert("interface".into(), Value::String(call.interface.into()));
        f.insert("op".into(), Value::String(call.op.into()));
        f.insert("target".into(), Value::String(call.target));
        let decision = match (&result, denied) {
            (_, true) => "deny",
            (Err(CapError::Planned(_)), _) => "plan",
            _ => "allow",
        };
        f.insert("decision".into(), Value::String(decision.into()));
        f.insert("grant".into(), Value::String(grant));
        if call.mutating {
            f.insert("mutating".into(), Value::Bool(true));
        }
        if !call.args.is_empty() {
            f.insert("args".into(), Value::Object(call.args));
        }
        f.insert(
            "duration_us".into(),
            json!(u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)),
        );
        match &result {
            Ok(v) => {
                let moved = v.moved();
                if let Some(b) = moved.bytes {
                    f.insert("bytes".into(), json!(b));
                }
                if let Some(s) = moved.sha256 {
                    f.insert("sha256".into(), Value::String(s));
                }
                f.extend(moved.extra);
            }
            Err(e) => {
                f.insert("error".into(), Value::String(error_text(e)));
            }
        }
        self.record("call", f);
        result
    }

    fn current_step(&self) -> String {
        self.step.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// A capability error as one line.
pub fn error_text(e: &CapError) -> String {
    match e {
        CapError::Denied(m) => format!("denied: {m}"),
        CapError::NotFound(m) => format!("not found: {m}"),
        CapError::TooLarge(m) => format!("too large: {m}"),
        CapError::Invalid(m) => format!("invalid: {m}"),
        CapError::Unavailable(m) => format!("unavailable: {m}"),
        CapError::Planned(m) => format!("planned: {m}"),
    }
}

/// Everything the capabilities of one run share.
pub struct Caps {
    pub gate: Gate,
    pub policy: Arc<Policy>,
    pub s3: s3::S3Cap,
    pub db: db::DbCap,
    pub http: http::HttpCap,
    pub state: state::StateCap,
    pub backup: backup::BackupCap,
    pub exec: exec::ExecCap,
    pub net: net::NetCap,
}
