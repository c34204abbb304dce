//! Reading the files the TLS settings name (`api.ca_file`, `api.client_cert`,
//! `api.client_key`), with errors that name the key and say what to do. The same reading
//! validates the configuration at load and builds the client, so both agree.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use zeroize::Zeroizing;

/// The TLS settings of `[api]`, as paths.
#[derive(Debug, Clone, Copy)]
pub struct TlsFiles<'a> {
    /// PEM certificates trusted besides (or, with `system_roots = false`, instead of) the
    /// system store; a server certificate found in it is accepted as it is (pinned).
    pub ca_file: Option<&'a Path>,
    pub system_roots: bool,
    pub client_cert: Option<&'a Path>,
    pub client_key: Option<&'a Path>,
}

/// A TLS setting that cannot be used, by its key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}` {message}")]
pub struct SettingError {
    pub key: &'static str,
    pub message: String,
}

fn setting(key: &'static str, message: String) -> SettingError {
    SettingError { key, message }
}

/// What the files hold, checked.
pub(super) struct Loaded {
    pub trusted: Vec<CertificateDer<'static>>,
    pub client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
}

pub(super) fn load(
    files: &TlsFiles<'_>,
    provider: &CryptoProvider,
) -> Result<Loaded, SettingError> {
    if !files.system_roots && files.ca_file.is_none() {
        return Err(setting(
            "api.system_roots",
            "is false but api.ca_file is not set: no certificate would be trusted; set api.ca_file \
             to the server's CA (or its self-signed certificate)"
                .into(),
        ));
    }
    let trusted = match files.ca_file {
        Some(path) => certificates("api.ca_file", path)?,
        None => Vec::new(),
    };
    // Each one must make a trust anchor (webpki's reading of it).
    for (i, cert) in trusted.iter().enumerate() {
        let mut store = rustls::RootCertStore::empty();
        store.add(cert.clone()).map_err(|e| {
            setting(
                "api.ca_file",
                format!("certificate #{} cannot be trusted: {e}", i + 1),
            )
        })?;
    }
    let client = match (files.client_cert, files.client_key) {
        (None, None) => None,
        (Some(_), None) => {
            return Err(setting(
                "api.client_key",
                "is not set but api.client_cert is: set both (the key of that certificate)".into(),
            ))
        }
        (None, Some(_)) => {
            return Err(setting(
                "api.client_cert",
                "is not set but api.client_key is: set both".into(),
            ))
        }
        (Some(cert_path), Some(key_path)) => {
            let chain = certificates("api.client_cert", cert_path)?;
            let key = private_key(key_path)?;
            rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), provider)
                .map_err(|e| match e {
                    rustls::Error::InconsistentKeys(_) => setting(
                        "api.client_key",
                        format!(
                            "{} is not the key of the certificate in api.client_cert {}",
                            key_path.display(),
                            cert_path.display()
                        ),
                    ),
                    other => setting(
                        "api.client_key",
                        format!("{} cannot be used: {other}", key_path.display()),
                    ),
                })?;
            Some((chain, key))
        }
    };
    Ok(Loaded { trusted, client })
}

/// Every certificate of a PEM file; at least one.
fn certificates(
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, SettingError> {
    let pem = std::fs::read(path)
        .map_err(|e| setting(key, format!("cannot read {}: {e}", path.display())))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| setting(key, format!("{} is not valid PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(setting(
            key,
            format!(
                "{} holds no certificate (a PEM block \"-----BEGIN CERTIFICATE-----\")",
                path.display()
            ),
        ));
    }
    Ok(certs)
}

/// The client key, refused (like the password file) when group or others can read it. The
/// mode checked is the one of the handle read, whatever happens to the path meanwhile.
fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, SettingError> {
    let key = "api.client_key";
    let read_err = |e: std::io::Error| setting(key, format!("cannot read {}: {e}", path.display()));
    let mut file = std::fs::File::open(path).map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(setting(
            key,
            format!(
                "{path} is readable by group or others (mode {:o}): run `chmod 600 {path}` (and \
                 chown it to the service user)",
                mode & 0o7777,
                path = path.display()
            ),
        ));
    }
    // Sized up front: a regrown buffer would free a copy of the key unwiped.
    let capacity = usize::try_from(meta.len()).unwrap_or(0).saturating_add(1);
    let mut pem = Zeroizing::new(Vec::with_capacity(capacity));
    file.read_to_end(&mut pem).map_err(read_err)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        let encrypted = pem.windows(9).any(|w| w == b"ENCRYPTED");
        let message = match e {
            _ if encrypted => format!(
                "{path} is encrypted, and the daemon has nobody to ask for the passphrase: \
                 decrypt it (`openssl pkey -in {path} -out {path}.plain`, then chmod 600)",
                path = path.display()
            ),
            rustls::pki_types::pem::Error::NoItemsFound => format!(
                "{} holds no private key (a PEM block \"-----BEGIN PRIVATE KEY-----\", \
                 \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\")",
                path.display()
            ),
            other => format!("{} is not valid PEM: {other}", path.display()),
        };
        setting(key, message)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::OpenOptionsExt;

    struct Dir(tempfile::TempDir);

    impl Dir {
        fn new() -> Dir {
            Dir(tempfile::tempdir().unwrap_or_else(|e| panic!("{e}")))
        }
        fn write(&self, name: &str, text: &str, mode: u32) -> std::path::PathBuf {
            let path = self.0.path().join(name);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&path)
                .unwrap_or_else(|e| panic!("{e}"));
            std::io::Write::write_all(&mut f, text.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
            path
        }
    }

    fn self_signed() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
        let cert = rcgen::CertificateParams::new(vec!["gw.example".to_owned()])
            .and_then(|p| p.self_signed(&key))
            .unwrap_or_else(|e| panic!("{e}"));
        (cert.pem(), key.serialize_pem())
    }

    fn provider() -> CryptoProvider {
        rustls::crypto::ring::default_provider()
    }

    fn files<'a>(
        ca: Option<&'a Path>,
        cert: Option<&'a Path>,
        key: Option<&'a Path>,
    ) -> TlsFiles<'a> {
        TlsFiles {
            ca_file: ca,
            system_roots: true,
            client_cert: cert,
            client_key: key,
        }
    }

    fn error(f: &TlsFiles<'_>) -> SettingError {
        match load(f, &provider()) {
            Ok(_) => panic!("loaded"),
            Err(e) => e,
        }
    }

    #[test]
    fn ca_file_with_several_certificates_loads() {
        let dir = Dir::new();
        let (a, _) = self_signed();
        let (b, _) = self_signed();
        let ca = dir.write("ca.pem", &format!("{a}{b}"), 0o644);
        let loaded =
            load(&files(Some(&ca), None, None), &provider()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(loaded.trusted.len(), 2);
        assert!(loaded.client.is_none());
    }

    #[test]
    fn unusable_ca_files_name_the_key_and_the_file() {
        let dir = Dir::new();
        let empty = dir.write("empty.pem", "# nothing\n", 0o644);
        let e = error(&files(Some(&empty), None, None));
        assert_eq!(e.key, "api.ca_file");
        assert!(e.message.contains("holds no certificate"), "{e}");
        let missing = dir.0.path().join("missing.pem");
        let e = error(&files(Some(&missing), None, None));
        assert!(
            e.message.contains("missing.pem") && e.message.contains("cannot read"),
            "{e}"
        );
        let broken = dir.write("broken.pem", "-----BEGIN CERTIFICATE-----\n!!!\n", 0o644);
        assert_eq!(error(&files(Some(&broken), None, None)).key, "api.ca_file");
        let no_roots = TlsFiles {
            system_roots: false,
            ..files(None, None, None)
        };
        assert_eq!(error(&no_roots).key, "api.system_roots");
    }

    #[test]
    fn client_key_readable_by_others_is_refused() {
        let dir = Dir::new();
        let (cert, key) = self_signed();
        let cert = dir.write("client.pem", &cert, 0o644);
        let open = dir.write("open.key", &key, 0o640);
        let e = error(&files(None, Some(&cert), Some(&open)));
        assert_eq!(e.key, "api.client_key");
        assert!(
            e.message.contains("mode 640") && e.message.contains("chmod 600"),
            "{e}"
        );
        let closed = dir.write("closed.key", &key, 0o600);
        let loaded = load(&files(None, Some(&cert), Some(&closed)), &provider())
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(loaded.client.is_some());
    }

    #[test]
    fn client_cert_and_key_go_together_and_must_match() {
        let dir = Dir::new();
        let (cert, _) = self_signed();
        let (_, other_key) = self_signed();
        let cert = dir.write("client.pem", &cert, 0o644);
        let key = dir.write("other.key", &other_key, 0o600);
        let e = error(&files(None, Some(&cert), Some(&key)));
        assert!(
            e.message.contains("is not the key of the certificate"),
            "{e}"
        );
        assert_eq!(error(&files(None, Some(&cert), None)).key, "api.client_key");
        assert_eq!(error(&files(None, None, Some(&key))).key, "api.client_cert");
        let not_a_key = dir.write(
            "cert-as.key",
            &std::fs::read_to_string(&cert).unwrap_or_default(),
            0o600,
        );
        let e = error(&files(None, Some(&cert), Some(&not_a_key)));
        assert!(e.message.contains("holds no private key"), "{e}");
        let encrypted = dir.write(
            "enc.key",
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
            0o600,
        );
        let e = error(&files(None, Some(&cert), Some(&encrypted)));
        assert!(e.message.contains("is encrypted"), "{e}");
    }
}
