//! `tokenledger report ...` (to be written).
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct ReportArgs {}

pub fn run(_args: ReportArgs) -> anyhow::Result<ExitCode> {
    Ok(ExitCode::SUCCESS)
}
