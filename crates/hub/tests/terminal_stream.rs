//! The terminal stream (issue 15) end to end: a real hub process, the real
//! `panorama-gateway` binary, and the stream's wire spoken by a test client
//! over the hub's realtime broadcast (everything on 127.0.0.1).

use std::time::{Duration, Instant};

use panorama_protocol::terminal::{Message, OutputOrder, OutputVerdict, JOB_TERMINAL_OPEN};
use panorama_supabase::broadcast::{BroadcastChannel, BroadcastOptions};
use panorama_testkit::{GatewayHost, Hub, RunningGateway};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);
/// The gateway's idle timeout in these tests (seconds).
const IDLE_SECS: u64 = 2;

struct Setup {
    hub: Hub,
    gateway_id: String,
    team_id: String,
    resource_id: String,
    host: GatewayHost,
    running: RunningGateway,
}

/// A gateway as started by default: the stream on.
fn setup() -> Setup {
    setup_with(true, IDLE_SECS)
}

fn setup_with(stream_enabled: bool, idle_secs: u64) -> Setup {
    let hub = Hub::start();
    let team_id = hub.create_team("terminal");
    let gw = hub.pair(&team_id, "term-box");
    let host = GatewayHost::new();
    host.write_config(&hub, &gw, true);
    let idle = idle_secs.to_string();
    let mut env = vec![
        ("PANORAMA_TERMINAL_IDLE_TIMEOUT_SECS", idle.as_str()),
        ("SHELL", "/bin/bash"),
    ];
    if !stream_enabled {
        env.push(("PANORAMA_GATEWAY_TERMINAL_STREAM", "0"));
    }
    let running = host.start(&hub, &env);
    hub.wait_gateway_status(&gw.gateway_id, "ready", WAIT);
    hub.set_full_control(&gw.gateway_id, true);
    let resource_id = hub.insert(
        "team_resources",
        json!({"team_id": team_id, "resource_type": "remote_shell",
               "metadata": {"gateway_id": gw.gateway_id, "full_control": true}}),
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    Setup {
        hub,
        gateway_id: gw.gateway_id,
        team_id,
        resource_id,
        host,
        running,
    }
}

fn terminal_jobs(s: &Setup) -> Vec<Value> {
    s.hub
        .select(
            "gateway_jobs",
            &format!("gateway_id=eq.{}&select=id,job_type,status", s.gateway_id),
        )
        .into_iter()
        .filter(|j| {
            j["job_type"]
                .as_str()
                .is_some_and(|t| t.starts_with("terminal_") || t == "shell_session")
        })
        .collect()
}

/// A test client on the stream: opens a session with one job, joins its
/// channel with the service key, attaches.
struct Client {
    chan: BroadcastChannel,
    session_id: String,
    next_input: u64,
    output: Vec<u8>,
    order: OutputOrder,
}

/// Submits a `terminal_open` job (100x30) and waits until it ends:
/// `(job id, job row)`. The testkit's HTTP client blocks.
fn open_terminal_job(s: &Setup) -> (String, Value) {
    let id = s.hub.insert(
        "gateway_jobs",
        json!({"team_id": s.team_id, "gateway_id": s.gateway_id, "job_type": JOB_TERMINAL_OPEN,
               "payload": {"resource_id": s.resource_id, "cols": 100, "rows": 30}}),
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    let row = s.hub.wait_job_terminal(&id, WAIT);
    (id, row)
}

impl Client {
    async fn open(s: &Setup) -> Client {
        // The testkit's HTTP client blocks: off the runtime's workers.
        let (id, row) = tokio::task::block_in_place(|| open_terminal_job(s));
        assert_eq!(row["status"], "completed", "terminal_open: {row}");
        assert_eq!(row["result"]["session_id"], id.as_str());
        let topic = row["result"]["topic"].as_str().unwrap().to_string();
        assert_eq!(topic, format!("realtime:terminal:{id}"));
        let chan = BroadcastChannel::join(&BroadcastOptions {
            url: s.hub.url.clone(),
            apikey: s.hub.service_key.clone(),
            access_token: None,
            topic,
            private: true,
        })
        .await
        .expect("join the terminal channel");
        let mut c = Client {
            chan,
            session_id: id,
            next_input: 0,
            output: Vec::new(),
            order: OutputOrder::default(),
        };
        let resume_from = c.order.request_resume();
        c.send(Message::Attach {
            client_id: "t".into(),
            resume_from,
        })
        .await;
        c
    }

    async fn send(&self, m: Message) {
        assert!(self.chan.send(m.to_broadcast()).await, "the channel ended");
    }

    async fn type_bytes(&mut self, bytes: &[u8]) {
        self.next_input += 1;
        self.send(Message::Input {
            client_id: "t".into(),
            seq: self.next_input,
            data: bytes.to_vec(),
        })
        .await;
    }

    /// Reads messages until the collected output contains `needle`; acks
    /// output as it comes. Returns the exit message if the session ended.
    async fn until(&mut self, needle: &[u8]) {
        let deadline = tokio::time::Instant::now() + WAIT;
        // Only new bytes are searched (10 MB arrive in small chunks).
        let mut searched: usize = 0;
        loop {
            let from = searched.saturating_sub(needle.len());
            if contains(&self.output[from..], needle) {
                return;
            }
            searched = self.output.len();
            let msg = tokio::time::timeout_at(deadline, self.chan.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "no {:?} within 30 s; output tail: {:?}",
                        String::from_utf8_lossy(needle),
                        tail(&self.output)
                    )
                })
                .expect("the channel ended");
            match Message::from_broadcast(&msg) {
                Ok(Message::Output { seq, data }) => match self.order.accept(seq) {
                    OutputVerdict::Apply => {
                        self.output.extend_from_slice(&data);
                        self.send(Message::OutputAck {
                            client_id: "t".into(),
                            seq,
                        })
                        .await;
                    }
                    OutputVerdict::Duplicate | OutputVerdict::Gap { resume_from: None } => {}
                    OutputVerdict::Gap {
                        resume_from: Some(resume_from),
                    } => {
                        self.send(Message::Attach {
                            client_id: "t".into(),
                            resume_from,
                        })
                        .await
                    }
                },
                Ok(Message::Attached {
                    next_seq,
                    oldest_seq,
                }) => {
                    assert!(
                        oldest_seq <= self.order.last + 1,
                        "output lost to the ring: oldest {oldest_seq}, shown up to {}",
                        self.order.last
                    );
                    self.order.attached(next_seq, oldest_seq);
                }
                _ => {}
            }
        }
    }

    async fn exit(&mut self) -> (Option<i32>, String) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.chan.recv())
                .await
                .expect("no exit within 30 s")
                .expect("the channel ended before the exit");
            if let Ok(Message::Exit { code, reason, .. }) = Message::from_broadcast(&msg) {
                return (code, reason);
            }
        }
    }
}

/// Runs the async part of a test on its own runtime; blocking testkit
/// calls inside go through `block_in_place`.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    runtime().block_on(f)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn tail(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[b.len().saturating_sub(300)..]).into_owned()
}

fn pid_alive(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
}

/// `KEY=<number>` in the output.
fn number_after(output: &[u8], key: &str) -> i32 {
    let text = String::from_utf8_lossy(output);
    let at = text
        .rfind(key)
        .unwrap_or_else(|| panic!("no {key} in {text:?}"))
        + key.len();
    text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

#[test]
fn attach_without_a_terminal_opens_nothing_on_the_gateway() {
    let s = setup();
    // Every terminal mode, the default (auto: the stream) included.
    for mode in ["auto", "stream", "session"] {
        let out = s.hub.cli(
            &[
                "shell",
                "attach",
                "--mode",
                mode,
                "--gateway",
                &s.gateway_id,
            ],
            None,
        );
        assert_ne!(out.status.code(), Some(0), "{mode}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("standard input is not a terminal") && err.contains("nothing was opened"),
            "{mode}: {err}"
        );
        assert!(
            terminal_jobs(&s).is_empty(),
            "{mode}: {:?}",
            terminal_jobs(&s)
        );
    }
    // The gateway announces the stream in its heartbeat.
    let row = &s
        .hub
        .select("team_gateways", &format!("id=eq.{}", s.gateway_id))[0];
    assert_eq!(
        row["capabilities"]["terminal_stream"]["version"], 1,
        "{row}"
    );
}

#[test]
fn turned_off_the_stream_is_neither_announced_nor_served() {
    let s = setup_with(false, IDLE_SECS);
    let row = &s
        .hub
        .select("team_gateways", &format!("id=eq.{}", s.gateway_id))[0];
    assert!(
        row["capabilities"].get("terminal_stream").is_none(),
        "{row}"
    );
    let (_, row) = open_terminal_job(&s);
    assert_eq!(row["status"], "failed", "{row}");
    assert!(
        row["error"].to_string().contains("Unsupported job type"),
        "{row}"
    );
}

#[test]
fn ten_megabytes_arrive_complete_and_in_order_and_a_session_is_one_job() {
    // The hub and gateway start (blocking) before the runtime exists.
    let s = setup();
    block_on(ten_megabytes(&s));
}

async fn ten_megabytes(s: &Setup) {
    let mut c = Client::open(s).await;
    // The shell starts in $HOME.
    c.type_bytes(b"echo \"WD=$PWD\"\r").await;
    c.until(b"WD=/").await;
    let home = s.host.home().display().to_string();
    assert!(
        contains(&c.output, format!("WD={home}").as_bytes()),
        "{}",
        tail(&c.output)
    );

    // 1,500,000 numbered lines (10.9 MB) through the window.
    c.output.clear();
    c.type_bytes(b"stty -echo; seq 1 1500000; echo END-OF-\"SEQ\"\r")
        .await;
    c.until(b"END-OF-SEQ\r\n").await;
    let text = String::from_utf8_lossy(&c.output).into_owned();
    // After the echoed command line (and bash's bracketed-paste switch).
    let start = text
        .find("\r1\r\n2\r\n")
        .unwrap_or_else(|| panic!("seq output starts: {:?}", &text[..text.len().min(400)]))
        + 1;
    let end = text.find("END-OF-SEQ\r\n").unwrap();
    let mut expect = 1u64;
    for line in text[start..end].split("\r\n").filter(|l| !l.is_empty()) {
        assert_eq!(
            line,
            expect.to_string(),
            "line {expect} out of order or damaged"
        );
        expect += 1;
    }
    assert_eq!(expect, 1_500_001, "every line arrived");
    assert!(end - start > 10_000_000);

    // Binary-safe both ways: every byte value through `od`.
    c.output.clear();
    c.type_bytes(b"stty raw; head -c 4 | od -An -tx1; stty sane\r")
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.type_bytes(&[0x00, 0xff, 0x1b, 0x03]).await;
    c.until(b"00 ff 1b 03").await;

    // Close: the exit arrives, the tree is gone, and the whole session
    // was one job row.
    c.output.clear();
    c.type_bytes(b"echo \"P\"\"ID=$$ \"\r").await;
    c.until(b"PID=").await;
    c.until(b" \r\n").await;
    let pid = number_after(&c.output, "PID=");
    c.send(Message::Close {
        client_id: "t".into(),
    })
    .await;
    let (_, reason) = c.exit().await;
    assert_eq!(reason, "closed by the client");
    assert!(!pid_alive(pid), "the shell {pid} survived the close");
    let jobs = tokio::task::block_in_place(|| terminal_jobs(s));
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0]["id"], c.session_id.as_str());
}

#[test]
fn a_vanished_client_s_shell_tree_is_reaped_after_the_idle_timeout() {
    let s = setup();
    block_on(vanished_client(&s));
}

async fn vanished_client(s: &Setup) {
    let mut c = Client::open(s).await;
    c.type_bytes(b"sleep 1000 & echo \"C\"\"HILD=$! SHELL=$$ \"\r")
        .await;
    c.until(b"CHILD=").await;
    c.until(b" \r\n").await;
    let child = number_after(&c.output, "CHILD=");
    let shell = number_after(&c.output, "SHELL=");
    assert!(pid_alive(child) && pid_alive(shell));
    // The client vanishes without a word (as after kill -9).
    let gone_at = Instant::now();
    drop(c);
    let limit = Duration::from_secs(IDLE_SECS + 1);
    while (pid_alive(child) || pid_alive(shell))
        && gone_at.elapsed() < limit + Duration::from_secs(5)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = gone_at.elapsed();
    assert!(
        !pid_alive(child) && !pid_alive(shell),
        "the tree survived {took:?}"
    );
    assert!(
        took <= limit,
        "the tree was reaped after {took:?}, more than the idle timeout + 1 s"
    );
}

#[test]
fn a_shell_that_exits_ends_the_session_with_its_code() {
    let s = setup();
    block_on(async {
        let mut c = Client::open(&s).await;
        c.type_bytes(b"echo \"R\"\"EADY\"\r").await;
        c.until(b"READY").await;
        c.type_bytes(b"exit 3\r").await;
        let ended = tokio::time::timeout(Duration::from_secs(15), c.exit()).await;
        let log = s.host.log_tail(400);
        let (code, reason) = ended.unwrap_or_else(|_| panic!("no exit; gateway log:\n{log}"));
        assert_eq!(
            (code, reason.as_str()),
            (Some(3), "the shell exited with code 3")
        );
    });
}

/// Who may join a terminal as a signed-in person: members type, viewers
/// watch only where the resource lets them (their input, resizes and
/// closes are not relayed), people of another team are refused.
#[test]
fn team_members_type_viewers_watch_where_allowed_and_others_are_refused() {
    let s = setup();
    let member = s.hub.member(&s.team_id, "member");
    let viewer = s.hub.member(&s.team_id, "viewer");
    let other_team = s.hub.create_team("elsewhere");
    let outsider = s.hub.member(&other_team, "owner");
    block_on(async {
        let mut c = Client::open(&s).await;
        let topic = format!("realtime:terminal:{}", c.session_id);
        let opts = |token: &str| BroadcastOptions {
            url: s.hub.url.clone(),
            apikey: s.hub.anon_key.clone(),
            access_token: Some(token.to_string()),
            topic: topic.clone(),
            private: true,
        };
        let refused = BroadcastChannel::join(&opts(&outsider.access_token)).await;
        assert!(refused.is_err(), "another team's owner joined");
        let refused = BroadcastChannel::join(&opts(&viewer.access_token)).await;
        assert!(
            refused.is_err(),
            "a viewer joined a resource that does not let viewers watch"
        );

        // A member types.
        let m = BroadcastChannel::join(&opts(&member.access_token))
            .await
            .expect("a member joins");
        m.send(
            Message::Input {
                client_id: "m".into(),
                seq: 1,
                data: b"echo \"M\"\"EMBER=typed\"\r".to_vec(),
            }
            .to_broadcast(),
        )
        .await;
        c.until(b"MEMBER=typed").await;

        // The resource lets viewers watch: the viewer sees the output but
        // cannot type, resize or close.
        tokio::task::block_in_place(|| {
            s.hub.patch(
                "team_resources",
                &format!("id=eq.{}", s.resource_id),
                json!({"metadata": {"gateway_id": s.gateway_id, "full_control": true, "viewers_may_watch": true}}),
            )
        });
        let mut v = BroadcastChannel::join(&opts(&viewer.access_token))
            .await
            .expect("a viewer joins where the resource allows it");
        v.send(
            Message::Attach {
                client_id: "v".into(),
                resume_from: 1,
            }
            .to_broadcast(),
        )
        .await;
        let mut watched = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        while !contains(&watched, b"MEMBER=typed") {
            let msg = tokio::time::timeout_at(deadline, v.recv())
                .await
                .expect("the viewer sees the replay")
                .expect("the viewer's channel ended");
            if let Ok(Message::Output { data, .. }) = Message::from_broadcast(&msg) {
                watched.extend_from_slice(&data);
            }
        }
        for m in [
            Message::Input {
                client_id: "v".into(),
                seq: 1,
                data: b"echo \"V\"\"IEWER=typed\"\r".to_vec(),
            },
            Message::Resize { cols: 20, rows: 5 },
            Message::Close {
                client_id: "v".into(),
            },
        ] {
            v.send(m.to_broadcast()).await;
        }
        c.type_bytes(b"stty size; echo \"A\"\"FTER=1\"\r").await;
        c.until(b"AFTER=1").await;
        assert!(
            !contains(&c.output, b"VIEWER=typed") && contains(&c.output, b"30 100"),
            "a watcher's input, resize or close reached the shell: {}",
            tail(&c.output)
        );
    });
}

/// `shell list --json`: session id → alive.
fn listed_alive(s: &Setup, session_id: &str) -> bool {
    let out = s.hub.cli(
        &["--json", "shell", "list", "--gateway", &s.gateway_id],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).expect("shell list JSON");
    let row = rows
        .iter()
        .find(|r| r["session_id"] == session_id)
        .unwrap_or_else(|| panic!("session {session_id} not listed: {rows:?}"));
    row["alive"].as_bool().expect("alive is a boolean")
}

/// `shell list` tells a live session from an ended one; the gateway's
/// shutdown (as in an upgrade restart) reaps the shell and tells the client.
#[test]
fn shell_list_knows_live_sessions_and_shutdown_reaps_and_tells_the_client() {
    // An idle timeout that cannot end the session during the test.
    let mut s = setup_with(true, 60);
    let rt = runtime();
    let (mut c, pid) = rt.block_on(async {
        let mut c = Client::open(&s).await;
        c.type_bytes(b"echo \"P\"\"ID=$$ \"\r").await;
        c.until(b"PID=").await;
        c.until(b" \r\n").await;
        let pid = number_after(&c.output, "PID=");
        (c, pid)
    });
    let session_id = c.session_id.clone();
    assert!(
        listed_alive(&s, &session_id),
        "a live session listed as ended"
    );

    s.running.terminate(WAIT);
    let (_, reason) = rt.block_on(c.exit());
    assert_eq!(reason, "the gateway is shutting down");
    assert!(!pid_alive(pid), "the shell {pid} survived the shutdown");
    assert!(
        !listed_alive(&s, &session_id),
        "an ended session listed as alive"
    );
}
