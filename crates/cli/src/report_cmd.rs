//! `tokenledger report daily|weekly|monthly|session|blocks|models`: scan what is new, then
//! report from the local ledger. No network is used.

use crate::output::{abbreviate, format_cost, new_table};
use anyhow::{bail, Context, Result};
use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::ExitCode;
use tokenledger_collect::Env;
use tokenledger_core::tokens::FIELD_NAMES;
use tokenledger_core::{reassign_unknown, Bucket, PriceTable, Source, TokenCounts};
use tokenledger_ledger::{Filter, Ledger, LocalBucket};

#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    #[command(subcommand)]
    pub kind: ReportKind,
    #[command(flatten)]
    pub opts: ReportOpts,
}

#[derive(clap::Subcommand, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportKind {
    /// Usage per day.
    Daily,
    /// Usage per week (weeks start on Monday).
    Weekly,
    /// Usage per month.
    Monthly,
    /// Usage per session (thread) of an agent.
    Session,
    /// Usage in 5-hour billing windows.
    Blocks,
    /// Usage per model.
    Models,
}

impl ReportKind {
    fn name(self) -> &'static str {
        match self {
            ReportKind::Daily => "daily",
            ReportKind::Weekly => "weekly",
            ReportKind::Monthly => "monthly",
            ReportKind::Session => "session",
            ReportKind::Blocks => "blocks",
            ReportKind::Models => "models",
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct ReportOpts {
    /// First day to include (YYYY-MM-DD, inclusive, in --timezone).
    #[arg(long, global = true, value_name = "YYYY-MM-DD")]
    pub since: Option<String>,
    /// Last day to include (YYYY-MM-DD, inclusive, in --timezone).
    #[arg(long, global = true, value_name = "YYYY-MM-DD")]
    pub until: Option<String>,
    /// IANA time zone for days, weeks and months (default: the system zone).
    #[arg(long, short = 'z', global = true, value_name = "ZONE")]
    pub timezone: Option<String>,
    /// Only these sources (codex, every-code, claude, gemini, opencode, qwen); repeatable or comma-separated.
    #[arg(long, global = true, value_delimiter = ',')]
    pub source: Vec<String>,
    /// Only these models; repeatable or comma-separated.
    #[arg(long, global = true, value_delimiter = ',')]
    pub model: Vec<String>,
    /// Show each period's usage per source and model.
    #[arg(long, short = 'b', global = true)]
    pub breakdown: bool,
    /// Print JSON instead of a table.
    #[arg(long, short = 'j', global = true)]
    pub json: bool,
    /// Use no network (the default: prices come from the embedded table).
    #[arg(long, global = true, default_value_t = true)]
    pub offline: bool,
    /// List every skipped line on stderr.
    #[arg(long, short = 'v', global = true)]
    pub verbose: bool,
    /// Report from the ledger without scanning the agents' logs first.
    #[arg(long, global = true)]
    pub no_scan: bool,
    /// A price table file to use instead of the embedded one (see README).
    #[arg(long, global = true, env = "TOKENLEDGER_PRICES", value_name = "FILE")]
    pub prices: Option<std::path::PathBuf>,
}

/// Validated report settings.
#[derive(Clone)]
struct Plan {
    kind: ReportKind,
    tz: TimeZone,
    tz_name: String,
    since: Option<Date>,
    until: Option<Date>,
    sources: Vec<Source>,
    models: Vec<String>,
    breakdown: bool,
    json: bool,
    /// Day of each half hour seen, in `tz` (many buckets share a half hour, and the time-zone
    /// conversion is the costly part of a report).
    days: std::cell::RefCell<std::collections::HashMap<i64, Date>>,
}

impl Plan {
    /// Day of a half-hour start in the report's zone.
    fn day(&self, hour_start: i64) -> Date {
        *self.days.borrow_mut().entry(hour_start).or_insert_with(|| {
            Timestamp::from_second(hour_start)
                .map(|t| t.to_zoned(self.tz.clone()).date())
                .unwrap_or_default()
        })
    }
}

fn parse_day(s: &str, flag: &str) -> Result<Date> {
    s.parse::<Date>()
        .with_context(|| format!("{flag} {s:?} is not a date (expected YYYY-MM-DD)"))
}

/// UTC by one of its IANA names. jiff lists the whole time zone database the first time it
/// looks a name up (~0.5 ms, a hundredth of a report with nothing new); UTC needs none of it.
fn is_utc(name: &str) -> bool {
    matches!(name, "UTC" | "Etc/UTC")
}

fn plan(args: &ReportArgs) -> Result<Plan> {
    let o = &args.opts;
    let (tz, tz_name) = match &o.timezone {
        Some(name) if is_utc(name) => (TimeZone::UTC, name.clone()),
        Some(name) => (
            TimeZone::get(name)
                .with_context(|| format!("--timezone {name:?} is not an IANA time zone"))?,
            name.clone(),
        ),
        None => match std::env::var("TZ") {
            Ok(name) if is_utc(&name) => (TimeZone::UTC, name),
            _ => {
                let tz = TimeZone::system();
                let name = tz.iana_name().unwrap_or("UTC").to_string();
                (tz, name)
            }
        },
    };
    let since = o
        .since
        .as_deref()
        .map(|s| parse_day(s, "--since"))
        .transpose()?;
    let until = o
        .until
        .as_deref()
        .map(|s| parse_day(s, "--until"))
        .transpose()?;
    if let (Some(a), Some(b)) = (since, until) {
        if a > b {
            bail!("--since {a} is after --until {b}");
        }
    }
    let sources = o
        .source
        .iter()
        .map(|s| s.trim().parse::<Source>().map_err(anyhow::Error::from))
        .collect::<Result<Vec<_>>>()?;
    Ok(Plan {
        kind: args.kind,
        tz,
        tz_name,
        since,
        until,
        sources,
        models: o.model.iter().map(|m| m.trim().to_string()).collect(),
        breakdown: o.breakdown,
        json: o.json,
        days: Default::default(),
    })
}

/// A progress bar on stderr when it is a terminal and the scan is long; silence otherwise.
struct Bar(Option<indicatif::ProgressBar>);

impl tokenledger_ledger::Progress for Bar {
    fn start(&self, _files: u64, bytes: u64) {
        if let Some(b) = &self.0 {
            if bytes >= 32 * 1024 * 1024 {
                b.set_length(bytes);
                b.set_style(
                    indicatif::ProgressStyle::with_template(
                        "scanning {bar:30} {binary_bytes}/{binary_total_bytes} ({eta})",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
            } else {
                b.set_draw_target(indicatif::ProgressDrawTarget::hidden());
            }
        }
    }
    fn advance(&self, bytes: u64) {
        if let Some(b) = &self.0 {
            b.inc(bytes);
        }
    }
    fn finish(&self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}

fn open_ledger() -> Result<Ledger> {
    let dir = tokenledger_ledger::data_dir();
    Ledger::open_in(&dir)
        .with_context(|| format!("cannot open the local ledger in {}", dir.display()))
}

/// Records what is new in the agents' logs (a bar on a terminal); reports skipped lines.
fn scan_logs(ledger: &mut Ledger, verbose: bool) -> Result<tokenledger_ledger::ScanReport> {
    use std::io::IsTerminal;
    let bar = Bar(std::io::stderr().is_terminal().then(|| {
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr())
    }));
    let collectors = tokenledger_collect::all_collectors();
    let report = ledger.scan(&collectors, &Env::from_process(), &bar)?;
    report_skipped(&report, verbose);
    Ok(report)
}

/// Scans, then builds the report. A run with nothing new is mostly the walk of the agents'
/// folders, so meanwhile the report is built from the ledger as it stands, on a second
/// connection; it is kept when the scan read nothing (so wrote nothing), else built again.
fn scan_and_build(verbose: bool, plan: &Plan, prices: &PriceTable) -> Result<Value> {
    let mut ledger = open_ledger()?;
    // The plan's day memo is per thread: the early build gets its own copy.
    let early_plan = plan.clone();
    // Not before a first scan: there is nothing to report yet, and its connection would keep
    // the scan from leaving WAL mode (see `Ledger::scan`).
    let new = ledger.is_new()?;
    std::thread::scope(|s| {
        let early = (!new).then(|| {
            s.spawn(move || -> Result<Value> { build(&open_ledger()?, &early_plan, prices) })
        });
        let report = scan_logs(&mut ledger, verbose)?;
        let early = match early.map(|e| e.join()) {
            None => None,
            Some(Ok(v)) => v.ok(),
            Some(Err(panic)) => std::panic::resume_unwind(panic),
        };
        match early {
            Some(value) if report.files_read == 0 => Ok(value),
            _ => build(&ledger, plan, prices),
        }
    })
}

/// Tells on stderr what was skipped: unreadable files by name, malformed lines by count.
fn report_skipped(report: &tokenledger_ledger::ScanReport, verbose: bool) {
    use tokenledger_collect::SkipReason;
    let mut err = std::io::stderr().lock();
    for s in &report.skipped {
        if s.reason == SkipReason::Unreadable {
            let _ = writeln!(
                err,
                "tokenledger: warning: cannot read {}; it is left out, other files are still reported",
                s.path.display()
            );
        }
    }
    let lines: Vec<_> = report
        .skipped
        .iter()
        .filter(|s| s.reason != SkipReason::Unreadable)
        .collect();
    if lines.is_empty() {
        return;
    }
    let mut by = std::collections::BTreeMap::new();
    for s in &lines {
        *by.entry(s.reason).or_insert(0u64) += 1;
    }
    let by: Vec<String> = by
        .iter()
        .map(|(r, n)| format!("{n} {}", r.as_str()))
        .collect();
    let _ = writeln!(
        err,
        "tokenledger: skipped {} malformed line(s): {}{}",
        lines.len(),
        by.join(", "),
        if verbose {
            ""
        } else {
            " (--verbose lists them)"
        }
    );
    if verbose {
        for s in lines {
            let _ = writeln!(
                err,
                "  {}:{}: {}",
                s.path.display(),
                s.line,
                s.reason.as_str()
            );
        }
    }
}

fn load_prices(o: &ReportOpts) -> Result<PriceTable> {
    match &o.prices {
        Some(p) => {
            let s = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read price table {}", p.display()))?;
            PriceTable::from_json(&s).with_context(|| format!("price table {}", p.display()))
        }
        None => Ok(PriceTable::embedded()),
    }
}

/// Keeps glibc from holding on to freed memory: by default it raises the size from which
/// allocations get their own mapping as large blocks are freed, and keeps later large blocks
/// (a file's events, read buffers) in the heap after they are freed. A fixed 128 KiB threshold
/// returns them at once: a first scan's peak drops by about 8 MiB at the same speed.
#[allow(unsafe_code)]
fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before this command starts
    // any thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

pub fn run(args: ReportArgs) -> Result<ExitCode> {
    return_freed_memory();
    let plan = plan(&args)?;
    let prices = load_prices(&args.opts)?;
    let t0 = std::time::Instant::now();
    let value = if args.opts.no_scan {
        build(&open_ledger()?, &plan, &prices)?
    } else {
        scan_and_build(args.opts.verbose, &plan, &prices)?
    };
    if std::env::var_os("TOKENLEDGER_TIMING").is_some() {
        eprintln!("report: scan and build {:?}", t0.elapsed());
    }
    let mut out = std::io::stdout().lock();
    if plan.json {
        serde_json::to_writer_pretty(&mut out, &value)?;
        writeln!(out)?;
    } else {
        render_table(&mut out, &plan, &value)?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn in_range(plan: &Plan, day: Date) -> bool {
    plan.since.is_none_or(|s| day >= s) && plan.until.is_none_or(|u| day <= u)
}

/// The first day of the period (week from Monday, month) that holds `day`.
fn period_start(kind: ReportKind, day: Date) -> Date {
    match kind {
        ReportKind::Weekly => {
            let back = day.weekday().to_monday_zero_offset() as i64;
            day.checked_sub(jiff::Span::new().days(back)).unwrap_or(day)
        }
        ReportKind::Monthly => day.first_of_month(),
        _ => day,
    }
}

/// How a period starting on `start` is shown: `2025-10-06` (a day, or a week by its Monday),
/// `2025-10` (a month).
fn period_label(kind: ReportKind, start: Date) -> String {
    match kind {
        ReportKind::Monthly => format!("{:04}-{:02}", start.year(), start.month()),
        _ => start.to_string(),
    }
}

fn tokens_json(t: &TokenCounts, into: &mut Map<String, Value>) {
    for (k, v) in FIELD_NAMES.iter().zip(t.as_array()) {
        into.insert((*k).to_string(), json!(v));
    }
}

fn round_cost(c: f64) -> f64 {
    // `+ 0.0` turns the -0.0 of an empty sum into 0.0 (else JSON says -0.0, tables $-0.00).
    (c * 1e6).round() / 1e6 + 0.0
}

/// Usage per (source, model) inside a row.
type Cells = BTreeMap<(Source, String), Cell>;

/// Usage of one (source, model) inside a row.
#[derive(Default)]
struct Cell {
    tokens: TokenCounts,
    cost: f64,
}

struct Costing<'a> {
    prices: &'a PriceTable,
    unpriced: BTreeSet<String>,
}

impl Costing<'_> {
    fn cost(&mut self, model: &str, t: &TokenCounts) -> f64 {
        match self.prices.cost(model, t) {
            Some(c) => c,
            None => {
                if !t.is_zero() {
                    self.unpriced.insert(model.to_string());
                }
                0.0
            }
        }
    }
}

/// One report row as JSON, with its token totals and cost (summed into the report's totals).
type Row = (Value, TokenCounts, f64);

/// Prices `cells` and renders them as one row labelled `label_key: label`.
fn row_json(
    label_key: &str,
    label: &str,
    cells: &mut Cells,
    breakdown: bool,
    costing: &mut Costing,
) -> Row {
    for ((_, model), c) in cells.iter_mut() {
        c.cost = costing.cost(model, &c.tokens);
    }
    let mut m = Map::new();
    m.insert(label_key.to_string(), json!(label));
    let tokens: TokenCounts = cells.values().map(|c| c.tokens).sum();
    let cost: f64 = cells.values().map(|c| c.cost).sum();
    tokens_json(&tokens, &mut m);
    m.insert("cost_usd".into(), json!(round_cost(cost)));
    if breakdown {
        let mut items = Vec::new();
        for ((source, model), c) in cells.iter() {
            let mut b = Map::new();
            b.insert("source".into(), json!(source.as_str()));
            b.insert("model".into(), json!(model));
            tokens_json(&c.tokens, &mut b);
            b.insert("cost_usd".into(), json!(round_cost(c.cost)));
            items.push(Value::Object(b));
        }
        m.insert("breakdown".into(), Value::Array(items));
    } else {
        let models: BTreeSet<&str> = cells.keys().map(|(_, m)| m.as_str()).collect();
        m.insert("models".into(), json!(models));
    }
    (Value::Object(m), tokens, cost)
}

/// Buckets of the whole ledger for the report, after the unknown-model reassignment.
fn reassigned(ledger: &Ledger, plan: &Plan) -> Result<Vec<Bucket>> {
    // Reassignment looks at neighbours (every-code borrows from codex), so it runs on the
    // unfiltered set; filters apply to its result.
    let all = ledger.half_hour_buckets(&Filter::default())?;
    let mut out = reassign_unknown(all);
    out.retain(|b| {
        (plan.sources.is_empty() || plan.sources.contains(&b.key.source))
            && (plan.models.is_empty() || plan.models.contains(&b.key.model))
            && in_range(plan, plan.day(b.key.hour_start))
    });
    Ok(out)
}

fn build(ledger: &Ledger, plan: &Plan, prices: &PriceTable) -> Result<Value> {
    let mut costing = Costing {
        prices,
        unpriced: BTreeSet::new(),
    };
    let rows: Vec<Row> = match plan.kind {
        ReportKind::Daily | ReportKind::Weekly | ReportKind::Monthly => {
            // Keyed by the period's first day (the same order as its label), labelled at the end.
            let mut rows: BTreeMap<Date, Cells> = BTreeMap::new();
            for b in reassigned(ledger, plan)? {
                let period = period_start(plan.kind, plan.day(b.key.hour_start));
                let cell = rows
                    .entry(period)
                    .or_default()
                    .entry((b.key.source, b.key.model))
                    .or_default();
                cell.tokens += b.tokens;
            }
            rows.into_iter()
                .map(|(start, mut cells)| {
                    let period = period_label(plan.kind, start);
                    row_json("period", &period, &mut cells, plan.breakdown, &mut costing)
                })
                .collect()
        }
        ReportKind::Models => {
            let mut rows: BTreeMap<String, Cells> = BTreeMap::new();
            for b in reassigned(ledger, plan)? {
                let cell = rows
                    .entry(b.key.model.clone())
                    .or_default()
                    .entry((b.key.source, b.key.model.clone()))
                    .or_default();
                cell.tokens += b.tokens;
            }
            let mut list: Vec<Row> = Vec::new();
            for (model, mut cells) in rows {
                let (mut v, t, c) =
                    row_json("model", &model, &mut cells, plan.breakdown, &mut costing);
                let sources: BTreeSet<&str> = cells.keys().map(|(s, _)| s.as_str()).collect();
                if let Value::Object(m) = &mut v {
                    m.remove("models");
                    m.insert("sources".into(), json!(sources));
                }
                list.push((v, t, c));
            }
            // Largest first: that is what people look for.
            list.sort_by_key(|x| std::cmp::Reverse(x.1.total_tokens));
            list
        }
        ReportKind::Blocks => {
            let mut buckets = reassigned(ledger, plan)?;
            buckets.sort_by_key(|b| b.key.hour_start);
            let now = Timestamp::now().as_second();
            // (start, usage per source and model, last active half hour)
            let mut blocks: Vec<(i64, Cells, i64)> = Vec::new();
            for b in buckets {
                let h = b.key.hour_start;
                let need_new = match blocks.last() {
                    Some((start, _, _)) => h >= start + 5 * 3600,
                    None => true,
                };
                if need_new {
                    blocks.push((h - h.rem_euclid(3600), BTreeMap::new(), h));
                }
                let last = blocks.last_mut().expect("a block exists");
                last.2 = last.2.max(h);
                last.1
                    .entry((b.key.source, b.key.model.clone()))
                    .or_default()
                    .tokens += b.tokens;
            }
            let mut list: Vec<Row> = Vec::new();
            for (start, mut cells, last) in blocks {
                let label = tokenledger_core::format_hour_start(start);
                let (mut v, t, c) =
                    row_json("start", &label, &mut cells, plan.breakdown, &mut costing);
                if let Value::Object(m) = &mut v {
                    m.insert(
                        "end".into(),
                        json!(tokenledger_core::format_hour_start(start + 5 * 3600)),
                    );
                    m.insert(
                        "last_activity".into(),
                        json!(tokenledger_core::format_hour_start(last)),
                    );
                    m.insert(
                        "active".into(),
                        json!(now >= start && now < start + 5 * 3600),
                    );
                }
                list.push((v, t, c));
            }
            list
        }
        ReportKind::Session => {
            let filter = Filter {
                sources: plan.sources.clone(),
                ..Default::default()
            };
            let rows = ledger.buckets(&filter)?;
            let mut sessions: BTreeMap<(Source, String), Vec<LocalBucket>> = BTreeMap::new();
            for r in rows {
                if !in_range(plan, plan.day(r.hour_start)) {
                    continue;
                }
                sessions
                    .entry((r.source, r.session.clone()))
                    .or_default()
                    .push(r);
            }
            let mut list = Vec::new();
            for ((source, session), rows) in sessions {
                let project = rows
                    .iter()
                    .map(|r| r.project.as_str())
                    .find(|p| !p.is_empty())
                    .unwrap_or("")
                    .to_string();
                let first = rows.iter().map(|r| r.hour_start).min().unwrap_or(0);
                let last = rows.iter().map(|r| r.hour_start).max().unwrap_or(0);
                let buckets = reassign_unknown(rows.into_iter().map(|r| Bucket {
                    key: tokenledger_core::BucketKey {
                        source: r.source,
                        model: r.model,
                        hour_start: r.hour_start,
                    },
                    tokens: r.tokens,
                }));
                let mut cells: Cells = BTreeMap::new();
                for b in buckets {
                    if !plan.models.is_empty() && !plan.models.contains(&b.key.model) {
                        continue;
                    }
                    cells.entry((b.key.source, b.key.model)).or_default().tokens += b.tokens;
                }
                if cells.is_empty() {
                    continue;
                }
                let (mut v, t, c) = row_json(
                    "session",
                    &session,
                    &mut cells,
                    plan.breakdown,
                    &mut costing,
                );
                if let Value::Object(m) = &mut v {
                    m.insert("source".into(), json!(source.as_str()));
                    m.insert("project".into(), json!(project));
                    m.insert(
                        "first_activity".into(),
                        json!(tokenledger_core::format_hour_start(first)),
                    );
                    m.insert(
                        "last_activity".into(),
                        json!(tokenledger_core::format_hour_start(last)),
                    );
                }
                list.push((last, v, t, c));
            }
            // Most recent last, like a log.
            list.sort_by_key(|x| x.0);
            list.into_iter().map(|(_, v, t, c)| (v, t, c)).collect()
        }
    };
    let totals: TokenCounts = rows.iter().map(|r| r.1).sum();
    let total_cost: f64 = rows.iter().map(|r| r.2).sum();
    let rows_json: Vec<Value> = rows.into_iter().map(|r| r.0).collect();
    let mut top = Map::new();
    top.insert("report".into(), json!(plan.kind.name()));
    top.insert("timezone".into(), json!(plan.tz_name));
    top.insert("rows".into(), Value::Array(rows_json));
    let mut t = Map::new();
    tokens_json(&totals, &mut t);
    t.insert("cost_usd".into(), json!(round_cost(total_cost)));
    top.insert("totals".into(), Value::Object(t));
    top.insert(
        "pricing".into(),
        json!({
            "profile": prices.profile,
            "source": prices.source,
            "fetched_at": prices.fetched_at,
            "unpriced_models": costing.unpriced,
        }),
    );
    Ok(Value::Object(top))
}

fn num(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0)
}

fn cost(v: &Value) -> f64 {
    v.get("cost_usd").and_then(Value::as_f64).unwrap_or(0.0)
}

fn render_table(out: &mut impl Write, plan: &Plan, v: &Value) -> Result<()> {
    let label_key = match plan.kind {
        ReportKind::Daily => "period",
        ReportKind::Weekly => "period",
        ReportKind::Monthly => "period",
        ReportKind::Session => "session",
        ReportKind::Blocks => "start",
        ReportKind::Models => "model",
    };
    let header = match plan.kind {
        ReportKind::Daily => "Date",
        ReportKind::Weekly => "Week of",
        ReportKind::Monthly => "Month",
        ReportKind::Session => "Session",
        ReportKind::Blocks => "Block start",
        ReportKind::Models => "Model",
    };
    let mut table = new_table(&[
        header, "Input", "Cache R", "Cache W", "Output", "Total", "Cost",
    ]);
    let empty = Vec::new();
    let rows = v.get("rows").and_then(Value::as_array).unwrap_or(&empty);
    let cells = |label: String, r: &Value| -> Vec<String> {
        vec![
            label,
            abbreviate(num(r, "input_tokens")),
            abbreviate(num(r, "cached_input_tokens")),
            abbreviate(num(r, "cache_creation_input_tokens")),
            abbreviate(num(r, "output_tokens")),
            abbreviate(num(r, "total_tokens")),
            format_cost(cost(r)),
        ]
    };
    for r in rows {
        let raw = r.get(label_key).and_then(Value::as_str).unwrap_or("");
        let label = match plan.kind {
            ReportKind::Blocks => raw
                .parse::<Timestamp>()
                .map(|t| {
                    let z = t.to_zoned(plan.tz.clone());
                    let active = r.get("active").and_then(Value::as_bool) == Some(true);
                    format!(
                        "{}{}",
                        z.strftime("%Y-%m-%d %H:%M"),
                        if active { " (active)" } else { "" }
                    )
                })
                .unwrap_or_else(|_| raw.to_string()),
            ReportKind::Session => {
                let src = r.get("source").and_then(Value::as_str).unwrap_or("");
                // Ids often share a time-based prefix; their tail tells them apart.
                let n = raw.chars().count();
                let short: String = if n > 12 {
                    let tail: String = raw.chars().skip(n - 11).collect();
                    format!("…{tail}")
                } else {
                    raw.to_string()
                };
                format!("{src} {short}")
            }
            _ => raw.to_string(),
        };
        table.add_row(cells(label, r));
        if let Some(items) = r.get("breakdown").and_then(Value::as_array) {
            for b in items {
                let label = format!(
                    "  {}/{}",
                    b.get("source").and_then(Value::as_str).unwrap_or(""),
                    b.get("model").and_then(Value::as_str).unwrap_or("")
                );
                table.add_row(cells(label, b));
            }
        }
    }
    if let Some(t) = v.get("totals") {
        table.add_row(cells("Total".to_string(), t));
    }
    writeln!(out, "{table}")?;
    if rows.is_empty() {
        writeln!(out, "No usage found for this selection.")?;
    }
    if let Some(unpriced) = v
        .pointer("/pricing/unpriced_models")
        .and_then(Value::as_array)
        .filter(|u| !u.is_empty())
    {
        let names: Vec<&str> = unpriced.iter().filter_map(Value::as_str).collect();
        writeln!(out, "Unpriced (counted at $0): {}", names.join(", "))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_in(zone: &str) -> Plan {
        Plan {
            kind: ReportKind::Daily,
            tz: TimeZone::get(zone).unwrap(),
            tz_name: zone.to_string(),
            since: None,
            until: None,
            sources: Vec::new(),
            models: Vec::new(),
            breakdown: false,
            json: false,
            days: Default::default(),
        }
    }

    /// Each report remembers days in its own zone: two reports in one thread do not mix them.
    #[test]
    fn days_are_remembered_per_report_zone() {
        // 2025-10-06T23:30:00Z: still the 6th in UTC, already the 7th in Auckland.
        let hour = 1_759_793_400;
        let utc = plan_in("UTC");
        let auckland = plan_in("Pacific/Auckland");
        assert_eq!(utc.day(hour).to_string(), "2025-10-06");
        assert_eq!(auckland.day(hour).to_string(), "2025-10-07");
        assert_eq!(utc.day(hour).to_string(), "2025-10-06");
    }

    /// UTC asked for by name skips the time zone database and gives the days the database's
    /// UTC gives; other names (a lowercase one included) still go to the database.
    #[test]
    fn utc_without_the_database_gives_the_same_days() {
        assert!(is_utc("UTC") && is_utc("Etc/UTC"));
        assert!(!is_utc("utc") && !is_utc("Europe/London") && !is_utc("UTC+1"));
        let database = plan_in("UTC");
        let direct = Plan {
            tz: TimeZone::UTC,
            ..plan_in("UTC")
        };
        // Every half hour of two years, leap day and year ends included.
        let start = 1_704_067_200; // 2024-01-01T00:00:00Z
        for hour in (start..start + 2 * 366 * 86_400).step_by(1800) {
            assert_eq!(direct.day(hour), database.day(hour), "{hour}");
        }
    }
}
