//! `tokenledger provider ...`: provider (OpenAI, Anthropic) organisation usage on the server's
//! database: keys, daily pull, backfill, and parity with the provider's CSV exports.

use anyhow::Context;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use jiff::civil::Date;
use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use tokenledger_provider::crypto::{data_dir, KeyCipher};
use tokenledger_provider::ingest::{
    BackfillRequest, ChunkReport, ClientFactory, IngestConfig, Ingestor, Telemetry,
    DEFAULT_REQUESTS_PER_MINUTE, DEFAULT_RETENTION_DAYS,
};
use tokenledger_provider::model::{days_between, today_utc};
use tokenledger_provider::parity::{ParityOptions, DEFAULT_THRESHOLD};
use tokenledger_provider::retry::{RetryPolicy, TokioSleeper};
use tokenledger_provider::{ProviderStore, SecretString};

#[derive(Args)]
pub struct ProviderArgs {
    /// The server's database: postgres://... or a SQLite path (default: $TOKENLEDGER_HOME/server.db).
    #[arg(long, global = true)]
    pub database_url: Option<String>,
    #[command(subcommand)]
    pub command: ProviderCommand,
}

#[derive(Subcommand)]
pub enum ProviderCommand {
    /// Add an organisation admin key (read from stdin); prints the new key's id.
    Add(AddArgs),
    /// List a user's provider keys (masked).
    List(UserArg),
    /// Stop pulling a key.
    Disable(KeyArg),
    /// Pull a key again.
    Enable(KeyArg),
    /// Remove a key with its cursors and stored usage.
    Remove(KeyArg),
    /// Pull the recent days of every enabled key of a user (for a system scheduler).
    Pull(PullArgs),
    /// Load a range of past days, resumable by label.
    Backfill(BackfillArgs),
    /// Compare stored per-day usage with the provider's CSV exports (exit 1 on differences).
    Parity(ParityArgs),
}

#[derive(Args)]
pub struct UserArg {
    /// The user (as created with `tokenledger admin create-user`).
    #[arg(long)]
    pub user: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct AddArgs {
    /// `openai` (or `anthropic`).
    pub provider: String,
    #[arg(long)]
    pub user: String,
    /// A label for the key.
    #[arg(long)]
    pub name: String,
    /// The API's base URL (default: the provider's real API).
    #[arg(long)]
    pub base_url: Option<String>,
}

#[derive(Args)]
pub struct KeyArg {
    #[arg(long)]
    pub user: String,
    /// The provider key id.
    pub id: i64,
}

#[derive(Args, Clone, Copy)]
pub struct Tuning {
    /// Days kept (today included); older windows are pruned after each run.
    #[arg(long, default_value_t = DEFAULT_RETENTION_DAYS)]
    pub retention_days: u32,
    /// Provider requests per minute (0: unthrottled).
    #[arg(long, default_value_t = DEFAULT_REQUESTS_PER_MINUTE)]
    pub requests_per_minute: u32,
    /// Attempts per provider request, the first included (5xx, network errors and 429 are retried).
    #[arg(long, default_value_t = RetryPolicy::default().max_attempts, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,
}

#[derive(Args)]
pub struct PullArgs {
    #[arg(long)]
    pub user: String,
    #[command(flatten)]
    pub tuning: Tuning,
}

#[derive(Args)]
pub struct BackfillArgs {
    #[arg(long)]
    pub user: String,
    /// First UTC day (inclusive), YYYY-MM-DD.
    #[arg(long)]
    pub start: Date,
    /// Last UTC day (inclusive), YYYY-MM-DD.
    #[arg(long)]
    pub end: Date,
    /// Days per request (at most 31 buckets come back per page).
    #[arg(long, default_value_t = 7)]
    pub chunk_days: u32,
    /// Names the run: running the same label again resumes it.
    #[arg(long)]
    pub label: String,
    /// Only this provider key.
    #[arg(long)]
    pub key: Option<i64>,
    #[command(flatten)]
    pub tuning: Tuning,
}

#[derive(Args)]
pub struct ParityArgs {
    #[arg(long)]
    pub user: String,
    /// OpenAI usage CSV export(s).
    #[arg(long, required = true, num_args = 1..)]
    pub csv: Vec<PathBuf>,
    /// First UTC day compared (default: the exports' first day).
    #[arg(long)]
    pub from: Option<Date>,
    /// Last UTC day compared (default: the exports' last day).
    #[arg(long)]
    pub to: Option<Date>,
    /// Relative difference above which a counter is reported.
    #[arg(long, default_value_t = DEFAULT_THRESHOLD)]
    pub threshold: f64,
    /// Only this provider key's stored data.
    #[arg(long)]
    pub key: Option<i64>,
    /// Write the JSON report here.
    #[arg(long)]
    pub json_out: Option<PathBuf>,
}

pub fn run(args: ProviderArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run_async(args))
}

pub async fn open(args_url: Option<&str>) -> anyhow::Result<Arc<dyn ProviderStore>> {
    tokenledger_provider::open_store(args_url, &data_dir())
        .await
        .context("opening the server database")
}

async fn user_id(store: &dyn ProviderStore, name: &str) -> anyhow::Result<i64> {
    store
        .user_id_by_name(name)
        .await
        .context("looking up the user (has the server been set up with `tokenledger admin create-user`?)")?
        .with_context(|| format!("no user named {name:?}"))
}

pub fn ingestor(store: Arc<dyn ProviderStore>, tuning: Option<Tuning>) -> anyhow::Result<Ingestor> {
    let cipher = KeyCipher::load(&data_dir()).context("loading the master key")?;
    let tuning = tuning.unwrap_or(Tuning {
        retention_days: DEFAULT_RETENTION_DAYS,
        requests_per_minute: DEFAULT_REQUESTS_PER_MINUTE,
        max_attempts: RetryPolicy::default().max_attempts,
    });
    let retry = RetryPolicy {
        max_attempts: tuning.max_attempts.max(1),
        ..RetryPolicy::default()
    };
    Ok(Ingestor {
        store,
        cipher: Arc::new(cipher),
        clients: ClientFactory::with_sleeper(
            Arc::new(TokioSleeper),
            retry,
            tuning.requests_per_minute,
        ),
        config: IngestConfig {
            retention_days: tuning.retention_days.max(1),
            ..IngestConfig::default()
        },
    })
}

async fn run_async(args: ProviderArgs) -> anyhow::Result<ExitCode> {
    let url = args.database_url.as_deref();
    match args.command {
        ProviderCommand::Add(a) => {
            let store = open(url).await?;
            let uid = user_id(store.as_ref(), &a.user).await?;
            let key = read_key_from_stdin()?;
            let ing = ingestor(store, None)?;
            let info = tokenledger_provider::http::add_provider_key(
                &ing,
                uid,
                &a.provider,
                &a.name,
                key,
                a.base_url.as_deref(),
            )
            .await?;
            println!("{}", info.id);
            Ok(ExitCode::SUCCESS)
        }
        ProviderCommand::List(a) => {
            let store = open(url).await?;
            let uid = user_id(store.as_ref(), &a.user).await?;
            let keys = store.list_keys(uid).await?;
            let mut out = std::io::stdout().lock();
            if a.json {
                writeln!(out, "{}", serde_json::to_string_pretty(&keys)?)?;
            } else {
                let mut t = comfy_table::Table::new();
                t.load_preset(comfy_table::presets::NOTHING);
                t.set_header(["id", "provider", "name", "key", "enabled", "base url"]);
                for k in &keys {
                    t.add_row([
                        k.id.to_string(),
                        k.provider.as_str().to_owned(),
                        k.name.clone(),
                        k.masked_key.clone(),
                        if k.enabled { "yes" } else { "no" }.to_owned(),
                        k.base_url.clone(),
                    ]);
                }
                writeln!(out, "{t}")?;
            }
            Ok(ExitCode::SUCCESS)
        }
        ProviderCommand::Disable(a) => set_enabled(url, a, false).await,
        ProviderCommand::Enable(a) => set_enabled(url, a, true).await,
        ProviderCommand::Remove(a) => {
            let store = open(url).await?;
            let uid = user_id(store.as_ref(), &a.user).await?;
            anyhow::ensure!(
                store.remove_key(uid, a.id).await?,
                "no provider key {} for this user",
                a.id
            );
            eprintln!(
                "removed provider key {} with its cursors and stored usage",
                a.id
            );
            Ok(ExitCode::SUCCESS)
        }
        ProviderCommand::Pull(a) => {
            let store = open(url).await?;
            let uid = user_id(store.as_ref(), &a.user).await?;
            let ing = ingestor(store, Some(a.tuning))?;
            let sink = |c: &ChunkReport| eprintln!("{}", chunk_line(c));
            let tel = ing.pull_user(uid, today_utc(), &sink).await?;
            finish(&tel)
        }
        ProviderCommand::Backfill(a) => {
            let store = open(url).await?;
            let uid = user_id(store.as_ref(), &a.user).await?;
            let ing = ingestor(store.clone(), Some(a.tuning))?;
            let keys = store
                .list_keys(uid)
                .await?
                .into_iter()
                .filter(|k| a.key.map_or(k.enabled, |id| id == k.id))
                .count() as u64;
            let days = (days_between(a.start, a.end) + 1).max(0) as u64;
            let bar = std::io::stderr()
                .is_terminal()
                .then(|| progress_bar(days * keys));
            let sink = |c: &ChunkReport| {
                let line = chunk_line(c);
                match &bar {
                    Some(b) => {
                        b.println(line);
                        b.inc((days_between(c.first_day, c.last_day) + 1).max(0) as u64);
                    }
                    None => eprintln!("{line}"),
                }
            };
            let req = BackfillRequest {
                start: a.start,
                end: a.end,
                chunk_days: a.chunk_days,
                label: a.label,
                key: a.key,
            };
            let tel = ing.backfill(uid, &req, today_utc(), &sink).await?;
            if let Some(b) = &bar {
                b.finish_and_clear();
            }
            if tel.days_outside_retention > 0 {
                eprintln!(
                    "warning: {} day(s) before the {}-day retention window were stored; the next \
                     pull prunes them (pass --retention-days to keep them)",
                    tel.days_outside_retention, a.tuning.retention_days
                );
            }
            finish(&tel)
        }
        ProviderCommand::Parity(a) => {
            let store = open(url).await?;
            let uid = user_id(store.as_ref(), &a.user).await?;
            let opts = ParityOptions {
                from: a.from,
                to: a.to,
                threshold: a.threshold,
                provider_key_id: a.key,
            };
            let report =
                match tokenledger_provider::parity::run(store.as_ref(), uid, &a.csv, &opts).await {
                    Ok(r) => r,
                    Err(e @ tokenledger_provider::Error::Invalid(_)) => {
                        eprintln!("tokenledger: {e}");
                        return Ok(ExitCode::from(2));
                    }
                    Err(e) => return Err(e.into()),
                };
            print!("{}", report.render());
            if let Some(path) = &a.json_out {
                std::fs::write(path, serde_json::to_vec_pretty(&report)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            if report.csv_rows_invalid > 0 {
                // A row that cannot be read leaves the comparison unproven: bad input.
                eprintln!(
                    "tokenledger: {} CSV row(s) have an unreadable time or counter",
                    report.csv_rows_invalid
                );
                return Ok(ExitCode::from(2));
            }
            Ok(if report.is_match() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

async fn set_enabled(url: Option<&str>, a: KeyArg, enabled: bool) -> anyhow::Result<ExitCode> {
    let store = open(url).await?;
    let uid = user_id(store.as_ref(), &a.user).await?;
    anyhow::ensure!(
        store.set_key_enabled(uid, a.id, enabled).await?,
        "no provider key {} for this user",
        a.id
    );
    Ok(ExitCode::SUCCESS)
}

/// The admin key from stdin: never from an argument, so it stays out of shell history and `ps`.
fn read_key_from_stdin() -> anyhow::Result<SecretString> {
    let stdin = std::io::stdin();
    let mut s = String::new();
    if stdin.is_terminal() {
        eprint!("paste the admin key and press Enter: ");
        stdin.lock().read_line(&mut s)?;
    } else {
        stdin.lock().read_to_string(&mut s)?;
    }
    let key = s.trim();
    anyhow::ensure!(!key.is_empty(), "no admin key on stdin");
    Ok(SecretString::new(key))
}

fn progress_bar(len: u64) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{bar:40} {pos}/{len} days {elapsed_precise} eta {eta}")
    {
        bar.set_style(style);
    }
    bar
}

fn chunk_line(c: &ChunkReport) -> String {
    let mut s = format!(
        "chunk key={} {}..{}{} windows={} inserted={} updated={} unchanged={} deleted={} failed={}",
        c.provider_key_id,
        c.first_day,
        c.last_day,
        c.label
            .as_deref()
            .map(|l| format!(" label={l}"))
            .unwrap_or_default(),
        c.windows_processed,
        c.inserted,
        c.updated,
        c.unchanged,
        c.deleted,
        c.failed
    );
    if let Some(e) = &c.error {
        s.push_str(&format!(" error={e}"));
    }
    s
}

/// Prints the run's telemetry as JSON; exit 1 when a key failed, so a scheduler can alert.
fn finish(tel: &Telemetry) -> anyhow::Result<ExitCode> {
    println!("{}", serde_json::to_string_pretty(tel)?);
    Ok(if tel.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
