//! TLS to the Profilometre server, as private servers are deployed: the system store and/or
//! `api.ca_file` (a private CA, or the server's own self-signed certificate, pinned), a
//! client certificate (`api.client_cert`, `api.client_key`), and failures explained so that
//! an operator knows what to change. Builds the rustls configuration the HTTP client uses;
//! knows nothing of HTTP or of the configuration file.

mod cert;
mod explain;
mod files;
mod verify;

use std::sync::Arc;
use std::time::SystemTime;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;

pub use cert::CertSummary;
pub use explain::{explain, TlsFailure};
pub use files::{SettingError, TlsFiles};
pub use verify::SeenCertificate;

/// The device's clock, as the verifier needs it (the crate's `Clock` implements it).
pub trait TimeSource: Send + Sync + std::fmt::Debug {
    fn now(&self) -> SystemTime;
    /// Whether the NTP client synchronised the clock since boot; `None` when not known.
    fn synchronised(&self) -> Option<bool>;
}

/// ring: the provider reqwest's rustls is built with (no second crypto library).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads and checks every file the settings name, as the client would (config load).
pub fn check(files: &TlsFiles<'_>) -> Result<(), SettingError> {
    files::load(files, &provider()).map(drop)
}

/// The rustls configuration for the HTTP client, and the handle through which it tells
/// which server certificate it accepted.
pub fn client_config(
    files: &TlsFiles<'_>,
    clock: Arc<dyn TimeSource>,
) -> Result<(rustls::ClientConfig, SeenCertificate), SettingError> {
    let provider = provider();
    let loaded = files::load(files, &provider)?;
    let mut roots = rustls::RootCertStore::empty();
    if files.system_roots {
        // The system store costs about 0.3 MiB for as long as the client lives: skipped
        // with `api.system_roots = false`.
        let native = rustls_native_certs::load_native_certs();
        for e in &native.errors {
            tracing::warn!("system certificate store: {e}");
        }
        let (added, ignored) = roots.add_parsable_certificates(native.certs);
        tracing::debug!("system certificate store: {added} certificates ({ignored} unusable)");
    }
    // `load` made sure that each one is a valid trust anchor.
    roots.add_parsable_certificates(loaded.trusted.iter().cloned());
    let webpki = if roots.is_empty() {
        tracing::warn!(
            "no trusted certificate (the system store is empty and api.ca_file is not set): \
             every https server will be refused; install ca-certificates or set api.ca_file"
        );
        None
    } else {
        Some(
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| SettingError {
                    key: "api.ca_file",
                    message: format!("cannot make a certificate verifier: {e}"),
                })?,
        )
    };
    let seen = SeenCertificate::default();
    let verifier = verify::Verifier {
        webpki,
        pinned: loaded.trusted,
        provider: provider.clone(),
        clock,
        trust: explain::Trust {
            ca_file: files.ca_file.map(Into::into),
            system_roots: files.system_roots,
        },
        seen: seen.clone(),
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SettingError {
            key: "api.base_url",
            message: format!("cannot configure TLS: {e}"),
        })?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let config = match loaded.client {
        Some((chain, key)) => {
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| SettingError {
                    key: "api.client_key",
                    message: format!("cannot be used: {e}"),
                })?
        }
        None => builder.with_no_client_auth(),
    };
    Ok((config, seen))
}
