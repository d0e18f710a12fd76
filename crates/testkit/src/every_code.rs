//! Every Code rollouts (agent-log-formats.md section 2) under `~/.code/sessions/`: the Codex
//! envelope with originator `code_cli_rs` and usage on `"type":"event"` lines (`payload.msg`).
//!
//! Planted: re-emitted `token_count` events (unchanged totals), rate-limit-only events
//! (`info: null`), model changes, sessions whose model is only in `info.latest_response_model`,
//! and sessions with no model anywhere (`unknown`), some in a half hour that also has a known
//! Every Code model, most alone (the nearest-Codex step of the reassignment).

use crate::agents::{AgentTraps, Written};
use crate::util::{fmt_ts, rollout_stamp, uuid};
use crate::Ctx;
use rand::Rng;
use std::path::PathBuf;
use tokenledger_core::{Source, TokenCounts, UNKNOWN_MODEL};

const MODELS: &[&str] = &["gpt-5.1-codex", "gpt-5-codex", "gpt-5.2"];

#[derive(Clone, Copy, Default)]
struct Usage {
    input: u64,
    cached: u64,
    cache_write: u64,
    output: u64,
    reasoning: u64,
}

impl Usage {
    fn json(&self) -> String {
        format!(
            "{{\"input_tokens\":{},\"cached_input_tokens\":{},\"cache_write_input_tokens\":{},\"output_tokens\":{},\"reasoning_output_tokens\":{},\"total_tokens\":{}}}",
            self.input,
            self.cached,
            self.cache_write,
            self.output,
            self.reasoning,
            self.input + self.output
        )
    }
}

/// One Every Code session of `turns` responses; `round` cycles the planted variants.
pub(crate) fn session(
    ctx: &mut Ctx,
    traps: &mut AgentTraps,
    last_start: &mut Option<i64>,
    turns: usize,
    round: u64,
) -> Written {
    traps.every_code_sessions += 1;
    // 0, 1, 3: turn_context models; 2: no model anywhere; 4: model only in `info`;
    // 5: unknown, started right next to the previous session (shares its half hour).
    let variant = round % 6;
    let unknown = variant == 2 || variant == 5;
    let info_model = variant == 4;
    let mut t = if variant == 5 {
        last_start.unwrap_or_else(|| ctx.start_ms()) + 20_000
    } else {
        ctx.start_ms()
    };
    *last_start = Some(t);
    let thread = uuid(&mut ctx.rng);
    let (y, m, d, stamp) = rollout_stamp(t);
    let rel = PathBuf::from(format!(
        ".code/sessions/{y}/{m}/{d}/rollout-{stamp}-{thread}.jsonl"
    ));
    let cwd = format!("/home/dev/code-proj-{}", round % 3);
    let mut lines = Vec::new();
    let mut calls = Vec::new();
    lines.push(format!(
        "{{\"timestamp\":\"{ts}\",\"type\":\"session_meta\",\"payload\":{{\"id\":\"{thread}\",\"timestamp\":\"{ts}\",\"cwd\":\"{cwd}\",\"originator\":\"code_cli_rs\",\"cli_version\":\"0.5.{v}\",\"instructions\":null,\"git\":{{\"commit_hash\":\"0f3c\",\"branch\":\"main\"}}}}}}",
        ts = fmt_ts(t),
        v = round % 9
    ));
    let mut model = MODELS[ctx.rng.random_range(0..MODELS.len())].to_string();
    if !unknown && !info_model {
        lines.push(turn_context(t, &cwd, &model));
    } else if info_model {
        traps.every_code_info_model_only_sessions += 1;
    }
    let mut total = Usage::default();
    let mut seq = 0u64;
    for turn in 0..turns {
        t += ctx.rng.random_range(4_000..90_000);
        if !unknown && !info_model && turn > 0 && ctx.rng.random_ratio(1, 12) {
            model = MODELS[ctx.rng.random_range(0..MODELS.len())].to_string();
            lines.push(turn_context(t, &cwd, &model));
        }
        let text = ctx.text(80, 600);
        lines.push(format!(
            "{{\"timestamp\":\"{}\",\"type\":\"response_item\",\"payload\":{{\"type\":\"message\",\"role\":\"user\",\"content\":[{{\"type\":\"input_text\",\"text\":\"{text}\"}}]}}}}",
            fmt_ts(t)
        ));
        t += ctx.rng.random_range(1_000..20_000);
        let out = ctx.text(200, 2400);
        lines.push(format!(
            "{{\"timestamp\":\"{}\",\"type\":\"response_item\",\"payload\":{{\"type\":\"function_call_output\",\"call_id\":\"call_{turn}\",\"output\":\"{out}\"}}}}",
            fmt_ts(t)
        ));
        let input = ctx.rng.random_range(3_000..80_000u64);
        let output = ctx.rng.random_range(20..4_000u64);
        let u = Usage {
            input,
            cached: ctx.rng.random_range(0..=input * 9 / 10),
            cache_write: if ctx.rng.random_ratio(1, 4) {
                ctx.rng.random_range(0..input / 10)
            } else {
                0
            },
            output,
            reasoning: ctx.rng.random_range(0..=output),
        };
        total.input += u.input;
        total.cached += u.cached;
        total.cache_write += u.cache_write;
        total.output += u.output;
        total.reasoning += u.reasoning;
        seq += 1;
        let info_extra = if info_model {
            format!(",\"requested_model\":\"{model}\",\"latest_response_model\":\"{model}\"")
        } else {
            String::new()
        };
        let info = format!(
            "{{\"total_token_usage\":{},\"last_token_usage\":{},\"model_context_window\":272000{info_extra}}}",
            total.json(),
            u.json()
        );
        let line = event_line(ctx, t, turn, seq, &info);
        lines.push(line);
        traps.every_code_event_lines += 1;
        let m = if unknown {
            traps.every_code_unknown_model_events += 1;
            UNKNOWN_MODEL.to_string()
        } else {
            model.clone()
        };
        calls.push((
            Source::EveryCode,
            m,
            t.div_euclid(1000),
            TokenCounts::new(u.input, u.cached, u.cache_write, u.output, u.reasoning),
        ));
        if ctx.rng.random_ratio(1, 3) {
            // The UI refreshed: the same totals again.
            t += ctx.rng.random_range(100..3_000);
            seq += 1;
            lines.push(event_line(ctx, t, turn, seq, &info));
            traps.every_code_reemitted += 1;
        }
        if ctx.rng.random_ratio(1, 6) {
            t += ctx.rng.random_range(100..3_000);
            seq += 1;
            lines.push(event_line(ctx, t, turn, seq, "null"));
            traps.every_code_rate_limit_only += 1;
        }
        lines.push(format!(
            "{{\"timestamp\":\"{}\",\"type\":\"event\",\"payload\":{{\"id\":\"sub-{turn}\",\"event_seq\":{},\"msg\":{{\"type\":\"agent_message\",\"message\":\"{}\"}}}}}}",
            fmt_ts(t),
            seq + 1,
            ctx.text(40, 300)
        ));
        seq += 1;
    }
    let mut data = Vec::new();
    for l in &lines {
        data.extend_from_slice(l.as_bytes());
        data.push(b'\n');
    }
    Written {
        files: vec![(rel, data)],
        calls,
    }
}

fn turn_context(t: i64, cwd: &str, model: &str) -> String {
    format!(
        "{{\"timestamp\":\"{}\",\"type\":\"turn_context\",\"payload\":{{\"cwd\":\"{cwd}\",\"approval_policy\":\"on-request\",\"model\":\"{model}\",\"summary\":\"auto\"}}}}",
        fmt_ts(t)
    )
}

fn event_line(ctx: &mut Ctx, t: i64, turn: usize, seq: u64, info: &str) -> String {
    let p = ctx.rng.random_range(0..100u32);
    let s = ctx.rng.random_range(0..100u32);
    format!(
        "{{\"timestamp\":\"{}\",\"type\":\"event\",\"payload\":{{\"id\":\"sub-{turn}\",\"event_seq\":{seq},\"order\":{{\"request_ordinal\":{turn},\"output_index\":0,\"sequence_number\":{seq}}},\"msg\":{{\"type\":\"token_count\",\"info\":{info},\"rate_limits\":{{\"primary\":{{\"used_percent\":{p}.0,\"window_minutes\":300,\"resets_in_seconds\":{}}},\"secondary\":{{\"used_percent\":{s}.0,\"window_minutes\":10080,\"resets_in_seconds\":{}}}}}}}}}}}",
        fmt_ts(t),
        3600 + p * 10,
        86_400 + s * 100
    )
}
