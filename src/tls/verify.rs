//! The server certificate check: webpki's, against the system store and `api.ca_file`,
//! except for a certificate that is itself in `api.ca_file`, which is accepted as it is
//! (pinned) once its host name and dates are checked. A self-signed certificate made by
//! `openssl req -x509` says CA:TRUE, which webpki refuses for a server (CaUsedAsEndEntity)
//! even when trusted: pinning is how the most common small installation works.
//!
//! A refusal carries its explanation (see `explain`), made here where the certificate, the
//! host name and the clock are known.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

use super::cert::CertSummary;
use super::explain::{self, Trust};
use super::TimeSource;

/// The server certificate of the last handshake that succeeded (for `login`).
#[derive(Debug, Clone, Default)]
pub struct SeenCertificate(Arc<Mutex<Option<CertificateDer<'static>>>>);

impl SeenCertificate {
    pub fn summary(&self) -> Option<CertSummary> {
        let seen = self.0.lock().ok()?;
        seen.as_ref().and_then(|der| CertSummary::parse(der))
    }

    fn record(&self, der: &CertificateDer<'_>) {
        if let Ok(mut seen) = self.0.lock() {
            if seen.as_deref() != Some(der.as_ref()) {
                *seen = Some(der.clone().into_owned());
            }
        }
    }
}

#[derive(Debug)]
pub(super) struct Verifier {
    /// `None` when nothing but pinned certificates is trusted (an empty system store).
    pub webpki: Option<Arc<WebPkiServerVerifier>>,
    /// The certificates of `api.ca_file`: a server certificate equal to one is pinned.
    pub pinned: Vec<CertificateDer<'static>>,
    pub provider: Arc<CryptoProvider>,
    pub clock: Arc<dyn TimeSource>,
    pub trust: Trust,
    pub seen: SeenCertificate,
}

impl Verifier {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        if self
            .pinned
            .iter()
            .any(|p| p.as_ref() == end_entity.as_ref())
        {
            return check_pinned(end_entity, server_name, now);
        }
        match &self.webpki {
            Some(v) => v
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
                .map(drop),
            None => Err(CertificateError::UnknownIssuer.into()),
        }
    }
}

/// What webpki would check of a certificate trusted as itself: its name and dates.
fn check_pinned(
    end_entity: &CertificateDer<'_>,
    server_name: &ServerName<'_>,
    now: UnixTime,
) -> Result<(), rustls::Error> {
    let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
    rustls::client::verify_server_name(&parsed, server_name)?;
    let summary = CertSummary::parse(end_entity).ok_or(CertificateError::BadEncoding)?;
    let time = unix(summary.not_before_time);
    if now.as_secs() < time.as_secs() {
        return Err(CertificateError::NotValidYetContext {
            time: now,
            not_before: time,
        }
        .into());
    }
    let not_after = unix(summary.not_after_time);
    if now.as_secs() > not_after.as_secs() {
        return Err(CertificateError::ExpiredContext {
            time: now,
            not_after,
        }
        .into());
    }
    Ok(())
}

fn unix(t: SystemTime) -> UnixTime {
    UnixTime::since_unix_epoch(
        t.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO),
    )
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The device's clock as the rest of the gateway sees it (skewed in tests).
        let now = unix(self.clock.now());
        match self.check(end_entity, intermediates, server_name, ocsp_response, now) {
            Ok(()) => {
                self.seen.record(end_entity);
                Ok(ServerCertVerified::assertion())
            }
            Err(e) => Err(explain::refusal(
                &e,
                CertSummary::parse(end_entity).as_ref(),
                server_name,
                &self.trust,
                self.clock.as_ref(),
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
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
        rustls::crypto::verify_tls13_signature(
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
