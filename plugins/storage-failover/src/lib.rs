//! The recovery plan's scenario 3, storage failure: the primary bucket has
//! lost or corrupted objects. Detect them by comparing the primary's listing
//! and checksums with the secondary's, restore them with copies that never
//! pass through the plugin, and verify integrity plus uploads and downloads.
//!
//! Grants it needs (see examples/quickstart/storage-failover.policy.toml):
//! `primary` with read, list, write, delete; `secondary` with read, list;
//! `config` with write (the application's `storage.json`).
//!
//! As a drill (`drhost drill`, examples/quickstart/drill.toml) it first
//! injects the disaster into sandbox buckets: a data set of six objects
//! written at ten-minute intervals up to now (the key holds the time), then
//! the two newest lost from the primary and the oldest corrupted. Setting the
//! state key `drill.damage-secondary` makes the secondary lose the two newest
//! as well, so that recovery cannot meet the RPO and the drill must fail.

use drhost_plugin::error::{Context, StepResult, outcome};
use drhost_plugin::listing::compare_aliases;
use drhost_plugin::scenario::{Scenario, component, detect, inject, minutes, recover, verify};
use drhost_plugin::{
    ComponentKind, Finding, Guest, Outcome, Priority, ScenarioInfo, clock, context_value, finding,
    info, list_all, s3, state, warn,
};

const PRIMARY: &str = "primary";
const SECONDARY: &str = "secondary";
const CANARY_PREFIX: &str = ".drhost-canary/";
const CONFIG: &str = "config";
const STORAGE_JSON: &str = "storage.json";
const REPOINT_COMMAND: &str = r#"echo '{"bucket": "primary"}' > config/storage.json"#;
/// Where a drill writes its data set; keys are `drill/<ms since epoch>.txt`.
const DRILL_PREFIX: &str = "drill/";
const DRILL_OBJECTS: u64 = 6;
const DRILL_SPACING_MS: u64 = 10 * 60 * 1000;

struct StorageFailover;

fn scenario() -> Scenario {
    Scenario::new("storage-failover", "0.1.0")
        .about("Scenario 3: restore lost or corrupted objects of the primary bucket from the secondary")
        .component(
            component("object-storage", ComponentKind::Storage, Priority::P1)
                .rto(minutes(60))
                .rpo(minutes(15))
                .about("user files in the primary bucket, replicated to the secondary"),
        )
        .step(
            inject("lose-and-corrupt-objects", "object-storage")
                .within(minutes(5))
                .mutating()
                .about("write a data set to both sandbox buckets, then lose two objects and corrupt one in the primary"),
        )
        .step(
            detect("confirm-failure", "object-storage")
                .within(minutes(5))
                .about("compare the primary's listing and checksums with the secondary's"),
        )
        .step(
            recover("restore-from-secondary", "object-storage")
                .within(minutes(30))
                .mutating()
                .about("copy every missing or corrupted object back from the secondary"),
        )
        .step(
            recover("repoint-application", "object-storage")
                .within(minutes(2))
                .mutating()
                .about("tell the application to use the restored primary (config/storage.json)"),
        )
        .step(
            verify("verify-integrity", "object-storage")
                .within(minutes(10))
                .about("every object of the secondary is in the primary with the same sha256"),
        )
        .step(
            verify("verify-upload-download", "object-storage")
                .within(minutes(10))
                .mutating()
                .about("upload, download and delete a canary object in the primary"),
        )
}

fn drill_key(ms: u64) -> String {
    format!("{DRILL_PREFIX}{ms:013}.txt")
}

/// The time a drill object was written, from its key.
fn drill_time(key: &str) -> Option<u64> {
    key.strip_prefix(DRILL_PREFIX)?
        .strip_suffix(".txt")?
        .parse()
        .ok()
}

fn inject_disaster() -> StepResult {
    for alias in [PRIMARY, SECONDARY] {
        for o in list_all(alias, DRILL_PREFIX).during(format!("listing {alias}"))? {
            s3::delete(alias, &o.key).during(format!("clearing {alias}/{}", o.key))?;
        }
    }
    let now = clock::now_ms();
    let keys: Vec<String> = (0..DRILL_OBJECTS)
        .rev()
        .map(|i| drill_key(now - i * DRILL_SPACING_MS))
        .collect();
    for key in &keys {
        let body = format!("drill data {key}");
        for alias in [SECONDARY, PRIMARY] {
            s3::put(alias, key, body.as_bytes()).during(format!("writing {alias}/{key}"))?;
        }
    }
    let newest = &keys[keys.len() - 2..];
    for key in newest {
        s3::delete(PRIMARY, key).during(format!("losing {key}"))?;
    }
    s3::put(PRIMARY, &keys[0], b"corrupted by the drill").during("corrupting the oldest")?;
    let damage_secondary = state::get("drill.damage-secondary").is_some();
    if damage_secondary {
        for key in newest {
            s3::delete(SECONDARY, key).during(format!("losing {key} from the secondary"))?;
        }
    }
    warn(&format!(
        "drill: lost {} and corrupted {} in the primary{}",
        newest.join(", "),
        keys[0],
        if damage_secondary {
            ", and lost the same from the secondary"
        } else {
            ""
        }
    ));
    Ok(Outcome::Ok(vec![
        finding("data-at-disaster-ms", now),
        finding("objects-written", keys.len()),
        finding("lost", newest.len()),
        finding("corrupted", 1),
        finding("secondary-damaged", damage_secondary),
    ]))
}

fn confirm_failure() -> StepResult {
    let damage = match compare_aliases(SECONDARY, PRIMARY, "", &[CANARY_PREFIX]) {
        Ok(d) => d,
        // An unreachable primary is the failure itself.
        Err(e) if e.during() == format!("listing {PRIMARY}") => {
            return Ok(Outcome::Detected(vec![finding("primary-unreachable", e)]));
        }
        Err(e) => return Err(e),
    };
    let mut out = vec![
        finding("objects-checked", damage.checked),
        finding("missing", damage.missing.len()),
        finding("corrupted", damage.corrupted.len()),
    ];
    if damage.is_clean() {
        info(&format!(
            "primary matches secondary ({} objects)",
            damage.checked
        ));
        return Ok(Outcome::Ok(out));
    }
    warn(&format!(
        "primary bucket damaged: {} missing, {} corrupted of {}",
        damage.missing.len(),
        damage.corrupted.len(),
        damage.checked
    ));
    out.extend(damage.damaged().map(|k| finding("damaged", k)));
    Ok(Outcome::Detected(out))
}

fn restore(context: &[Finding]) -> StepResult {
    let mut restored = 0u64;
    let mut bytes = 0u64;
    for key in context
        .iter()
        .filter(|f| f.key == "damaged")
        .map(|f| &f.value)
    {
        let o = s3::copy(SECONDARY, key, PRIMARY, key)
            .during(format!("restoring {key} from secondary"))?;
        restored += 1;
        bytes += o.size;
    }
    info(&format!(
        "restored {restored} objects ({bytes} bytes) from secondary"
    ));
    Ok(Outcome::Ok(vec![
        finding("restored", restored),
        finding("bytes", bytes),
    ]))
}

/// The application reads the bucket to use from a configuration object:
/// after a restore that is the primary again (docs/drills.md, Re-pointing).
fn repoint() -> StepResult {
    s3::put(CONFIG, STORAGE_JSON, b"{\"bucket\": \"primary\"}\n").during("writing storage.json")?;
    Ok(Outcome::Ok(vec![
        finding("bucket", PRIMARY),
        finding("command", REPOINT_COMMAND),
    ]))
}

fn verify_integrity(context: &[Finding]) -> StepResult {
    let c = compare_aliases(SECONDARY, PRIMARY, "", &[CANARY_PREFIX])?;
    if !c.is_clean() {
        return Err(format!(
            "primary still differs from secondary: {} missing, {} corrupted",
            c.missing.len(),
            c.corrupted.len()
        )
        .into());
    }
    let mut out = vec![finding("objects-verified", c.checked)];
    // In a drill: the newest data the primary holds again, for the RPO.
    if context_value(context, "data-at-disaster-ms").is_some() {
        let newest = list_all(PRIMARY, DRILL_PREFIX)
            .during("listing the drill's data in the primary")?
            .iter()
            .filter_map(|o| drill_time(&o.key))
            .max()
            .unwrap_or(0);
        out.push(finding("data-recovered-ms", newest));
    }
    Ok(Outcome::Ok(out))
}

fn verify_upload_download() -> StepResult {
    let key = format!("{CANARY_PREFIX}{}", clock::now_ms());
    let body = format!("drhost canary {key}");
    let round_trip = s3::put(PRIMARY, &key, body.as_bytes())
        .during("upload failed")
        .and_then(|_| s3::get(PRIMARY, &key).during("download failed"));
    // Remove the canary whatever happened, so the bucket is left as found.
    let cleanup = s3::delete(PRIMARY, &key).during(format!("could not delete canary {key}"));
    let got = round_trip?;
    cleanup?;
    if got != body.as_bytes() {
        return Err("downloaded canary differs from upload".into());
    }
    Ok(Outcome::Ok(vec![
        finding("canary", key),
        finding("round-trip", "ok"),
    ]))
}

impl Guest for StorageFailover {
    fn info() -> ScenarioInfo {
        scenario().build()
    }

    fn run_step(id: String, context: Vec<Finding>) -> Outcome {
        outcome(match id.as_str() {
            "confirm-failure" => confirm_failure(),
            "restore-from-secondary" => restore(&context),
            "repoint-application" => repoint(),
            "verify-integrity" => verify_integrity(&context),
            "lose-and-corrupt-objects" => inject_disaster(),
            "verify-upload-download" => verify_upload_download(),
            other => Err(format!("unknown step {other}").into()),
        })
    }
}

drhost_plugin::export!(StorageFailover with_types_in drhost_plugin::bindings);

#[cfg(test)]
mod tests {
    #[test]
    fn metadata_is_valid() {
        assert_eq!(super::scenario().problems(), Vec::<String>::new());
    }
}
