//! Signed manifests.
//!
//! A manifest says which object is the backup and what its bytes must hash
//! to; whoever can rewrite it (anyone with write access to a bucket) could
//! pass off another object encrypted to the same recipient. So every
//! manifest is signed with the backup host's Ed25519 key, in minisign's
//! format, beside it as `<id>.manifest.json.minisig`: an operator checks one
//! with the standard CLI (`minisign -V -P <public key> -m <id>.manifest.json`),
//! and drhost checks each one it reads against the public keys it trusts.
//!
//! The signing key is `[keys] signing-key` (a minisign secret key without a
//! password, a file or `env:NAME`), or else the host's own,
//! `STATE_DIR/backup-signing.key`, made on the first backup (0600, its public
//! key beside it in `.pub`). Trusted: `[keys] signed-by` and the signing
//! key's own public key. The secret key never leaves the host; verifying
//! needs only the public key.

use super::BackupError;
use crate::policy::Secret;
use std::path::{Path, PathBuf};

/// How far a manifest can be trusted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Authenticity {
    /// Signed by this trusted key (its base64 form).
    Signed(String),
    /// No signature beside it.
    #[default]
    Unsigned,
    /// A signature that no trusted key verifies, or that names another
    /// manifest.
    Bad(String),
    /// Nothing to check with: no trusted key is configured here.
    NoKey,
}

impl Authenticity {
    pub fn trusted(&self) -> bool {
        matches!(self, Authenticity::Signed(_))
    }

    /// Why it is not trusted, in a sentence, with what to do.
    pub fn problem(&self) -> Option<String> {
        match self {
            Authenticity::Signed(_) => None,
            Authenticity::Unsigned => Some("its manifest has no signature (.minisig)".into()),
            Authenticity::Bad(why) => Some(format!("its manifest's signature is bad: {why}")),
            Authenticity::NoKey => Some(
                "no key to check its manifest's signature with: set [keys] signed-by to the backup host's public key"
                    .into(),
            ),
        }
    }
}

/// The object key of a manifest's signature.
pub fn signature_key(manifest_key: &str) -> String {
    format!("{manifest_key}.minisig")
}

/// What a signature's trusted comment says: which manifest it is for, so a
/// valid signature cannot be moved to another one.
fn comment(source: &str, id: &str) -> String {
    format!("drhost manifest {source}/{id}")
}

/// The backup host's signing key.
pub struct Signer {
    sk: minisign::SecretKey,
    pk: minisign::PublicKey,
}

impl Signer {
    /// The configured key, or the host's own in `state_dir` if it exists.
    pub fn load(
        configured: Option<&Secret>,
        base: &Path,
        state_dir: &Path,
    ) -> Result<Option<Self>, BackupError> {
        let text = match configured {
            Some(secret) => {
                let value = secret.resolve().map_err(BackupError::Config)?;
                if secret.describe().starts_with("env:") {
                    value
                } else {
                    let path = base.join(&value);
                    std::fs::read_to_string(&path).map_err(|e| {
                        BackupError::Config(format!("[keys] signing-key {}: {e}", path.display()))
                    })?
                }
            }
            None => match std::fs::read_to_string(own_key(state_dir)) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => {
                    return Err(BackupError::Config(format!(
                        "{}: {e}",
                        own_key(state_dir).display()
                    )));
                }
            },
        };
        Self::parse(&text).map(Some)
    }

    fn parse(text: &str) -> Result<Self, BackupError> {
        let bad = |e: minisign::PError| {
            BackupError::Config(format!(
                "[keys] signing-key is not a minisign secret key without a password: {e}"
            ))
        };
        let sk = minisign::SecretKeyBox::from_string(text)
            .and_then(|b| b.into_unencrypted_secret_key())
            .map_err(bad)?;
        let pk = minisign::PublicKey::from_secret_key(&sk).map_err(bad)?;
        Ok(Signer { sk, pk })
    }

    /// Makes the host's own key in `state_dir` (private to its owner) and
    /// its public key beside it.
    pub fn create(state_dir: &Path) -> Result<Self, BackupError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let io = |what: &Path| {
            let what = what.display().to_string();
            move |e: std::io::Error| BackupError::Config(format!("{what}: {e}"))
        };
        let fail = |e: minisign::PError| BackupError::Failed(format!("making a signing key: {e}"));
        std::fs::create_dir_all(state_dir).map_err(io(state_dir))?;
        let pair = minisign::KeyPair::generate_unencrypted_keypair().map_err(fail)?;
        let sk_text = pair
            .sk
            .to_box(Some("drhost backup signing key"))
            .map_err(fail)?
            .into_string();
        let path = own_key(state_dir);
        // create_new: two backups starting at once never overwrite each
        // other's key; the loser reads the winner's.
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(mut f) => {
                f.write_all(sk_text.as_bytes()).map_err(io(&path))?;
                f.sync_all().map_err(io(&path))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Self::load(None, state_dir, state_dir)?
                    .ok_or_else(|| BackupError::Config(format!("{} vanished", path.display())));
            }
            Err(e) => return Err(io(&path)(e)),
        }
        let signer = Signer {
            sk: pair.sk,
            pk: pair.pk,
        };
        let pub_path = path.with_extension("pub");
        std::fs::write(
            &pub_path,
            format!(
                "untrusted comment: drhost backup signing public key\n{}\n",
                signer.public()
            ),
        )
        .map_err(io(&pub_path))?;
        tracing::warn!(
            "made this host's backup signing key {}: keep its public key {} with your age identity, \
             a restore elsewhere needs it in [keys] signed-by",
            path.display(),
            signer.public()
        );
        Ok(signer)
    }

    /// The public key, base64, as `minisign -P` takes it.
    pub fn public(&self) -> String {
        self.pk.to_base64()
    }

    /// The `.minisig` text for the manifest `bytes` of `source`/`id`.
    pub fn sign(&self, source: &str, id: &str, bytes: &[u8]) -> Result<String, BackupError> {
        minisign::sign(
            Some(&self.pk),
            &self.sk,
            std::io::Cursor::new(bytes),
            Some(&comment(source, id)),
            Some("signature from a drhost backup host"),
        )
        .map(|b| b.into_string())
        .map_err(|e| BackupError::Failed(format!("signing the manifest of {id}: {e}")))
    }
}

/// `STATE_DIR/backup-signing.key`.
pub fn own_key(state_dir: &Path) -> PathBuf {
    state_dir.join("backup-signing.key")
}

/// The public keys whose signatures this host accepts.
#[derive(Default)]
pub struct Trust {
    keys: Vec<(String, minisign_verify::PublicKey)>,
}

impl Trust {
    /// `[keys] signed-by`, and the signing key's own public key.
    pub fn new(signed_by: &[String], own: Option<String>) -> Result<Self, BackupError> {
        let mut keys = Vec::new();
        for k in signed_by.iter().cloned().chain(own) {
            let k = k.trim().to_string();
            let pk = minisign_verify::PublicKey::from_base64(&k).map_err(|e| {
                BackupError::Config(format!(
                    "[keys] signed-by: {k:?} is not a minisign public key ({e})"
                ))
            })?;
            if !keys.iter().any(|(known, _)| known == &k) {
                keys.push((k, pk));
            }
        }
        Ok(Trust { keys })
    }

    /// Checks `signature` (the `.minisig` text, if there is one) of the
    /// manifest `bytes` that says it is `source`/`id`.
    pub fn check(
        &self,
        source: &str,
        id: &str,
        bytes: &[u8],
        signature: Option<&[u8]>,
    ) -> Authenticity {
        let Some(signature) = signature else {
            return Authenticity::Unsigned;
        };
        if self.keys.is_empty() {
            return Authenticity::NoKey;
        }
        let Ok(text) = std::str::from_utf8(signature) else {
            return Authenticity::Bad("not a minisign signature (not text)".into());
        };
        let sig = match minisign_verify::Signature::decode(text) {
            Ok(s) => s,
            Err(e) => return Authenticity::Bad(format!("not a minisign signature ({e})")),
        };
        if sig.trusted_comment() != comment(source, id) {
            return Authenticity::Bad(format!(
                "it is for {:?}, not this manifest",
                sig.trusted_comment()
            ));
        }
        let mut reasons = Vec::new();
        for (name, pk) in &self.keys {
            match pk.verify(bytes, &sig, false) {
                Ok(()) => return Authenticity::Signed(name.clone()),
                Err(e) => reasons.push(e.to_string()),
            }
        }
        Authenticity::Bad(format!(
            "no trusted key verifies it ({})",
            reasons.join("; ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_holds_for_its_manifest_only() {
        let dir = tempfile::tempdir().unwrap();
        let signer = Signer::create(dir.path()).unwrap();
        let trust = Trust::new(&[], Some(signer.public())).unwrap();
        let body = br#"{"id":"a"}"#;
        let sig = signer.sign("app", "a", body).unwrap();
        assert!(
            trust
                .check("app", "a", body, Some(sig.as_bytes()))
                .trusted()
        );
        // Another body, another manifest's name, another key: all refused.
        assert!(matches!(
            trust.check("app", "a", br#"{"id":"b"}"#, Some(sig.as_bytes())),
            Authenticity::Bad(_)
        ));
        assert!(matches!(
            trust.check("app", "b", body, Some(sig.as_bytes())),
            Authenticity::Bad(_)
        ));
        let other = Signer::create(tempfile::tempdir().unwrap().path()).unwrap();
        let stranger = Trust::new(&[other.public()], None).unwrap();
        assert!(matches!(
            stranger.check("app", "a", body, Some(sig.as_bytes())),
            Authenticity::Bad(_)
        ));
        assert_eq!(trust.check("app", "a", body, None), Authenticity::Unsigned);
        assert_eq!(
            Trust::default().check("app", "a", body, Some(sig.as_bytes())),
            Authenticity::NoKey
        );
        // The host's key reloads from the state directory, private to its owner.
        let again = Signer::load(None, dir.path(), dir.path()).unwrap().unwrap();
        assert_eq!(again.public(), signer.public());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(own_key(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
