//! Service definitions that keep the gateway running: a systemd user unit
//! (Linux) and a launchd agent (macOS). Pure text generation; the
//! `service` command writes them and talks to the service manager.
//!
//! Choices, and why:
//! - The service runs `start --foreground`: the service manager is the
//!   daemonizer, and the foreground gateway holds the instance lock, so a
//!   stray `panorama-gateway start` next to the service is refused.
//! - `Restart=on-failure` (launchd: `KeepAlive.SuccessfulExit=false`): a
//!   crash or a failed upgrade re-exec (which exits non-zero) is restarted;
//!   `panorama-gateway stop` (a clean exit) stays stopped. The upgrade
//!   restart itself re-execs in place (same PID), which the manager never
//!   sees as an exit.
//! - `KillMode=mixed`: on stop only the gateway gets SIGTERM, so it drains
//!   and reports its jobs itself; whatever is left gets SIGKILL after
//!   `TimeoutStopSec`, which exceeds the gateway's shutdown grace.
//! - `Delegate=yes`: the gateway may create per-job cgroups below its own.

use std::path::{Path, PathBuf};

/// The systemd user unit's file name.
pub const SYSTEMD_UNIT_NAME: &str = "panorama-gateway.service";
/// The launchd agent's label (and plist file stem).
pub const LAUNCHD_LABEL: &str = "ai.panorama.gateway";

/// What the service runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// The gateway executable.
    pub exe: PathBuf,
    /// Environment pinned into the service (the resolved data dir and file
    /// paths, so the service uses exactly the directory `install` saw).
    pub env: Vec<(String, String)>,
}

impl ServiceSpec {
    fn argv(&self) -> Vec<String> {
        vec![
            self.exe.to_string_lossy().into_owned(),
            "start".into(),
            "--foreground".into(),
        ]
    }
}

/// One word of a systemd command line: quoted when needed, with `%`
/// (specifiers) and `$` (variable expansion) escaped.
fn systemd_word(word: &str) -> String {
    systemd_quote(word, true)
}

/// One `Environment=` assignment: like [`systemd_word`], but `$` is
/// literal there (no expansion in `Environment=`).
fn systemd_env_word(word: &str) -> String {
    systemd_quote(word, false)
}

fn systemd_quote(word: &str, escape_dollar: bool) -> String {
    let mut escaped = word
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('%', "%%");
    if escape_dollar {
        escaped = escaped.replace('$', "$$");
    }
    if word.is_empty()
        || word
            .chars()
            .any(|c| c.is_whitespace() || c == '"' || c == '\'' || c == '\\')
    {
        format!("\"{escaped}\"")
    } else {
        escaped
    }
}

/// The systemd user unit.
pub fn systemd_unit(spec: &ServiceSpec) -> String {
    let exec = spec
        .argv()
        .iter()
        .map(|w| systemd_word(w))
        .collect::<Vec<_>>()
        .join(" ");
    let env: String = spec
        .env
        .iter()
        .map(|(k, v)| format!("Environment={}\n", systemd_env_word(&format!("{k}={v}"))))
        .collect();
    format!(
        "# Written by `panorama-gateway service install`; remove with `panorama-gateway service uninstall`.
[Unit]
Description=Panorama Gateway (runs control-plane jobs on this machine)
After=network-online.target
Wants=network-online.target
# A gateway that keeps failing (e.g. a revoked pairing) stops being restarted.
StartLimitIntervalSec=300
StartLimitBurst=5

[Service]
Type=simple
ExecStart={exec}
{env}Restart=on-failure
RestartSec=5
KillMode=mixed
TimeoutStopSec=60
Delegate=yes

[Install]
WantedBy=default.target
"
    )
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The launchd agent plist; stdout and stderr go to `log_path`.
pub fn launchd_plist(spec: &ServiceSpec, log_path: &Path) -> String {
    let args: String = spec
        .argv()
        .iter()
        .map(|a| format!("    <string>{}</string>\n", xml_escape(a)))
        .collect();
    let env: String = spec
        .env
        .iter()
        .map(|(k, v)| {
            format!(
                "    <key>{}</key>\n    <string>{}</string>\n",
                xml_escape(k),
                xml_escape(v)
            )
        })
        .collect();
    let log = xml_escape(&log_path.to_string_lossy());
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
  <key>Label</key>
  <string>{LAUNCHD_LABEL}</string>
  <key>ProgramArguments</key>
  <array>
{args}  </array>
  <key>EnvironmentVariables</key>
  <dict>
{env}  </dict>
  <key>RunAtLoad</key>
  <true/>
  <key>KeepAlive</key>
  <dict>
    <key>SuccessfulExit</key>
    <false/>
  </dict>
  <key>ThrottleInterval</key>
  <integer>5</integer>
  <key>StandardOutPath</key>
  <string>{log}</string>
  <key>StandardErrorPath</key>
  <string>{log}</string>
</dict>
</plist>
"#
    )
}

/// `$XDG_CONFIG_HOME/systemd/user` (default `~/.config/systemd/user`).
pub fn systemd_unit_dir(env: impl Fn(&str) -> Option<String>, home: &Path) -> PathBuf {
    env("XDG_CONFIG_HOME")
        .filter(|v| Path::new(v).is_absolute())
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".config"))
        .join("systemd/user")
}

/// `~/Library/LaunchAgents/<label>.plist`.
pub fn launchd_plist_path(home: &Path) -> PathBuf {
    home.join("Library/LaunchAgents")
        .join(format!("{LAUNCHD_LABEL}.plist"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ServiceSpec {
        ServiceSpec {
            exe: PathBuf::from("/opt/panorama gateway/bin/panorama-gateway"),
            env: vec![(
                "PANORAMA_GATEWAY_CONFIG_DIR".into(),
                "/home/u/.panorama/100%$gw".into(),
            )],
        }
    }

    #[test]
    fn the_unit_runs_the_foreground_gateway_and_restarts_it_on_failure() {
        let unit = systemd_unit(&spec());
        assert!(unit.contains(
            "\nExecStart=\"/opt/panorama gateway/bin/panorama-gateway\" start --foreground\n"
        ));
        assert!(
            unit.contains("\nEnvironment=PANORAMA_GATEWAY_CONFIG_DIR=/home/u/.panorama/100%%$gw\n")
        );
        for line in [
            "Restart=on-failure",
            "KillMode=mixed",
            "Delegate=yes",
            "WantedBy=default.target",
        ] {
            assert!(unit.lines().any(|l| l == line), "missing {line}:\n{unit}");
        }
    }

    #[test]
    fn systemd_words_are_quoted_only_when_needed() {
        assert_eq!(systemd_word("plain"), "plain");
        assert_eq!(systemd_word(""), "\"\"");
        assert_eq!(systemd_word("a b"), "\"a b\"");
        assert_eq!(systemd_word("say \"hi\""), "\"say \\\"hi\\\"\"");
        assert_eq!(systemd_word("50%"), "50%%");
        assert_eq!(systemd_word("$HOME"), "$$HOME");
        assert_eq!(systemd_env_word("A=$HOME x"), "\"A=$HOME x\"");
    }

    #[test]
    fn the_plist_escapes_xml_and_keeps_alive_on_failure() {
        let mut s = spec();
        s.exe = PathBuf::from("/bin/a&b");
        let plist = launchd_plist(&s, Path::new("/tmp/<log>"));
        assert!(plist.contains("<string>/bin/a&amp;b</string>"));
        assert!(plist.contains("<string>/tmp/&lt;log&gt;</string>"));
        assert!(plist.contains("<key>SuccessfulExit</key>\n    <false/>"));
        assert!(plist.contains(&format!("<string>{LAUNCHD_LABEL}</string>")));
    }

    #[test]
    fn unit_dir_follows_xdg_config_home() {
        let home = Path::new("/home/u");
        assert_eq!(
            systemd_unit_dir(|_| None, home),
            PathBuf::from("/home/u/.config/systemd/user")
        );
        assert_eq!(
            systemd_unit_dir(|k| (k == "XDG_CONFIG_HOME").then(|| "/x".to_string()), home),
            PathBuf::from("/x/systemd/user")
        );
        assert_eq!(
            launchd_plist_path(home),
            PathBuf::from("/home/u/Library/LaunchAgents/ai.panorama.gateway.plist")
        );
    }

    /// `systemd-analyze verify` accepts the generated unit, where the tool
    /// exists (skipped, and said so, where it does not).
    #[test]
    fn systemd_analyze_verifies_the_unit() {
        let Ok(out) = std::process::Command::new("systemd-analyze")
            .arg("--version")
            .output()
        else {
            eprintln!("systemd-analyze not installed: verification skipped");
            return;
        };
        assert!(out.status.success());
        let dir = tempfile::tempdir().unwrap();
        // ExecStart must name an existing executable for verify to pass.
        let spec = ServiceSpec {
            exe: PathBuf::from("/bin/true"),
            env: vec![("PANORAMA_GATEWAY_CONFIG_DIR".into(), "/tmp/a dir".into())],
        };
        let path = dir.path().join(SYSTEMD_UNIT_NAME);
        std::fs::write(&path, systemd_unit(&spec)).unwrap();
        let out = std::process::Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "systemd-analyze verify failed:\n{stderr}"
        );
        assert!(
            !stderr.contains(SYSTEMD_UNIT_NAME),
            "systemd-analyze complained about the unit:\n{stderr}"
        );
    }
}
