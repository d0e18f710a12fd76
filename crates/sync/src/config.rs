//! The client config: `config.toml` in the data dir, holding the server URL and this machine's
//! device credentials. Written owner-only (0600) and atomically; other keys in the file are kept.

use std::fmt;
use std::path::{Path, PathBuf};
use toml_edit::{value, DocumentMut};

/// Errors reading or writing the client config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid TOML: {message}")]
    Parse { path: PathBuf, message: String },
}

/// A secret that never shows in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// This machine's registration with a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Base URL of the server, without a trailing slash.
    pub server: String,
    pub device_id: String,
    pub device_token: Secret,
    pub device_name: String,
}

/// The config file name inside the data dir.
pub const FILE_NAME: &str = "config.toml";

/// The path of the client config in `dir`.
pub fn path_in(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

fn read_doc(path: &Path) -> Result<Option<DocumentMut>, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    text.parse::<DocumentMut>()
        .map(Some)
        .map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

/// Reads the credentials in `dir`, `None` when this machine is not logged in.
pub fn load(dir: &Path) -> Result<Option<Credentials>, ConfigError> {
    let path = path_in(dir);
    let Some(doc) = read_doc(&path)? else {
        return Ok(None);
    };
    let get = |k: &str| doc.get(k).and_then(|v| v.as_str()).map(str::to_string);
    match (get("server"), get("device_id"), get("device_token")) {
        (Some(server), Some(device_id), Some(token)) => Ok(Some(Credentials {
            server,
            device_id,
            device_token: Secret(token),
            device_name: get("device_name").unwrap_or_default(),
        })),
        _ => Ok(None),
    }
}

/// Stores `creds` in `dir` (0600), keeping any other keys of the file.
pub fn save(dir: &Path, creds: &Credentials) -> Result<(), ConfigError> {
    let path = path_in(dir);
    let mut doc = read_doc(&path)?.unwrap_or_default();
    doc["server"] = value(creds.server.as_str());
    doc["device_id"] = value(creds.device_id.as_str());
    doc["device_token"] = value(creds.device_token.0.as_str());
    doc["device_name"] = value(creds.device_name.as_str());
    write_private(&path, doc.to_string().as_bytes())
}

/// Removes the credentials from the config in `dir` (other keys stay). Returns whether any were
/// there.
pub fn forget(dir: &Path) -> Result<bool, ConfigError> {
    let path = path_in(dir);
    let Some(mut doc) = read_doc(&path)? else {
        return Ok(false);
    };
    let mut had = false;
    for k in ["server", "device_id", "device_token", "device_name"] {
        had |= doc.remove(k).is_some();
    }
    write_private(&path, doc.to_string().as_bytes())?;
    Ok(had)
}

/// Writes `bytes` to `path` through a temporary file created owner-only, then renamed.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), ConfigError> {
    use std::io::Write;
    let err = |source| ConfigError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    let tmp = path.with_extension("toml.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp).map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(err)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    }
    Ok(())
}
