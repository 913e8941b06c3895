//! Runs README.md's "Step by step" code block as written, with `bash`, in
//! a fresh HOME (the hub's data and the gateway's config land there), the
//! workspace binaries and a fake `claude` on PATH, and the hub on a free
//! port (`PANORAMA_HUB_LISTEN`, so the block keeps its default-port
//! comments). Checks the outcome: the job completed through the paired
//! gateway, the gateway was stopped and the hub too.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const FAKE_VERSION: &str = "2.0.14 (Claude Code)";

/// The first ```sh block after the "### Step by step" heading.
fn step_by_step_block(readme: &str) -> String {
    let section = &readme[readme
        .find("### Step by step")
        .expect("README has a Step by step section")..];
    let start = section.find("```sh\n").expect("a ```sh block") + "```sh\n".len();
    let len = section[start..].find("```").expect("the block ends");
    section[start..start + len].to_string()
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(pid, 0) == 0 }
}

#[test]
fn the_readme_step_by_step_block_works_as_written() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("read README.md");
    let block = step_by_step_block(&readme);
    assert!(block.contains("panorama-hub serve &"), "{block}");

    let home = tempfile::tempdir().unwrap();
    let bin = home.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let claude = bin.join("claude");
    std::fs::write(&claude, format!("#!/bin/sh\necho '{FAKE_VERSION}'\n")).unwrap();
    std::fs::set_permissions(&claude, std::fs::Permissions::from_mode(0o755)).unwrap();
    let hub_bin = panorama_testkit::hub_binary();
    let gateway_bin = panorama_testkit::gateway_binary();
    assert_eq!(hub_bin.parent(), gateway_bin.parent());
    let path = std::env::join_paths(
        [bin.clone(), hub_bin.parent().unwrap().to_path_buf()]
            .into_iter()
            .chain(std::env::split_paths(
                &std::env::var_os("PATH").unwrap_or_default(),
            )),
    )
    .unwrap();
    let port = free_port();

    let mut cmd = Command::new("bash");
    cmd.arg("-c").arg(&block);
    for (key, _) in std::env::vars() {
        if key.starts_with("PANORAMA_") || key.starts_with("SUPABASE_") || key == "CLAUDE_CLI" {
            cmd.env_remove(key);
        }
    }
    cmd.env("HOME", home.path())
        .env("PATH", path)
        .env("PANORAMA_HUB_LISTEN", format!("127.0.0.1:{port}"))
        .env("PANORAMA_HUB_LOG", "warn")
        .current_dir(home.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let child = cmd.spawn().expect("run bash");
    let pgid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(Duration::from_secs(180)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            // SAFETY: kill the block's own process group (the hub in it).
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            panic!("the README block did not finish within 180 s");
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let gateway_pid_file = home.path().join(".panorama/gateway/gateway.pid");
    let leftover_gateway = std::fs::read_to_string(&gateway_pid_file)
        .ok()
        .and_then(|t| t.trim().parse::<i32>().ok());
    if let Some(pid) = leftover_gateway.filter(|p| alive(*p)) {
        // SAFETY: the gateway this test's block started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    assert!(
        out.status.success(),
        "the block failed ({:?})\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    // `job wait` printed the completed diagnostic with the fake version.
    assert!(
        stdout.contains("  diagnostic  completed"),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains(FAKE_VERSION), "{stdout}");
    assert!(
        stdout.contains("OK Paired to team successfully"),
        "{stdout}"
    );
    assert!(stdout.contains("OK Gateway started"), "{stdout}");
    assert!(stdout.contains("OK Gateway stopped"), "{stdout}");
    assert!(leftover_gateway.is_none(), "stop removed the PID file");
    // The hub was stopped by the block's `kill %1`.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(Instant::now() < deadline, "the hub still listens on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
