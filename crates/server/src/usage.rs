//! Usage arithmetic: which rows answer a query, how days are grouped in a time zone, and cost.
//!
//! Totals over a range come from the daily rollup for full UTC days and from buckets for the
//! partial days at either edge (a range in a time zone other than UTC starts and ends off UTC
//! midnight); when the rollup cannot be read, everything comes from buckets. Both paths give
//! the same numbers, which the integration suite checks.

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use std::collections::{BTreeMap, BTreeSet};
use tokenledger_core::{PriceTable, TokenCounts};
use tokenledger_store::{Period, Result, Store, UsageFilter, UsageRow, UserId};

const DAY: i64 = 86_400;

/// A validated usage query: local days `from..=to` in `tz`, i.e. buckets with
/// `start_ts <= hour_start < end_ts`.
#[derive(Debug, Clone)]
pub struct UsageQuery {
    pub user_id: UserId,
    pub from: Date,
    pub to: Date,
    pub tz: TimeZone,
    /// The zone's name as given (`UTC` by default).
    pub tz_name: String,
    pub start_ts: i64,
    pub end_ts: i64,
    pub filter: UsageFilter,
}

impl UsageQuery {
    /// Whether local days are UTC days, so that the rollup can serve whole days.
    pub fn is_utc(&self) -> bool {
        self.tz
            .to_fixed_offset()
            .map(|o| o.seconds() == 0)
            .unwrap_or(false)
    }
}

/// How totals over a range are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Rollup for full UTC days, buckets for partial edge days, buckets if the rollup fails.
    Auto,
    /// Buckets only (the fallback; also used to check the rollup).
    BucketsOnly,
}

/// The UTC date of unix seconds.
pub fn utc_date(secs: i64) -> Date {
    Timestamp::from_second(secs)
        .map(|t| t.to_zoned(TimeZone::UTC).date())
        .unwrap_or_default()
}

/// The local date of unix seconds in `tz`.
pub fn local_date(secs: i64, tz: &TimeZone) -> Date {
    Timestamp::from_second(secs)
        .map(|t| t.to_zoned(tz.clone()).date())
        .unwrap_or_default()
}

/// Merges rows of any period into one row per (source, model).
pub fn merge_by_series(rows: impl IntoIterator<Item = UsageRow>) -> Vec<UsageRow> {
    let mut map: BTreeMap<(String, String), TokenCounts> = BTreeMap::new();
    for r in rows {
        *map.entry((r.source, r.model)).or_default() += r.tokens;
    }
    map.into_iter()
        .map(|((source, model), tokens)| UsageRow {
            period: 0,
            source,
            model,
            tokens,
        })
        .collect()
}

/// Totals of the query's range, one row per (source, model).
pub async fn series_totals(
    store: &dyn Store,
    q: &UsageQuery,
    strategy: Strategy,
) -> Result<Vec<UsageRow>> {
    if strategy == Strategy::Auto {
        // Whole UTC days inside [start_ts, end_ts).
        let d0 = q.start_ts.div_euclid(DAY) * DAY
            + if q.start_ts.rem_euclid(DAY) == 0 {
                0
            } else {
                DAY
            };
        let d1 = q.end_ts.div_euclid(DAY) * DAY;
        if d0 < d1 {
            match store
                .rollup_rows(
                    q.user_id,
                    utc_date(d0),
                    utc_date(d1 - DAY),
                    &q.filter,
                    Period::All,
                )
                .await
            {
                Ok(mut rows) => {
                    if q.start_ts < d0 {
                        rows.extend(
                            store
                                .bucket_rows(q.user_id, q.start_ts, d0, &q.filter, Period::All)
                                .await?,
                        );
                    }
                    if d1 < q.end_ts {
                        rows.extend(
                            store
                                .bucket_rows(q.user_id, d1, q.end_ts, &q.filter, Period::All)
                                .await?,
                        );
                    }
                    return Ok(merge_by_series(rows));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "rollup unreadable; summing buckets instead");
                }
            }
        }
    }
    store
        .bucket_rows(q.user_id, q.start_ts, q.end_ts, &q.filter, Period::All)
        .await
}

/// Rows per local day (and source and model) of the query's range. In UTC, whole days come
/// from the rollup (buckets when it cannot be read); in another zone, from half-hour buckets
/// grouped by the local date of their start.
pub async fn daily_rows(
    store: &dyn Store,
    q: &UsageQuery,
    strategy: Strategy,
) -> Result<Vec<(Date, UsageRow)>> {
    if q.is_utc() {
        let rows = match strategy {
            Strategy::Auto => match store
                .rollup_rows(q.user_id, q.from, q.to, &q.filter, Period::Day)
                .await
            {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(error = %e, "rollup unreadable; summing buckets instead");
                    store
                        .bucket_rows(q.user_id, q.start_ts, q.end_ts, &q.filter, Period::Day)
                        .await?
                }
            },
            Strategy::BucketsOnly => {
                store
                    .bucket_rows(q.user_id, q.start_ts, q.end_ts, &q.filter, Period::Day)
                    .await?
            }
        };
        return Ok(rows.into_iter().map(|r| (utc_date(r.period), r)).collect());
    }
    let rows = store
        .bucket_rows(q.user_id, q.start_ts, q.end_ts, &q.filter, Period::HalfHour)
        .await?;
    let mut map: BTreeMap<(Date, String, String), TokenCounts> = BTreeMap::new();
    for r in rows {
        *map.entry((local_date(r.period, &q.tz), r.source, r.model))
            .or_default() += r.tokens;
    }
    Ok(map
        .into_iter()
        .map(|((day, source, model), tokens)| {
            (
                day,
                UsageRow {
                    period: 0,
                    source,
                    model,
                    tokens,
                },
            )
        })
        .collect())
}

/// Cost in USD, remembering the models the price table does not know.
pub struct Costing<'a> {
    prices: &'a PriceTable,
    pub unpriced: BTreeSet<String>,
}

impl<'a> Costing<'a> {
    pub fn new(prices: &'a PriceTable) -> Self {
        Costing {
            prices,
            unpriced: BTreeSet::new(),
        }
    }

    /// Cost of `tokens` of `model`; 0 (and listed as unpriced) for an unknown model.
    pub fn cost(&mut self, model: &str, tokens: &TokenCounts) -> f64 {
        if tokens.is_zero() {
            return 0.0;
        }
        match self.prices.cost(model, tokens) {
            Some(c) => c,
            None => {
                self.unpriced.insert(model.to_string());
                0.0
            }
        }
    }

    /// Whether the table knows `model`.
    pub fn is_priced(&self, model: &str) -> bool {
        self.prices.lookup(model).is_some()
    }
}

/// A cost as a decimal string (USD, six decimals).
pub fn format_usd(c: f64) -> String {
    format!("{:.6}", if c.is_finite() && c > 0.0 { c } else { 0.0 })
}
