//! Which components a policy accepts: a sha256 pin (`[plugin] sha256`) and
//! minisign signatures by named keys (`[plugin] signed-by`), checked before
//! any of the component's code runs.

use crate::policy::PluginSection;
use crate::runtime::LoadError;
use std::path::{Path, PathBuf};

/// Where a component's detached signature lives: `x.wasm.minisig`, as
/// `minisign -S -m x.wasm` writes it.
pub fn signature_path(wasm: &Path) -> PathBuf {
    let mut name = wasm.as_os_str().to_owned();
    name.push(".minisig");
    PathBuf::from(name)
}

/// Checks the signature `[plugin] signed-by` requires, before any byte of
/// the component is parsed. Returns the sha256 of the bytes that verified
/// (None when no signature is required), for [`check_loaded`].
pub fn check_signature(wasm: &Path, plugin: &PluginSection) -> Result<Option<String>, LoadError> {
    if plugin.signed_by.is_empty() {
        return Ok(None);
    }
    let unsigned = |message: String| LoadError::Unsigned {
        path: wasm.to_path_buf(),
        message,
    };
    let sig_path = signature_path(wasm);
    let text = std::fs::read_to_string(&sig_path)
        .map_err(|e| unsigned(format!("cannot read {}: {e}", sig_path.display())))?;
    let signature = minisign_verify::Signature::decode(&text).map_err(|e| {
        unsigned(format!(
            "{} is not a minisign signature ({e})",
            sig_path.display()
        ))
    })?;
    let bytes = std::fs::read(wasm).map_err(|e| unsigned(format!("cannot read it: {e}")))?;
    let mut reasons = Vec::new();
    for key in &plugin.signed_by {
        let pk = match minisign_verify::PublicKey::from_base64(key.trim()) {
            Ok(pk) => pk,
            Err(e) => {
                reasons.push(format!(
                    "key {} is not a minisign public key ({e})",
                    short(key)
                ));
                continue;
            }
        };
        match pk.verify(&bytes, &signature, false) {
            Ok(()) => return Ok(Some(crate::digest::sha256_hex(&bytes))),
            Err(e) => reasons.push(format!("not by key {} ({e})", short(key))),
        }
    }
    Err(unsigned(format!(
        "{} does not verify with any key in [plugin] signed-by: {}",
        sig_path.display(),
        reasons.join("; ")
    )))
}

/// After loading: the sha256 pin, and that what was loaded is what verified
/// (the file could have been replaced in between).
pub fn check_loaded(
    wasm: &Path,
    sha256: &str,
    verified: Option<&str>,
    plugin: &PluginSection,
) -> Result<(), LoadError> {
    if let Some(pin) = &plugin.sha256
        && !pin.eq_ignore_ascii_case(sha256)
    {
        return Err(LoadError::PinMismatch {
            path: wasm.to_path_buf(),
            expected: pin.clone(),
            actual: sha256.to_string(),
        });
    }
    if let Some(v) = verified
        && !v.eq_ignore_ascii_case(sha256)
    {
        return Err(LoadError::Unsigned {
            path: wasm.to_path_buf(),
            message: "the file changed between the signature check and loading".into(),
        });
    }
    Ok(())
}

/// Both checks, for a component already loaded (`drhost inspect`).
pub fn check(wasm: &Path, sha256: &str, plugin: &PluginSection) -> Result<(), LoadError> {
    let verified = check_signature(wasm, plugin)?;
    check_loaded(wasm, sha256, verified.as_deref(), plugin)
}

fn short(key: &str) -> String {
    let k = key.trim();
    let end = k.char_indices().nth(12).map_or(k.len(), |(i, _)| i);
    format!("{}…", &k[..end])
}
