//! What a finance report holds: the daily aggregates with their conversion, totals per country,
//! projections, and what could not be converted or computed.

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::{Decimal, RoundingStrategy};
use serde::Serialize;

use super::forecast::Projection;

/// Rounds money to cents, halves away from zero.
pub fn cents(x: Decimal) -> Decimal {
    x.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
}

/// `part` as a percentage of `whole`; none when `whole` is zero or the ratio is out of range.
pub(crate) fn pct(part: Decimal, whole: Decimal) -> Option<Decimal> {
    part.checked_div(whole)?
        .checked_mul(Decimal::ONE_HUNDRED)
        .map(cents)
}

/// One row of the daily aggregates with its conversion.
#[derive(Debug, Clone, Serialize)]
pub struct DailyRow {
    pub business_date: NaiveDate,
    pub country: String,
    pub store_id: String,
    pub store_category: String,
    pub chain: String,
    pub category: String,
    pub currency: String,
    pub skus: i64,
    pub skus_with_cost: i64,
    pub units: i64,
    pub revenue: Decimal,
    pub revenue_with_cost: Decimal,
    pub cost: Decimal,
    pub gross_margin: Decimal,
    pub stock_value_retail: Decimal,
    pub stock_value_cost: Decimal,
    /// Units of the reporting currency per unit of `currency` that day; none when missing.
    pub fx_rate: Option<Decimal>,
}

/// Sums of a group of daily rows.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sums {
    pub skus: i64,
    pub units: i64,
    pub revenue: Decimal,
    pub revenue_with_cost: Decimal,
    pub cost: Decimal,
    pub gross_margin: Decimal,
    pub stock_value_retail: Decimal,
    pub stock_value_cost: Decimal,
}

impl Sums {
    /// These sums with `r` added at `rate`; none when a figure leaves the decimal range.
    pub(crate) fn plus(&self, r: &DailyRow, rate: Decimal) -> Option<Sums> {
        let add = |sum: Decimal, x: Decimal| x.checked_mul(rate).and_then(|x| sum.checked_add(x));
        Some(Sums {
            skus: self.skus.checked_add(r.skus)?,
            units: self.units.checked_add(r.units)?,
            revenue: add(self.revenue, r.revenue)?,
            revenue_with_cost: add(self.revenue_with_cost, r.revenue_with_cost)?,
            cost: add(self.cost, r.cost)?,
            gross_margin: add(self.gross_margin, r.gross_margin)?,
            stock_value_retail: add(self.stock_value_retail, r.stock_value_retail)?,
            stock_value_cost: add(self.stock_value_cost, r.stock_value_cost)?,
        })
    }

    /// Rounded to cents, for output.
    pub(crate) fn rounded(&self) -> Sums {
        Sums {
            skus: self.skus,
            units: self.units,
            revenue: cents(self.revenue),
            revenue_with_cost: cents(self.revenue_with_cost),
            cost: cents(self.cost),
            gross_margin: cents(self.gross_margin),
            stock_value_retail: cents(self.stock_value_retail),
            stock_value_cost: cents(self.stock_value_cost),
        }
    }

    /// Gross margin as a share of the revenue that has a cost, in percent.
    pub fn margin_pct(&self) -> Option<Decimal> {
        pct(self.gross_margin, self.revenue_with_cost)
    }
}

/// Totals of one country in one currency.
#[derive(Debug, Clone, Serialize)]
pub struct CountryTotal {
    pub country: String,
    pub currency: String,
    #[serde(flatten)]
    pub sums: Sums,
    pub margin_pct: Option<Decimal>,
    /// Revenue in the reporting currency over the days that have a rate.
    pub revenue_reporting: Decimal,
    pub gross_margin_reporting: Decimal,
    /// Days of this country and currency without a rate (left out of the converted figures).
    pub days_without_rate: usize,
}

/// A group in the reporting currency (category or store).
#[derive(Debug, Clone, Serialize)]
pub struct Converted {
    pub name: String,
    pub country: Option<String>,
    pub chain: Option<String>,
    #[serde(flatten)]
    pub sums: Sums,
    pub margin_pct: Option<Decimal>,
}

/// A day and currency without a rate to the reporting currency.
#[derive(Debug, Clone, Serialize)]
pub struct MissingRate {
    pub date: NaiveDate,
    pub currency: String,
    pub rows: usize,
    pub revenue: Decimal,
}

/// A daily aggregate row left out of the report, and why (a figure outside the range of exact
/// decimal arithmetic, about ±7.9e28).
#[derive(Debug, Clone, Serialize)]
pub struct ExcludedRow {
    pub business_date: Option<NaiveDate>,
    pub country: String,
    pub store_id: String,
    pub category: String,
    pub currency: String,
    pub reason: String,
}

/// A projection of one country's or store's revenue, or why there is none.
#[derive(Debug, Clone, Serialize)]
pub struct ProjectionEntry {
    pub scope: &'static str,
    pub country: String,
    pub store_id: Option<String>,
    pub currency: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub projection: Option<Projection>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Daily revenue the projection continues (for charts).
    pub history: Vec<(NaiveDate, Decimal)>,
}

/// A whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub generated_at: DateTime<Utc>,
    pub from: Option<NaiveDate>,
    pub to: Option<NaiveDate>,
    pub reporting_currency: String,
    pub rows: usize,
    pub totals: Vec<CountryTotal>,
    /// Everything that has a rate, in the reporting currency.
    pub grand_total: Sums,
    pub by_category: Vec<Converted>,
    pub top_stores: Vec<Converted>,
    pub missing_rates: Vec<MissingRate>,
    pub projections: Vec<ProjectionEntry>,
    /// Rows left out, each with its reason (also logged).
    pub excluded_rows: Vec<ExcludedRow>,
    #[serde(skip)]
    pub daily: Vec<DailyRow>,
}
