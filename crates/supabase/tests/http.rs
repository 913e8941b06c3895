//! PostgREST / RPC / Functions / Auth behaviour against a loopback mock.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use common::*;
use panorama_supabase::{Client, ClientOptions, Error, InvokeOptions, Session};
use serde_json::{json, Value};

#[derive(Default)]
struct Mock {
    log: Log,
    refreshes: AtomicUsize,
    refresh_delay_ms: AtomicUsize,
    refresh_fail: AtomicBool,
    /// Bearer tokens that PostgREST rejects with 401 PGRST303.
    rejected: Mutex<HashSet<String>>,
}

fn json_resp(status: u16, v: Value) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        [("content-type", "application/json; charset=utf-8")],
        v.to_string(),
    )
        .into_response()
}

async fn handler(
    State(m): State<Arc<Mock>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: String,
) -> Response {
    let seen = seen_from(&method, &uri, &headers, &body);
    m.log.lock().unwrap().push(seen.clone());
    let bearer = seen
        .header("authorization")
        .unwrap_or("")
        .trim_start_matches("Bearer ")
        .to_string();
    match (method.as_str(), uri.path()) {
        ("POST", "/auth/v1/token") => {
            let n = m.refreshes.fetch_add(1, Ordering::SeqCst) + 1;
            let delay = m.refresh_delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay as u64)).await;
            }
            if m.refresh_fail.load(Ordering::SeqCst) {
                return (
                    StatusCode::BAD_REQUEST,
                    [
                        ("content-type", "application/json"),
                        ("x-supabase-api-version", "2024-01-01"),
                    ],
                    r#"{"code":"refresh_token_not_found","message":"Invalid Refresh Token: Refresh Token Not Found"}"#,
                )
                    .into_response();
            }
            let exp = now() + 3600;
            json_resp(
                200,
                session_body(&jwt(&format!("new-{n}"), exp), &format!("rt-{n}"), exp),
            )
        }
        ("GET", "/auth/v1/user") => json_resp(
            200,
            json!({"id":"6f1c1c1e-6a0b-4e3d-9a43-1b3f5a0e9a11","role":"authenticated"}),
        ),
        (_, p) if p.starts_with("/rest/v1/") => {
            let rejected = m.rejected.lock().unwrap().clone();
            if rejected.contains(&bearer) || rejected.contains("*") {
                return json_resp(
                    401,
                    json!({"code":"PGRST303","details":null,"hint":null,"message":"JWT expired"}),
                );
            }
            match (method.as_str(), p) {
                ("GET", "/rest/v1/items") => json_resp(200, json!([{"id": 1, "who": bearer}])),
                ("GET", "/rest/v1/none") => json_resp(200, json!([])),
                ("GET", "/rest/v1/multi") => json_resp(200, json!([{"id":1},{"id":2}])),
                ("GET", "/rest/v1/one") => {
                    if seen.header("accept") == Some("application/vnd.pgrst.object+json") {
                        json_resp(200, json!({"id":1}))
                    } else {
                        json_resp(200, json!([{"id":1}]))
                    }
                }
                ("POST", "/rest/v1/dup") => json_resp(
                    409,
                    json!({"code":"23505","details":"Key (id)=(1) already exists.","hint":null,"message":"duplicate key value violates unique constraint \"dup_pkey\""}),
                ),
                ("POST", "/rest/v1/jobs") => StatusCode::CREATED.into_response(),
                ("PATCH", "/rest/v1/jobs") | ("DELETE", "/rest/v1/jobs") => {
                    if seen.header("prefer") == Some("return=representation") {
                        json_resp(200, json!([{"id":"7"}]))
                    } else {
                        StatusCode::NO_CONTENT.into_response()
                    }
                }
                ("POST", "/rest/v1/rpc/count_things") => json_resp(200, json!(3)),
                ("POST", "/rest/v1/rpc/get_obj") => json_resp(200, json!({"a": 1})),
                ("POST", "/rest/v1/rpc/void_fn") => StatusCode::NO_CONTENT.into_response(),
                _ => json_resp(
                    404,
                    json!({"code":"PGRST205","details":null,"hint":null,"message":"Could not find the table"}),
                ),
            }
        }
        ("POST", "/functions/v1/gateway-heartbeat") => json_resp(200, json!({"ok": true})),
        ("POST", "/functions/v1/bad") => json_resp(400, json!({"error": "bad status"})),
        ("POST", "/functions/v1/text") => "hello".into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn start() -> (Arc<Mock>, String) {
    let m = Arc::new(Mock::default());
    let app = Router::new().fallback(handler).with_state(m.clone());
    let addr = serve(app).await;
    (m, format!("http://{addr}"))
}

fn client(url: &str) -> Client {
    Client::with_options(
        url,
        "anon-key",
        ClientOptions {
            read_retry_base: Duration::from_millis(10),
            ..Default::default()
        },
    )
    .unwrap()
}

fn session(access: &str, refresh: &str, exp: i64) -> Session {
    Session {
        access_token: access.into(),
        refresh_token: refresh.into(),
        expires_at: exp,
        token_type: "bearer".into(),
        user: None,
    }
}

fn requests(m: &Mock, path: &str) -> Vec<Seen> {
    m.log
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.path == path)
        .cloned()
        .collect()
}

#[tokio::test]
async fn rest_requests_match_supabase_js_on_the_wire() {
    let (m, url) = start().await;
    let c = client(&url);
    let rows = c
        .from("items")
        .select("id, status")
        .eq("team_id", 7)
        .is_null("gateway_id")
        .in_("status", &["queued", "running"])
        .order("created_at", true, None)
        .limit(5)
        .execute()
        .await
        .unwrap();
    assert_eq!(rows, vec![json!({"id":1,"who":"anon-key"})]);
    let r = &requests(&m, "/rest/v1/items")[0];
    assert_eq!(
        r.query.as_deref(),
        Some("select=id%2Cstatus&team_id=eq.7&gateway_id=is.null&status=in.%28queued%2Crunning%29&order=created_at.asc&limit=5")
    );
    assert_eq!(r.header("apikey"), Some("anon-key"));
    assert_eq!(r.header("authorization"), Some("Bearer anon-key"));
    assert_eq!(r.header("accept-profile"), Some("public"));
    assert_eq!(r.header("content-profile"), None);
    assert!(r
        .header("x-client-info")
        .unwrap()
        .starts_with("panorama-gateway/"));
    assert!(r
        .header("x-client-info")
        .unwrap()
        .ends_with("; runtime=rust"));

    // maybe_single collapse
    assert_eq!(
        c.from("none").select("*").maybe_single().await.unwrap(),
        None
    );
    let err = c
        .from("multi")
        .select("*")
        .maybe_single()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("PGRST116"));
    assert_eq!(err.status(), Some(406));
    // single sends the object Accept header
    assert_eq!(
        c.from("one").select("*").single().await.unwrap(),
        json!({"id":1})
    );

    // insert conflict → unique violation
    let err = c
        .from("dup")
        .insert(json!({"id": 1}))
        .execute()
        .await
        .unwrap_err();
    assert!(err.is_unique_violation(), "{err}");
    assert!(err.to_string().contains("duplicate key"), "{err}");
    let r = &requests(&m, "/rest/v1/dup")[0];
    assert_eq!(r.header("content-profile"), Some("public"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("prefer"), None);
    assert_eq!(r.body, r#"{"id":1}"#);

    // bulk insert without select → empty rows, columns param
    let rows = c
        .from("jobs")
        .insert(json!([{"a":1},{"b":2}]))
        .execute()
        .await
        .unwrap();
    assert!(rows.is_empty());
    let r = &requests(&m, "/rest/v1/jobs")[0];
    assert_eq!(r.query.as_deref(), Some("columns=%22a%22%2C%22b%22"));

    // compare-and-set update
    let rows = c
        .from("jobs")
        .update(json!({"status":"claimed"}))
        .eq("id", "7")
        .eq("status", "queued")
        .select("id")
        .execute()
        .await
        .unwrap();
    assert_eq!(rows, vec![json!({"id":"7"})]);
    let r = requests(&m, "/rest/v1/jobs")
        .into_iter()
        .find(|s| s.method == "PATCH")
        .unwrap();
    assert_eq!(
        r.query.as_deref(),
        Some("id=eq.7&status=eq.queued&select=id")
    );
    assert_eq!(r.header("prefer"), Some("return=representation"));
    assert_eq!(r.body, r#"{"status":"claimed"}"#);

    // delete without select → 204 → []
    assert!(c
        .from("jobs")
        .delete()
        .eq("id", "7")
        .execute()
        .await
        .unwrap()
        .is_empty());
    let r = requests(&m, "/rest/v1/jobs")
        .into_iter()
        .find(|s| s.method == "DELETE")
        .unwrap();
    assert_eq!(r.header("content-type"), Some("application/json"));

    // unknown table → PostgREST error with code
    let err = c.from("nope").select("*").execute().await.unwrap_err();
    assert_eq!(err.code(), Some("PGRST205"));
}

#[tokio::test]
async fn rpc_and_functions() {
    let (m, url) = start().await;
    let c = client(&url);
    c.restore_session(session("sess-token", "rt-0", now() + 3600));
    assert_eq!(
        c.rpc("count_things", json!({"p_team": 7})).await.unwrap(),
        json!(3)
    );
    assert_eq!(c.rpc("get_obj", Value::Null).await.unwrap(), json!({"a":1}));
    assert_eq!(c.rpc("void_fn", json!({})).await.unwrap(), Value::Null);
    let r = &requests(&m, "/rest/v1/rpc/get_obj")[0];
    assert_eq!(r.body, "{}");
    assert_eq!(r.header("authorization"), Some("Bearer sess-token"));
    assert_eq!(r.header("content-profile"), Some("public"));

    let v = c
        .functions()
        .invoke("gateway-heartbeat", json!({"status":"ready"}))
        .await
        .unwrap();
    assert_eq!(v, json!({"ok": true}));
    let r = &requests(&m, "/functions/v1/gateway-heartbeat")[0];
    assert_eq!(r.header("authorization"), Some("Bearer sess-token"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.body, r#"{"status":"ready"}"#);

    let err = c.functions().invoke("bad", json!({})).await.unwrap_err();
    match &err {
        Error::Http {
            status,
            message,
            body,
            ..
        } => {
            assert_eq!(*status, 400);
            assert_eq!(message, "bad status");
            assert_eq!(body.as_ref().unwrap()["error"], "bad status");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "edge function `bad` returned HTTP 400: bad status"
    );

    let v = c
        .functions()
        .invoke_with(
            "text",
            json!({"code": "X"}),
            InvokeOptions {
                anon_bearer: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(v, json!("hello"));
    let r = &requests(&m, "/functions/v1/text")[0];
    assert_eq!(r.header("authorization"), Some("Bearer anon-key"));
}

#[tokio::test]
async fn refreshes_before_expiry_and_reports_the_rotated_session() {
    let (m, url) = start().await;
    let c = client(&url);
    let persisted: Arc<Mutex<Vec<Session>>> = Arc::default();
    let p = persisted.clone();
    c.on_session_change(Box::new(move |s| p.lock().unwrap().push(s.clone())));
    c.restore_session(session(&jwt("old", now() + 30), "rt-0", now() + 30));

    let rows = c.from("items").select("*").execute().await.unwrap();
    assert_eq!(m.refreshes.load(Ordering::SeqCst), 1);
    let new = c.session().unwrap();
    assert_eq!(new.refresh_token, "rt-1");
    assert_eq!(rows[0]["who"], new.access_token);
    assert_eq!(
        persisted.lock().unwrap().as_slice(),
        std::slice::from_ref(&new)
    );

    let r = &requests(&m, "/auth/v1/token")[0];
    assert_eq!(r.query.as_deref(), Some("grant_type=refresh_token"));
    assert_eq!(r.header("apikey"), Some("anon-key"));
    assert_eq!(r.header("authorization"), Some("Bearer anon-key"));
    assert_eq!(r.header("x-supabase-api-version"), Some("2024-01-01"));
    assert_eq!(
        r.header("content-type"),
        Some("application/json;charset=UTF-8")
    );
    assert_eq!(r.body, r#"{"refresh_token":"rt-0"}"#);

    // a fresh token is not refreshed again
    c.from("items").select("*").execute().await.unwrap();
    assert_eq!(m.refreshes.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn refreshes_once_on_401_then_retries() {
    let (m, url) = start().await;
    let c = client(&url);
    let old = jwt("old", now() + 3600);
    m.rejected.lock().unwrap().insert(old.clone());
    c.restore_session(session(&old, "rt-0", now() + 3600));
    let rows = c.from("items").select("*").execute().await.unwrap();
    assert_eq!(m.refreshes.load(Ordering::SeqCst), 1);
    let new = c.session().unwrap();
    assert_ne!(new.access_token, old);
    assert_eq!(rows[0]["who"], new.access_token);
    assert_eq!(requests(&m, "/rest/v1/items").len(), 2);

    // a persistent 401 is retried only once and then surfaces
    m.rejected.lock().unwrap().insert("*".into());
    let err = c.from("items").select("*").execute().await.unwrap_err();
    assert_eq!(err.code(), Some("PGRST303"));
    assert_eq!(err.status(), Some(401));
    assert_eq!(m.refreshes.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn concurrent_requests_share_one_refresh() {
    let (m, url) = start().await;
    m.refresh_delay_ms.store(200, Ordering::SeqCst);
    let c = client(&url);
    let calls = Arc::new(AtomicUsize::new(0));
    let k = calls.clone();
    c.on_session_change(Box::new(move |_| {
        k.fetch_add(1, Ordering::SeqCst);
    }));
    c.restore_session(session(&jwt("old", now() + 10), "rt-0", now() + 10));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                c.from("items")
                    .select("*")
                    .execute()
                    .await
                    .map(|r| r[0]["who"].clone())
            } else {
                c.refresh().await.map(|s| Value::String(s.access_token))
            }
        }));
    }
    let mut seen = HashSet::new();
    for t in tasks {
        seen.insert(t.await.unwrap().unwrap().to_string());
    }
    assert_eq!(m.refreshes.load(Ordering::SeqCst), 1);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        seen.len(),
        1,
        "all callers used the same new token: {seen:?}"
    );
    let bodies: Vec<String> = requests(&m, "/auth/v1/token")
        .into_iter()
        .map(|s| s.body)
        .collect();
    assert_eq!(bodies, vec![r#"{"refresh_token":"rt-0"}"#.to_string()]);
}

#[tokio::test]
async fn refresh_failure_is_parsed_and_cached() {
    let (m, url) = start().await;
    m.refresh_fail.store(true, Ordering::SeqCst);
    let c = client(&url);
    // still-valid token: kept after the failure
    c.restore_session(session(&jwt("old", now() + 3600), "rt-0", now() + 3600));
    let err = c.refresh().await.unwrap_err();
    assert_eq!(err.code(), Some("refresh_token_not_found"));
    assert_eq!(err.status(), Some(400));
    assert!(err.to_string().contains("Refresh Token Not Found"), "{err}");
    assert!(c.session().is_some());
    // same refresh token within the cooldown: no second network call
    let again = c.refresh().await.unwrap_err();
    assert_eq!(again.code(), Some("refresh_token_not_found"));
    assert_eq!(m.refreshes.load(Ordering::SeqCst), 1);

    // expired token + fatal failure: session dropped, request fails with the auth error
    let c2 = client(&url);
    c2.restore_session(session(&jwt("old", now() - 5), "rt-x", now() - 5));
    let err = c2.from("items").select("*").execute().await.unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "{err:?}");
    assert!(c2.session().is_none());
}

#[tokio::test]
async fn set_session_validates_or_refreshes() {
    let (m, url) = start().await;
    let c = client(&url);
    let persisted = Arc::new(AtomicUsize::new(0));
    let p = persisted.clone();
    c.on_session_change(Box::new(move |_| {
        p.fetch_add(1, Ordering::SeqCst);
    }));
    let valid = jwt("u", now() + 600);
    let s = c.set_session(&valid, "rt-a").await.unwrap();
    assert_eq!(s.access_token, valid);
    assert_eq!(s.refresh_token, "rt-a");
    assert_eq!(s.user.as_ref().unwrap()["role"], "authenticated");
    let r = &requests(&m, "/auth/v1/user")[0];
    assert_eq!(
        r.header("authorization").unwrap(),
        format!("Bearer {valid}")
    );
    assert_eq!(m.refreshes.load(Ordering::SeqCst), 0);

    let expired = jwt("u", now() - 10);
    let s = c.set_session(&expired, "rt-b").await.unwrap();
    assert_eq!(m.refreshes.load(Ordering::SeqCst), 1);
    assert_eq!(s.refresh_token, "rt-1");
    assert_eq!(persisted.load(Ordering::SeqCst), 2);
    assert_eq!(c.get_user().await.unwrap()["role"], "authenticated");

    let err = c.set_session("not-a-jwt", "rt").await.unwrap_err();
    assert_eq!(err.code(), Some("invalid_jwt"));
}

#[tokio::test]
async fn transport_errors_say_what_happened() {
    // Bind then drop a listener to get a closed loopback port.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let c = Client::with_options(
        &format!("http://127.0.0.1:{port}"),
        "anon-key",
        ClientOptions {
            read_retries: 1,
            read_retry_base: Duration::from_millis(5),
            ..Default::default()
        },
    )
    .unwrap();
    let err = c.from("items").select("*").execute().await.unwrap_err();
    assert!(err.is_transport(), "{err:?}");
    assert!(err.to_string().contains("GET /rest/v1/items"), "{err}");
}
