//! Certificates for the TLS tests, made with rcgen: a private CA, server and client
//! certificates it signs, and self-signed server certificates marked CA:TRUE as
//! `openssl req -x509` makes them. [`ServerTls`] makes [`TestServer`](super::TestServer)
//! speak TLS (gunicorn `--certfile`/`--keyfile`, and `--ca-certs`/`--cert-reqs 2` to
//! require client certificates).

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// TLS for the test server.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// PEM certificate (and chain) and key of the server.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by this CA (PEM).
    pub client_ca: Option<PathBuf>,
    /// PEM certificate + key the harness's own control client presents when `client_ca`
    /// is set.
    pub control_identity: Option<String>,
}

/// A certificate and its key, PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Issued {
    /// Writes `NAME.pem` (0644) and `NAME.key` (0600) into `dir`; returns both paths.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = write_file(dir, &format!("{name}.pem"), &self.cert_pem, 0o644);
        let key = write_file(dir, &format!("{name}.key"), &self.key_pem, 0o600);
        (cert, key)
    }
}

/// A private CA.
pub struct Ca {
    params: rcgen::CertificateParams,
    key: rcgen::KeyPair,
    pub cert_pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Profilo Test");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let key = rcgen::KeyPair::generate().expect("CA key");
        let cert_pem = params.self_signed(&key).expect("CA certificate").pem();
        Ca {
            params,
            key,
            cert_pem,
        }
    }

    /// A server certificate for `names` (DNS names or IP addresses), valid from 2020 until
    /// `not_after` (default: far away).
    pub fn server(&self, names: &[&str], not_after: Option<(i32, u8, u8)>) -> Issued {
        self.issue(names, not_after, rcgen::ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate (extendedKeyUsage clientAuth) for a device.
    pub fn client(&self, name: &str) -> Issued {
        self.issue(&[name], None, rcgen::ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(
        &self,
        names: &[&str],
        not_after: Option<(i32, u8, u8)>,
        usage: rcgen::ExtendedKeyUsagePurpose,
    ) -> Issued {
        let mut params = leaf_params(names, not_after);
        params.extended_key_usages = vec![usage];
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).expect("leaf certificate");
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// A self-signed server certificate as `openssl req -x509 -addext subjectAltName=...`
/// makes it: subject = issuer, CA:TRUE.
pub fn self_signed(names: &[&str]) -> Issued {
    let mut params = leaf_params(names, None);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("self-signed certificate");
    Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

fn leaf_params(names: &[&str], not_after: Option<(i32, u8, u8)>) -> rcgen::CertificateParams {
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("certificate params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, names[0]);
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    if let Some((y, m, d)) = not_after {
        params.not_after = rcgen::date_time_ymd(y, m, d);
    }
    params
}

/// Writes `text` to `dir/name` with `mode` (replacing it); returns the path.
pub fn write_file(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&path)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
    f.write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    path
}
