//! The dashboard side of `tokenledger serve` and `tokenledger admin login-link`.
//!
//! First run: on a server whose database has no user yet, `serve` creates the local owner,
//! registers this machine as a device (platform [`LOCAL_PLATFORM`]), and then keeps this
//! machine's agent logs synced into the database in-process: scan the local ledger, apply the
//! unknown-model reassignment, and ingest the buckets that changed since the last round, at
//! start and every [`SYNC_EVERY`]. Later starts find that device again and resume. A server
//! that already had users when it first started (a team server) never scans its own machine.
use anyhow::{bail, Context};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokenledger_core::{normalize_model, reassign_unknown, Source, TokenCounts};
use tokenledger_ledger::{Filter, Ledger, NoProgress};
use tokenledger_server::auth::USER_TOKEN_PREFIX;
use tokenledger_server::dashboard;
use tokenledger_store::{
    generate_token, hash_token, now_unix, DeviceId, NewBucket, Store, UserId, MAX_TOKEN_VALUE,
};

/// Platform recorded for the device of the server's own machine.
pub const LOCAL_PLATFORM: &str = "local-server";
/// How often the server's own machine is synced.
pub const SYNC_EVERY: Duration = Duration::from_secs(60);

/// The owner and device the local sync writes as.
#[derive(Debug, Clone, Copy)]
pub struct Local {
    pub user_id: UserId,
    pub device_id: DeviceId,
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "this machine".to_string())
}

/// The URL a browser on this machine reaches a server bound to `bind` at.
pub fn base_url_for_bind(bind: &str) -> String {
    let host_port = bind
        .replace("0.0.0.0:", "127.0.0.1:")
        .replace("[::]:", "127.0.0.1:");
    format!("http://{host_port}")
}

/// Finds (or on an empty database, creates) the owner and this machine's device. `None` when
/// the database belongs to a team server without a local device.
pub async fn prepare(store: &dyn Store, base_url: &str) -> anyhow::Result<Option<Local>> {
    let users = store.list_users().await?;
    for u in &users {
        if let Some(d) = store
            .list_devices(u.id)
            .await?
            .into_iter()
            .find(|d| d.platform == LOCAL_PLATFORM && d.revoked_at.is_none())
        {
            let code = dashboard::create_login_code(store, u.id).await?;
            eprintln!(
                "tokenledger: syncing this machine's agent logs as {} (device {}).\n\
                 Open the dashboard (link valid once, for 10 minutes):\n\n    {}\n",
                u.name,
                d.name,
                dashboard::login_url(base_url, &code)
            );
            return Ok(Some(Local {
                user_id: u.id,
                device_id: d.id,
            }));
        }
    }
    if !users.is_empty() {
        return Ok(None);
    }
    let name = std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .ok()
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| "owner".to_string());
    let token = generate_token(USER_TOKEN_PREFIX);
    let user = store.create_user(name.trim(), &hash_token(&token)).await?;
    let device = store
        .create_device(
            user.id,
            &hostname(),
            LOCAL_PLATFORM,
            &hash_token(&generate_token("tld_")),
        )
        .await?;
    let code = dashboard::create_login_code(store, user.id).await?;
    eprintln!(
        "tokenledger: first run. Created the owner {} and registered this machine ({}).\n\
         Your user token, for `tokenledger login` on other machines (shown once):\n\n    {token}\n\n\
         Open the dashboard (link valid once, for 10 minutes; `tokenledger admin login-link {}` makes another):\n\n    {}\n",
        user.name,
        device.name,
        user.name,
        dashboard::login_url(base_url, &code)
    );
    Ok(Some(Local {
        user_id: user.id,
        device_id: device.id,
    }))
}

type Key = (Source, String, i64);

/// Scans the local ledger and returns the reassigned buckets that differ from `sent`.
fn changed_buckets(sent: &HashMap<Key, TokenCounts>) -> anyhow::Result<Vec<NewBucket>> {
    let dir = tokenledger_ledger::data_dir();
    let mut ledger = Ledger::open_in(&dir)
        .with_context(|| format!("cannot open the local ledger in {}", dir.display()))?;
    ledger.scan(
        &tokenledger_collect::all_collectors(),
        &tokenledger_collect::Env::from_process(),
        &NoProgress,
    )?;
    let buckets = reassign_unknown(ledger.half_hour_buckets(&Filter::default())?);
    Ok(buckets
        .into_iter()
        .filter(|b| b.tokens.as_array().iter().all(|v| *v <= MAX_TOKEN_VALUE))
        .map(|b| NewBucket {
            source: b.key.source,
            model: normalize_model(Some(&b.key.model)),
            hour_start: b.key.hour_start,
            tokens: b.tokens,
        })
        .filter(|b| sent.get(&(b.source, b.model.clone(), b.hour_start)) != Some(&b.tokens))
        .collect())
}

/// One round: scan, then ingest what changed. Returns the number of buckets written.
pub async fn sync_once(
    store: &dyn Store,
    local: Local,
    sent: &mut HashMap<Key, TokenCounts>,
) -> anyhow::Result<usize> {
    let snapshot = sent.clone();
    let changed = tokio::task::spawn_blocking(move || changed_buckets(&snapshot)).await??;
    for chunk in changed.chunks(500) {
        store
            .ingest(local.user_id, local.device_id, chunk, now_unix())
            .await?;
        for b in chunk {
            sent.insert((b.source, b.model.clone(), b.hour_start), b.tokens);
        }
    }
    Ok(changed.len())
}

/// Syncs at once and then every [`SYNC_EVERY`], for as long as the server runs.
pub fn spawn_sync(store: Arc<dyn Store>, local: Local) {
    tokio::spawn(async move {
        let mut sent = HashMap::new();
        let mut tick = tokio::time::interval(SYNC_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match sync_once(store.as_ref(), local, &mut sent).await {
                Ok(0) => tracing::debug!("local sync: nothing new"),
                Ok(n) => tracing::info!(buckets = n, "local sync: this machine's usage updated"),
                Err(e) => tracing::warn!("local sync failed: {e:#}"),
            }
        }
    });
}

/// `tokenledger admin login-link NAME`: a one-time login URL for the user `NAME` (or id).
pub async fn login_link(store: &dyn Store, name: &str, base_url: &str) -> anyhow::Result<String> {
    let users = store.list_users().await?;
    let matches: Vec<_> = users
        .iter()
        .filter(|u| u.name == name || u.id.to_string() == name)
        .collect();
    let user = match matches.as_slice() {
        [u] => *u,
        [] => bail!("no user named {name:?} (see `tokenledger admin list-users`)"),
        _ => bail!("several users are named {name:?}; pass the user id instead"),
    };
    let code = dashboard::create_login_code(store, user.id).await?;
    Ok(dashboard::login_url(base_url, &code))
}
