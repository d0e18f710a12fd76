//! The usage API (`/api/v1/usage/*`): totals, days, half hours, months, a year's heatmap, and
//! breakdowns by model and source, each with the server-computed summary and its cost.

use crate::auth::ReaderAuth;
use crate::usage::{self, format_usd, Costing, Strategy, UsageQuery};
use crate::{ApiError, AppState};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tokenledger_core::{normalize_model, Source, TokenCounts};
use tokenledger_store::{day_start_utc, UsageFilter, UsageRow, UserId};
use utoipa::{IntoParams, ToSchema};

/// Query parameters of the usage endpoints.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageParams {
    /// First day, `YYYY-MM-DD` (inclusive, in `tz`).
    pub from: Option<String>,
    /// Last day, `YYYY-MM-DD` (inclusive, in `tz`). At most 800 days after `from`.
    pub to: Option<String>,
    /// `hourly` only: the day to show (instead of `from` = `to`).
    pub day: Option<String>,
    /// `heatmap` only: a calendar year (instead of `from`/`to`; default: the last 365 days).
    pub year: Option<i16>,
    /// Only this source (`codex`, `claude`, ...).
    pub source: Option<String>,
    /// Only this model (trimmed); without it, models are aggregated.
    pub model: Option<String>,
    /// IANA time zone grouping the days (default UTC), aliases included (`Asia/Calcutta`).
    pub tz: Option<String>,
}

/// The six canonical token fields as decimal strings.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TokenTotals {
    pub input_tokens: String,
    pub cached_input_tokens: String,
    pub cache_creation_input_tokens: String,
    pub output_tokens: String,
    pub reasoning_output_tokens: String,
    pub total_tokens: String,
}

impl From<&TokenCounts> for TokenTotals {
    fn from(t: &TokenCounts) -> Self {
        TokenTotals {
            input_tokens: t.input_tokens.to_string(),
            cached_input_tokens: t.cached_input_tokens.to_string(),
            cache_creation_input_tokens: t.cache_creation_input_tokens.to_string(),
            output_tokens: t.output_tokens.to_string(),
            reasoning_output_tokens: t.reasoning_output_tokens.to_string(),
            total_tokens: t.total_tokens.to_string(),
        }
    }
}

/// Token totals and their cost.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CostedTotals {
    #[serde(flatten)]
    pub tokens: TokenTotals,
    /// USD, decimal string.
    pub total_cost_usd: String,
}

fn costed(tokens: &TokenCounts, cost: f64) -> CostedTotals {
    CostedTotals {
        tokens: tokens.into(),
        total_cost_usd: format_usd(cost),
    }
}

/// The price profile used for the costs of an answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Pricing {
    pub profile: String,
    pub source: String,
    pub fetched_at: String,
    /// Models of this answer that the profile has no price for (they cost 0).
    pub unpriced_models: Vec<String>,
}

/// Totals of a whole answer, computed by the server.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Summary {
    pub totals: CostedTotals,
    pub pricing: Pricing,
}

/// The range an answer covers.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RangeInfo {
    pub from: String,
    pub to: String,
    pub tz: String,
}

/// `GET /api/v1/usage/summary`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SummaryResponse {
    #[serde(flatten)]
    pub range: RangeInfo,
    pub totals: CostedTotals,
    pub pricing: Pricing,
}

/// One day.
#[derive(Debug, Serialize, ToSchema)]
pub struct DailyRow {
    pub day: String,
    #[serde(flatten)]
    pub totals: CostedTotals,
}

/// `GET /api/v1/usage/daily`: days with usage, and the summary.
#[derive(Debug, Serialize, ToSchema)]
pub struct DailyResponse {
    #[serde(flatten)]
    pub range: RangeInfo,
    pub data: Vec<DailyRow>,
    pub summary: Summary,
}

/// One half hour.
#[derive(Debug, Serialize, ToSchema)]
pub struct HourlyRow {
    /// UTC start, e.g. `2025-12-01T00:30:00.000Z`.
    pub hour_start: String,
    /// The same instant in the query's zone.
    pub local_start: String,
    #[serde(flatten)]
    pub totals: CostedTotals,
}

/// `GET /api/v1/usage/hourly`: every half hour of one local day, zeros included.
#[derive(Debug, Serialize, ToSchema)]
pub struct HourlyResponse {
    pub day: String,
    pub tz: String,
    pub data: Vec<HourlyRow>,
    pub summary: Summary,
}

/// One month.
#[derive(Debug, Serialize, ToSchema)]
pub struct MonthlyRow {
    /// `YYYY-MM`.
    pub month: String,
    #[serde(flatten)]
    pub totals: CostedTotals,
}

/// `GET /api/v1/usage/monthly`.
#[derive(Debug, Serialize, ToSchema)]
pub struct MonthlyResponse {
    #[serde(flatten)]
    pub range: RangeInfo,
    pub data: Vec<MonthlyRow>,
    pub summary: Summary,
}

/// One day of the heatmap.
#[derive(Debug, Serialize, ToSchema)]
pub struct HeatmapDay {
    pub day: String,
    pub total_tokens: String,
    pub total_cost_usd: String,
    /// 0 (no use) to 4 (the busiest days), relative to the busiest day of the range.
    pub level: u8,
}

/// `GET /api/v1/usage/heatmap`: every day of the range.
#[derive(Debug, Serialize, ToSchema)]
pub struct HeatmapResponse {
    #[serde(flatten)]
    pub range: RangeInfo,
    pub max_day_total_tokens: String,
    pub active_days: u32,
    pub data: Vec<HeatmapDay>,
    pub summary: Summary,
}

/// One model.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelRow {
    pub model: String,
    /// Whether the price profile knows this model.
    pub priced: bool,
    #[serde(flatten)]
    pub totals: CostedTotals,
}

/// `GET /api/v1/usage/models`: by model, largest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelsResponse {
    #[serde(flatten)]
    pub range: RangeInfo,
    pub data: Vec<ModelRow>,
    pub summary: Summary,
}

/// One source.
#[derive(Debug, Serialize, ToSchema)]
pub struct SourceRow {
    pub source: String,
    #[serde(flatten)]
    pub totals: CostedTotals,
}

/// `GET /api/v1/usage/sources`: by source, largest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct SourcesResponse {
    #[serde(flatten)]
    pub range: RangeInfo,
    pub data: Vec<SourceRow>,
    pub summary: Summary,
}

fn parse_day(name: &str, v: &str) -> Result<Date, ApiError> {
    let ok_shape = v.len() == 10
        && v.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    let parsed = if ok_shape {
        v.parse::<Date>().ok()
    } else {
        None
    };
    parsed.ok_or_else(|| {
        ApiError::bad_request(
            "invalid_date",
            format!("{name} must be a date YYYY-MM-DD, got {v:?}"),
        )
    })
}

fn parse_tz(tz: Option<&str>) -> Result<(TimeZone, String), ApiError> {
    match tz.map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok((TimeZone::UTC, "UTC".to_string())),
        Some(name) => TimeZone::get(name)
            .map(|tz| (tz, name.to_string()))
            .map_err(|_| {
                ApiError::bad_request("invalid_timezone", format!("unknown time zone {name:?}"))
            }),
    }
}

fn today_in(tz: &TimeZone) -> Date {
    jiff::Timestamp::now().to_zoned(tz.clone()).date()
}

/// Which days a query covers, before the common checks.
enum Days {
    Range,
    OneDay,
    Year,
}

fn resolve(
    state: &AppState,
    user_id: UserId,
    params: Result<Query<UsageParams>, QueryRejection>,
    days: Days,
) -> Result<UsageQuery, ApiError> {
    let Query(p) = params.map_err(|e| ApiError::bad_request("invalid_parameter", e.body_text()))?;
    let (tz, tz_name) = parse_tz(p.tz.as_deref())?;
    let required = |name: &str, v: &Option<String>| {
        v.as_deref()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                ApiError::bad_request(
                    "missing_parameter",
                    format!("{name} is required (YYYY-MM-DD)"),
                )
            })
            .and_then(|s| parse_day(name, s))
    };
    let (from, to) = match days {
        Days::Range => (required("from", &p.from)?, required("to", &p.to)?),
        Days::OneDay => match p.day.as_deref().filter(|s| !s.is_empty()) {
            Some(d) => {
                let d = parse_day("day", d)?;
                (d, d)
            }
            None => {
                let (f, t) = (required("from", &p.from)?, required("to", &p.to)?);
                if f != t {
                    return Err(ApiError::bad_request(
                        "invalid_range",
                        "hourly shows one day: pass day=YYYY-MM-DD or from = to",
                    ));
                }
                (f, t)
            }
        },
        Days::Year => match (p.year, p.from.is_some() || p.to.is_some()) {
            (Some(y), _) => {
                let first = Date::new(y, 1, 1).map_err(|_| {
                    ApiError::bad_request("invalid_parameter", format!("invalid year {y}"))
                })?;
                (first, first.last_of_year())
            }
            (None, true) => (required("from", &p.from)?, required("to", &p.to)?),
            (None, false) => {
                let to = today_in(&tz);
                let from = to.checked_sub(jiff::Span::new().days(364)).unwrap_or(to);
                (from, to)
            }
        },
    };
    if from > to {
        return Err(ApiError::bad_request(
            "invalid_range",
            format!("from {from} is after to {to}"),
        ));
    }
    let span_days = (day_start_utc(to) - day_start_utc(from)) / 86_400 + 1;
    let max = state.config().max_range_days;
    if span_days > max {
        return Err(ApiError::bad_request(
            "range_too_large",
            format!("the range spans {span_days} days; at most {max} are allowed"),
        ));
    }
    let out_of_range = || ApiError::bad_request("invalid_date", "date out of the supported range");
    let start_ts = from
        .to_zoned(tz.clone())
        .map_err(|_| out_of_range())?
        .timestamp()
        .as_second();
    let end_ts = to
        .tomorrow()
        .and_then(|d| d.to_zoned(tz.clone()))
        .map_err(|_| out_of_range())?
        .timestamp()
        .as_second();
    let source = match p.source.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(
            s.parse::<Source>()
                .map_err(|e| ApiError::bad_request("unknown_source", e.to_string()))?,
        ),
    };
    let model = p
        .model
        .as_deref()
        .filter(|m| !m.trim().is_empty())
        .map(|m| normalize_model(Some(m)));
    Ok(UsageQuery {
        user_id,
        from,
        to,
        tz,
        tz_name,
        start_ts,
        end_ts,
        filter: UsageFilter { source, model },
    })
}

fn range_info(q: &UsageQuery) -> RangeInfo {
    RangeInfo {
        from: q.from.to_string(),
        to: q.to.to_string(),
        tz: q.tz_name.clone(),
    }
}

fn pricing(state: &AppState, costing: Costing<'_>) -> Pricing {
    let prices = &state.config().prices;
    Pricing {
        profile: prices.profile.clone(),
        source: prices.source.clone(),
        fetched_at: prices.fetched_at.clone(),
        unpriced_models: costing.unpriced.into_iter().collect(),
    }
}

/// Sums rows (any grouping) into the answer's summary.
fn summarize<'a>(state: &AppState, rows: impl IntoIterator<Item = &'a UsageRow>) -> Summary {
    let mut costing = Costing::new(&state.config().prices);
    let mut tokens = TokenCounts::default();
    let mut cost = 0.0;
    for r in rows {
        tokens += r.tokens;
        cost += costing.cost(&r.model, &r.tokens);
    }
    Summary {
        totals: costed(&tokens, cost),
        pricing: pricing(state, costing),
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// Totals and cost of a range: rollup for full UTC days, buckets for partial edge days.
#[utoipa::path(get, path = "/api/v1/usage/summary", tag = "usage",
    security(("bearer" = [])), params(UsageParams),
    responses((status = 200, body = SummaryResponse),
        (status = 400, body = crate::error::ErrorBody),
        (status = 401, body = crate::error::ErrorBody)))]
pub async fn summary(
    State(state): State<AppState>,
    ReaderAuth(user_id): ReaderAuth,
    params: Result<Query<UsageParams>, QueryRejection>,
) -> ApiResult<SummaryResponse> {
    let q = resolve(&state, user_id, params, Days::Range)?;
    let rows = usage::series_totals(state.store(), &q, Strategy::Auto).await?;
    let s = summarize(&state, &rows);
    Ok(Json(SummaryResponse {
        range: range_info(&q),
        totals: s.totals,
        pricing: s.pricing,
    }))
}

fn by_day(state: &AppState, rows: &[(Date, UsageRow)]) -> BTreeMap<Date, (TokenCounts, f64)> {
    let mut costing = Costing::new(&state.config().prices);
    let mut days: BTreeMap<Date, (TokenCounts, f64)> = BTreeMap::new();
    for (day, r) in rows {
        let e = days.entry(*day).or_default();
        e.0 += r.tokens;
        e.1 += costing.cost(&r.model, &r.tokens);
    }
    days
}

/// One row per day with usage, plus the server-computed summary.
#[utoipa::path(get, path = "/api/v1/usage/daily", tag = "usage",
    security(("bearer" = [])), params(UsageParams),
    responses((status = 200, body = DailyResponse),
        (status = 400, body = crate::error::ErrorBody),
        (status = 401, body = crate::error::ErrorBody)))]
pub async fn daily(
    State(state): State<AppState>,
    ReaderAuth(user_id): ReaderAuth,
    params: Result<Query<UsageParams>, QueryRejection>,
) -> ApiResult<DailyResponse> {
    let q = resolve(&state, user_id, params, Days::Range)?;
    let rows = usage::daily_rows(state.store(), &q, Strategy::Auto).await?;
    let data = by_day(&state, &rows)
        .into_iter()
        .map(|(day, (t, c))| DailyRow {
            day: day.to_string(),
            totals: costed(&t, c),
        })
        .collect();
    let summary = summarize(&state, rows.iter().map(|(_, r)| r));
    Ok(Json(DailyResponse {
        range: range_info(&q),
        data,
        summary,
    }))
}

/// Every half hour of one local day (`day=` or `from` = `to`), zeros included.
#[utoipa::path(get, path = "/api/v1/usage/hourly", tag = "usage",
    security(("bearer" = [])), params(UsageParams),
    responses((status = 200, body = HourlyResponse),
        (status = 400, body = crate::error::ErrorBody),
        (status = 401, body = crate::error::ErrorBody)))]
pub async fn hourly(
    State(state): State<AppState>,
    ReaderAuth(user_id): ReaderAuth,
    params: Result<Query<UsageParams>, QueryRejection>,
) -> ApiResult<HourlyResponse> {
    let q = resolve(&state, user_id, params, Days::OneDay)?;
    let rows = state
        .store()
        .bucket_rows(
            q.user_id,
            q.start_ts,
            q.end_ts,
            &q.filter,
            tokenledger_store::Period::HalfHour,
        )
        .await?;
    let mut costing = Costing::new(&state.config().prices);
    let mut slots: BTreeMap<i64, (TokenCounts, f64)> = BTreeMap::new();
    let first = q.start_ts + (1800 - q.start_ts.rem_euclid(1800)) % 1800;
    let mut t = first;
    while t < q.end_ts {
        slots.insert(t, Default::default());
        t += 1800;
    }
    for r in &rows {
        let e = slots.entry(r.period).or_default();
        e.0 += r.tokens;
        e.1 += costing.cost(&r.model, &r.tokens);
    }
    let data = slots
        .into_iter()
        .map(|(ts, (tokens, cost))| HourlyRow {
            hour_start: tokenledger_core::format_hour_start(ts),
            local_start: jiff::Timestamp::from_second(ts)
                .map(|t| {
                    t.to_zoned(q.tz.clone())
                        .strftime("%Y-%m-%dT%H:%M:%S%:z")
                        .to_string()
                })
                .unwrap_or_default(),
            totals: costed(&tokens, cost),
        })
        .collect();
    let summary = summarize(&state, &rows);
    Ok(Json(HourlyResponse {
        day: q.from.to_string(),
        tz: q.tz_name.clone(),
        data,
        summary,
    }))
}

/// One row per month with usage.
#[utoipa::path(get, path = "/api/v1/usage/monthly", tag = "usage",
    security(("bearer" = [])), params(UsageParams),
    responses((status = 200, body = MonthlyResponse),
        (status = 400, body = crate::error::ErrorBody),
        (status = 401, body = crate::error::ErrorBody)))]
pub async fn monthly(
    State(state): State<AppState>,
    ReaderAuth(user_id): ReaderAuth,
    params: Result<Query<UsageParams>, QueryRejection>,
) -> ApiResult<MonthlyResponse> {
    let q = resolve(&state, user_id, params, Days::Range)?;
    let rows = usage::daily_rows(state.store(), &q, Strategy::Auto).await?;
    let mut months: BTreeMap<(i16, i8), (TokenCounts, f64)> = BTreeMap::new();
    for (day, (t, c)) in by_day(&state, &rows) {
        let e = months.entry((day.year(), day.month())).or_default();
        e.0 += t;
        e.1 += c;
    }
    let data = months
        .into_iter()
        .map(|((y, m), (t, c))| MonthlyRow {
            month: format!("{y:04}-{m:02}"),
            totals: costed(&t, c),
        })
        .collect();
    let summary = summarize(&state, rows.iter().map(|(_, r)| r));
    Ok(Json(MonthlyResponse {
        range: range_info(&q),
        data,
        summary,
    }))
}

/// Every day of a year (`year=`, or `from`/`to`, default the last 365 days) with an intensity.
#[utoipa::path(get, path = "/api/v1/usage/heatmap", tag = "usage",
    security(("bearer" = [])), params(UsageParams),
    responses((status = 200, body = HeatmapResponse),
        (status = 400, body = crate::error::ErrorBody),
        (status = 401, body = crate::error::ErrorBody)))]
pub async fn heatmap(
    State(state): State<AppState>,
    ReaderAuth(user_id): ReaderAuth,
    params: Result<Query<UsageParams>, QueryRejection>,
) -> ApiResult<HeatmapResponse> {
    let q = resolve(&state, user_id, params, Days::Year)?;
    let rows = usage::daily_rows(state.store(), &q, Strategy::Auto).await?;
    let days = by_day(&state, &rows);
    let max = days
        .values()
        .map(|(t, _)| t.total_tokens)
        .max()
        .unwrap_or(0);
    let mut data = Vec::new();
    let mut active = 0u32;
    let mut d = q.from;
    loop {
        let (t, c) = days.get(&d).copied().unwrap_or_default();
        let level = if t.total_tokens == 0 || max == 0 {
            0
        } else {
            active += 1;
            // 1..=4 by quarter of the busiest day.
            (((t.total_tokens as u128 * 4).div_ceil(max as u128)) as u8).clamp(1, 4)
        };
        data.push(HeatmapDay {
            day: d.to_string(),
            total_tokens: t.total_tokens.to_string(),
            total_cost_usd: format_usd(c),
            level,
        });
        match d.tomorrow() {
            Ok(next) if next <= q.to => d = next,
            _ => break,
        }
    }
    let summary = summarize(&state, rows.iter().map(|(_, r)| r));
    Ok(Json(HeatmapResponse {
        range: range_info(&q),
        max_day_total_tokens: max.to_string(),
        active_days: active,
        data,
        summary,
    }))
}

/// Usage by model, largest first.
#[utoipa::path(get, path = "/api/v1/usage/models", tag = "usage",
    security(("bearer" = [])), params(UsageParams),
    responses((status = 200, body = ModelsResponse),
        (status = 400, body = crate::error::ErrorBody),
        (status = 401, body = crate::error::ErrorBody)))]
pub async fn models(
    State(state): State<AppState>,
    ReaderAuth(user_id): ReaderAuth,
    params: Result<Query<UsageParams>, QueryRejection>,
) -> ApiResult<ModelsResponse> {
    let q = resolve(&state, user_id, params, Days::Range)?;
    let rows = usage::series_totals(state.store(), &q, Strategy::Auto).await?;
    let mut costing = Costing::new(&state.config().prices);
    let mut by_model: BTreeMap<String, (TokenCounts, f64)> = BTreeMap::new();
    for r in &rows {
        let e = by_model.entry(r.model.clone()).or_default();
        e.0 += r.tokens;
        e.1 += costing.cost(&r.model, &r.tokens);
    }
    let mut data: Vec<ModelRow> = by_model
        .into_iter()
        .map(|(model, (t, c))| ModelRow {
            priced: costing.is_priced(&model),
            model,
            totals: costed(&t, c),
        })
        .collect();
    data.sort_by_key(|r| {
        std::cmp::Reverse(r.totals.tokens.total_tokens.parse::<u64>().unwrap_or(0))
    });
    let summary = summarize(&state, &rows);
    Ok(Json(ModelsResponse {
        range: range_info(&q),
        data,
        summary,
    }))
}

/// Usage by source, largest first.
#[utoipa::path(get, path = "/api/v1/usage/sources", tag = "usage",
    security(("bearer" = [])), params(UsageParams),
    responses((status = 200, body = SourcesResponse),
        (status = 400, body = crate::error::ErrorBody),
        (status = 401, body = crate::error::ErrorBody)))]
pub async fn sources(
    State(state): State<AppState>,
    ReaderAuth(user_id): ReaderAuth,
    params: Result<Query<UsageParams>, QueryRejection>,
) -> ApiResult<SourcesResponse> {
    let q = resolve(&state, user_id, params, Days::Range)?;
    let rows = usage::series_totals(state.store(), &q, Strategy::Auto).await?;
    let mut costing = Costing::new(&state.config().prices);
    let mut by_source: BTreeMap<String, (TokenCounts, f64)> = BTreeMap::new();
    for r in &rows {
        let e = by_source.entry(r.source.clone()).or_default();
        e.0 += r.tokens;
        e.1 += costing.cost(&r.model, &r.tokens);
    }
    let mut data: Vec<SourceRow> = by_source
        .into_iter()
        .map(|(source, (t, c))| SourceRow {
            source,
            totals: costed(&t, c),
        })
        .collect();
    data.sort_by_key(|r| {
        std::cmp::Reverse(r.totals.tokens.total_tokens.parse::<u64>().unwrap_or(0))
    });
    let summary = summarize(&state, &rows);
    Ok(Json(SourcesResponse {
        range: range_info(&q),
        data,
        summary,
    }))
}
