//! The checks of the way to the server: the password, DNS, TCP, the TLS certificate and
//! the login (with the clock offset the server's answer shows).

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::SystemTime;

use super::{Check, CERT_WARN};
use crate::auth::password::PasswordSources;
use crate::config::Config;
use crate::tls::CertSummary;

pub(super) fn password_check(config: &Config) -> Check {
    let Some(user) = config.api.username.as_deref() else {
        return Check::warn(
            "password",
            "api.username is not set: readings are queued but never uploaded",
            "set `username = \"...\"` under [api] in the config, then store the password (set-password, api.password_file or a systemd credential)",
        );
    };
    match PasswordSources::new(user, config.api.password_file.clone()).read() {
        Ok((_, source)) => Check::ok("password", format!("for {user:?}, from the {source}")),
        Err(e) => Check::fail(
            "password",
            e.to_string(),
            "store it: a systemd credential (README), api.password_file (mode 0600), or `sudo -u profilo-gateway profilo-gateway set-password`",
        ),
    }
}

/// DNS and TCP; true when the server accepts connections.
pub(super) fn network_checks(config: &Config, checks: &mut Vec<Check>) -> bool {
    let timeout = config.api.request_timeout;
    let Ok(url) = reqwest::Url::parse(&config.api.base_url) else {
        // Validated with the configuration; unreachable in practice.
        checks.push(Check::fail(
            "dns",
            "api.base_url is not a URL",
            "fix api.base_url",
        ));
        return false;
    };
    let host = url
        .host_str()
        .unwrap_or_default()
        .trim_matches(['[', ']'])
        .to_owned();
    let port = url.port_or_known_default().unwrap_or(80);
    let addrs: Vec<SocketAddr> = match (host.as_str(), port).to_socket_addrs() {
        Ok(a) => a.collect(),
        Err(e) => {
            checks.push(Check::fail(
                "dns",
                format!("cannot resolve {host}: {e}"),
                "check api.base_url's host name and /etc/resolv.conf (`getent hosts HOST`)",
            ));
            return false;
        }
    };
    let list: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
    checks.push(Check::ok("dns", format!("{host} is {}", list.join(", "))));
    let mut last_error = String::from("no address");
    let mut connected = None;
    for addr in &addrs {
        match TcpStream::connect_timeout(addr, timeout) {
            Ok(_) => {
                connected = Some(*addr);
                break;
            }
            Err(e) => last_error = format!("{addr}: {e}"),
        }
    }
    let Some(addr) = connected else {
        checks.push(Check::fail(
            "tcp",
            format!("cannot connect to {host} port {port} ({last_error})"),
            "is the server up, and is this port open from here (firewall, VPN, api.base_url's port)?",
        ));
        return false;
    };
    checks.push(Check::ok("tcp", format!("{addr} accepts connections")));
    true
}

/// The TLS verdict from the certificate the login's handshake saw (src/tls), and whether
/// the login got through (a refused certificate fails the login, which says why).
pub(super) fn tls_check(cert: Option<&CertSummary>, login_ok: bool, now: SystemTime) -> Check {
    let fix = "renew the server's certificate, or check that api.base_url names the host it was issued for (api.ca_file for a private CA)";
    let Some(c) = cert else {
        return if login_ok {
            Check::ok(
                "tls",
                "handshake verified by the login (no certificate details seen)",
            )
        } else {
            Check::fail(
                "tls",
                "no verified handshake: see the login check's error",
                fix,
            )
        };
    };
    let left = c.not_after_time.duration_since(now);
    match left {
        Err(_) => Check::fail(
            "tls",
            format!("{}: expired at {}", c.subject, c.not_after),
            fix,
        ),
        Ok(left) if left < CERT_WARN => Check::warn(
            "tls",
            format!(
                "{}: expires at {}, in {} day(s)",
                c.subject,
                c.not_after,
                left.as_secs() / 86_400
            ),
            fix,
        ),
        Ok(left) => Check::ok(
            "tls",
            format!(
                "{} (issued by {}): valid until {} ({} days)",
                c.subject,
                c.issuer,
                c.not_after,
                left.as_secs() / 86_400
            ),
        ),
    }
}

/// The login's verdict, and the certificate its handshake saw (https).
pub(super) fn login_check(config: &Config, can_try: bool) -> (Check, Option<CertSummary>) {
    if !can_try {
        let check = Check::warn(
            "login",
            "not tried: no password, or the server cannot be reached (see above)",
            "fix the checks above first",
        );
        return (check, None);
    }
    match super::super::login::login_once(config) {
        Ok(outcome) => {
            let offset = outcome.session.map(|s| s.clock_offset_secs);
            (
                offset_check(&outcome.user, offset),
                outcome.server_certificate,
            )
        }
        Err(e) => {
            let check = Check::fail(
                "login",
                super::super::error_report(&e),
                "check api.username and the password (a wrong one is refused as above); `profilo-gateway login` tries again",
            );
            (check, None)
        }
    }
}

/// A login's verdict from the clock offset it measured.
pub(super) fn offset_check(user: &str, offset_secs: Option<f64>) -> Check {
    let limit = crate::clock::SERVER_AGREEMENT_MS as f64 / 1000.0;
    match offset_secs {
        Some(o) if o.abs() > limit => Check::warn(
            "login",
            format!("as {user:?}; the server's clock is {o:+.1} s from this one"),
            "synchronise this clock (`timedatectl set-ntp true`; `timedatectl timesync-status`)",
        ),
        Some(o) => Check::ok("login", format!("as {user:?}; clock offset {o:+.1} s")),
        None => Check::ok("login", format!("as {user:?}")),
    }
}
