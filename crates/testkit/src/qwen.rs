//! Qwen Code chats (agent-log-formats.md section 6) under
//! `~/.qwen/projects/<sanitized-cwd>/chats/<sessionId>.jsonl`: each billed call is an
//! `assistant` line with `usageMetadata`, and most are logged again as a `system` /
//! `ui_telemetry` line (`qwen-code.api_response`) that must not count a second time.

use crate::agents::{AgentTraps, Written};
use crate::util::{fmt_ts, uuid};
use crate::Ctx;
use rand::Rng;
use serde_json::json;
use std::path::PathBuf;
use tokenledger_core::{Source, TokenCounts};

const MODELS: &[&str] = &["qwen3-coder-plus", "coder-model", "qwen3-coder-flash"];

/// One Qwen session of `turns` calls.
pub(crate) fn session(ctx: &mut Ctx, traps: &mut AgentTraps, turns: usize, round: u64) -> Written {
    traps.qwen_sessions += 1;
    let session = uuid(&mut ctx.rng);
    let cwd = format!("/home/dev/qwen-proj-{}", round % 3);
    let slug = cwd.replace('/', "-");
    let rel = PathBuf::from(format!(".qwen/projects/{slug}/chats/{session}.jsonl"));
    let mut t = ctx.start_ms();
    let mut model = MODELS[ctx.rng.random_range(0..MODELS.len())].to_string();
    let mut parent: Option<String> = None;
    let mut lines = Vec::new();
    let mut w = Written::default();
    for _ in 0..turns {
        t += ctx.rng.random_range(5_000..100_000);
        let u = uuid(&mut ctx.rng);
        lines.push(
            json!({
                "uuid": u, "parentUuid": parent, "sessionId": session,
                "timestamp": fmt_ts(t), "type": "user", "cwd": cwd, "version": "0.18.1",
                "message": {"role": "user", "parts": [{"text": ctx.text(40, 500)}]},
            })
            .to_string(),
        );
        parent = Some(u);
        t += ctx.rng.random_range(1_000..30_000);
        if ctx.rng.random_ratio(1, 10) {
            model = MODELS[ctx.rng.random_range(0..MODELS.len())].to_string();
        }
        let prompt = ctx.rng.random_range(1_000..70_000u64);
        let cached = ctx.rng.random_range(0..=prompt * 9 / 10);
        let cand = ctx.rng.random_range(5..3_000u64);
        let thoughts = if ctx.rng.random_ratio(1, 3) {
            ctx.rng.random_range(0..1_500u64)
        } else {
            0
        };
        let a = uuid(&mut ctx.rng);
        lines.push(
            json!({
                "uuid": a, "parentUuid": parent, "sessionId": session,
                "timestamp": fmt_ts(t), "type": "assistant", "cwd": cwd, "version": "0.18.1",
                "model": model,
                "message": {"role": "model", "parts": [{"text": ctx.text(80, 1500)}]},
                "usageMetadata": {
                    "promptTokenCount": prompt, "candidatesTokenCount": cand,
                    "thoughtsTokenCount": thoughts, "cachedContentTokenCount": cached,
                    "totalTokenCount": prompt + cand + thoughts,
                },
            })
            .to_string(),
        );
        parent = Some(a);
        w.calls.push((
            Source::Qwen,
            model.clone(),
            t.div_euclid(1000),
            TokenCounts::new(prompt, cached, 0, cand + thoughts, thoughts),
        ));
        if ctx.rng.random_ratio(4, 5) {
            let s = uuid(&mut ctx.rng);
            lines.push(
                json!({
                    "uuid": s, "parentUuid": parent, "sessionId": session,
                    "timestamp": fmt_ts(t + 3), "type": "system", "subtype": "ui_telemetry",
                    "cwd": cwd, "version": "0.18.1",
                    "systemPayload": {"uiEvent": {
                        "event.name": "qwen-code.api_response",
                        "event.timestamp": fmt_ts(t + 3),
                        "model": model, "status_code": 200, "duration_ms": 1800,
                        "input_token_count": prompt, "output_token_count": cand,
                        "cached_content_token_count": cached,
                        "thoughts_token_count": thoughts, "tool_token_count": 0,
                        "total_token_count": prompt + cand + thoughts,
                    }},
                })
                .to_string(),
            );
            traps.qwen_telemetry_duplicates += 1;
        }
    }
    let mut data = Vec::new();
    for l in &lines {
        data.extend_from_slice(l.as_bytes());
        data.push(b'\n');
    }
    w.files.push((rel, data));
    w
}
