//! `tokenledger login|logout|sync|status|hooks` (to be written).
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct LoginArgs {}
#[derive(clap::Args)]
pub struct LogoutArgs {}
#[derive(clap::Args)]
pub struct SyncArgs {}
#[derive(clap::Args)]
pub struct StatusArgs {}
#[derive(clap::Args)]
pub struct HooksArgs {}

pub fn login(_a: LoginArgs) -> anyhow::Result<ExitCode> {
    Ok(ExitCode::SUCCESS)
}
pub fn logout(_a: LogoutArgs) -> anyhow::Result<ExitCode> {
    Ok(ExitCode::SUCCESS)
}
pub fn sync(_a: SyncArgs) -> anyhow::Result<ExitCode> {
    Ok(ExitCode::SUCCESS)
}
pub fn status(_a: StatusArgs) -> anyhow::Result<ExitCode> {
    Ok(ExitCode::SUCCESS)
}
pub fn hooks(_a: HooksArgs) -> anyhow::Result<ExitCode> {
    Ok(ExitCode::SUCCESS)
}
