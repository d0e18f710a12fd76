//! The `tokenledger` binary: parses flags, runs the command, maps errors to exit codes.

mod dashboard_cmd;
mod output;
mod provider_cmd;
mod report_cmd;
mod server_cmd;
mod sync_cmd;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "tokenledger",
    version,
    about = "An exact, local-first ledger of AI coding agents' token usage and cost"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Scan the agents' logs and report usage (no server needed).
    Report(report_cmd::ReportArgs),
    /// Run the server: ingest, usage API and dashboard.
    Serve(server_cmd::ServeArgs),
    /// Administer the server's database (users, rollups, login links).
    Admin(server_cmd::AdminArgs),
    /// Register this machine with a server.
    Login(sync_cmd::LoginArgs),
    /// Forget this machine's server credentials (and revoke them on the server).
    Logout(sync_cmd::LogoutArgs),
    /// Scan, then upload pending buckets to the server.
    Sync(sync_cmd::SyncArgs),
    /// Show pending uploads, the last sync, files and cursors, server and hooks.
    Status(sync_cmd::StatusArgs),
    /// Install, remove or inspect the agents' hooks that trigger a sync.
    Hooks(sync_cmd::HooksArgs),
    /// Provider-side usage (OpenAI organization usage API): keys, pulls, backfills, parity.
    Provider(provider_cmd::ProviderArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Report(args) => report_cmd::run(args),
        Command::Serve(args) => server_cmd::serve(args),
        Command::Admin(args) => server_cmd::admin(args),
        Command::Login(args) => sync_cmd::login(args),
        Command::Logout(args) => sync_cmd::logout(args),
        Command::Sync(args) => sync_cmd::sync(args),
        Command::Status(args) => sync_cmd::status(args),
        Command::Hooks(args) => sync_cmd::hooks(args),
        Command::Provider(args) => provider_cmd::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            if is_broken_pipe(&err) {
                return ExitCode::SUCCESS;
            }
            eprintln!("tokenledger: {err:#}");
            ExitCode::from(1)
        }
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
