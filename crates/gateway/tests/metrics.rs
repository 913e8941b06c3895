//! `start --metrics-listen`: a running gateway's Prometheus endpoint,
//! parsed with a Prometheus text-format parser after a real job.

use std::time::Duration;

use panorama_testkit::{GatewayHost, Hub};
use prometheus_parse::{Scrape, Value as PromValue};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(40);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn gauge(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .find(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .and_then(|s| match s.value {
            PromValue::Counter(v) | PromValue::Gauge(v) | PromValue::Untyped(v) => Some(v),
            _ => None,
        })
}

#[test]
fn a_running_gateway_serves_metrics() {
    let hub = Hub::start();
    let host = GatewayHost::new();
    let team = hub.create_team("gw-metrics");
    let gw = hub.pair(&team, "metrics-box");
    host.write_config(&hub, &gw, false);

    // A bad address fails the start, saying why.
    let out = host.run(
        &hub,
        &["start", "--foreground", "--metrics-listen", "localhost"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--metrics-listen needs HOST:PORT"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let addr = format!("127.0.0.1:{}", free_port());
    let mut cmd = host.command(&hub, &["start", "--foreground", "--metrics-listen", &addr]);
    cmd.env("PANORAMA_GATEWAY_LOG", "warn");
    let mut running = host.spawn(cmd);
    hub.wait_gateway_status(&gw.gateway_id, "ready", WAIT);
    let job = hub.insert_job(&gw, "diagnostic", json!({}));
    let done = hub.wait_job_terminal(&job, WAIT);
    let status = done["status"].as_str().unwrap().to_string();

    let client = reqwest::blocking::Client::new();
    let scrape = hub.wait_for("the job in the metrics", WAIT, || {
        let res = client.get(format!("http://{addr}/metrics")).send().ok()?;
        assert_eq!(res.status(), 200);
        let body = res.text().ok()?;
        let scrape =
            Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("exposition text");
        gauge(
            &scrape,
            "panorama_gateway_jobs_total",
            &[("type", "diagnostic"), ("status", &status)],
        )
        .is_some_and(|n| n == 1.0)
        .then_some(scrape)
    });
    assert!(gauge(&scrape, "panorama_gateway_outbox_pending", &[]).is_some_and(|n| n >= 0.0));
    let age = gauge(&scrape, "panorama_gateway_heartbeat_age_seconds", &[]);
    assert!(age.is_some_and(|a| (0.0..60.0).contains(&a)), "{age:?}");
    assert_eq!(
        gauge(
            &scrape,
            "panorama_gateway_provider_healthy",
            &[("provider", "claude_code"), ("status", "healthy")]
        ),
        Some(1.0)
    );
    // The diagnostic's process (`claude --version`) ended: its cost is counted.
    assert!(
        gauge(
            &scrape,
            "panorama_gateway_job_processes_total",
            &[("kind", "diagnostic")]
        )
        .is_some_and(|n| n >= 1.0),
        "no diagnostic process counted"
    );
    assert!(gauge(
        &scrape,
        "panorama_gateway_job_cpu_seconds_total",
        &[("kind", "diagnostic")]
    )
    .is_some_and(|n| n >= 0.0));
    let res = client.get(format!("http://{addr}/other")).send().unwrap();
    assert_eq!(res.status(), 404);
    assert!(running.terminate(WAIT).success());
}
