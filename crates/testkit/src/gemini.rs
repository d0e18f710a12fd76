//! Gemini CLI chats (agent-log-formats.md section 4) under `~/.gemini/tmp/<project>/chats/`.
//!
//! Variants by round: 0 a `.jsonl` with re-appended messages and `$set` patches; 1 a `.jsonl`
//! with `$rewindTo` (the rewound calls were billed) and a `$set.messages` rewrite; 2 a legacy
//! whole-file `.json`; 3 a legacy `.json` resumed into its `.jsonl` copy, which repeats all its
//! messages and goes on; 4 a `.jsonl` parent with a subagent chat in `chats/<parentId>/`.

use crate::agents::{AgentTraps, Written};
use crate::util::{fmt_ts, id, uuid};
use crate::Ctx;
use rand::Rng;
use serde_json::{json, Value};
use std::path::PathBuf;
use tokenledger_core::{Source, TokenCounts, UNKNOWN_MODEL};

const MODELS: &[&str] = &[
    "gemini-2.5-pro",
    "gemini-2.5-flash",
    "gemini-3-flash-preview",
];
const PROJECTS: &[&str] = &[
    "0b7dfb1274ee51b336813b17f2ddab1f56b6591f723e7314126bbd502c69e9c9",
    "5e2c4a0f9d3b7e61c8a1f0e2d4b6a8c0e1f3a5b7c9d0e2f4a6b8c0d2e4f6a8b0",
    "9a8b7c6d5e4f30211203f4e5d6c7b8a9f0e1d2c3b4a59687f0e1d2c3b4a59687",
];

/// A chat under construction: its records in order, the final message objects by position.
struct Chat {
    session: String,
    t: i64,
    model: String,
    /// The current conversation (final records), for `$set.messages` and legacy documents.
    messages: Vec<Value>,
    /// Lines of the `.jsonl` form.
    lines: Vec<String>,
}

impl Chat {
    fn meta(&self, project: &str, kind: &str) -> String {
        json!({
            "sessionId": self.session,
            "projectHash": project,
            "startTime": fmt_ts(self.t),
            "lastUpdated": fmt_ts(self.t),
            "kind": kind,
        })
        .to_string()
    }
}

/// Appends one user turn and one billed `gemini` reply; returns the call.
fn turn(
    ctx: &mut Ctx,
    traps: &mut AgentTraps,
    chat: &mut Chat,
    jsonl: bool,
) -> (Source, String, i64, TokenCounts) {
    chat.t += ctx.rng.random_range(5_000..120_000);
    let user = json!({
        "id": id(&mut ctx.rng, "u-", 10),
        "timestamp": fmt_ts(chat.t),
        "type": "user",
        "content": [{"text": ctx.text(40, 400)}],
    });
    chat.t += ctx.rng.random_range(1_000..30_000);
    if ctx.rng.random_ratio(1, 10) {
        chat.model = MODELS[ctx.rng.random_range(0..MODELS.len())].to_string();
    }
    let input = ctx.rng.random_range(2_000..90_000u64);
    let output = ctx.rng.random_range(10..3_000u64);
    let cached = ctx.rng.random_range(0..=input * 9 / 10);
    let thoughts = if ctx.rng.random_ratio(1, 2) {
        ctx.rng.random_range(0..2_000u64)
    } else {
        0
    };
    let tool = if ctx.rng.random_ratio(1, 4) {
        ctx.rng.random_range(0..500u64)
    } else {
        0
    };
    let no_model = ctx.rng.random_ratio(1, 25);
    let gid = id(&mut ctx.rng, "g-", 12);
    let mut reply = json!({
        "id": gid,
        "timestamp": fmt_ts(chat.t),
        "type": "gemini",
        "content": ctx.text(100, 1500),
        "thoughts": [],
        "tokens": {
            "input": input, "output": output, "cached": cached,
            "thoughts": thoughts, "tool": tool,
            "total": input + output + thoughts + tool,
        },
        "model": chat.model,
    });
    let model = if no_model {
        traps.gemini_unknown_model += 1;
        reply.as_object_mut().map(|o| o.remove("model"));
        UNKNOWN_MODEL.to_string()
    } else {
        chat.model.clone()
    };
    if jsonl {
        chat.lines.push(user.to_string());
        if ctx.rng.random_ratio(1, 2) {
            // Re-appended as it changes: first without usage, or with the prompt count only.
            let mut early = reply.clone();
            if ctx.rng.random_ratio(1, 2) {
                early.as_object_mut().map(|o| o.remove("tokens"));
            } else {
                early["tokens"]["output"] = 0.into();
                early["tokens"]["thoughts"] = 0.into();
                early["tokens"]["total"] = (input + tool).into();
            }
            early["content"] = "".into();
            chat.lines.push(early.to_string());
            traps.gemini_reappended += 1;
        }
        chat.lines.push(reply.to_string());
        if ctx.rng.random_ratio(1, 4) {
            // Tool calls added: the whole message again, same tokens.
            let mut again = reply.clone();
            again["toolCalls"] =
                json!([{"id": "call-1", "name": "read_file", "status": "success"}]);
            chat.lines.push(again.to_string());
            reply = again;
            traps.gemini_reappended += 1;
        }
        if ctx.rng.random_ratio(1, 5) {
            chat.lines
                .push(json!({"$set": {"lastUpdated": fmt_ts(chat.t)}}).to_string());
            traps.gemini_set_patches += 1;
        }
    }
    chat.messages.push(user);
    chat.messages.push(reply);
    (
        Source::Gemini,
        model,
        chat.t.div_euclid(1000),
        TokenCounts::new(input + tool, cached, 0, output + thoughts, thoughts),
    )
}

fn jsonl_bytes(lines: &[String]) -> Vec<u8> {
    let mut data = Vec::new();
    for l in lines {
        data.extend_from_slice(l.as_bytes());
        data.push(b'\n');
    }
    data
}

fn new_chat(ctx: &mut Ctx, t: i64) -> Chat {
    Chat {
        session: uuid(&mut ctx.rng),
        t,
        model: MODELS[ctx.rng.random_range(0..MODELS.len())].to_string(),
        messages: Vec::new(),
        lines: Vec::new(),
    }
}

fn file_name(chat: &Chat) -> String {
    let ts = fmt_ts(chat.t);
    format!(
        "session-{}-{}",
        &ts[..16].replace(':', "-"),
        &chat.session[..8]
    )
}

/// One Gemini session (one or two chats) of about `turns` replies.
pub(crate) fn session(ctx: &mut Ctx, traps: &mut AgentTraps, turns: usize, round: u64) -> Written {
    traps.gemini_sessions += 1;
    let project = PROJECTS[(round % PROJECTS.len() as u64) as usize];
    let dir = PathBuf::from(format!(".gemini/tmp/{project}/chats"));
    let start = ctx.start_ms();
    let mut chat = new_chat(ctx, start);
    let name = file_name(&chat);
    let mut w = Written::default();
    let variant = round % 5;
    match variant {
        0 | 1 | 4 => {
            chat.lines.push(chat.meta(project, "main"));
            let rewind_at = (variant == 1 && turns >= 2).then(|| ctx.rng.random_range(1..turns));
            for i in 0..turns {
                if Some(i) == rewind_at {
                    // Rewind to an earlier user message: it and everything after leave the
                    // conversation, not the bill.
                    let k = ctx.rng.random_range(0..chat.messages.len() / 2) * 2;
                    let target = chat.messages[k]["id"].clone();
                    traps.gemini_rewound_billed += ((chat.messages.len() - k) / 2) as u64;
                    chat.messages.truncate(k);
                    chat.lines.push(json!({"$rewindTo": target}).to_string());
                    traps.gemini_rewinds += 1;
                }
                let c = turn(ctx, traps, &mut chat, true);
                w.calls.push(c);
            }
            if variant == 1 {
                chat.lines.push(
                    json!({"$set": {"messages": chat.messages, "lastUpdated": fmt_ts(chat.t)}})
                        .to_string(),
                );
                traps.gemini_set_messages += 1;
            }
            w.files
                .push((dir.join(format!("{name}.jsonl")), jsonl_bytes(&chat.lines)));
            if variant == 4 {
                let mut sub = new_chat(ctx, chat.t - 60_000);
                sub.lines.push(sub.meta(project, "subagent"));
                for _ in 0..turns.div_ceil(2) {
                    let c = turn(ctx, traps, &mut sub, true);
                    w.calls.push(c);
                }
                w.files.push((
                    dir.join(&chat.session)
                        .join(format!("{}.jsonl", sub.session)),
                    jsonl_bytes(&sub.lines),
                ));
                traps.gemini_subagent_chats += 1;
            }
        }
        _ => {
            // Legacy whole document.
            let first = if variant == 3 {
                turns.div_ceil(2)
            } else {
                turns
            };
            for _ in 0..first {
                let c = turn(ctx, traps, &mut chat, false);
                w.calls.push(c);
            }
            let doc = json!({
                "sessionId": chat.session,
                "projectHash": project,
                "startTime": fmt_ts(start),
                "lastUpdated": fmt_ts(chat.t),
                "messages": chat.messages,
            });
            let text = serde_json::to_vec_pretty(&doc).unwrap_or_default();
            w.files.push((dir.join(format!("{name}.json")), text));
            traps.gemini_legacy_json += 1;
            if variant == 3 {
                // Resumed: the `.jsonl` copy repeats every message, then goes on.
                chat.lines.push(chat.meta(project, "main"));
                for m in &chat.messages {
                    chat.lines.push(m.to_string());
                }
                for _ in first..turns.max(first + 1) {
                    let c = turn(ctx, traps, &mut chat, true);
                    w.calls.push(c);
                }
                w.files
                    .push((dir.join(format!("{name}.jsonl")), jsonl_bytes(&chat.lines)));
                traps.gemini_legacy_with_jsonl_copy += 1;
            }
        }
    }
    w
}
