//! Optional Prometheus endpoint of a running gateway (`start
//! --metrics-listen ADDR`): `GET /metrics` in the text exposition format.
//!
//! - `panorama_gateway_jobs_total{type,status}`: jobs ended, by type and
//!   outcome (`subagent_run` rows are the runs);
//! - `panorama_gateway_outbox_pending`: writes waiting for the hub;
//! - `panorama_gateway_heartbeat_age_seconds`: since the last heartbeat the
//!   hub accepted (absent before the first);
//! - `panorama_gateway_provider_healthy{provider,status}`: 1 for the
//!   provider's current health status;
//! - `panorama_gateway_job_processes_total{kind}`,
//!   `panorama_gateway_job_cpu_seconds_total{kind}`,
//!   `panorama_gateway_job_peak_memory_bytes{kind}`,
//!   `panorama_gateway_job_max_processes{kind}`,
//!   `panorama_gateway_job_limit_exceeded_total{kind,limit}`: what jobs'
//!   processes cost, read from their cgroups (`contain::usage_totals`;
//!   `kind` is `agent_process`, `shell_exec`, `shell_session`,
//!   `diagnostic` or `provider_probe`).
//!
//! The listener is a few lines of HTTP over a Tokio socket (one request per
//! connection) rather than a web framework: the gateway serves nothing
//! else. It holds no secrets, but it says what runs on the machine, so bind
//! it to loopback (or a private interface) only.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

static JOBS: Mutex<BTreeMap<(String, String), u64>> = Mutex::new(BTreeMap::new());
/// Unix ms of the last heartbeat the hub accepted; 0 = none yet.
static LAST_HEARTBEAT_MS: AtomicI64 = AtomicI64::new(0);

/// Environment form of `--metrics-listen` (also how the daemon child gets it).
pub const METRICS_LISTEN_ENV: &str = "PANORAMA_GATEWAY_METRICS_LISTEN";

/// Count a job that ended.
pub fn job_ended(job_type: &str, status: &str) {
    let mut jobs = JOBS.lock().unwrap_or_else(|e| e.into_inner());
    *jobs
        .entry((job_type.to_string(), status.to_string()))
        .or_default() += 1;
}

/// Note a heartbeat the hub accepted.
pub fn heartbeat_ok() {
    LAST_HEARTBEAT_MS.store(chrono::Utc::now().timestamp_millis(), Ordering::Relaxed);
}

/// Parse `--metrics-listen`: `HOST:PORT`.
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    text.trim().parse::<SocketAddr>().map_err(|_| {
        format!("--metrics-listen needs HOST:PORT with an IP address (e.g. 127.0.0.1:9464), not {text:?}")
    })
}

/// What one scrape reports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub jobs: BTreeMap<(String, String), u64>,
    pub outbox_pending: usize,
    pub heartbeat_age_secs: Option<f64>,
    /// `(provider id, health status)`.
    pub providers: Vec<(String, String)>,
    /// Process cost of ended jobs, by kind.
    pub usage: BTreeMap<String, crate::contain::UsageTotals>,
}

fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One usage metric: name, type, help, and its value from the totals.
type UsageFamily = (
    &'static str,
    &'static str,
    &'static str,
    fn(&crate::contain::UsageTotals) -> String,
);

/// The exposition text for a snapshot (pure).
pub fn render(snap: &Snapshot) -> String {
    let mut out = String::new();
    out.push_str("# HELP panorama_gateway_jobs_total Jobs ended, by type and outcome.\n# TYPE panorama_gateway_jobs_total counter\n");
    for ((job_type, status), n) in &snap.jobs {
        let _ = writeln!(
            out,
            "panorama_gateway_jobs_total{{type=\"{}\",status=\"{}\"}} {n}",
            label(job_type),
            label(status)
        );
    }
    let _ = write!(
        out,
        "# HELP panorama_gateway_outbox_pending Writes waiting to be delivered to the hub.\n# TYPE panorama_gateway_outbox_pending gauge\npanorama_gateway_outbox_pending {}\n",
        snap.outbox_pending
    );
    out.push_str("# HELP panorama_gateway_heartbeat_age_seconds Seconds since the hub last accepted a heartbeat.\n# TYPE panorama_gateway_heartbeat_age_seconds gauge\n");
    if let Some(age) = snap.heartbeat_age_secs {
        let _ = writeln!(out, "panorama_gateway_heartbeat_age_seconds {age:.3}");
    }
    out.push_str("# HELP panorama_gateway_provider_healthy 1 for each provider's current health status.\n# TYPE panorama_gateway_provider_healthy gauge\n");
    for (provider, status) in &snap.providers {
        let up = u8::from(status == "healthy");
        let _ = writeln!(
            out,
            "panorama_gateway_provider_healthy{{provider=\"{}\",status=\"{}\"}} {up}",
            label(provider),
            label(status)
        );
    }
    let families: [UsageFamily; 4] = [
        (
            "panorama_gateway_job_processes_total",
            "counter",
            "Jobs whose processes ended, by kind.",
            |t| t.jobs.to_string(),
        ),
        (
            "panorama_gateway_job_cpu_seconds_total",
            "counter",
            "CPU time of ended jobs' processes (cgroup accounting), by kind.",
            |t| format!("{:.3}", t.cpu_time_ms as f64 / 1000.0),
        ),
        (
            "panorama_gateway_job_peak_memory_bytes",
            "gauge",
            "Highest peak memory of one ended job, by kind.",
            |t| t.max_peak_memory_bytes.to_string(),
        ),
        (
            "panorama_gateway_job_max_processes",
            "gauge",
            "Most processes one ended job had at once, by kind.",
            |t| t.max_processes.to_string(),
        ),
    ];
    for (name, kind_of_metric, help, value) in families {
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind_of_metric}\n"
        );
        for (kind, totals) in &snap.usage {
            let _ = writeln!(out, "{name}{{kind=\"{}\"}} {}", label(kind), value(totals));
        }
    }
    out.push_str("# HELP panorama_gateway_job_limit_exceeded_total Jobs stopped at a containment limit, by kind and limit.\n# TYPE panorama_gateway_job_limit_exceeded_total counter\n");
    for (kind, totals) in &snap.usage {
        for (limit, n) in &totals.limit_exceeded {
            let _ = writeln!(
                out,
                "panorama_gateway_job_limit_exceeded_total{{kind=\"{}\",limit=\"{}\"}} {n}",
                label(kind),
                label(limit)
            );
        }
    }
    out
}

/// A scrape's snapshot: the runtime's parts it is given (outbox backlog,
/// `(provider, health status)` pairs) with the counters kept here.
pub fn snapshot(outbox_pending: usize, providers: Vec<(String, String)>) -> Snapshot {
    let last = LAST_HEARTBEAT_MS.load(Ordering::Relaxed);
    Snapshot {
        jobs: JOBS.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        outbox_pending,
        heartbeat_age_secs: (last > 0)
            .then(|| (chrono::Utc::now().timestamp_millis() - last).max(0) as f64 / 1000.0),
        providers,
        usage: crate::contain::usage_totals(),
    }
}

/// Where a scrape gets its snapshot (the runtime hands one in, so this
/// module needs nothing of it).
pub type SnapshotSource = Arc<dyn Fn() -> Snapshot + Send + Sync>;

/// Serve `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, source: SnapshotSource) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let source = Arc::clone(&source);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut len = 0;
            // Read the request head (bounded; the body, if any, is ignored).
            while len < buf.len() && !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                match tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    sock.read(&mut buf[len..]),
                )
                .await
                {
                    Ok(Ok(n)) if n > 0 => len += n,
                    _ => return,
                }
            }
            let head = String::from_utf8_lossy(&buf[..len]);
            let mut parts = head.split_whitespace();
            let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let (status, body) = if method == "GET" && path.split('?').next() == Some("/metrics") {
                ("200 OK", render(&source()))
            } else {
                (
                    "404 Not Found",
                    "only GET /metrics is served here\n".to_string(),
                )
            };
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(response.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_series() {
        let mut jobs = BTreeMap::new();
        jobs.insert(("subagent_run".to_string(), "failed".to_string()), 2);
        let text = render(&Snapshot {
            jobs,
            outbox_pending: 3,
            heartbeat_age_secs: Some(1.5),
            providers: vec![("codex".into(), "unhealthy".into())],
            usage: BTreeMap::from([(
                "shell_exec".to_string(),
                crate::contain::UsageTotals {
                    jobs: 4,
                    cpu_time_ms: 1500,
                    max_peak_memory_bytes: 1 << 20,
                    max_processes: 5,
                    limit_exceeded: BTreeMap::from([("memory", 1)]),
                },
            )]),
        });
        assert!(text
            .contains("panorama_gateway_jobs_total{type=\"subagent_run\",status=\"failed\"} 2\n"));
        assert!(text.contains("panorama_gateway_outbox_pending 3\n"));
        assert!(text.contains("panorama_gateway_heartbeat_age_seconds 1.500\n"));
        assert!(text.contains(
            "panorama_gateway_provider_healthy{provider=\"codex\",status=\"unhealthy\"} 0\n"
        ));
        assert!(text.contains("panorama_gateway_job_processes_total{kind=\"shell_exec\"} 4\n"));
        assert!(
            text.contains("panorama_gateway_job_cpu_seconds_total{kind=\"shell_exec\"} 1.500\n")
        );
        assert!(
            text.contains("panorama_gateway_job_peak_memory_bytes{kind=\"shell_exec\"} 1048576\n")
        );
        assert!(text.contains("panorama_gateway_job_max_processes{kind=\"shell_exec\"} 5\n"));
        assert!(text.contains(
            "panorama_gateway_job_limit_exceeded_total{kind=\"shell_exec\",limit=\"memory\"} 1\n"
        ));
    }

    #[test]
    fn listen_addresses_need_a_port() {
        assert_eq!(parse_listen("127.0.0.1:9464").unwrap().port(), 9464);
        assert!(parse_listen("127.0.0.1").unwrap_err().contains("HOST:PORT"));
    }
}
