//! A cluster's `security_protocol`, `sasl` and `tls` keys, and how they
//! become what klink's upstream connections go through. Passwords come
//! only from the environment or a file, read when `klink proxy` starts
//! (not when `klink ctl` reads the same config), and never from the TOML.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

use crate::sasl::Mechanism;
use crate::upstream::security::{Login, Secret, Security, Tls};

/// Kafka's `security.protocol`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum SecurityProtocol {
    #[default]
    #[serde(rename = "PLAINTEXT")]
    Plaintext,
    #[serde(rename = "SSL")]
    Ssl,
    #[serde(rename = "SASL_PLAINTEXT")]
    SaslPlaintext,
    #[serde(rename = "SASL_SSL")]
    SaslSsl,
}

impl SecurityProtocol {
    fn tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    fn sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

/// `sasl = { mechanism, username, password_env | password_file }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaslConfig {
    pub mechanism: Mechanism,
    pub username: String,
    #[serde(default)]
    pub password_env: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Read only to refuse it with a reason: a password in the TOML ends
    /// up in backups, tickets and screen shares.
    #[serde(default)]
    password: Option<toml::Value>,
}

/// `tls = { ca_file, cert_file, key_file, server_name }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificates klink trusts for this cluster's brokers.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// klink's own certificate and key (PEM), for brokers that want mTLS.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The name the brokers' certificates carry, when it is not the host
    /// klink dials.
    #[serde(default)]
    pub server_name: Option<String>,
}

/// A key of a cluster's section and what is wrong with it.
pub type SecurityError = (String, String);

/// Checks the keys against each other (`klink ctl` too: a typo should stop
/// every command).
pub fn check(
    protocol: SecurityProtocol,
    sasl: Option<&SaslConfig>,
    tls: Option<&TlsConfig>,
) -> Result<(), SecurityError> {
    let err = |key: &str, message: String| Err((key.to_string(), message));
    match (protocol.sasl(), sasl) {
        (true, None) => {
            return err(
                "sasl",
                format!("security_protocol {protocol:?} needs a `sasl` table"),
            );
        }
        (false, Some(_)) => {
            return err(
                "sasl",
                "set security_protocol to SASL_PLAINTEXT or SASL_SSL to log in".into(),
            );
        }
        _ => {}
    }
    if let Some(sasl) = sasl {
        if sasl.password.is_some() {
            return err(
                "sasl.password",
                "passwords do not belong in the config: use password_env or password_file".into(),
            );
        }
        if sasl.password_env.is_some() == sasl.password_file.is_some() {
            return err(
                "sasl",
                "give exactly one of password_env and password_file".into(),
            );
        }
        if sasl.username.is_empty() {
            return err("sasl.username", "empty".into());
        }
    }
    if tls.is_some() && !protocol.tls() {
        return err(
            "tls",
            "set security_protocol to SSL or SASL_SSL to use TLS".into(),
        );
    }
    if protocol.tls() {
        let tls = tls.cloned().unwrap_or_default();
        if tls.ca_file.is_none() {
            return err(
                "tls.ca_file",
                "needed with SSL: klink trusts only the CA it is given".into(),
            );
        }
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            return err("tls", "cert_file and key_file go together (mTLS)".into());
        }
    }
    Ok(())
}

/// What the connections to one cluster go through, with the password read
/// and the certificates loaded.
pub fn resolve(
    protocol: SecurityProtocol,
    sasl: Option<&SaslConfig>,
    tls: Option<&TlsConfig>,
) -> Result<Arc<Security>, SecurityError> {
    check(protocol, sasl, tls)?;
    let login = match sasl {
        None => None,
        Some(sasl) => Some(Login {
            mechanism: sasl.mechanism,
            username: sasl.username.clone(),
            password: password(sasl)?,
        }),
    };
    let tls = match (protocol.tls(), tls) {
        (true, Some(tls)) => Some(connector(tls)?),
        _ => None,
    };
    Ok(Arc::new(Security::new(tls, login)))
}

fn password(sasl: &SaslConfig) -> Result<Secret, SecurityError> {
    if let Some(name) = &sasl.password_env {
        return match std::env::var(name) {
            Ok(value) if !value.is_empty() => Ok(Secret::new(value)),
            _ => Err((
                "sasl.password_env".into(),
                format!("environment variable {name} is not set"),
            )),
        };
    }
    let path = sasl.password_file.as_deref().unwrap_or(Path::new(""));
    let text = std::fs::read_to_string(path).map_err(|e| {
        (
            "sasl.password_file".to_string(),
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    // A file written with `echo` ends in a newline that is no part of it.
    let value = text.strip_suffix('\n').unwrap_or(&text);
    let value = value.strip_suffix('\r').unwrap_or(value);
    if value.is_empty() {
        return Err((
            "sasl.password_file".into(),
            format!("{} is empty", path.display()),
        ));
    }
    Ok(Secret::new(value.to_string()))
}

fn connector(tls: &TlsConfig) -> Result<Tls, SecurityError> {
    let fail =
        |key: &str, path: &Path, e: String| (key.to_string(), format!("{}: {e}", path.display()));
    let ca = tls.ca_file.as_deref().unwrap_or(Path::new(""));
    let mut roots = rustls::RootCertStore::empty();
    let certs =
        CertificateDer::pem_file_iter(ca).map_err(|e| fail("tls.ca_file", ca, e.to_string()))?;
    for cert in certs {
        let cert = cert.map_err(|e| fail("tls.ca_file", ca, e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| fail("tls.ca_file", ca, e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(fail("tls.ca_file", ca, "no certificate in it".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ("tls".to_string(), e.to_string()))?
        .with_root_certificates(roots);
    let config = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| fail("tls.cert_file", cert, e.to_string()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| fail("tls.key_file", key, e.to_string()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| ("tls.cert_file".to_string(), e.to_string()))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Tls {
        connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        server_name: tls.server_name.clone(),
    })
}

/// `[proxy] tls = { cert_file, key_file, client_ca_file }`: TLS for the
/// clients on the bootstrap and virtual-broker listeners.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsConfig {
    /// klink's certificate chain and key (PEM), for the names and addresses
    /// clients connect to (`advertised_host`).
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// When set, clients must present a certificate this CA signed (mTLS).
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

/// The TLS acceptor of klink's client listeners.
pub fn acceptor(tls: &ListenerTlsConfig) -> Result<tokio_rustls::TlsAcceptor, SecurityError> {
    let fail = |key: &str, path: &Path, e: String| {
        (format!("tls.{key}"), format!("{}: {e}", path.display()))
    };
    let chain = CertificateDer::pem_file_iter(&tls.cert_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| fail("cert_file", &tls.cert_file, e.to_string()))?;
    if chain.is_empty() {
        return Err(fail(
            "cert_file",
            &tls.cert_file,
            "no certificate in it".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key_file)
        .map_err(|e| fail("key_file", &tls.key_file, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ("tls".to_string(), e.to_string()))?;
    let builder = match &tls.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca)
                .map_err(|e| fail("client_ca_file", ca, e.to_string()))?
            {
                let cert = cert.map_err(|e| fail("client_ca_file", ca, e.to_string()))?;
                roots
                    .add(cert)
                    .map_err(|e| fail("client_ca_file", ca, e.to_string()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| fail("client_ca_file", ca, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|e| fail("cert_file", &tls.cert_file, e.to_string()))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// `[proxy] sasl = { users_file, mechanisms }`: clients must log in to
/// klink as one of the users in `users_file` before anything they send is
/// forwarded.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSaslConfig {
    /// Salted SCRAM credentials, written by `klink user add`.
    pub users_file: PathBuf,
    /// What clients may log in with. PLAIN is checked against the same
    /// SCRAM credentials; it sends the password itself, so it is offered
    /// only when listed (and warned about without `[proxy] tls`).
    #[serde(default = "default_client_mechanisms")]
    pub mechanisms: Vec<Mechanism>,
}

fn default_client_mechanisms() -> Vec<Mechanism> {
    vec![Mechanism::ScramSha256, Mechanism::ScramSha512]
}
