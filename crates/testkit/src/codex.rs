//! Codex CLI rollouts with every trap of agent-log-formats.md section 1.

use crate::util::{fmt_ts, id, rollout_stamp, uuid};
use crate::{Ctx, Enc, Ev, FileOut, SessionOut};
use rand::Rng;
use std::path::PathBuf;
use tokenledger_core::{Source, TokenCounts, UNKNOWN_MODEL};

const MODELS: &[&str] = &["gpt-5", "gpt-5-codex", "gpt-5.1-codex-max", "gpt-5-mini"];

/// One usage report in Codex's own fields.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    input: u64,
    cached: u64,
    cache_write: u64,
    output: u64,
    reasoning: u64,
}

impl Usage {
    fn add(&mut self, o: &Usage) {
        self.input += o.input;
        self.cached += o.cached;
        self.cache_write += o.cache_write;
        self.output += o.output;
        self.reasoning += o.reasoning;
    }

    fn tokens(&self) -> TokenCounts {
        TokenCounts::new(
            self.input,
            self.cached,
            self.cache_write,
            self.output,
            self.reasoning,
        )
    }

    fn json(&self, with_cache_write: bool) -> String {
        let cw = if with_cache_write {
            format!(",\"cache_write_input_tokens\":{}", self.cache_write)
        } else {
            String::new()
        };
        format!(
            "{{\"input_tokens\":{},\"cached_input_tokens\":{}{cw},\"output_tokens\":{},\"reasoning_output_tokens\":{},\"total_tokens\":{}}}",
            self.input,
            self.cached,
            self.output,
            self.reasoning,
            self.input + self.output
        )
    }
}

/// Rate-limit object shapes over the versions.
#[derive(Debug, Clone, Copy)]
enum RateStyle {
    Flat,
    Nested,
    Current,
}

/// A rollout being written.
struct Roll {
    thread: String,
    lines: Vec<String>,
    t: i64,
    total: Usage,
    model: Option<String>,
    new_fmt: bool,
    rate: RateStyle,
    cwd: String,
    /// (model, ts secs, tokens, witness line indices)
    events: Vec<(String, i64, TokenCounts, Vec<usize>)>,
    safe_cuts: Vec<usize>,
    /// Indices of `turn_context` and `token_count` lines (what a fork child replays).
    replayable: Vec<usize>,
}

impl Roll {
    fn push(&mut self, ts: i64, ty: &str, payload: &str) -> usize {
        self.lines.push(format!(
            "{{\"timestamp\":\"{}\",\"type\":\"{ty}\",\"payload\":{payload}}}",
            fmt_ts(ts)
        ));
        self.lines.len() - 1
    }

    fn tick(&mut self, ctx: &mut Ctx, lo: i64, hi: i64) -> i64 {
        self.t += ctx.rng.random_range(lo..hi);
        self.t
    }

    fn rate_limits(&self, ctx: &mut Ctx) -> String {
        let p: f64 = (ctx.rng.random_range(0..1000) as f64) / 10.0;
        let s: f64 = (ctx.rng.random_range(0..1000) as f64) / 10.0;
        match self.rate {
            RateStyle::Flat => format!(
                "{{\"primary_used_percent\":{p:.1},\"secondary_used_percent\":{s:.1},\"primary_to_secondary_ratio_percent\":{:.1},\"primary_window_minutes\":300,\"secondary_window_minutes\":10080}}",
                p / 3.0
            ),
            RateStyle::Nested => format!(
                "{{\"primary\":{{\"used_percent\":{p:.1},\"window_minutes\":300,\"resets_in_seconds\":{}}},\"secondary\":{{\"used_percent\":{s:.1},\"window_minutes\":10080,\"resets_in_seconds\":{}}}}}",
                ctx.rng.random_range(0..18000),
                ctx.rng.random_range(0..604800)
            ),
            RateStyle::Current => format!(
                "{{\"limit_id\":\"codex\",\"limit_name\":null,\"plan_type\":\"pro\",\"primary\":{{\"used_percent\":{p:.1},\"window_minutes\":10080,\"resets_at\":{}}},\"secondary\":null,\"individual_limit\":null,\"credits\":{{\"has_credits\":false,\"unlimited\":false,\"balance\":\"0\"}},\"rate_limit_reached_type\":null,\"spend_control_reached\":false}}",
                self.t / 1000 + 86_400
            ),
        }
    }

    fn token_count(&mut self, ctx: &mut Ctx, ts: i64, last: &Usage) -> usize {
        let rl = self.rate_limits(ctx);
        let payload = format!(
            "{{\"type\":\"token_count\",\"info\":{{\"total_token_usage\":{},\"last_token_usage\":{},\"model_context_window\":272000}},\"rate_limits\":{rl}}}",
            self.total.json(self.new_fmt),
            last.json(self.new_fmt)
        );
        let i = self.push(ts, "event_msg", &payload);
        self.replayable.push(i);
        i
    }

    fn turn_context(&mut self, ts: i64, model: &str) {
        let payload = format!(
            "{{\"cwd\":\"{}\",\"approval_policy\":\"on-request\",\"sandbox_policy\":{{\"mode\":\"workspace-write\"}},\"model\":\"{model}\",\"effort\":\"medium\",\"summary\":\"auto\"}}",
            self.cwd
        );
        let i = self.push(ts, "turn_context", &payload);
        self.replayable.push(i);
        self.model = Some(model.to_string());
    }

    fn usage(ctx: &mut Ctx, new_fmt: bool) -> Usage {
        let input = ctx.rng.random_range(1_500..180_000u64);
        let cached = if ctx.rng.random_ratio(4, 5) {
            input * ctx.rng.random_range(0..96u64) / 100
        } else {
            0
        };
        let cache_write = if new_fmt && ctx.rng.random_ratio(1, 3) {
            ctx.rng.random_range(0..=(input - cached).min(6_000))
        } else {
            0
        };
        let output = ctx.rng.random_range(8..9_000u64);
        let reasoning = if ctx.rng.random_ratio(2, 3) {
            ctx.rng.random_range(0..=output)
        } else {
            0
        };
        Usage {
            input,
            cached,
            cache_write,
            output,
            reasoning,
        }
    }

    /// One user turn: messages, a tool call with a big output, then usage lines and traps.
    fn turn(&mut self, ctx: &mut Ctx) {
        let ts = self.tick(ctx, 5_000, 240_000);
        let text = ctx.text(80, 300);
        let p = format!(
            "{{\"type\":\"message\",\"role\":\"user\",\"content\":[{{\"type\":\"input_text\",\"text\":\"{text}\"}}]}}"
        );
        self.push(ts, "response_item", &p);
        let p = format!("{{\"type\":\"user_message\",\"message\":\"{text}\",\"images\":[]}}");
        self.push(ts, "event_msg", &p);

        // A model change mid-session.
        if self.model.is_some() && ctx.rng.random_ratio(1, 10) {
            let m = MODELS[ctx.rng.random_range(0..MODELS.len())];
            let ts = self.tick(ctx, 1, 50);
            self.turn_context(ts, m);
            ctx.traps.codex_model_changes += 1;
        }

        let ts = self.tick(ctx, 200, 3_000);
        let enc_len = 300 + ctx.rng.random_range(0..1_500);
        let enc = ctx
            .filler
            .take(&mut ctx.rng, enc_len)
            .replace([' ', '\t', '\\'], "A");
        let p = format!(
            "{{\"type\":\"reasoning\",\"summary\":[],\"content\":null,\"encrypted_content\":\"gAAAAB{enc}\"}}"
        );
        self.push(ts, "response_item", &p);
        let call = id(&mut ctx.rng, "call_", 24);
        let p = format!(
            "{{\"type\":\"function_call\",\"name\":\"shell\",\"arguments\":\"{{\\\"command\\\":[\\\"bash\\\",\\\"-lc\\\",\\\"cargo test\\\"]}}\",\"call_id\":\"{call}\"}}"
        );
        self.push(ts, "response_item", &p);
        let ts = self.tick(ctx, 500, 20_000);
        let out_len = 800 + ctx.rng.random_range(0..7_000);
        let out = ctx.filler.take(&mut ctx.rng, out_len);
        let p = format!(
            "{{\"type\":\"function_call_output\",\"call_id\":\"{call}\",\"output\":\"{{\\\"output\\\":\\\"{out}\\\",\\\"metadata\\\":{{\\\"exit_code\\\":0,\\\"duration_seconds\\\":1.2}}}}\"}}"
        );
        self.push(ts, "response_item", &p);

        // Rate-limit-only line (info null).
        if ctx.rng.random_ratio(1, 5) {
            let ts = self.tick(ctx, 10, 500);
            let rl = self.rate_limits(ctx);
            self.push(
                ts,
                "event_msg",
                &format!("{{\"type\":\"token_count\",\"info\":null,\"rate_limits\":{rl}}}"),
            );
            ctx.traps.codex_rate_limit_only += 1;
        }

        // The billed response.
        let last = Self::usage(ctx, self.new_fmt);
        // A reset must be visible: the new total (this response alone) is below the old one.
        let reset = self.total.input + self.total.output > last.input + last.output
            && ctx.rng.random_ratio(1, 8);
        if reset {
            // Compaction: the thread counter restarts at this response.
            let ts = self.tick(ctx, 10, 500);
            let p = "{\"message\":\"[compacted summary]\",\"replacement_history\":[]}";
            self.push(ts, "compacted", p);
            self.total = Usage::default();
            ctx.traps.codex_resets += 1;
        }
        self.total.add(&last);
        let ts = self.tick(ctx, 100, 5_000);
        let mut witnesses = vec![self.token_count(ctx, ts, &last)];
        if self.new_fmt {
            let resp = id(&mut ctx.rng, "resp_", 32);
            let turn_id = uuid(&mut ctx.rng);
            let record = format!(
                "{{\"thread_id\":\"{th}\",\"session_id\":\"{th}\",\"turn_id\":\"{turn_id}\",\"root_turn_id\":\"{turn_id}\",\"response_id\":\"{resp}\",\"usage\":{u},\"turn_token_usage\":{u},\"thread_token_usage\":{tot},\"attribution\":{{\"model\":\"{m}\",\"model_provider\":\"openai\",\"service_tier\":\"default\",\"context_length\":272000}},\"completed_at_ms\":{ts}}}",
                th = self.thread,
                u = last.json(true),
                tot = self.total.json(true),
                m = self.model.as_deref().unwrap_or(""),
            );
            witnesses.push(self.push(ts, "token_usage_record", &record));
            ctx.traps.codex_usage_records += 1;
            if ctx.rng.random_ratio(1, 10) {
                // The same record written again.
                witnesses.push(self.push(ts, "token_usage_record", &record));
                ctx.traps.codex_usage_records += 1;
            }
            if ctx.rng.random_ratio(1, 12) {
                let t2 = self.tick(ctx, 10, 500);
                let p = format!(
                    "{{\"message\":\"[compacted summary]\",\"replacement_history\":[],\"latest_token_usage_record\":{record}}}"
                );
                self.push(t2, "compacted", &p);
                ctx.traps.codex_compacted_copies += 1;
            }
        }
        let model = self.model.clone().unwrap_or_else(|| UNKNOWN_MODEL.into());
        if self.model.is_none() {
            ctx.traps.codex_unknown_model_events += 1;
        }
        self.events
            .push((model, ts.div_euclid(1000), last.tokens(), witnesses));

        // Re-emitted token_count lines with unchanged totals.
        while ctx.rng.random_ratio(2, 5) {
            let ts = self.tick(ctx, 10, 30_000);
            self.token_count(ctx, ts, &last);
            ctx.traps.codex_reemitted += 1;
        }

        let ts = self.tick(ctx, 10, 2_000);
        let msg = ctx.text(50, 400);
        self.push(
            ts,
            "event_msg",
            &format!("{{\"type\":\"agent_message\",\"message\":\"{msg}\"}}"),
        );
        self.safe_cuts.push(self.lines.len());
    }

    fn file(&self, rel: PathBuf, enc: Enc, lines: Vec<String>, cuts: bool) -> FileOut {
        FileOut {
            rel,
            enc,
            lines,
            safe_cuts: cuts.then(|| self.safe_cuts.clone()),
        }
    }
}

fn session_meta(ts: i64, id: &str, cwd: &str, new_fmt: bool, extra: &str) -> String {
    let version = if new_fmt { "0.146.0" } else { "0.46.0" };
    format!(
        "{{\"timestamp\":\"{t}\",\"type\":\"session_meta\",\"payload\":{{\"id\":\"{id}\",\"timestamp\":\"{t}\",\"cwd\":\"{cwd}\",\"originator\":\"codex_cli_rs\",\"cli_version\":\"{version}\",\"instructions\":null,\"model_provider\":\"openai\"{extra},\"git\":{{\"commit_hash\":\"e4b91cc29da68a6fee1edaf44ce50a64bfbdce63\",\"branch\":\"main\",\"repository_url\":\"https://example.invalid/repo.git\"}}}}}}",
        t = fmt_ts(ts)
    )
}

fn rollout_name(ts: i64, id: &str) -> (PathBuf, String) {
    let (y, m, d, stamp) = rollout_stamp(ts);
    let name = format!("rollout-{stamp}-{id}.jsonl");
    (
        PathBuf::from(".codex/sessions").join(y).join(m).join(d),
        name,
    )
}

/// Rewrites the envelope timestamp of a generated line (`{"timestamp":"<24 chars>"...`).
fn restamp(line: &str, ts: i64) -> String {
    format!("{}{}{}", &line[..14], fmt_ts(ts), &line[38..])
}

pub(crate) fn session(ctx: &mut Ctx, turns: usize) -> SessionOut {
    let mut out = SessionOut::default();
    let start = ctx.start_ms();
    let new_fmt = ctx.codex_n % 5 < 2;
    let rate = if new_fmt {
        RateStyle::Current
    } else if ctx.rng.random_bool(0.5) {
        RateStyle::Flat
    } else {
        RateStyle::Nested
    };
    let thread = uuid(&mut ctx.rng);
    let cwd = format!("/home/dev/project-{}", ctx.rng.random_range(0..12));
    let mut r = Roll {
        thread: thread.clone(),
        lines: vec![session_meta(start, &thread, &cwd, new_fmt, "")],
        t: start,
        total: Usage::default(),
        model: None,
        new_fmt,
        rate,
        cwd: cwd.clone(),
        events: Vec::new(),
        safe_cuts: Vec::new(),
        replayable: Vec::new(),
    };
    // Usage before any turn_context: the model is unknown (old builds only).
    if new_fmt || !ctx.rng.random_ratio(1, 5) {
        let ts = r.tick(ctx, 100, 2_000);
        let m = MODELS[ctx.rng.random_range(0..MODELS.len())];
        r.turn_context(ts, m);
    }
    // The first cut is after the first turn: a cut before it would leave a file of metadata only.
    r.turn(ctx);
    r.safe_cuts.clear();
    for _ in 1..turns {
        r.turn(ctx);
    }

    let (dir, name) = rollout_name(start, &thread);
    let plain = dir.join(&name);
    let archived = PathBuf::from(".codex/archived_sessions").join(&name);
    let zst = dir.join(format!("{name}.zst"));
    // Placements cycle so that every kind exists in any corpus of 20 or more rollouts.
    let roll = (ctx.codex_n % 20) * 5 + ctx.rng.random_range(0..5);
    ctx.codex_n += 1;
    let all = r.lines.clone();
    let mut fork = false;
    match roll {
        0..=7 => {
            out.files.push(r.file(archived, Enc::Plain, all, false));
            ctx.traps.codex_archived_only += 1;
        }
        8..=14 => {
            out.files
                .push(r.file(plain, Enc::Plain, all.clone(), false));
            out.files.push(r.file(archived, Enc::Plain, all, false));
            ctx.traps.codex_archived_duplicates += 1;
        }
        15..=24 => {
            out.files.push(r.file(zst, Enc::Zst, all, false));
            ctx.traps.codex_zst_only += 1;
        }
        25..=29 => {
            let az = PathBuf::from(".codex/archived_sessions").join(format!("{name}.zst"));
            out.files.push(r.file(az, Enc::Zst, all, false));
            ctx.traps.codex_zst_only += 1;
        }
        30..=37 => {
            // Resumed after compression: the plain file holds the compressed lines plus more.
            let cut = if r.safe_cuts.is_empty() || ctx.rng.random_ratio(1, 3) {
                all.len()
            } else {
                r.safe_cuts[ctx.rng.random_range(0..r.safe_cuts.len())]
            };
            out.files
                .push(r.file(zst, Enc::Zst, all[..cut].to_vec(), false));
            out.files.push(r.file(plain, Enc::Plain, all, false));
            ctx.traps.codex_zst_and_plain += 1;
        }
        38..=47 => {
            out.files.push(r.file(plain, Enc::Plain, all, false));
            fork = !r.safe_cuts.is_empty();
        }
        _ => out.files.push(r.file(plain, Enc::Plain, all, true)),
    }
    for (model, ts, tokens, w) in &r.events {
        let mut witnesses = Vec::new();
        for fi in 0..out.files.len() {
            for li in w {
                if *li < out.files[fi].lines.len() {
                    witnesses.push((fi, *li));
                }
            }
        }
        out.events.push(Ev {
            source: Source::Codex,
            model: model.clone(),
            ts: *ts,
            tokens: *tokens,
            witnesses,
        });
    }
    if fork {
        fork_child(ctx, &r, &mut out);
    }
    if ctx.codex_n % 16 == 3 {
        legacy_file(ctx, &mut out);
    }
    out
}

/// A fork or spawned subagent of `parent`: its own meta, a copy of the parent's meta, a burst
/// replaying the parent's history at the fork second, then its own turns.
fn fork_child(ctx: &mut Ctx, parent: &Roll, out: &mut SessionOut) {
    let cut = parent.safe_cuts[ctx.rng.random_range(0..parent.safe_cuts.len())];
    let fork_ms = parse_ms(&parent.lines[cut - 1][14..38]) + ctx.rng.random_range(1_000..30_000);
    let fork_sec = fork_ms - fork_ms.rem_euclid(1000);
    let child = uuid(&mut ctx.rng);
    let extra = if parent.new_fmt {
        format!(
            ",\"source\":{{\"subagent\":{{\"thread_spawn\":{{\"parent_thread_id\":\"{}\",\"depth\":1,\"agent_nickname\":\"explorer\"}}}}}}",
            parent.thread
        )
    } else {
        format!(",\"forked_from_id\":\"{}\"", parent.thread)
    };
    let mut lines = vec![session_meta(
        fork_sec,
        &child,
        &parent.cwd,
        parent.new_fmt,
        &extra,
    )];
    lines.push(restamp(&parent.lines[0], fork_sec + 1));
    // Replay: the parent's turn_context and token_count lines before the cut, all stamped within
    // the fork second; the totals of the last one are the child's baseline.
    let mut base = Usage::default();
    for (ms, &i) in (fork_sec + 2..).zip(parent.replayable.iter().filter(|&&i| i < cut)) {
        if let Some(t) = total_of(&parent.lines[i]) {
            base = t;
        }
        lines.push(restamp(&parent.lines[i], ms.min(fork_sec + 999)));
        ctx.traps.codex_replayed_lines += 1;
    }
    let mut r = Roll {
        thread: child.clone(),
        lines,
        t: fork_sec + ctx.rng.random_range(3_000..20_000),
        total: base,
        model: None,
        new_fmt: parent.new_fmt,
        rate: parent.rate,
        cwd: parent.cwd.clone(),
        events: Vec::new(),
        safe_cuts: Vec::new(),
        replayable: Vec::new(),
    };
    let m = MODELS[ctx.rng.random_range(0..MODELS.len())];
    let ts = r.t;
    r.turn_context(ts, m);
    let turns = ctx.rng.random_range(1..6);
    for _ in 0..turns {
        r.turn(ctx);
    }
    // The last cut is the end of the file; drop it and any cut inside the replay.
    r.safe_cuts.pop();
    let (dir, name) = rollout_name(fork_sec, &child);
    let fi = out.files.len();
    let lines = r.lines.clone();
    out.files
        .push(r.file(dir.join(name), Enc::Plain, lines, true));
    for (model, ts, tokens, w) in r.events {
        out.events.push(Ev {
            source: Source::Codex,
            model,
            ts,
            tokens,
            witnesses: w.into_iter().map(|li| (fi, li)).collect(),
        });
    }
    ctx.traps.codex_forks += 1;
}

fn parse_ms(s: &str) -> i64 {
    // `YYYY-MM-DDThh:mm:ss.mmmZ`
    let n = |a: usize, b: usize| s[a..b].parse::<i64>().unwrap_or(0);
    let days = crate::util::days_from_civil(n(0, 4), n(5, 7), n(8, 10));
    ((days * 86_400 + n(11, 13) * 3600 + n(14, 16) * 60 + n(17, 19)) * 1000) + n(20, 23)
}

fn total_of(line: &str) -> Option<Usage> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let t = &v["payload"]["info"]["total_token_usage"];
    if !t.is_object() {
        return None;
    }
    let g = |k: &str| t[k].as_u64().unwrap_or(0);
    Some(Usage {
        input: g("input_tokens"),
        cached: g("cached_input_tokens"),
        cache_write: g("cache_write_input_tokens"),
        output: g("output_tokens"),
        reasoning: g("reasoning_output_tokens"),
    })
}

/// A rollout from before the envelope (and before token_count): no usage at all.
fn legacy_file(ctx: &mut Ctx, out: &mut SessionOut) {
    let id = uuid(&mut ctx.rng);
    let ts =
        crate::util::days_from_civil(2025, 8, 1) * 86_400_000 + ctx.rng.random_range(0..86_400_000);
    let (dir, name) = rollout_name(ts, &id);
    let mut lines = vec![format!(
        "{{\"id\":\"{id}\",\"timestamp\":\"{}\",\"instructions\":null}}",
        fmt_ts(ts)
    )];
    for _ in 0..ctx.rng.random_range(2..10) {
        let text = ctx.filler.take(&mut ctx.rng, 200);
        lines.push(format!(
            "{{\"type\":\"message\",\"role\":\"user\",\"content\":[{{\"type\":\"input_text\",\"text\":\"{text}\"}}]}}"
        ));
    }
    out.files.push(FileOut {
        rel: dir.join(name),
        enc: Enc::Plain,
        lines,
        safe_cuts: None,
    });
    ctx.traps.codex_legacy_files += 1;
}
