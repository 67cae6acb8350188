//! Reports: the daily aggregates read back from PostgreSQL, converted to the reporting currency
//! where a rate exists, totals per country, margin per category, top stores and projections,
//! written as `daily.csv`, `projections.csv`, `summary.json` and `report.html`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use chrono::{NaiveDate, Utc};
use clap::Args;
use object_store::path::Path;
use object_store::PutPayload;
use rust_decimal::Decimal;

use crate::migrations::{self, DAILY, RATES};

pub mod forecast;
pub mod html;
mod model;
pub mod rates;

pub use model::*;

/// What a report covers and where it goes.
#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    /// Where report files are written: a local directory or `s3://bucket/prefix`.
    #[arg(
        long = "report-out",
        env = "SKUFLOW_REPORT_OUT",
        default_value = "reports"
    )]
    pub out: String,
    /// Currency every amount is also converted to.
    #[arg(
        long = "reporting-currency",
        env = "SKUFLOW_REPORTING_CURRENCY",
        default_value = "EUR"
    )]
    pub reporting_currency: String,
    /// A rate file (`date,currency,reporting_currency,rate`) loaded into the rate table first.
    #[arg(long = "rates", env = "SKUFLOW_RATES")]
    pub rates: Option<PathBuf>,
    /// First business date covered (default: the first there is).
    #[arg(long = "from")]
    pub from: Option<NaiveDate>,
    /// Last business date covered (default: the last there is).
    #[arg(long = "to")]
    pub to: Option<NaiveDate>,
    /// Days projected past the last business date.
    #[arg(long = "horizon-days", env = "SKUFLOW_HORIZON_DAYS", default_value_t = 28,
          value_parser = clap::value_parser!(u32).range(1..=366))]
    pub horizon_days: u32,
    /// Stores listed (and projected one by one) in the report.
    #[arg(long = "top-stores", env = "SKUFLOW_TOP_STORES", default_value_t = 10)]
    pub top_stores: usize,
}

impl ReportArgs {
    /// The flags' defaults, writing to `out`.
    pub fn into_dir(out: &str) -> ReportArgs {
        ReportArgs {
            out: out.to_string(),
            reporting_currency: "EUR".into(),
            rates: None,
            from: None,
            to: None,
            horizon_days: 28,
            top_stores: 10,
        }
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        let c = &self.reporting_currency;
        anyhow::ensure!(
            rates::currency_ok(c),
            "--reporting-currency {c:?} is not an ISO 4217 code (e.g. EUR)"
        );
        if let (Some(f), Some(t)) = (self.from, self.to) {
            anyhow::ensure!(f <= t, "--from {f} is after --to {t}");
        }
        Ok(())
    }
}

/// `amount` converted at `rate`, in cents; none when the product is out of the decimal range.
fn converted(amount: Decimal, rate: Decimal) -> Option<Decimal> {
    amount.checked_mul(rate).map(cents)
}

/// Reads the aggregates (and loads the rate file first, when given).
/// Rows whose figures do not fit exact decimal arithmetic come back apart, with the reason.
pub async fn read_daily(
    client: &mut tokio_postgres::Client,
    args: &ReportArgs,
) -> anyhow::Result<(Vec<DailyRow>, Vec<ExcludedRow>)> {
    migrations::migrate(client)
        .await
        .context("applying the finance migrations")?;
    if let Some(path) = &args.rates {
        let list = rates::read(path)?;
        rates::store(client, &list, &path.display().to_string())
            .await
            .context("storing the rate file")?;
        tracing::info!(rates = list.len(), file = %path.display(), "Loaded rates.");
    }
    let rows = client
        .query(
            &format!(
                "SELECT d.business_date, d.country, d.store_id, d.store_category, d.chain, d.category, d.currency,
                        d.skus, d.skus_with_cost, d.units, d.revenue, d.revenue_with_cost, d.cost, d.gross_margin,
                        d.stock_value_retail, d.stock_value_cost,
                        CASE WHEN d.currency = $1 THEN 1::numeric ELSE r.rate END
                 FROM {DAILY} d
                 LEFT JOIN {RATES} r ON r.rate_date = d.business_date AND r.currency = d.currency AND r.reporting_currency = $1
                 WHERE ($2::date IS NULL OR d.business_date >= $2) AND ($3::date IS NULL OR d.business_date <= $3)
                 ORDER BY d.business_date, d.country, d.store_id, d.category, d.currency, d.store_category, d.chain"
            ),
            &[&args.reporting_currency, &args.from, &args.to],
        )
        .await
        .context("reading the daily aggregates")?;
    let mut daily = Vec::with_capacity(rows.len());
    let mut excluded = Vec::new();
    for r in &rows {
        match daily_row(r) {
            Ok(d) => daily.push(d),
            Err(e) => {
                let text = |i: usize| r.try_get::<_, String>(i).unwrap_or_default();
                excluded.push(ExcludedRow {
                    business_date: r.try_get(0).ok(),
                    country: text(1),
                    store_id: text(2),
                    category: text(5),
                    currency: text(6),
                    reason: format!("cannot be read exactly: {e}"),
                });
            }
        }
    }
    Ok((daily, excluded))
}

fn daily_row(r: &tokio_postgres::Row) -> Result<DailyRow, tokio_postgres::Error> {
    Ok(DailyRow {
        business_date: r.try_get(0)?,
        country: r.try_get(1)?,
        store_id: r.try_get(2)?,
        store_category: r.try_get(3)?,
        chain: r.try_get(4)?,
        category: r.try_get(5)?,
        currency: r.try_get(6)?,
        skus: r.try_get(7)?,
        skus_with_cost: r.try_get(8)?,
        units: r.try_get(9)?,
        revenue: r.try_get(10)?,
        revenue_with_cost: r.try_get(11)?,
        cost: r.try_get(12)?,
        gross_margin: r.try_get(13)?,
        stock_value_retail: r.try_get(14)?,
        stock_value_cost: r.try_get(15)?,
        fx_rate: r.try_get(16)?,
    })
}

fn projection_entry(
    scope: &'static str,
    country: &str,
    store_id: Option<&str>,
    currency: &str,
    series: &BTreeMap<NaiveDate, Decimal>,
    horizon: usize,
) -> ProjectionEntry {
    let history: Vec<(NaiveDate, Decimal)> = series.iter().map(|(d, v)| (*d, cents(*v))).collect();
    let (projection, error) = match forecast::forecast(&history, horizon) {
        Ok(p) => (Some(p), None),
        Err(e) => (None, Some(e.to_string())),
    };
    ProjectionEntry {
        scope,
        country: country.into(),
        store_id: store_id.map(str::to_string),
        currency: currency.into(),
        projection,
        error,
        history,
    }
}

/// Builds the report from the daily rows.
pub fn build(daily: Vec<DailyRow>, args: &ReportArgs) -> Report {
    let mut by_country: BTreeMap<
        (String, String),
        (Sums, Sums, std::collections::BTreeSet<NaiveDate>),
    > = BTreeMap::new();
    let mut grand = Sums::default();
    let mut categories: BTreeMap<String, Sums> = BTreeMap::new();
    let mut stores: BTreeMap<(String, String), (String, Sums)> = BTreeMap::new();
    let mut missing: BTreeMap<(NaiveDate, String), (usize, Decimal)> = BTreeMap::new();
    let mut country_series: BTreeMap<(String, String), BTreeMap<NaiveDate, Decimal>> =
        BTreeMap::new();
    let mut store_series: BTreeMap<(String, String, String), BTreeMap<NaiveDate, Decimal>> =
        BTreeMap::new();
    let mut excluded = Vec::new();
    let mut kept = Vec::with_capacity(daily.len());
    for r in daily {
        // Every figure the row changes is computed first and kept only when all fit: a row
        // whose addition overflows is left out whole, never half-added and never a panic.
        let ck = (r.country.clone(), r.currency.clone());
        let sk = (r.country.clone(), r.store_id.clone(), r.currency.clone());
        let day = |series: Option<&BTreeMap<NaiveDate, Decimal>>| {
            series
                .and_then(|s| s.get(&r.business_date))
                .copied()
                .unwrap_or_default()
                .checked_add(r.revenue)
        };
        let (own, conv0) = by_country
            .get(&ck)
            .map(|e| (e.0.clone(), e.1.clone()))
            .unwrap_or_default();
        let store_key = (r.country.clone(), r.store_id.clone());
        let next = (|| {
            let own = own.plus(&r, Decimal::ONE)?;
            let country_day = day(country_series.get(&ck))?;
            let store_day = day(store_series.get(&sk))?;
            let conv = match r.fx_rate {
                Some(rate) => Some((
                    conv0.plus(&r, rate)?,
                    grand.plus(&r, rate)?,
                    categories
                        .get(&r.category)
                        .cloned()
                        .unwrap_or_default()
                        .plus(&r, rate)?,
                    stores
                        .get(&store_key)
                        .map(|s| s.1.clone())
                        .unwrap_or_default()
                        .plus(&r, rate)?,
                )),
                None => None,
            };
            let missing_revenue = match r.fx_rate {
                Some(_) => None,
                None => Some(
                    missing
                        .get(&(r.business_date, r.currency.clone()))
                        .map_or(Decimal::ZERO, |m| m.1)
                        .checked_add(r.revenue)?,
                ),
            };
            Some((own, country_day, store_day, conv, missing_revenue))
        })();
        let Some((own, country_day, store_day, conv, missing_revenue)) = next else {
            tracing::warn!(date = %r.business_date, country = %r.country, store_id = %r.store_id, category = %r.category,
                currency = %r.currency, "A daily aggregate overflows the report's totals; leaving it out.");
            excluded.push(ExcludedRow {
                business_date: Some(r.business_date),
                country: r.country.clone(),
                store_id: r.store_id.clone(),
                category: r.category.clone(),
                currency: r.currency.clone(),
                reason: "adding it overflows the range of exact decimal arithmetic (about ±7.9e28)"
                    .into(),
            });
            continue;
        };
        let entry = by_country.entry(ck.clone()).or_default();
        entry.0 = own;
        country_series
            .entry(ck)
            .or_default()
            .insert(r.business_date, country_day);
        store_series
            .entry(sk)
            .or_default()
            .insert(r.business_date, store_day);
        match (conv, missing_revenue) {
            (Some((c, g, cat, st)), _) => {
                entry.1 = c;
                grand = g;
                categories.insert(r.category.clone(), cat);
                stores
                    .entry(store_key)
                    .or_insert_with(|| (r.chain.clone(), Sums::default()))
                    .1 = st;
            }
            (None, revenue) => {
                entry.2.insert(r.business_date);
                let m = missing
                    .entry((r.business_date, r.currency.clone()))
                    .or_default();
                m.0 += 1;
                m.1 = revenue.unwrap_or_default();
            }
        }
        kept.push(r);
    }
    let daily = kept;
    let totals = by_country
        .into_iter()
        .map(|((country, currency), (own, conv, days))| CountryTotal {
            country,
            currency,
            margin_pct: own.margin_pct(),
            sums: own.rounded(),
            revenue_reporting: cents(conv.revenue),
            gross_margin_reporting: cents(conv.gross_margin),
            days_without_rate: days.len(),
        })
        .collect();
    let mut by_category: Vec<Converted> = categories
        .into_iter()
        .map(|(name, s)| Converted {
            name,
            country: None,
            chain: None,
            margin_pct: s.margin_pct(),
            sums: s.rounded(),
        })
        .collect();
    by_category.sort_by(|a, b| {
        b.sums
            .gross_margin
            .cmp(&a.sums.gross_margin)
            .then(a.name.cmp(&b.name))
    });
    let mut top_stores: Vec<Converted> = stores
        .into_iter()
        .map(|((country, store), (chain, s))| Converted {
            name: store,
            country: Some(country),
            chain: (!chain.is_empty()).then_some(chain),
            margin_pct: s.margin_pct(),
            sums: s.rounded(),
        })
        .collect();
    top_stores.sort_by(|a, b| {
        b.sums
            .revenue
            .cmp(&a.sums.revenue)
            .then(a.country.cmp(&b.country))
            .then(a.name.cmp(&b.name))
    });
    top_stores.truncate(args.top_stores);
    let horizon = args.horizon_days as usize;
    let mut projections: Vec<ProjectionEntry> = country_series
        .iter()
        .map(|((country, currency), s)| {
            projection_entry("country", country, None, currency, s, horizon)
        })
        .collect();
    for st in &top_stores {
        let country = st.country.clone().unwrap_or_default();
        for ((c, store, currency), s) in &store_series {
            if *c == country && *store == st.name {
                projections.push(projection_entry(
                    "store",
                    c,
                    Some(store),
                    currency,
                    s,
                    horizon,
                ));
            }
        }
    }
    Report {
        generated_at: Utc::now(),
        from: args.from,
        to: args.to,
        reporting_currency: args.reporting_currency.clone(),
        rows: daily.len(),
        totals,
        grand_total: grand.rounded(),
        by_category,
        top_stores,
        missing_rates: missing
            .into_iter()
            .map(|((date, currency), (rows, revenue))| MissingRate {
                date,
                currency,
                rows,
                revenue: cents(revenue),
            })
            .collect(),
        projections,
        excluded_rows: excluded,
        daily,
    }
}

/// A CSV field, quoted when it needs to be. Text that a spreadsheet would read as a formula
/// (starting with `=`, `+`, `-`, `@`, a tab or a carriage return) gets a leading `'` and is
/// quoted, as OWASP recommends against CSV injection.
pub fn csv_field(s: &str) -> String {
    if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("\"'{}\"", s.replace('"', "\"\""))
    } else if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn opt<T: ToString>(x: Option<T>) -> String {
    x.map(|v| v.to_string()).unwrap_or_default()
}

/// `daily.csv`: every aggregate row, in its currency and converted.
pub fn daily_csv(report: &Report) -> String {
    let mut out = String::from(
        "business_date,country,store_id,store_category,chain,category,currency,skus,skus_with_cost,units,\
         revenue,cost,gross_margin,margin_pct,stock_value_retail,stock_value_cost,\
         reporting_currency,fx_rate,revenue_reporting,gross_margin_reporting\n",
    );
    for r in &report.daily {
        let fields = [
            r.business_date.to_string(),
            csv_field(&r.country),
            csv_field(&r.store_id),
            csv_field(&r.store_category),
            csv_field(&r.chain),
            csv_field(&r.category),
            csv_field(&r.currency),
            r.skus.to_string(),
            r.skus_with_cost.to_string(),
            r.units.to_string(),
            cents(r.revenue).to_string(),
            cents(r.cost).to_string(),
            cents(r.gross_margin).to_string(),
            opt(pct(r.gross_margin, r.revenue_with_cost)),
            cents(r.stock_value_retail).to_string(),
            cents(r.stock_value_cost).to_string(),
            report.reporting_currency.clone(),
            opt(r.fx_rate.map(|x| x.normalize())),
            opt(r.fx_rate.and_then(|x| converted(r.revenue, x))),
            opt(r.fx_rate.and_then(|x| converted(r.gross_margin, x))),
        ];
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    out
}

/// `projections.csv`: one line per projected day.
pub fn projections_csv(report: &Report) -> String {
    let mut out = String::from(
        "scope,country,store_id,currency,date,revenue,lower_95,upper_95,backtest_smape_pct,error\n",
    );
    for p in &report.projections {
        let head = [
            p.scope.to_string(),
            csv_field(&p.country),
            csv_field(p.store_id.as_deref().unwrap_or("")),
            csv_field(&p.currency),
        ]
        .join(",");
        match (&p.projection, &p.error) {
            (Some(proj), _) => {
                for pt in &proj.points {
                    out.push_str(&format!(
                        "{head},{},{},{},{},{},\n",
                        pt.date, pt.value, pt.lower, pt.upper, proj.backtest.value
                    ));
                }
            }
            (None, e) => {
                out.push_str(&format!(
                    "{head},,,,,,{}\n",
                    csv_field(e.as_deref().unwrap_or(""))
                ));
            }
        }
    }
    out
}

/// Generates a report and writes its files; returns it.
pub async fn run(pg_url: &str, args: &ReportArgs) -> anyhow::Result<Report> {
    args.validate()?;
    let mut client = skuflow_platform::pg::connect(pg_url)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let (daily, unreadable) = read_daily(&mut client, args).await?;
    for x in &unreadable {
        tracing::warn!(country = %x.country, store_id = %x.store_id, category = %x.category, reason = %x.reason,
            "A daily aggregate cannot be read exactly; leaving it out of the report.");
    }
    let mut report = build(daily, args);
    report.excluded_rows.splice(0..0, unreadable);
    write(&report, &args.out).await?;
    Ok(report)
}

/// Writes the report's files under `out` (each file replaced whole).
pub async fn write(report: &Report, out: &str) -> anyhow::Result<()> {
    let root = skuflow_platform::store::open_root(out, "--report-out")?;
    let files = [
        ("daily.csv", daily_csv(report)),
        ("projections.csv", projections_csv(report)),
        ("summary.json", serde_json::to_string_pretty(report)?),
        ("report.html", html::render(report)),
    ];
    for (name, body) in files {
        let path = Path::from(format!("{}/{name}", root.prefix).trim_start_matches('/'));
        root.store
            .put(&path, PutPayload::from(body.into_bytes()))
            .await
            .with_context(|| format!("writing {name} to {out}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ReportArgs {
        ReportArgs {
            out: "unused".into(),
            reporting_currency: "EUR".into(),
            rates: None,
            from: None,
            to: None,
            horizon_days: 7,
            top_stores: 5,
        }
    }

    fn row(store: &str, category: &str, revenue: Decimal, rate: Option<Decimal>) -> DailyRow {
        DailyRow {
            business_date: NaiveDate::from_ymd_opt(2026, 11, 1).unwrap(),
            country: "SE".into(),
            store_id: store.into(),
            store_category: "individual".into(),
            chain: String::new(),
            category: category.into(),
            currency: "SEK".into(),
            skus: 1,
            skus_with_cost: 1,
            units: 1,
            revenue,
            revenue_with_cost: revenue,
            cost: Decimal::ZERO,
            gross_margin: revenue,
            stock_value_retail: Decimal::ZERO,
            stock_value_cost: Decimal::ZERO,
            fx_rate: rate,
        }
    }

    /// Splits one line of RFC 4180 CSV into its fields.
    fn fields(line: &str) -> Vec<String> {
        let (mut out, mut cur, mut quoted, mut chars) =
            (Vec::new(), String::new(), false, line.chars().peekable());
        while let Some(c) = chars.next() {
            match (c, quoted) {
                ('"', true) if chars.peek() == Some(&'"') => {
                    chars.next();
                    cur.push('"');
                }
                ('"', _) => quoted = !quoted,
                (',', false) => out.push(std::mem::take(&mut cur)),
                _ => cur.push(c),
            }
        }
        out.push(cur);
        out
    }

    #[test]
    fn an_overflowing_row_is_left_out_with_its_reason_and_the_rest_adds_up() {
        let rate = Some(Decimal::from(10));
        let daily = vec![
            row("s1", "dairy", Decimal::from(100), rate),
            // Its conversion (× 10) leaves the decimal range: left out whole.
            row("s2", "dairy", Decimal::MAX, rate),
            row("s3", "dairy", Decimal::from(5), rate),
        ];
        let r = build(daily, &args());
        assert_eq!(r.rows, 2);
        assert_eq!(r.excluded_rows.len(), 1);
        assert_eq!(r.excluded_rows[0].store_id, "s2");
        assert!(r.excluded_rows[0].reason.contains("overflows"));
        assert_eq!(r.grand_total.revenue, Decimal::from(1050));
        assert_eq!(r.totals[0].sums.revenue, Decimal::from(105));
        assert_eq!(r.totals[0].revenue_reporting, Decimal::from(1050));
        assert!(daily_csv(&r).lines().count() == 3);
    }

    #[test]
    fn text_a_spreadsheet_would_run_as_a_formula_is_neutralised_and_reads_back() {
        let hostile = [
            "=HYPERLINK(\"http://x\",\"a\")",
            "+1+1",
            "-2+3",
            "@SUM(A1)",
            "\tlead",
            "plain, with comma",
        ];
        let daily = hostile
            .iter()
            .enumerate()
            .map(|(i, c)| row(&format!("s{i}"), c, Decimal::ONE, None))
            .collect();
        let csv = daily_csv(&build(daily, &args()));
        let mut got: Vec<String> = csv.lines().skip(1).map(|l| fields(l)[5].clone()).collect();
        got.sort();
        let mut want: Vec<String> = hostile
            .iter()
            .map(|c| match c.starts_with(['=', '+', '-', '@', '\t']) {
                true => format!("'{c}"),
                false => c.to_string(),
            })
            .collect();
        want.sort();
        assert_eq!(got, want);
        for f in got {
            assert!(
                !f.starts_with(['=', '+', '-', '@', '\t', '\r']),
                "{f:?} would run as a formula"
            );
        }
    }
}
