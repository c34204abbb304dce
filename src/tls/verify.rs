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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct FixedClock(SystemTime, Option<bool>);

    impl TimeSource for FixedClock {
        fn now(&self) -> SystemTime {
            self.0
        }
        fn synchronised(&self) -> Option<bool> {
            self.1
        }
    }

    struct Made {
        der: CertificateDer<'static>,
        key: rcgen::KeyPair,
        params: rcgen::CertificateParams,
    }

    fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
        r.unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like `openssl req -x509`: self-signed and CA:TRUE.
    fn self_signed(names: &[&str], not_after: (i32, u8, u8)) -> Made {
        let mut params = ok(rcgen::CertificateParams::new(
            names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        ));
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0]);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let key = ok(rcgen::KeyPair::generate());
        let der = ok(params.self_signed(&key)).der().clone();
        Made { der, key, params }
    }

    fn signed_by(ca: &Made, name: &str) -> CertificateDer<'static> {
        let mut params = ok(rcgen::CertificateParams::new(vec![name.to_owned()]));
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = ok(rcgen::KeyPair::generate());
        let issuer = rcgen::Issuer::from_params(&ca.params, &ca.key);
        ok(params.signed_by(&key, &issuer)).der().clone()
    }

    fn verifier(trusted: &[&Made], clock: FixedClock) -> Verifier {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(trusted.iter().map(|m| m.der.clone()));
        Verifier {
            webpki: Some(ok(WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider.clone(),
            )
            .build())),
            pinned: trusted.iter().map(|m| m.der.clone()).collect(),
            provider,
            clock: Arc::new(clock),
            trust: Trust {
                ca_file: Some("/etc/profilo-gateway/ca.pem".into()),
                system_roots: false,
            },
            seen: SeenCertificate::default(),
        }
    }

    fn now() -> FixedClock {
        FixedClock(SystemTime::now(), Some(true))
    }

    fn verify(v: &Verifier, cert: &CertificateDer<'_>, host: &str) -> Result<(), String> {
        let name = ok(ServerName::try_from(host.to_owned()));
        v.verify_server_cert(cert, &[], &name, &[], UnixTime::now())
            .map(drop)
            .map_err(|e| match explain::explain(&e) {
                Some(f) => f.message,
                None => format!("unexplained: {e}"),
            })
    }

    #[test]
    fn a_self_signed_certificate_in_ca_file_is_pinned() {
        let pinned = self_signed(&["gw.example", "127.0.0.1"], (2099, 1, 1));
        let v = verifier(&[&pinned], now());
        assert_eq!(verify(&v, &pinned.der, "gw.example"), Ok(()));
        assert_eq!(verify(&v, &pinned.der, "127.0.0.1"), Ok(()));
        let seen = v
            .seen
            .summary()
            .unwrap_or_else(|| panic!("nothing recorded"));
        assert_eq!(seen.subject, "CN=gw.example");
        assert_eq!(seen.not_after, "2099-01-01T00:00:00Z");
    }

    #[test]
    fn rustls_alone_refuses_a_trusted_self_signed_certificate() {
        // Why pinning exists: the same certificate through webpki only.
        let pinned = self_signed(&["gw.example"], (2099, 1, 1));
        let mut v = verifier(&[&pinned], now());
        v.pinned.clear();
        let e = verify(&v, &pinned.der, "gw.example")
            .err()
            .unwrap_or_default();
        assert!(e.contains("is self-signed and not in api.ca_file"), "{e}");
    }

    #[test]
    fn another_self_signed_certificate_is_refused_naming_ca_file() {
        let pinned = self_signed(&["gw.example"], (2099, 1, 1));
        let other = self_signed(&["gw.example"], (2099, 1, 1));
        let v = verifier(&[&pinned], now());
        let e = verify(&v, &other.der, "gw.example")
            .err()
            .unwrap_or_default();
        assert!(
            e.contains("put the server's CA, or its self-signed certificate, in api.ca_file"),
            "{e}"
        );
        assert!(e.contains("/etc/profilo-gateway/ca.pem"), "{e}");
        assert!(
            v.seen.summary().is_none(),
            "a refused certificate is not recorded"
        );
    }

    #[test]
    fn a_pinned_certificate_is_still_checked_for_name_and_dates() {
        let pinned = self_signed(&["gw.example"], (2099, 1, 1));
        let v = verifier(&[&pinned], now());
        let e = verify(&v, &pinned.der, "other.example")
            .err()
            .unwrap_or_default();
        assert!(
            e.contains("is for DNS:gw.example, not for other.example"),
            "{e}"
        );

        let expired = self_signed(&["gw.example"], (2021, 6, 1));
        let v = verifier(&[&expired], now());
        let e = verify(&v, &expired.der, "gw.example")
            .err()
            .unwrap_or_default();
        assert!(e.contains("expired at 2021-06-01T00:00:00Z"), "{e}");
        assert!(e.contains("synchronised by NTP"), "{e}");

        // A clock left in 2019: the certificate is not valid yet, and the clock is blamed.
        let early = SystemTime::UNIX_EPOCH + Duration::from_secs(1_560_000_000);
        let v = verifier(&[&pinned], FixedClock(early, Some(false)));
        let e = verify(&v, &pinned.der, "gw.example")
            .err()
            .unwrap_or_default();
        assert!(
            e.contains("is not valid before 2020-01-01T00:00:00Z"),
            "{e}"
        );
        assert!(
            e.contains("2019-06-08T13:20:00Z (NOT synchronised since boot)"),
            "{e}"
        );
        assert!(e.contains("clock is probably wrong"), "{e}");
    }

    #[test]
    fn a_private_ca_in_ca_file_signs_the_server() {
        let ca = self_signed(&["Profilo CA"], (2099, 1, 1));
        let server = signed_by(&ca, "gw.example");
        let v = verifier(&[&ca], now());
        assert_eq!(verify(&v, &server, "gw.example"), Ok(()));
        let e = verify(&v, &server, "127.0.0.1").err().unwrap_or_default();
        assert!(
            e.contains("not for 127.0.0.1") && e.contains("subjectAltName IP:127.0.0.1"),
            "{e}"
        );
        let stranger = self_signed(&["Other CA"], (2099, 1, 1));
        let v = verifier(&[&stranger], now());
        let e = verify(&v, &server, "gw.example").err().unwrap_or_default();
        assert!(
            e.contains("is not signed by a CA this gateway trusts"),
            "{e}"
        );
        assert!(e.contains("issued by \"CN=Profilo CA\""), "{e}");
    }
}
