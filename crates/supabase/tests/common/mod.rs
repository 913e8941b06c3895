//! Loopback mock server helpers shared by the integration tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};

/// A well-formed (unsigned-in-practice) JWT with the given `exp`.
pub fn jwt(sub: &str, exp: i64) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
        URL_SAFE_NO_PAD
            .encode(json!({"sub": sub, "exp": exp, "role": "authenticated"}).to_string()),
        URL_SAFE_NO_PAD.encode("sig")
    )
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// One request as the mock saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: HashMap<String, String>,
    pub body: String,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

pub type Log = Arc<Mutex<Vec<Seen>>>;

pub fn seen_from(
    method: &axum::http::Method,
    uri: &axum::http::Uri,
    headers: &axum::http::HeaderMap,
    body: &str,
) -> Seen {
    Seen {
        method: method.to_string(),
        path: uri.path().to_string(),
        query: uri.query().map(str::to_string),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect(),
        body: body.to_string(),
    }
}

pub async fn serve(router: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    addr
}

pub fn session_body(access: &str, refresh: &str, exp: i64) -> Value {
    json!({
        "access_token": access,
        "token_type": "bearer",
        "expires_in": exp - now(),
        "expires_at": exp,
        "refresh_token": refresh,
        "user": {"id": "6f1c1c1e-6a0b-4e3d-9a43-1b3f5a0e9a11", "role": "authenticated"}
    })
}

pub async fn recv_timeout<T>(rx: &mut tokio::sync::mpsc::Receiver<T>, secs: u64) -> T {
    tokio::time::timeout(Duration::from_secs(secs), rx.recv())
        .await
        .expect("timed out waiting")
        .expect("channel closed")
}
