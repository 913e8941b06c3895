//! `subagent_run` of the later protocol generation (control-plane §10.4
//! "later", §16.10 "later protocol"): the control plane accepted the run
//! before enqueueing the job, and the gateway verifies that acceptance,
//! marks the run started with compare-and-sets, never inserts a run row,
//! re-reads the run before its terminal write and finalizes it through
//! `finalize-gateway-subagent-run` (direct writes where that answers 404).
//!
//! A real hub, the real gateway binary, `panorama-fake-agent` as `claude`.
//! The accepted state is made the way §16.10 says, with the service key.

use std::time::Duration;

use panorama_testkit::gateway::{GatewayHost, RunningGateway};
use panorama_testkit::{new_uuid, Hub, PairedGateway};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(40);

/// Fields drop in order: the gateway stops before its proxy and its hub.
struct Setup {
    _running: RunningGateway,
    _proxy: Option<Proxy>,
    hub: Hub,
    host: GatewayHost,
    gw: PairedGateway,
}

impl Drop for Setup {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- gateway log ---\n{}", self.host.log_tail(60));
        }
    }
}

fn setup(env: &[(&str, &str)]) -> Setup {
    start(env, false)
}

/// With `no_finalize`, the gateway talks to the hub through a loopback
/// proxy that answers 404 for `finalize-gateway-subagent-run`, as a control
/// plane without that function does (the proxy forwards plain HTTP only, so
/// job ingress runs on the 5 s reconcile).
fn start(env: &[(&str, &str)], no_finalize: bool) -> Setup {
    let hub = Hub::start();
    let host = GatewayHost::new();
    let team = hub.create_team("accepted-team");
    let gw = hub.pair(&team, "accepted-box");
    host.write_config(&hub, &gw, false);
    let proxy = no_finalize.then(|| Proxy::start(&hub.url));
    let mut cmd = host.command(&hub, &["start", "--foreground"]);
    if let Some(proxy) = &proxy {
        // The command line's URL wins over gateway.json's: rebuild it.
        cmd = host.command(&hub, &[]);
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().to_string())
            .collect();
        let mut fresh = std::process::Command::new(cmd.get_program());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => fresh.env(k, v),
                None => fresh.env_remove(k),
            };
        }
        fresh
            .current_dir(host.home())
            .stdin(std::process::Stdio::null());
        let mut it = args.into_iter();
        while let Some(a) = it.next() {
            if a == "--supabase-url" {
                it.next();
                fresh.args(["--supabase-url", &proxy.url]);
            } else {
                fresh.arg(a);
            }
        }
        fresh.args(["start", "--foreground"]);
        cmd = fresh;
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let running = host.spawn(cmd);
    hub.wait_gateway_status(&gw.gateway_id, "ready", WAIT);
    Setup {
        hub,
        host,
        gw,
        _running: running,
        _proxy: proxy,
    }
}

impl Setup {
    /// §16.10 "later protocol" step 1: the subagent is `running` on an
    /// accepted `running` run (sequence 1) whose prompt is `prompt`.
    fn accepted_run(&self, config: Value, prompt: &str) -> (String, String) {
        let sid = new_uuid();
        let run_id = new_uuid();
        self.hub.insert(
            "subagents",
            json!({"id": sid, "team_id": self.gw.team_id, "gateway_id": self.gw.gateway_id,
                   "subagent_type": "claude_code_gateway", "status": "running", "config": config,
                   "input": {"schema_version": 1, "prompt": prompt, "run_id": run_id, "run_sequence": 1},
                   "metadata": {"current_run_id": run_id, "current_run_sequence": 1, "session_note": "kept"}}),
        );
        self.hub.insert(
            "subagent_runs",
            json!({"id": run_id, "subagent_id": sid, "team_id": self.gw.team_id,
                   "gateway_id": self.gw.gateway_id, "run_sequence": 1, "status": "running",
                   "prompt": prompt, "metadata": {"accepted_by": "control-plane"}}),
        );
        (sid, run_id)
    }

    fn job(&self, sid: &str, run_id: &str) -> String {
        self.hub.insert_job(
            &self.gw,
            "subagent_run",
            json!({"subagent_id": sid, "run_id": run_id}),
        )
    }

    fn row(&self, table: &str, id: &str) -> Value {
        self.hub.row(table, id).expect("row exists")
    }

    fn event_types(&self, run_id: &str) -> Vec<String> {
        self.hub.run_event_types(run_id)
    }

    fn runs_of(&self, sid: &str) -> Vec<Value> {
        self.hub
            .select("subagent_runs", &format!("subagent_id=eq.{sid}&select=*"))
    }

    fn wait_run_status(&self, run_id: &str, status: &str) -> Value {
        self.hub
            .wait_for(&format!("run {run_id} {status}"), WAIT, || {
                self.hub
                    .row("subagent_runs", run_id)
                    .filter(|r| r["status"] == status)
            })
    }

    fn wait_subagent_status(&self, sid: &str, status: &str) -> Value {
        self.hub
            .wait_for(&format!("subagent {sid} {status}"), WAIT, || {
                self.hub
                    .row("subagents", sid)
                    .filter(|r| r["status"] == status)
            })
    }
}

/// Asserts the normal accepted path's rows: one run row (the accepted one),
/// completed, started by the gateway, its control-plane metadata kept.
fn assert_completed_accepted_run(s: &Setup, sid: &str, run_id: &str) {
    let run = s.wait_run_status(run_id, "completed");
    assert!(run["started_at"].is_string(), "started_at is set: {run}");
    assert_eq!(run["metadata"]["accepted_by"], "control-plane", "{run}");
    assert_eq!(run["metadata"]["adapter_id"], "claude_code", "{run}");
    assert_eq!(run["metadata"]["run_sequence"], 1, "{run}");
    assert_eq!(run["output"]["schema_version"], 1, "{run}");
    let sub = s.wait_subagent_status(sid, "completed");
    assert_eq!(sub["metadata"]["current_run_id"], run_id, "{sub}");
    assert_eq!(
        s.runs_of(sid).len(),
        1,
        "the gateway never inserts a run row"
    );
    let types = s.event_types(run_id);
    assert_eq!(
        types.first().map(String::as_str),
        Some("run_started"),
        "{types:?}"
    );
    assert_eq!(
        types.last().map(String::as_str),
        Some("run_completed"),
        "{types:?}"
    );
}

panorama_testkit::on_both_backends! {
fn accepted_run_completes_through_the_finalize_function() {
    let s = setup(&[]);
    let (sid, run_id) = s.accepted_run(json!({}), "say hello");
    let job = s.hub.wait_job_terminal(&s.job(&sid, &run_id), WAIT);
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["result"]["status"], "completed", "{job}");
    assert_completed_accepted_run(&s, &sid, &run_id);
    assert!(
        s.host
            .log()
            .lines()
            .any(|l| l.contains("Subagent run job") && l.contains("Accepted")),
        "the gateway took the accepted path"
    );

    // A seed job on the same gateway still takes the seed path: the gateway
    // inserts the run row itself.
    let seed_sid = new_uuid();
    let seed_run = new_uuid();
    s.hub.insert(
        "subagents",
        json!({"id": seed_sid, "team_id": s.gw.team_id, "gateway_id": s.gw.gateway_id,
               "subagent_type": "claude_code_gateway", "status": "idle", "config": {},
               "input": {"prompt": "seed hello", "run_id": seed_run}, "metadata": {}}),
    );
    let job = s.hub.wait_job_terminal(&s.job(&seed_sid, &seed_run), WAIT);
    assert_eq!(job["status"], "completed", "{job}");
    let run = s.wait_run_status(&seed_run, "completed");
    assert_eq!(run["run_sequence"], 1);
}
}

panorama_testkit::on_both_backends! {
fn accepted_run_finalizes_with_direct_writes_where_the_function_is_missing() {
    let s = start(&[], true);
    let (sid, run_id) = s.accepted_run(json!({}), "say hello");
    let job = s.hub.wait_job_terminal(&s.job(&sid, &run_id), WAIT);
    assert_eq!(job["status"], "completed", "{job}");
    assert_completed_accepted_run(&s, &sid, &run_id);
    let log = s.host.log();
    assert!(
        log.contains("control plane has no such function; writing the rows directly"),
        "the finalize function answered 404 and the fallback ran"
    );
    let dead = s.host.config_dir().join("dead-letters.jsonl");
    assert!(
        std::fs::read_to_string(&dead)
            .unwrap_or_default()
            .is_empty(),
        "no terminal write was dead-lettered"
    );
}
}

panorama_testkit::on_both_backends! {
fn a_run_the_control_plane_cancelled_mid_run_is_not_overwritten() {
    let s = setup(&[("FAKE_AGENT_HOLD_MS", "3000")]);
    let (sid, run_id) = s.accepted_run(json!({}), "take your time");
    let job_id = s.job(&sid, &run_id);
    s.hub.wait_for("run started", WAIT, || {
        s.event_types(&run_id)
            .iter()
            .any(|t| t == "run_started")
            .then_some(())
    });
    // The control plane cancels the run and the subagent while the agent runs.
    let cancelled = s.hub.patch(
        "subagent_runs",
        &format!("id=eq.{run_id}&status=eq.running"),
        json!({"status": "cancelled", "error": "Stopped by the operator", "completed_at": "2026-01-01T00:00:00.000Z"}),
    );
    assert_eq!(cancelled.len(), 1);
    s.hub.patch(
        "subagents",
        &format!("id=eq.{sid}"),
        json!({"status": "cancelled", "error": "Stopped by the operator"}),
    );
    let job = s.hub.wait_job_terminal(&job_id, WAIT);
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["result"]["status"], "cancelled", "{job}");
    // Give a wrong terminal write time to land, then check nothing did.
    std::thread::sleep(Duration::from_millis(500));
    let run = s.row("subagent_runs", &run_id);
    assert_eq!(run["status"], "cancelled", "{run}");
    assert_eq!(run["error"], "Stopped by the operator", "{run}");
    assert_eq!(run["output"], Value::Null, "{run}");
    let sub = s.row("subagents", &sid);
    assert_eq!(sub["status"], "cancelled", "{sub}");
    assert_eq!(sub["error"], "Stopped by the operator", "{sub}");
    let types = s.event_types(&run_id);
    assert_eq!(
        types.last().map(String::as_str),
        Some("run_cancelled"),
        "{types:?}"
    );
    assert!(!types.iter().any(|t| t == "run_completed"), "{types:?}");
}
}

panorama_testkit::on_both_backends! {
fn a_job_that_does_not_match_its_accepted_run_is_cancelled_and_touches_nothing() {
    let s = setup(&[]);
    // The accepted run's prompt differs from the subagent's input.
    let (sid, run_id) = s.accepted_run(json!({}), "the accepted prompt");
    s.hub.patch(
        "subagents",
        &format!("id=eq.{sid}"),
        json!({"input": {"prompt": "a different prompt", "run_id": run_id, "run_sequence": 1}}),
    );
    let job = s.hub.wait_job_terminal(&s.job(&sid, &run_id), WAIT);
    assert_eq!(job["status"], "cancelled", "{job}");
    assert_eq!(job["error"], "Accepted subagent run identity mismatch");
    assert_eq!(
        job["result"]["message"],
        "Gateway job does not match its accepted subagent run"
    );
    // The other checks, one job each.
    let (sid2, run2) = s.accepted_run(json!({}), "p");
    s.hub.patch(
        "subagents",
        &format!("id=eq.{sid2}"),
        json!({"metadata": {"current_run_id": new_uuid()}}),
    );
    let job2 = s.hub.wait_job_terminal(&s.job(&sid2, &run2), WAIT);
    assert_eq!(job2["status"], "cancelled", "{job2}");
    assert_eq!(
        job2["error"],
        "Queued subagent job no longer matches the subagent current_run_id"
    );
    let (sid3, run3) = s.accepted_run(json!({}), "p");
    s.hub.patch(
        "subagent_runs",
        &format!("id=eq.{run3}"),
        json!({"status": "failed"}),
    );
    let job3 = s.hub.wait_job_terminal(&s.job(&sid3, &run3), WAIT);
    assert_eq!(job3["status"], "cancelled", "{job3}");
    assert_eq!(job3["error"], "Accepted subagent run is failed");
    assert_eq!(job3["result"]["run_status"], "failed");

    // Skipped jobs leave the accepted rows as the control plane made them.
    std::thread::sleep(Duration::from_millis(300));
    let run = s.row("subagent_runs", &run_id);
    assert_eq!(run["status"], "running", "{run}");
    assert_eq!(run["started_at"], Value::Null, "{run}");
    assert_eq!(s.row("subagents", &sid)["status"], "running");
    assert!(s.event_types(&run_id).is_empty());
    assert_eq!(s.runs_of(&sid).len(), 1);
}
}

/// A loopback HTTP proxy in front of the hub that has no
/// `finalize-gateway-subagent-run` function.
struct Proxy {
    url: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    fn start(upstream: &str) -> Proxy {
        use axum::body::{to_bytes, Body};
        use axum::extract::{Request, State};
        use axum::http::StatusCode;
        use axum::response::{IntoResponse, Response};
        use axum::routing::post;

        async fn forward(State(upstream): State<String>, req: Request) -> Response {
            let client = reqwest::Client::new();
            let path = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_default();
            let method = reqwest::Method::from_bytes(req.method().as_str().as_bytes()).unwrap();
            let mut out = client.request(method, format!("{upstream}{path}"));
            for (k, v) in req.headers() {
                if k != "host" && k != "content-length" {
                    out = out.header(k.as_str(), v.as_bytes());
                }
            }
            let body = to_bytes(req.into_body(), usize::MAX)
                .await
                .unwrap_or_default();
            let Ok(res) = out.body(body.to_vec()).send().await else {
                return StatusCode::BAD_GATEWAY.into_response();
            };
            let mut builder = Response::builder().status(res.status().as_u16());
            for (k, v) in res.headers() {
                if k != "content-length" && k != "transfer-encoding" && k != "connection" {
                    builder = builder.header(k.as_str(), v.as_bytes());
                }
            }
            let bytes = res.bytes().await.unwrap_or_default();
            builder.body(Body::from(bytes)).unwrap()
        }

        async fn missing() -> Response {
            (
                StatusCode::NOT_FOUND,
                axum::Json(json!({"error": "Function not found"})),
            )
                .into_response()
        }

        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let upstream = upstream.to_string();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().expect("proxy runtime");
            rt.block_on(async move {
                let app = axum::Router::new()
                    .route("/functions/v1/finalize-gateway-subagent-run", post(missing))
                    .fallback(forward)
                    .with_state(upstream);
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = rx.await;
                    })
                    .await
                    .unwrap();
            });
        });
        Proxy {
            url,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
