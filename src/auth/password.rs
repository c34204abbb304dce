//! Where the device password comes from, in order: the systemd credential
//! `$CREDENTIALS_DIRECTORY/api-password`, `api.password_file`, the kernel keyring
//! (service `profilo-gateway`, account = username), env `PROFILO_GATEWAY_PASSWORD`.
//! Read afresh at every login attempt, so fixing a wrong password needs no restart.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use secrecy::SecretString;
use zeroize::Zeroizing;

pub const CREDENTIAL_NAME: &str = "api-password";
pub const KEYRING_SERVICE: &str = "profilo-gateway";
pub const PASSWORD_ENV: &str = "PROFILO_GATEWAY_PASSWORD";

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("no password configured: provide the systemd credential `{CREDENTIAL_NAME}` (LoadCredential=), set api.password_file, run `profilo-gateway set-password`, or set {PASSWORD_ENV}")]
    None,
    #[error("password file {path} is readable by group or others (mode {mode:o}): run `chmod 600 {path}` (and chown it to the service user)")]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("cannot read password file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("password file {0} is empty")]
    Empty(PathBuf),
    #[error("keyring: {0}")]
    Keyring(String),
}

/// Which source gave the password (for `login` and logs; never the password itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    SystemdCredential,
    File,
    Keyring,
    Env,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Source::SystemdCredential => "systemd credential",
            Source::File => "password file",
            Source::Keyring => "keyring",
            Source::Env => PASSWORD_ENV,
        })
    }
}

#[derive(Debug, Clone)]
pub struct PasswordSources {
    pub credentials_dir: Option<PathBuf>,
    pub password_file: Option<PathBuf>,
    pub username: String,
    pub use_keyring: bool,
}

impl PasswordSources {
    pub fn new(username: &str, password_file: Option<PathBuf>) -> Self {
        PasswordSources {
            credentials_dir: std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from),
            password_file,
            username: username.to_owned(),
            use_keyring: true,
        }
    }

    /// The password from the first source that has one.
    pub fn read(&self) -> Result<(SecretString, Source), PasswordError> {
        if let Some(dir) = &self.credentials_dir {
            let path = dir.join(CREDENTIAL_NAME);
            // systemd makes the credential readable by the service alone; no mode check.
            if path.exists() {
                return read_file(&path, false).map(|p| (p, Source::SystemdCredential));
            }
        }
        if let Some(path) = &self.password_file {
            return read_file(path, true).map(|p| (p, Source::File));
        }
        if self.use_keyring {
            match keyring_get(&self.username) {
                Ok(Some(p)) => return Ok((p, Source::Keyring)),
                Ok(None) => {}
                Err(e) => tracing::debug!("keyring not usable: {e}"),
            }
        }
        match std::env::var(PASSWORD_ENV) {
            Ok(p) if !p.is_empty() => Ok((p.into(), Source::Env)),
            _ => Err(PasswordError::None),
        }
    }
}

fn read_file(path: &Path, check_mode: bool) -> Result<SecretString, PasswordError> {
    read_file_checked(path, check_mode, || {})
}

/// `between` runs after the mode check and before the read (a seam for the test that
/// replaces the file at that moment).
fn read_file_checked(
    path: &Path,
    check_mode: bool,
    between: impl FnOnce(),
) -> Result<SecretString, PasswordError> {
    let read_err = |source| PasswordError::Read {
        path: path.to_path_buf(),
        source,
    };
    // One handle for the check and the read: the mode checked is the mode of the file
    // read, even if the path is renamed over or a symlink repointed in between. A symlink
    // is followed; what is checked is its target, the file whose content is used.
    let mut file = std::fs::File::open(path).map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    if check_mode {
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(PasswordError::TooOpen {
                path: path.to_path_buf(),
                mode: mode & 0o7777,
            });
        }
    }
    between();
    // Sized up front, so that the buffer holding the password is not regrown (a regrown
    // buffer's old allocation is freed unwiped).
    let capacity = usize::try_from(meta.len()).unwrap_or(0).saturating_add(1);
    let mut raw = Zeroizing::new(String::with_capacity(capacity));
    file.read_to_string(&mut raw).map_err(read_err)?;
    // Editors add a final newline; a password never ends with one.
    let trimmed = raw.trim_end_matches(['\n', '\r']);
    if trimmed.is_empty() {
        return Err(PasswordError::Empty(path.to_path_buf()));
    }
    Ok(trimmed.to_owned().into())
}

fn entry(username: &str) -> Result<keyring::Entry, PasswordError> {
    keyring::Entry::new(KEYRING_SERVICE, username)
        .map_err(|e| PasswordError::Keyring(e.to_string()))
}

fn keyring_get(username: &str) -> Result<Option<SecretString>, PasswordError> {
    match entry(username)?.get_password() {
        Ok(p) => Ok(Some(p.into())),
        Err(keyring::Error::NoEntry) => Ok(None),
        Err(e) => Err(PasswordError::Keyring(e.to_string())),
    }
}

/// Stores the password in the kernel keyring (`set-password`).
pub fn keyring_set(username: &str, password: &SecretString) -> Result<(), PasswordError> {
    use secrecy::ExposeSecret;
    entry(username)?
        .set_password(password.expose_secret())
        .map_err(|e| PasswordError::Keyring(e.to_string()))
}

/// Removes it (`delete-password`); `false` when there was none.
pub fn keyring_delete(username: &str) -> Result<bool, PasswordError> {
    match entry(username)?.delete_credential() {
        Ok(()) => Ok(true),
        Err(keyring::Error::NoEntry) => Ok(false),
        Err(e) => Err(PasswordError::Keyring(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn sources(dir: &Path, file: Option<PathBuf>) -> PasswordSources {
        PasswordSources {
            credentials_dir: Some(dir.join("creds")),
            password_file: file,
            username: "u".into(),
            use_keyring: false,
        }
    }

    #[test]
    fn credential_wins_over_file_and_trailing_newline_is_dropped() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir(dir.path().join("creds"))?;
        std::fs::write(
            dir.path().join("creds").join(CREDENTIAL_NAME),
            "from-cred\n",
        )?;
        let file = dir.path().join("pw");
        std::fs::write(&file, "from-file")?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
        let (p, s) = sources(dir.path(), Some(file.clone()))
            .read()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        assert_eq!(
            (p.expose_secret(), s),
            ("from-cred", Source::SystemdCredential)
        );
        std::fs::remove_file(dir.path().join("creds").join(CREDENTIAL_NAME))?;
        let (p, s) = sources(dir.path(), Some(file))
            .read()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        assert_eq!((p.expose_secret(), s), ("from-file", Source::File));
        Ok(())
    }

    #[test]
    fn open_password_file_is_refused_with_the_fix() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("pw");
        std::fs::write(&file, "secret")?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644))?;
        let err = sources(dir.path(), Some(file))
            .read()
            .err()
            .map(|e| e.to_string());
        let err = err.unwrap_or_default();
        assert!(err.contains("chmod 600"), "{err}");
        assert!(!err.contains("secret"), "{err}");
        Ok(())
    }

    #[test]
    fn no_source_says_what_to_do() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let s = sources(dir.path(), None);
        if std::env::var(PASSWORD_ENV).is_err() {
            let err = s.read().err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains("set-password"), "{err}");
        }
        Ok(())
    }

    #[test]
    fn the_mode_checked_is_the_mode_of_the_file_read() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("pw");
        std::fs::write(&file, "checked\n")?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
        let open = dir.path().join("open");
        std::fs::write(&open, "world-readable\n")?;
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644))?;
        // The path is replaced by a world-readable file between the check and the read:
        // what is read is still the file that was checked.
        let p = read_file_checked(&file, true, || {
            let _ = std::fs::rename(&open, &file);
        })
        .map_err(|e| std::io::Error::other(e.to_string()))?;
        assert_eq!(p.expose_secret(), "checked");
        // And that file, now at the path, is refused.
        let err = read_file(&file, true).err().map(|e| e.to_string());
        assert!(err.unwrap_or_default().contains("chmod 600"));
        // A symlink is judged by its target, which is what would be read.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&file, &link)?;
        let err = read_file(&link, true).err().map(|e| e.to_string());
        assert!(err.unwrap_or_default().contains("chmod 600"));
        Ok(())
    }
}
