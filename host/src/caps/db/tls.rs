//! TLS to PostgreSQL, ended in the relay instead of the driver.
//!
//! The relay ([`super::meter`]) must read PostgreSQL's message headers to
//! stop a huge value before sqlx reserves memory for it, and it cannot read
//! them inside a TLS stream it only carries. So the relay itself speaks TLS
//! to the server, and the driver talks plaintext to the relay over a Unix
//! socket in a private (0700) directory.
//!
//! The URL's TLS settings mean what they meant when sqlx handled them, so a
//! policy behaves as before: `sslmode` `disable` and `allow` speak plaintext
//! (sqlx has no fallback for `allow`), `prefer` asks for TLS and accepts
//! plaintext if the server refuses, `require` insists on TLS without
//! checking the certificate, `verify-ca` checks the chain, `verify-full`
//! the chain and the host name. Trusted roots are the Mozilla set (as sqlx's
//! `webpki-roots`) plus `sslrootcert`; `sslcert` and `sslkey` give a client
//! certificate. The file settings also come from `PGSSLROOTCERT`,
//! `PGSSLCERT` and `PGSSLKEY`, as in sqlx and libpq.

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use sqlx::postgres::PgSslMode;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Whether the server must agree to TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insist {
    /// `prefer`: plaintext if the server says no.
    Prefer,
    /// `require`, `verify-ca`, `verify-full`: no TLS, no connection.
    Require,
}

/// How the relay reaches one PostgreSQL server over TLS.
#[derive(Clone)]
pub struct PgTls {
    pub insist: Insist,
    pub config: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
}

impl std::fmt::Debug for PgTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTls")
            .field("insist", &self.insist)
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// The TLS files a PostgreSQL URL names (query parameters as sqlx reads
/// them, else the libpq environment variables).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub root_cert: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

impl TlsFiles {
    pub fn from_url(url: &str, env: impl Fn(&str) -> Option<String>) -> TlsFiles {
        let query: Vec<(String, String)> = url::Url::parse(url)
            .map(|u| u.query_pairs().into_owned().collect())
            .unwrap_or_default();
        let pick = |names: &[&str], var: &str| {
            query
                .iter()
                .rev()
                .find(|(k, _)| names.contains(&k.as_str()))
                .map(|(_, v)| v.clone())
                .or_else(|| env(var))
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        TlsFiles {
            root_cert: pick(&["sslrootcert", "ssl-root-cert", "ssl-ca"], "PGSSLROOTCERT"),
            client_cert: pick(&["sslcert", "ssl-cert"], "PGSSLCERT"),
            client_key: pick(&["sslkey", "ssl-key"], "PGSSLKEY"),
        }
    }
}

impl PgTls {
    /// What `mode` asks of the relay; `None` for plaintext. Reads the
    /// certificate files now, so a bad one is named when connecting.
    pub fn new(mode: PgSslMode, host: &str, files: &TlsFiles) -> Result<Option<PgTls>, String> {
        let (insist, check) = match mode {
            PgSslMode::Disable | PgSslMode::Allow => return Ok(None),
            PgSslMode::Prefer => (Insist::Prefer, Check::Nothing),
            PgSslMode::Require => (Insist::Require, Check::Nothing),
            PgSslMode::VerifyCa => (Insist::Require, Check::Chain),
            PgSslMode::VerifyFull => (Insist::Require, Check::ChainAndName),
        };
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?;
        let verifier: Arc<dyn ServerCertVerifier> = match check {
            Check::Nothing => Arc::new(AnyCertificate { provider }),
            Check::Chain | Check::ChainAndName => {
                let mut roots =
                    RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
                if let Some(path) = &files.root_cert {
                    for cert in certificates(path)? {
                        roots
                            .add(cert)
                            .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
                    }
                }
                let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| format!("TLS: {e}"))?;
                if check == Check::Chain {
                    Arc::new(AnyName { webpki })
                } else {
                    webpki
                }
            }
        };
        let builder = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match (&files.client_cert, &files.client_key) {
            (None, None) => builder.with_no_client_auth(),
            (Some(cert), Some(key)) => {
                let key_der = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| format!("sslkey {}: {e}", key.display()))?;
                builder
                    .with_client_auth_cert(certificates(cert)?, key_der)
                    .map_err(|e| format!("sslcert {}: {e}", cert.display()))?
            }
            _ => return Err("sslcert and sslkey must be given together".into()),
        };
        let server_name = ServerName::try_from(host.to_string())
            .map_err(|e| format!("TLS: host {host:?}: {e}"))?;
        Ok(Some(PgTls {
            insist,
            config: Arc::new(config),
            server_name,
        }))
    }
}

/// What `mode` asks of a relay whose server is on a Unix socket, where
/// PostgreSQL offers no TLS: plaintext where the mode accepts it (as the
/// server's `N` would give), else a refusal that says why.
pub fn for_unix_socket(mode: PgSslMode) -> Result<Option<PgTls>, String> {
    match mode {
        PgSslMode::Disable | PgSslMode::Allow | PgSslMode::Prefer => Ok(None),
        PgSslMode::Require | PgSslMode::VerifyCa | PgSslMode::VerifyFull => Err(
            "the URL's sslmode requires TLS, which PostgreSQL does not offer on a Unix socket \
             (connect over TCP, or use sslmode=prefer)"
                .into(),
        ),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Nothing,
    Chain,
    ChainAndName,
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(certs)
}

/// `prefer` and `require`: any certificate (the handshake's signatures are
/// still checked, so the session is encrypted to the key that was shown).
#[derive(Debug)]
struct AnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the name is not
/// compared.
#[derive(Debug)]
struct AnyName {
    webpki: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .webpki
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_files_come_from_the_url_first_then_the_environment() {
        let env = |v: &str| (v == "PGSSLROOTCERT").then(|| "/env/root.pem".to_string());
        let f = TlsFiles::from_url("postgres://h/db?sslmode=verify-ca", env);
        assert_eq!(f.root_cert, Some(PathBuf::from("/env/root.pem")));
        let f = TlsFiles::from_url(
            "postgres://h/db?ssl-root-cert=/u/root.pem&sslcert=/u/c.pem&sslkey=/u/k.pem",
            env,
        );
        assert_eq!(
            f,
            TlsFiles {
                root_cert: Some("/u/root.pem".into()),
                client_cert: Some("/u/c.pem".into()),
                client_key: Some("/u/k.pem".into()),
            }
        );
    }

    #[test]
    fn plaintext_modes_need_no_tls_and_bad_files_are_named() {
        let none = TlsFiles::default();
        assert!(
            PgTls::new(PgSslMode::Disable, "h", &none)
                .unwrap()
                .is_none()
        );
        assert!(PgTls::new(PgSslMode::Allow, "h", &none).unwrap().is_none());
        let t = PgTls::new(PgSslMode::Prefer, "h", &none).unwrap().unwrap();
        assert_eq!(t.insist, Insist::Prefer);
        let bad = TlsFiles {
            root_cert: Some("/nonexistent/root.pem".into()),
            ..TlsFiles::default()
        };
        let e = PgTls::new(PgSslMode::VerifyFull, "h", &bad).unwrap_err();
        assert!(e.contains("/nonexistent/root.pem"), "{e}");
        let half = TlsFiles {
            client_cert: Some("/c.pem".into()),
            ..TlsFiles::default()
        };
        let e = PgTls::new(PgSslMode::Require, "h", &half).unwrap_err();
        assert!(e.contains("together"), "{e}");
    }

    #[test]
    fn a_unix_socket_speaks_plaintext_where_the_mode_allows_and_refuses_where_it_requires_tls() {
        assert!(for_unix_socket(PgSslMode::Prefer).unwrap().is_none());
        assert!(for_unix_socket(PgSslMode::Disable).unwrap().is_none());
        let e = for_unix_socket(PgSslMode::VerifyFull).unwrap_err();
        assert!(e.contains("Unix socket"), "{e}");
        // A socket directory is no host name: TCP-only TLS set-up refuses it.
        assert!(
            PgTls::new(
                PgSslMode::Prefer,
                "/var/run/postgresql",
                &TlsFiles::default()
            )
            .is_err()
        );
    }
}
