//! `drhost inspect`: what a plugin is, what it imports, and what the policy grants it.

use crate::orchestrator::{
    RunError, kind_name, phase_name, priority_name, read_info, validate_info,
};
use crate::policy::Policy;
use crate::runtime::Runtime;
use crate::text::terminal;
use std::fmt::Write;
use std::path::Path;
use std::sync::Arc;

pub async fn inspect(runtime: &Runtime, wasm: &Path, policy: Policy) -> Result<String, RunError> {
    let plugin = runtime.load(wasm)?;
    let policy = Arc::new(policy);
    // info() runs with no capabilities: inspecting a plugin never lets it act.
    let probe = read_info(runtime, &plugin, &policy).await?;
    let info = probe.info;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} {} — {}",
        terminal(&info.name),
        terminal(&info.version),
        terminal(&info.description)
    );
    let _ = writeln!(
        out,
        "component: {} (sha256 {})",
        wasm.display(),
        plugin.sha256
    );
    let _ = writeln!(out, "built for: drhost:plugin@{}", plugin.wit_version);
    if policy.plugin.sha256.is_some() || !policy.plugin.signed_by.is_empty() {
        let verdict = match crate::provenance::check(wasm, &plugin.sha256, &policy.plugin) {
            Ok(()) => "accepted (pin and signature as the policy requires)".to_string(),
            Err(e) => format!("REFUSED: {e}"),
        };
        let _ = writeln!(out, "provenance: {verdict}");
    }
    match validate_info(&info, &policy.limits) {
        Ok(()) => {}
        Err(e) => {
            let _ = writeln!(out, "metadata: INVALID: {e}");
        }
    }
    let _ = writeln!(out, "\ncomponents:");
    for c in &info.components {
        let _ = writeln!(
            out,
            "  {:<24} {:<12} {}  RTO {} s  RPO {} s",
            terminal(&c.name),
            kind_name(c.kind),
            priority_name(c.priority),
            c.rto_seconds,
            c.rpo_seconds
        );
    }
    let _ = writeln!(out, "\nsteps:");
    for s in &info.steps {
        let _ = writeln!(
            out,
            "  {:<28} {:<8} {:<20} {:>5} s{}  {}",
            terminal(&s.id),
            phase_name(s.phase),
            terminal(&s.component),
            s.budget_seconds,
            if s.mutating { "  mutating" } else { "" },
            terminal(&s.description)
        );
    }
    if probe.calls > 0 {
        let _ = writeln!(
            out,
            "\ninfo() attempted {} capability call(s); all were denied (info() runs without capabilities)",
            probe.calls
        );
    }
    write_phase_table(&mut out, &policy);
    let _ = writeln!(out, "\nimports:");
    for imp in &plugin.imports {
        let iface = imp.split('@').next().unwrap_or(imp);
        let verdict = match iface {
            "drhost:plugin/log"
            | "drhost:plugin/clock"
            | "drhost:plugin/state"
            | "drhost:plugin/types" => "always available".to_string(),
            "drhost:plugin/s3" => grants(policy.s3.iter().map(|(n, g)| {
                let modes: Vec<String> = g.access.iter().map(|a| a.to_string()).collect();
                format!("{n} [{}]", modes.join(","))
            })),
            "drhost:plugin/db" => {
                grants(policy.db.iter().map(|(n, g)| format!("{n} ({})", g.access)))
            }
            "drhost:plugin/exec" => grants(
                policy
                    .exec
                    .iter()
                    .map(|(n, g)| format!("{n} ({})", g.program.display())),
            ),
            "drhost:plugin/net" => grants(policy.net.allow.iter().cloned()),
            "drhost:plugin/backup" => grants(policy.backup.iter().map(|(n, g)| {
                let modes: Vec<String> = g.access.iter().map(|a| a.to_string()).collect();
                format!("{n} [{}]", modes.join(","))
            })),
            "wasi:http/outgoing-handler" => {
                grants(policy.http.allow.iter().map(|a| a.text.clone()))
            }
            "wasi:http/types" => "types for outgoing-handler".to_string(),
            "wasi:sockets/tcp"
            | "wasi:sockets/udp"
            | "wasi:sockets/ip-name-lookup"
            | "wasi:sockets/network"
            | "wasi:sockets/instance-network"
            | "wasi:sockets/tcp-create-socket"
            | "wasi:sockets/udp-create-socket" => "linked, denied (no sockets)".to_string(),
            "wasi:filesystem/types" | "wasi:filesystem/preopens" => {
                "linked, empty (no directories)".to_string()
            }
            "wasi:cli/environment" => "linked, empty (no variables, no arguments)".to_string(),
            "wasi:cli/stdout" | "wasi:cli/stderr" => "to the run log, bounded".to_string(),
            "wasi:cli/stdin" => "empty".to_string(),
            _ => "linked".to_string(),
        };
        let _ = writeln!(out, "  {imp:<44} {verdict}");
    }
    Ok(out)
}

fn grants(items: impl Iterator<Item = String>) -> String {
    let v: Vec<String> = items.collect();
    if v.is_empty() {
        "NOT GRANTED (every call will be denied)".into()
    } else {
        format!("granted: {}", v.join("; "))
    }
}

/// What each grant allows in each phase: `rw` read and change, `r` read
/// only (the engine enforces it for SQL), `-` not usable. Inject steps need
/// `sandbox = true`. A step declared `mutating: false` only reads, and
/// `--plan`/`drhost test` change nothing, whatever this table says.
fn write_phase_table(out: &mut String, policy: &Policy) {
    use crate::policy::{BackupAccess, DbAccess, S3Access};
    use crate::policy::{DEFAULT_WRITE_PHASES, PhaseName};
    // name, sandbox, can it write at all, phases, write-phases
    type Row<'a> = (
        String,
        bool,
        bool,
        &'a Option<Vec<PhaseName>>,
        &'a Option<Vec<PhaseName>>,
    );
    let mut rows: Vec<Row> = Vec::new();
    for (n, g) in &policy.s3 {
        let w = g.allows(S3Access::Write) || g.allows(S3Access::Delete);
        rows.push((format!("s3.{n}"), g.sandbox, w, &g.phases, &g.write_phases));
    }
    for (n, g) in &policy.db {
        let w = g.access == DbAccess::ReadWrite;
        rows.push((format!("db.{n}"), g.sandbox, w, &g.phases, &g.write_phases));
    }
    for (n, g) in &policy.backup {
        let w =
            g.access.contains(&BackupAccess::Create) || g.access.contains(&BackupAccess::Restore);
        rows.push((
            format!("backup.{n}"),
            g.sandbox,
            w,
            &g.phases,
            &g.write_phases,
        ));
    }
    for (n, g) in &policy.exec {
        rows.push((
            format!("exec.{n}"),
            g.sandbox,
            true,
            &g.phases,
            &g.write_phases,
        ));
    }
    let h = &policy.http;
    if !h.allow.is_empty() {
        rows.push((
            "http".into(),
            !h.sandbox.is_empty(),
            true,
            &h.phases,
            &h.write_phases,
        ));
    }
    // [net] only resolves and probes: it never changes anything.
    if !policy.net.allow.is_empty() {
        rows.push((
            "net".into(),
            policy.net.sandbox,
            false,
            &policy.net.phases,
            &None,
        ));
    }
    let _ = writeln!(
        out,
        "\ngrants by phase (rw: read and change, r: read only, -: not usable):"
    );
    if rows.is_empty() {
        let _ = writeln!(out, "  none: every capability call will be denied");
        return;
    }
    let phases = PhaseName::ALL;
    let mut header = format!("  {:<28}", "GRANT");
    for p in phases {
        let _ = write!(header, " {:<8}", p.to_string());
    }
    let _ = writeln!(out, "{}", header.trim_end());
    for (name, sandbox, can_write, use_in, write_in) in rows {
        let mut line = format!("  {name:<28}");
        for p in phases {
            let usable = use_in.as_ref().is_none_or(|v| v.contains(&p))
                && (p != PhaseName::Inject || sandbox);
            let writes = can_write
                && write_in
                    .as_deref()
                    .unwrap_or(DEFAULT_WRITE_PHASES)
                    .contains(&p);
            let cell = match (usable, writes) {
                (false, _) => "-",
                (true, true) => "rw",
                (true, false) => "r",
            };
            let _ = write!(line, " {cell:<8}");
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}
