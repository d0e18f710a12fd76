//! The sync client of tokenledger: it registers this machine with a server ([`config`],
//! [`client`]), keeps an outbox of changed half-hour buckets in the local ledger ([`outbox`]),
//! uploads it with backoff ([`uploader`]) under a lock so two syncs never overlap ([`SyncLock`]),
//! and installs the agents' hooks that trigger a sync ([`hooks`], [`trigger`]).
//!
//! Only `source`, `model`, the half hour and the six token counts leave the machine: sessions
//! and projects are summed away before anything is queued.

pub mod client;
pub mod config;
pub mod failpoint;
pub mod hooks;
pub mod outbox;
pub mod uploader;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use client::{ApiError, Client};
pub use config::Credentials;
pub use outbox::{emit, EmitReport, Outbox};
pub use uploader::{drain, Backoff, DrainOptions, DrainReport};

/// Meta keys of the ledger where the sync keeps its state for `status`.
pub mod state {
    /// RFC 3339 time of the last sync that emptied the outbox.
    pub const LAST_SUCCESS: &str = "sync_last_success";
    /// The last sync error (empty after a success).
    pub const LAST_ERROR: &str = "sync_last_error";
    /// RFC 3339 time of the last error.
    pub const LAST_ERROR_AT: &str = "sync_last_error_at";
}

/// The sync lock: a file lock in the data dir, so that two syncs never run at once.
pub struct SyncLock {
    lock: fd_lock::RwLock<File>,
}

impl SyncLock {
    pub fn open(dir: &Path) -> std::io::Result<SyncLock> {
        std::fs::create_dir_all(dir)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("sync.lock"))?;
        Ok(SyncLock {
            lock: fd_lock::RwLock::new(file),
        })
    }

    /// Takes the lock without waiting; `None` when another process holds it.
    pub fn try_lock(&mut self) -> std::io::Result<Option<fd_lock::RwLockWriteGuard<'_, File>>> {
        match self.lock.try_write() {
            Ok(g) => Ok(Some(g)),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// A scan progress sink that passes the `scan` failpoint after each file.
pub struct ScanFailpoints;
impl tokenledger_ledger::Progress for ScanFailpoints {
    fn advance(&self, _bytes: u64) {
        failpoint::hit("scan");
    }
}

/// What [`trigger`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// A detached `tokenledger sync --quiet` was started.
    Spawned,
    /// One was started less than the throttle ago.
    Throttled,
    /// This machine is not logged in: nothing to sync.
    NotLoggedIn,
    /// Starting it failed (the agent must not notice; the reason is for logs).
    Failed(String),
}

/// The file whose content is the unix time of the last hook-triggered sync.
pub fn trigger_stamp(dir: &Path) -> PathBuf {
    dir.join("hook-sync.stamp")
}

/// Starts a detached, throttled `exe sync --quiet` (the hooks' work). Returns at once; the
/// child's output goes to `hook-sync.log` in `dir`.
pub fn trigger(dir: &Path, exe: &Path, throttle: Duration) -> Trigger {
    match config::load(dir) {
        Ok(Some(_)) => {}
        Ok(None) => return Trigger::NotLoggedIn,
        Err(e) => return Trigger::Failed(e.to_string()),
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let stamp = trigger_stamp(dir);
    let last: Option<u64> = std::fs::read_to_string(&stamp)
        .ok()
        .and_then(|s| s.trim().parse().ok());
    if last.is_some_and(|l| now.saturating_sub(l) < throttle.as_secs() && l <= now) {
        return Trigger::Throttled;
    }
    if let Err(e) = std::fs::write(&stamp, now.to_string()) {
        return Trigger::Failed(e.to_string());
    }
    let log = std::fs::File::create(dir.join("hook-sync.log"));
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["sync", "--quiet"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    match log {
        Ok(f) => cmd.stderr(f),
        Err(_) => cmd.stderr(std::process::Stdio::null()),
    };
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        // Its own process group: the agent's Ctrl-C or exit does not take the sync with it.
        cmd.process_group(0);
    }
    match cmd.spawn() {
        Ok(_child) => Trigger::Spawned,
        Err(e) => Trigger::Failed(e.to_string()),
    }
}

/// Runs `argv` detached (a chained notify command), ignoring its output and exit.
pub fn spawn_detached(argv: &[String]) -> std::io::Result<()> {
    let Some((prog, args)) = argv.split_first() else {
        return Ok(());
    };
    let mut cmd = std::process::Command::new(prog);
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    cmd.spawn().map(drop)
}

/// The current time as RFC 3339 (UTC, seconds).
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}
