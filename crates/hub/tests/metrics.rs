//! `GET /metrics` on a real hub: service key only, and a body that a
//! Prometheus text-format parser accepts with the promised series.

use panorama_testkit::Hub;
use prometheus_parse::{Sample, Scrape, Value as PromValue};
use serde_json::json;

fn scrape(hub: &Hub) -> Scrape {
    let res = hub
        .http()
        .get(format!("{}/metrics", hub.url))
        .bearer_auth(&hub.service_key)
        .send()
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let body = res.text().unwrap();
    Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("valid exposition text")
}

fn value(samples: &[Sample], metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .filter(|s| s.metric == metric)
        .find(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            PromValue::Counter(v) | PromValue::Gauge(v) | PromValue::Untyped(v) => *v,
            PromValue::Histogram(h) => h.iter().map(|b| b.count).fold(0.0, f64::max),
            PromValue::Summary(_) => f64::NAN,
        })
}

panorama_testkit::on_both_backends! {
fn metrics_need_the_service_key_and_parse_as_prometheus_text() {
    let hub = Hub::start();
    // Without a key, and with the anon key: refused.
    let res = hub
        .http()
        .get(format!("{}/metrics", hub.url))
        .send()
        .unwrap();
    assert_eq!(res.status(), 401);
    let res = hub
        .http()
        .get(format!("{}/metrics", hub.url))
        .header("apikey", &hub.anon_key)
        .send()
        .unwrap();
    assert_eq!(res.status(), 403);

    let team = hub.create_team("metrics");
    let gw = hub.pair(&team, "metrics-box");
    hub.insert_job(&gw, "diagnostic", json!({}));
    hub.insert_job(&gw, "diagnostic", json!({}));
    let _ = hub.select("gateway_jobs", "select=id");

    let s = scrape(&hub).samples;
    let gets = value(
        &s,
        "panorama_hub_http_requests_total",
        &[
            ("route", "/rest/v1/:table"),
            ("method", "GET"),
            ("status", "200"),
        ],
    );
    assert!(gets.is_some_and(|n| n >= 1.0), "{gets:?}");
    let posts = value(
        &s,
        "panorama_hub_http_requests_total",
        &[
            ("route", "/rest/v1/:table"),
            ("method", "POST"),
            ("status", "201"),
        ],
    );
    assert!(posts.is_some_and(|n| n >= 2.0), "{posts:?}");
    assert_eq!(
        value(&s, "panorama_hub_jobs", &[("status", "queued")]),
        Some(2.0)
    );
    let inserts = value(
        &s,
        "panorama_hub_store_operation_duration_seconds_count",
        &[("operation", "insert")],
    );
    assert!(inserts.is_some_and(|n| n >= 2.0), "{inserts:?}");
    assert!(value(
        &s,
        "panorama_hub_http_request_duration_seconds_count",
        &[("route", "/rest/v1/:table")]
    )
    .is_some());
    // A running gateway holds a realtime socket with a subscription.
    let host = panorama_testkit::GatewayHost::bare();
    host.write_config(&hub, &gw, false);
    let mut running = host.start(&hub, &[]);
    hub.wait_gateway_status(&gw.gateway_id, "ready", std::time::Duration::from_secs(30));
    let s = hub.wait_for(
        "the gateway's socket",
        std::time::Duration::from_secs(30),
        || {
            let s = scrape(&hub).samples;
            value(&s, "panorama_hub_realtime_subscriptions", &[])
                .is_some_and(|n| n >= 1.0)
                .then_some(s)
        },
    );
    assert!(value(&s, "panorama_hub_realtime_sockets", &[]).is_some_and(|n| n >= 1.0));
    assert!(running
        .terminate(std::time::Duration::from_secs(30))
        .success());
    for gauge in [
        "panorama_hub_realtime_sockets",
        "panorama_hub_realtime_subscriptions",
        "panorama_hub_realtime_queued_changes",
        "panorama_hub_change_feed_backlog",
        "panorama_hub_realtime_changes_dropped_total",
    ] {
        assert!(
            value(&s, gauge, &[]).is_some_and(|v| v >= 0.0),
            "{gauge} missing"
        );
    }
}
}
