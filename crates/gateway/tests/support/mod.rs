//! Shared helpers of `reaping.rs`, `secrets.rs` and `lifecycle.rs`: one
//! paired gateway on a [`GatewayHost`] against a real hub, job and
//! subagent fixtures. (`/proc` reading with start times, against PID
//! reuse, is `panorama_testkit::procs`.)
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use panorama_testkit::{GatewayHost, Hub, PairedGateway, RunningGateway};
use serde_json::{json, Value};

pub use panorama_testkit::new_uuid as new_id;
pub use panorama_testkit::WAIT;

/// `(subagent_type, provider name)` of the three agent CLIs.
pub const PROVIDERS: [(&str, &str); 3] = [
    ("claude_code_gateway", "claude"),
    ("codex_gateway", "codex"),
    ("gemini_gateway", "gemini"),
];

/// One paired gateway on its own host.
pub struct Node<'h> {
    pub hub: &'h Hub,
    pub host: GatewayHost,
    pub gw: PairedGateway,
    pub env: Vec<(String, String)>,
    pub running: Option<RunningGateway>,
    pub resource_id: Option<String>,
}

impl<'h> Node<'h> {
    /// Pairs a gateway (team flag and install flag = `full_control`) and
    /// writes its config; not started yet. `FAKE_AGENT_LOG` points into
    /// the host.
    pub fn new(hub: &'h Hub, name: &str, full_control: bool, env: &[(&str, &str)]) -> Node<'h> {
        let host = GatewayHost::new();
        let team = hub.create_team(&format!("{name}-team"));
        let gw = hub.pair(&team, name);
        if full_control {
            hub.set_full_control(&gw.gateway_id, true);
        }
        host.write_config(hub, &gw, full_control);
        let mut all: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        all.push((
            "FAKE_AGENT_LOG".into(),
            host.path("agent-log.jsonl").display().to_string(),
        ));
        Node {
            hub,
            host,
            gw,
            env: all,
            running: None,
            resource_id: None,
        }
    }

    /// Starts the gateway and waits for `ready`.
    pub fn start(&mut self) -> i32 {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let running = self.host.start(self.hub, &env);
        let pid = running.pid() as i32;
        self.running = Some(running);
        self.wait_ready();
        pid
    }

    pub fn wait_ready(&mut self) {
        let started = Instant::now();
        loop {
            let row = self.hub.row("team_gateways", &self.gw.gateway_id);
            if row.is_some_and(|r| r["status"] == "ready") {
                return;
            }
            let exited = self.running.as_mut().is_some_and(|r| !r.is_running());
            if exited || started.elapsed() > WAIT {
                panic!(
                    "gateway {} not ready; log tail:\n{}",
                    self.gw.gateway_id,
                    self.host.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> i32 {
        self.running.as_ref().expect("running").pid() as i32
    }

    /// SIGTERM; returns when the process has exited.
    pub fn terminate(&mut self) {
        let mut running = self.running.take().expect("running");
        running.terminate(WAIT);
    }

    pub fn subagent(&self, subagent_type: &str, config: Value, prompt: &str) -> String {
        let id = new_id();
        self.hub.insert(
            "subagents",
            json!({"id": id, "team_id": self.gw.team_id, "gateway_id": self.gw.gateway_id,
                   "subagent_type": subagent_type, "status": "idle", "config": config,
                   "input": {"prompt": prompt}, "metadata": {}}),
        );
        id
    }

    pub fn job(&self, job_type: &str, payload: Value) -> String {
        self.hub.insert_job(&self.gw, job_type, payload)
    }

    pub fn wait_job(&self, id: &str) -> Value {
        self.hub.wait_job_terminal(id, WAIT)
    }

    /// A `remote_shell` resource bound to this gateway (created once).
    pub fn resource(&mut self) -> String {
        if let Some(id) = &self.resource_id {
            return id.clone();
        }
        let id = self.hub.insert(
            "team_resources",
            json!({"team_id": self.gw.team_id, "resource_type": "remote_shell", "title": "shell",
                   "max_access_level": "editor",
                   "metadata": {"gateway_id": self.gw.gateway_id, "full_control": true}}),
        )["id"]
            .as_str()
            .unwrap()
            .to_string();
        self.resource_id = Some(id.clone());
        id
    }

    pub fn agent_log(&self) -> Vec<Value> {
        std::fs::read_to_string(self.host.path("agent-log.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn file(&self, rel: &str) -> PathBuf {
        self.host.path(rel)
    }
}

/// A transcript that holds the agent for a minute.
pub fn hold_transcript(dir: &std::path::Path) -> PathBuf {
    let path = dir.join("hold.jsonl");
    std::fs::write(&path, "#!fake sleep 60000\n").unwrap();
    path
}
