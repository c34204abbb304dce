//! TLS as private servers are deployed (issue 15), against the real Django + SimpleJWT test
//! server under gunicorn over TLS, with certificates made here (rcgen): a private CA in
//! `api.ca_file`, a self-signed certificate pinned, host-name and date errors, client
//! certificates (mTLS), a proxy, and login/refresh/rotation over TLS.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::tls::{self_signed, write_file};
use common::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(40);

/// A TLS test server with `cert` (and, for mTLS, clients signed by `client_ca`); the files
/// live in the returned directory, which must outlive the server.
/// A TLS test server and the directory of its certificates (which must outlive it).
struct Served {
    server: TestServer,
    dir: tempfile::TempDir,
}

impl Served {
    /// Writes a PEM file (mode 0644) next to the server's certificates; returns its path.
    fn file(&self, name: &str, pem: &str) -> String {
        path_str(&write_file(self.dir.path(), name, pem, 0o644))
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// A server whose certificate for `names` a private CA signed, and the CA's certificate
/// file (for api.ca_file).
fn private_ca_server(
    names: &[&str],
    not_after: Option<(i32, u8, u8)>,
    options: ServerOptions,
) -> (Served, String) {
    let ca = Ca::new("Profilo Private CA");
    let served = tls_server(&ca.server(names, not_after), None, options);
    let ca_file = served.file("ca.pem", &ca.cert_pem);
    (served, ca_file)
}

fn tls_server(cert: &Issued, client_ca: Option<&Ca>, options: ServerOptions) -> Served {
    let dir = tempfile::Builder::new()
        .prefix("profilo-tls-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("temporary directory");
    let (cert_path, key_path) = cert.write(dir.path(), "server");
    let (client_ca_path, control_identity) = match client_ca {
        Some(ca) => {
            let control = ca.client("test-harness");
            (
                Some(write_file(dir.path(), "client-ca.pem", &ca.cert_pem, 0o644)),
                Some(format!("{}{}", control.cert_pem, control.key_pem)),
            )
        }
        None => (None, None),
    };
    let server = TestServer::start(ServerOptions {
        tls: Some(ServerTls {
            cert: cert_path,
            key: key_path,
            client_ca: client_ca_path,
            control_identity,
        }),
        ..options
    });
    server.create_user(DEFAULT_USERNAME, DEFAULT_PASSWORD);
    Served { server, dir }
}

/// A gateway for `server` whose `[api]` gets `settings` (through `PROFILO_GATEWAY__API__*`).
fn gateway(server: &TestServer, settings: &[(&str, String)]) -> Gateway {
    gateway_with_env(server, settings, &[])
}

fn gateway_with_env(
    server: &TestServer,
    settings: &[(&str, String)],
    env: &[(&str, &str)],
) -> Gateway {
    let mut all: Vec<(String, String)> = settings
        .iter()
        .map(|(k, v)| {
            (
                format!("PROFILO_GATEWAY__API__{}", k.to_uppercase()),
                v.clone(),
            )
        })
        .collect();
    all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Gateway::new(
        &server.base_url(),
        GatewayOptions {
            env: all,
            ..Default::default()
        },
    )
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// `login` must fail; returns its stderr.
fn login_fails(gw: &Gateway) -> String {
    let (status, stdout, stderr) = gw.cli(&["login"]);
    assert!(
        !status.success(),
        "login succeeded\nstdout: {stdout}\nstderr: {stderr}"
    );
    // Said in the gateway's words, not as rustls's debug output.
    assert!(!stderr.contains("OtherError"), "{stderr}");
    eprintln!("login error: {stderr}");
    stderr
}

/// Runs the daemon until `n` readings are on the server, then stops it.
fn uploads(gw: &mut Gateway, server: &TestServer, n: usize) {
    gw.spawn();
    gw.wait_until(&format!("{n} readings on the server"), WAIT, || {
        server.readings().len() >= n
    });
    assert!(gw.sigterm(Duration::from_secs(10)).status.success());
}

/// Runs the daemon until its log says `what`; nothing may reach the server meanwhile.
fn daemon_refused(gw: &mut Gateway, server: &TestServer, what: &str) {
    gw.spawn();
    gw.wait_until(&format!("the daemon's log to say {what:?}"), WAIT, || {
        gw.log_text().contains(what)
    });
    assert!(gw.sigterm(Duration::from_secs(10)).status.success());
    assert_eq!(server.readings().len(), 0, "a reading went through");
    assert!(gw.queue_counts().pending > 0, "readings are kept queued");
}

#[test]
fn private_ca_in_ca_file_uploads_and_login_shows_the_certificate() {
    let (served, ca_file) = private_ca_server(
        &["127.0.0.1", "localhost"],
        Some((2099, 12, 31)),
        ServerOptions::default(),
    );
    let server = &served.server;
    // The system store is skipped: the private CA alone is trusted.
    let mut gw = gateway(
        server,
        &[("ca_file", ca_file), ("system_roots", "false".into())],
    );

    let text = gw.cli_ok(&["login"]);
    assert!(
        text.contains(
            "server certificate: subject \"CN=127.0.0.1\", issued by \"CN=Profilo Private CA, O=Profilo Test\""
        ),
        "{text}"
    );
    assert!(text.contains("to 2099-12-31T00:00:00Z"), "{text}");
    let json: Value = serde_json::from_str(&gw.cli_ok(&["login", "--json"])).expect("JSON");
    let cert = &json["server_certificate"];
    assert_eq!(cert["subject"], "CN=127.0.0.1", "{json}");
    assert_eq!(cert["issuer"], "CN=Profilo Private CA, O=Profilo Test");
    assert_eq!(cert["not_after"], "2099-12-31T00:00:00Z");
    assert_eq!(cert["not_before"], "2020-01-01T00:00:00Z");

    uploads(&mut gw, server, 5);
}

#[test]
fn without_ca_file_a_private_ca_is_refused_naming_api_ca_file() {
    let (served, _) = private_ca_server(&["127.0.0.1"], None, ServerOptions::default());
    let server = &served.server;
    let mut gw = gateway(server, &[]);
    let err = login_fails(&gw);
    assert!(
        err.contains(
            "is not signed by a CA this gateway trusts (the system store; api.ca_file is not set)"
        ),
        "{err}"
    );
    assert!(
        err.contains("put the server's CA, or its self-signed certificate, in api.ca_file"),
        "{err}"
    );
    assert!(err.contains("issued by \"CN=Profilo Private CA"), "{err}");
    daemon_refused(&mut gw, server, "in api.ca_file");
}

#[test]
fn a_self_signed_certificate_in_ca_file_uploads_and_another_is_refused() {
    let cert = self_signed(&["127.0.0.1"]);
    let served = tls_server(&cert, None, ServerOptions::default());
    let server = &served.server;
    let pinned = served.file("pinned.pem", &cert.cert_pem);
    let mut gw = gateway(server, &[("ca_file", pinned)]);
    let text = gw.cli_ok(&["login"]);
    assert!(
        text.contains("subject \"CN=127.0.0.1\", issued by \"CN=127.0.0.1\""),
        "{text}"
    );
    uploads(&mut gw, server, 3);

    // Another self-signed certificate for the same name: not the one the server has.
    let other = self_signed(&["127.0.0.1"]);
    let wrong = served.file("other.pem", &other.cert_pem);
    let mut gw = gateway(server, &[("ca_file", wrong.clone())]);
    let err = login_fails(&gw);
    assert!(
        err.contains("is self-signed and not in api.ca_file"),
        "{err}"
    );
    assert!(err.contains(&wrong), "{err}");
    let before = server.readings().len();
    gw.spawn();
    gw.wait_until("the refusal in the daemon's log", WAIT, || {
        gw.log_text()
            .contains("is self-signed and not in api.ca_file")
    });
    assert!(gw.sigterm(Duration::from_secs(10)).status.success());
    assert_eq!(server.readings().len(), before);
}

#[test]
fn a_host_name_mismatch_names_both_names() {
    let (served, ca_file) = private_ca_server(
        &["profilo.example", "api.profilo.example"],
        None,
        ServerOptions::default(),
    );
    let server = &served.server;
    let gw = gateway(server, &[("ca_file", ca_file)]);
    let err = login_fails(&gw);
    assert!(
        err.contains("is for DNS:profilo.example, DNS:api.profilo.example, not for 127.0.0.1"),
        "{err}"
    );
    assert!(err.contains("subjectAltName IP:127.0.0.1"), "{err}");
}

#[test]
fn expired_and_not_yet_valid_certificates_say_the_dates_and_the_clock() {
    let (served, ca_file) =
        private_ca_server(&["127.0.0.1"], Some((2021, 1, 1)), ServerOptions::default());
    let server = &served.server;
    let settings = [("ca_file", ca_file)];

    let gw = gateway_with_env(
        server,
        &settings,
        &[("PROFILO_GATEWAY_CLOCK_SYNC", "synced")],
    );
    let err = login_fails(&gw);
    assert!(err.contains("expired at 2021-01-01T00:00:00Z"), "{err}");
    assert!(
        err.contains("(synchronised by NTP): the clock is right: renew the server's certificate"),
        "{err}"
    );

    // A clock 3000 days behind (2018), not synchronised: the clock is blamed.
    let gw = gateway_with_env(
        server,
        &settings,
        &[
            ("PROFILO_GATEWAY_CLOCK_SYNC", "unsynced"),
            ("PROFILO_GATEWAY_CLOCK_SKEW", "-3000d"),
        ],
    );
    let err = login_fails(&gw);
    assert!(
        err.contains("is not valid before 2020-01-01T00:00:00Z"),
        "{err}"
    );
    assert!(err.contains("(NOT synchronised since boot)"), "{err}");
    assert!(
        err.contains("the device's clock is probably wrong"),
        "{err}"
    );
}

#[test]
fn mtls_uploads_with_a_client_certificate_and_not_without() {
    let server_ca = Ca::new("Profilo Server CA");
    let device_ca = Ca::new("Profilo Device CA");
    let served = tls_server(
        &server_ca.server(&["127.0.0.1"], None),
        Some(&device_ca),
        ServerOptions::default(),
    );
    let server = &served.server;
    let ca_file = served.file("ca.pem", &server_ca.cert_pem);
    let (cert, key) = device_ca
        .client("gateway-0042")
        .write(served.dir(), "device");
    let with_cert = [
        ("ca_file", ca_file.clone()),
        ("client_cert", path_str(&cert)),
        ("client_key", path_str(&key)),
    ];

    let mut gw = gateway(server, &with_cert);
    gw.cli_ok(&["login"]);
    uploads(&mut gw, server, 3);
    let uploaded = server.readings().len();

    // No client certificate: the server ends the handshake.
    let mut gw = gateway(server, &[("ca_file", ca_file.clone())]);
    let err = login_fails(&gw);
    assert!(err.contains("client certificate"), "{err}");
    assert!(
        err.contains("set api.client_cert and api.client_key"),
        "{err}"
    );
    daemon_refused_after(&mut gw, server, uploaded, "client certificate");

    // A client certificate from a CA the server does not trust.
    let stranger = Ca::new("Someone Else's CA");
    let (cert, key) = stranger
        .client("gateway-0042")
        .write(served.dir(), "stranger");
    let gw = gateway(
        server,
        &[
            ("ca_file", ca_file.clone()),
            ("client_cert", path_str(&cert)),
            ("client_key", path_str(&key)),
        ],
    );
    let err = login_fails(&gw);
    assert!(
        err.contains("the server refused the client certificate"),
        "{err}"
    );

    // A key that group or others can read is a configuration error (exit 78).
    let (cert, key) = device_ca.client("gateway-0042").write(served.dir(), "open");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod");
    let gw = gateway(
        server,
        &[
            ("ca_file", ca_file),
            ("client_cert", path_str(&cert)),
            ("client_key", path_str(&key)),
        ],
    );
    let (status, _, stderr) = gw.cli(&["config", "check"]);
    assert_eq!(status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("`api.client_key`"), "{stderr}");
    assert!(
        stderr.contains("readable by group or others (mode 644)"),
        "{stderr}"
    );
    assert_eq!(server.readings().len(), uploaded);
}

/// Like [`daemon_refused`] on a server that already holds `already` readings.
fn daemon_refused_after(gw: &mut Gateway, server: &TestServer, already: usize, what: &str) {
    gw.spawn();
    gw.wait_until(&format!("the daemon's log to say {what:?}"), WAIT, || {
        gw.log_text().contains(what)
    });
    assert!(gw.sigterm(Duration::from_secs(10)).status.success());
    assert_eq!(server.readings().len(), already, "a reading went through");
}

#[test]
fn login_refresh_and_rotation_work_over_tls() {
    let (served, ca_file) = private_ca_server(
        &["127.0.0.1"],
        None,
        ServerOptions {
            access_lifetime: Duration::from_secs(2),
            ..Default::default()
        },
    );
    let server = &served.server;
    let mut gw = gateway(server, &[("ca_file", ca_file)]);
    gw.spawn();
    // Each refresh rotates the refresh token and blacklists the old one: three refreshes
    // without a failure or a second login mean every new token was kept.
    gw.wait_until("three token refreshes", Duration::from_secs(60), || {
        server.stats().refresh_ok >= 3
    });
    let after_refreshes = server.readings().len();
    gw.wait_until("readings after the refreshes", WAIT, || {
        server.readings().len() > after_refreshes
    });
    assert!(gw.sigterm(Duration::from_secs(10)).status.success());
    let stats = server.stats();
    assert_eq!(stats.login_ok, 1, "{stats:?}");
    assert_eq!(stats.refresh_failed, 0, "{stats:?}");
    assert_eq!(stats.login_failed, 0, "{stats:?}");
}

/// An HTTP CONNECT proxy on 127.0.0.1 that tunnels to anywhere on 127.0.0.1 and remembers
/// what it was asked for.
struct ConnectProxy {
    port: u16,
    asked: Arc<Mutex<Vec<String>>>,
    tunnels: Arc<AtomicUsize>,
}

impl ConnectProxy {
    fn start() -> ConnectProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let tunnels = Arc::new(AtomicUsize::new(0));
        let (a, t) = (asked.clone(), tunnels.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (a, t) = (a.clone(), t.clone());
                std::thread::spawn(move || tunnel(client, &a, &t));
            }
        });
        ConnectProxy {
            port,
            asked,
            tunnels,
        }
    }
}

fn tunnel(client: TcpStream, asked: &Mutex<Vec<String>>, tunnels: &AtomicUsize) {
    let mut reader = BufReader::new(client.try_clone().expect("clone"));
    let mut request = String::new();
    if reader.read_line(&mut request).is_err() {
        return;
    }
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok() && line.trim_end() != "" {
        line.clear();
    }
    asked
        .lock()
        .expect("lock")
        .push(request.trim_end().to_owned());
    let target = request
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    let mut client = client;
    if !request.starts_with("CONNECT ") || !target.starts_with("127.0.0.1:") {
        let _ = client.write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n");
        return;
    }
    let Ok(upstream) = TcpStream::connect(&target) else {
        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n");
        return;
    };
    tunnels.fetch_add(1, Ordering::Relaxed);
    let _ = client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n");
    let (mut up_w, mut client_w) = (upstream.try_clone().expect("clone"), client);
    let mut up_r = upstream;
    let mut client_r = reader;
    let forward = std::thread::spawn(move || {
        let _ = std::io::copy(&mut client_r, &mut up_w);
        let _ = up_w.shutdown(std::net::Shutdown::Write);
    });
    let _ = std::io::copy(&mut up_r, &mut client_w);
    let _ = client_w.shutdown(std::net::Shutdown::Write);
    let _ = forward.join();
}

#[test]
fn api_proxy_carries_every_request() {
    let (served, ca_file) = private_ca_server(&["127.0.0.1"], None, ServerOptions::default());
    let server = &served.server;
    let proxy = ConnectProxy::start();
    // The harness sets NO_PROXY=127.0.0.1: api.proxy is used all the same.
    let mut gw = gateway(
        server,
        &[
            ("ca_file", ca_file),
            ("proxy", format!("http://127.0.0.1:{}", proxy.port)),
        ],
    );
    uploads(&mut gw, server, 3);
    let asked = proxy.asked.lock().expect("lock").clone();
    assert!(proxy.tunnels.load(Ordering::Relaxed) >= 1, "{asked:?}");
    let expected = format!("CONNECT 127.0.0.1:{} HTTP/1.1", server.port());
    assert!(asked.iter().all(|a| a == &expected), "{asked:?}");

    // Credentials in api.proxy would be printed by `config check`: refused.
    let gw = gateway(
        server,
        &[("proxy", "http://user:secret@127.0.0.1:3128".into())],
    );
    let (status, _, stderr) = gw.cli(&["config", "check"]);
    assert_eq!(status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("`api.proxy`") && stderr.contains("HTTPS_PROXY"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("secret"),
        "the proxy's password was printed: {stderr}"
    );
}

#[test]
fn doctor_names_the_certificate_and_its_expiry_and_fails_on_an_untrusted_one() {
    let (served, ca_file) = private_ca_server(
        &["127.0.0.1", "localhost"],
        Some((2099, 12, 31)),
        ServerOptions::default(),
    );
    let server = &served.server;
    let gw = gateway(
        server,
        &[("ca_file", ca_file), ("system_roots", "false".into())],
    );
    let (code, report) = doctor(&gw);
    assert_eq!(code, 0, "{report:#}");
    let tls = doctor_check(&report, "tls");
    assert_eq!(tls["level"], "ok", "{tls}");
    let detail = tls["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("CN=127.0.0.1"), "{tls}");
    assert!(detail.contains("valid until 2099-12-31T00:00:00Z"), "{tls}");
    // Without the private CA the handshake is refused: TLS and login fail, with fixes.
    let untrusting = gateway(server, &[]);
    let (code, report) = doctor(&untrusting);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(doctor_level(&report, "tls"), "fail", "{report:#}");
    let login = doctor_check(&report, "login");
    assert!(
        login["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("api.ca_file"),
        "{login}"
    );
}
