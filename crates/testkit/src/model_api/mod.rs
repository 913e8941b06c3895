//! A loopback model API for the real agent CLIs (issue 12): enough of the
//! Anthropic Messages API (SSE and plain JSON), the OpenAI Responses API
//! (SSE) and the Gemini API (`generateContent`, `streamGenerateContent`)
//! for Claude Code, Codex and Gemini CLI to finish a turn that calls their
//! shell tool and then answers, and to return structured output.
//!
//! The server is stateless per request: what to answer is decided from the
//! conversation the CLI sends (has the shell tool been called since the
//! last prompt? is structured output asked for?) and the test's
//! [`Script`]. The decision is the pure [`plan::plan_reply`]; the wire
//! encoders are in [`wire`]. Every request is recorded for assertions.
//!
//! It runs on its own thread (own tokio runtime) so blocking tests can use
//! it; dropped → shut down.

pub mod plan;
pub mod wire;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use serde_json::Value;

pub use plan::{plan_reply, Reply, Script, Wire};

/// One request a CLI sent.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub wire: Option<Wire>,
    pub method: String,
    pub path: String,
    pub body: Value,
    /// What the model answered.
    pub reply: Option<Reply>,
    /// When the answer was handed to the HTTP layer (wall clock, after any
    /// scripted delay): the start of a live-lag measurement.
    pub answered_at: Option<std::time::SystemTime>,
}

#[derive(Default)]
struct State {
    script: Script,
    requests: Vec<RecordedRequest>,
    counter: u64,
}

/// A running loopback model API on `127.0.0.1:<free port>`.
pub struct ModelApi {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    state: Arc<Mutex<State>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The dummy API key every CLI is given.
pub const DUMMY_KEY: &str = "loopback-dummy-key";

impl ModelApi {
    pub fn start() -> ModelApi {
        let state = Arc::new(Mutex::new(State::default()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel::<SocketAddr>();
        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let shared = state.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("model API runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind the loopback model API");
                addr_tx
                    .send(listener.local_addr().expect("local addr"))
                    .expect("report address");
                let app = axum::Router::new().fallback(move |method, uri, headers, body| {
                    handle(shared.clone(), method, uri, headers, body)
                });
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = shutdown_rx.await;
                    })
                    .await
                    .expect("serve the loopback model API");
            });
        });
        let addr = addr_rx.recv().expect("model API address");
        ModelApi {
            url: format!("http://{addr}"),
            state,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        }
    }

    /// Replaces the script for the following requests.
    pub fn set_script(&self, script: Script) {
        self.state.lock().unwrap().script = script;
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Environment pointing every CLI at this API with a dummy key, plus
    /// the switches that keep them off the network otherwise (telemetry,
    /// update checks) and a dead loopback proxy as a safety net for any
    /// request that ignores those switches.
    pub fn cli_env(&self) -> Vec<(String, String)> {
        let v = |k: &str, v: &str| (k.to_string(), v.to_string());
        vec![
            // Claude Code: documented base URL + API key variables.
            v("ANTHROPIC_BASE_URL", &self.url),
            v("ANTHROPIC_API_KEY", DUMMY_KEY),
            v("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
            v("DISABLE_AUTOUPDATER", "1"),
            v("DISABLE_TELEMETRY", "1"),
            v("CLAUDE_CODE_MAX_RETRIES", "1"),
            // Codex: the `loopback` provider in ~/.codex/config.toml reads this key.
            v("LOOPBACK_API_KEY", DUMMY_KEY),
            // Gemini CLI (@google/genai): base URL + API key variables.
            v("GOOGLE_GEMINI_BASE_URL", &self.url),
            v("GEMINI_API_KEY", DUMMY_KEY),
            // Anything else goes to a closed loopback port.
            v("HTTPS_PROXY", "http://127.0.0.1:9"),
            v("HTTP_PROXY", "http://127.0.0.1:9"),
            v("NO_PROXY", "127.0.0.1,localhost"),
        ]
    }

    /// Writes the per-user CLI configuration the base URLs need into
    /// `home`: `~/.codex/config.toml` (a `loopback` model provider using
    /// the Responses wire) and `~/.gemini/settings.json` (API-key auth,
    /// no usage statistics or update checks).
    pub fn configure_home(&self, home: &Path) {
        let codex = home.join(".codex");
        std::fs::create_dir_all(&codex).expect("create ~/.codex");
        std::fs::write(codex.join("config.toml"), codex_config(&self.url))
            .expect("write ~/.codex/config.toml");
        let gemini = home.join(".gemini");
        std::fs::create_dir_all(&gemini).expect("create ~/.gemini");
        std::fs::write(gemini.join("settings.json"), GEMINI_SETTINGS)
            .expect("write ~/.gemini/settings.json");
    }
}

/// `~/.codex/config.toml` for a loopback provider at `url`.
pub fn codex_config(url: &str) -> String {
    format!(
        r#"model_provider = "loopback"
model = "gpt-5-codex"
check_for_update_on_startup = false

[model_providers.loopback]
name = "loopback"
base_url = "{url}/v1"
env_key = "LOOPBACK_API_KEY"
wire_api = "responses"
supports_websockets = false
request_max_retries = 0
stream_max_retries = 0

[analytics]
enabled = false
"#
    )
}

/// `~/.gemini/settings.json`: API-key auth without telemetry.
pub const GEMINI_SETTINGS: &str = r#"{
  "security": { "auth": { "selectedType": "gemini-api-key" } },
  "privacy": { "usageStatisticsEnabled": false },
  "telemetry": { "enabled": false },
  "general": { "disableAutoUpdate": true, "disableUpdateNag": true }
}
"#;

impl Drop for ModelApi {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn handle(
    state: Arc<Mutex<State>>,
    method: Method,
    uri: Uri,
    _headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let query = uri.query().unwrap_or("").to_string();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let wire = Wire::from_path(&path);
    let (script, n) = {
        let mut st = state.lock().unwrap();
        st.requests.push(RecordedRequest {
            wire,
            method: method.to_string(),
            path: if query.is_empty() {
                path.clone()
            } else {
                format!("{path}?{query}")
            },
            body: body.clone(),
            reply: None,
            answered_at: None,
        });
        st.counter += 1;
        (st.script.clone(), st.counter)
    };
    let index = n as usize - 1;
    let Some(wire) = wire else {
        return json_response(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"error": {"message": format!("loopback model API: no route {path}")}}),
        );
    };
    let reply = plan_reply(wire, &body, &script);
    if script.answer_delay_ms > 0 && matches!(reply, Reply::Text(_)) {
        tokio::time::sleep(Duration::from_millis(script.answer_delay_ms)).await;
    }
    {
        let mut st = state.lock().unwrap();
        if let Some(r) = st.requests.get_mut(index) {
            r.reply = Some(reply.clone());
            r.answered_at = Some(std::time::SystemTime::now());
        }
    }
    let streaming = match wire {
        Wire::Anthropic => body.get("stream").and_then(Value::as_bool) == Some(true),
        Wire::OpenAiResponses => body.get("stream").and_then(Value::as_bool) != Some(false),
        Wire::GeminiGenerate => false,
        Wire::GeminiStream => true,
        Wire::AnthropicCountTokens => false,
    };
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| plan::gemini_model_from_path(&path))
        .unwrap_or_else(|| "loopback-model".into());
    if streaming {
        let events = wire::sse_events(wire, &reply, &model, n);
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "text/event-stream")
            .header("cache-control", "no-cache")
            .body(Body::from(events))
            .expect("SSE response")
    } else {
        json_response(StatusCode::OK, &wire::json_body(wire, &reply, &model, n))
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("JSON response")
}
