//! Builds the web console (`console/`): `npm ci` from the committed
//! lockfile into OUT_DIR (skipped while the installed tree matches the
//! lockfile), then `node console/build.mjs` bundles it with esbuild into
//! `OUT_DIR/console/`, which `src/console.rs` embeds. Without Node.js or
//! the npm registry the hub still builds: the console is replaced by a page
//! that says how to get it, and cargo prints a warning.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let console = manifest.join("console");
    for rel in ["package.json", "package-lock.json", "build.mjs", "src"] {
        println!("cargo:rerun-if-changed=console/{rel}");
    }
    println!("cargo:rerun-if-env-changed=PANORAMA_HUB_CONSOLE_BUILD");
    let dist = out_dir.join("console");
    let _ = std::fs::remove_dir_all(&dist);
    std::fs::create_dir_all(&dist).expect("create OUT_DIR/console");
    let wanted = std::env::var("PANORAMA_HUB_CONSOLE_BUILD").unwrap_or_default() != "off";
    let built = if wanted {
        build(&console, &out_dir.join("console-npm"), &dist)
    } else {
        Err("PANORAMA_HUB_CONSOLE_BUILD=off".into())
    };
    if let Err(why) = built {
        println!("cargo:warning=the web console was not built ({why}); the hub serves a page saying so at /. Install Node.js 20+ with npm, make the npm registry reachable, then rebuild.");
        write_fallback(&dist, &why);
        // A path that never exists: cargo reruns this script on every
        // build until the console builds, so a registry that comes back
        // is picked up without touching a file.
        println!(
            "cargo:rerun-if-changed={}",
            out_dir.join("console-not-built-yet").display()
        );
    }
}

fn build(console: &Path, npm_dir: &Path, dist: &Path) -> Result<(), String> {
    std::fs::create_dir_all(npm_dir).map_err(|e| format!("create {}: {e}", npm_dir.display()))?;
    let manifest = read(&console.join("package.json"))?;
    let lock = read(&console.join("package-lock.json"))?;
    let stamp_path = npm_dir.join("node_modules/.panorama-console-stamp");
    let mut stamp = manifest.clone();
    stamp.extend_from_slice(&lock);
    if std::fs::read(&stamp_path).ok().as_deref() != Some(stamp.as_slice()) {
        std::fs::write(npm_dir.join("package.json"), &manifest).map_err(|e| e.to_string())?;
        std::fs::write(npm_dir.join("package-lock.json"), &lock).map_err(|e| e.to_string())?;
        // --ignore-scripts: nothing in the tree needs an install script
        // (esbuild finds its platform binary package without one).
        run(Command::new("npm")
            .args([
                "ci",
                "--ignore-scripts",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
            ])
            .current_dir(npm_dir))?;
        std::fs::write(&stamp_path, &stamp).map_err(|e| e.to_string())?;
    }
    run(Command::new("node")
        .arg(console.join("build.mjs"))
        .arg(console.join("src"))
        .arg(npm_dir.join("node_modules"))
        .arg(dist))?;
    for asset in ASSETS {
        if !dist.join(asset).is_file() {
            return Err(format!("the bundle has no {asset}"));
        }
    }
    Ok(())
}

/// What `src/console.rs` embeds.
const ASSETS: [&str; 3] = ["index.html", "app.js", "app.css"];

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    let last = lines[lines.len().saturating_sub(6)..].join(" / ");
    Err(format!("{shown} failed ({}): {last}", out.status))
}

fn write_fallback(dist: &Path, why: &str) {
    let why = why
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    let page = format!(
        "<!doctype html><html lang=\"en\"><meta charset=\"utf-8\"><title>panorama-hub</title>\
         <body style=\"font-family:sans-serif;max-width:40em;margin:3em auto\"><h1>The console was not built</h1>\
         <p>This panorama-hub binary was built without its web console: {why}.</p>\
         <p>Install Node.js 20+ with npm, make the npm registry reachable, and run <code>cargo build --release</code> again. \
         The hub's API (<code>/rest/v1</code>, <code>/auth/v1</code>, <code>/realtime/v1</code>) and the operator CLI work without it.</p></body></html>"
    );
    std::fs::write(dist.join("index.html"), page).expect("write fallback page");
    std::fs::write(dist.join("app.js"), "").expect("write fallback app.js");
    std::fs::write(dist.join("app.css"), "").expect("write fallback app.css");
}
