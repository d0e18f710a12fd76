//! Claude Code transcripts with every trap of agent-log-formats.md section 3.

use crate::util::{fmt_ts, id, uuid};
use crate::{Ctx, Enc, Ev, FileOut, SessionOut};
use rand::Rng;
use std::path::PathBuf;
use tokenledger_core::{floor_half_hour, Source, TokenCounts};

const MODELS: &[&str] = &[
    "claude-sonnet-4-5-20250929",
    "claude-opus-4-1-20250805",
    "claude-haiku-4-5-20251001",
    "claude-opus-4-5-20251101",
];

/// One response's usage in Claude's own fields.
#[derive(Debug, Clone, Copy)]
struct Usage {
    input: u64,
    cache_read: u64,
    cache_5m: u64,
    cache_1h: u64,
    output: u64,
    /// Only the `cache_creation` split, no flat `cache_creation_input_tokens`.
    split_only: bool,
}

impl Usage {
    fn json(&self, output: u64, with_split: bool) -> String {
        let cc = self.cache_5m + self.cache_1h;
        let flat = if self.split_only {
            String::new()
        } else {
            format!("\"cache_creation_input_tokens\":{cc},")
        };
        let split = if with_split || self.split_only {
            format!(
                "\"cache_creation\":{{\"ephemeral_5m_input_tokens\":{},\"ephemeral_1h_input_tokens\":{}}},",
                self.cache_5m, self.cache_1h
            )
        } else {
            String::new()
        };
        format!(
            "{{\"input_tokens\":{},{flat}\"cache_read_input_tokens\":{},{split}\"output_tokens\":{output},\"service_tier\":\"standard\"}}",
            self.input, self.cache_read
        )
    }

    fn tokens(&self, output: u64) -> TokenCounts {
        let cc = self.cache_5m + self.cache_1h;
        TokenCounts::new(
            self.input + self.cache_read + cc,
            self.cache_read,
            cc,
            output,
            0,
        )
    }
}

/// A transcript being written.
struct Tx {
    session: String,
    cwd: String,
    version: &'static str,
    sidechain: bool,
    agent_id: Option<String>,
    no_request_id: bool,
    lines: Vec<String>,
    t: i64,
    parent: String,
    model: &'static str,
    /// (model, ts secs, tokens, witness line indices)
    events: Vec<(String, i64, TokenCounts, Vec<usize>)>,
    /// Messages that can be replayed by a `/btw` sidechain: (msg id, model, usage, final output).
    replayable: Vec<(String, &'static str, Usage, u64)>,
    safe_cuts: Vec<usize>,
    /// Whether early snapshots may be all a message gets (subagent files).
    snapshot_only: bool,
}

impl Tx {
    fn head(&self, uuid: &str, ts: i64, sidechain: bool) -> String {
        let agent = self
            .agent_id
            .as_ref()
            .map(|a| format!("\"agentId\":\"{a}\","))
            .unwrap_or_default();
        format!(
            "\"parentUuid\":\"{}\",\"isSidechain\":{sidechain},\"userType\":\"external\",\"cwd\":\"{}\",\"sessionId\":\"{}\",\"version\":\"{}\",\"gitBranch\":\"main\",{agent}\"uuid\":\"{uuid}\",\"timestamp\":\"{}\"",
            self.parent,
            self.cwd,
            self.session,
            self.version,
            fmt_ts(ts)
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn assistant(
        &mut self,
        ctx: &mut Ctx,
        ts: i64,
        msg_id: &str,
        req: Option<&str>,
        model: &str,
        content: &str,
        usage: &str,
        sidechain: bool,
        extra: &str,
    ) -> usize {
        let u = uuid(&mut ctx.rng);
        let req = req
            .map(|r| format!(",\"requestId\":\"{r}\""))
            .unwrap_or_default();
        let line = format!(
            "{{{head},\"message\":{{\"id\":\"{msg_id}\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"{model}\",\"content\":[{content}],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{usage}}}{req},\"type\":\"assistant\"{extra}}}",
            head = self.head(&u, ts, sidechain)
        );
        self.parent = u;
        self.lines.push(line);
        self.lines.len() - 1
    }

    fn user(&mut self, ctx: &mut Ctx, ts: i64, big: bool) {
        let u = uuid(&mut ctx.rng);
        let line = if big {
            let len = 1_000 + ctx.rng.random_range(0..7_000);
            let out = ctx.filler.take(&mut ctx.rng, len);
            let tool = id(&mut ctx.rng, "toolu_01", 22);
            let half = &out[..out.len() / 2];
            let half = half.trim_end_matches('\\');
            format!(
                "{{{head},\"type\":\"user\",\"message\":{{\"role\":\"user\",\"content\":[{{\"tool_use_id\":\"{tool}\",\"type\":\"tool_result\",\"content\":\"{out}\",\"is_error\":false}}]}},\"toolUseResult\":{{\"stdout\":\"{half}\",\"stderr\":\"\",\"interrupted\":false,\"isImage\":false}}}}",
                head = self.head(&u, ts, self.sidechain)
            )
        } else {
            let text = ctx.text(60, 400);
            format!(
                "{{{head},\"type\":\"user\",\"message\":{{\"role\":\"user\",\"content\":\"{text}\"}}}}",
                head = self.head(&u, ts, self.sidechain)
            )
        };
        self.parent = u;
        self.lines.push(line);
    }

    fn usage(ctx: &mut Ctx) -> Usage {
        let cc = if ctx.rng.random_ratio(1, 2) {
            ctx.rng.random_range(0..30_000u64)
        } else {
            0
        };
        let one_h = if ctx.rng.random_ratio(1, 3) {
            ctx.rng.random_range(0..=cc)
        } else {
            0
        };
        let split_only = ctx.rng.random_ratio(1, 20);
        if split_only {
            ctx.traps.claude_split_only_cache += 1;
        }
        Usage {
            input: ctx.rng.random_range(1..60u64),
            cache_read: ctx.rng.random_range(0..250_000u64),
            cache_5m: cc - one_h,
            cache_1h: one_h,
            output: ctx.rng.random_range(5..6_000u64),
            split_only,
        }
    }

    /// One API response written as one line per content block.
    fn message(&mut self, ctx: &mut Ctx) {
        if ctx.rng.random_ratio(1, 20) {
            self.model = MODELS[ctx.rng.random_range(0..MODELS.len())];
        }
        let msg_id = id(&mut ctx.rng, "msg_01", 22);
        let req = (!self.no_request_id).then(|| id(&mut ctx.rng, "req_011C", 20));
        let u = Self::usage(ctx);
        let blocks = ctx.rng.random_range(1..=4usize);
        let snapshot_only = self.snapshot_only && ctx.rng.random_ratio(1, 5);
        let mut outputs: Vec<u64> = (0..blocks)
            .map(|_| ctx.rng.random_range(1..=u.output.min(40)))
            .collect();
        if !snapshot_only {
            outputs[blocks - 1] = u.output;
        } else {
            ctx.traps.claude_snapshot_only_events += 1;
        }
        // All blocks of one response fall in one half hour.
        let mut base = self.t;
        let offsets: Vec<i64> = (0..blocks)
            .map(|i| i as i64 * ctx.rng.random_range(50..2_500))
            .collect();
        let end = base + offsets[blocks - 1];
        if floor_half_hour(base / 1000) != floor_half_hour(end / 1000) {
            base = floor_half_hour(end / 1000) * 1000;
        }
        let with_split = self.version.starts_with("2.1");
        let mut best = (0u64, Vec::new());
        for (i, out) in outputs.iter().enumerate() {
            let content = match i % 3 {
                0 if blocks > 1 => {
                    let th = ctx.text(100, 600);
                    format!("{{\"type\":\"thinking\",\"thinking\":\"{th}\",\"signature\":\"EqQBCkYIBxgCKkA\"}}")
                }
                1 => {
                    let tool = id(&mut ctx.rng, "toolu_01", 22);
                    format!("{{\"type\":\"tool_use\",\"id\":\"{tool}\",\"name\":\"Bash\",\"input\":{{\"command\":\"cargo test\"}}}}")
                }
                _ => {
                    let tx = ctx.text(40, 400);
                    format!("{{\"type\":\"text\",\"text\":\"{tx}\"}}")
                }
            };
            let usage = u.json(*out, with_split);
            let li = self.assistant(
                ctx,
                base + offsets[i],
                &msg_id,
                req.as_deref(),
                self.model,
                &content,
                &usage,
                self.sidechain,
                "",
            );
            if *out > best.0 {
                best = (*out, vec![li]);
            } else if *out == best.0 {
                best.1.push(li);
            }
        }
        self.t = base + offsets[blocks - 1];
        ctx.traps.claude_streamed_extra_lines += blocks as u64 - 1;
        if self.no_request_id {
            ctx.traps.claude_no_request_id_events += 1;
            ctx.traps.claude_no_request_id_extra_lines += blocks as u64 - 1;
        }
        self.events.push((
            self.model.to_string(),
            base / 1000,
            u.tokens(best.0),
            best.1,
        ));
        if req.is_some() && !self.sidechain {
            self.replayable.push((msg_id, self.model, u, best.0));
        }
    }

    fn turn(&mut self, ctx: &mut Ctx) {
        self.t += ctx.rng.random_range(5_000..300_000);
        let t = self.t;
        self.user(ctx, t, false);
        for _ in 0..ctx.rng.random_range(1..=3) {
            self.t += ctx.rng.random_range(1_000..30_000);
            self.message(ctx);
            self.t += ctx.rng.random_range(200..20_000);
            let t = self.t;
            self.user(ctx, t, true);
        }
        // Placeholders: `<synthetic>` API errors, and an error line naming a real model.
        if ctx.rng.random_ratio(1, 10) {
            self.t += 1_000;
            let usage = if ctx.rng.random_bool(0.5) {
                "{\"input_tokens\":0,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":0}".to_string()
            } else {
                Self::usage(ctx).json(77, false)
            };
            let extra = if ctx.rng.random_bool(0.5) {
                ",\"isApiErrorMessage\":true"
            } else {
                ""
            };
            let mid = uuid(&mut ctx.rng);
            let t = self.t;
            let sc = self.sidechain;
            self.assistant(
                ctx,
                t,
                &mid,
                None,
                "<synthetic>",
                "{\"type\":\"text\",\"text\":\"API Error: 529 overloaded\"}",
                &usage,
                sc,
                extra,
            );
            ctx.traps.claude_placeholders += 1;
        }
        if ctx.rng.random_ratio(1, 60) {
            self.t += 1_000;
            let usage = Self::usage(ctx).json(55, false);
            let mid = id(&mut ctx.rng, "msg_01", 22);
            let req = id(&mut ctx.rng, "req_011C", 20);
            let (t, sc, m) = (self.t, self.sidechain, self.model);
            self.assistant(
                ctx,
                t,
                &mid,
                Some(&req),
                m,
                "{\"type\":\"text\",\"text\":\"API Error: Request timed out\"}",
                &usage,
                sc,
                ",\"isApiErrorMessage\":true",
            );
            ctx.traps.claude_placeholders += 1;
        }
        // A `/btw` sidechain replaying an earlier response under a new requestId.
        if !self.replayable.is_empty() && ctx.rng.random_ratio(1, 6) {
            let (mid, model, u, out) =
                self.replayable[ctx.rng.random_range(0..self.replayable.len())].clone();
            self.t += 2_000;
            let req = id(&mut ctx.rng, "req_011C", 20);
            let t = self.t;
            self.assistant(
                ctx,
                t,
                &mid,
                Some(&req),
                model,
                "{\"type\":\"text\",\"text\":\"(btw) replayed answer\"}",
                &u.json(out, false),
                true,
                "",
            );
            ctx.traps.claude_sidechain_replays += 1;
        }
        self.safe_cuts.push(self.lines.len());
    }
}

fn new_tx(ctx: &mut Ctx, session: String, cwd: String, version: &'static str, t: i64) -> Tx {
    Tx {
        session,
        cwd,
        version,
        sidechain: false,
        agent_id: None,
        no_request_id: false,
        lines: Vec::new(),
        t,
        parent: uuid(&mut ctx.rng),
        model: MODELS[ctx.rng.random_range(0..MODELS.len())],
        events: Vec::new(),
        replayable: Vec::new(),
        safe_cuts: Vec::new(),
        snapshot_only: false,
    }
}

fn push_events(out: &mut SessionOut, fi: usize, events: &[(String, i64, TokenCounts, Vec<usize>)]) {
    for (model, ts, tokens, w) in events {
        out.events.push(Ev {
            source: Source::Claude,
            model: model.clone(),
            ts: *ts,
            tokens: *tokens,
            witnesses: w.iter().map(|li| (fi, *li)).collect(),
        });
    }
}

pub(crate) fn session(ctx: &mut Ctx, turns: usize) -> SessionOut {
    let mut out = SessionOut::default();
    let root = if ctx.claude_n % 3 == 2 {
        ctx.traps.claude_config_dir_files += 1;
        ".config/claude"
    } else {
        ".claude"
    };
    let cwd = format!("/home/dev/app-{}", ctx.rng.random_range(0..10));
    let slug = cwd.replace(|c: char| !c.is_ascii_alphanumeric(), "-");
    let project = PathBuf::from(root).join("projects").join(&slug);
    let version = if ctx.claude_n % 8 < 4 {
        "2.0.51"
    } else {
        "2.1.220"
    };
    let session = uuid(&mut ctx.rng);
    let start = ctx.start_ms();
    let n = ctx.claude_n;
    ctx.claude_n += 1;
    let mut tx = new_tx(ctx, session.clone(), cwd.clone(), version, start);
    tx.no_request_id = n % 6 == 1;
    for _ in 0..turns {
        tx.turn(ctx);
    }
    let resumed = n % 8 == 2;
    let main_cuts = (!resumed).then(|| {
        let mut c = tx.safe_cuts.clone();
        c.pop();
        c
    });
    out.files.push(FileOut {
        rel: project.join(format!("{session}.jsonl")),
        enc: Enc::Plain,
        lines: tx.lines.clone(),
        safe_cuts: main_cuts,
    });
    push_events(&mut out, 0, &tx.events);

    // A resumed session: another file starting with a copy of this one's history.
    if resumed {
        let s2 = uuid(&mut ctx.rng);
        let mut tx2 = new_tx(ctx, s2.clone(), cwd.clone(), version, tx.t);
        tx2.no_request_id = tx.no_request_id;
        tx2.lines = tx.lines.clone();
        tx2.replayable = tx.replayable.clone();
        for _ in 0..ctx.rng.random_range(1..5) {
            tx2.turn(ctx);
        }
        tx2.safe_cuts.pop();
        let fi = out.files.len();
        out.files.push(FileOut {
            rel: project.join(format!("{s2}.jsonl")),
            enc: Enc::Plain,
            lines: tx2.lines,
            safe_cuts: Some(tx2.safe_cuts),
        });
        // The copied history is a second witness of every original response.
        for ev in out.events.iter_mut() {
            let extra: Vec<(usize, usize)> = ev.witnesses.iter().map(|(_, li)| (fi, *li)).collect();
            ev.witnesses.extend(extra);
        }
        push_events(&mut out, fi, &tx2.events);
        ctx.traps.claude_resumed_copies += 1;
    }

    // Subagents.
    if n % 4 == 3 {
        for _ in 0..ctx.rng.random_range(1..=3) {
            let agent = format!("{:08x}", ctx.rng.random::<u32>());
            let mut sa = new_tx(ctx, session.clone(), cwd.clone(), version, start + 60_000);
            sa.sidechain = true;
            sa.agent_id = Some(agent.clone());
            sa.snapshot_only = true;
            for _ in 0..ctx.rng.random_range(1..6) {
                sa.turn(ctx);
            }
            sa.safe_cuts.pop();
            let old_style = version.starts_with("2.0") && ctx.rng.random_ratio(1, 3);
            let rel = if old_style {
                project.join(format!("agent-{agent}.jsonl"))
            } else {
                project
                    .join(&session)
                    .join("subagents")
                    .join(format!("agent-{agent}.jsonl"))
            };
            if !old_style {
                out.files.push(FileOut {
                    rel: project
                        .join(&session)
                        .join("subagents")
                        .join(format!("agent-{agent}.meta.json")),
                    enc: Enc::Plain,
                    lines: vec![format!(
                        "{{\"agentType\":\"general-purpose\",\"spawnDepth\":1,\"model\":\"{}\"}}",
                        sa.model
                    )],
                    safe_cuts: None,
                });
            }
            let fi = out.files.len();
            out.files.push(FileOut {
                rel,
                enc: Enc::Plain,
                lines: sa.lines.clone(),
                safe_cuts: Some(sa.safe_cuts.clone()),
            });
            push_events(&mut out, fi, &sa.events);
            ctx.traps.claude_subagent_files += 1;
        }
    }
    out
}
