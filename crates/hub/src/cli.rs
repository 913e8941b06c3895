//! The operator command line: `serve` runs the hub; every other command
//! talks to a running hub over HTTP with the service key.

use crate::client::HubClient;
use crate::config::{self, DEFAULT_LISTEN, DEFAULT_URL};
use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    name = "panorama-hub",
    version,
    about = "Self-hosted, Supabase-compatible control plane for Panorama gateways"
)]
pub struct Cli {
    /// URL of the hub to talk to (default: the URL a local `serve` recorded, else http://127.0.0.1:54321).
    #[arg(long, global = true, env = "PANORAMA_HUB_URL")]
    pub hub: Option<String>,
    /// Service key (default: the one in the data directory's keys.json).
    #[arg(
        long,
        global = true,
        env = "PANORAMA_HUB_SERVICE_KEY",
        hide_env_values = true
    )]
    pub service_key: Option<String>,
    /// Data directory holding hub.db and keys.json.
    #[arg(long, global = true, env = "PANORAMA_HUB_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Start a local hub and gateway, run a diagnostic job through them, keep serving until Ctrl-C.
    Up(crate::up::UpArgs),
    /// Run the hub (HTTP + WebSocket on one port).
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = DEFAULT_LISTEN)]
        listen: String,
        /// SQLite database file (default: <data-dir>/hub.db).
        #[arg(long)]
        db: Option<PathBuf>,
        /// Let anyone sign up (POST /auth/v1/signup); otherwise sign-up needs an
        /// invitation code. Also PANORAMA_HUB_OPEN_SIGNUP=true.
        #[arg(long)]
        open_signup: bool,
    },
    /// Print the hub URL, anon key and service key.
    Keys,
    /// Teams.
    #[command(subcommand)]
    Team(TeamCmd),
    /// Pairing codes for gateways.
    #[command(subcommand, name = "pairing-code")]
    PairingCode(PairingCmd),
    /// Paired gateways.
    #[command(subcommand)]
    Gateways(GatewaysCmd),
    /// One job: submit, show, wait, cancel.
    #[command(subcommand)]
    Job(JobCmd),
    /// Job listings.
    #[command(subcommand)]
    Jobs(JobsCmd),
    /// Subagent runs.
    #[command(subcommand)]
    Run(RunCmd),
    /// Team resources (remote-shell targets).
    #[command(subcommand)]
    Resource(ResourceCmd),
    /// Interactive remote shells through shell_session jobs.
    #[command(subcommand)]
    Shell(crate::attach::ShellCmd),
    /// People who sign in (Supabase Auth users).
    #[command(subcommand)]
    User(UserCmd),
    /// Sign in as a person; later commands use this session when no service key is configured.
    /// The password is read from stdin, or prompted for without echo on a terminal.
    Login {
        #[arg(long)]
        email: String,
        /// The hub's anon key (default: the one in the data directory's keys.json).
        #[arg(long, env = "PANORAMA_HUB_ANON_KEY", hide_env_values = true)]
        anon_key: Option<String>,
    },
    /// End the stored session (on the hub too) and forget it.
    Logout,
}

#[derive(Subcommand, Debug)]
pub enum UserCmd {
    /// Create a confirmed user (the first person, or anyone while sign-up is invite-only).
    /// The password is read from stdin, or prompted for without echo on a terminal.
    Create {
        #[arg(long)]
        email: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum TeamCmd {
    /// Create a team and print its id.
    Create { name: String },
    /// List teams.
    List,
    /// Invite someone by email with a role; prints the one-time code they redeem.
    Invite {
        #[arg(long)]
        team: String,
        #[arg(long)]
        email: String,
        #[arg(long, value_parser = ["owner", "admin", "member", "viewer"], default_value = "member")]
        role: String,
        /// Minutes until the code expires (default: 7 days).
        #[arg(long)]
        ttl_minutes: Option<i64>,
    },
    /// List a team's members and their roles.
    Members {
        #[arg(long)]
        team: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum PairingCmd {
    /// Create a one-time pairing code for a team.
    Create {
        #[arg(long)]
        team: String,
        /// Minutes until the code expires.
        #[arg(long, default_value_t = 15)]
        ttl_minutes: i64,
    },
}

#[derive(Subcommand, Debug)]
pub enum GatewaysCmd {
    /// List gateways with status and last heartbeat.
    List {
        #[arg(long)]
        team: Option<String>,
    },
    /// Set a gateway's team-level full (machine) control flag.
    FullControl {
        gateway: String,
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
}

#[derive(Args, Debug)]
pub struct SubmitArgs {
    #[arg(long)]
    pub gateway: String,
    /// Job type: diagnostic, model_run, subagent_run, subagent_cancel, shell_session, shell_exec.
    #[arg(long = "type")]
    pub job_type: String,
    /// Job payload (a JSON object).
    #[arg(long)]
    pub payload: Option<String>,
    /// subagent_run: the subagent type (e.g. claude_code_gateway, codex_gateway, gemini_gateway).
    #[arg(long, default_value = "claude_code_gateway")]
    pub subagent_type: String,
    /// subagent_run: the subagent config (a JSON object).
    #[arg(long)]
    pub config: Option<String>,
    /// subagent_run: the input (a JSON object; run_id and schema_version are filled in).
    #[arg(long)]
    pub input: Option<String>,
    /// subagent_run: the prompt (shorthand for --input '{"prompt": ...}').
    #[arg(long)]
    pub prompt: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum JobCmd {
    /// Queue a job for a gateway.
    Submit(SubmitArgs),
    /// Show one job.
    Show { id: String },
    /// Wait until a job is terminal; exit non-zero unless it completed.
    Wait {
        id: String,
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// Cancel a job: a queued job is cancelled at once; a running subagent run gets a subagent_cancel job.
    Cancel {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum JobsCmd {
    /// List recent jobs.
    List {
        #[arg(long)]
        gateway: Option<String>,
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

#[derive(Subcommand, Debug)]
pub enum RunCmd {
    /// Print a run's events in order; --follow waits for new ones until the run ends.
    Events {
        run_id: String,
        #[arg(long)]
        follow: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ResourceCmd {
    /// Create a remote_shell resource bound to a gateway.
    Create {
        #[arg(long)]
        team: String,
        #[arg(long)]
        gateway: String,
        /// editor (read and write) or viewer (read only).
        #[arg(long, default_value = "editor", value_parser = ["editor", "viewer"])]
        access_level: String,
        /// Allow machine control through this resource.
        #[arg(long)]
        machine_control: bool,
        #[arg(long, default_value = "Remote shell")]
        title: String,
    },
}

fn data_dir(cli: &Cli) -> Result<PathBuf> {
    match &cli.data_dir {
        Some(d) => Ok(d.clone()),
        None => Ok(config::default_data_dir()?),
    }
}

/// `--hub`, else the URL a local `serve` recorded, else the default.
fn hub_url(cli: &Cli, key_file: Option<&config::KeyFile>) -> String {
    cli.hub
        .clone()
        .or_else(|| key_file.and_then(|k| k.url.clone()))
        .unwrap_or_else(|| DEFAULT_URL.to_string())
}

fn client(cli: &Cli) -> Result<HubClient> {
    let dir = data_dir(cli)?;
    let key_file = config::read_key_file(&dir)?;
    let url = hub_url(cli, key_file.as_ref());
    let service_key = cli
        .service_key
        .clone()
        .or_else(|| key_file.map(|k| k.service_key));
    if let Some(service_key) = service_key {
        return Ok(HubClient::new(&url, &service_key));
    }
    // No service key here: act as the person who ran `panorama-hub login`.
    if let Some(session) = crate::login::load()? {
        let session = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(crate::login::current(session))
        })
        .context("the stored session could not be refreshed; run `panorama-hub login` again")?;
        return Ok(HubClient::with_bearer(
            &session.url,
            &session.anon_key,
            &session.access_token,
        ));
    }
    Err(anyhow!(
        "no service key and no session: none in {}, PANORAMA_HUB_SERVICE_KEY is not set, and nobody ran `panorama-hub login`. Run `panorama-hub serve` once on this machine, pass --service-key, or sign in with `panorama-hub login --email ...`",
        config::key_file_path(&dir).display()
    ))
}

fn parse_object(what: &str, text: &Option<String>) -> Result<serde_json::Map<String, Value>> {
    match text {
        None => Ok(Default::default()),
        Some(t) => match serde_json::from_str::<Value>(t) {
            Ok(Value::Object(o)) => Ok(o),
            Ok(_) => bail!("--{what} must be a JSON object, e.g. --{what} '{{\"key\": \"value\"}}'"),
            Err(e) => bail!("--{what} is not valid JSON ({e}); quote it for your shell, e.g. --{what} '{{\"key\": \"value\"}}'"),
        },
    }
}

fn print(cli: &Cli, value: &Value, text: impl FnOnce() -> String) {
    if cli.json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
    } else {
        println!("{}", text());
    }
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("-")
}

const TERMINAL: &[&str] = &["completed", "failed", "cancelled"];

pub async fn run(cli: Cli) -> Result<i32> {
    match &cli.command {
        Command::Serve {
            listen,
            db,
            open_signup,
        } => serve(&cli, listen, db.clone(), *open_signup).await,
        Command::Up(args) => crate::up::run(&cli, args).await,
        Command::Keys => {
            let dir = data_dir(&cli)?;
            let kf = config::read_key_file(&dir)?.ok_or_else(|| {
                anyhow!(
                    "no keys in {}: run `panorama-hub serve` once to create them",
                    dir.display()
                )
            })?;
            let url = cli
                .hub
                .clone()
                .or(kf.url.clone())
                .unwrap_or_else(|| DEFAULT_URL.into());
            let v = json!({"url": url, "anon_key": kf.anon_key, "service_key": kf.service_key});
            print(&cli, &v, || {
                format!(
                    "URL:         {url}\nanon key:    {}\nservice key: {}",
                    kf.anon_key, kf.service_key
                )
            });
            Ok(0)
        }
        Command::Team(TeamCmd::Create { name }) => {
            let row = client(&cli)?
                .insert("teams", &json!({"name": name}))
                .await?;
            print(&cli, &row, || {
                format!("team {} created: {}", s(&row, "name"), s(&row, "id"))
            });
            Ok(0)
        }
        Command::Login { email, anon_key } => login(&cli, email, anon_key.clone()).await,
        Command::Logout => {
            if let Some(session) = crate::login::load()? {
                // Best effort on the hub: the local copy goes either way.
                let _ = reqwest::Client::new()
                    .post(format!("{}/auth/v1/logout?scope=local", session.url))
                    .header("apikey", &session.anon_key)
                    .bearer_auth(&session.access_token)
                    .send()
                    .await;
            }
            let had = crate::login::forget()?;
            let v = json!({"signed_out": had});
            print(&cli, &v, || {
                if had {
                    "signed out".into()
                } else {
                    "no stored session".into()
                }
            });
            Ok(0)
        }
        Command::User(UserCmd::Create { email }) => {
            let password = read_new_password()?;
            let user = client(&cli)?
                .post_json(
                    "/auth/v1/admin/users",
                    &json!({"email": email, "password": password, "email_confirm": true}),
                )
                .await?;
            print(&cli, &user, || {
                format!("user {} created: {}", s(&user, "email"), s(&user, "id"))
            });
            Ok(0)
        }
        Command::Team(TeamCmd::Invite {
            team,
            email,
            role,
            ttl_minutes,
        }) => {
            let mut args = json!({"p_team_id": team, "p_email": email, "p_role": role});
            if let Some(t) = ttl_minutes {
                args["p_ttl_minutes"] = json!(t);
            }
            let inv = client(&cli)?.rpc("create_team_invitation", &args).await?;
            print(&cli, &inv, || {
                format!(
                    "invitation for {} as {} (expires {}):\n{}\nThey sign up with it (supabase-js: auth.signUp({{ email, password, options: {{ data: {{ invitation_code }} }} }})) or, signed in, call rpc('accept_team_invitation', {{ p_code }}).",
                    s(&inv, "email"),
                    s(&inv, "role"),
                    s(&inv, "expires_at"),
                    s(&inv, "code")
                )
            });
            Ok(0)
        }
        Command::Team(TeamCmd::Members { team }) => {
            let rows = client(&cli)?
                .select(
                    "team_members",
                    &[
                        ("team_id", format!("eq.{team}")),
                        ("order", "created_at.asc".into()),
                    ],
                )
                .await?;
            print(&cli, &Value::Array(rows.clone()), || {
                if rows.is_empty() {
                    return format!("team {team} has no members");
                }
                rows.iter()
                    .map(|r| format!("{:<8} {}  {}", s(r, "role"), s(r, "email"), s(r, "user_id")))
                    .collect::<Vec<_>>()
                    .join("\n")
            });
            Ok(0)
        }
        Command::Team(TeamCmd::List) => {
            let rows = client(&cli)?
                .select("teams", &[("order", "created_at.asc".into())])
                .await?;
            print(&cli, &Value::Array(rows.clone()), || {
                rows.iter()
                    .map(|r| format!("{}  {}", s(r, "id"), s(r, "name")))
                    .collect::<Vec<_>>()
                    .join("\n")
            });
            Ok(0)
        }
        Command::PairingCode(PairingCmd::Create { team, ttl_minutes }) => {
            let code = new_pairing_code();
            let expires = chrono::Utc::now() + chrono::Duration::minutes(*ttl_minutes);
            let c = client(&cli)?;
            let row = c
                .insert(
                    "gateway_pairing_codes",
                    &json!({"code": code, "team_id": team, "expires_at": expires.to_rfc3339()}),
                )
                .await?;
            let anon = config::read_key_file(&data_dir(&cli)?)?.map(|k| k.anon_key);
            let pair_cmd = format!(
                "panorama-gateway pair {} --supabase-url {} --anon-key {}",
                s(&row, "code"),
                c.url,
                anon.as_deref()
                    .unwrap_or("<the hub's anon key: panorama-hub keys>")
            );
            let mut v = row.clone();
            v["pair_command"] = json!(pair_cmd);
            print(&cli, &v, || {
                format!(
                    "pairing code: {}\nexpires at:   {}\npair a machine with:\n  {pair_cmd}",
                    s(&row, "code"),
                    s(&row, "expires_at")
                )
            });
            Ok(0)
        }
        Command::Gateways(GatewaysCmd::List { team }) => {
            let mut q = vec![
                ("order", "created_at.asc".to_string()),
                (
                    "select",
                    "id,team_id,device_name,status,full_control_enabled,last_seen_at,revoked_at"
                        .to_string(),
                ),
            ];
            if let Some(t) = team {
                q.push(("team_id", format!("eq.{t}")));
            }
            let rows = client(&cli)?.select("team_gateways", &q).await?;
            print(&cli, &Value::Array(rows.clone()), || {
                if rows.is_empty() {
                    return "no gateways yet: create a pairing code and run `panorama-gateway pair <CODE>` on a machine".into();
                }
                rows.iter()
                    .map(|r| {
                        format!(
                            "{}  {:<8} {:<20} last seen {}",
                            s(r, "id"),
                            s(r, "status"),
                            s(r, "device_name"),
                            s(r, "last_seen_at")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
            Ok(0)
        }
        Command::Gateways(GatewaysCmd::FullControl { gateway, state }) => {
            let rows = client(&cli)?
                .update(
                    "team_gateways",
                    &[("id", format!("eq.{gateway}"))],
                    &json!({"full_control_enabled": state == "on"}),
                )
                .await?;
            let row = rows.into_iter().next().ok_or_else(|| {
                anyhow!("no gateway {gateway}: list them with `panorama-hub gateways list`")
            })?;
            print(&cli, &row, || {
                format!("gateway {gateway}: team full control {state}")
            });
            Ok(0)
        }
        Command::Job(JobCmd::Submit(args)) => submit(&cli, args).await,
        Command::Job(JobCmd::Show { id }) => {
            let job = get_job(&client(&cli)?, id).await?;
            print(&cli, &job, || describe_job(&job));
            Ok(0)
        }
        Command::Job(JobCmd::Wait { id, timeout }) => {
            let c = client(&cli)?;
            let deadline = Instant::now() + Duration::from_secs(*timeout);
            loop {
                let job = get_job(&c, id).await?;
                let status = s(&job, "status");
                if TERMINAL.contains(&status) {
                    print(&cli, &job, || describe_job(&job));
                    return Ok(if status == "completed" { 0 } else { 1 });
                }
                if Instant::now() >= deadline {
                    print(&cli, &job, || {
                        format!(
                            "{}\ntimed out after {timeout} s waiting for job {id} (still {status})",
                            describe_job(&job)
                        )
                    });
                    return Ok(2);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Command::Job(JobCmd::Cancel { id, reason }) => cancel(&cli, id, reason.clone()).await,
        Command::Jobs(JobsCmd::List {
            gateway,
            status,
            limit,
        }) => {
            let mut q = vec![
                ("order", "created_at.desc".to_string()),
                ("limit", limit.to_string()),
            ];
            if let Some(g) = gateway {
                q.push(("gateway_id", format!("eq.{g}")));
            }
            if let Some(st) = status {
                q.push(("status", format!("eq.{st}")));
            }
            let rows = client(&cli)?.select("gateway_jobs", &q).await?;
            print(&cli, &Value::Array(rows.clone()), || {
                rows.iter()
                    .map(|r| {
                        format!(
                            "{}  {:<16} {:<10} {}",
                            s(r, "id"),
                            s(r, "job_type"),
                            s(r, "status"),
                            s(r, "created_at")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
            Ok(0)
        }
        Command::Run(RunCmd::Events { run_id, follow }) => run_events(&cli, run_id, *follow).await,
        Command::Shell(cmd) => crate::attach::run(&client(&cli)?, cmd).await,
        Command::Resource(ResourceCmd::Create {
            team,
            gateway,
            access_level,
            machine_control,
            title,
        }) => {
            let row = client(&cli)?
                .insert(
                    "team_resources",
                    &json!({
                        "team_id": team,
                        "resource_type": "remote_shell",
                        "resource_id": gateway,
                        "title": title,
                        "max_access_level": access_level,
                        "metadata": {"gateway_id": gateway, "full_control": machine_control},
                    }),
                )
                .await?;
            print(&cli, &row, || {
                format!("resource {} created (remote_shell on gateway {gateway}, {access_level}, machine control {})", s(&row, "id"), if *machine_control { "on" } else { "off" })
            });
            Ok(0)
        }
    }
}

async fn serve(cli: &Cli, listen: &str, db: Option<PathBuf>, open_signup: bool) -> Result<i32> {
    let mut hub = crate::server::bind(crate::server::ServeOptions {
        listen: listen.to_string(),
        data_dir: data_dir(cli)?,
        db,
    })
    .await?;
    if open_signup {
        std::sync::Arc::get_mut(&mut hub.state)
            .ok_or_else(|| anyhow!("internal: the hub state is shared before serving"))?
            .open_signup = true;
    }
    let v = json!({"url": hub.url, "anon_key": hub.keys.anon_key});
    if cli.json {
        println!("{v}");
    } else {
        println!(
            "panorama-hub ready at {}\nanon key: {}\n(service key: `panorama-hub keys`)",
            hub.url, hub.keys.anon_key
        );
    }
    hub.run(crate::server::shutdown_signal()).await?;
    Ok(0)
}

async fn login(cli: &Cli, email: &str, anon_key: Option<String>) -> Result<i32> {
    let dir = data_dir(cli)?;
    let key_file = config::read_key_file(&dir)?;
    let url = hub_url(cli, key_file.as_ref());
    let anon_key = anon_key
        .or_else(|| key_file.map(|k| k.anon_key))
        .ok_or_else(|| anyhow!("no anon key: pass --anon-key or set PANORAMA_HUB_ANON_KEY (the hub's operator prints it with `panorama-hub keys`)"))?;
    let password = read_password("Password: ")?;
    let session = crate::login::sign_in(&url, &anon_key, email, &password).await?;
    let path = crate::login::save(&session)?;
    let v = json!({"email": session.email, "url": session.url, "session_file": path, "expires_at": session.expires_at});
    print(cli, &v, || {
        format!(
            "signed in to {} as {} (session in {}, owner-only)",
            session.url,
            session.email,
            path.display()
        )
    });
    Ok(0)
}

/// A password: prompted once without echo on a terminal, else the first
/// line of stdin.
fn read_password(prompt: &str) -> Result<String> {
    use std::io::IsTerminal;
    let password = if std::io::stdin().is_terminal() {
        rpassword::prompt_password(prompt).context("cannot read the password")?
    } else {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("cannot read the password from stdin")?;
        line.trim_end_matches(['\r', '\n']).to_string()
    };
    if password.is_empty() {
        bail!("empty password: pipe one on stdin or type it at the prompt");
    }
    Ok(password)
}

/// A new user's password: prompted twice without echo on a terminal, else
/// the first line of stdin (for scripts: `echo "$PW" | panorama-hub user create ...`).
fn read_new_password() -> Result<String> {
    use std::io::IsTerminal;
    let password = read_password("Password: ")?;
    if std::io::stdin().is_terminal() && read_password("Password again: ")? != password {
        bail!("the two passwords differ; run the command again");
    }
    Ok(password)
}

fn new_pairing_code() -> String {
    use rand::Rng;
    // No 0/O/1/I: codes are read aloud and typed by people.
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::thread_rng();
    let mut pick = || ALPHABET[rng.gen_range(0..ALPHABET.len())] as char;
    let a: String = (0..4).map(|_| pick()).collect();
    let b: String = (0..4).map(|_| pick()).collect();
    format!("{a}-{b}")
}

async fn get_job(c: &HubClient, id: &str) -> Result<Value> {
    if uuid::Uuid::parse_str(id).is_err() {
        bail!("{id:?} is not a job id (a UUID); list jobs with `panorama-hub jobs list`");
    }
    c.select("gateway_jobs", &[("id", format!("eq.{id}"))])
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("no job {id}: list jobs with `panorama-hub jobs list`"))
}

fn describe_job(job: &Value) -> String {
    let mut out = format!(
        "job {}  {}  {}",
        s(job, "id"),
        s(job, "job_type"),
        s(job, "status")
    );
    if let Some(e) = job.get("error").and_then(Value::as_str) {
        out.push_str(&format!("\nerror: {e}"));
    }
    if let Some(r) = job.get("result").filter(|r| !r.is_null()) {
        out.push_str(&format!(
            "\nresult: {}",
            serde_json::to_string_pretty(r).unwrap_or_default()
        ));
    }
    out
}

async fn submit(cli: &Cli, args: &SubmitArgs) -> Result<i32> {
    let c = client(cli)?;
    let gateway = c
        .select("team_gateways", &[("id", format!("eq.{}", args.gateway))])
        .await
        .context("looking up the gateway")?
        .into_iter()
        .next()
        .ok_or_else(|| {
            anyhow!(
                "no gateway {}: list them with `panorama-hub gateways list`",
                args.gateway
            )
        })?;
    let team_id = s(&gateway, "team_id").to_string();
    let mut payload = parse_object("payload", &args.payload)?;
    if args.job_type == "subagent_run" && !payload.contains_key("subagent_id") {
        // Spec §16.10, seed protocol: the subagent row carries config and
        // input; the job names the subagent and the run.
        let subagent_id = uuid::Uuid::new_v4().to_string();
        let run_id = uuid::Uuid::new_v4().to_string();
        let mut input = parse_object("input", &args.input)?;
        if let Some(p) = &args.prompt {
            input.insert("prompt".into(), json!(p));
        }
        if !input.contains_key("prompt") {
            bail!("a subagent_run needs a prompt: pass --prompt TEXT or --input '{{\"prompt\": \"...\"}}'");
        }
        input.insert("schema_version".into(), json!(1));
        input.insert("run_id".into(), json!(run_id));
        input
            .entry("prompt_at")
            .or_insert_with(|| json!(chrono::Utc::now().to_rfc3339()));
        let config = parse_object("config", &args.config)?;
        c.insert(
            "subagents",
            &json!({
                "id": subagent_id, "team_id": team_id, "gateway_id": args.gateway,
                "subagent_type": args.subagent_type, "status": "idle",
                "config": config, "input": input, "metadata": {},
            }),
        )
        .await
        .context("creating the subagent row")?;
        payload.insert("subagent_id".into(), json!(subagent_id));
        payload.insert("run_id".into(), json!(run_id));
    }
    let job = c
        .insert(
            "gateway_jobs",
            &json!({"team_id": team_id, "gateway_id": args.gateway, "job_type": args.job_type, "status": "queued", "payload": payload, "requested_via": "panorama-hub-cli"}),
        )
        .await?;
    print(cli, &job, || {
        let mut t = format!(
            "job {} queued ({} on gateway {})",
            s(&job, "id"),
            args.job_type,
            args.gateway
        );
        if let Some(run) = job.pointer("/payload/run_id").and_then(Value::as_str) {
            t.push_str(&format!(
                "\nrun {run}: follow it with `panorama-hub run events {run} --follow`"
            ));
        }
        t
    });
    Ok(0)
}

async fn cancel(cli: &Cli, id: &str, reason: Option<String>) -> Result<i32> {
    let c = client(cli)?;
    let job = get_job(&c, id).await?;
    let status = s(&job, "status");
    if status == "queued" {
        let rows = c
            .update(
                "gateway_jobs",
                &[("id", format!("eq.{id}")), ("status", "eq.queued".into())],
                &json!({"status": "cancelled", "error": reason.clone().unwrap_or_else(|| "Cancelled by operator".into()), "completed_at": chrono::Utc::now().to_rfc3339()}),
            )
            .await?;
        if let Some(row) = rows.into_iter().next() {
            print(cli, &row, || {
                format!("job {id} cancelled before a gateway took it")
            });
            return Ok(0);
        }
    }
    let job = get_job(&c, id).await?;
    let status = s(&job, "status");
    if TERMINAL.contains(&status) {
        bail!("job {id} is already {status}; nothing to cancel");
    }
    if s(&job, "job_type") != "subagent_run" {
        bail!("job {id} is {status} on its gateway and is a {}: only subagent runs can be cancelled while running", s(&job, "job_type"));
    }
    let cancel_job = c
        .insert(
            "gateway_jobs",
            &json!({
                "team_id": s(&job, "team_id"), "gateway_id": s(&job, "gateway_id"), "job_type": "subagent_cancel", "status": "queued",
                "payload": {"subagent_id": job.pointer("/payload/subagent_id"), "run_id": job.pointer("/payload/run_id"), "reason": reason},
                "requested_via": "panorama-hub-cli",
            }),
        )
        .await?;
    print(cli, &cancel_job, || {
        format!(
            "cancel requested: subagent_cancel job {} queued for run {}",
            s(&cancel_job, "id"),
            job.pointer("/payload/run_id")
                .and_then(Value::as_str)
                .unwrap_or("-")
        )
    });
    Ok(0)
}

async fn run_events(cli: &Cli, run_id: &str, follow: bool) -> Result<i32> {
    let c = client(cli)?;
    if uuid::Uuid::parse_str(run_id).is_err() {
        bail!("{run_id:?} is not a run id (a UUID)");
    }
    let mut last: i64 = -1;
    loop {
        let rows = c
            .select(
                "subagent_run_events",
                &[
                    ("run_id", format!("eq.{run_id}")),
                    ("sequence", format!("gt.{last}")),
                    ("order", "sequence.asc".into()),
                ],
            )
            .await?;
        for r in &rows {
            last = r.get("sequence").and_then(Value::as_i64).unwrap_or(last);
            if cli.json {
                println!("{r}");
            } else {
                println!(
                    "{:>5} {:<26} {}",
                    last,
                    s(r, "event_type"),
                    r.get("payload").map(Value::to_string).unwrap_or_default()
                );
            }
        }
        if !follow {
            return Ok(0);
        }
        let run = c
            .select(
                "subagent_runs",
                &[("id", format!("eq.{run_id}")), ("select", "status".into())],
            )
            .await?;
        let done = run
            .first()
            .is_some_and(|r| TERMINAL.contains(&s(r, "status")));
        if done && rows.is_empty() {
            return Ok(0);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairing_codes_are_readable() {
        let code = new_pairing_code();
        assert_eq!(code.len(), 9);
        assert!(!code.contains(['0', 'O', '1', 'I']));
    }

    #[test]
    fn bad_json_flags_say_how_to_fix_them() {
        let e = parse_object("payload", &Some("{oops".into()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not valid JSON"), "{e}");
        let e = parse_object("payload", &Some("[1]".into()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("must be a JSON object"), "{e}");
    }
}
