//! `login`, `set-password`, `delete-password`.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;
use secrecy::SecretString;
use zeroize::Zeroizing;

use crate::api::Api;
use crate::auth::password::{self, PasswordSources};
use crate::auth::{AuthError, AuthSettings, TokenManager};
use crate::clock::Clock;
use crate::config::Config;

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Print one JSON object (server, username, password_source, profile and the session:
    /// token expiry times, clock offset) instead of text.
    #[arg(long)]
    pub json: bool,
}

fn username(config: &Config) -> anyhow::Result<&str> {
    match config.api.username.as_deref() {
        Some(u) => Ok(u),
        None => bail!("api.username is not set in the configuration"),
    }
}

/// Where the password would come from now, for `config check`.
pub(super) fn password_origin(config: &Config) -> String {
    let Some(user) = config.api.username.as_deref() else {
        return "not needed until api.username is set".into();
    };
    match PasswordSources::new(user, config.api.password_file.clone()).read() {
        Ok((_, source)) => format!("found ({source})"),
        Err(e) => format!("NOT FOUND: {e}"),
    }
}

/// What one login found: who, with which password source, the profile, the session and
/// the certificate the server showed (https).
pub(super) struct LoginOutcome {
    pub user: String,
    pub source: password::Source,
    pub profile: serde_json::Value,
    pub session: Option<crate::auth::manager::SessionInfo>,
    pub server_certificate: Option<crate::tls::CertSummary>,
}

/// Logs in once with the configured credentials and fetches the profile (for `login` and
/// `doctor`); prints nothing.
pub(super) fn login_once(config: &Config) -> anyhow::Result<LoginOutcome> {
    let user = username(config)?.to_owned();
    let sources = PasswordSources::new(&user, config.api.password_file.clone());
    let (_, source) = sources.read()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let clock = Clock::from_env().map_err(anyhow::Error::msg)?;
    let api = Api::from_config(&config.api, clock.clone())?;
    let manager = TokenManager::new(
        api.clone(),
        Some(user.clone()),
        Some(sources),
        clock,
        AuthSettings::from_config(config),
    );
    runtime.block_on(async {
        let token = manager.access_token().await.map_err(|e| {
            one_shot_error(e).context(format!(
                "login to {} as {user:?} failed",
                config.api.base_url
            ))
        })?;
        let profile = api
            .profile(&token)
            .await
            .context("logged in, but GET /api/auth/profile/ failed")?;
        let session = manager.session_info().await;
        Ok(LoginOutcome {
            user,
            source,
            profile,
            session,
            server_certificate: api.server_certificate(),
        })
    })
}

pub(super) fn login(config: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let LoginOutcome {
        user,
        source,
        profile,
        session,
        server_certificate,
    } = login_once(config)?;
    if json {
        let out = serde_json::json!({
            "server": config.api.base_url,
            "username": user,
            "password_source": source.to_string(),
            "profile": profile,
            "session": session,
            "server_certificate": server_certificate,
        });
        println!("{out}");
    } else {
        println!(
            "logged in to {} as {user:?} (password from {source})",
            config.api.base_url
        );
        println!("profile: {profile:#}");
        if let Some(c) = &server_certificate {
            println!("server certificate: {c}");
        }
        if let Some(s) = session {
            println!("access token expires:  {}", s.access_expires_at);
            println!(
                "refresh token expires: {}",
                s.refresh_expires_at.as_deref().unwrap_or("-")
            );
            println!(
                "clock offset (server - device): {:+.1} s",
                s.clock_offset_secs
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A failed renewal says when the daemon would try again; this command tries once, so the
/// error keeps only the reason.
fn one_shot_error(e: AuthError) -> anyhow::Error {
    match e {
        AuthError::Waiting { reason, .. } => anyhow::Error::msg(reason),
        other => anyhow::Error::new(other),
    }
}

pub(super) fn set_password(config: &Config) -> anyhow::Result<ExitCode> {
    let user = username(config)?;
    let stdin = std::io::stdin();
    let secret: SecretString = if stdin.is_terminal() {
        read_without_echo(&format!("password for {user}: "))?
    } else {
        let mut line = Zeroizing::new(String::new());
        stdin
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from stdin")?;
        line.trim_end_matches(['\n', '\r']).to_owned().into()
    };
    if secrecy::ExposeSecret::expose_secret(&secret).is_empty() {
        bail!("empty password: nothing stored");
    }
    password::keyring_set(user, &secret).context(
        "cannot store the password in the kernel keyring (is keyutils available? in a container, the keyring may be disabled)",
    )?;
    // The key is in this Unix user's persistent keyring: only a daemon running as the
    // same user finds it, and the kernel drops it at reboot or after days unused.
    eprintln!(
        "password stored in the kernel keyring of this Unix user (service {:?}, account {user:?}); \
         the daemon finds it only if this ran as its user (sudo -u profilo-gateway profilo-gateway set-password); \
         it is lost at reboot and after /proc/sys/kernel/keys/persistent_keyring_expiry (3 days by default) unused — \
         use systemd credentials for a permanent setup",
        password::KEYRING_SERVICE
    );
    Ok(ExitCode::SUCCESS)
}

pub(super) fn delete_password(config: &Config) -> anyhow::Result<ExitCode> {
    let user = username(config)?;
    if password::keyring_delete(user)? {
        eprintln!("password removed from the keyring");
    } else {
        eprintln!("no password stored in the keyring for {user:?}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads a line from the terminal with echo off, restoring the terminal afterwards.
fn read_without_echo(prompt: &str) -> anyhow::Result<SecretString> {
    let fd = libc::STDIN_FILENO;
    // SAFETY: termios is plain data; tcgetattr fills it for a terminal fd.
    let mut term: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: fd is stdin, term is a valid pointer.
    if unsafe { libc::tcgetattr(fd, &mut term) } != 0 {
        bail!("cannot read terminal settings");
    }
    let saved = term;
    term.c_lflag &= !libc::ECHO;
    term.c_lflag |= libc::ECHONL;
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    // SAFETY: as above; the settings are restored below whatever happens.
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &term) };
    let mut line = Zeroizing::new(String::new());
    let read = std::io::stdin().lock().read_line(&mut line);
    // SAFETY: restores the saved settings.
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &saved) };
    read.context("cannot read the password")?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_one_shot_login_error_promises_no_next_attempt() {
        let e = AuthError::Waiting {
            until: tokio::time::Instant::now() + std::time::Duration::from_secs(4),
            reason: "login refused for user \"dev\": No active account".into(),
        };
        assert!(e.to_string().contains("next attempt"));
        let shown = format!(
            "{:#}",
            one_shot_error(e).context("login to http://x failed")
        );
        assert!(!shown.contains("next attempt"), "{shown}");
        assert!(shown.contains("login refused for user"), "{shown}");
    }
}
