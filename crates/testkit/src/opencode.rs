//! OpenCode (agent-log-formats.md section 5): one `opencode.db` SQLite database with the
//! `session`, `message` and `part` tables of v1.2+, under `~/.local/share/opencode/`.
//!
//! Planted: multi-step (tool-calling) messages whose own `tokens` keep only the last step while
//! their `step-finish` parts hold every step; single-step messages with no `step-finish` part
//! (their own tokens count); all-zero assistant rows (in progress or aborted: not calls);
//! subagent sessions (`parent_id`); and, for the first sessions, a legacy JSON store copy of the
//! same messages in `storage/`, which must not be read while the database exists.

use crate::agents::{AgentTraps, Written};
use crate::util::id;
use crate::Ctx;
use rand::Rng;
use rusqlite::{params, Connection};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use tokenledger_core::{Source, TokenCounts};

/// Where the database goes, relative to HOME.
pub const DB_REL: &str = ".local/share/opencode/opencode.db";

const MODELS: &[(&str, &str)] = &[
    ("anthropic", "claude-sonnet-4-5"),
    ("openai", "gpt-5.1-codex"),
    ("github-copilot", "claude-sonnet-4.6"),
];

/// Rows to write, and the calls they bill.
#[derive(Default)]
pub(crate) struct Db {
    sessions: Vec<(String, String, Option<String>, String, i64)>,
    /// (id, session id, time_created, data)
    messages: Vec<(String, String, i64, String)>,
    /// (id, message id, session id, time_created, data)
    parts: Vec<(String, String, String, i64, String)>,
    pub calls: Vec<(Source, String, i64, TokenCounts)>,
    /// Bytes of row data so far (to size the corpus).
    pub bytes: u64,
}

#[derive(Clone, Copy, Default)]
struct Raw {
    input: u64,
    output: u64,
    reasoning: u64,
    read: u64,
    write: u64,
}

impl Raw {
    fn json(&self) -> Value {
        json!({
            "total": self.input + self.output + self.reasoning + self.read + self.write,
            "input": self.input, "output": self.output, "reasoning": self.reasoning,
            "cache": {"read": self.read, "write": self.write},
        })
    }
}

impl Db {
    /// Writes the database (rollback journal, so a test can lock it); returns its size.
    pub fn write(&self, path: &Path) -> rusqlite::Result<u64> {
        let _ = std::fs::remove_file(path);
        let mut conn = Connection::open(path)?;
        conn.execute_batch(
            "CREATE TABLE session (id TEXT PRIMARY KEY, project_id TEXT NOT NULL, parent_id TEXT, \
               slug TEXT, directory TEXT NOT NULL, title TEXT NOT NULL, version TEXT NOT NULL, \
               time_created INTEGER NOT NULL, time_updated INTEGER NOT NULL);
             CREATE TABLE message (id TEXT PRIMARY KEY, session_id TEXT NOT NULL, \
               time_created INTEGER NOT NULL, time_updated INTEGER NOT NULL, data TEXT NOT NULL);
             CREATE TABLE part (id TEXT PRIMARY KEY, message_id TEXT NOT NULL, \
               session_id TEXT NOT NULL, time_created INTEGER NOT NULL, \
               time_updated INTEGER NOT NULL, data TEXT NOT NULL);
             CREATE INDEX message_session_idx ON message (session_id);
             CREATE INDEX part_message_idx ON part (message_id);",
        )?;
        let tx = conn.transaction()?;
        {
            let mut s = tx.prepare(
                "INSERT INTO session VALUES (?1, 'prj_generated', ?2, NULL, ?3, ?4, '1.2.10', ?5, ?5)",
            )?;
            for (id, _, parent, dir, t) in &self.sessions {
                s.execute(params![id, parent, dir, format!("session {id}"), t])?;
            }
            let mut m = tx.prepare("INSERT INTO message VALUES (?1, ?2, ?3, ?3, ?4)")?;
            for (id, sid, t, data) in &self.messages {
                m.execute(params![id, sid, t, data])?;
            }
            let mut p = tx.prepare("INSERT INTO part VALUES (?1, ?2, ?3, ?4, ?4, ?5)")?;
            for (id, mid, sid, t, data) in &self.parts {
                p.execute(params![id, mid, sid, t, data])?;
            }
        }
        tx.commit()?;
        drop(conn);
        Ok(std::fs::metadata(path).map(|m| m.len()).unwrap_or(0))
    }

    fn part(&mut self, mid: &str, sid: &str, t: i64, data: Value, rng: &mut rand::rngs::StdRng) {
        let pid = id(rng, "prt_", 26);
        let mut data = data;
        data["id"] = pid.clone().into();
        data["messageID"] = mid.into();
        data["sessionID"] = sid.into();
        let text = data.to_string();
        self.bytes += text.len() as u64;
        self.parts
            .push((pid, mid.to_string(), sid.to_string(), t, text));
    }
}

fn raw(ctx: &mut Ctx, provider: &str) -> Raw {
    let read = ctx.rng.random_range(0..60_000u64);
    Raw {
        input: ctx.rng.random_range(1..8_000u64),
        output: ctx.rng.random_range(5..2_500u64),
        reasoning: if provider == "openai" {
            ctx.rng.random_range(0..1_200u64)
        } else {
            0
        },
        read,
        write: if ctx.rng.random_ratio(1, 3) {
            ctx.rng.random_range(0..6_000u64)
        } else {
            0
        },
    }
}

/// One OpenCode session (rows added to `db`); the legacy copies come back as files.
pub(crate) fn session(
    ctx: &mut Ctx,
    traps: &mut AgentTraps,
    db: &mut Db,
    turns: usize,
    round: u64,
) -> Written {
    traps.opencode_sessions += 1;
    let mut w = Written::default();
    let sid = id(&mut ctx.rng, "ses_", 26);
    let dir = format!("/home/dev/oc-proj-{}", round % 3);
    let mut t = ctx.start_ms();
    // Every third session is a subagent of the previous one.
    let parent = if round % 3 == 2 {
        traps.opencode_subagent_sessions += 1;
        db.sessions.last().map(|s| s.0.clone())
    } else {
        None
    };
    db.sessions
        .push((sid.clone(), "prj".into(), parent, dir.clone(), t));
    let legacy = round < 3;
    let (mut provider, mut model) = MODELS[ctx.rng.random_range(0..MODELS.len())];
    for _ in 0..turns {
        t += ctx.rng.random_range(5_000..120_000);
        let uid = id(&mut ctx.rng, "msg_", 26);
        let user = json!({"id": uid, "sessionID": sid, "role": "user", "time": {"created": t},
                          "agent": "build", "model": {"providerID": provider, "modelID": model}});
        db.messages
            .push((uid.clone(), sid.clone(), t, user.to_string()));
        db.part(
            &uid,
            &sid,
            t,
            json!({"type": "text", "text": ctx.text(40, 400)}),
            &mut ctx.rng,
        );
        t += ctx.rng.random_range(500..5_000);
        if ctx.rng.random_ratio(1, 10) {
            (provider, model) = MODELS[ctx.rng.random_range(0..MODELS.len())];
        }
        let mid = id(&mut ctx.rng, "msg_", 26);
        let created = t;
        // 1: in progress/aborted (all zero); 2: one step, no step-finish part; else 1-5 steps.
        let kind = ctx.rng.random_range(0..12u32);
        let mut steps: Vec<Raw> = Vec::new();
        let mut own = Raw::default();
        let mut cost = 0.0f64;
        if kind == 1 {
            traps.opencode_zero_token_rows += 1;
        } else if kind == 2 {
            own = raw(ctx, provider);
            traps.opencode_no_step_parts += 1;
        } else {
            let n = if ctx.rng.random_ratio(1, 2) {
                1
            } else {
                ctx.rng.random_range(2..=5)
            };
            if n > 1 {
                traps.opencode_multi_step_messages += 1;
            }
            for k in 0..n {
                let r = raw(ctx, provider);
                let c = (r.input + r.output) as f64 * 1e-6;
                cost += c;
                db.part(&mid, &sid, t, json!({"type": "step-start"}), &mut ctx.rng);
                db.part(
                    &mid,
                    &sid,
                    t,
                    json!({"type": "tool", "tool": "bash", "callID": format!("call_{k}"),
                           "state": {"status": "completed", "output": ctx.text(100, 2000)}}),
                    &mut ctx.rng,
                );
                t += ctx.rng.random_range(1_000..20_000);
                db.part(
                    &mid,
                    &sid,
                    t,
                    json!({"type": "step-finish",
                           "reason": if k + 1 == n { "stop" } else { "tool-calls" },
                           "cost": c, "tokens": r.json()}),
                    &mut ctx.rng,
                );
                steps.push(r);
                own = r; // the message keeps only the last step
            }
        }
        let mut data = json!({
            "id": mid, "sessionID": sid, "role": "assistant",
            "time": {"created": created, "completed": t},
            "parentID": uid, "modelID": model, "providerID": provider,
            "mode": "build", "agent": "build",
            "path": {"cwd": dir, "root": dir},
            "cost": cost, "tokens": own.json(), "finish": "stop",
        });
        if kind == 1 {
            data["time"] = json!({"created": created});
            data.as_object_mut().map(|o| o.remove("finish"));
        }
        let text = data.to_string();
        db.bytes += text.len() as u64;
        db.messages
            .push((mid.clone(), sid.clone(), created, text.clone()));
        if legacy {
            w.files.push((
                PathBuf::from(format!(
                    ".local/share/opencode/storage/message/{sid}/{mid}.json"
                )),
                text.into_bytes(),
            ));
            traps.opencode_legacy_copies += 1;
        }
        let sum = if steps.is_empty() {
            own
        } else {
            steps.iter().fold(Raw::default(), |a, r| Raw {
                input: a.input + r.input,
                output: a.output + r.output,
                reasoning: a.reasoning + r.reasoning,
                read: a.read + r.read,
                write: a.write + r.write,
            })
        };
        let tokens = TokenCounts::new(
            sum.input + sum.read + sum.write,
            sum.read,
            sum.write,
            sum.output + sum.reasoning,
            sum.reasoning,
        );
        if !tokens.is_zero() {
            db.calls.push((
                Source::OpenCode,
                model.to_string(),
                created.div_euclid(1000),
                tokens,
            ));
        }
    }
    w
}
