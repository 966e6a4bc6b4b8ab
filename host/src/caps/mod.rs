//! Capabilities and the gate every capability call passes through.
//!
//! Each capability module has the same three parts: the grant (what the
//! policy says and how a request is matched against it), the provider (the
//! backend that does the work), and the host binding (the WIT `Host` trait
//! implementation in `host.rs`). The binding never touches a backend
//! directly: it asks the [`Gate`] to check the grant, run the call, and write
//! the audit record, so no capability can forget any of the three.
//!
//! Modes are the gate's business, not the plugin's: the [`Scope`] of the
//! call (`info()`, a declared step, a drill's inject step) and the run's plan
//! mode decide whether an allowed grant may be used *now*, and whether reads
//! must run read-only in the engine (see [`Gate::read_only`]).

pub mod backup;
pub mod db;
pub mod exec;
pub mod http;
pub mod net;
pub mod output;
pub mod s3;
pub mod state;

use crate::audit::AuditWriter;
use crate::bindings::{CapError, Phase};
use crate::policy::Policy;
use crate::policy::{DEFAULT_WRITE_PHASES, PhaseName};
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
    /// Writes only scratch space of its own (a backup verification restores
    /// into a staging database): allowed where reads are, but not in a plan,
    /// which changes nothing anywhere.
    pub scratch: bool,
    /// The grant to name when the provider itself refuses the call (e.g. a
    /// write-once alias that already holds the key, or a database that
    /// refuses a statement); the allowing grant is kept beside it.
    pub refused_needs: Option<String>,
}

impl Call {
    pub fn new(interface: &'static str, op: &'static str, target: impl Into<String>) -> Self {
        Call {
            interface,
            op,
            target: target.into(),
            args: Map::new(),
            mutating: false,
            scratch: false,
            refused_needs: None,
        }
    }

    /// What the audit record names when the provider refuses the call.
    pub fn refused_needs(mut self, needed: impl Into<String>) -> Self {
        self.refused_needs = Some(needed.into());
        self
    }

    pub fn arg(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.args.insert(key.into(), value.into());
        self
    }

    pub fn mutating(mut self) -> Self {
        self.mutating = true;
        self
    }

    /// See [`Call::scratch`].
    pub fn scratch(mut self) -> Self {
        self.scratch = true;
        self
    }
}

/// One resource a grant lets a call touch, with the policy's marks on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// `s3.primary`, `db.main`, `backup.app`, `exec.restart`, `net.allow`,
    /// `http.allow`.
    pub name: String,
    /// `sandbox = true`: a drill's inject steps may use it.
    pub sandbox: bool,
    /// `phases`: where it may be used at all (None: every phase).
    pub phases: Option<Vec<PhaseName>>,
    /// `write-phases`: where it may change things.
    pub write_phases: Vec<PhaseName>,
}

impl Resource {
    /// Why this resource may not be used so in `phase`, if it may not.
    fn refuses(&self, phase: PhaseName, mutating: bool) -> Option<Decision> {
        let name = &self.name;
        if let Some(phases) = &self.phases
            && !phases.contains(&phase)
        {
            return Some(Decision::Deny {
                needed: format!("{name} phases += {phase}"),
                message: format!(
                    "[{name}] may be used only in phases {}; add \"{phase}\" to its phases to use it in a {phase} step",
                    list(phases)
                ),
            });
        }
        if mutating && !self.write_phases.contains(&phase) {
            return Some(Decision::Deny {
                needed: format!("{name} write-phases += {phase}"),
                message: format!(
                    "[{name}] may change things only in phases {}, and this is a {phase} step (detect and verify read by default); add \"{phase}\" to its write-phases if this step must change something",
                    list(&self.write_phases)
                ),
            });
        }
        None
    }
}

fn list(phases: &[PhaseName]) -> String {
    phases
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A WIT phase as the policy names it.
impl From<Phase> for PhaseName {
    fn from(p: Phase) -> Self {
        match p {
            Phase::Detect => PhaseName::Detect,
            Phase::Contain => PhaseName::Contain,
            Phase::Backup => PhaseName::Backup,
            Phase::Recover => PhaseName::Recover,
            Phase::Verify => PhaseName::Verify,
            Phase::Inject => PhaseName::Inject,
        }
    }
}

/// The grant that allows a call, as typed values: the text the audit record
/// names, and the resources the gate decides modes from. Each capability
/// builds it from its policy section; the gate never parses text back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// As the audit record names it (`s3.primary access=write`).
    pub text: String,
    pub resources: Vec<Resource>,
}

impl Grant {
    /// A grant on one resource, usable in every phase, writing where the
    /// default allows (see [`Grant::phases`]).
    pub fn on(resource: impl Into<String>, sandbox: bool, text: impl Into<String>) -> Self {
        Grant {
            text: text.into(),
            resources: vec![Resource {
                name: resource.into(),
                sandbox,
                phases: None,
                write_phases: DEFAULT_WRITE_PHASES.to_vec(),
            }],
        }
    }

    /// The policy's `phases` and `write-phases` for this grant's resources.
    pub fn phases(
        mut self,
        phases: &Option<Vec<PhaseName>>,
        write_phases: &Option<Vec<PhaseName>>,
    ) -> Self {
        for r in &mut self.resources {
            r.phases.clone_from(phases);
            if let Some(w) = write_phases {
                r.write_phases.clone_from(w);
            }
        }
        self
    }

    /// Something every plugin has (`state`): no resource of the policy's.
    pub fn always(text: impl Into<String>) -> Self {
        Grant {
            text: text.into(),
            resources: Vec::new(),
        }
    }

    /// A call that needs both grants (a copy's source and destination, a
    /// restore's source and destination).
    pub fn and(mut self, other: Grant) -> Self {
        self.text = format!("{}; {}", self.text, other.text);
        self.resources.extend(other.resources);
        self
    }

    /// A call that also changes `other`'s resources, named by this grant's
    /// text plus `note` (a restore replaces its destination too).
    pub fn touching(mut self, other: Grant, note: &str) -> Self {
        self.text = format!("{} {note}", self.text);
        self.resources.extend(other.resources);
        self
    }

    /// The first resource not marked `sandbox = true`, if any.
    fn outside_sandbox(&self) -> Option<&str> {
        self.resources
            .iter()
            .find(|r| !r.sandbox)
            .map(|r| r.name.as_str())
    }
}

/// The policy's answer: the grant that allows the call, or why not.
pub enum Decision {
    /// Allowed by this grant.
    Allow(Grant),
    /// Denied; `needed` is the grant that would allow it, `message` says why.
    Deny { needed: String, message: String },
}

impl Decision {
    /// Both decisions must allow; the first denial wins.
    pub fn and(self, other: Decision) -> Decision {
        match (self, other) {
            (Decision::Allow(a), Decision::Allow(b)) => Decision::Allow(a.and(b)),
            (d @ Decision::Deny { .. }, _) | (_, d @ Decision::Deny { .. }) => d,
        }
    }
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
    /// Records not written because the audit budget was spent.
    pub dropped_records: AtomicU64,
}

/// Where the plugin is when it calls: this decides what it may do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Library use that drives steps directly, with no declaration to hold
    /// them to (the run, `drhost test` and drills always set a scope).
    Unscoped,
    /// `info()`: log and clock only. Every capability call is denied, so
    /// `inspect` and the start of a run never act with the policy's grants.
    Info,
    /// A declared step: a step declared `mutating: false` may make no
    /// mutating call, and its reads run read-only in the engine.
    Step {
        id: String,
        phase: Phase,
        mutating: bool,
    },
}

impl Scope {
    fn step_id(&self) -> &str {
        match self {
            Scope::Unscoped => "",
            Scope::Info => "info",
            Scope::Step { id, .. } => id,
        }
    }
}

/// A record kept in memory while no audit log exists yet (`info()` runs
/// before the run's log is opened); the run writes them into its log.
pub type PendingRecord = (String, Map<String, Value>);

/// Checks, runs and records every capability call of a run.
pub struct Gate {
    /// Plan mode (`--plan`, `drhost test`): mutating calls are recorded, not
    /// executed, and reads run read-only in the engine.
    plan: bool,
    audit: Mutex<Option<AuditWriter>>,
    /// Records made without a log, when the gate keeps them (see [`Gate::keeping`]).
    pending: Mutex<Option<Vec<PendingRecord>>>,
    scope: Mutex<Scope>,
    pub counters: Counters,
    /// A drill's inject step is running: only sandbox grants may be used.
    inject: AtomicBool,
    /// `[limits] audit-bytes`: once the log is this large, every further
    /// capability call is refused (the log records the cut once).
    audit_cap: AtomicU64,
    audit_cut: AtomicBool,
}

/// Longest text copied from the guest into one field of a record (a key, a
/// URL, a target); the rest is replaced by a note of its size.
const FIELD_CAP: usize = 1024;

/// Most elements of one array copied from the guest into a record.
const ARRAY_CAP: usize = 64;

/// Clips every string inside `v` (see [`clip`]) and every array to
/// [`ARRAY_CAP`] elements, so no record grows with what the guest sent.
pub fn clip_value(v: &mut Value) {
    match v {
        Value::String(s) => clip(s),
        Value::Array(a) => {
            if a.len() > ARRAY_CAP {
                let more = a.len() - ARRAY_CAP;
                a.truncate(ARRAY_CAP);
                a.push(Value::String(format!("…[{more} more]")));
            }
            a.iter_mut().for_each(clip_value);
        }
        Value::Object(o) => o.values_mut().for_each(clip_value),
        _ => {}
    }
}

/// Shortens `s` to [`FIELD_CAP`] bytes (on a character boundary), saying so.
pub fn clip(s: &mut String) {
    if s.len() <= FIELD_CAP {
        return;
    }
    let total = s.len();
    let mut end = FIELD_CAP;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push_str(&format!("…[{} more bytes]", total - end));
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
            pending: Mutex::new(None),
            scope: Mutex::new(Scope::Unscoped),
            counters: Counters::default(),
            inject: AtomicBool::new(false),
            audit_cap: AtomicU64::new(u64::MAX),
            audit_cut: AtomicBool::new(false),
        }
    }

    /// Caps the run's audit log at `bytes` (`[limits] audit-bytes`).
    pub fn set_audit_cap(&self, bytes: u64) {
        self.audit_cap.store(bytes, Ordering::SeqCst);
    }

    /// Marks the start (true) or end (false) of an inject step.
    pub fn set_inject(&self, on: bool) {
        self.inject.store(on, Ordering::SeqCst);
    }

    /// A gate that keeps its records in memory when it has no log, for the
    /// caller to write into the run's log later (`info()` runs first).
    pub fn keeping(self) -> Self {
        if let Ok(mut p) = self.pending.lock() {
            *p = Some(Vec::new());
        }
        self
    }

    /// The records kept in memory (see [`Gate::keeping`]).
    pub fn take_pending(&self) -> Vec<PendingRecord> {
        self.pending
            .lock()
            .ok()
            .and_then(|mut p| p.as_mut().map(std::mem::take))
            .unwrap_or_default()
    }

    /// Sets where the plugin is: `info()` or a declared step.
    pub fn set_scope(&self, scope: Scope) {
        if let Ok(mut s) = self.scope.lock() {
            *s = scope;
        }
    }

    /// Enters a declared step.
    pub fn set_step(&self, step: &crate::bindings::Step) {
        self.set_scope(Scope::Step {
            id: step.id.clone(),
            phase: step.phase,
            mutating: step.mutating,
        });
    }

    fn scope(&self) -> Scope {
        self.scope.lock().map(|s| s.clone()).unwrap_or(Scope::Info)
    }

    /// Whether a call under `decision` must read only, in the engine: in
    /// plan mode, in `info()`, in steps declared `mutating: false`, and in
    /// phases where the grant may not write (detect and verify by default).
    /// Providers turn this into the engine's own mechanism (a read-only
    /// transaction that is always rolled back, a read-only SQLite connection).
    pub fn read_only(&self, decision: &Decision) -> bool {
        self.plan
            || match self.scope() {
                Scope::Unscoped => false,
                Scope::Info => true,
                Scope::Step {
                    mutating: false, ..
                } => true,
                Scope::Step { phase, .. } => match decision {
                    Decision::Allow(g) => g
                        .resources
                        .iter()
                        .any(|r| !r.write_phases.contains(&PhaseName::from(phase))),
                    Decision::Deny { .. } => true,
                },
            }
    }

    /// Appends a record to the audit log (kept in memory, or dropped, without one).
    pub fn record(&self, kind: &str, fields: Map<String, Value>) {
        let Ok(mut guard) = self.audit.lock() else {
            return;
        };
        // Past the audit budget only the run's skeleton is still written
        // (step starts and ends, the summary): logs, output and calls are
        // dropped, counted in the summary.
        if self.audit_cut.load(Ordering::Relaxed)
            && !matches!(
                kind,
                "run-start" | "scenario" | "step-start" | "step-end" | "run-end"
            )
        {
            self.counters
                .dropped_records
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        match guard.as_mut() {
            Some(w) => {
                // Written through — every step boundary, log line and
                // mutating call is in the file when it returns, so a run
                // killed at any point leaves them; read-only calls within
                // 50 ms. The header is synced to disk before guest code runs.
                let urgent = kind != "call" || fields.get("mutating") == Some(&Value::Bool(true));
                let mut written = w.append(kind, fields);
                let cap = self.audit_cap.load(Ordering::Relaxed);
                if w.bytes() > cap && !self.audit_cut.swap(true, Ordering::SeqCst) {
                    tracing::warn!(
                        "the audit log reached [limits] audit-bytes ({cap} bytes): no further capability calls in this run"
                    );
                    let mut f = Map::new();
                    f.insert("limit_bytes".into(), cap.into());
                    written = written.and_then(|()| w.append("audit-cut", f));
                }
                let written = written.and_then(|()| {
                    if kind == "run-start" {
                        w.finish()
                    } else {
                        w.flush_soon(urgent)
                    }
                });
                if let Err(e) = written {
                    tracing::error!("audit log write failed: {e}");
                }
            }
            None => {
                if let Ok(mut p) = self.pending.lock()
                    && let Some(p) = p.as_mut()
                {
                    p.push((kind.to_string(), fields));
                }
            }
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
        if self.audit_cut.load(Ordering::Relaxed) {
            // Nothing more can be recorded, so nothing more is done.
            self.counters.denied.fetch_add(1, Ordering::Relaxed);
            return Err(CapError::Denied(
                "the run's audit log reached [limits] audit-bytes: no further capability calls are made in this run".into(),
            ));
        }
        let mut call = call;
        clip(&mut call.target);
        call.args.values_mut().for_each(clip_value);
        let start = Instant::now();
        let planned = self.plan && (call.mutating || call.scratch);
        let scope = self.scope();
        let inject = self.inject.load(Ordering::SeqCst);
        let decision = in_scope(&call, decision, &scope, inject);
        let (grant, result, denied_by_gate) = match decision {
            Decision::Allow(grant) if planned => (
                grant.text,
                Err(CapError::Planned(format!(
                    "plan mode: {}.{} on {} was recorded, not executed",
                    call.interface, call.op, call.target
                ))),
                false,
            ),
            Decision::Allow(grant) => (grant.text, run().await, false),
            Decision::Deny { needed, message } => {
                // Targets and messages carry the guest's keys and URLs.
                tracing::warn!(
                    "denied {}.{} on {}: {}",
                    call.interface,
                    call.op,
                    crate::text::terminal(&call.target),
                    crate::text::terminal(&message)
                );
                (needed, Err(CapError::Denied(message)), true)
            }
        };
        let denied = matches!(result, Err(CapError::Denied(_)));
        if denied {
            self.counters.denied.fetch_add(1, Ordering::Relaxed);
        }
        // A refusal inside the provider (write-once, the database's own
        // refusal) is a denial like any other: counted, and recorded with the
        // grant that would have allowed it beside the one that let it through.
        let grant = if denied && !denied_by_gate {
            match &call.refused_needs {
                Some(needed) => format!("{needed} (allowed by {grant}, refused when run)"),
                None => format!("{grant} (refused when run)"),
            }
        } else {
            grant
        };
        let mut f = Map::with_capacity(12);
        f.insert("step".into(), Value::String(scope.step_id().to_string()));
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
                let mut text = error_text(e);
                clip(&mut text);
                f.insert("error".into(), Value::String(text));
            }
        }
        self.record("call", f);
        result
    }
}

/// What the policy's decision becomes where the plugin is: the gate's mode
/// rules, in one pure function (so they can be tested exhaustively).
/// `inject` marks a drill's inject step driven from outside a declared scope.
fn in_scope(call: &Call, decision: Decision, scope: &Scope, inject: bool) -> Decision {
    let inject = inject
        || matches!(
            scope,
            Scope::Step {
                phase: Phase::Inject,
                ..
            }
        );
    // A drill's inject step touches sandbox resources only.
    let decision = match decision {
        Decision::Allow(grant) if inject => match grant.outside_sandbox() {
            None => Decision::Allow(grant),
            Some(resource) => Decision::Deny {
                needed: format!("{resource} sandbox"),
                message: format!(
                    "a drill's inject step may only use sandbox resources: mark [{resource}] sandbox = true in the drill's policy if it holds no production data"
                ),
            },
        },
        d => d,
    };
    match (decision, scope) {
        // info() declares; it acts on nothing, whatever the policy grants.
        (_, Scope::Info) => Decision::Deny {
            needed: "none: info() runs without capabilities".into(),
            message: format!(
                "{}.{} in info(): info() only declares the scenario and may use log and clock, nothing else; do the work in a step",
                call.interface, call.op
            ),
        },
        (
            Decision::Allow(_),
            Scope::Step {
                id,
                mutating: false,
                ..
            },
        ) if call.mutating => Decision::Deny {
            needed: format!("step {id} declared mutating: true"),
            message: format!(
                "{}.{} changes things, but step {id:?} is declared mutating: false; declare the step mutating if it must change something",
                call.interface, call.op
            ),
        },
        (Decision::Allow(grant), Scope::Step { phase, .. }) => grant
            .resources
            .iter()
            .find_map(|r| r.refuses(PhaseName::from(*phase), call.mutating))
            .unwrap_or(Decision::Allow(grant)),
        (d, _) => d,
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn guest_text_in_a_record_is_clipped_on_a_character_boundary() {
        let mut short = "x".repeat(FIELD_CAP);
        clip(&mut short);
        assert_eq!(short.len(), FIELD_CAP);
        let mut long = "é".repeat(FIELD_CAP);
        clip(&mut long);
        assert!(long.starts_with(&"é".repeat(FIELD_CAP / 2)));
        assert!(
            long.ends_with(&format!("…[{} more bytes]", FIELD_CAP)),
            "{long}"
        );
    }

    #[tokio::test]
    async fn past_its_audit_budget_the_gate_records_the_cut_once_and_refuses_every_call() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let gate = Gate::new(Some(AuditWriter::create(&path).unwrap()));
        gate.set_audit_cap(8 << 10);
        let allow = || Decision::Allow(Grant::always("state (always granted)"));
        let mut refused = 0;
        for i in 0..1000 {
            let target = format!("key-{i}-{}", "k".repeat(4000));
            let r: Result<(), CapError> = gate
                .call(Call::new("state", "get", target), allow(), || async {
                    Ok(())
                })
                .await;
            if matches!(r, Err(CapError::Denied(_))) {
                refused += 1;
            }
        }
        gate.flush();
        let size = std::fs::metadata(&path).unwrap().len();
        // Each record is clipped to about 1 KiB of key: the cap is passed by
        // at most one record and the cut note.
        assert!(size < (8 << 10) + 4096, "{size}");
        assert!(refused > 990, "{refused}");
        let log = crate::audit::read(&path).unwrap();
        let cuts = log
            .iter()
            .filter(|l| l.record["type"] == "audit-cut")
            .count();
        assert_eq!(cuts, 1);
        assert_eq!(gate.counters.denied.load(Ordering::Relaxed), refused);
        // Logs and output after the cut are dropped and counted, not written.
        let mut f = Map::new();
        f.insert("message".into(), Value::String("x".repeat(4000)));
        for _ in 0..100 {
            gate.record("log", f.clone());
        }
        gate.flush();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), size);
        assert_eq!(gate.counters.dropped_records.load(Ordering::Relaxed), 100);
    }

    #[tokio::test]
    async fn guest_text_nested_in_arguments_or_errors_is_clipped_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let gate = Gate::new(Some(AuditWriter::create(&path).unwrap()));
        let huge = "A".repeat(2_000_000);
        let many: Vec<Value> = (0..10_000).map(|i| Value::from(i.to_string())).collect();
        let call = Call::new("exec", "run", "nope")
            .arg("args", Value::Array(vec![Value::String(huge.clone())]))
            .arg("more", Value::Array(many));
        let r: Result<(), CapError> = gate
            .call(call, Decision::Allow(Grant::always("test")), || async {
                Err(CapError::Invalid(huge.clone()))
            })
            .await;
        assert!(r.is_err());
        gate.flush();
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(size < 8 << 10, "{size} bytes for one call");
    }

    const PHASES: [Phase; 6] = [
        Phase::Detect,
        Phase::Contain,
        Phase::Backup,
        Phase::Recover,
        Phase::Verify,
        Phase::Inject,
    ];

    fn subset(mask: u8) -> Vec<PhaseName> {
        PHASES
            .iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .map(|(_, p)| PhaseName::from(*p))
            .collect()
    }

    proptest! {
        /// Whatever the policy says, the gate allows a call only where every
        /// rule allows it: not in info(), only sandbox resources in inject
        /// steps, only phases the grant lists, mutating calls only from
        /// steps declared mutating and only in the grant's write phases.
        #[test]
        fn the_gate_never_allows_more_than_every_rule_allows(
            phase in 0usize..6,
            declared_mutating: bool,
            call_mutating: bool,
            sandbox: bool,
            phases_mask in proptest::option::of(0u8..64),
            write_mask in proptest::option::of(0u8..64),
            info: bool,
        ) {
            let phase = PHASES[phase];
            let grant = Grant::on("s3.x", sandbox, "s3.x access=write")
                .phases(&phases_mask.map(subset), &write_mask.map(subset));
            let r = grant.resources[0].clone();
            let mut call = Call::new("s3", "put", "x:k");
            if call_mutating {
                call = call.mutating();
            }
            let scope = if info {
                Scope::Info
            } else {
                Scope::Step { id: "s".into(), phase, mutating: declared_mutating }
            };
            let allowed = matches!(in_scope(&call, Decision::Allow(grant), &scope, false), Decision::Allow(_));
            let p = PhaseName::from(phase);
            let expected = !info
                && (phase != Phase::Inject || sandbox)
                && r.phases.as_ref().is_none_or(|v| v.contains(&p))
                && (!call_mutating || (declared_mutating && r.write_phases.contains(&p)));
            prop_assert_eq!(allowed, expected);
            // A denial never becomes an allowance.
            let denied = Decision::Deny { needed: "x".into(), message: "m".into() };
            let still_denied = matches!(in_scope(&call, denied, &scope, false), Decision::Deny { .. });
            prop_assert!(still_denied);
        }
    }

    #[test]
    fn detect_and_verify_only_read_by_default() {
        let g = Grant::on("db.main", false, "db.main access=read-write");
        assert!(!g.resources[0].write_phases.contains(&PhaseName::Detect));
        assert!(!g.resources[0].write_phases.contains(&PhaseName::Verify));
        assert!(g.resources[0].write_phases.contains(&PhaseName::Recover));
    }
}
