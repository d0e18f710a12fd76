//! `tokenledger serve` and `tokenledger admin ...`: the server and its database chores.
//!
//! The database is chosen by URL: `postgres://` or `postgresql://` is PostgreSQL; anything else
//! (or nothing) is the embedded SQLite file, by default `$TOKENLEDGER_HOME/server.db` or
//! `<data dir>/tokenledger/server.db`.
use anyhow::{bail, Context};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use tokenledger_core::PriceTable;
use tokenledger_server::auth::USER_TOKEN_PREFIX;
use tokenledger_server::{AppState, ServerConfig};
use tokenledger_store::{generate_token, hash_token, Store};
use tokenledger_store_postgres::PgStore;
use tokenledger_store_sqlite::SqliteStore;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7680", env = "TOKENLEDGER_BIND")]
    bind: String,
    /// `postgres://...` for PostgreSQL; otherwise a SQLite file path (default: the data dir).
    #[arg(long, env = "TOKENLEDGER_DATABASE_URL")]
    database_url: Option<String>,
    /// A price table (JSON, the shape of the embedded one) replacing the embedded table.
    #[arg(long, env = "TOKENLEDGER_PRICES")]
    prices: Option<PathBuf>,
    /// Ingest requests processed at once; more wait, then get 429.
    #[arg(long, default_value_t = 32)]
    ingest_concurrency: usize,
    // --- dashboard (crates/cli/src/dashboard_cmd.rs) ---
    /// URL the dashboard is reached at, for printed login links (default: from --bind).
    #[arg(long, env = "TOKENLEDGER_PUBLIC_URL")]
    public_url: Option<String>,
    /// Do not create a local owner nor sync this machine's agent logs into the database.
    #[arg(long, env = "TOKENLEDGER_NO_LOCAL_SYNC")]
    no_local_sync: bool,
}

#[derive(clap::Args)]
pub struct AdminArgs {
    /// `postgres://...` for PostgreSQL; otherwise a SQLite file path (default: the data dir).
    #[arg(long, global = true, env = "TOKENLEDGER_DATABASE_URL")]
    database_url: Option<String>,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(clap::Subcommand)]
enum AdminCommand {
    /// Create a user and print their token (alone, on stdout).
    CreateUser {
        /// The user's name.
        name: String,
    },
    /// List users (id, name, created).
    ListUsers,
    /// List a user's devices (id, name, platform, last seen, revoked).
    ListDevices {
        /// The user's id.
        user_id: i64,
    },
    /// Revoke a user's device: its token stops working at once.
    RevokeDevice {
        /// The user's id.
        user_id: i64,
        /// The device's id.
        device_id: i64,
    },
    /// Print a one-time dashboard login link for a user (valid once, for 10 minutes).
    LoginLink {
        /// The user's name (or id).
        name: String,
        /// URL the dashboard is reached at.
        #[arg(
            long,
            env = "TOKENLEDGER_PUBLIC_URL",
            default_value = "http://127.0.0.1:7680"
        )]
        base_url: String,
    },
    /// The daily rollup.
    Rollup {
        #[command(subcommand)]
        command: RollupCommand,
    },
}

#[derive(clap::Subcommand)]
enum RollupCommand {
    /// Recompute the rollup of a range of UTC days from the buckets.
    Rebuild {
        /// First UTC day, YYYY-MM-DD.
        #[arg(long)]
        from: jiff::civil::Date,
        /// Last UTC day, YYYY-MM-DD (inclusive).
        #[arg(long)]
        to: jiff::civil::Date,
    },
    /// Remove the rollup (triggers and table); the next `serve` re-creates it from the buckets.
    Rollback,
}

/// Where the embedded database lives by default.
fn default_sqlite_path() -> anyhow::Result<PathBuf> {
    if let Some(home) = std::env::var_os("TOKENLEDGER_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(home).join("server.db"));
    }
    let data = dirs::data_dir().context("no data directory; set TOKENLEDGER_HOME")?;
    Ok(data.join("tokenledger").join("server.db"))
}

fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

enum Backend {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

impl Backend {
    async fn open(url: Option<&str>) -> anyhow::Result<Backend> {
        match url.filter(|u| !u.is_empty()) {
            Some(u) if is_postgres(u) => Ok(Backend::Postgres(
                PgStore::connect(u)
                    .await
                    .context("cannot open the PostgreSQL database")?,
            )),
            Some(u) => {
                let path = u
                    .strip_prefix("sqlite://")
                    .or_else(|| u.strip_prefix("sqlite:"))
                    .unwrap_or(u);
                Self::sqlite(PathBuf::from(path)).await
            }
            None => Self::sqlite(default_sqlite_path()?).await,
        }
    }

    async fn sqlite(path: PathBuf) -> anyhow::Result<Backend> {
        let store = SqliteStore::open(&path)
            .await
            .with_context(|| format!("cannot open the SQLite database {}", path.display()))?;
        Ok(Backend::Sqlite(store))
    }

    fn into_store(self) -> Arc<dyn Store> {
        match self {
            Backend::Sqlite(s) => Arc::new(s),
            Backend::Postgres(s) => Arc::new(s),
        }
    }

    fn store(&self) -> &dyn Store {
        match self {
            Backend::Sqlite(s) => s,
            Backend::Postgres(s) => s,
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn init_logs(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TOKENLEDGER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn load_prices(path: Option<&PathBuf>) -> anyhow::Result<PriceTable> {
    match path {
        None => Ok(PriceTable::embedded()),
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read the price table {}", p.display()))?;
            PriceTable::from_json(&text)
                .with_context(|| format!("invalid price table {}", p.display()))
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}

pub fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    init_logs("info,tower_http=warn");
    let prices = load_prices(args.prices.as_ref())?;
    let config = ServerConfig {
        prices,
        ingest_concurrency: args.ingest_concurrency.max(1),
        ..ServerConfig::default()
    };
    runtime()?.block_on(async move {
        let store = Backend::open(args.database_url.as_deref())
            .await?
            .into_store();
        let listener = tokio::net::TcpListener::bind(&args.bind)
            .await
            .with_context(|| format!("cannot listen on {}", args.bind))?;
        // Dashboard first run: local owner, this machine as a device, periodic local sync.
        if !args.no_local_sync {
            let base = args
                .public_url
                .clone()
                .unwrap_or_else(|| crate::dashboard_cmd::base_url_for_bind(&args.bind));
            if let Some(local) = crate::dashboard_cmd::prepare(store.as_ref(), &base).await? {
                crate::dashboard_cmd::spawn_sync(store.clone(), local);
            }
        }
        let app = tokenledger_server::router_with(
            AppState::new(store, config),
            provider_routes(args.database_url.as_deref()).await?,
        );
        tokenledger_server::serve_app(listener, app, shutdown_signal())
            .await
            .context("server failed")?;
        Ok(ExitCode::SUCCESS)
    })
}

/// The provider usage routes (keys, cron, provider usage API) over the same database.
async fn provider_routes(database_url: Option<&str>) -> anyhow::Result<axum::Router> {
    use tokenledger_provider::http::{self as phttp, ProviderHttpState, StoreTokenAuth};
    let store = crate::provider_cmd::open(database_url).await?;
    let ingestor = crate::provider_cmd::ingestor(store.clone(), None)?;
    let secret = phttp::cron_secret_from_env();
    if secret.is_none() {
        tracing::info!("CRON_SECRET is not set: POST /api/v1/cron/daily-usage refuses every call");
    }
    Ok(phttp::router(ProviderHttpState::new(
        ingestor,
        std::sync::Arc::new(StoreTokenAuth(store)),
        secret,
    )))
}

fn ts(secs: i64) -> String {
    jiff::Timestamp::from_second(secs)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

pub fn admin(args: AdminArgs) -> anyhow::Result<ExitCode> {
    init_logs("warn");
    runtime()?.block_on(async move {
        let backend = Backend::open(args.database_url.as_deref()).await?;
        let store = backend.store();
        match args.command {
            AdminCommand::CreateUser { name } => {
                let name = name.trim();
                if name.is_empty() {
                    bail!("the user name must not be empty");
                }
                let token = generate_token(USER_TOKEN_PREFIX);
                let user = store.create_user(name, &hash_token(&token)).await?;
                eprintln!("created user {} ({})", user.id, user.name);
                println!("{token}");
            }
            AdminCommand::ListUsers => {
                for u in store.list_users().await? {
                    println!("{}\t{}\t{}", u.id, u.name, ts(u.created_at));
                }
            }
            AdminCommand::ListDevices { user_id } => {
                for d in store.list_devices(user_id).await? {
                    println!(
                        "{}\t{}\t{}\tlast_seen={}\t{}",
                        d.id,
                        d.name,
                        d.platform,
                        d.last_seen_at.map(ts).unwrap_or_else(|| "never".into()),
                        if d.revoked_at.is_some() {
                            "revoked"
                        } else {
                            "active"
                        }
                    );
                }
            }
            AdminCommand::RevokeDevice { user_id, device_id } => {
                if !store.revoke_device(user_id, device_id).await? {
                    bail!("user {user_id} has no active device {device_id}");
                }
                eprintln!("revoked device {device_id} of user {user_id}");
            }
            AdminCommand::LoginLink { name, base_url } => {
                println!(
                    "{}",
                    crate::dashboard_cmd::login_link(store, name.trim(), &base_url).await?
                );
            }
            AdminCommand::Rollup {
                command: RollupCommand::Rebuild { from, to },
            } => {
                if from > to {
                    bail!("--from {from} is after --to {to}");
                }
                let n = store.rebuild_rollup(from, to).await?;
                eprintln!("rebuilt the rollup of {from}..={to}: {n} rows");
            }
            AdminCommand::Rollup {
                command: RollupCommand::Rollback,
            } => {
                match &backend {
                    Backend::Sqlite(s) => {
                        s.execute_script(tokenledger_store_sqlite::ROLLUP_ROLLBACK_SQL)
                            .await?
                    }
                    Backend::Postgres(s) => {
                        s.execute_script(tokenledger_store_postgres::ROLLUP_ROLLBACK_SQL)
                            .await?
                    }
                }
                eprintln!("removed the daily rollup; usage queries now sum buckets");
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}
