//! Where the hub keeps its state, and its keys.
//!
//! One data directory (default: the user's data dir + `panorama-hub`),
//! owner-only, holding `hub.db` (SQLite) and `keys.json` (the signing
//! secret, both API keys and the last URL served). The operator CLI reads
//! `keys.json` to find a local hub without flags.

use crate::auth::Keys;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:54321";
pub const DEFAULT_URL: &str = "http://127.0.0.1:54321";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot determine a data directory (no HOME?); pass --data-dir or set PANORAMA_HUB_DATA_DIR")]
    NoDataDir,
    #[error("cannot prepare the data directory {path}: {source}")]
    Dir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not valid hub keys JSON ({source}); move it aside and run `panorama-hub serve` to create new keys")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

pub fn default_data_dir() -> Result<PathBuf, ConfigError> {
    if let Some(dir) = std::env::var_os("PANORAMA_HUB_DATA_DIR").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    dirs::data_dir()
        .map(|d| d.join("panorama-hub"))
        .ok_or(ConfigError::NoDataDir)
}

/// Creates the directory if needed and makes it owner-only (0700).
pub fn prepare_dir(dir: &Path) -> Result<(), ConfigError> {
    let err = |source| ConfigError::Dir {
        path: dir.display().to_string(),
        source,
    };
    fs::create_dir_all(dir).map_err(err)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(err)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyFile {
    pub jwt_secret: String,
    pub anon_key: String,
    pub service_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

impl KeyFile {
    pub fn keys(&self) -> Keys {
        Keys::from_parts(
            self.jwt_secret.as_bytes().to_vec(),
            self.anon_key.clone(),
            self.service_key.clone(),
        )
    }
}

pub fn key_file_path(data_dir: &Path) -> PathBuf {
    data_dir.join("keys.json")
}

pub fn read_key_file(data_dir: &Path) -> Result<Option<KeyFile>, ConfigError> {
    let path = key_file_path(data_dir);
    match fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|source| ConfigError::Parse {
                path: path.display().to_string(),
                source,
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ConfigError::Read {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// Writes the key file owner-only (0600), atomically.
pub fn write_key_file(data_dir: &Path, kf: &KeyFile) -> Result<(), ConfigError> {
    let text = serde_json::to_string_pretty(kf).expect("key file serializes");
    write_private_file(&key_file_path(data_dir), text.as_bytes())
}

/// Writes `bytes` to `path` owner-only (0600) and atomically: a temporary
/// file beside it, fsync'd, then renamed over it.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> Result<(), ConfigError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let err = |source| ConfigError::Write {
        path: path.display().to_string(),
        source,
    };
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600)).map_err(err)?;
    fs::rename(&tmp, path).map_err(err)
}

/// The data directory's keys, created on first use.
pub fn load_or_create_keys(data_dir: &Path) -> Result<KeyFile, ConfigError> {
    prepare_dir(data_dir)?;
    if let Some(kf) = read_key_file(data_dir)? {
        // Re-assert owner-only permissions in case they were loosened.
        let _ = fs::set_permissions(key_file_path(data_dir), fs::Permissions::from_mode(0o600));
        return Ok(kf);
    }
    use rand::RngCore;
    let mut secret = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut secret);
    let secret = hex::encode(secret);
    let keys = Keys::from_secret(secret.as_bytes(), chrono::Utc::now().timestamp());
    let kf = KeyFile {
        jwt_secret: secret,
        anon_key: keys.anon_key.clone(),
        service_key: keys.service_key.clone(),
        url: None,
    };
    write_key_file(data_dir, &kf)?;
    Ok(kf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_created_once_and_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("hub");
        let a = load_or_create_keys(&data).unwrap();
        let b = load_or_create_keys(&data).unwrap();
        assert_eq!(a.service_key, b.service_key);
        let mode = fs::metadata(key_file_path(&data))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let mode = fs::metadata(&data).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let keys = a.keys();
        assert_eq!(
            keys.resolve(Some(&a.anon_key), Some(&a.service_key)),
            Ok(crate::auth::Principal::Service)
        );
    }
}
