//! Test support shared by the workspace's integration tests: a real
//! `panorama-hub` process on a free loopback port with its own data
//! directory, and fixtures created through its public API (never by
//! touching its database).

use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod agents;
pub mod gateway;
pub mod model_api;
pub mod people;
pub mod postgres;
pub mod procs;
pub mod proxy;
pub mod reference;

pub use gateway::{fake_agent_binary, GatewayHost, RunningGateway, SCRIPTED_CLAUDE_VERSION, WAIT};
pub use people::UserSession;
pub use postgres::{backend, on_backend, Backend};
pub use proxy::RoundRobinProxy;

/// Finds the `panorama-hub` binary next to the running test's target dir,
/// building it when it is missing (e.g. `cargo test -p panorama-gateway`).
/// `PANORAMA_HUB_BIN` overrides.
pub fn hub_binary() -> PathBuf {
    workspace_binary("PANORAMA_HUB_BIN", "panorama-hub", "panorama-hub")
}

/// Finds the `panorama-gateway` binary in the running test's target dir
/// (next to `panorama-hub`, where `panorama-hub up` looks for it),
/// building it when it is missing (e.g. `cargo test -p panorama-hub`).
/// `PANORAMA_GATEWAY_BIN` overrides.
pub fn gateway_binary() -> PathBuf {
    workspace_binary(
        "PANORAMA_GATEWAY_BIN",
        "panorama-gateway",
        "panorama-gateway",
    )
}

/// The binary `bin`: `override_var` when set; else `CARGO_BIN_EXE_<bin>`,
/// which Cargo sets when it runs an integration test of the binary's own
/// package; else `target/<profile>/<bin>` of the running test, built with
/// `cargo build -p <package> --bin <bin>` when missing (an integration test
/// only gets its own package's binaries built for it).
pub(crate) fn workspace_binary(override_var: &str, package: &str, bin: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(override_var) {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os(format!("CARGO_BIN_EXE_{bin}")) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/<bin>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf();
    let path = profile_dir.join(bin);
    if !path.exists() {
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "-p", package, "--bin", bin])
            .status()
            .unwrap_or_else(|e| panic!("run cargo build for {bin}: {e}"));
        assert!(status.success(), "building {bin} for the tests failed");
    }
    path
}

/// A hub's URL and keys, reached some other way (through a proxy).
#[derive(Debug, Clone)]
pub struct HubView {
    pub url: String,
    pub anon_key: String,
    pub service_key: String,
}

/// The PostgreSQL database a test hub with `data_dir` uses: the one it
/// used before, or a fresh one.
fn database_of(data_dir: &Path) -> String {
    let remembered = data_dir.join("test-database-url");
    if let Ok(url) = std::fs::read_to_string(&remembered) {
        return url.trim().to_string();
    }
    let url = postgres::fresh_database();
    std::fs::write(&remembered, &url).expect("remember the test database");
    url
}

/// A running hub. Killed when dropped.
pub struct Hub {
    pub url: String,
    pub anon_key: String,
    pub service_key: String,
    pub data_dir: tempfile::TempDir,
    child: Child,
    http: reqwest::blocking::Client,
}

impl Hub {
    /// Starts a hub on a free port with a fresh data directory.
    pub fn start() -> Hub {
        Self::start_with_env(&[])
    }

    pub fn start_with_env(env: &[(&str, &str)]) -> Hub {
        let data_dir = tempfile::tempdir().expect("temp dir");
        Self::start_in(data_dir, "127.0.0.1:0", env)
    }

    /// Starts a hub on `listen` using `data_dir` (reused across restarts),
    /// on this thread's [`backend`]: on PostgreSQL, a fresh database of the
    /// test binary's cluster, remembered in the data directory so that a
    /// restarted hub finds its rows again.
    pub fn start_in(data_dir: tempfile::TempDir, listen: &str, env: &[(&str, &str)]) -> Hub {
        let database = match backend() {
            Backend::Sqlite => None,
            Backend::Postgres => Some(database_of(data_dir.path())),
        };
        Self::start_on(data_dir, listen, database.as_deref(), env)
    }

    /// Starts a hub on `listen` with `data_dir` and, when given, the
    /// database URL `database` (another replica's, for instance).
    pub fn start_on(
        data_dir: tempfile::TempDir,
        listen: &str,
        database: Option<&str>,
        env: &[(&str, &str)],
    ) -> Hub {
        let mut cmd = Command::new(hub_binary());
        cmd.args(["--json", "serve", "--listen", listen])
            .env("PANORAMA_HUB_DATA_DIR", data_dir.path())
            .env("PANORAMA_HUB_LOG", "warn")
            .env_remove("PANORAMA_HUB_DATABASE_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(url) = database {
            cmd.env("PANORAMA_HUB_DATABASE_URL", url);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn panorama-hub");
        let stdout = child.stdout.take().expect("hub stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read hub ready line");
        let ready: Value = serde_json::from_str(line.trim())
            .unwrap_or_else(|_| panic!("hub did not start: {line:?}"));
        let keys: Value = serde_json::from_str(
            &std::fs::read_to_string(data_dir.path().join("keys.json")).expect("keys.json"),
        )
        .expect("keys.json is JSON");
        Hub {
            url: ready["url"].as_str().expect("url").to_string(),
            anon_key: keys["anon_key"].as_str().expect("anon").to_string(),
            service_key: keys["service_key"].as_str().expect("service").to_string(),
            data_dir,
            child,
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
        }
    }

    /// Another hub process on the same database with the same keys (a
    /// replica behind a load balancer). Only PostgreSQL hubs have replicas.
    pub fn replica(&self) -> Hub {
        self.replica_with_env(&[])
    }

    pub fn replica_with_env(&self, env: &[(&str, &str)]) -> Hub {
        let database = std::fs::read_to_string(self.data_dir.path().join("test-database-url"))
            .expect("a replica needs a hub on PostgreSQL (start it under Backend::Postgres)");
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::copy(
            self.data_dir.path().join("keys.json"),
            dir.path().join("keys.json"),
        )
        .expect("copy the keys to the replica");
        std::fs::write(dir.path().join("test-database-url"), &database)
            .expect("remember the replica's database");
        Self::start_on(dir, "127.0.0.1:0", Some(database.trim()), env)
    }

    /// The same hub's API reached through `url` (a proxy in front of it).
    pub fn via(&self, url: &str) -> HubView {
        HubView {
            url: url.to_string(),
            anon_key: self.anon_key.clone(),
            service_key: self.service_key.clone(),
        }
    }

    /// Stops the process (SIGKILL) and hands back its data directory.
    pub fn kill(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = tempfile::tempdir().expect("temp dir");
        std::mem::replace(&mut self.data_dir, dir)
    }

    pub fn http(&self) -> &reqwest::blocking::Client {
        &self.http
    }

    /// A request with `apikey: anon` and `Authorization: Bearer <token>`.
    pub fn req(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
    ) -> reqwest::blocking::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.url))
            .header("apikey", &self.anon_key)
            .header("authorization", format!("Bearer {token}"))
    }

    /// Inserts one row with the service key and returns it.
    pub fn insert(&self, table: &str, row: Value) -> Value {
        let res = self
            .req(
                reqwest::Method::POST,
                &format!("/rest/v1/{table}"),
                &self.service_key,
            )
            .header("prefer", "return=representation")
            .json(&row)
            .send()
            .expect("insert request");
        let status = res.status();
        let body: Value = res.json().expect("insert response JSON");
        assert!(
            status.is_success(),
            "insert into {table} failed: {status} {body}"
        );
        body[0].clone()
    }

    /// Selects rows with the service key.
    pub fn select(&self, table: &str, query: &str) -> Vec<Value> {
        self.try_select(table, query)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Hub::select`], but an unreachable hub or an error status is
    /// an `Err` (for harnesses that restart the hub under load).
    pub fn try_select(&self, table: &str, query: &str) -> Result<Vec<Value>, String> {
        let res = self
            .req(
                reqwest::Method::GET,
                &format!("/rest/v1/{table}?{query}"),
                &self.service_key,
            )
            .send()
            .map_err(|e| format!("select from {table}: {e}"))?;
        let status = res.status();
        let body: Value = res
            .json()
            .map_err(|e| format!("select from {table}: response is not JSON: {e}"))?;
        if !status.is_success() {
            return Err(format!("select from {table} failed: {status} {body}"));
        }
        Ok(body.as_array().cloned().unwrap_or_default())
    }

    /// `PATCH /rest/v1/<table>?<query>` with the service key; returns the
    /// changed rows.
    pub fn patch(&self, table: &str, query: &str, body: Value) -> Vec<Value> {
        let res = self
            .req(
                reqwest::Method::PATCH,
                &format!("/rest/v1/{table}?{query}"),
                &self.service_key,
            )
            .header("prefer", "return=representation")
            .json(&body)
            .send()
            .expect("patch request");
        let status = res.status();
        let out: Value = res.json().expect("patch response JSON");
        assert!(
            status.is_success(),
            "patch of {table} failed: {status} {out}"
        );
        out.as_array().cloned().unwrap_or_default()
    }

    /// The row of `table` with this `id`, if any.
    pub fn row(&self, table: &str, id: &str) -> Option<Value> {
        self.select(table, &format!("id=eq.{id}&select=*"))
            .into_iter()
            .next()
    }

    /// The `event_type`s of a run's `subagent_run_events`, by sequence.
    pub fn run_event_types(&self, run_id: &str) -> Vec<String> {
        self.select(
            "subagent_run_events",
            &format!("run_id=eq.{run_id}&select=event_type&order=sequence.asc"),
        )
        .iter()
        .map(|e| e["event_type"].as_str().unwrap_or_default().to_string())
        .collect()
    }

    /// Inserts a `gateway_jobs` row for this gateway; returns its id.
    pub fn insert_job(&self, gw: &PairedGateway, job_type: &str, payload: Value) -> String {
        self.insert(
            "gateway_jobs",
            json!({"team_id": gw.team_id, "gateway_id": gw.gateway_id,
                   "job_type": job_type, "payload": payload}),
        )["id"]
            .as_str()
            .expect("inserted job id")
            .to_string()
    }

    /// Waits until the job is `completed`, `failed` or `cancelled`.
    pub fn wait_job_terminal(&self, id: &str, timeout: Duration) -> Value {
        self.wait_for(&format!("job {id} to finish"), timeout, || {
            self.row("gateway_jobs", id).filter(|row| {
                matches!(
                    row["status"].as_str(),
                    Some("completed" | "failed" | "cancelled")
                )
            })
        })
    }

    /// Waits until the gateway's `team_gateways.status` is `status`.
    pub fn wait_gateway_status(&self, gateway_id: &str, status: &str, timeout: Duration) -> Value {
        self.wait_for(&format!("gateway {status}"), timeout, || {
            self.row("team_gateways", gateway_id)
                .filter(|row| row["status"] == status)
        })
    }

    /// Sets `team_gateways.full_control_enabled` (the operator's switch).
    pub fn set_full_control(&self, gateway_id: &str, on: bool) {
        self.patch(
            "team_gateways",
            &format!("id=eq.{gateway_id}"),
            json!({"full_control_enabled": on}),
        );
    }

    pub fn create_team(&self, name: &str) -> String {
        self.insert("teams", json!({"name": name}))["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn create_pairing_code(&self, team_id: &str) -> String {
        let code = format!("T{}", &uuid_like()[..8]).to_uppercase();
        self.insert(
            "gateway_pairing_codes",
            json!({"code": code, "team_id": team_id, "expires_at": "2999-01-01T00:00:00Z"}),
        );
        code
    }

    /// Pairs a new gateway into `team_id` through the pairing function.
    pub fn pair(&self, team_id: &str, device_name: &str) -> PairedGateway {
        let code = self.create_pairing_code(team_id);
        let res = self
            .req(
                reqwest::Method::POST,
                "/functions/v1/exchange-gateway-pairing-code",
                &self.anon_key,
            )
            .json(&json!({"code": code, "device_name": device_name}))
            .send()
            .expect("pairing request");
        let body: Value = res.json().expect("pairing JSON");
        assert_eq!(body["success"], json!(true), "pairing failed: {body}");
        PairedGateway {
            gateway_id: body["gateway_id"].as_str().unwrap().into(),
            team_id: body["team_id"].as_str().unwrap().into(),
            access_token: body["access_token"].as_str().unwrap().into(),
            refresh_token: body["refresh_token"].as_str().unwrap().into(),
        }
    }

    /// `POST /auth/v1/token?grant_type=refresh_token` with the anon key (a
    /// gateway's or a person's refresh token): status and JSON body.
    pub fn refresh_session(&self, refresh_token: &str) -> (u16, Value) {
        let res = self
            .req(
                reqwest::Method::POST,
                "/auth/v1/token?grant_type=refresh_token",
                &self.anon_key,
            )
            .json(&json!({"refresh_token": refresh_token}))
            .send()
            .expect("refresh request");
        (res.status().as_u16(), res.json().unwrap_or(Value::Null))
    }

    /// `panorama-hub <args>` (the operator CLI) pointed at this hub through
    /// its data directory, with none of the runner's `PANORAMA_HUB_URL`,
    /// `PANORAMA_HUB_SERVICE_KEY` or `NO_COLOR`, and warnings-only logs.
    pub fn cli_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(hub_binary());
        cmd.args(args)
            .env("PANORAMA_HUB_DATA_DIR", self.data_dir.path())
            .env("PANORAMA_HUB_LOG", "warn")
            .env_remove("PANORAMA_HUB_URL")
            .env_remove("PANORAMA_HUB_SERVICE_KEY")
            .env_remove("NO_COLOR");
        cmd
    }

    /// Runs the operator CLI against this hub, with `stdin` fed to it
    /// (closed when `None`).
    pub fn cli(&self, args: &[&str], stdin: Option<&str>) -> std::process::Output {
        use std::io::Write;
        let mut child = self
            .cli_command(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run panorama-hub");
        if let Some(text) = stdin {
            let mut pipe = child.stdin.take().expect("stdin pipe");
            pipe.write_all(text.as_bytes())
                .expect("write the CLI's stdin");
        }
        child.wait_with_output().expect("wait for panorama-hub")
    }

    /// `panorama-hub --json <args>`, which must succeed; its JSON output.
    #[track_caller]
    pub fn cli_json(&self, args: &[&str]) -> Value {
        let mut full = vec!["--json"];
        full.extend_from_slice(args);
        let out = self.cli(&full, None);
        assert!(
            out.status.success(),
            "panorama-hub {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "panorama-hub {args:?} printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// The hub's `/metrics` text (service key).
    pub fn metrics_text(&self) -> String {
        let res = self
            .http
            .get(format!("{}/metrics", self.url))
            .bearer_auth(&self.service_key)
            .send()
            .expect("metrics request");
        assert!(res.status().is_success(), "metrics: {}", res.status());
        res.text().expect("metrics text")
    }

    /// The value of an unlabelled metric in the hub's `/metrics`.
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.metrics_text().lines().find_map(|l| {
            let (key, value) = l.split_once(' ')?;
            (key == name).then(|| value.trim().parse().ok())?
        })
    }

    /// How many REST reads (`GET /rest/v1/<table>`) the hub has answered,
    /// from its `/metrics`.
    pub fn rest_reads(&self) -> u64 {
        self.metrics_text()
            .lines()
            .filter(|l| {
                l.starts_with("panorama_hub_http_requests_total{")
                    && l.contains("route=\"/rest/v1/:table\"")
                    && l.contains("method=\"GET\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    /// Waits until a running gateway has listed its job queue again (a
    /// reconcile pass, every 5 s) after this call. The test must make no
    /// REST reads meanwhile. Two more reads are awaited: a gateway's only
    /// other periodic read, the heartbeat's clock calibration, comes every
    /// 30 s, so two of them cannot follow each other without a reconcile
    /// pass between.
    pub fn wait_reconcile_pass(&self, timeout: Duration) {
        let before = self.rest_reads();
        self.wait_for("the gateway's next reconcile pass", timeout, || {
            (self.rest_reads() >= before + 2).then_some(())
        });
    }

    /// Waits until `f` returns Some, polling every 50 ms, or panics after
    /// `timeout` with `what`.
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut() -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Clone)]
pub struct PairedGateway {
    pub gateway_id: String,
    pub team_id: String,
    pub access_token: String,
    pub refresh_token: String,
}

/// A random version-4 UUID in canonical form (row ids made by tests).
pub fn new_uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A random hex string.
pub fn uuid_like() -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut out = String::new();
    for _ in 0..2 {
        let mut h = RandomState::new().build_hasher();
        h.write_u128(Instant::now().elapsed().as_nanos());
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}
