//! Test support for tokenledger: a deterministic corpus generator that writes a fake HOME of
//! Codex CLI rollouts and Claude Code transcripts, planting every double-counting trap of
//! `agent-log-formats.md` (sections 1 and 3), together with its ground truth.
//!
//! The truth is computed from the generator's own model of what was really billed (one record
//! per API response), never by parsing the files it wrote. It is kept per
//! `(source, model, UTC half hour)` before the unknown-model reassignment; [`Truth::buckets`]
//! applies `tokenledger_core::reassign_unknown` exactly as the report does at bucket level.
//!
//! Conventions the truth relies on (each one is how the format document says to count):
//! - Codex: per-file deltas of `total_token_usage`; re-emitted lines count zero; a drop in the
//!   totals is a reset whose line carries `total == last` (the counter restarted at that
//!   response), so it counts in full; a fork or subagent child replays its parent's
//!   `turn_context` and `token_count` lines in one burst stamped with the fork second, and its own
//!   usage starts at least 3 s later with totals continuing from the last replayed total;
//!   `token_usage_record` lines describe the same responses as `token_count` lines;
//!   `compacted.latest_token_usage_record` is a copy; a `.jsonl` next to a `.jsonl.zst` of the
//!   same rollout holds the compressed content plus appended lines.
//! - Claude: one response per `message.id` + `requestId` (or `message.id` alone when `requestId`
//!   is missing), valued by its line with the largest total; `isSidechain` copies of a message
//!   already seen under another `requestId` are replays; `<synthetic>` and `isApiErrorMessage`
//!   lines are placeholders; cache creation is the 5m + 1h split when the flat field is absent.

mod agents;
mod claude;
mod codex;
mod every_code;
mod gemini;
mod opencode;
mod qwen;
pub mod util;

pub use agents::{add_agents, AgentOptions, AgentTraps};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use tokenledger_core::{floor_half_hour, format_hour_start, reassign_unknown, Bucket, BucketKey};

pub use tokenledger_core::{Source, TokenCounts};

/// What to generate.
#[derive(Debug, Clone)]
pub struct Options {
    pub seed: u64,
    /// Generate sessions until at least this many files exist...
    pub files: usize,
    /// ...and at least this many bytes were written (0: no size target).
    pub bytes: u64,
    /// First UTC day of activity, as days since 1970-01-01.
    pub start_day: i64,
    /// Number of days activity is spread over.
    pub days: i64,
    /// Hold back the tail of some plain files so that [`Corpus::append_pending`] can append it
    /// later (incremental tests). Keeps the held-back bytes in memory: small corpora only.
    pub hold_back: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            seed: 1,
            files: 100,
            bytes: 0,
            start_day: util::days_from_civil(2025, 10, 1),
            days: 30,
            hold_back: false,
        }
    }
}

/// Ground truth: tokens per `(source, model, half hour start)`, before unknown reassignment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Truth {
    pub half_hours: BTreeMap<(Source, String, i64), TokenCounts>,
}

/// One row of the daily truth.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DailyRow {
    pub day: String,
    pub source: Source,
    pub model: String,
    #[serde(flatten)]
    pub tokens: TokenCounts,
}

impl Truth {
    /// Adds one billed response at `ts` (unix seconds).
    pub fn add(&mut self, source: Source, model: &str, ts: i64, tokens: TokenCounts) {
        *self
            .half_hours
            .entry((source, model.to_string(), floor_half_hour(ts)))
            .or_default() += tokens;
    }

    /// Half-hour buckets after the unknown-model reassignment, sorted by key.
    pub fn buckets(&self) -> Vec<Bucket> {
        reassign_unknown(self.half_hours.iter().map(|((s, m, h), t)| Bucket {
            key: BucketKey {
                source: *s,
                model: m.clone(),
                hour_start: *h,
            },
            tokens: *t,
        }))
    }

    /// Per UTC day, source and model (after reassignment), sorted by day, source, model.
    pub fn daily(&self) -> Vec<DailyRow> {
        let mut m: BTreeMap<(String, Source, String), TokenCounts> = BTreeMap::new();
        for b in self.buckets() {
            *m.entry((util::fmt_day(b.key.hour_start), b.key.source, b.key.model))
                .or_default() += b.tokens;
        }
        m.into_iter()
            .filter(|(_, t)| !t.is_zero())
            .map(|((day, source, model), tokens)| DailyRow {
                day,
                source,
                model,
                tokens,
            })
            .collect()
    }

    /// Totals over everything.
    pub fn totals(&self) -> TokenCounts {
        self.half_hours.values().copied().sum()
    }

    /// Totals of one source.
    pub fn source_totals(&self, source: Source) -> TokenCounts {
        self.half_hours
            .iter()
            .filter(|((s, _, _), _)| *s == source)
            .map(|(_, t)| *t)
            .sum()
    }

    /// The truth as JSON: `{"daily":[...],"half_hours":[...],"totals":{...}}`.
    pub fn to_json(&self) -> serde_json::Value {
        let half_hours: Vec<serde_json::Value> = self
            .buckets()
            .into_iter()
            .map(|b| {
                let mut v = serde_json::to_value(b.tokens).unwrap_or_default();
                v["source"] = b.key.source.as_str().into();
                v["model"] = b.key.model.into();
                v["hour_start"] = format_hour_start(b.key.hour_start).into();
                v
            })
            .collect();
        serde_json::json!({
            "daily": self.daily(),
            "half_hours": half_hours,
            "totals": self.totals(),
        })
    }
}

/// How a file is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Enc {
    Plain,
    Zst,
}

/// A file planned by a session generator.
#[derive(Debug, Clone)]
pub(crate) struct FileOut {
    /// Relative to HOME.
    pub rel: PathBuf,
    pub enc: Enc,
    pub lines: Vec<String>,
    /// Line indices after which the file may be cut for an incremental test (`None`: never).
    pub safe_cuts: Option<Vec<usize>>,
}

/// One billed response and the lines that witness it (file index, line index).
#[derive(Debug, Clone)]
pub(crate) struct Ev {
    pub source: Source,
    pub model: String,
    pub ts: i64,
    pub tokens: TokenCounts,
    pub witnesses: Vec<(usize, usize)>,
}

/// What one generated session produced.
#[derive(Debug, Default)]
pub(crate) struct SessionOut {
    pub files: Vec<FileOut>,
    pub events: Vec<Ev>,
}

/// Counts of planted traps (so tests can assert the corpus really contains them).
#[derive(Debug, Clone, Default, Serialize)]
pub struct TrapCounts {
    pub codex_reemitted: u64,
    pub codex_rate_limit_only: u64,
    pub codex_resets: u64,
    pub codex_forks: u64,
    pub codex_replayed_lines: u64,
    pub codex_model_changes: u64,
    pub codex_unknown_model_events: u64,
    pub codex_usage_records: u64,
    pub codex_compacted_copies: u64,
    pub codex_archived_only: u64,
    pub codex_archived_duplicates: u64,
    pub codex_zst_only: u64,
    pub codex_zst_and_plain: u64,
    pub codex_legacy_files: u64,
    pub claude_streamed_extra_lines: u64,
    pub claude_no_request_id_events: u64,
    pub claude_no_request_id_extra_lines: u64,
    pub claude_sidechain_replays: u64,
    pub claude_resumed_copies: u64,
    pub claude_placeholders: u64,
    pub claude_subagent_files: u64,
    pub claude_snapshot_only_events: u64,
    pub claude_split_only_cache: u64,
    pub claude_config_dir_files: u64,
}

/// A generated corpus: where it is, its truth, and what was planted.
#[derive(Debug)]
pub struct Corpus {
    pub home: PathBuf,
    /// Truth of what is on disk now.
    pub truth: Truth,
    /// Truth once [`Corpus::append_pending`] has run (equal to `truth` without hold-back).
    pub truth_after_append: Truth,
    pub files: u64,
    pub bytes: u64,
    pub traps: TrapCounts,
    /// Traps of the extra agents ([`add_agents`]; all zero without it).
    pub agent_traps: AgentTraps,
    /// Held-back tails: (absolute path, bytes to append).
    pending: Vec<(PathBuf, Vec<u8>)>,
}

impl Corpus {
    /// Appends the held-back tails; afterwards `truth_after_append` describes the disk.
    pub fn append_pending(&mut self) -> std::io::Result<()> {
        for (path, bytes) in self.pending.drain(..) {
            let mut f = fs::OpenOptions::new().append(true).open(&path)?;
            f.write_all(&bytes)?;
        }
        self.truth = self.truth_after_append.clone();
        Ok(())
    }

    /// Whether some tails are still held back.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }
}

/// Shared state of the session generators.
pub(crate) struct Ctx {
    pub rng: StdRng,
    pub filler: util::Filler,
    pub opts: Options,
    pub traps: TrapCounts,
    /// Observed bytes per turn, to size sessions towards the target.
    pub bytes_per_turn: f64,
    /// Sessions generated so far per agent: placements and traps cycle over them so that even a
    /// small corpus holds every trap.
    pub codex_n: u64,
    pub claude_n: u64,
}

impl Ctx {
    /// A random session start (unix ms) within the configured days.
    pub fn start_ms(&mut self) -> i64 {
        let span = self.opts.days.max(1) * 86_400_000;
        self.opts.start_day * 86_400_000 + self.rng.random_range(0..span)
    }

    /// Filler text of `min + [0, spread)` bytes.
    pub fn text(&mut self, min: usize, spread: usize) -> String {
        let n = min + self.rng.random_range(0..spread);
        self.filler.take(&mut self.rng, n).to_string()
    }

    /// How many turns the next session should have.
    pub fn turns(&mut self) -> usize {
        let per_file = if self.opts.bytes > 0 && self.opts.files > 0 {
            self.opts.bytes as f64 / self.opts.files as f64
        } else {
            24_000.0
        };
        let mean = (per_file / self.bytes_per_turn.max(500.0)).max(1.0);
        let f: f64 = self.rng.random_range(0.4..1.6);
        ((mean * f).round() as usize).clamp(1, 4000)
    }
}

/// Generates a corpus under `home` (created if missing).
pub fn generate(home: &Path, opts: &Options) -> std::io::Result<Corpus> {
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let filler = util::Filler::new(&mut rng);
    let mut ctx = Ctx {
        rng,
        filler,
        opts: opts.clone(),
        traps: TrapCounts::default(),
        bytes_per_turn: 6000.0,
        codex_n: 0,
        claude_n: 0,
    };
    let mut corpus = Corpus {
        home: home.to_path_buf(),
        truth: Truth::default(),
        truth_after_append: Truth::default(),
        files: 0,
        bytes: 0,
        traps: TrapCounts::default(),
        agent_traps: AgentTraps::default(),
        pending: Vec::new(),
    };
    fs::create_dir_all(home)?;
    let mut turns_total = 0usize;
    let mut n = 0u64;
    while (corpus.files as usize) < opts.files || corpus.bytes < opts.bytes {
        let turns = ctx.turns();
        turns_total += turns;
        // Alternate the agents; the first two sessions always cover both.
        let out = if n.is_multiple_of(2) {
            codex::session(&mut ctx, turns)
        } else {
            claude::session(&mut ctx, turns)
        };
        n += 1;
        write_session(&mut ctx, &mut corpus, out)?;
        ctx.bytes_per_turn = corpus.bytes as f64 / turns_total.max(1) as f64;
    }
    corpus.traps = ctx.traps;
    Ok(corpus)
}

fn write_session(ctx: &mut Ctx, corpus: &mut Corpus, out: SessionOut) -> std::io::Result<()> {
    // Decide cuts: a file's lines `[..cut]` are written now, the rest is held back.
    let cuts: Vec<Option<usize>> = out
        .files
        .iter()
        .map(|f| match (&f.safe_cuts, ctx.opts.hold_back) {
            (Some(c), true) if !c.is_empty() && ctx.rng.random_ratio(1, 3) => {
                Some(c[ctx.rng.random_range(0..c.len())])
            }
            _ => None,
        })
        .collect();
    for (fi, f) in out.files.iter().enumerate() {
        let path = corpus.home.join(&f.rel);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let written_lines = cuts[fi].unwrap_or(f.lines.len());
        let mut now = Vec::new();
        for l in &f.lines[..written_lines] {
            now.extend_from_slice(l.as_bytes());
            now.push(b'\n');
        }
        let data = match f.enc {
            Enc::Plain => now,
            Enc::Zst => zstd::encode_all(&now[..], 3)?,
        };
        fs::write(&path, &data)?;
        corpus.files += 1;
        corpus.bytes += data.len() as u64;
        if written_lines < f.lines.len() {
            let mut rest = Vec::new();
            for l in &f.lines[written_lines..] {
                rest.extend_from_slice(l.as_bytes());
                rest.push(b'\n');
            }
            corpus.pending.push((path, rest));
        }
    }
    for ev in out.events {
        let now = ev
            .witnesses
            .iter()
            .any(|(fi, li)| cuts[*fi].is_none_or(|c| *li < c));
        if now {
            corpus.truth.add(ev.source, &ev.model, ev.ts, ev.tokens);
        }
        corpus
            .truth_after_append
            .add(ev.source, &ev.model, ev.ts, ev.tokens);
    }
    Ok(())
}
