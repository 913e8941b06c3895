//! `panorama-hub login`: a person's session for the operator CLI, stored
//! owner-only, used when no service key is configured, refreshed before it
//! expires; `logout` ends it. Also `serve --open-signup`. Real hub, real
//! CLI processes.
//!
//! Run: `cargo test -p panorama-hub --test login`.

use panorama_testkit::Hub;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const HUB: &str = env!("CARGO_BIN_EXE_panorama-hub");

/// The CLI on a machine without the hub's keys: only the URL, the anon
/// key and the session file are known.
fn cli(hub: &Hub, home: &std::path::Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(HUB)
        .arg("--json")
        .args(args)
        .env("PANORAMA_HUB_DATA_DIR", home.join("no-hub-here"))
        .env("PANORAMA_HUB_URL", &hub.url)
        .env("PANORAMA_HUB_ANON_KEY", &hub.anon_key)
        .env(
            "PANORAMA_HUB_SESSION_FILE",
            home.join("config/session.json"),
        )
        .env_remove("PANORAMA_HUB_SERVICE_KEY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the CLI");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn json_of(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "CLI failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("CLI JSON")
}

panorama_testkit::on_both_backends! {
fn login_gives_the_cli_a_persons_view_and_logout_ends_it() {
    // Access tokens live 61 s: one refresh margin (60 s) plus one second.
    let hub = Hub::start_with_env(&[("PANORAMA_HUB_ACCESS_TOKEN_TTL", "61")]);
    let ours = hub.create_team("ours");
    hub.create_team("theirs");
    let person = hub.member(&ours, "viewer");
    let home = tempfile::tempdir().unwrap();

    let wrong = cli(
        &hub,
        home.path(),
        &["login", "--email", &person.email],
        "nope\n",
    );
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("Invalid login credentials"));

    let out = json_of(&cli(
        &hub,
        home.path(),
        &["login", "--email", &person.email],
        "correct horse battery\n",
    ));
    let file = home.path().join("config/session.json");
    assert_eq!(out["session_file"].as_str(), file.to_str());
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&file), 0o600, "the session file is owner-only");
    assert_eq!(mode(file.parent().unwrap()), 0o700);
    let stored: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();

    let teams = json_of(&cli(&hub, home.path(), &["team", "list"], ""));
    let ids: Vec<&str> = teams
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [ours.as_str()], "a person sees their own team only");
    let refused = cli(&hub, home.path(), &["team", "create", "mine"], "");
    assert!(!refused.status.success(), "a person may not create teams");

    // Past the refresh margin: the next command refreshes and saves.
    std::thread::sleep(Duration::from_millis(2100));
    let again = json_of(&cli(&hub, home.path(), &["team", "list"], ""));
    assert_eq!(again, teams);
    let rotated: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_ne!(
        rotated["refresh_token"], stored["refresh_token"],
        "the rotated refresh token was saved"
    );
    assert_eq!(mode(&file), 0o600);

    let out = json_of(&cli(&hub, home.path(), &["logout"], ""));
    assert_eq!(out["signed_out"], true);
    assert!(!file.exists());
    let none = cli(&hub, home.path(), &["team", "list"], "");
    assert!(!none.status.success());
    assert!(String::from_utf8_lossy(&none.stderr).contains("panorama-hub login"));
    // The session ended on the hub too: its refresh token is dead.
    let res = hub
        .req(
            reqwest::Method::POST,
            "/auth/v1/token?grant_type=refresh_token",
            &hub.anon_key,
        )
        .json(&serde_json::json!({"refresh_token": rotated["refresh_token"]}))
        .send()
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
}
}

panorama_testkit::on_both_backends! {
fn serve_open_signup_lets_anyone_sign_up() {
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(HUB)
        .args([
            "--json",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--open-signup",
        ])
        .env("PANORAMA_HUB_DATA_DIR", data.path())
        .env_remove("PANORAMA_HUB_OPEN_SIGNUP")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let ready: Value = serde_json::from_str(line.trim()).unwrap();
    let (url, anon) = (
        ready["url"].as_str().unwrap(),
        ready["anon_key"].as_str().unwrap(),
    );
    let res = reqwest::blocking::Client::new()
        .post(format!("{url}/auth/v1/signup"))
        .header("apikey", anon)
        .json(&serde_json::json!({"email": "open@example.test", "password": "secret123"}))
        .send()
        .unwrap();
    let status = res.status().as_u16();
    let body: Value = res.json().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"]["email"], "open@example.test");
}
}

panorama_testkit::on_both_backends! {
/// Team secrets through a person's session: an admin sets (creates, then
/// replaces: people may not merge-upsert), lists and deletes; a member
/// lists names only; nobody sees a value; a session is not sent to
/// another hub named by --hub-url.
fn a_signed_in_admin_manages_secrets_and_a_member_lists_names() {
    let hub = Hub::start();
    let ours = hub.create_team("ours");
    let admin = hub.member(&ours, "admin");
    let member = hub.member(&ours, "member");
    let (admin_home, member_home) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for (home, person) in [(&admin_home, &admin), (&member_home, &member)] {
        json_of(&cli(
            &hub,
            home.path(),
            &["login", "--email", &person.email],
            "correct horse battery\n",
        ));
    }
    let set = ["secret", "set", "--team", "ours", "TOKEN"];
    json_of(&cli(&hub, admin_home.path(), &set, "first-VALUE\n"));
    json_of(&cli(&hub, admin_home.path(), &set, "second-VALUE\n"));
    for home in [&admin_home, &member_home] {
        let out = cli(&hub, home.path(), &["secret", "list", "--team", "ours"], "");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("-VALUE"));
        let names: Vec<String> = json_of(&out)
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(names, ["TOKEN"]);
    }
    let refused = cli(&hub, member_home.path(), &set, "member-VALUE\n");
    assert!(!refused.status.success(), "a member may not set secrets");
    let refused = cli(
        &hub,
        member_home.path(),
        &["secret", "delete", "--team", "ours", "TOKEN"],
        "",
    );
    assert!(!refused.status.success(), "a member may not delete secrets");
    let wrong_hub = cli(
        &hub,
        admin_home.path(),
        &[
            "--hub-url",
            "http://127.0.0.1:9",
            "secret",
            "list",
            "--team",
            "ours",
        ],
        "",
    );
    assert!(!wrong_hub.status.success());
    assert!(
        String::from_utf8_lossy(&wrong_hub.stderr).contains("the stored session is for"),
        "{}",
        String::from_utf8_lossy(&wrong_hub.stderr)
    );
    json_of(&cli(
        &hub,
        admin_home.path(),
        &["secret", "delete", "--team", "ours", "TOKEN"],
        "",
    ));
    assert!(hub
        .select("team_secrets", &format!("team_id=eq.{ours}"))
        .is_empty());
}
}
