//! Path resolution (runtime.md §2.1), config-dir preparation with fallback
//! (§2.2) and owner-only permissions (§2.3).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{GatewayError, Result};

pub const ENV_CONFIG_DIR: &str = "PANORAMA_GATEWAY_CONFIG_DIR";
pub const ENV_CONFIG_PATH: &str = "PANORAMA_GATEWAY_CONFIG_PATH";
pub const ENV_LOG_PATH: &str = "PANORAMA_GATEWAY_LOG_PATH";
pub const ENV_PID_PATH: &str = "PANORAMA_GATEWAY_PID_PATH";

pub const CONFIG_FILE_NAME: &str = "gateway.json";
pub const LOG_FILE_NAME: &str = "gateway.log";
pub const PID_FILE_NAME: &str = "gateway.pid";

/// A lookup of environment variables. Blank values count as unset.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment, with blank values treated as unset.
pub fn process_env(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.trim().is_empty())
}

/// Path overrides given on the command line (`--config-dir` and friends).
#[derive(Debug, Clone, Default)]
pub struct PathOverrides {
    pub config_dir: Option<PathBuf>,
    pub config_path: Option<PathBuf>,
    pub log_path: Option<PathBuf>,
    pub pid_path: Option<PathBuf>,
}

/// Every on-disk location the gateway uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayPaths {
    pub config_dir: PathBuf,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    pub pid_path: PathBuf,
    pub tmp_dir: PathBuf,
    pub work_dir: PathBuf,
    /// True when the config dir or config file was chosen explicitly (flag or
    /// env). Then no fallback location is tried (§2.2 step 3).
    pub explicit: bool,
    log_explicit: bool,
    pid_explicit: bool,
}

fn absolute(path: &Path, cwd: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        cwd.join(path)
    }
}

fn pick(flag: &Option<PathBuf>, env: EnvLookup<'_>, key: &str) -> Option<PathBuf> {
    flag.clone()
        .filter(|p| !p.as_os_str().is_empty())
        .or_else(|| env(key).map(PathBuf::from))
}

impl GatewayPaths {
    /// Resolve all paths: flag, then environment variable, then the default
    /// `~/.panorama/gateway`. Log and PID default to files next to the
    /// config *file*; tmp and work live in the config *dir* (§2.1).
    pub fn resolve(
        overrides: &PathOverrides,
        env: EnvLookup<'_>,
        home: &Path,
        cwd: &Path,
    ) -> GatewayPaths {
        let dir_choice = pick(&overrides.config_dir, env, ENV_CONFIG_DIR);
        let path_choice = pick(&overrides.config_path, env, ENV_CONFIG_PATH);
        let explicit = dir_choice.is_some() || path_choice.is_some();
        let config_dir = absolute(
            &dir_choice.unwrap_or_else(|| home.join(".panorama").join("gateway")),
            cwd,
        );
        let config_path = path_choice
            .map(|p| absolute(&p, cwd))
            .unwrap_or_else(|| config_dir.join(CONFIG_FILE_NAME));
        let log = pick(&overrides.log_path, env, ENV_LOG_PATH).map(|p| absolute(&p, cwd));
        let pid = pick(&overrides.pid_path, env, ENV_PID_PATH).map(|p| absolute(&p, cwd));
        Self::assemble(config_dir, config_path, log, pid, explicit)
    }

    fn assemble(
        config_dir: PathBuf,
        config_path: PathBuf,
        log: Option<PathBuf>,
        pid: Option<PathBuf>,
        explicit: bool,
    ) -> GatewayPaths {
        let file_dir = config_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| config_dir.clone());
        GatewayPaths {
            tmp_dir: config_dir.join("tmp"),
            work_dir: config_dir.join("work"),
            log_explicit: log.is_some(),
            pid_explicit: pid.is_some(),
            log_path: log.unwrap_or_else(|| file_dir.join(LOG_FILE_NAME)),
            pid_path: pid.unwrap_or_else(|| file_dir.join(PID_FILE_NAME)),
            config_dir,
            config_path,
            explicit,
        }
    }

    /// The same paths re-rooted at `dir` (used for the fallback location).
    /// Explicit log/PID overrides are kept; everything else follows `dir`.
    /// (Fixes the Node bug of §2.2 step 5, which kept the old config path.)
    pub fn rooted_at(&self, dir: &Path) -> GatewayPaths {
        Self::assemble(
            dir.to_path_buf(),
            dir.join(CONFIG_FILE_NAME),
            self.log_explicit.then(|| self.log_path.clone()),
            self.pid_explicit.then(|| self.pid_path.clone()),
            false,
        )
    }

    /// The `PANORAMA_GATEWAY_*` path variables a child gateway process
    /// (daemon, restart) must inherit so it uses the same files.
    pub fn env_vars(&self) -> Vec<(&'static str, PathBuf)> {
        vec![
            (ENV_CONFIG_DIR, self.config_dir.clone()),
            (ENV_CONFIG_PATH, self.config_path.clone()),
            (ENV_LOG_PATH, self.log_path.clone()),
            (ENV_PID_PATH, self.pid_path.clone()),
        ]
    }
}

/// The fallback config dir used when the default one is not writable (§2.2).
pub fn fallback_config_dir(env: EnvLookup<'_>, home: &Path) -> PathBuf {
    if cfg!(target_os = "macos") {
        home.join("Library/Application Support/Panorama Gateway")
    } else {
        env("XDG_DATA_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .unwrap_or_else(|| home.join(".local/share"))
            .join("panorama-gateway")
    }
}

// ---------------------------------------------------------------------------
// Owner-only permissions (§2.3)
// ---------------------------------------------------------------------------

/// Create `path` (recursively) as a directory and make sure its mode is 0700.
/// Repairs the mode of an existing directory.
pub fn ensure_owner_only_dir(path: &Path) -> Result<()> {
    if !path.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(|e| GatewayError::io("Could not create directory", path, e))?;
    }
    let meta = fs::metadata(path).map_err(|e| GatewayError::io("Could not read", path, e))?;
    if !meta.is_dir() {
        return Err(GatewayError::cli(
            format!("Expected directory at {}", path.display()),
            "Move the file away or choose another path with --config-dir.".to_string(),
        ));
    }
    if meta.permissions().mode() & 0o777 != 0o700 {
        fs::set_permissions(path, fs::Permissions::from_mode(0o700))
            .map_err(|e| GatewayError::io("Could not set permissions 0700 on", path, e))?;
    }
    Ok(())
}

/// If `path` exists, make sure it is a regular file with mode 0600.
pub fn ensure_owner_only_file(path: &Path) -> Result<()> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(GatewayError::io("Could not read", path, e)),
    };
    if !meta.is_file() {
        return Err(GatewayError::cli(
            format!("Expected regular file at {}", path.display()),
            "Move it away or choose another path.".to_string(),
        ));
    }
    if meta.permissions().mode() & 0o777 != 0o600 {
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .map_err(|e| GatewayError::io("Could not set permissions 0600 on", path, e))?;
    }
    Ok(())
}

/// Atomically replace `path` with `contents`: write a 0600 temp file in the
/// same directory (made 0700), fsync, rename over the target.
pub fn write_owner_only_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    ensure_owner_only_dir(parent)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".to_string());
    let tmp = parent.join(format!(".{name}.tmp-{}", uuid::Uuid::new_v4()));
    let write = || -> std::io::Result<()> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    };
    if let Err(e) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(GatewayError::io("Could not write", path, e));
    }
    ensure_owner_only_file(path)
}

// ---------------------------------------------------------------------------
// Config-dir preparation (§2.2)
// ---------------------------------------------------------------------------

/// The outcome of [`prepare_config_dir`].
#[derive(Debug, Clone)]
pub struct PreparedPaths {
    pub paths: GatewayPaths,
    /// Set when the default location was not writable and the fallback is
    /// used; the value is the original config dir.
    pub migrated_from: Option<PathBuf>,
}

/// Probe that `dir` is writable: ensure it is a 0700 dir, write and delete a
/// `.panorama-write-<uuid>` file.
pub fn probe_writable(dir: &Path) -> Result<()> {
    ensure_owner_only_dir(dir)?;
    let probe = dir.join(format!(".panorama-write-{}", uuid::Uuid::new_v4()));
    let result = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&probe)
        .and_then(|mut f| f.write_all(b"ok"));
    let _ = fs::remove_file(&probe);
    result.map_err(|e| GatewayError::io("Could not write to", dir, e))
}

/// Make the gateway state owner-only: config dir, `tmp/` and `work/` as 0700
/// directories; config, log and PID files 0600 when present. Runs on every
/// `pair`/`start`/`doctor`, so wrong modes are repaired, not only set at
/// creation.
pub fn secure_state(paths: &GatewayPaths) -> Result<()> {
    for dir in [&paths.config_dir, &paths.tmp_dir, &paths.work_dir] {
        ensure_owner_only_dir(dir)?;
    }
    if let Some(parent) = paths.config_path.parent() {
        if parent.exists() {
            ensure_owner_only_dir(parent)?;
        }
    }
    for file in [&paths.config_path, &paths.log_path, &paths.pid_path] {
        ensure_owner_only_file(file)?;
    }
    Ok(())
}

fn permissions_error(err: GatewayError, fallback: bool) -> GatewayError {
    let hint = if fallback {
        "Ensure the fallback directory is owned by this user and writable."
    } else {
        "Ensure the gateway directory is owned by this user and writable."
    };
    GatewayError::cli(
        "Gateway state permissions could not be secured.",
        format!("{err} {hint}"),
    )
}

fn not_writable(err: GatewayError) -> GatewayError {
    GatewayError::cli(
        "Gateway config directory is not writable.",
        format!(
            "{err} Fix the directory permissions or choose another directory with --config-dir."
        ),
    )
}

/// Prepare the config dir for `pair`/`start`/`doctor` (§2.2): probe it,
/// fall back to the per-user data dir when the *default* location is not
/// writable (copying an existing config), and secure the state.
pub fn prepare_config_dir(
    paths: &GatewayPaths,
    env: EnvLookup<'_>,
    home: &Path,
) -> Result<PreparedPaths> {
    match probe_writable(&paths.config_dir) {
        Ok(()) => {
            secure_state(paths).map_err(|e| permissions_error(e, false))?;
            Ok(PreparedPaths {
                paths: paths.clone(),
                migrated_from: None,
            })
        }
        Err(err) if paths.explicit => Err(not_writable(err)),
        Err(_) => {
            let fallback_dir = fallback_config_dir(env, home);
            probe_writable(&fallback_dir).map_err(not_writable)?;
            let next = paths.rooted_at(&fallback_dir);
            if paths.config_path.is_file() && !next.config_path.exists() {
                if let Err(e) = fs::copy(&paths.config_path, &next.config_path) {
                    tracing::warn!(
                        from = %paths.config_path.display(),
                        to = %next.config_path.display(),
                        error = %e,
                        "Failed to copy gateway config to fallback location"
                    );
                }
            }
            secure_state(&next).map_err(|e| permissions_error(e, true))?;
            Ok(PreparedPaths {
                paths: next,
                migrated_from: Some(paths.config_dir.clone()),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned().filter(|v| !v.trim().is_empty())
    }

    #[test]
    fn defaults_live_under_home() {
        let env = env_of(&[]);
        let p = GatewayPaths::resolve(
            &PathOverrides::default(),
            &env,
            Path::new("/h"),
            Path::new("/cwd"),
        );
        assert_eq!(p.config_dir, Path::new("/h/.panorama/gateway"));
        assert_eq!(
            p.config_path,
            Path::new("/h/.panorama/gateway/gateway.json")
        );
        assert_eq!(p.log_path, Path::new("/h/.panorama/gateway/gateway.log"));
        assert_eq!(p.pid_path, Path::new("/h/.panorama/gateway/gateway.pid"));
        assert_eq!(p.tmp_dir, Path::new("/h/.panorama/gateway/tmp"));
        assert_eq!(p.work_dir, Path::new("/h/.panorama/gateway/work"));
        assert!(!p.explicit);
    }

    #[test]
    fn flag_beats_env_and_relative_paths_become_absolute() {
        let env = env_of(&[(ENV_CONFIG_DIR, "/env/dir"), (ENV_LOG_PATH, "/env/log")]);
        let overrides = PathOverrides {
            config_dir: Some("rel/dir".into()),
            ..Default::default()
        };
        let p = GatewayPaths::resolve(&overrides, &env, Path::new("/h"), Path::new("/cwd"));
        assert_eq!(p.config_dir, Path::new("/cwd/rel/dir"));
        assert_eq!(p.log_path, Path::new("/env/log"));
        assert!(p.explicit);
    }

    #[test]
    fn log_and_pid_follow_config_file_tmp_follows_dir() {
        let env = env_of(&[(ENV_CONFIG_PATH, "/other/cfg.json")]);
        let p = GatewayPaths::resolve(
            &PathOverrides::default(),
            &env,
            Path::new("/h"),
            Path::new("/"),
        );
        assert_eq!(p.config_path, Path::new("/other/cfg.json"));
        assert_eq!(p.log_path, Path::new("/other/gateway.log"));
        assert_eq!(p.pid_path, Path::new("/other/gateway.pid"));
        assert_eq!(p.tmp_dir, Path::new("/h/.panorama/gateway/tmp"));
    }

    #[test]
    fn fallback_uses_xdg_data_home() {
        let env = env_of(&[("XDG_DATA_HOME", "/xdg")]);
        if !cfg!(target_os = "macos") {
            assert_eq!(
                fallback_config_dir(&env, Path::new("/h")),
                Path::new("/xdg/panorama-gateway")
            );
            let none = env_of(&[]);
            assert_eq!(
                fallback_config_dir(&none, Path::new("/h")),
                Path::new("/h/.local/share/panorama-gateway")
            );
        }
    }

    #[test]
    fn permissions_are_repaired() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let file = dir.join("f");
        fs::write(&file, "x").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        ensure_owner_only_dir(&dir).unwrap();
        ensure_owner_only_file(&file).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&file), 0o600);
        // Missing files are fine; a directory where a file is expected is not.
        ensure_owner_only_file(&dir.join("missing")).unwrap();
        assert!(ensure_owner_only_file(&dir).is_err());
        assert!(ensure_owner_only_dir(&file).is_err());
    }

    #[test]
    fn atomic_write_is_owner_only() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("sub").join("x.json");
        write_owner_only_atomic(&path, b"{}").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "{}");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // No temp files are left behind.
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn default_location_falls_back_when_unusable() {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("home");
        fs::create_dir(&home).unwrap();
        // `.panorama` is a file, so the default dir cannot be created.
        fs::write(home.join(".panorama"), "not a dir").unwrap();
        let xdg = tmp.path().join("xdg");
        let xdg_str = xdg.to_string_lossy().into_owned();
        let env = env_of(&[("XDG_DATA_HOME", xdg_str.as_str())]);
        let paths = GatewayPaths::resolve(&PathOverrides::default(), &env, &home, &home);
        let prepared = prepare_config_dir(&paths, &env, &home).unwrap();
        if !cfg!(target_os = "macos") {
            assert_eq!(prepared.paths.config_dir, xdg.join("panorama-gateway"));
            assert_eq!(
                prepared.paths.config_path,
                xdg.join("panorama-gateway/gateway.json")
            );
        }
        assert_eq!(prepared.migrated_from, Some(paths.config_dir.clone()));
        assert!(prepared.paths.tmp_dir.is_dir());

        // With an explicit dir there is no fallback.
        let overrides = PathOverrides {
            config_dir: Some(home.join(".panorama").join("x")),
            ..Default::default()
        };
        let explicit = GatewayPaths::resolve(&overrides, &env, &home, &home);
        let err = prepare_config_dir(&explicit, &env, &home).unwrap_err();
        assert_eq!(err.to_string(), "Gateway config directory is not writable.");
    }
}
