//! The reference Node gateway, installed from the npm registry into a temp
//! directory with the Node runtime it needs (the `node-linux-<arch>`
//! package carries the binary; nothing else is downloaded).

use crate::gateway::Flavor;
use anyhow::{anyhow, bail, Context, Result};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const PEER_PACKAGE: &str = "@panorama-ai/gateway@2.32.167";
pub const NODE_MAJOR: &str = "24";

pub struct Peer {
    pub flavor: Flavor,
    pub node_version: String,
    _dir: tempfile::TempDir,
}

fn node_package() -> Result<String> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "x64",
        "aarch64" => "arm64",
        other => bail!("no Node runtime package for architecture {other}"),
    };
    if std::env::consts::OS != "linux" {
        bail!("the Node runtime package is picked for Linux only");
    }
    Ok(format!("node-linux-{arch}@{NODE_MAJOR}"))
}

/// Runs `cmd` to completion or kills it after `timeout`.
fn run_bounded(cmd: &mut Command, timeout: Duration, what: &str) -> Result<String> {
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("out.log");
    let f = std::fs::File::create(&log)?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::from(f.try_clone()?))
        .stderr(Stdio::from(f))
        .spawn()
        .with_context(|| format!("spawning {what}"))?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = std::fs::read_to_string(&log).unwrap_or_default();
    if !status.success() {
        let tail: String = out.lines().rev().take(8).collect::<Vec<_>>().join(" / ");
        bail!("{what} failed ({status}): {tail}");
    }
    Ok(out)
}

pub fn install() -> Result<Peer> {
    let npm = std::env::var("NPM").unwrap_or_else(|_| "npm".into());
    let dir = tempfile::tempdir()?;
    let node_pkg = node_package()?;
    eprintln!(
        "[bench] installing {PEER_PACKAGE} and {node_pkg} with npm into {}",
        dir.path().display()
    );
    run_bounded(
        Command::new(&npm)
            .args([
                "install",
                "--no-audit",
                "--no-fund",
                "--ignore-scripts",
                "--prefix",
            ])
            .arg(dir.path())
            .args([PEER_PACKAGE, &node_pkg]),
        Duration::from_secs(600),
        "npm install",
    )?;
    let nm = dir.path().join("node_modules");
    let node = nm
        .join(node_pkg.split('@').next().unwrap_or_default())
        .join("bin")
        .join("node");
    if !node.exists() {
        bail!("{} has no bin/node", node_pkg);
    }
    let version = run_bounded(
        Command::new(&node).arg("--version"),
        Duration::from_secs(30),
        "node --version",
    )?
    .trim()
    .to_string();
    let major: u32 = version
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| anyhow!("unreadable node version {version:?}"))?;
    if major < 24 {
        bail!("the installed Node is {version}; the peer needs >= 24");
    }
    let pkg_dir = nm.join("@panorama-ai").join("gateway");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(pkg_dir.join("package.json"))?)?;
    let bin_rel = manifest["bin"]["panorama-gateway"]
        .as_str()
        .or_else(|| manifest["bin"].as_str())
        .ok_or_else(|| anyhow!("the peer's package.json names no panorama-gateway bin"))?;
    let script = pkg_dir.join(bin_rel);
    check_exists(&script)?;
    Ok(Peer {
        flavor: Flavor::Peer { node, script },
        node_version: version,
        _dir: dir,
    })
}

fn check_exists(p: &Path) -> Result<()> {
    if p.exists() {
        Ok(())
    } else {
        Err(anyhow!("{} is missing", p.display()))
    }
}
