//! The ledger's schema, versioned with `PRAGMA user_version`. Migrations are only ever added.

use crate::{LedgerError, Result};
use rusqlite::Connection;
use std::path::Path;

const MIGRATIONS: &[&str] = &[
    // 1: cursors, entries, dimensions, aggregates.
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
     CREATE TABLE IF NOT EXISTS files (
        source TEXT NOT NULL,
        path TEXT NOT NULL,
        dev INTEGER NOT NULL,
        inode INTEGER NOT NULL,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        offset INTEGER NOT NULL,
        head_len INTEGER NOT NULL,
        head_hash INTEGER NOT NULL,
        state TEXT NOT NULL DEFAULT '',
        last_scan INTEGER NOT NULL,
        PRIMARY KEY (source, path)
     );
     CREATE TABLE IF NOT EXISTS dims (
        id INTEGER PRIMARY KEY,
        session TEXT NOT NULL,
        project TEXT NOT NULL,
        UNIQUE (session, project)
     );
     CREATE TABLE IF NOT EXISTS entries (
        id INTEGER PRIMARY KEY,
        source TEXT NOT NULL,
        model TEXT NOT NULL,
        ts INTEGER NOT NULL,
        hour_start INTEGER NOT NULL,
        dim INTEGER NOT NULL,
        input INTEGER NOT NULL,
        cached INTEGER NOT NULL,
        cache_creation INTEGER NOT NULL,
        output INTEGER NOT NULL,
        reasoning INTEGER NOT NULL,
        total INTEGER NOT NULL,
        grp INTEGER,
        replay INTEGER NOT NULL DEFAULT 0
     );
     CREATE INDEX IF NOT EXISTS entries_hour ON entries (hour_start);
     CREATE INDEX IF NOT EXISTS entries_grp ON entries (grp) WHERE grp IS NOT NULL;
     CREATE TABLE IF NOT EXISTS agg (
        hour_start INTEGER NOT NULL,
        source TEXT NOT NULL,
        model TEXT NOT NULL,
        dim INTEGER NOT NULL,
        input INTEGER NOT NULL,
        cached INTEGER NOT NULL,
        cache_creation INTEGER NOT NULL,
        output INTEGER NOT NULL,
        reasoning INTEGER NOT NULL,
        total INTEGER NOT NULL,
        PRIMARY KEY (hour_start, source, model, dim)
     ) WITHOUT ROWID;",
    // 2: half hours whose aggregates must be recomputed (kept across a crash mid-scan).
    "CREATE TABLE IF NOT EXISTS dirty_hours (h INTEGER PRIMARY KEY);
     CREATE TABLE IF NOT EXISTS dirty_groups (g INTEGER PRIMARY KEY);",
];

/// Brings the schema up to date.
pub(crate) fn migrate(conn: &Connection, path: &Path) -> Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let latest = MIGRATIONS.len() as i64;
    if version > latest {
        return Err(LedgerError::TooNew(path.to_path_buf(), version));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}
