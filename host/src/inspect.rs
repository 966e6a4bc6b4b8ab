//! `drhost inspect`: what a plugin is, what it imports, and what the policy grants it.

use crate::orchestrator::{
    RunError, build_caps, kind_name, phase_name, priority_name, validate_info,
};
use crate::policy::Policy;
use crate::runtime::Runtime;
use std::fmt::Write;
use std::path::Path;
use std::sync::Arc;

pub async fn inspect(runtime: &Runtime, wasm: &Path, policy: Policy) -> Result<String, RunError> {
    let plugin = runtime.load(wasm)?;
    let policy = Arc::new(policy);
    let caps = Arc::new(
        build_caps(
            &policy,
            None,
            crate::caps::state::StateCap::ephemeral(0),
            false,
            None,
        )
        .await?,
    );
    let info = runtime.info(&plugin, &caps).await.map_err(RunError::Info)?;
    let mut out = String::new();
    let _ = writeln!(out, "{} {} — {}", info.name, info.version, info.description);
    let _ = writeln!(
        out,
        "component: {} (sha256 {})",
        wasm.display(),
        plugin.sha256
    );
    let _ = writeln!(out, "built for: drhost:plugin@{}", plugin.wit_version);
    if let Some(pin) = &policy.plugin.sha256 {
        let ok = pin.eq_ignore_ascii_case(&plugin.sha256);
        let _ = writeln!(
            out,
            "policy pin: {pin} ({})",
            if ok { "matches" } else { "DOES NOT MATCH" }
        );
    }
    match validate_info(&info) {
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
            c.name,
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
            s.id,
            phase_name(s.phase),
            s.component,
            s.budget_seconds,
            if s.mutating { "  mutating" } else { "" },
            s.description
        );
    }
    let _ = writeln!(out, "\nimports:");
    for imp in &plugin.imports {
        let iface = imp.split('@').next().unwrap_or(imp);
        let verdict = match iface {
            "drhost:plugin/log"
            | "drhost:plugin/clock"
            | "drhost:plugin/state"
            | "drhost:plugin/types" => "always available".to_string(),
            "drhost:plugin/s3" => grants(caps.s3.names().map(|n| {
                let g = &policy.s3[n];
                let modes: Vec<String> = g.access.iter().map(|a| a.to_string()).collect();
                format!("{n} [{}]", modes.join(","))
            })),
            "drhost:plugin/db" => grants(
                caps.db
                    .names()
                    .map(|n| format!("{n} ({})", policy.db[n].access)),
            ),
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
