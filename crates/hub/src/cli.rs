//! The operator command line: `serve` runs the hub; every other command
//! talks to a running hub over HTTP with the service key.

pub use crate::cli_text::{parse_listen, printable, printable_lines};
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
    // One spelling with `panorama-gateway --hub-url`; `--hub` still works, hidden.
    #[arg(
        long = "hub-url",
        alias = "hub",
        global = true,
        env = "PANORAMA_HUB_URL",
        value_name = "URL"
    )]
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
        /// Address to listen on (HOST:PORT).
        #[arg(long, default_value = DEFAULT_LISTEN, env = "PANORAMA_HUB_LISTEN", value_parser = parse_listen)]
        listen: String,
        /// SQLite database file (default: <data-dir>/hub.db).
        #[arg(long, conflicts_with = "database")]
        db: Option<PathBuf>,
        /// The database: postgres://USER:PASSWORD@HOST:PORT/DATABASE (several
        /// hub replicas may share one) or a SQLite file path. Default: SQLite
        /// in the data directory.
        #[arg(long, env = "PANORAMA_HUB_DATABASE_URL", value_parser = crate::store::Database::parse)]
        database: Option<crate::store::Database>,
        /// Let anyone sign up (POST /auth/v1/signup); otherwise sign-up needs an
        /// invitation code. Also PANORAMA_HUB_OPEN_SIGNUP=true.
        #[arg(long)]
        open_signup: bool,
    },
    /// The schema as PostgreSQL with row-level security, for a Supabase
    /// project or PostgREST: `panorama-hub schema --print | psql "$DATABASE_URL"`.
    Schema {
        /// Print the SQL script to standard output.
        #[arg(long)]
        print: bool,
    },
    /// Create or upgrade the database schema, then exit (`serve` does the
    /// same at start; run this first when several replicas share PostgreSQL).
    Migrate {
        /// SQLite database file (default: <data-dir>/hub.db).
        #[arg(long, conflicts_with = "database")]
        db: Option<PathBuf>,
        /// postgres://USER:PASSWORD@HOST:PORT/DATABASE or a SQLite file path.
        #[arg(long, env = "PANORAMA_HUB_DATABASE_URL", value_parser = crate::store::Database::parse)]
        database: Option<crate::store::Database>,
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
    /// Team secrets for shell_exec jobs' secret_env (values are write-only).
    #[command(subcommand)]
    Secret(SecretCmd),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
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
        /// Team name or id.
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
        /// Team name or id.
        #[arg(long)]
        team: String,
    },
    /// Delete a team secret.
    Delete {
        /// Team name or id.
        #[arg(long)]
        team: String,
        name: String,
    },
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
        /// The team, by name or id.
        #[arg(long)]
        team: String,
        /// Minutes until the code expires (1 to 10080, a week).
        #[arg(long, default_value_t = 15, allow_negative_numbers = true, value_parser = clap::value_parser!(i64).range(1..=MAX_TTL_MINUTES))]
        ttl_minutes: i64,
    },
}

#[derive(Subcommand, Debug)]
pub enum GatewaysCmd {
    /// List gateways with status and last heartbeat.
    List {
        /// The team, by name or id.
        #[arg(long)]
        team: Option<String>,
    },
    /// One gateway: its agent CLIs (versions, health, flags) and every
    /// full-control layer.
    Show { gateway: String },
    /// Set a gateway's team-level full (machine) control flag.
    FullControl {
        gateway: String,
        /// on or off (enable/disable also work, as in `panorama-gateway full-control`).
        #[arg(value_enum)]
        state: OnOff,
    },
    /// Revoke a gateway: its session stops working and it takes no more jobs.
    Revoke { gateway: String },
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
    /// subagent_run: the subagent type (e.g. claude_code_gateway, codex_gateway, gemini_gateway; default claude_code_gateway).
    #[arg(long)]
    pub subagent_type: Option<String>,
    /// subagent_run: the subagent config (a JSON object).
    #[arg(long)]
    pub config: Option<String>,
    /// subagent_run: the input (a JSON object; run_id and schema_version are filled in).
    #[arg(long)]
    pub input: Option<String>,
    /// subagent_run: the prompt (shorthand for --input '{"prompt": ...}').
    #[arg(long, conflicts_with = "prompt_file")]
    pub prompt: Option<String>,
    /// subagent_run: the dispatch recipe. `accepted` (the later protocol, 2.32.x gateways) or `seed` (2.29).
    #[arg(long, value_enum, default_value = "accepted")]
    pub recipe: Recipe,
    /// subagent_run: read the prompt from a file (`-` reads standard input).
    #[arg(long, value_name = "PATH")]
    pub prompt_file: Option<PathBuf>,
}

impl SubmitArgs {
    /// The subagent-only flags that were given (refused for other types).
    fn subagent_flags(&self) -> Vec<&'static str> {
        [
            ("--subagent-type", self.subagent_type.is_some()),
            ("--config", self.config.is_some()),
            ("--input", self.input.is_some()),
            ("--prompt", self.prompt.is_some()),
            ("--prompt-file", self.prompt_file.is_some()),
        ]
        .into_iter()
        .filter_map(|(flag, given)| given.then_some(flag))
        .collect()
    }

    /// `--prompt`, or the contents of `--prompt-file` (`-` = stdin).
    fn prompt_text(&self) -> Result<Option<String>> {
        use std::io::Read;
        if let Some(p) = &self.prompt {
            return Ok(Some(p.clone()));
        }
        let Some(path) = &self.prompt_file else {
            return Ok(None);
        };
        let mut text = String::new();
        if path.as_os_str() == "-" {
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading the prompt from standard input")?;
        } else {
            text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the prompt file {}", path.display()))?;
        }
        if text.trim().is_empty() {
            bail!("the prompt from {} is empty", path.display());
        }
        Ok(Some(text))
    }
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
        /// Only jobs of this type (e.g. diagnostic, subagent_run, shell_exec).
        #[arg(long = "type")]
        job_type: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

#[derive(Subcommand, Debug)]
pub enum RunCmd {
    /// Print a run's events in order; --follow waits for new ones until the run ends.
    Events {
        /// A run id, or the id of the subagent_run job that runs it.
        run_id: String,
        #[arg(long)]
        follow: bool,
    },
    /// List recent subagent runs.
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
pub enum ResourceCmd {
    /// Create a remote_shell resource bound to a gateway.
    Create {
        /// The team, by name or id.
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
    /// List resources.
    List {
        /// The team, by name or id.
        #[arg(long)]
        team: Option<String>,
    },
}

/// Restore the default SIGPIPE action (Rust ignores it), so writing to a
/// closed pipe ends the process like any Unix tool instead of panicking in
/// `println!`. Call first thing in `main`.
pub fn reset_sigpipe() {
    // SAFETY: setting a signal's disposition to its default is always sound.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Longest pairing-code lifetime: a week.
pub const MAX_TTL_MINUTES: i64 = 7 * 24 * 60;

/// `--listen`: `HOST:PORT`; a bare address gets told its port is missing.
/// A switch: `on`/`off`, with `enable`/`disable` (the gateway's old
/// words) as hidden aliases.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnOff {
    #[value(alias = "enable")]
    On,
    #[value(alias = "disable")]
    Off,
}

impl OnOff {
    pub fn word(self) -> &'static str {
        match self {
            OnOff::On => "on",
            OnOff::Off => "off",
        }
    }
}

/// The global options that only commands talking to a running hub use;
/// hidden from the help of `up` and `serve`, which run a hub themselves.
const CLIENT_ONLY_GLOBALS: [&str; 2] = ["hub", "service_key"];

/// The command line as clap sees it, with each subcommand's help showing
/// only the options that apply to it. Parse with [`parse_args`].
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    // Globals are copied into the subcommands when the command is built;
    // only then can a subcommand's copy be hidden.
    cmd.build();
    for name in ["up", "serve"] {
        let sub = cmd.find_subcommand_mut(name).expect("up and serve exist");
        // `mut_args` edits in place; `mut_arg` would reorder the args of a
        // built command and break its lookup table.
        let taken = std::mem::take(sub);
        *sub = taken.mut_args(|a| {
            let client_only = CLIENT_ONLY_GLOBALS.contains(&a.get_id().as_str());
            a.hide(client_only)
        });
    }
    cmd
}

/// Parse the process's arguments with [`command`] (exits on `--help` and
/// errors, like `Cli::parse`).
pub fn parse_args() -> Cli {
    use clap::FromArgMatches;
    let matches = command().get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// The id of a team given by name or id, with a clear error for neither.
async fn resolve_team(c: &HubClient, team: &str) -> Result<String> {
    let rows = if uuid::Uuid::parse_str(team).is_ok() {
        c.select(
            "teams",
            &[("id", format!("eq.{team}")), ("select", "id".into())],
        )
        .await?
    } else {
        c.select(
            "teams",
            &[("name", format!("eq.{team}")), ("select", "id".into())],
        )
        .await?
    };
    match rows.as_slice() {
        [one] => Ok(s(one, "id").to_string()),
        [] => bail!(
            "no team {:?}: list teams with `panorama-hub team list`, or create it with `panorama-hub team create NAME`",
            printable(team)
        ),
        _ => bail!(
            "{} teams are named {:?}: pass the team's id instead (`panorama-hub team list`)",
            rows.len(),
            printable(team)
        ),
    }
}

/// Refuse a malformed id before the hub answers with a database message.
fn ensure_id(what: &str, id: &str, list_with: &str) -> Result<()> {
    if uuid::Uuid::parse_str(id).is_err() {
        bail!(
            "{:?} is not a {what} id (a UUID); list them with `{list_with}`",
            printable(id)
        );
    }
    Ok(())
}

/// [`s`] for user-supplied text: control characters escaped.
fn sp(v: &Value, k: &str) -> String {
    printable(s(v, k))
}

/// The query of a "recent rows" listing (jobs, runs): newest first, at
/// most `limit`, optionally one gateway's and one status.
fn recent_query(
    gateway: Option<&str>,
    status: Option<&str>,
    limit: u32,
) -> Result<Vec<(&'static str, String)>> {
    let mut q = vec![
        ("order", "created_at.desc".to_string()),
        ("limit", limit.to_string()),
    ];
    if let Some(g) = gateway {
        ensure_id("gateway", g, "panorama-hub gateways list")?;
        q.push(("gateway_id", format!("eq.{g}")));
    }
    if let Some(st) = status {
        q.push(("status", format!("eq.{st}")));
    }
    Ok(q)
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
        // A session's tokens mean nothing to another hub: say so rather
        // than send them there.
        if let Some(wanted) = cli
            .hub
            .as_deref()
            .filter(|w| w.trim_end_matches('/') != session.url.trim_end_matches('/'))
        {
            bail!(
                "the stored session is for {}, not {wanted}; sign in there with `panorama-hub login --hub-url {wanted} --email ...`, or leave out --hub-url",
                session.url
            );
        }
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
            database,
            open_signup,
        } => serve(&cli, listen, db.clone(), database.clone(), *open_signup).await,
        Command::Migrate { db, database } => migrate(&cli, db.clone(), database.clone()).await,
        Command::Up(args) => crate::up::run(cli.data_dir.as_deref(), cli.json, args).await,
        Command::Completions { shell } => {
            clap_complete::generate(
                *shell,
                &mut command(),
                "panorama-hub",
                &mut std::io::stdout(),
            );
            Ok(0)
        }
        Command::Schema { print } => {
            if !print {
                bail!("nothing to do: run `panorama-hub schema --print` to print the SQL script");
            }
            print!("{}", crate::schema_sql::render());
            Ok(0)
        }
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
            let name = name.trim();
            if name.is_empty() {
                bail!("a team needs a name: panorama-hub team create NAME");
            }
            let c = client(&cli)?;
            let taken = c
                .select(
                    "teams",
                    &[("name", format!("eq.{name}")), ("select", "id".into())],
                )
                .await?;
            if let Some(existing) = taken.first() {
                bail!(
                    "a team named {:?} already exists ({}); pick another name",
                    printable(name),
                    s(existing, "id")
                );
            }
            let row = c.insert("teams", &json!({"name": name})).await?;
            print(&cli, &row, || {
                format!("team {} created: {}", sp(&row, "name"), s(&row, "id"))
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
            let c = client(&cli)?;
            let team = resolve_team(&c, team).await?;
            let mut args = json!({"p_team_id": team, "p_email": email, "p_role": role});
            if let Some(t) = ttl_minutes {
                args["p_ttl_minutes"] = json!(t);
            }
            let inv = c.rpc("create_team_invitation", &args).await?;
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
            let c = client(&cli)?;
            let team = resolve_team(&c, team).await?;
            let rows = c
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
                    .map(|r| {
                        format!(
                            "{:<8} {}  {}",
                            s(r, "role"),
                            sp(r, "email"),
                            s(r, "user_id")
                        )
                    })
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
                    .map(|r| format!("{}  {}", s(r, "id"), sp(r, "name")))
                    .collect::<Vec<_>>()
                    .join("\n")
            });
            Ok(0)
        }
        Command::PairingCode(PairingCmd::Create { team, ttl_minutes }) => {
            let code = new_pairing_code();
            let expires = chrono::Utc::now() + chrono::Duration::minutes(*ttl_minutes);
            let c = client(&cli)?;
            let team_id = resolve_team(&c, team).await?;
            let row = c
                .insert(
                    "gateway_pairing_codes",
                    &json!({"code": code, "team_id": team_id, "expires_at": expires.to_rfc3339()}),
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
            let c = client(&cli)?;
            if let Some(t) = team {
                q.push(("team_id", format!("eq.{}", resolve_team(&c, t).await?)));
            }
            let rows = c.select("team_gateways", &q).await?;
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
                            sp(r, "device_name"),
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
            ensure_id("gateway", gateway, "panorama-hub gateways list")?;
            let rows = client(&cli)?
                .update(
                    "team_gateways",
                    &[("id", format!("eq.{gateway}"))],
                    &json!({"full_control_enabled": *state == OnOff::On}),
                )
                .await?;
            let row = rows.into_iter().next().ok_or_else(|| {
                anyhow!("no gateway {gateway}: list them with `panorama-hub gateways list`")
            })?;
            print(&cli, &row, || {
                format!("gateway {gateway}: team full control {}", state.word())
            });
            Ok(0)
        }
        Command::Gateways(GatewaysCmd::Revoke { gateway }) => {
            ensure_id("gateway", gateway, "panorama-hub gateways list")?;
            let rows = client(&cli)?
                .update(
                    "team_gateways",
                    &[("id", format!("eq.{gateway}"))],
                    &json!({"revoked_at": chrono::Utc::now().to_rfc3339()}),
                )
                .await?;
            let row = rows.into_iter().next().ok_or_else(|| {
                anyhow!("no gateway {gateway}: list them with `panorama-hub gateways list`")
            })?;
            print(&cli, &row, || {
                format!("gateway {gateway} revoked: its session no longer works; pair the machine again to bring it back")
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
                    return Ok(if job_outcome(&job) == "completed" {
                        0
                    } else {
                        1
                    });
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
            job_type,
            limit,
        }) => {
            let mut q = recent_query(gateway.as_deref(), status.as_deref(), *limit)?;
            if let Some(t) = job_type {
                q.push(("job_type", format!("eq.{t}")));
            }
            let rows = client(&cli)?.select("gateway_jobs", &q).await?;
            print(&cli, &Value::Array(rows.clone()), || {
                rows.iter()
                    .map(|r| {
                        format!(
                            "{}  {:<16} {:<10} {}",
                            s(r, "id"),
                            sp(r, "job_type"),
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
        Command::Run(RunCmd::List {
            gateway,
            status,
            limit,
        }) => {
            let q = recent_query(gateway.as_deref(), status.as_deref(), *limit)?;
            let rows = client(&cli)?.select("subagent_runs", &q).await?;
            print(&cli, &Value::Array(rows.clone()), || {
                if rows.is_empty() {
                    return "no runs yet: submit one with `panorama-hub job submit --type subagent_run --prompt TEXT`".into();
                }
                rows.iter()
                    .map(|r| {
                        format!(
                            "{}  {:<10} subagent {}  #{}  {}",
                            s(r, "id"),
                            s(r, "status"),
                            s(r, "subagent_id"),
                            r.get("run_sequence")
                                .map(Value::to_string)
                                .unwrap_or_default(),
                            s(r, "created_at")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
            Ok(0)
        }
        Command::Resource(ResourceCmd::List { team }) => {
            let c = client(&cli)?;
            let mut q = vec![("order", "created_at.asc".to_string())];
            if let Some(t) = team {
                q.push(("team_id", format!("eq.{}", resolve_team(&c, t).await?)));
            }
            let rows = c.select("team_resources", &q).await?;
            print(&cli, &Value::Array(rows.clone()), || {
                if rows.is_empty() {
                    return "no resources yet: create one with `panorama-hub resource create --team T --gateway G`".into();
                }
                rows.iter()
                    .map(|r| {
                        format!(
                            "{}  {:<12} {:<8} gateway {}  {}",
                            s(r, "id"),
                            s(r, "resource_type"),
                            s(r, "max_access_level"),
                            s(r, "resource_id"),
                            sp(r, "title")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
            Ok(0)
        }
        Command::Shell(cmd) => crate::attach::run(&client(&cli)?, cmd, cli.json).await,
        Command::Secret(cmd) => secret(&cli, cmd).await,
        Command::Resource(ResourceCmd::Create {
            team,
            gateway,
            access_level,
            machine_control,
            title,
        }) => {
            ensure_id("gateway", gateway, "panorama-hub gateways list")?;
            let c = client(&cli)?;
            let team_id = resolve_team(&c, team).await?;
            let gateway_row = c
                .select(
                    "team_gateways",
                    &[
                        ("id", format!("eq.{gateway}")),
                        ("select", "team_id".into()),
                    ],
                )
                .await?;
            match gateway_row.first() {
                None => bail!("no gateway {gateway}: list them with `panorama-hub gateways list`"),
                Some(g) if s(g, "team_id") != team_id => bail!(
                    "gateway {gateway} belongs to another team ({}); a resource binds a gateway of its own team",
                    s(g, "team_id")
                ),
                Some(_) => {}
            }
            let row = c
                .insert(
                    "team_resources",
                    &json!({
                        "team_id": team_id,
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

async fn serve(
    cli: &Cli,
    listen: &str,
    db: Option<PathBuf>,
    database: Option<crate::store::Database>,
    open_signup: bool,
) -> Result<i32> {
    let mut hub = crate::server::bind(crate::server::ServeOptions {
        listen: listen.to_string(),
        data_dir: data_dir(cli)?,
        db,
        database,
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

async fn migrate(
    cli: &Cli,
    db: Option<PathBuf>,
    database: Option<crate::store::Database>,
) -> Result<i32> {
    let database = match database {
        Some(d) => d,
        None => {
            let dir = data_dir(cli)?;
            config::prepare_dir(&dir)?;
            crate::store::Database::Sqlite(db.unwrap_or_else(|| dir.join("hub.db")))
        }
    };
    crate::store::open(&database, crate::changes::ChangeFeed::new(16)).await?;
    let what = match &database {
        crate::store::Database::Sqlite(p) => format!("SQLite database {}", p.display()),
        crate::store::Database::Postgres(_) => "PostgreSQL database".to_string(),
    };
    if cli.json {
        println!("{}", json!({"migrated": true}));
    } else {
        println!("{what} is at the current schema");
    }
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

/// What became of a job: its status, except that a subagent_run job
/// "completed" (the protocol's word for "the gateway handled it") whose
/// run was cancelled or failed is that.
pub fn job_outcome(job: &Value) -> &str {
    let status = s(job, "status");
    if status == "completed" && s(job, "job_type") == "subagent_run" {
        if let Some(run @ ("cancelled" | "failed")) =
            job.pointer("/result/status").and_then(Value::as_str)
        {
            return run;
        }
    }
    status
}

fn describe_job(job: &Value) -> String {
    let mut out = format!(
        "job {}  {}  {}",
        s(job, "id"),
        sp(job, "job_type"),
        s(job, "status")
    );
    let outcome = job_outcome(job);
    if outcome != s(job, "status") {
        out.push_str(&format!(" (run {outcome})"));
        if let Some(e) = job.pointer("/result/error").and_then(Value::as_str) {
            out.push_str(&format!("\nrun error: {}", printable(e)));
        }
    }
    if let Some(e) = job.get("error").and_then(Value::as_str) {
        out.push_str(&format!("\nerror: {}", printable(e)));
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
    if let Some(p) = args.prompt_text()? {
        input.insert("prompt".into(), json!(p));
    }
    if prompt_required && crate::runs::input_prompt(&input).is_none() {
        bail!("a subagent_run needs a prompt: pass --prompt TEXT, --prompt-file PATH (- for stdin) or --input '{{\"prompt\": \"...\"}}'");
    }
    input.insert("schema_version".into(), json!(1));
    input
        .entry("prompt_at")
        .or_insert_with(|| json!(chrono::Utc::now().to_rfc3339()));
    Ok(input)
}

async fn submit(cli: &Cli, args: &SubmitArgs) -> Result<i32> {
    ensure_id("gateway", &args.gateway, "panorama-hub gateways list")?;
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
    if gateway.get("revoked_at").is_some_and(|r| !r.is_null()) {
        bail!(
            "gateway {} is revoked and takes no jobs; pair a new one",
            args.gateway
        );
    }
    let mut payload = parse_object("payload", &args.payload)?;
    let given = args.subagent_flags();
    if args.job_type != "subagent_run" && !given.is_empty() {
        bail!(
            "{} only appl{} to --type subagent_run, not {}; put {} settings in --payload JSON",
            given.join(", "),
            if given.len() == 1 { "ies" } else { "y" },
            args.job_type,
            args.job_type
        );
    }
    if args.job_type == "subagent_run"
        && args.recipe == Recipe::Seed
        && payload.contains_key("subagent_id")
        && !given.is_empty()
    {
        bail!(
            "{} cannot be combined with a --payload that names its own subagent_id under --recipe seed (the accepted recipe takes a new prompt for an existing subagent)",
            given.join(", ")
        );
    }
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
    if s(&gateway, "status") == "offline" {
        eprintln!(
            "warning: gateway {} is offline (last seen {}); the job waits in the queue until it comes back (`panorama-gateway start` on that machine)",
            args.gateway,
            s(&gateway, "last_seen_at")
        );
    }
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
            "subagent_type": args.subagent_type.as_deref().unwrap_or("claude_code_gateway"), "status": "idle",
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
            let team = &resolve_team(&c, team).await?;
            check_secret_name(name)?;
            let value = read_secret_value(value_file)?;
            let row = if c.acts_as_person() {
                // A signed-in owner/admin: people may not merge-upsert, so
                // replace the value of an existing secret, else create it.
                let filter = [
                    ("team_id", format!("eq.{team}")),
                    ("name", format!("eq.{name}")),
                ];
                match c
                    .update("team_secrets", &filter, &json!({"value": value}))
                    .await
                    .context("storing the secret")?
                    .pop()
                {
                    Some(row) => row,
                    None => c
                        .insert(
                            "team_secrets",
                            &json!({"team_id": team, "name": name, "value": value}),
                        )
                        .await
                        .context("storing the secret")?,
                }
            } else {
                c.upsert(
                    "team_secrets",
                    &json!({"team_id": team, "name": name, "value": value}),
                    "team_id,name",
                )
                .await
                .context("storing the secret")?
            };
            print(cli, &row, || format!("secret {name} set for team {team}"));
        }
        SecretCmd::List { team } => {
            let team = &resolve_team(&c, team).await?;
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
            let team = &resolve_team(&c, team).await?;
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

/// The run an id names: a run id, or a subagent_run job's run. Errors on
/// an id that is neither.
async fn resolve_run(c: &HubClient, id: &str) -> Result<(String, Option<Value>)> {
    if uuid::Uuid::parse_str(id).is_err() {
        bail!(
            "{:?} is not a run or job id (a UUID); list jobs with `panorama-hub jobs list`",
            printable(id)
        );
    }
    let runs = c
        .select("subagent_runs", &[("id", format!("eq.{id}"))])
        .await?;
    if let Some(run) = runs.into_iter().next() {
        return Ok((id.to_string(), Some(run)));
    }
    let jobs = c
        .select("gateway_jobs", &[("id", format!("eq.{id}"))])
        .await?;
    let Some(job) = jobs.first() else {
        bail!("no run or job {id}: list jobs with `panorama-hub jobs list`");
    };
    let Some(run_id) = job.pointer("/payload/run_id").and_then(Value::as_str) else {
        bail!(
            "job {id} is a {} job and has no run; runs belong to subagent_run jobs",
            s(job, "job_type")
        );
    };
    let run = c
        .select("subagent_runs", &[("id", format!("eq.{run_id}"))])
        .await?
        .into_iter()
        .next();
    eprintln!("job {id} runs {run_id}");
    Ok((run_id.to_string(), run))
}

/// The output format a subagent asked for when it carries no live agent
/// events (everything but stream-json reports the agent's output at the
/// end of the run), else `None`.
pub fn format_without_live_events(config: &Value) -> Option<String> {
    let raw = ["output_format", "outputFormat"]
        .iter()
        .find_map(|k| config.get(*k).and_then(Value::as_str))
        .map(|v| v.trim().to_ascii_lowercase());
    match raw.as_deref() {
        Some("stream-json" | "stream_json" | "stream") => None,
        Some(other) if !other.is_empty() => Some(other.to_string()),
        _ => Some("json (the default)".to_string()),
    }
}

/// Longest a `--follow` keeps retrying an unreachable hub.
const FOLLOW_RETRY_FOR: Duration = Duration::from_secs(300);

async fn run_events(cli: &Cli, id: &str, follow: bool) -> Result<i32> {
    let c = client(cli)?;
    let (run_id, run) = resolve_run(&c, id).await?;
    let subagent_id = run
        .as_ref()
        .map(|r| s(r, "subagent_id").to_string())
        .filter(|v| v != "-");
    let subagent_id = match subagent_id {
        Some(sid) => Some(sid),
        None => c
            .select("gateway_jobs", &[("id", format!("eq.{id}"))])
            .await?
            .first()
            .and_then(|j| j.pointer("/payload/subagent_id").and_then(Value::as_str))
            .map(str::to_string),
    };
    if let Some(sid) = subagent_id {
        let subagent = c
            .select(
                "subagents",
                &[("id", format!("eq.{sid}")), ("select", "config".into())],
            )
            .await?;
        if let Some(format) = subagent
            .first()
            .and_then(|r| r.get("config"))
            .and_then(format_without_live_events)
        {
            eprintln!(
                "note: this run's output format is {format}: the agent's output arrives with the run's end, not as live events (ask for live events with --config '{{\"output_format\": \"stream-json\"}}')"
            );
        }
    }
    let mut last: i64 = -1;
    let mut unreachable_since: Option<Instant> = None;
    loop {
        let step: Result<bool, crate::client::ClientError> = async {
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
                        printable(&r.get("payload").map(Value::to_string).unwrap_or_default())
                    );
                }
            }
            if !follow {
                return Ok(true);
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
            Ok(done && rows.is_empty())
        }
        .await;
        match step {
            Ok(true) => return Ok(0),
            Ok(false) => unreachable_since = None,
            Err(e @ crate::client::ClientError::Unreachable { .. }) if follow => {
                let since = *unreachable_since.get_or_insert_with(|| {
                    eprintln!(
                        "the hub is unreachable; retrying (up to {} s): {e}",
                        FOLLOW_RETRY_FOR.as_secs()
                    );
                    Instant::now()
                });
                if since.elapsed() > FOLLOW_RETRY_FOR {
                    return Err(e.into());
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_need_a_port() {
        assert_eq!(parse_listen("0.0.0.0:54321").unwrap(), "0.0.0.0:54321");
        assert_eq!(parse_listen("localhost:8080").unwrap(), "localhost:8080");
        let e = parse_listen("0.0.0.0").unwrap_err();
        assert!(
            e.contains("has no port") && e.contains("0.0.0.0:54321"),
            "{e}"
        );
        assert!(parse_listen("::1")
            .unwrap_err()
            .contains("e.g. [::1]:54321"));
        assert!(parse_listen("localhost")
            .unwrap_err()
            .contains("has no port"));
        assert!(parse_listen("h:99999")
            .unwrap_err()
            .contains("not a number"));
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(
            printable("\u{1b}]0;pwned\u{7}\u{1b}[2J team"),
            "\\u{1b}]0;pwned\\u{7}\\u{1b}[2J team"
        );
        assert_eq!(printable("plain ünïcode"), "plain ünïcode");
        assert_eq!(printable("a\nb\tc"), "a\\nb\\tc");
        assert_eq!(printable_lines("a\nb\u{1b}[2J\tc"), "a\nb\\u{1b}[2J\tc");
    }

    #[test]
    fn a_cancelled_or_failed_run_is_the_jobs_outcome() {
        let job = |t: &str, st: &str, result: Value| json!({"job_type": t, "status": st, "result": result});
        assert_eq!(
            job_outcome(&job(
                "subagent_run",
                "completed",
                json!({"status": "cancelled"})
            )),
            "cancelled"
        );
        assert_eq!(
            job_outcome(&job(
                "subagent_run",
                "completed",
                json!({"status": "failed"})
            )),
            "failed"
        );
        assert_eq!(
            job_outcome(&job(
                "subagent_run",
                "completed",
                json!({"status": "completed"})
            )),
            "completed"
        );
        // A cancel job's "not_found" result is its own business.
        assert_eq!(
            job_outcome(&job(
                "subagent_cancel",
                "completed",
                json!({"status": "not_found"})
            )),
            "completed"
        );
        assert_eq!(
            job_outcome(&job("diagnostic", "failed", Value::Null)),
            "failed"
        );
    }

    #[test]
    fn only_stream_json_carries_live_events() {
        assert_eq!(
            format_without_live_events(&json!({"output_format": "stream-json"})),
            None
        );
        assert_eq!(
            format_without_live_events(&json!({"outputFormat": "stream_json"})),
            None
        );
        assert_eq!(
            format_without_live_events(&json!({"output_format": "text"})).as_deref(),
            Some("text")
        );
        assert!(format_without_live_events(&json!({}))
            .unwrap()
            .starts_with("json"));
    }

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
