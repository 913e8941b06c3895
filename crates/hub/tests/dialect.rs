//! One dialect across panorama-hub and panorama-gateway: `--hub-url`,
//! `--data-dir`, `full-control … on|off`, a global `--json`; the old
//! spellings (`--hub`, `enable|disable`) still work but are not shown, and
//! `up`/`serve` help lists only the options that apply to them.

use panorama_testkit::Hub;
use serde_json::Value;
use std::process::{Command, Output};

fn hub_cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_panorama-hub"))
        .args(args)
        .env("PANORAMA_HUB_LOG", "warn")
        .env_remove("PANORAMA_HUB_URL")
        .env_remove("PANORAMA_HUB_SERVICE_KEY")
        .env_remove("PANORAMA_HUB_DATA_DIR")
        .output()
        .expect("run panorama-hub")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn new_and_old_spellings_reach_the_same_hub() {
    let hub = Hub::start();
    let team = hub.create_team("dialect");
    let gw = hub.pair(&team, "dialect-box");
    for (url_flag, word, expect) in [
        ("--hub-url", "on", true),
        ("--hub", "off", false),
        ("--hub-url", "enable", true),
        ("--hub", "disable", false),
    ] {
        let out = hub_cli(&[
            url_flag,
            &hub.url,
            "--service-key",
            &hub.service_key,
            "--json",
            "gateways",
            "full-control",
            &gw.gateway_id,
            word,
        ]);
        assert!(
            out.status.success(),
            "{url_flag} {word}: {}",
            text(&out.stderr)
        );
        let row: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            row["full_control_enabled"], expect,
            "{url_flag} {word}: {row}"
        );
        let stored = hub.row("team_gateways", &gw.gateway_id).unwrap();
        assert_eq!(stored["full_control_enabled"], expect);
    }
    let out = hub_cli(&[
        "--hub-url",
        &hub.url,
        "--service-key",
        &hub.service_key,
        "gateways",
        "full-control",
        &gw.gateway_id,
        "toggle",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("[possible values: on, off]"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn help_shows_the_shared_spellings_and_only_what_applies() {
    let top = text(&hub_cli(&["--help"]).stdout);
    assert!(top.contains("--hub-url <URL>"), "{top}");
    assert!(!top.contains("--hub <"), "{top}");
    for sub in ["up", "serve"] {
        let help = text(&hub_cli(&[sub, "--help"]).stdout);
        assert!(help.contains("--data-dir"), "{sub}: {help}");
        for foreign in ["--hub-url", "--service-key", "--hub "] {
            assert!(
                !help.contains(foreign),
                "{sub} --help lists {foreign}: {help}"
            );
        }
    }
    let fc = text(&hub_cli(&["gateways", "full-control", "--help"]).stdout);
    assert!(fc.contains("--hub-url"), "{fc}");
    assert!(fc.contains("on or off"), "{fc}");
}
