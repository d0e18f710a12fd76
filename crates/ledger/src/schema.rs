//! The ledger's schema, versioned with `PRAGMA user_version`. Migrations are only ever added.

use crate::{LedgerError, Result};
use rusqlite::{params, Connection, Transaction};
use std::path::Path;

/// The SQL of each version; [`after`] adds the steps SQL cannot do.
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
    // 3: cursors keyed by a hash of (source, path), with the path and the parser state apart
    // (a warm scan loads only the narrow rows; most files have no state), and half-hour totals
    // per source and model for the reports that do not need the session dimension. `files` is
    // copied over in `after`.
    "CREATE TABLE cursors (
        key INTEGER PRIMARY KEY,
        dev INTEGER NOT NULL,
        inode INTEGER NOT NULL,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        offset INTEGER NOT NULL,
        head_len INTEGER NOT NULL,
        head_hash INTEGER NOT NULL,
        last_scan INTEGER NOT NULL
     );
     CREATE TABLE cursor_paths (key INTEGER PRIMARY KEY, source TEXT NOT NULL, path TEXT NOT NULL);
     CREATE TABLE cursor_state (key INTEGER PRIMARY KEY, state TEXT NOT NULL);
     CREATE TABLE agg_hour (
        hour_start INTEGER NOT NULL,
        source TEXT NOT NULL,
        model TEXT NOT NULL,
        input INTEGER NOT NULL,
        cached INTEGER NOT NULL,
        cache_creation INTEGER NOT NULL,
        output INTEGER NOT NULL,
        reasoning INTEGER NOT NULL,
        total INTEGER NOT NULL,
        PRIMARY KEY (hour_start, source, model)
     ) WITHOUT ROWID;
     INSERT INTO agg_hour
        SELECT hour_start, source, model, SUM(input), SUM(cached), SUM(cache_creation),
               SUM(output), SUM(reasoning), SUM(total)
        FROM agg GROUP BY hour_start, source, model;",
    // 4: the aggregates are kept up to date by deltas in the scan's own transaction: the
    // per-hour entry index and the dirty marks of the recompute go (see `after`).
    "DROP INDEX IF EXISTS entries_hour;",
    // 5: dims without the unique index on its text: the scan interns pairs by hash inside its
    // write transaction, and nothing looks a pair up by its text.
    "CREATE TABLE dims_new (
        id INTEGER PRIMARY KEY,
        session TEXT NOT NULL,
        project TEXT NOT NULL
     );
     INSERT INTO dims_new (id, session, project) SELECT id, session, project FROM dims;
     DROP TABLE dims;
     ALTER TABLE dims_new RENAME TO dims;",
    // 6: the listings of settled folders, so that a warm scan reads only folders that changed
    // (see `tokenledger_collect::listing`). Paths are bytes, as the walk has them.
    "CREATE TABLE dir_listings (
        path BLOB PRIMARY KEY,
        dev INTEGER NOT NULL,
        inode INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        ctime_ns INTEGER NOT NULL,
        entries BLOB NOT NULL
     );",
    // 7: a cursor's seven figures packed in one blob (see `scan::Cursor::pack`): a warm scan
    // loads every cursor, and one column costs less to read than seven. Copied in `after`.
    "CREATE TABLE cursors_packed (
        key INTEGER PRIMARY KEY,
        stat BLOB NOT NULL,
        last_scan INTEGER NOT NULL
     );",
    // 8: a cursor's path and parser state in one row: a first scan writes one row per file
    // there instead of a path row for every file and a state row for most Codex rollouts.
    "CREATE TABLE cursor_files (
        key INTEGER PRIMARY KEY,
        source TEXT NOT NULL,
        path TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT ''
     );
     INSERT INTO cursor_files (key, source, path, state)
        SELECT p.key, p.source, p.path, COALESCE(s.state, '')
        FROM cursor_paths p LEFT JOIN cursor_state s ON s.key = p.key;
     DROP TABLE cursor_paths;
     DROP TABLE cursor_state;",
    // 9: entries and cursor paths in the order they are written, their hash keys in unique
    // indexes. Keyed by the hashes themselves, every flush of a scan landed all over both
    // tables: a first scan of ~1.3 GiB wrote and read back its pages ~14 times each way
    // through the page cache. Appended rows touch the last pages; only the narrow indexes
    // take the random keys.
    "CREATE TABLE entries_new (
        seq INTEGER PRIMARY KEY,
        id INTEGER NOT NULL UNIQUE,
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
     INSERT INTO entries_new (id, source, model, ts, hour_start, dim, input, cached,
                              cache_creation, output, reasoning, total, grp, replay)
        SELECT id, source, model, ts, hour_start, dim, input, cached, cache_creation, output,
               reasoning, total, grp, replay
        FROM entries;
     DROP TABLE entries;
     ALTER TABLE entries_new RENAME TO entries;
     CREATE INDEX entries_grp ON entries (grp) WHERE grp IS NOT NULL;
     CREATE TABLE cursor_files_new (
        seq INTEGER PRIMARY KEY,
        key INTEGER NOT NULL UNIQUE,
        source TEXT NOT NULL,
        path TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT ''
     );
     INSERT INTO cursor_files_new (key, source, path, state)
        SELECT key, source, path, state FROM cursor_files;
     DROP TABLE cursor_files;
     ALTER TABLE cursor_files_new RENAME TO cursor_files;",
    // 10: cursors packed by key range, one row per range (see `scan::CursorBuckets`): a warm
    // scan loads every cursor, and ~47,000 rows cost ~6 ms to step through where a few
    // thousand blobs cost ~1; a first scan writes each range once at its commit instead of
    // inserting every file's row at a random place. Filled in `after`.
    "CREATE TABLE cursor_buckets (bucket INTEGER PRIMARY KEY, cursors BLOB NOT NULL);",
];

/// Steps of a migration that run after its SQL, in the same transaction.
fn after(version: usize, tx: &Transaction) -> Result<()> {
    if version == 3 {
        // The cursor key is a hash of (source, path): computed here, not in SQL.
        let mut read = tx.prepare(
            "SELECT source, path, dev, inode, size, mtime_ns, offset, head_len, head_hash,
                    state, last_scan FROM files",
        )?;
        let mut cursor = tx.prepare(
            "INSERT OR REPLACE INTO cursors (key, dev, inode, size, mtime_ns, offset, head_len,
                                             head_hash, last_scan)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        let mut named = tx.prepare(
            "INSERT OR REPLACE INTO cursor_paths (key, source, path) VALUES (?1, ?2, ?3)",
        )?;
        let mut state =
            tx.prepare("INSERT OR REPLACE INTO cursor_state (key, state) VALUES (?1, ?2)")?;
        let mut rows = read.query([])?;
        while let Some(r) = rows.next()? {
            let source: String = r.get(0)?;
            let path: String = r.get(1)?;
            let key = crate::cursor_key(&source, &path);
            cursor.execute(params![
                key,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, i64>(6)?,
                r.get::<_, i64>(7)?,
                r.get::<_, i64>(8)?,
                r.get::<_, i64>(10)?,
            ])?;
            named.execute(params![key, source, path])?;
            let s: String = r.get(9)?;
            if !s.is_empty() {
                state.execute(params![key, s])?;
            }
        }
        drop(rows);
        tx.execute_batch("DROP TABLE files;")?;
    }
    if version == 7 {
        let mut read = tx.prepare(
            "SELECT key, dev, inode, size, mtime_ns, offset, head_len, head_hash, last_scan
             FROM cursors",
        )?;
        let mut write =
            tx.prepare("INSERT INTO cursors_packed (key, stat, last_scan) VALUES (?1, ?2, ?3)")?;
        let mut rows = read.query([])?;
        while let Some(r) = rows.next()? {
            let int = |i: usize| r.get::<_, i64>(i);
            let stat = crate::scan::Cursor {
                dev: int(1)? as u64,
                inode: int(2)? as u64,
                size: int(3)? as u64,
                mtime_ns: int(4)?,
                offset: int(5)? as u64,
                head_len: int(6)? as u64,
                head_hash: int(7)? as u64,
            }
            .pack();
            write.execute(params![int(0)?, &stat[..], int(8)?])?;
        }
        drop(rows);
        tx.execute_batch("DROP TABLE cursors; ALTER TABLE cursors_packed RENAME TO cursors;")?;
    }
    if version == 10 {
        let mut read = tx.prepare("SELECT key, stat, last_scan FROM cursors ORDER BY key")?;
        let mut rows = read.query([])?;
        let mut all = Vec::new();
        while let Some(r) = rows.next()? {
            let stat = r.get_ref(1)?.as_blob().map_err(rusqlite::Error::from)?;
            if let Some(c) = crate::scan::Cursor::unpack(stat) {
                all.push(crate::scan::StoredCursor {
                    key: r.get(0)?,
                    cursor: c,
                    last_scan: r.get(2)?,
                });
            }
        }
        drop(rows);
        crate::scan::CursorBuckets::write(tx, all)?;
        tx.execute_batch("DROP TABLE cursors;")?;
    }
    if version == 4 {
        // A scan of an older version that stopped before its recompute left marks behind.
        let dirty: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM dirty_hours) OR EXISTS (SELECT 1 FROM dirty_groups)",
            [],
            |r| r.get(0),
        )?;
        if dirty {
            crate::scan::rebuild_aggregates(tx)?;
        }
        tx.execute_batch("DROP TABLE dirty_hours; DROP TABLE dirty_groups;")?;
    }
    Ok(())
}

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
        after(i + 1, &tx)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}
