//! Parity: stored per-day usage against the provider's own CSV exports.
//!
//! The OpenAI dashboard exports `completions_usage_<from>_<to>.csv` with one row per time bucket
//! and group (columns in provider-usage-api.md). Rows are normalised to their UTC day, zero-token
//! rows without any metadata are ignored, and both sides are summed per day, project, key and
//! model (a dimension the export was not grouped by is summed away on both sides). Keys present
//! on one side only are missing windows; counters that differ by more than the relative
//! threshold are variances.

use crate::model::{add_days, day_of, day_start, Counters, StoredRow, COUNTER_NAMES};
use crate::store::{ProviderStore, UsageQuery, UserId};
use crate::{Error, Result};
use jiff::civil::Date;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Default relative threshold (0.01 %).
pub const DEFAULT_THRESHOLD: f64 = 0.0001;

/// What to compare.
#[derive(Debug, Clone)]
pub struct ParityOptions {
    pub from: Option<Date>,
    pub to: Option<Date>,
    /// Relative difference above which a counter is a variance.
    pub threshold: f64,
    /// Only this provider key's stored data.
    pub provider_key_id: Option<i64>,
}

impl Default for ParityOptions {
    fn default() -> Self {
        ParityOptions {
            from: None,
            to: None,
            threshold: DEFAULT_THRESHOLD,
            provider_key_id: None,
        }
    }
}

/// A compared group: a UTC day and the dimensions the export is grouped by.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct WindowKey {
    pub day: Date,
    pub project_id: Option<String>,
    pub api_key_id: Option<String>,
    pub model: Option<String>,
}

/// One counter that differs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Variance {
    #[serde(flatten)]
    pub key: WindowKey,
    pub metric: &'static str,
    pub csv: u64,
    pub stored: u64,
    /// `(stored - csv) / max(csv, 1)`.
    pub relative: f64,
}

/// A day's total of one counter that differs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DayVariance {
    pub day: Date,
    pub metric: &'static str,
    pub csv: u64,
    pub stored: u64,
    pub relative: f64,
}

/// The outcome of a parity run (also written as the JSON report).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ParityReport {
    /// `match` or `mismatch`.
    pub status: &'static str,
    pub from: Option<Date>,
    pub to: Option<Date>,
    pub threshold: f64,
    pub files: Vec<String>,
    pub csv_rows: u64,
    /// Zero-token rows without metadata.
    pub csv_rows_ignored: u64,
    /// Rows with an unreadable time or counter (skipped).
    pub csv_rows_invalid: u64,
    /// Counters compared (those the exports have).
    pub metrics: Vec<&'static str>,
    /// Dimensions compared besides the day.
    pub grouped_by: Vec<&'static str>,
    pub windows_compared: u64,
    /// In the CSV, not stored.
    pub missing_in_store: Vec<WindowKey>,
    /// Stored, not in the CSV.
    pub missing_in_csv: Vec<WindowKey>,
    pub variances: Vec<Variance>,
    pub day_variances: Vec<DayVariance>,
}

impl ParityReport {
    pub fn is_match(&self) -> bool {
        self.status == "match"
    }

    /// A human summary.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let range = match (self.from, self.to) {
            (Some(f), Some(t)) => format!("{f}..{t}"),
            _ => "(no days)".into(),
        };
        let _ = writeln!(
            s,
            "parity {range} (threshold {}): {}",
            self.threshold,
            self.status.to_uppercase()
        );
        let _ = writeln!(
            s,
            "csv rows: {} ({} zero-token rows without metadata ignored, {} invalid skipped); {} windows compared",
            self.csv_rows, self.csv_rows_ignored, self.csv_rows_invalid, self.windows_compared
        );
        let fmt_key = |k: &WindowKey| {
            let d = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
            format!(
                "{} project={} key={} model={}",
                k.day,
                d(&k.project_id),
                d(&k.api_key_id),
                d(&k.model)
            )
        };
        let _ = writeln!(
            s,
            "missing in store (in CSV, not stored): {}",
            self.missing_in_store.len()
        );
        for k in &self.missing_in_store {
            let _ = writeln!(s, "  {}", fmt_key(k));
        }
        let _ = writeln!(
            s,
            "missing in CSV (stored, not in CSV): {}",
            self.missing_in_csv.len()
        );
        for k in &self.missing_in_csv {
            let _ = writeln!(s, "  {}", fmt_key(k));
        }
        let _ = writeln!(s, "variances over the threshold: {}", self.variances.len());
        for v in &self.variances {
            let _ = writeln!(
                s,
                "  {} {} csv={} stored={} ({:+.4}%)",
                fmt_key(&v.key),
                v.metric,
                v.csv,
                v.stored,
                v.relative * 100.0
            );
        }
        if !self.day_variances.is_empty() {
            let _ = writeln!(
                s,
                "per-day totals that differ: {}",
                self.day_variances.len()
            );
            for v in &self.day_variances {
                let _ = writeln!(
                    s,
                    "  {} {} csv={} stored={} ({:+.4}%)",
                    v.day,
                    v.metric,
                    v.csv,
                    v.stored,
                    v.relative * 100.0
                );
            }
        }
        s
    }
}

/// Day, project, key and model of an export row.
pub type CsvGroup = (Date, Option<String>, Option<String>, Option<String>);

/// The rows of one or more exports, summed per day and dimensions.
#[derive(Debug, Default)]
pub struct CsvUsage {
    pub rows: u64,
    pub ignored: u64,
    pub invalid: u64,
    /// Counter columns present in every file.
    pub metrics: Vec<&'static str>,
    pub has_project: bool,
    pub has_key: bool,
    pub has_model: bool,
    /// Per (day, project, key, model) as read.
    pub groups: BTreeMap<CsvGroup, Counters>,
    /// Date range named by the file names (`..._<from>_<to>.csv`, `to` exclusive).
    pub named_range: Option<(Date, Date)>,
}

fn named_range(path: &Path) -> Option<(Date, Date)> {
    let stem = path.file_stem()?.to_str()?;
    let dates: Vec<Date> = stem
        .split('_')
        .filter_map(|p| p.parse::<Date>().ok())
        .collect();
    match dates.as_slice() {
        [.., a, b] if a < b => Some((*a, add_days(*b, -1))),
        _ => None,
    }
}

fn parse_count(s: &str) -> Option<u64> {
    let t = s.trim();
    if t.is_empty() {
        return Some(0);
    }
    t.parse::<u64>().ok().or_else(|| {
        t.parse::<f64>()
            .ok()
            .filter(|f| *f >= 0.0 && f.fract() == 0.0 && *f < 9.2e18)
            .map(|f| f as u64)
    })
}

fn parse_day(epoch: Option<&str>, iso: Option<&str>) -> Option<Date> {
    if let Some(e) = epoch.map(str::trim).filter(|e| !e.is_empty()) {
        if let Ok(n) = e.parse::<i64>() {
            return Some(day_of(n));
        }
        if let Ok(f) = e.parse::<f64>() {
            if f.is_finite() {
                return Some(day_of(f.floor() as i64));
            }
        }
    }
    let iso = iso.map(str::trim).filter(|s| !s.is_empty())?;
    iso.parse::<jiff::Timestamp>()
        .ok()
        .map(|t| day_of(t.as_second()))
}

/// Reads exports. Unreadable files or files without a time column are bad input
/// ([`Error::Invalid`]); bad rows are skipped and counted.
pub fn read_csv_files(paths: &[PathBuf]) -> Result<CsvUsage> {
    if paths.is_empty() {
        return Err(Error::Invalid("no CSV file given".into()));
    }
    let mut out = CsvUsage::default();
    let mut metrics: Option<BTreeSet<&'static str>> = None;
    for path in paths {
        let mut rdr = csv::ReaderBuilder::new()
            .flexible(true)
            .trim(csv::Trim::All)
            .from_path(path)
            .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
        let headers = rdr
            .headers()
            .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?
            .clone();
        let col = |name: &str| {
            headers
                .iter()
                .position(|h| h.trim_start_matches('\u{feff}') == name)
        };
        let (start, start_iso) = (col("start_time"), col("start_time_iso"));
        if start.is_none() && start_iso.is_none() {
            return Err(Error::Invalid(format!(
                "{}: no start_time or start_time_iso column (not a usage export?)",
                path.display()
            )));
        }
        let (project, key, model, user) = (
            col("project_id"),
            col("api_key_id"),
            col("model"),
            col("user_id"),
        );
        let counter_cols: Vec<(usize, usize)> = COUNTER_NAMES
            .iter()
            .enumerate()
            .filter_map(|(i, n)| col(n).map(|c| (i, c)))
            .collect();
        let here: BTreeSet<&'static str> = counter_cols
            .iter()
            .map(|(i, _)| COUNTER_NAMES[*i])
            .collect();
        metrics = Some(match metrics {
            None => here,
            Some(m) => m.intersection(&here).copied().collect(),
        });
        if let Some((a, b)) = named_range(path) {
            out.named_range = Some(match out.named_range {
                None => (a, b),
                Some((x, y)) => (x.min(a), y.max(b)),
            });
        }
        for rec in rdr.records() {
            let Ok(rec) = rec else {
                out.invalid += 1;
                continue;
            };
            let get = |c: Option<usize>| c.and_then(|c| rec.get(c));
            let text = |c: Option<usize>| {
                get(c)
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
            };
            let Some(day) = parse_day(get(start), get(start_iso)) else {
                out.invalid += 1;
                continue;
            };
            let mut c = Counters::default();
            let mut ok = true;
            for (i, ci) in &counter_cols {
                match parse_count(rec.get(*ci).unwrap_or("")) {
                    Some(v) => c.0[*i] = v,
                    None => ok = false,
                }
            }
            if !ok {
                out.invalid += 1;
                continue;
            }
            out.rows += 1;
            let (p, k, m) = (text(project), text(key), text(model));
            if c.is_zero() && p.is_none() && k.is_none() && m.is_none() && text(user).is_none() {
                out.ignored += 1;
                continue;
            }
            out.has_project |= p.is_some();
            out.has_key |= k.is_some();
            out.has_model |= m.is_some();
            out.groups.entry((day, p, k, m)).or_default().add(&c);
        }
    }
    out.metrics = COUNTER_NAMES
        .iter()
        .copied()
        .filter(|n| metrics.as_ref().is_some_and(|m| m.contains(n)))
        .collect();
    Ok(out)
}

fn relative(csv: u64, stored: u64) -> f64 {
    (stored as f64 - csv as f64) / (csv.max(1) as f64)
}

/// Compares exports with stored rows.
pub fn compare(csv: &CsvUsage, stored: &[StoredRow], opts: &ParityOptions) -> ParityReport {
    let metric_idx: Vec<(usize, &'static str)> = csv
        .metrics
        .iter()
        .filter_map(|m| Counters::index(m).map(|i| (i, *m)))
        .collect();
    let csv_days = csv.groups.keys().map(|k| k.0);
    let (mut lo, mut hi) = (csv_days.clone().min(), csv_days.max());
    if let Some((a, b)) = csv.named_range {
        lo = Some(lo.map_or(a, |d| d.min(a)));
        hi = Some(hi.map_or(b, |d| d.max(b)));
    }
    let from = opts.from.or(lo);
    let to = opts.to.or(hi);
    let in_range = |d: Date| from.is_none_or(|f| d >= f) && to.is_none_or(|t| d <= t);
    let project = |v: &Option<String>| if csv.has_project { v.clone() } else { None };
    let apikey = |v: &Option<String>| if csv.has_key { v.clone() } else { None };
    let model = |v: &Option<String>| if csv.has_model { v.clone() } else { None };
    // The CSV side only fills the counters it has; a header-only export has none.
    let relevant = |c: &Counters, k: &WindowKey| {
        !c.is_zero() || k.project_id.is_some() || k.api_key_id.is_some() || k.model.is_some()
    };

    let mut left: BTreeMap<WindowKey, Counters> = BTreeMap::new();
    for ((day, p, k, m), c) in &csv.groups {
        if !in_range(*day) {
            continue;
        }
        let key = WindowKey {
            day: *day,
            project_id: project(p),
            api_key_id: apikey(k),
            model: model(m),
        };
        left.entry(key).or_default().add(c);
    }
    let mut right: BTreeMap<WindowKey, Counters> = BTreeMap::new();
    for r in stored {
        let day = day_of(r.window_start);
        if !in_range(day) || opts.provider_key_id.is_some_and(|k| k != r.provider_key_id) {
            continue;
        }
        let key = WindowKey {
            day,
            project_id: project(&r.dims.project_id),
            api_key_id: apikey(&r.dims.api_key_id),
            model: model(&r.dims.model),
        };
        right.entry(key).or_default().add(&r.counters);
    }
    left.retain(|k, c| relevant(c, k));
    right.retain(|k, c| relevant(c, k));

    let mut report = ParityReport {
        status: "match",
        from,
        to,
        threshold: opts.threshold,
        files: Vec::new(),
        csv_rows: csv.rows,
        csv_rows_ignored: csv.ignored,
        csv_rows_invalid: csv.invalid,
        metrics: csv.metrics.clone(),
        grouped_by: [
            (csv.has_project, "project_id"),
            (csv.has_key, "api_key_id"),
            (csv.has_model, "model"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| *n)
        .collect(),
        windows_compared: 0,
        missing_in_store: Vec::new(),
        missing_in_csv: Vec::new(),
        variances: Vec::new(),
        day_variances: Vec::new(),
    };
    let over = |rel: f64| rel.abs() > opts.threshold;
    let mut day_csv: BTreeMap<Date, Counters> = BTreeMap::new();
    let mut day_stored: BTreeMap<Date, Counters> = BTreeMap::new();
    for (k, c) in &left {
        day_csv.entry(k.day).or_default().add(c);
        match right.get(k) {
            None => report.missing_in_store.push(k.clone()),
            Some(s) => {
                report.windows_compared += 1;
                for (i, name) in &metric_idx {
                    let rel = relative(c.0[*i], s.0[*i]);
                    if over(rel) {
                        report.variances.push(Variance {
                            key: k.clone(),
                            metric: name,
                            csv: c.0[*i],
                            stored: s.0[*i],
                            relative: rel,
                        });
                    }
                }
            }
        }
    }
    for (k, c) in &right {
        day_stored.entry(k.day).or_default().add(c);
        if !left.contains_key(k) {
            report.missing_in_csv.push(k.clone());
        }
    }
    let days: BTreeSet<Date> = day_csv.keys().chain(day_stored.keys()).copied().collect();
    for day in days {
        let (a, b) = (
            day_csv.get(&day).copied().unwrap_or_default(),
            day_stored.get(&day).copied().unwrap_or_default(),
        );
        for (i, name) in &metric_idx {
            let rel = relative(a.0[*i], b.0[*i]);
            if over(rel) {
                report.day_variances.push(DayVariance {
                    day,
                    metric: name,
                    csv: a.0[*i],
                    stored: b.0[*i],
                    relative: rel,
                });
            }
        }
    }
    if !(report.missing_in_store.is_empty()
        && report.missing_in_csv.is_empty()
        && report.variances.is_empty()
        && report.day_variances.is_empty())
    {
        report.status = "mismatch";
    }
    report
}

/// Reads the exports and compares them with what `user_id` has stored.
pub async fn run(
    store: &dyn ProviderStore,
    user_id: UserId,
    files: &[PathBuf],
    opts: &ParityOptions,
) -> Result<ParityReport> {
    if !(opts.threshold.is_finite() && opts.threshold >= 0.0) {
        return Err(Error::Invalid(
            "--threshold must be a non-negative number".into(),
        ));
    }
    if let (Some(f), Some(t)) = (opts.from, opts.to) {
        if f > t {
            return Err(Error::Invalid("--from is after --to".into()));
        }
    }
    let csv = read_csv_files(files)?;
    let mut lo = csv.groups.keys().map(|k| k.0).min();
    let mut hi = csv.groups.keys().map(|k| k.0).max();
    if let Some((a, b)) = csv.named_range {
        lo = Some(lo.map_or(a, |d| d.min(a)));
        hi = Some(hi.map_or(b, |d| d.max(b)));
    }
    let (from, to) = (opts.from.or(lo), opts.to.or(hi));
    let stored = match (from, to) {
        (Some(f), Some(t)) => {
            store
                .usage_rows(
                    user_id,
                    &UsageQuery {
                        from: day_start(f),
                        to: day_start(add_days(t, 1)),
                        provider_key_id: opts.provider_key_id,
                        ..UsageQuery::default()
                    },
                )
                .await?
        }
        _ => Vec::new(),
    };
    let mut report = compare(&csv, &stored, opts);
    report.files = files.iter().map(|p| p.display().to_string()).collect();
    Ok(report)
}
