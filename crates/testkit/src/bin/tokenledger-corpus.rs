//! `tokenledger-corpus`: writes a fake HOME of Codex CLI and Claude Code logs with every known
//! double-counting trap, and optionally its ground truth as JSON.

use anyhow::{bail, Context};
use clap::Parser;
use std::path::PathBuf;
use tokenledger_testkit::{add_agents, generate, util::days_from_civil, AgentOptions, Options};

#[derive(Parser)]
#[command(
    name = "tokenledger-corpus",
    about = "Generate a deterministic agent-log corpus with ground truth"
)]
struct Args {
    /// Directory to use as the fake HOME (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Random seed; the same seed and options give the same corpus.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Minimum number of files.
    #[arg(long, default_value_t = 100)]
    files: usize,
    /// Minimum total size on disk, e.g. `1GiB`, `200MB`, `5MiB`, `123456`.
    #[arg(long, default_value = "0")]
    bytes: String,
    /// First UTC day of activity (YYYY-MM-DD).
    #[arg(long, default_value = "2025-10-01")]
    start: String,
    /// Number of days the activity spans.
    #[arg(long, default_value_t = 30)]
    days: i64,
    /// Write the ground truth (daily and half-hour rows, totals, planted traps) to this file.
    #[arg(long)]
    truth: Option<PathBuf>,
    /// Also write these agents (opt-in; the Codex/Claude part is unchanged): `all` or a comma
    /// list of `every-code,gemini,opencode,qwen`.
    #[arg(long)]
    agents: Option<String>,
    /// Minimum sessions per extra agent (with `--agents`).
    #[arg(long, default_value_t = 12)]
    agent_sessions: usize,
    /// Minimum total size of the extra agents' logs (with `--agents`), e.g. `100MiB`.
    #[arg(long, default_value = "0")]
    agent_bytes: String,
}

fn parse_bytes(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().with_context(|| format!("bad size {s:?}"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1u64,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        other => bail!("unknown size unit {other:?}"),
    };
    Ok((n * mult as f64) as u64)
}

fn parse_day(s: &str) -> anyhow::Result<i64> {
    let p: Vec<&str> = s.split('-').collect();
    if p.len() != 3 {
        bail!("expected YYYY-MM-DD, got {s:?}");
    }
    let n = |x: &str| x.parse::<i64>().with_context(|| format!("bad date {s:?}"));
    Ok(days_from_civil(n(p[0])?, n(p[1])?, n(p[2])?))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let opts = Options {
        seed: args.seed,
        files: args.files,
        bytes: parse_bytes(&args.bytes)?,
        start_day: parse_day(&args.start)?,
        days: args.days,
        hold_back: false,
    };
    let mut corpus = generate(&args.out, &opts)
        .with_context(|| format!("writing corpus to {}", args.out.display()))?;
    if let Some(list) = &args.agents {
        let mut agents =
            AgentOptions::parse_list(list, args.agent_sessions).map_err(anyhow::Error::msg)?;
        agents.bytes = parse_bytes(&args.agent_bytes)?;
        add_agents(&mut corpus, &opts, &agents)
            .with_context(|| format!("writing agents to {}", args.out.display()))?;
    }
    eprintln!(
        "wrote {} files, {} bytes under {}",
        corpus.files,
        corpus.bytes,
        args.out.display()
    );
    if let Some(path) = args.truth {
        let mut v = corpus.truth.to_json();
        v["files"] = corpus.files.into();
        v["bytes"] = corpus.bytes.into();
        v["traps"] = serde_json::to_value(&corpus.traps)?;
        if args.agents.is_some() {
            v["agent_traps"] = serde_json::to_value(&corpus.agent_traps)?;
        }
        std::fs::write(&path, serde_json::to_vec_pretty(&v)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
