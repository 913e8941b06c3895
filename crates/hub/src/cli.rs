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
    /// Remote shells: shell_session terminals, or shell_exec commands where the gateway only runs those.
    #[command(subcommand)]
    Shell(crate::attach::ShellCmd),
    /// Team secrets for shell_exec jobs' secret_env (values are write-only).
    #[command(subcommand)]
    Secret(SecretCmd),
}

/// Which dispatch recipe a `subagent_run` uses (spec §16.10).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recipe {
    /// Later protocol (2.32.x): the hub accepts the run (run row, subagent running) before queueing the job.
    Accepted,
    /// Seed protocol (2.29): an idle subagent row and the job; the gateway creates the run.
    Seed,
}

#[derive(Subcommand, Debug)]
pub enum SecretCmd {
    /// Set (create or replace) a team secret; the value is read from stdin or --value-file, never from the command line.
    Set {
        /// Team id.
        #[arg(long)]
        team: String,
        /// Secret name (letters, digits, _ - .; up to 128 characters).
        name: String,
        /// Read the value from this file instead of stdin.
        #[arg(long)]
        value_file: Option<PathBuf>,
    },
    /// List a team's secret names (values are never shown).
    List {
        /// Team id.
        #[arg(long)]
        team: String,
    },
    /// Delete a team secret.
    Delete {
        /// Team id.
        #[arg(long)]
        team: String,
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum TeamCmd {
    /// Create a team and print its id.
    Create { name: String },
    /// List teams.
    List,
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
    /// One gateway: its agent CLIs (versions, health, flags) and every
    /// full-control layer.
    Show { gateway: String },
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
    /// subagent_run: the dispatch recipe. `accepted` (the later protocol, 2.32.x gateways) or `seed` (2.29).
    #[arg(long, value_enum, default_value = "accepted")]
    pub recipe: Recipe,
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

fn client(cli: &Cli) -> Result<HubClient> {
    let dir = data_dir(cli)?;
    let key_file = config::read_key_file(&dir)?;
    let url = cli
        .hub
        .clone()
        .or_else(|| key_file.as_ref().and_then(|k| k.url.clone()))
        .unwrap_or_else(|| DEFAULT_URL.to_string());
    let service_key = cli
        .service_key
        .clone()
        .or_else(|| key_file.map(|k| k.service_key))
        .ok_or_else(|| {
            anyhow!(
                "no service key: none in {} and PANORAMA_HUB_SERVICE_KEY is not set. Run `panorama-hub serve` once on this machine, or pass --service-key",
                config::key_file_path(&dir).display()
            )
        })?;
    Ok(HubClient::new(&url, &service_key))
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
        Command::Serve { listen, db } => serve(&cli, listen, db.clone()).await,
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
                    "id,team_id,device_name,status,full_control_enabled,last_seen_at,revoked_at,capabilities"
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
                            "{}  {:<8} {:<20} last seen {}  providers: {}",
                            s(r, "id"),
                            s(r, "status"),
                            s(r, "device_name"),
                            s(r, "last_seen_at"),
                            crate::gateway_view::providers_column(r)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
            Ok(0)
        }
        Command::Gateways(GatewaysCmd::Show { gateway }) => {
            let rows = client(&cli)?
                .select("team_gateways", &[("id", format!("eq.{gateway}"))])
                .await?;
            let row = rows.into_iter().next().ok_or_else(|| {
                anyhow!("no gateway {gateway}: list them with `panorama-hub gateways list`")
            })?;
            print(&cli, &row, || crate::gateway_view::describe_gateway(&row));
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
        Command::Shell(cmd) => crate::attach::run(&client(&cli)?, cmd, cli.json).await,
        Command::Secret(cmd) => secret(&cli, cmd).await,
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

async fn serve(cli: &Cli, listen: &str, db: Option<PathBuf>) -> Result<i32> {
    let hub = crate::server::bind(crate::server::ServeOptions {
        listen: listen.to_string(),
        data_dir: data_dir(cli)?,
        db,
    })
    .await?;
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

/// The subagent input of a new run: `--input`, `--prompt`, `schema_version`
/// and `prompt_at`. Errors when no prompt is given at all.
fn run_input(args: &SubmitArgs, prompt_required: bool) -> Result<serde_json::Map<String, Value>> {
    let mut input = parse_object("input", &args.input)?;
    if let Some(p) = &args.prompt {
        input.insert("prompt".into(), json!(p));
    }
    if prompt_required && crate::runs::input_prompt(&input).is_none() {
        bail!("a subagent_run needs a prompt: pass --prompt TEXT or --input '{{\"prompt\": \"...\"}}'");
    }
    input.insert("schema_version".into(), json!(1));
    input
        .entry("prompt_at")
        .or_insert_with(|| json!(chrono::Utc::now().to_rfc3339()));
    Ok(input)
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
    let mut accepted_run: Option<String> = None;
    if args.job_type == "subagent_run" {
        match (
            args.recipe,
            payload.get("subagent_id").and_then(Value::as_str),
        ) {
            // Spec §16.10, seed protocol: the subagent row carries config
            // and input; the job names the subagent and the run.
            (Recipe::Seed, None) => {
                let subagent_id = uuid::Uuid::new_v4().to_string();
                let run_id = uuid::Uuid::new_v4().to_string();
                let mut input = run_input(args, true)?;
                input.insert("run_id".into(), json!(run_id));
                create_subagent(&c, args, &team_id, &subagent_id, input).await?;
                payload.insert("subagent_id".into(), json!(subagent_id));
                payload.insert("run_id".into(), json!(run_id));
            }
            (Recipe::Seed, Some(_)) => {}
            // Spec §16.10, later protocol: accept the run first (one
            // transaction on the hub), then queue the job naming it. An
            // existing subagent (`--payload '{"subagent_id": …}'`) gets
            // its next run, which is how a conversation continues.
            (Recipe::Accepted, existing) => {
                let subagent_id = match existing {
                    Some(id) => id.to_string(),
                    None => {
                        let id = uuid::Uuid::new_v4().to_string();
                        create_subagent(&c, args, &team_id, &id, run_input(args, true)?).await?;
                        id
                    }
                };
                let mut rpc_args =
                    json!({"p_subagent_id": subagent_id, "p_gateway_id": args.gateway});
                if existing.is_some() {
                    rpc_args["p_input"] = Value::Object(run_input(args, false)?);
                }
                let accepted = c
                    .rpc("accept_subagent_run", &rpc_args)
                    .await
                    .context("accepting the subagent run")?;
                let run_id = s(&accepted, "run_id").to_string();
                payload.insert("subagent_id".into(), json!(subagent_id));
                payload.insert("run_id".into(), json!(run_id));
                accepted_run = Some(run_id);
            }
        }
    }
    let queued = c
        .insert(
            "gateway_jobs",
            &json!({"team_id": team_id, "gateway_id": args.gateway, "job_type": args.job_type, "status": "queued", "payload": payload, "requested_via": "panorama-hub-cli"}),
        )
        .await;
    let job = match (queued, accepted_run) {
        (Ok(job), _) => job,
        (Err(e), Some(run_id)) => {
            // No job will ever start the accepted run: close it rather than
            // leave the subagent `running` forever.
            let closed = c
                .rpc(
                    "request_subagent_run_cancellation",
                    &json!({"p_run_id": run_id, "p_reason": "The job for this run could not be queued"}),
                )
                .await;
            let note = match closed {
                Ok(_) => format!("run {run_id} was cancelled"),
                Err(e2) => format!("run {run_id} could not be cancelled either ({e2}); cancel it with `panorama-hub job cancel`"),
            };
            return Err(anyhow!(e).context(format!("queueing the subagent_run job failed; {note}")));
        }
        (Err(e), None) => return Err(e.into()),
    };
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

/// Inserts the `subagents` row of a new subagent (idle; spec §16.10).
async fn create_subagent(
    c: &HubClient,
    args: &SubmitArgs,
    team_id: &str,
    subagent_id: &str,
    input: serde_json::Map<String, Value>,
) -> Result<()> {
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
    Ok(())
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
            // An accepted run (later recipe) that no gateway started is
            // closed with its job; a seed run does not exist yet.
            let run_id = job.pointer("/payload/run_id").and_then(Value::as_str);
            let mut note = String::new();
            if let (Some(run_id), "subagent_run") = (run_id, s(&job, "job_type")) {
                let closed = c
                    .rpc(
                        "request_subagent_run_cancellation",
                        &json!({"p_run_id": run_id, "p_reason": reason.clone().unwrap_or_else(|| "Cancelled by operator".into())}),
                    )
                    .await;
                note = match closed {
                    Ok(v) if v["cancelled"] == json!(true) => format!("; run {run_id} cancelled"),
                    Ok(_) => String::new(),
                    // A seed-recipe job: its run row does not exist yet.
                    Err(crate::client::ClientError::Refused { status: 404, .. }) => String::new(),
                    Err(e) => format!("; closing its accepted run {run_id} failed: {e}"),
                };
            }
            print(cli, &row, || {
                format!("job {id} cancelled before a gateway took it{note}")
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

/// A secret value as given: stdin or the file, minus one trailing newline
/// (what `echo` and editors add). Empty is refused.
fn read_secret_value(value_file: &Option<PathBuf>) -> Result<String> {
    use std::io::Read;
    let mut raw = Vec::new();
    match value_file {
        Some(path) => {
            raw = std::fs::read(path)
                .with_context(|| format!("reading the secret value from {}", path.display()))?
        }
        None if std::io::IsTerminal::is_terminal(&std::io::stdin()) => {
            raw = read_hidden_line()?.into_bytes();
        }
        None => {
            std::io::stdin()
                .read_to_end(&mut raw)
                .context("reading the secret value from stdin")?;
        }
    }
    let mut value = String::from_utf8(raw).map_err(|_| {
        anyhow!("the secret value is not UTF-8 text; environment variables carry text")
    })?;
    if value.ends_with('\n') {
        value.pop();
        if value.ends_with('\r') {
            value.pop();
        }
    }
    if value.is_empty() {
        bail!("the secret value is empty: pipe it in (`printf %s \"$TOKEN\" | panorama-hub secret set …`) or pass --value-file PATH");
    }
    if value.contains('\0') {
        bail!("the secret value contains a NUL byte, which an environment variable cannot carry");
    }
    Ok(value)
}

/// One line typed at the terminal without echoing it (Enter ends it,
/// Ctrl-C or Esc aborts).
fn read_hidden_line() -> Result<String> {
    use crossterm::event::{read, Event, KeyCode, KeyEventKind, KeyModifiers};
    eprint!("secret value (not shown; Enter to finish): ");
    crossterm::terminal::enable_raw_mode().context("switching the terminal off echo")?;
    let mut line = String::new();
    let outcome = loop {
        match read() {
            Ok(Event::Key(k)) if k.kind != KeyEventKind::Release => match k.code {
                KeyCode::Enter => break Ok(()),
                KeyCode::Esc => break Err(anyhow!("aborted; no secret was set")),
                KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => {
                    break Err(anyhow!("aborted; no secret was set"))
                }
                KeyCode::Backspace => {
                    line.pop();
                }
                KeyCode::Char(c) => line.push(c),
                _ => {}
            },
            Ok(Event::Paste(text)) => line.push_str(&text),
            Ok(_) => {}
            Err(e) => break Err(anyhow!("reading the terminal: {e}")),
        }
    };
    let _ = crossterm::terminal::disable_raw_mode();
    eprintln!();
    outcome.map(|()| line)
}

fn check_secret_name(name: &str) -> Result<()> {
    if !panorama_protocol::secrets::is_valid_secret_name(name) {
        bail!("{name:?} is not a valid secret name: use 1-128 letters, digits, _ - or ., starting with a letter, digit or _");
    }
    Ok(())
}

async fn secret(cli: &Cli, cmd: &SecretCmd) -> Result<i32> {
    let c = client(cli)?;
    match cmd {
        SecretCmd::Set {
            team,
            name,
            value_file,
        } => {
            check_secret_name(name)?;
            let value = read_secret_value(value_file)?;
            let row = c
                .upsert(
                    "team_secrets",
                    &json!({"team_id": team, "name": name, "value": value}),
                    "team_id,name",
                )
                .await
                .context("storing the secret")?;
            print(cli, &row, || format!("secret {name} set for team {team}"));
        }
        SecretCmd::List { team } => {
            let rows = c
                .select(
                    "team_secrets",
                    &[
                        ("team_id", format!("eq.{team}")),
                        ("select", "name,created_at,updated_at".into()),
                        ("order", "name.asc".into()),
                    ],
                )
                .await?;
            print(cli, &Value::Array(rows.clone()), || {
                if rows.is_empty() {
                    return format!("team {team} has no secrets; add one with `panorama-hub secret set --team {team} NAME`");
                }
                rows.iter()
                    .map(|r| format!("{:<40} updated {}", s(r, "name"), s(r, "updated_at")))
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        SecretCmd::Delete { team, name } => {
            let rows = c
                .delete(
                    "team_secrets",
                    &[
                        ("team_id", format!("eq.{team}")),
                        ("name", format!("eq.{name}")),
                    ],
                )
                .await?;
            if rows.is_empty() {
                bail!("team {team} has no secret {name}; list them with `panorama-hub secret list --team {team}`");
            }
            print(cli, &json!({"deleted": name, "team_id": team}), || {
                format!("secret {name} deleted from team {team}")
            });
        }
    }
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
