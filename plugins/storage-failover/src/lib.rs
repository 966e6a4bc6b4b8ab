//! The recovery plan's scenario 3, storage failure: the primary bucket has
//! lost or corrupted objects. Detect them by comparing the primary's listing
//! and checksums with the secondary's, restore them with copies that never
//! pass through the plugin, and verify integrity plus uploads and downloads.
//!
//! Grants it needs (see examples/quickstart/storage-failover.policy.toml):
//! `primary` with read, list, write, delete; `secondary` with read, list.

use drhost_plugin::{
    Component, ComponentKind, Finding, Guest, Outcome, Phase, Priority, ScenarioInfo, Step, clock,
    describe, finding, info, list_all, s3, warn,
};
use std::collections::BTreeMap;

const PRIMARY: &str = "primary";
const SECONDARY: &str = "secondary";
const CANARY_PREFIX: &str = ".drhost-canary/";

struct StorageFailover;

/// Keys that are missing from the primary or differ from the secondary.
struct Damage {
    missing: Vec<String>,
    corrupted: Vec<String>,
    checked: usize,
}

fn compare() -> Result<Damage, String> {
    let secondary =
        list_all(SECONDARY, "").map_err(|e| format!("listing secondary: {}", describe(&e)))?;
    let primary: BTreeMap<String, s3::ObjectInfo> = list_all(PRIMARY, "")
        .map_err(|e| format!("listing primary: {}", describe(&e)))?
        .into_iter()
        .map(|o| (o.key.clone(), o))
        .collect();
    let mut damage = Damage {
        missing: vec![],
        corrupted: vec![],
        checked: 0,
    };
    for want in secondary
        .iter()
        .filter(|o| !o.key.starts_with(CANARY_PREFIX))
    {
        damage.checked += 1;
        match primary.get(&want.key) {
            None => damage.missing.push(want.key.clone()),
            // Different sizes need no checksum to be told apart.
            Some(have) if have.size != want.size => damage.corrupted.push(want.key.clone()),
            Some(_) => {
                let a = s3::checksum(PRIMARY, &want.key).map_err(|e| describe(&e))?;
                let b = s3::checksum(SECONDARY, &want.key).map_err(|e| describe(&e))?;
                if a != b {
                    damage.corrupted.push(want.key.clone());
                }
            }
        }
    }
    Ok(damage)
}

fn confirm_failure() -> Outcome {
    let damage = match compare() {
        Ok(d) => d,
        // An unreachable primary is the failure itself.
        Err(e) if e.starts_with("listing primary") => {
            return Outcome::Detected(vec![finding("primary-unreachable", e)]);
        }
        Err(e) => return Outcome::Failed(e),
    };
    let mut out = vec![
        finding("objects-checked", damage.checked),
        finding("missing", damage.missing.len()),
        finding("corrupted", damage.corrupted.len()),
    ];
    if damage.missing.is_empty() && damage.corrupted.is_empty() {
        info(&format!(
            "primary matches secondary ({} objects)",
            damage.checked
        ));
        return Outcome::Ok(out);
    }
    warn(&format!(
        "primary bucket damaged: {} missing, {} corrupted of {}",
        damage.missing.len(),
        damage.corrupted.len(),
        damage.checked
    ));
    out.extend(
        damage
            .missing
            .iter()
            .chain(&damage.corrupted)
            .map(|k| finding("damaged", k)),
    );
    Outcome::Detected(out)
}

fn restore(context: &[Finding]) -> Outcome {
    let damaged: Vec<&str> = context
        .iter()
        .filter(|f| f.key == "damaged")
        .map(|f| f.value.as_str())
        .collect();
    let mut restored = 0u64;
    let mut bytes = 0u64;
    for key in &damaged {
        match s3::copy(SECONDARY, key, PRIMARY, key) {
            Ok(o) => {
                restored += 1;
                bytes += o.size;
            }
            Err(e) => {
                return Outcome::Failed(format!(
                    "restoring {key} from secondary: {}",
                    describe(&e)
                ));
            }
        }
    }
    info(&format!(
        "restored {restored} objects ({bytes} bytes) from secondary"
    ));
    Outcome::Ok(vec![finding("restored", restored), finding("bytes", bytes)])
}

fn verify_integrity() -> Outcome {
    match compare() {
        Ok(d) if d.missing.is_empty() && d.corrupted.is_empty() => {
            Outcome::Ok(vec![finding("objects-verified", d.checked)])
        }
        Ok(d) => Outcome::Failed(format!(
            "primary still differs from secondary: {} missing, {} corrupted",
            d.missing.len(),
            d.corrupted.len()
        )),
        Err(e) => Outcome::Failed(e),
    }
}

fn verify_upload_download() -> Outcome {
    let key = format!("{CANARY_PREFIX}{}", clock::now_ms());
    let body = format!("drhost canary {key}");
    let result = s3::put(PRIMARY, &key, body.as_bytes())
        .map_err(|e| format!("upload failed: {}", describe(&e)))
        .and_then(|_| {
            s3::get(PRIMARY, &key).map_err(|e| format!("download failed: {}", describe(&e)))
        });
    // Remove the canary whatever happened, so the bucket is left as found.
    let cleanup = s3::delete(PRIMARY, &key);
    match (result, cleanup) {
        (Ok(got), Ok(())) if got == body.as_bytes() => {
            Outcome::Ok(vec![finding("canary", key), finding("round-trip", "ok")])
        }
        (Ok(_), Ok(())) => Outcome::Failed("downloaded canary differs from upload".into()),
        (Err(e), _) => Outcome::Failed(e),
        (Ok(_), Err(e)) => {
            Outcome::Failed(format!("could not delete canary {key}: {}", describe(&e)))
        }
    }
}

impl Guest for StorageFailover {
    fn info() -> ScenarioInfo {
        let step = |id: &str, phase, budget, mutating, description: &str| Step {
            id: id.into(),
            phase,
            component: "object-storage".into(),
            budget_seconds: budget,
            mutating,
            description: description.into(),
        };
        ScenarioInfo {
            name: "storage-failover".into(),
            version: "0.1.0".into(),
            description: "Scenario 3: restore lost or corrupted objects of the primary bucket from the secondary".into(),
            components: vec![Component {
                name: "object-storage".into(),
                kind: ComponentKind::Storage,
                priority: Priority::P1,
                rto_seconds: 3600,
                rpo_seconds: 900,
                description: "user files in the primary bucket, replicated to the secondary".into(),
            }],
            steps: vec![
                step("confirm-failure", Phase::Detect, 300, false,
                     "compare the primary's listing and checksums with the secondary's"),
                step("restore-from-secondary", Phase::Recover, 1800, true,
                     "copy every missing or corrupted object back from the secondary"),
                step("verify-integrity", Phase::Verify, 600, false,
                     "every object of the secondary is in the primary with the same sha256"),
                step("verify-upload-download", Phase::Verify, 600, true,
                     "upload, download and delete a canary object in the primary"),
            ],
        }
    }

    fn run_step(id: String, context: Vec<Finding>) -> Outcome {
        match id.as_str() {
            "confirm-failure" => confirm_failure(),
            "restore-from-secondary" => restore(&context),
            "verify-integrity" => verify_integrity(),
            "verify-upload-download" => verify_upload_download(),
            other => Outcome::Failed(format!("unknown step {other}")),
        }
    }
}

drhost_plugin::export!(StorageFailover with_types_in drhost_plugin::bindings);
