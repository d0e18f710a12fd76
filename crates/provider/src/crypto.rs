//! Provider keys at rest: AES-256-GCM under a master key that never leaves this process.
//!
//! The master key comes from `TOKENLEDGER_MASTER_KEY` (64 hex characters) when set, else from
//! `master.key` in the data directory, created on first use with owner-only permissions. Secrets
//! are wrapped in [`SecretString`], whose `Debug` and `Display` print `[redacted]`.

use crate::{Error, Result};
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Environment variable holding the master key as 64 hex characters.
pub const MASTER_KEY_ENV: &str = "TOKENLEDGER_MASTER_KEY";
/// File name of the generated master key in the data directory.
pub const MASTER_KEY_FILE: &str = "master.key";

const FORMAT_V1: u8 = 1;
const NONCE_LEN: usize = 12;

/// A secret (an admin key, the cron secret). It cannot be printed by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(s: impl Into<String>) -> Self {
        SecretString(s.into())
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Encrypts and decrypts provider keys.
pub struct KeyCipher {
    aead: Aes256Gcm,
}

impl fmt::Debug for KeyCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyCipher([redacted])")
    }
}

impl KeyCipher {
    /// A cipher from 32 raw key bytes.
    pub fn from_bytes(key: &[u8; 32]) -> Self {
        KeyCipher {
            aead: Aes256Gcm::new(key.into()),
        }
    }

    /// A cipher from 64 hex characters.
    pub fn from_hex(hex_key: &str) -> Result<Self> {
        let bytes = hex::decode(hex_key.trim())
            .map_err(|_| Error::Config("the master key must be 64 hex characters".into()))?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| Error::Config("the master key must be 64 hex characters".into()))?;
        Ok(Self::from_bytes(&key))
    }

    /// The master key from `TOKENLEDGER_MASTER_KEY`, else from `data_dir/master.key` (created
    /// with mode 0600 when missing). A malformed variable is an error, not a fallback.
    pub fn load(data_dir: &Path) -> Result<Self> {
        match std::env::var(MASTER_KEY_ENV) {
            Ok(v) if !v.trim().is_empty() => Self::from_hex(&v)
                .map_err(|_| Error::Config(format!("{MASTER_KEY_ENV} must be 64 hex characters"))),
            _ => Self::from_file(&data_dir.join(MASTER_KEY_FILE)),
        }
    }

    /// The master key of this file, generated when the file does not exist.
    pub fn from_file(path: &Path) -> Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(s) => Self::from_hex(&s).map_err(|_| {
                Error::Config(format!("{} must hold 64 hex characters", path.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                rand::rng().fill_bytes(&mut key);
                match create_owner_only(path, format!("{}\n", hex::encode(key)).as_bytes()) {
                    Ok(()) => Ok(Self::from_bytes(&key)),
                    // Another process created it first: use theirs.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        Self::from_file(path)
                    }
                    Err(e) => Err(Error::Config(format!(
                        "cannot create {}: {e}",
                        path.display()
                    ))),
                }
            }
            Err(e) => Err(Error::Config(format!(
                "cannot read {}: {e}",
                path.display()
            ))),
        }
    }

    /// Encrypts `secret` for `user_id` (bound as associated data, so a sealed key copied to
    /// another user's row does not open).
    pub fn seal(&self, user_id: i64, secret: &SecretString) -> Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let aad = aad(user_id);
        let ct = self
            .aead
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: secret.expose().as_bytes(),
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| Error::Crypto("encryption failed".into()))?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ct.len());
        out.push(FORMAT_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Decrypts what [`KeyCipher::seal`] produced for the same user.
    pub fn open(&self, user_id: i64, sealed: &[u8]) -> Result<SecretString> {
        if sealed.len() < 1 + NONCE_LEN + 16 || sealed[0] != FORMAT_V1 {
            return Err(Error::Crypto("stored key has an unknown format".into()));
        }
        let aad = aad(user_id);
        let pt = self
            .aead
            .decrypt(
                Nonce::from_slice(&sealed[1..1 + NONCE_LEN]),
                Payload {
                    msg: &sealed[1 + NONCE_LEN..],
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| Error::Crypto("stored key does not decrypt (wrong master key?)".into()))?;
        String::from_utf8(pt)
            .map(SecretString)
            .map_err(|_| Error::Crypto("stored key is not text".into()))
    }
}

fn aad(user_id: i64) -> String {
    format!("tokenledger/provider-key/v1/user:{user_id}")
}

fn create_owner_only(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(contents)?;
    f.sync_all()
}

/// The directory of server state: `$TOKENLEDGER_HOME`, else the platform data dir.
pub fn data_dir() -> PathBuf {
    if let Some(h) = std::env::var_os("TOKENLEDGER_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h);
    }
    dirs::data_dir()
        .or_else(|| dirs::home_dir().map(|h| h.join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("tokenledger")
}

/// A displayable form of a key: its known prefix, an ellipsis and its last four characters
/// (`sk-admin-…abcd`). Short keys show nothing but the ellipsis.
pub fn mask(key: &str) -> String {
    let chars: Vec<char> = key.trim().chars().collect();
    if chars.len() < 16 {
        return "…".into();
    }
    let prefix = [
        "sk-admin-",
        "sk-ant-admin01-",
        "sk-ant-admin-",
        "sk-proj-",
        "sk-",
    ]
    .iter()
    .find(|p| key.starts_with(**p))
    .copied()
    .unwrap_or("");
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{prefix}…{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_roundtrip_and_user_binding() {
        let c = KeyCipher::from_bytes(&[7u8; 32]);
        let s = SecretString::new("sk-admin-0123456789abcdef");
        let sealed = c.seal(5, &s).unwrap();
        assert_eq!(c.open(5, &sealed).unwrap(), s);
        assert!(c.open(6, &sealed).is_err());
        let other = KeyCipher::from_bytes(&[8u8; 32]);
        assert!(other.open(5, &sealed).is_err());
        assert!(c.open(5, &[1, 2, 3]).is_err());
    }

    #[test]
    fn secrets_do_not_print() {
        let s = SecretString::new("sk-admin-secret");
        assert_eq!(format!("{s:?} {s}"), "[redacted] [redacted]");
    }

    #[test]
    fn masks() {
        assert_eq!(mask("sk-admin-0123456789abcdef"), "sk-admin-…cdef");
        assert_eq!(mask("short"), "…");
        assert_eq!(mask("xxxxxxxxxxxxxxxxwxyz"), "…wxyz");
    }

    #[cfg(unix)]
    #[test]
    fn key_file_is_created_owner_only_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join(MASTER_KEY_FILE);
        let a = KeyCipher::from_file(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let sealed = a.seal(1, &SecretString::new("k")).unwrap();
        let b = KeyCipher::from_file(&path).unwrap();
        assert_eq!(b.open(1, &sealed).unwrap().expose(), "k");
    }
}
