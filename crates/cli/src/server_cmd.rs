//! `tokenledger serve` and `tokenledger admin ...` (to be written).
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct ServeArgs {}

#[derive(clap::Args)]
pub struct AdminArgs {}

pub fn serve(_args: ServeArgs) -> anyhow::Result<ExitCode> {
    Ok(ExitCode::SUCCESS)
}

pub fn admin(_args: AdminArgs) -> anyhow::Result<ExitCode> {
    Ok(ExitCode::SUCCESS)
}
