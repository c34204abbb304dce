//! TLS failures said so that an operator knows what to do: which certificate, which names,
//! which dates, which setting to change. A server certificate refused by the verifier
//! carries its explanation through rustls and hyper ([`Refusal`]); an alert from the server
//! (a client certificate it refused) is explained where the error comes out of reqwest.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use rustls::pki_types::ServerName;
use rustls::{AlertDescription, CertificateError, OtherError};

use super::cert::{rfc3339, CertSummary};
use super::TimeSource;

/// What the gateway trusts, for the explanations.
#[derive(Debug, Clone, Default)]
pub(super) struct Trust {
    pub ca_file: Option<PathBuf>,
    pub system_roots: bool,
}

impl Trust {
    fn said(&self) -> String {
        match (&self.ca_file, self.system_roots) {
            (Some(p), true) => format!("the system store and api.ca_file {}", p.display()),
            (Some(p), false) => format!(
                "api.ca_file {} only (api.system_roots = false)",
                p.display()
            ),
            (None, _) => "the system store; api.ca_file is not set".into(),
        }
    }
}

/// A refused server certificate, explained (inside a `rustls::Error`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

const TRUST_ADVICE: &str = "put the server's CA, or its self-signed certificate, in api.ca_file";

/// The verifier's error, turned into one that says what to do.
pub(super) fn refusal(
    error: &rustls::Error,
    cert: Option<&CertSummary>,
    server_name: &ServerName<'_>,
    trust: &Trust,
    clock: &dyn TimeSource,
) -> rustls::Error {
    let which = match cert {
        Some(c) => format!("the server's certificate ({c})"),
        None => "the server's certificate".to_owned(),
    };
    let host = server_name.to_str();
    let message = match error {
        rustls::Error::InvalidCertificate(e) => match e {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => format!(
                "{which} is not signed by a CA this gateway trusts ({}): {TRUST_ADVICE}",
                trust.said()
            ),
            // webpki's CaUsedAsEndEntity: a self-signed (CA:TRUE) certificate not pinned.
            CertificateError::Other(_) if cert.is_some_and(CertSummary::self_signed) => format!(
                "{which} is self-signed and not in api.ca_file ({}): {TRUST_ADVICE}",
                trust.said()
            ),
            CertificateError::NotValidForNameContext { presented, .. } => {
                let names = if presented.is_empty() {
                    "no host name (no subjectAltName; the CN alone does not count)".to_owned()
                } else {
                    presented
                        .iter()
                        .map(|n| san(n))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                format!(
                    "{which} is for {names}, not for {host} (the host of api.base_url): use a \
                     host name the certificate holds in api.base_url, or reissue the certificate \
                     with subjectAltName {}:{host}",
                    if matches!(server_name, ServerName::IpAddress(_)) {
                        "IP"
                    } else {
                        "DNS"
                    }
                )
            }
            CertificateError::NotValidForName => format!(
                "{which} is not for {host} (the host of api.base_url): use a host name the \
                 certificate holds, or reissue it for {host}"
            ),
            CertificateError::ExpiredContext { not_after, .. } => dates(
                &which,
                &format!("expired at {}", rfc3339(system_time(*not_after))),
                clock,
                "renew the server's certificate",
            ),
            CertificateError::Expired => dates(
                &which,
                "has expired",
                clock,
                "renew the server's certificate",
            ),
            CertificateError::NotValidYetContext { not_before, .. } => dates(
                &which,
                &format!("is not valid before {}", rfc3339(system_time(*not_before))),
                clock,
                "reissue the certificate with a start date in the past",
            ),
            CertificateError::NotValidYet => dates(
                &which,
                "is not valid yet",
                clock,
                "reissue the certificate with a start date in the past",
            ),
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                format!(
                    "{which} is not for TLS servers (its extendedKeyUsage lacks serverAuth): \
                     reissue it with extendedKeyUsage = serverAuth"
                )
            }
            other => format!("{which} was refused ({other:?}); {TRUST_ADVICE}"),
        },
        other => format!("{which} was refused: {other}"),
    };
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(Refusal(
        message,
    )))))
}

/// A date check failed: the clock may be the one at fault, and whether it is synchronised
/// tells which.
fn dates(which: &str, what: &str, clock: &dyn TimeSource, fix: &str) -> String {
    let now = rfc3339(clock.now());
    let (state, advice) = match clock.synchronised() {
        Some(true) => (
            "synchronised by NTP",
            format!("the clock is right: {fix}"),
        ),
        Some(false) => (
            "NOT synchronised since boot",
            format!("the device's clock is probably wrong: let NTP set it (network, timesyncd), else {fix}"),
        ),
        None => (
            "synchronisation unknown: no NTP client found",
            format!("check the device's clock, else {fix}"),
        ),
    };
    format!("{which} {what}; the device's clock says {now} ({state}): {advice}")
}

/// webpki's `DnsName("a.example")` / `IpAddress(10.0.0.1)` as openssl says them.
fn san(presented: &str) -> String {
    let inner = |prefix: &str, suffix: &str| {
        presented
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix(suffix))
            .map(str::to_owned)
    };
    if let Some(dns) = inner("DnsName(\"", "\")") {
        return format!("DNS:{dns}");
    }
    if let Some(ip) = inner("IpAddress(", ")") {
        return format!("IP:{ip}");
    }
    presented.to_owned()
}

fn system_time(t: rustls::pki_types::UnixTime) -> SystemTime {
    SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(t.as_secs())
}

/// A TLS failure, said for an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFailure {
    pub message: String,
    /// It ended the handshake (a refused certificate, either side's): the server never
    /// read a request, even one written after the client's last handshake message.
    pub in_handshake: bool,
}

/// What went wrong in TLS, when `error`'s chain holds a TLS error.
pub fn explain(error: &(dyn std::error::Error + 'static)) -> Option<TlsFailure> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls_error(tls));
        }
        // An io::Error hides the error it wraps from `source()` (and hyper wraps io::Errors
        // in io::Errors): step into it instead.
        next = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}

fn tls_error(e: &rustls::Error) -> TlsFailure {
    let (message, in_handshake) = match e {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => (
            match inner.downcast_ref::<Refusal>() {
                Some(r) => r.0.clone(),
                None => format!("the server's certificate was refused: {inner}"),
            },
            true,
        ),
        rustls::Error::InvalidCertificate(other) => (
            format!("the server's certificate was refused: {other:?}"),
            true,
        ),
        rustls::Error::AlertReceived(alert) => alert_received(*alert),
        other => (format!("TLS error: {other}"), false),
    };
    TlsFailure {
        message,
        in_handshake,
    }
}

/// The server ended the handshake with `alert`: with a server that demands client
/// certificates, this is how it refuses ours (or our lack of one).
fn alert_received(alert: AlertDescription) -> (String, bool) {
    use AlertDescription as A;
    let message = match alert {
        A::CertificateRequired => {
            "the server requires a client certificate: set api.client_cert and \
             api.client_key (a certificate issued by a CA the server trusts, and its key)"
                .to_owned()
        }
        A::BadCertificate
        | A::UnknownCA
        | A::CertificateExpired
        | A::CertificateRevoked
        | A::CertificateUnknown
        | A::UnsupportedCertificate
        | A::AccessDenied => format!(
            "the server refused the client certificate ({alert:?} alert): check that \
             api.client_cert is issued by a CA the server trusts and is still valid (or set \
             api.client_cert and api.client_key if the server requires one)"
        ),
        A::HandshakeFailure => {
            "the server refused the TLS handshake (HandshakeFailure alert): it may require a \
             client certificate (set api.client_cert and api.client_key), or share no TLS \
             version or cipher with this gateway"
                .to_owned()
        }
        // Any other alert may come at any time, after the server read a request.
        other => {
            return (
                format!("the server ended the TLS connection with a {other:?} alert"),
                false,
            )
        }
    };
    (message, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("client error (Connect)")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn an_explanation_is_found_inside_an_io_error() {
        let refusal = rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(
            Arc::new(Refusal("what to do".into())),
        )));
        let e = Outer(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            refusal,
        ));
        let said = explain(&e).unwrap_or_else(|| panic!("not found"));
        assert_eq!(said.message, "what to do");
        assert!(said.in_handshake);
        let plain = Outer(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused",
        ));
        assert_eq!(explain(&plain), None);
    }

    #[test]
    fn a_refused_client_certificate_names_the_settings() {
        for alert in [
            AlertDescription::CertificateRequired,
            AlertDescription::UnknownCA,
        ] {
            let e = Outer(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                rustls::Error::AlertReceived(alert),
            ));
            let failure = explain(&e).unwrap_or_else(|| panic!("not found"));
            assert!(failure.in_handshake);
            let said = failure.message;
            assert!(said.contains("client certificate"), "{said}");
            assert!(said.contains("api.client_cert"), "{said}");
        }
    }

    #[test]
    fn a_clock_of_unknown_state_is_said_so() {
        #[derive(Debug)]
        struct Unknown;
        impl TimeSource for Unknown {
            fn now(&self) -> SystemTime {
                SystemTime::UNIX_EPOCH
            }
            fn synchronised(&self) -> Option<bool> {
                None
            }
        }
        let said = dates("the certificate", "has expired", &Unknown, "renew it");
        assert!(
            said.contains("1970-01-01T00:00:00Z (synchronisation unknown"),
            "{said}"
        );
        assert!(
            said.ends_with("check the device's clock, else renew it"),
            "{said}"
        );
    }
}
