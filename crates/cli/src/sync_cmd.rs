//! `tokenledger login|logout|sync|status|hooks`: the sync client's commands.

use anyhow::{bail, Context, Result};
use serde_json::json;
use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;
use tokenledger_collect::Env;
use tokenledger_ledger::{Filter, Ledger};
use tokenledger_sync::client::ApiError;
use tokenledger_sync::config::{self, Credentials, Secret};
use tokenledger_sync::hooks::{self, Agent, Outcome};
use tokenledger_sync::outbox::{self, Outbox};
use tokenledger_sync::uploader::{self, Backoff, DrainOptions};
use tokenledger_sync::{failpoint, state, Client, SyncLock, Trigger};

/// Exit code of a sync that left buckets queued.
const EXIT_PENDING: u8 = 1;
/// Exit code when another sync holds the lock.
const EXIT_LOCKED: u8 = 3;

#[derive(clap::Args, Debug)]
pub struct LoginArgs {
    /// The server's base URL, e.g. https://ledger.example.com.
    #[arg(long, env = "TOKENLEDGER_SERVER", value_name = "URL")]
    pub server: String,
    /// Your user token (from the dashboard or `tokenledger admin create-user`); `-` reads it
    /// from stdin, as does leaving it out when stdin is not a terminal.
    #[arg(
        long,
        env = "TOKENLEDGER_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// A one-time login code or link (`.../login/tll_...`) from the dashboard's first run or
    /// `tokenledger admin login-link`, instead of the user token. It works once, for 10 minutes.
    #[arg(long, value_name = "CODE_OR_LINK", conflicts_with = "token")]
    pub code: Option<String>,
    /// The name this machine gets on the server (default: its host name).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct LogoutArgs {
    /// Forget the credentials even when the server cannot be told to revoke them.
    #[arg(long)]
    pub local_only: bool,
    /// Your user token, when the server only lets users revoke their devices.
    #[arg(
        long,
        env = "TOKENLEDGER_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct SyncArgs {
    /// Print the buckets that would be sent, send nothing, change nothing queued.
    #[arg(long)]
    pub dry_run: bool,
    /// Print nothing but errors (used by the agents' hooks).
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Upload what is queued without scanning the agents' logs first.
    #[arg(long)]
    pub no_scan: bool,
    /// Buckets per request (at most 500).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u16).range(1..=500))]
    pub batch_size: u16,
    /// Failed attempts of one request before giving up.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_attempts: u32,
    /// Print the result as JSON.
    #[arg(long, short = 'j')]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// Print JSON instead of text.
    #[arg(long, short = 'j')]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct HooksArgs {
    #[command(subcommand)]
    pub action: HooksAction,
}

#[derive(clap::Subcommand, Debug)]
pub enum HooksAction {
    /// Install the hooks of the agents found on this machine (or of those named).
    Install(AgentsArg),
    /// Remove the hooks, restoring each agent's config as it was.
    Uninstall(AgentsArg),
    /// Show which hooks are installed.
    Status(AgentsArg),
    /// What the hooks call: start a detached, throttled sync and return at once (always exit 0).
    #[command(hide = true)]
    Run {
        #[arg(long)]
        source: Option<String>,
    },
    /// What Codex's `notify` calls: run the chained notify command, then as `run`.
    #[command(hide = true)]
    Notify {
        #[arg(long)]
        source: Option<String>,
        /// `--chain ORIGINAL_ARGV... PAYLOAD`, or just the agent's payload.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(clap::Args, Debug)]
pub struct AgentsArg {
    /// Only these agents (codex, every-code, claude, gemini, opencode); comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub agent: Vec<String>,
}

fn data_dir() -> std::path::PathBuf {
    tokenledger_ledger::data_dir()
}

fn open_ledger(dir: &Path) -> Result<Ledger> {
    Ledger::open_in(dir)
        .with_context(|| format!("cannot open the local ledger in {}", dir.display()))
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unnamed".into())
}

fn read_token(arg: Option<String>) -> Result<String> {
    let token = match arg {
        Some(t) if t != "-" => t,
        Some(_) => read_stdin_token()?,
        None if !std::io::stdin().is_terminal() => read_stdin_token()?,
        None => bail!(
            "no user token: pass --token TOKEN, set TOKENLEDGER_TOKEN, or pipe it on stdin \
             (get one from the dashboard or `tokenledger admin create-user`)"
        ),
    };
    let token = token.trim().to_string();
    if token.is_empty() {
        bail!("the user token is empty");
    }
    Ok(token)
}

fn read_stdin_token() -> Result<String> {
    let mut s = String::new();
    std::io::stdin()
        .take(64 * 1024)
        .read_to_string(&mut s)
        .context("cannot read the token from stdin")?;
    Ok(s.lines().next().unwrap_or_default().to_string())
}

pub fn login(a: LoginArgs) -> Result<ExitCode> {
    let dir = data_dir();
    let token = match a.code.as_deref() {
        Some(code) => {
            // Accept the whole link as printed, or the code alone.
            let code = code.trim().trim_end_matches('/');
            code.rsplit('/').next().unwrap_or(code).to_string()
        }
        None => read_token(a.token)?,
    };
    let client = Client::new(&a.server)?;
    let name = a.name.unwrap_or_else(host_name);
    let reg = client
        .register_device(&token, &name, std::env::consts::OS)
        .map_err(|e| match e {
            ApiError::Unauthorized { message } => anyhow::anyhow!(
                "the server refused the user token ({message}); check it, or create a new one"
            ),
            e => e.into(),
        })
        .context("cannot register this machine")?;
    let previous = config::load(&dir)?;
    config::save(
        &dir,
        &Credentials {
            server: client.base().to_string(),
            device_id: reg.device_id.clone(),
            device_token: Secret(reg.device_token),
            device_name: name.clone(),
        },
    )?;
    println!(
        "Logged in to {} as device {:?} ({}). `tokenledger sync` uploads your usage; \
         `tokenledger hooks install` keeps it current.",
        client.base(),
        name,
        reg.device_id
    );
    if let Some(p) = previous.filter(|p| p.device_id != reg.device_id) {
        eprintln!(
            "tokenledger: this machine was device {} on {}; it was not revoked there",
            p.device_id, p.server
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn logout(a: LogoutArgs) -> Result<ExitCode> {
    let dir = data_dir();
    let Some(creds) = config::load(&dir)? else {
        println!("Not logged in.");
        return Ok(ExitCode::SUCCESS);
    };
    let client = Client::new(&creds.server)?;
    // The device's own token first; servers that only let users revoke answer 401 to it.
    let revoked = match client.revoke_device(&creds.device_token.0, &creds.device_id) {
        Err(ApiError::Unauthorized { .. }) => match a.token.as_deref().map(str::trim) {
            Some(user) if !user.is_empty() => client.revoke_device(user, &creds.device_id),
            _ => {
                eprintln!(
                    "tokenledger: the server did not take this device's token to revoke it \
                     (it may be revoked already); if it is not, revoke device {} from the \
                     dashboard or run `tokenledger logout --token USER_TOKEN`",
                    creds.device_id
                );
                Ok(())
            }
        },
        other => other,
    };
    match revoked {
        // 404: no such active device, i.e. revoked already.
        Ok(()) | Err(ApiError::Status { status: 404, .. }) => {}
        Err(e) if a.local_only => {
            eprintln!("tokenledger: could not revoke the device on the server: {e}");
        }
        Err(e) => {
            return Err(anyhow::Error::from(e).context(
                "could not revoke this device on the server; nothing was forgotten \
                 (retry, or use --local-only and revoke it from the dashboard)",
            ))
        }
    }
    config::forget(&dir)?;
    let mut ledger = open_ledger(&dir)?;
    Outbox::open(&mut ledger)?.reset()?;
    println!(
        "Logged out of {} (device {}).",
        creds.server, creds.device_id
    );
    Ok(ExitCode::SUCCESS)
}

/// Scans the agents' logs into the ledger, passing the `scan` failpoint after each file.
fn scan(ledger: &mut Ledger, quiet: bool) -> Result<()> {
    let collectors = tokenledger_collect::all_collectors();
    let report = ledger.scan(
        &collectors,
        &Env::from_process(),
        &tokenledger_sync::ScanFailpoints,
    )?;
    if !quiet && !report.skipped.is_empty() {
        eprintln!(
            "tokenledger: skipped {} line(s) or file(s) (`tokenledger report daily --verbose` lists them)",
            report.skipped.len()
        );
    }
    Ok(())
}

/// The real sleep, capped by `TOKENLEDGER_BACKOFF_MS` when set (tests set it to 0).
fn sleep(d: Duration) {
    let cap = std::env::var("TOKENLEDGER_BACKOFF_MS")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_millis);
    let d = cap.map_or(d, |c| d.min(c));
    if !d.is_zero() {
        std::thread::sleep(d);
    }
}

pub fn sync(a: SyncArgs) -> Result<ExitCode> {
    let dir = data_dir();
    let creds = config::load(&dir)?;
    if creds.is_none() && !a.dry_run {
        bail!("this machine is not logged in: run `tokenledger login --server URL --token TOKEN`");
    }
    let mut lock = SyncLock::open(&dir)
        .with_context(|| format!("cannot create the sync lock in {}", dir.display()))?;
    let Some(_guard) = lock.try_lock().context("cannot take the sync lock")? else {
        if !a.quiet {
            eprintln!("tokenledger: another sync is running; this one did nothing");
        }
        return Ok(ExitCode::from(EXIT_LOCKED));
    };
    let mut ledger = open_ledger(&dir)?;
    if !a.no_scan {
        scan(&mut ledger, a.quiet)?;
    }
    let device = creds
        .as_ref()
        .map(|c| c.device_id.clone())
        .unwrap_or_default();

    if a.dry_run {
        let buckets = ledger.half_hour_buckets(&Filter::default())?;
        let pending = Outbox::open(&mut ledger)?.preview(buckets, &device)?;
        let wire: Vec<_> = pending.iter().map(|p| p.to_wire()).collect();
        let out = json!({
            "server": creds.as_ref().map(|c| c.server.clone()),
            "requests": wire.len().div_ceil(usize::from(a.batch_size)),
            "buckets": wire,
        });
        let mut stdout = std::io::stdout().lock();
        serde_json::to_writer_pretty(&mut stdout, &out)?;
        writeln!(stdout)?;
        return Ok(ExitCode::SUCCESS);
    }
    let creds = creds.expect("checked above");

    let emitted = outbox::emit(&mut ledger, &device)?;
    failpoint::hit("emit");
    let client = Client::new(&creds.server)?;
    let quiet = a.quiet;
    let on_retry = |e: &ApiError, wait: Duration| {
        if !quiet {
            eprintln!("tokenledger: {e}; retrying in {:.1}s", wait.as_secs_f64());
        }
    };
    let opts = DrainOptions {
        batch_size: usize::from(a.batch_size),
        backoff: Backoff {
            max_attempts: a.max_attempts,
            ..Backoff::default()
        },
        sleep: &sleep,
        on_retry: &on_retry,
    };
    let result = {
        let mut ob = Outbox::open(&mut ledger)?;
        uploader::drain(&mut ob, &client, &creds.device_token.0, &opts)
    };
    let now = tokenledger_sync::now_rfc3339();
    match result {
        Ok(r) => {
            ledger.set_meta(state::LAST_SUCCESS, &now)?;
            ledger.set_meta(state::LAST_ERROR, "")?;
            if a.json {
                println!(
                    "{}",
                    json!({"ok": true, "queued": emitted.queued + emitted.zeroed, "sent": r.sent,
                           "batches": r.batches, "inserted": r.inserted, "updated": r.updated,
                           "unchanged": r.unchanged, "retries": r.retries, "remaining": 0})
                );
            } else if !a.quiet {
                println!(
                    "Synced to {}: {} bucket(s) sent in {} request(s) ({} new, {} updated, {} unchanged); nothing pending.",
                    creds.server, r.sent, r.batches, r.inserted, r.updated, r.unchanged
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(failure) => {
            let (r, e) = *failure;
            let msg = e.to_string();
            ledger.set_meta(state::LAST_ERROR, &msg)?;
            ledger.set_meta(state::LAST_ERROR_AT, &now)?;
            if a.json {
                println!(
                    "{}",
                    json!({"ok": false, "error": msg, "sent": r.sent, "remaining": r.remaining})
                );
            }
            eprintln!(
                "tokenledger: sync failed: {msg}\ntokenledger: {} bucket(s) sent, {} still queued; \
                 they are kept and sent by the next `tokenledger sync`",
                r.sent, r.remaining
            );
            Ok(ExitCode::from(EXIT_PENDING))
        }
    }
}

fn hook_statuses(agents: &[Agent]) -> Result<Vec<hooks::HookStatus>> {
    let env = Env::from_process();
    agents
        .iter()
        .map(|a| hooks::status(*a, &env).map_err(anyhow::Error::from))
        .collect()
}

pub fn status(a: StatusArgs) -> Result<ExitCode> {
    let dir = data_dir();
    let creds = config::load(&dir)?;
    let mut ledger = open_ledger(&dir)?;
    let pending = Outbox::open(&mut ledger)?.len()?;
    let meta =
        |k: &str| -> Result<Option<String>> { Ok(ledger.meta(k)?.filter(|v| !v.is_empty())) };
    let last_success = meta(state::LAST_SUCCESS)?;
    let last_error = meta(state::LAST_ERROR)?;
    let last_error_at = meta(state::LAST_ERROR_AT)?;
    let files = ledger.files()?;
    let hooks = hook_statuses(&Agent::ALL)?;

    if a.json {
        let out = json!({
            "data_dir": dir,
            "server": creds.as_ref().map(|c| &c.server),
            "device_id": creds.as_ref().map(|c| &c.device_id),
            "device_name": creds.as_ref().map(|c| &c.device_name),
            "pending_buckets": pending,
            "last_success": last_success,
            "last_error": last_error,
            "last_error_at": last_error_at,
            "files": files.iter().map(|f| json!({
                "source": f.source, "path": f.path, "size": f.size, "offset": f.offset,
                "last_scan": f.last_scan,
            })).collect::<Vec<_>>(),
            "hooks": hooks.iter().map(|h| json!({
                "agent": h.agent.name(), "path": h.path, "agent_found": h.agent_found,
                "installed": h.installed,
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut o = std::io::stdout().lock();
    match &creds {
        Some(c) => writeln!(
            o,
            "Server:        {}\nDevice:        {} ({})",
            c.server, c.device_name, c.device_id
        )?,
        None => writeln!(o, "Server:        not logged in (`tokenledger login`)")?,
    }
    writeln!(o, "Pending:       {pending} bucket(s)")?;
    writeln!(
        o,
        "Last upload:   {}",
        last_success.as_deref().unwrap_or("never")
    )?;
    match (&last_error, &last_error_at) {
        (Some(e), at) => writeln!(o, "Last error:    {} ({e})", at.as_deref().unwrap_or("?"))?,
        _ => writeln!(o, "Last error:    none")?,
    }
    writeln!(o, "Hooks:")?;
    for h in &hooks {
        let state = match (h.installed, h.agent_found) {
            (true, _) => "installed",
            (false, true) => "not installed",
            (false, false) => "agent not found",
        };
        writeln!(
            o,
            "  {:<11} {:<16} {}",
            h.agent.name(),
            state,
            h.path.display()
        )?;
    }
    writeln!(
        o,
        "Files:         {} (data dir {})",
        files.len(),
        dir.display()
    )?;
    for f in &files {
        writeln!(
            o,
            "  {:<11} {:>12} of {:>12} bytes read  {}",
            f.source, f.offset, f.size, f.path
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn select_agents(names: &[String]) -> Result<Option<Vec<Agent>>> {
    if names.is_empty() {
        return Ok(None);
    }
    names
        .iter()
        .map(|n| {
            Agent::parse(n.trim()).with_context(|| {
                format!("unknown agent {n:?} (codex, every-code, claude, gemini, opencode)")
            })
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// The hook work: never fails, never waits.
fn hook_trigger() {
    let throttle = std::env::var("TOKENLEDGER_HOOK_THROTTLE_SECS")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(60);
    if let Ok(exe) = std::env::current_exe() {
        if let Trigger::Failed(e) =
            tokenledger_sync::trigger(&data_dir(), &exe, Duration::from_secs(throttle))
        {
            eprintln!("tokenledger: could not start a sync: {e}");
        }
    }
}

pub fn hooks(a: HooksArgs) -> Result<ExitCode> {
    let env = Env::from_process();
    match a.action {
        HooksAction::Run { .. } => {
            hook_trigger();
            Ok(ExitCode::SUCCESS)
        }
        HooksAction::Notify { args, .. } => {
            if args.first().map(String::as_str) == Some("--chain") {
                if let Err(e) = tokenledger_sync::spawn_detached(&args[1..]) {
                    eprintln!("tokenledger: the chained notify command failed to start: {e}");
                }
            }
            hook_trigger();
            Ok(ExitCode::SUCCESS)
        }
        HooksAction::Status(sel) => {
            let agents = select_agents(&sel.agent)?.unwrap_or(Agent::ALL.to_vec());
            for h in hook_statuses(&agents)? {
                let state = match (h.installed, h.agent_found) {
                    (true, _) => "installed",
                    (false, true) => "not installed",
                    (false, false) => "agent not found",
                };
                println!("{:<11} {:<16} {}", h.agent.name(), state, h.path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        HooksAction::Install(sel) => {
            let exe = std::env::current_exe().context("cannot find the tokenledger executable")?;
            let explicit = select_agents(&sel.agent)?;
            let agents = explicit.clone().unwrap_or(Agent::ALL.to_vec());
            let mut failed = false;
            for agent in agents {
                if explicit.is_none() && !agent.home(&env).is_dir() {
                    println!("{:<11} skipped (agent not found)", agent.name());
                    continue;
                }
                match hooks::install(agent, &env, &exe) {
                    Ok(Outcome::AlreadyInstalled) => {
                        println!("{:<11} already installed", agent.name())
                    }
                    Ok(Outcome::Installed { backup }) => println!(
                        "{:<11} installed in {}{}",
                        agent.name(),
                        agent.config_path(&env).display(),
                        backup
                            .map(|b| format!(" (backup: {})", b.display()))
                            .unwrap_or_default()
                    ),
                    Ok(other) => println!("{:<11} {other:?}", agent.name()),
                    Err(e) => {
                        failed = true;
                        eprintln!("tokenledger: {}: {e}", agent.name());
                    }
                }
            }
            Ok(if failed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        HooksAction::Uninstall(sel) => {
            let agents = select_agents(&sel.agent)?.unwrap_or(Agent::ALL.to_vec());
            let mut failed = false;
            for agent in agents {
                match hooks::uninstall(agent, &env) {
                    Ok(Outcome::NotInstalled) => println!("{:<11} not installed", agent.name()),
                    Ok(Outcome::Restored) => println!(
                        "{:<11} removed; {} restored",
                        agent.name(),
                        agent.config_path(&env).display()
                    ),
                    Ok(Outcome::Removed { backup }) => println!(
                        "{:<11} removed (the file changed since; backup kept: {})",
                        agent.name(),
                        backup
                            .map(|b| b.display().to_string())
                            .unwrap_or_else(|| "none".into())
                    ),
                    Ok(other) => println!("{:<11} {other:?}", agent.name()),
                    Err(e) => {
                        failed = true;
                        eprintln!("tokenledger: {}: {e}", agent.name());
                    }
                }
            }
            Ok(if failed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}
