//! `panorama-fake-agent`: a stand-in for the `claude`, `codex` and `gemini`
//! CLIs in integration tests. See the crate README for the interface.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use panorama_providers::transcript::{parse_transcript, TranscriptStep};
use serde_json::{json, Map, Value};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Provider {
    Claude,
    Codex,
    Gemini,
}

impl Provider {
    fn parse(raw: &str) -> Option<Self> {
        let lower = raw.to_ascii_lowercase();
        if lower.contains("claude") {
            Some(Self::Claude)
        } else if lower.contains("codex") {
            Some(Self::Codex)
        } else if lower.contains("gemini") {
            Some(Self::Gemini)
        } else {
            None
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Claude => "claude",
            Self::Codex => "codex",
            Self::Gemini => "gemini",
        }
    }

    fn version(self) -> &'static str {
        match self {
            Self::Claude => "2.0.14 (Claude Code)",
            Self::Codex => "codex-cli 0.50.0",
            Self::Gemini => "0.9.0",
        }
    }

    fn help(self) -> &'static str {
        match self {
            Self::Claude => CLAUDE_HELP,
            Self::Codex => CODEX_HELP,
            Self::Gemini => GEMINI_HELP,
        }
    }
}

const CLAUDE_HELP: &str = "Usage: claude [options] [command] [prompt]

Claude Code - starts an interactive session by default, use -p/--print for non-interactive output

Options:
  -d, --debug [filter]                              Enable debug mode
  --verbose                                         Override verbose mode setting from config
  -p, --print                                       Print response and exit (useful for pipes)
  --output-format <format>                          Output format (only works with --print): \"text\" (default), \"json\" (single result), or \"stream-json\" (realtime streaming)
  --json-schema <schema>                            JSON Schema for structured output validation
  --include-partial-messages                        Include partial message chunks as they arrive
  --input-format <format>                           Input format: \"text\" (default), or \"stream-json\"
  --mcp-config <configs...>                         Load MCP servers from JSON files or strings
  --strict-mcp-config                               Only use MCP servers from --mcp-config
  --dangerously-skip-permissions                    Bypass all permission checks
  --allow-dangerously-skip-permissions              Enable bypassing all permission checks as an option
  --max-budget-usd <amount>                         Maximum dollar amount to spend on API calls
  --replay-user-messages                            Re-emit user messages from stdin back on stdout
  --allowedTools, --allowed-tools <tools...>        Comma or space-separated list of tool names to allow
  --tools <tools...>                                Specify the list of available tools from the built-in set
  --disallowedTools, --disallowed-tools <tools...>  Comma or space-separated list of tool names to deny
  --append-system-prompt <prompt>                   Append a system prompt to the default system prompt
  --system-prompt <prompt>                          System prompt to use for the session
  --permission-mode <mode>                          Permission mode to use for the session (choices: \"acceptEdits\", \"bypassPermissions\", \"default\", \"dontAsk\", \"plan\")
  -c, --continue                                    Continue the most recent conversation
  -r, --resume [sessionId]                          Resume a conversation
  --model <model>                                   Model for the current session
  --betas <betas...>                                Beta headers to include in API requests
  --no-session-persistence                          Disable session persistence
  --session-id <uuid>                               Use a specific session ID for the conversation
  --settings <file-or-json>                         Path to a settings JSON file or a JSON string
  --setting-sources <sources>                       Comma-separated list of setting sources to load (user, project, local)
  --plugin-dir <paths...>                           Load plugins from directories for this session only
  --disable-slash-commands                          Disable all slash commands
  -v, --version                                     Output the version number
  -h, --help                                        Display help for command
";

const CODEX_HELP: &str = "Run Codex non-interactively

Usage: codex exec [OPTIONS] [PROMPT] [COMMAND]

Commands:
  resume  Resume a previous session by id or pick the most recent with --last

Options:
  -c, --config <key=value>                        Override a configuration value
  -m, --model <MODEL>                             Model the agent should use
  -s, --sandbox <SANDBOX_MODE>                    [possible values: read-only, workspace-write, danger-full-access]
      --full-auto                                 Convenience alias for low-friction sandboxed automatic execution
      --dangerously-bypass-approvals-and-sandbox  Skip all confirmation prompts and execute commands without sandboxing
  -C, --cd <DIR>                                  Tell the agent to use the specified directory as its working root
      --skip-git-repo-check                       Allow running Codex outside a Git repository
      --output-schema <FILE>                      Path to a JSON Schema file describing the model's final response shape
      --json                                      Print events to stdout as JSONL
  -o, --output-last-message <FILE>                Specifies file where the last message from the agent should be written
  -h, --help                                      Print help
  -V, --version                                   Print version
";

const GEMINI_HELP: &str = "Usage: gemini [options] [command]

Gemini CLI - Launch an interactive CLI, use -p/--prompt for non-interactive mode

Options:
  -m, --model                 Model  [string]
  -p, --prompt                Prompt. Appended to input on stdin (if any).  [string]
  -s, --sandbox               Run in sandbox?  [boolean]
      --skip-trust            Trust the current workspace for this session.  [boolean]
  -r, --resume                Resume a previous session.  [string]
  -y, --yolo                  Automatically accept all actions (aka YOLO mode)  [boolean] [default: false]
      --approval-mode         Set the approval mode  [string] [choices: \"default\", \"auto_edit\", \"yolo\", \"plan\"]
  -e, --extensions            A list of extensions to use. If not provided, all extensions are used.  [array]
  -o, --output-format         The format of the CLI output.  [string] [choices: \"text\", \"json\", \"stream-json\"]
  -v, --version               Show version number  [boolean]
  -h, --help                  Show help  [boolean]
";

fn env(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.is_empty())
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

fn log_execution(role: &str, provider: Provider, argv: &[String]) {
    let Some(path) = env("FAKE_AGENT_LOG") else {
        return;
    };
    let entry = json!({
        "role": role,
        "provider": provider.name(),
        "pid": std::process::id(),
        "ppid": unsafe { libc::getppid() },
        "ts_ms": now_ms() as u64,
        "argv": argv,
    });
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        // One write(2) per line: with O_APPEND, concurrent agents' lines
        // cannot interleave (`writeln!` of a `Value` is many small writes).
        let _ = f.write_all(format!("{entry}\n").as_bytes());
    }
}

fn dump_env() {
    let Some(path) = env("FAKE_AGENT_ENV_DUMP") else {
        return;
    };
    let map: Map<String, Value> = std::env::vars()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    let sorted: std::collections::BTreeMap<_, _> = map.into_iter().collect();
    let _ = std::fs::write(
        path,
        serde_json::to_string_pretty(&sorted).unwrap_or_default(),
    );
}

fn sleep_ms(ms: u64) {
    if ms > 0 {
        std::thread::sleep(Duration::from_millis(ms));
    }
}

fn env_u64(key: &str) -> Option<u64> {
    env(key).and_then(|v| v.trim().parse().ok())
}

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// `--flag value` lookup.
fn flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn marker(prompt: &str) -> Option<String> {
    let start = prompt.find("[[fake:")? + "[[fake:".len();
    let end = prompt[start..].find("]]")?;
    Some(prompt[start..start + end].trim().to_string())
}

fn choose_transcript(provider: Provider, args: &[String]) -> Option<PathBuf> {
    if let Some(path) = env("FAKE_AGENT_TRANSCRIPT") {
        return Some(PathBuf::from(path));
    }
    let prompt = args.last().map(String::as_str).unwrap_or("");
    let dir = env("FAKE_AGENT_TRANSCRIPT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| fixtures_dir().join(provider.name()));
    let name = match marker(prompt) {
        Some(name) => name,
        None if provider == Provider::Claude && args.iter().any(|a| a == "--json-schema") => {
            "structured".into()
        }
        None => "success".into(),
    };
    let file = if Path::new(&name).extension().is_some() {
        name
    } else {
        format!("{name}.jsonl")
    };
    Some(dir.join(file))
}

/// How stdout lines are rendered for the requested output format.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Render {
    /// Replay every stdout line (stream formats).
    Stream,
    ClaudeJson,
    ClaudeText,
    CodexText,
    GeminiJson,
    GeminiText,
}

fn render_mode(provider: Provider, args: &[String]) -> Render {
    let fmt = flag_value(args, "--output-format").unwrap_or("text");
    match provider {
        Provider::Claude => match fmt {
            "stream-json" => Render::Stream,
            "json" => Render::ClaudeJson,
            _ => Render::ClaudeText,
        },
        Provider::Codex if args.iter().any(|a| a == "--json") => Render::Stream,
        Provider::Codex => Render::CodexText,
        Provider::Gemini => match fmt {
            "stream-json" => Render::Stream,
            "json" => Render::GeminiJson,
            _ => Render::GeminiText,
        },
    }
}

/// The final stdout of a non-stream format, synthesized from the transcript.
fn synthesize(render: Render, lines: &[Value]) -> Option<String> {
    let by_type = |t: &str| {
        lines
            .iter()
            .rev()
            .find(|v| v.get("type").and_then(Value::as_str) == Some(t))
    };
    match render {
        Render::Stream => None,
        Render::ClaudeJson => by_type("result").map(Value::to_string),
        Render::ClaudeText => by_type("result")
            .and_then(|r| r.get("result"))
            .and_then(Value::as_str)
            .map(str::to_string),
        Render::CodexText => lines
            .iter()
            .rev()
            .filter(|v| v.get("type").and_then(Value::as_str) == Some("item.completed"))
            .filter_map(|v| v.get("item"))
            .find(|i| i.get("type").and_then(Value::as_str) == Some("agent_message"))
            .and_then(|i| i.get("text"))
            .and_then(Value::as_str)
            .map(str::to_string),
        Render::GeminiJson | Render::GeminiText => {
            let response: String = lines
                .iter()
                .filter(|v| v.get("type").and_then(Value::as_str) == Some("message"))
                .filter(|v| v.get("role").and_then(Value::as_str) == Some("assistant"))
                .filter_map(|v| v.get("content").and_then(Value::as_str))
                .collect();
            if render == Render::GeminiText {
                return Some(response);
            }
            let init = by_type("init");
            let result = by_type("result");
            let mut out = Map::new();
            if let Some(id) = init.and_then(|i| i.get("session_id")) {
                out.insert("session_id".into(), id.clone());
            }
            out.insert("response".into(), json!(response));
            out.insert(
                "stats".into(),
                result
                    .and_then(|r| r.get("stats"))
                    .cloned()
                    .unwrap_or(json!({})),
            );
            if let Some(err) = result.and_then(|r| r.get("error")) {
                out.insert("error".into(), err.clone());
            }
            Some(Value::Object(out).to_string())
        }
    }
}

fn grandchild(provider: Provider, argv: &[String]) -> ! {
    log_execution("grandchild", provider, argv);
    sleep_ms(env_u64("FAKE_AGENT_GRANDCHILD_SLEEP_MS").unwrap_or(600_000));
    std::process::exit(0);
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    let mut args: Vec<String> = argv.iter().skip(1).cloned().collect();
    let mut provider = None;
    if args.first().map(String::as_str) == Some("--as") && args.len() >= 2 {
        provider = Provider::parse(&args[1]);
        args.drain(..2);
    }
    let provider = provider
        .or_else(|| env("FAKE_AGENT_PROVIDER").and_then(|p| Provider::parse(&p)))
        .or_else(|| {
            argv.first()
                .and_then(|a0| {
                    Path::new(a0)
                        .file_name()
                        .map(|f| f.to_string_lossy().into_owned())
                })
                .and_then(|name| Provider::parse(&name))
        })
        .unwrap_or(Provider::Claude);

    if env("FAKE_AGENT_IGNORE_TERM").as_deref() == Some("1") {
        // SAFETY: installing SIG_IGN for SIGTERM has no preconditions.
        unsafe {
            libc::signal(libc::SIGTERM, libc::SIG_IGN);
        }
    }
    if env("FAKE_AGENT_ROLE").as_deref() == Some("grandchild") {
        grandchild(provider, &argv);
    }
    log_execution("agent", provider, &argv);
    dump_env();

    let is_help = args.iter().any(|a| a == "--help" || a == "-h");
    if args
        .iter()
        .any(|a| a == "--version" || a == "-v" || a == "-V")
        && !is_help
    {
        if env("FAKE_AGENT_VERSION_FAIL").as_deref() == Some("1") {
            eprintln!("fake agent: version probe failure requested");
            std::process::exit(1);
        }
        println!(
            "{}",
            env("FAKE_AGENT_VERSION").unwrap_or_else(|| provider.version().to_string())
        );
        return;
    }
    if is_help {
        let text = env("FAKE_AGENT_HELP_FILE")
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_else(|| provider.help().to_string());
        let omit: Vec<String> = env("FAKE_AGENT_HELP_OMIT")
            .map(|s| {
                s.split(',')
                    .map(|f| f.trim().to_ascii_lowercase())
                    .filter(|f| !f.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        for line in text.lines() {
            let lower = line.to_ascii_lowercase();
            if !omit.iter().any(|f| lower.contains(f.as_str())) {
                println!("{line}");
            }
        }
        return;
    }

    let mut grandchildren = Vec::new();
    // A shell command the agent runs in the background, as an agent's
    // tool call would (containment tests: escapees that clear their
    // environment and leave the session).
    if let Some(script) = env("FAKE_AGENT_SHELL") {
        let spawned = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(script)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        if let Ok(child) = spawned {
            grandchildren.push(child);
        }
    }
    for _ in 0..env_u64("FAKE_AGENT_GRANDCHILDREN").unwrap_or(0) {
        if let Ok(exe) = std::env::current_exe() {
            let mut cmd = std::process::Command::new(exe);
            cmd.args(["--as", provider.name()])
                .env("FAKE_AGENT_ROLE", "grandchild")
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            if env("FAKE_AGENT_GRANDCHILD_SETSID").as_deref() == Some("1") {
                // Leave the agent's session and process group, as a
                // daemonizing MCP server would.
                use std::os::unix::process::CommandExt;
                // SAFETY: setsid(2) is async-signal-safe.
                unsafe {
                    cmd.pre_exec(|| {
                        libc::setsid();
                        Ok(())
                    });
                }
            }
            let spawned = cmd.spawn();
            if let Ok(child) = spawned {
                grandchildren.push(child);
            }
        }
    }

    let text = match choose_transcript(provider, &args) {
        Some(path) => match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("fake agent: cannot read transcript {}: {e}", path.display());
                std::process::exit(env_u64("FAKE_AGENT_EXIT_CODE").map_or(2, |c| c as i32));
            }
        },
        None => String::new(),
    };
    let render = render_mode(provider, &args);
    let delay = env_u64("FAKE_AGENT_LINE_DELAY_MS").unwrap_or(0);
    let mut exit = 0;
    let mut json_lines = Vec::new();
    let stdout = std::io::stdout();
    for step in parse_transcript(&text) {
        match step {
            TranscriptStep::Stdout(line) => {
                if render == Render::Stream {
                    let mut out = stdout.lock();
                    let _ = writeln!(out, "{line}");
                    let _ = out.flush();
                    sleep_ms(delay);
                } else if let Ok(v) = serde_json::from_str::<Value>(line.trim()) {
                    json_lines.push(v);
                }
            }
            TranscriptStep::Stderr(line) => eprintln!("{line}"),
            TranscriptStep::SleepMs(ms) => sleep_ms(ms),
            TranscriptStep::Exit(code) => exit = code,
            TranscriptStep::Touch(path) => {
                let _ = std::io::stdout().flush();
                let _ = std::fs::write(path, b"");
            }
        }
    }
    if let Some(final_text) = synthesize(render, &json_lines) {
        println!("{final_text}");
    }
    let _ = std::io::stdout().flush();
    if let Some(msg) = env("FAKE_AGENT_STDERR") {
        eprintln!("{msg}");
    }
    sleep_ms(env_u64("FAKE_AGENT_HOLD_MS").unwrap_or(0));
    // Grandchildren are deliberately not waited for: they must outlive us.
    drop(grandchildren);
    std::process::exit(
        env("FAKE_AGENT_EXIT_CODE")
            .and_then(|c| c.trim().parse().ok())
            .unwrap_or(exit),
    );
}
