//! The upload outbox, kept in the local ledger's SQLite file next to the buckets it describes.
//!
//! Two tables: `sync_acked` holds, per `source + model + hour_start`, the totals the server
//! acknowledged last; `sync_outbox` holds the totals still to send, each row stamped with a
//! sequence number that changes whenever its totals change. Emission diffs the ledger's buckets
//! (after the unknown-model reassignment, summed over sessions and projects) against "what the
//! server will have once the outbox is drained" and queues every difference, including a zero
//! bucket for a key that disappeared (an `unknown` bucket later reassigned to a known model), so
//! that the server never keeps a stale total next to the one that replaced it.
//!
//! Every step is one transaction and buckets carry absolute totals, so a crash anywhere at worst
//! resends a bucket the server already has.

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use std::collections::BTreeMap;
use tokenledger_core::wire::WireBucket;
use tokenledger_core::{
    format_hour_start, reassign_unknown, Bucket, BucketKey, Source, TokenCounts,
};
use tokenledger_ledger::{Filter, Ledger};

/// Version of the sync tables, kept in the ledger's `meta` under [`SCHEMA_KEY`].
pub const SCHEMA_VERSION: i64 = 1;
pub const SCHEMA_KEY: &str = "sync_schema";
const SEQ_KEY: &str = "sync_seq";
/// The device the acknowledged totals belong to; a new device starts from nothing.
const DEVICE_KEY: &str = "sync_device";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sync_acked (
    source TEXT NOT NULL,
    model TEXT NOT NULL,
    hour_start INTEGER NOT NULL,
    input INTEGER NOT NULL,
    cached INTEGER NOT NULL,
    cache_creation INTEGER NOT NULL,
    output INTEGER NOT NULL,
    reasoning INTEGER NOT NULL,
    total INTEGER NOT NULL,
    PRIMARY KEY (source, model, hour_start)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sync_outbox (
    source TEXT NOT NULL,
    model TEXT NOT NULL,
    hour_start INTEGER NOT NULL,
    input INTEGER NOT NULL,
    cached INTEGER NOT NULL,
    cache_creation INTEGER NOT NULL,
    output INTEGER NOT NULL,
    reasoning INTEGER NOT NULL,
    total INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (source, model, hour_start)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sync_outbox_by_seq ON sync_outbox (seq);
";

/// Errors of the outbox.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("outbox: {0}")]
    Ledger(#[from] tokenledger_ledger::LedgerError),
    #[error(
        "the sync tables were written by a newer tokenledger (schema {0}); upgrade tokenledger"
    )]
    TooNew(i64),
}

type Result<T, E = OutboxError> = std::result::Result<T, E>;

/// One queued bucket and the sequence number its totals were queued under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub bucket: Bucket,
    pub seq: i64,
}

impl Pending {
    /// The bucket as sent to the server.
    pub fn to_wire(&self) -> WireBucket {
        to_wire(&self.bucket)
    }
}

/// A bucket as sent to `POST /api/v1/ingest`.
pub fn to_wire(b: &Bucket) -> WireBucket {
    let t = &b.tokens;
    WireBucket {
        source: b.key.source.as_str().to_string(),
        model: Some(b.key.model.clone()),
        hour_start: format_hour_start(b.key.hour_start),
        input_tokens: t.input_tokens,
        cached_input_tokens: t.cached_input_tokens,
        cache_creation_input_tokens: t.cache_creation_input_tokens,
        output_tokens: t.output_tokens,
        reasoning_output_tokens: t.reasoning_output_tokens,
        total_tokens: t.total_tokens,
    }
}

/// What an emission did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EmitReport {
    /// Keys queued with new totals.
    pub queued: u64,
    /// Keys that vanished (reassigned away) and were queued with zero totals.
    pub zeroed: u64,
    /// Keys in the outbox after the emission.
    pub pending: u64,
}

/// The outbox on a ledger connection.
pub struct Outbox<'a> {
    conn: &'a mut Connection,
}

impl<'a> Outbox<'a> {
    /// Creates the sync tables if needed.
    pub fn open(ledger: &'a mut Ledger) -> Result<Outbox<'a>> {
        Outbox::on(ledger.connection_mut())
    }

    /// The outbox on a raw ledger connection.
    pub fn on(conn: &'a mut Connection) -> Result<Outbox<'a>> {
        let version: Option<String> = conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [SCHEMA_KEY], |r| {
                r.get(0)
            })
            .optional()?;
        let version = version.and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
        if version > SCHEMA_VERSION {
            return Err(OutboxError::TooNew(version));
        }
        if version < SCHEMA_VERSION {
            let tx = conn.transaction()?;
            tx.execute_batch(SCHEMA)?;
            set_meta(&tx, SCHEMA_KEY, &SCHEMA_VERSION.to_string())?;
            tx.commit()?;
        }
        Ok(Outbox { conn })
    }

    /// Queues every bucket of `ledger`'s current state whose totals differ from what the server
    /// will hold once the outbox is drained. `device` is the device the totals are sent as: when
    /// it differs from the one acknowledged so far, everything starts afresh.
    pub fn emit_from(&mut self, buckets: Vec<Bucket>, device: &str) -> Result<EmitReport> {
        let tx = self.conn.transaction()?;
        let report = emit_in(&tx, buckets, device)?;
        tx.commit()?;
        Ok(report)
    }

    /// What the outbox would hold after [`Outbox::emit_from`], without changing anything.
    pub fn preview(&mut self, buckets: Vec<Bucket>, device: &str) -> Result<Vec<Pending>> {
        let tx = self.conn.transaction()?;
        emit_in(&tx, buckets, device)?;
        let pending = pending_in(&tx, usize::MAX)?;
        tx.rollback()?;
        Ok(pending)
    }

    /// Up to `limit` queued buckets, oldest first.
    pub fn pending(&self, limit: usize) -> Result<Vec<Pending>> {
        pending_in(self.conn, limit)
    }

    /// Number of queued buckets.
    pub fn len(&self) -> Result<u64> {
        count(self.conn)
    }

    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Records that the server stored `sent`: in one transaction, the acknowledged totals become
    /// the sent ones, and each queued row is removed only if it still holds the sequence number
    /// it was sent under (totals queued meanwhile stay queued). Returns how many rows left.
    pub fn ack(&mut self, sent: &[Pending]) -> Result<u64> {
        let tx = self.conn.transaction()?;
        let mut removed = 0;
        {
            let mut acked = tx.prepare(
                "INSERT INTO sync_acked (source, model, hour_start, input, cached,
                                         cache_creation, output, reasoning, total)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (source, model, hour_start) DO UPDATE SET
                    input = excluded.input, cached = excluded.cached,
                    cache_creation = excluded.cache_creation, output = excluded.output,
                    reasoning = excluded.reasoning, total = excluded.total",
            )?;
            let mut dequeue = tx.prepare(
                "DELETE FROM sync_outbox
                 WHERE source = ?1 AND model = ?2 AND hour_start = ?3 AND seq = ?4",
            )?;
            for p in sent {
                let k = &p.bucket.key;
                let a = p.bucket.tokens.as_array().map(|v| v as i64);
                acked.execute(params![
                    k.source.as_str(),
                    k.model,
                    k.hour_start,
                    a[0],
                    a[1],
                    a[2],
                    a[3],
                    a[4],
                    a[5]
                ])?;
                removed +=
                    dequeue.execute(params![k.source.as_str(), k.model, k.hour_start, p.seq])?
                        as u64;
            }
        }
        tx.commit()?;
        Ok(removed)
    }

    /// Forgets everything queued and acknowledged (after a logout).
    pub fn reset(&mut self) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM sync_acked", [])?;
        tx.execute("DELETE FROM sync_outbox", [])?;
        tx.execute("DELETE FROM meta WHERE key = ?1", [DEVICE_KEY])?;
        tx.commit()?;
        Ok(())
    }

    /// The acknowledged totals (what this device's rows on the server hold).
    pub fn acked(&self) -> Result<BTreeMap<BucketKey, TokenCounts>> {
        read_table(self.conn, "sync_acked")
    }
}

/// Queues, inside `tx`, every difference between `buckets` (reassigned) and what the server will
/// hold once the outbox is drained.
fn emit_in(tx: &Transaction<'_>, buckets: Vec<Bucket>, device: &str) -> Result<EmitReport> {
    let desired: BTreeMap<BucketKey, TokenCounts> = reassign_unknown(buckets)
        .into_iter()
        .map(|b| (b.key, b.tokens))
        .collect();
    if get_meta(tx, DEVICE_KEY)?.as_deref() != Some(device) {
        tx.execute("DELETE FROM sync_acked", [])?;
        tx.execute("DELETE FROM sync_outbox", [])?;
        set_meta(tx, DEVICE_KEY, device)?;
    }
    // What the server will have once the outbox is drained: the acknowledged totals,
    // overridden by the queued ones.
    let mut target = read_table(tx, "sync_acked")?;
    target.extend(read_table(tx, "sync_outbox")?);

    let mut seq: i64 = get_meta(tx, SEQ_KEY)?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut report = EmitReport::default();
    let mut upsert = tx.prepare(
        "INSERT INTO sync_outbox (source, model, hour_start, input, cached, cache_creation,
                                          output, reasoning, total, seq)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT (source, model, hour_start) DO UPDATE SET
                    input = excluded.input, cached = excluded.cached,
                    cache_creation = excluded.cache_creation, output = excluded.output,
                    reasoning = excluded.reasoning, total = excluded.total, seq = excluded.seq",
    )?;
    let mut queue = |key: &BucketKey, t: &TokenCounts| -> rusqlite::Result<()> {
        seq += 1;
        let a = t.as_array().map(|v| v as i64);
        upsert.execute(params![
            key.source.as_str(),
            key.model,
            key.hour_start,
            a[0],
            a[1],
            a[2],
            a[3],
            a[4],
            a[5],
            seq
        ])?;
        Ok(())
    };
    for (key, tokens) in &desired {
        if target.get(key) != Some(tokens) {
            queue(key, tokens)?;
            report.queued += 1;
        }
    }
    for (key, tokens) in &target {
        if !desired.contains_key(key) && !tokens.is_zero() {
            queue(key, &TokenCounts::default())?;
            report.zeroed += 1;
        }
    }
    drop(upsert);
    set_meta(tx, SEQ_KEY, &seq.to_string())?;
    report.pending = count(tx)?;
    Ok(report)
}

/// Up to `limit` queued buckets, oldest first.
fn pending_in(conn: &Connection, limit: usize) -> Result<Vec<Pending>> {
    let mut stmt = conn.prepare(
        "SELECT source, model, hour_start, input, cached, cache_creation, output, reasoning,
                total, seq
         FROM sync_outbox ORDER BY seq LIMIT ?1",
    )?;
    let rows = stmt.query_map([limit as i64], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            read_tokens(r, 3)?,
            r.get::<_, i64>(9)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (source, model, hour_start, tokens, seq) = row?;
        // A source this build does not know (written by a newer one) stays queued.
        let Ok(source) = source.parse::<Source>() else {
            continue;
        };
        out.push(Pending {
            bucket: Bucket {
                key: BucketKey {
                    source,
                    model,
                    hour_start,
                },
                tokens,
            },
            seq,
        });
    }
    Ok(out)
}

/// Reads the ledger's half-hour buckets and queues what changed (see [`Outbox::emit_from`]).
pub fn emit(ledger: &mut Ledger, device: &str) -> Result<EmitReport> {
    let buckets = ledger.half_hour_buckets(&Filter::default())?;
    Outbox::open(ledger)?.emit_from(buckets, device)
}

fn count(conn: &Connection) -> Result<u64> {
    Ok(conn.query_row("SELECT COUNT(*) FROM sync_outbox", [], |r| {
        r.get::<_, i64>(0)
    })? as u64)
}

fn read_tokens(r: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<TokenCounts> {
    let mut a = [0u64; 6];
    for (i, v) in a.iter_mut().enumerate() {
        *v = r.get::<_, i64>(first + i)?.max(0) as u64;
    }
    Ok(TokenCounts::from_array(a))
}

fn read_table(conn: &Connection, table: &str) -> Result<BTreeMap<BucketKey, TokenCounts>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT source, model, hour_start, input, cached, cache_creation, output, reasoning,
                total FROM {table}"
    ))?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            read_tokens(r, 3)?,
        ))
    })?;
    let mut out = BTreeMap::new();
    for row in rows {
        let (source, model, hour_start, tokens) = row?;
        if let Ok(source) = source.parse::<Source>() {
            out.insert(
                BucketKey {
                    source,
                    model,
                    hour_start,
                },
                tokens,
            );
        }
    }
    Ok(out)
}

fn get_meta(tx: &Transaction<'_>, key: &str) -> Result<Option<String>> {
    Ok(tx
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()?)
}

fn set_meta(tx: &Transaction<'_>, key: &str, value: &str) -> Result<()> {
    tx.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )?;
    Ok(())
}
