//! The pinned real agent CLIs (Claude Code, Codex, Gemini CLI) installed
//! by `scripts/install-agents.sh` (issue 12).
//!
//! [`real_agents`] finds them in `PANORAMA_AGENTS_DIR` (default
//! `<workspace>/target/agents`), running the install script when they are
//! missing. It returns `None` only when the npm registry is unreachable
//! (the script exits 3), after printing why loudly; any other failure
//! panics, so a test never passes silently without the real CLIs.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the CLIs' executables are.
#[derive(Debug, Clone)]
pub struct RealAgents {
    /// `<dir>/node_modules/.bin`.
    pub bin_dir: PathBuf,
}

impl RealAgents {
    /// The executable of `name` (`claude`, `codex`, `gemini`).
    pub fn cli(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    /// `name --version` output, trimmed.
    pub fn version(&self, name: &str) -> String {
        let out = Command::new(self.cli(name))
            .arg("--version")
            .output()
            .unwrap_or_else(|e| panic!("run {name} --version: {e}"));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("workspace root")
        .to_path_buf()
}

/// The install folder (`PANORAMA_AGENTS_DIR` or `target/agents`).
pub fn agents_dir() -> PathBuf {
    std::env::var_os("PANORAMA_AGENTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/agents"))
}

/// Exit status of `install-agents.sh` when npm is unreachable.
const NPM_UNREACHABLE: i32 = 3;

/// The installed CLIs, installing them first when needed; `None` (after a
/// loud message) only when the npm registry cannot be reached.
pub fn real_agents(test: &str) -> Option<RealAgents> {
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = agents_dir();
    let script = workspace_root().join("scripts/install-agents.sh");
    let out = Command::new("bash")
        .arg(&script)
        .env("PANORAMA_AGENTS_DIR", &dir)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
    let log = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => Some(RealAgents {
            bin_dir: dir.join("node_modules/.bin"),
        }),
        Some(NPM_UNREACHABLE) => {
            eprintln!(
                "\n==== SKIPPED {test}: the real agent CLIs are not installed and the npm registry \
                 is unreachable ====\n{log}\n===="
            );
            None
        }
        _ => panic!(
            "installing the real agent CLIs failed ({}): {log}\nrun scripts/install-agents.sh by hand to see why",
            out.status
        ),
    }
}
