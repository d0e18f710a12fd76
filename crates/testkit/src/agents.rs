//! The agents beyond Codex and Claude: Every Code, Gemini CLI, OpenCode and Qwen Code.
//!
//! Opt-in: [`add_agents`] writes them next to a corpus made by [`crate::generate`] and merges
//! their truth into it, with its own random stream, so the Codex/Claude files and truth of a
//! given seed stay exactly what [`crate::generate`] alone writes. The Every Code unknown-model
//! step of the reassignment looks at the Codex buckets, so the merged truth is what to compare.
//!
//! Truth conventions (each is how agent-log-formats.md sections 2, 4, 5 and 6 say to count):
//! - Every Code: as Codex, per-file deltas of `total_token_usage` on `"type":"event"` lines;
//!   a session with no `turn_context` and no model in `info` is `unknown`.
//! - Gemini: one billed call per distinct message id (its last, largest record), counted whether
//!   or not a later `$rewindTo` removed it, once across a legacy `.json` and its `.jsonl` copy.
//! - OpenCode: per assistant message the sum of its `step-finish` parts (else its own tokens);
//!   all-zero messages are not calls; the legacy JSON store is a copy of database rows.
//! - Qwen: one call per assistant `usageMetadata`; the `ui_telemetry` line is a copy.

use crate::util::Filler;
use crate::{every_code, gemini, opencode, qwen, Corpus, Ctx, Options, TrapCounts};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::Serialize;
use std::fs;
use std::path::PathBuf;
use tokenledger_core::{Source, TokenCounts};

/// Which extra agents to write, and how much.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub every_code: bool,
    pub gemini: bool,
    pub opencode: bool,
    pub qwen: bool,
    /// At least this many sessions per enabled agent...
    pub sessions: usize,
    /// ...and at least this many bytes over all of them (0: no size target).
    pub bytes: u64,
}

impl AgentOptions {
    /// All four agents, `sessions` sessions each.
    pub fn all(sessions: usize) -> AgentOptions {
        AgentOptions {
            every_code: true,
            gemini: true,
            opencode: true,
            qwen: true,
            sessions,
            bytes: 0,
        }
    }

    /// Parses `all` or a comma list of `every-code,gemini,opencode,qwen`.
    pub fn parse_list(list: &str, sessions: usize) -> Result<AgentOptions, String> {
        let mut o = AgentOptions {
            every_code: false,
            gemini: false,
            opencode: false,
            qwen: false,
            sessions,
            bytes: 0,
        };
        for a in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match a {
                "all" => o = AgentOptions::all(sessions),
                "every-code" => o.every_code = true,
                "gemini" => o.gemini = true,
                "opencode" => o.opencode = true,
                "qwen" => o.qwen = true,
                other => return Err(format!("unknown agent {other:?}")),
            }
        }
        Ok(o)
    }
}

/// Counts of the traps planted for the extra agents.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AgentTraps {
    pub every_code_sessions: u64,
    pub every_code_event_lines: u64,
    pub every_code_reemitted: u64,
    pub every_code_rate_limit_only: u64,
    pub every_code_unknown_model_events: u64,
    pub every_code_info_model_only_sessions: u64,
    pub gemini_sessions: u64,
    pub gemini_reappended: u64,
    pub gemini_set_patches: u64,
    pub gemini_set_messages: u64,
    pub gemini_rewinds: u64,
    pub gemini_rewound_billed: u64,
    pub gemini_legacy_json: u64,
    pub gemini_legacy_with_jsonl_copy: u64,
    pub gemini_subagent_chats: u64,
    pub gemini_unknown_model: u64,
    pub opencode_sessions: u64,
    pub opencode_subagent_sessions: u64,
    pub opencode_multi_step_messages: u64,
    pub opencode_no_step_parts: u64,
    pub opencode_zero_token_rows: u64,
    pub opencode_legacy_copies: u64,
    pub qwen_sessions: u64,
    pub qwen_telemetry_duplicates: u64,
}

/// One extra-agent session: files relative to HOME, and the billed calls.
#[derive(Debug, Default)]
pub(crate) struct Written {
    pub files: Vec<(PathBuf, Vec<u8>)>,
    /// (source, model, unix seconds, tokens)
    pub calls: Vec<(Source, String, i64, TokenCounts)>,
}

/// Writes the enabled agents' logs under `corpus.home` and adds their truth to the corpus (both
/// `truth` and `truth_after_append`: nothing is held back). `opts` gives the seed and the days.
pub fn add_agents(
    corpus: &mut Corpus,
    opts: &Options,
    agents: &AgentOptions,
) -> std::io::Result<()> {
    // A stream of its own: the Codex/Claude part of the corpus does not move.
    let mut rng = StdRng::seed_from_u64(opts.seed ^ 0x6167_656e_7473_0001);
    let filler = Filler::new(&mut rng);
    let per_session = if agents.bytes > 0 {
        agents.bytes / (agents.sessions.max(1) as u64 * 4)
    } else {
        0
    };
    let mut ctx = Ctx {
        rng,
        filler,
        opts: Options {
            files: 1,
            bytes: per_session,
            hold_back: false,
            ..opts.clone()
        },
        traps: TrapCounts::default(),
        bytes_per_turn: 3000.0,
        codex_n: 0,
        claude_n: 0,
    };
    let mut traps = AgentTraps::default();
    let mut db = opencode::Db::default();
    let mut last_start = None;
    let enabled: Vec<Source> = [
        (agents.every_code, Source::EveryCode),
        (agents.gemini, Source::Gemini),
        (agents.opencode, Source::OpenCode),
        (agents.qwen, Source::Qwen),
    ]
    .into_iter()
    .filter_map(|(on, s)| on.then_some(s))
    .collect();
    if enabled.is_empty() {
        return Ok(());
    }
    let mut written_bytes = 0u64;
    let mut turns_total = 0usize;
    let mut n = 0u64;
    loop {
        let round = n / enabled.len() as u64;
        if round as usize >= agents.sessions && written_bytes + db.bytes >= agents.bytes {
            break;
        }
        let source = enabled[(n % enabled.len() as u64) as usize];
        n += 1;
        let turns = ctx.turns().min(400);
        turns_total += turns;
        let w = match source {
            Source::EveryCode => {
                every_code::session(&mut ctx, &mut traps, &mut last_start, turns, round)
            }
            Source::Gemini => gemini::session(&mut ctx, &mut traps, turns, round),
            Source::Qwen => qwen::session(&mut ctx, &mut traps, turns, round),
            _ => opencode::session(&mut ctx, &mut traps, &mut db, turns, round),
        };
        for (rel, data) in &w.files {
            let path = corpus.home.join(rel);
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir)?;
            }
            fs::write(&path, data)?;
            corpus.files += 1;
            corpus.bytes += data.len() as u64;
            written_bytes += data.len() as u64;
        }
        for (s, m, ts, t) in w.calls {
            corpus.truth.add(s, &m, ts, t);
            corpus.truth_after_append.add(s, &m, ts, t);
        }
        ctx.bytes_per_turn = (written_bytes + db.bytes) as f64 / turns_total.max(1) as f64;
    }
    if agents.opencode {
        let path = corpus.home.join(opencode::DB_REL);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let size = db.write(&path).map_err(std::io::Error::other)?;
        corpus.files += 1;
        corpus.bytes += size;
        for (s, m, ts, t) in db.calls.drain(..) {
            corpus.truth.add(s, &m, ts, t);
            corpus.truth_after_append.add(s, &m, ts, t);
        }
    }
    corpus.agent_traps = traps;
    Ok(())
}
