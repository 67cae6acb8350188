//! The rate table: `date,currency,reporting_currency,rate` per day, meaning one unit of
//! `currency` is worth `rate` units of `reporting_currency` on `date`. Loaded from a CSV file
//! into `skuflow_finance.fx_rates` (or filled there by other means). A missing rate is
//! reported, never guessed from another day.

use std::collections::HashMap;

use chrono::NaiveDate;
use rust_decimal::Decimal;
use tokio_postgres::Client;

use crate::migrations::RATES;

/// One rate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rate {
    pub date: NaiveDate,
    pub currency: String,
    pub reporting_currency: String,
    pub rate: Decimal,
}

/// A rate file that cannot be used, with where and why.
#[derive(Debug, thiserror::Error)]
pub enum RateError {
    #[error("{file}: cannot read: {cause}")]
    Read { file: String, cause: std::io::Error },
    #[error("{file}: line {line}, column {column} (`{field}`): {reason}")]
    Field {
        file: String,
        line: usize,
        column: usize,
        field: String,
        reason: String,
    },
    #[error("{file}: line {line}: {reason}")]
    Line {
        file: String,
        line: usize,
        reason: String,
    },
}

const COLUMNS: [&str; 4] = ["date", "currency", "reporting_currency", "rate"];

/// Whether `c` looks like an ISO 4217 code (three ASCII capitals).
pub(crate) fn currency_ok(c: &str) -> bool {
    c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase())
}

/// Parses a rate file's text (`file` names it in errors).
pub fn parse(file: &str, text: &str) -> Result<Vec<Rate>, RateError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim_end_matches('\r')));
    let header: Vec<String> = match lines.next() {
        Some((_, h)) => h
            .split(',')
            .map(|c| c.trim().to_ascii_lowercase())
            .collect(),
        None => {
            return Err(RateError::Line {
                file: file.into(),
                line: 1,
                reason: format!("empty file; expected the header `{}`", COLUMNS.join(",")),
            })
        }
    };
    let mut at = [0usize; 4];
    for (k, want) in COLUMNS.iter().enumerate() {
        at[k] = header
            .iter()
            .position(|h| h == want)
            .ok_or_else(|| RateError::Line {
                file: file.into(),
                line: 1,
                reason: format!(
                    "header has no `{want}` column (expected `{}`)",
                    COLUMNS.join(",")
                ),
            })?;
    }
    let mut out = Vec::new();
    let mut seen: HashMap<(NaiveDate, String, String), usize> = HashMap::new();
    for (line, text) in lines {
        if text.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = text.split(',').map(str::trim).collect();
        if fields.len() != header.len() {
            return Err(RateError::Line {
                file: file.into(),
                line,
                reason: format!("{} fields, the header has {}", fields.len(), header.len()),
            });
        }
        let bad = |k: usize, reason: String| RateError::Field {
            file: file.into(),
            line,
            column: at[k] + 1,
            field: COLUMNS[k].into(),
            reason,
        };
        let date = NaiveDate::parse_from_str(fields[at[0]], "%Y-%m-%d")
            .map_err(|_| bad(0, format!("`{}` is not a date (YYYY-MM-DD)", fields[at[0]])))?;
        let currency = fields[at[1]].to_string();
        if !currency_ok(&currency) {
            return Err(bad(1, format!("`{currency}` is not an ISO 4217 code")));
        }
        let reporting = fields[at[2]].to_string();
        if !currency_ok(&reporting) {
            return Err(bad(2, format!("`{reporting}` is not an ISO 4217 code")));
        }
        let rate: Decimal = fields[at[3]]
            .parse()
            .map_err(|_| bad(3, format!("`{}` is not a decimal number", fields[at[3]])))?;
        if rate <= Decimal::ZERO {
            return Err(bad(3, format!("rate {rate} is not positive")));
        }
        if let Some(first) = seen.insert((date, currency.clone(), reporting.clone()), line) {
            return Err(RateError::Line {
                file: file.into(),
                line,
                reason: format!(
                    "{currency}→{reporting} on {date} is given twice (also line {first})"
                ),
            });
        }
        out.push(Rate {
            date,
            currency,
            reporting_currency: reporting,
            rate,
        });
    }
    Ok(out)
}

/// Reads and parses a rate file.
pub fn read(path: &std::path::Path) -> Result<Vec<Rate>, RateError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|cause| RateError::Read {
        file: file.clone(),
        cause,
    })?;
    parse(&file, &text)
}

/// Stores `rates` (a later load of the same day and pair replaces the rate).
pub async fn store(client: &mut Client, rates: &[Rate], source: &str) -> anyhow::Result<()> {
    let tx = client.transaction().await?;
    let stmt = tx
        .prepare(&format!(
            "INSERT INTO {RATES} (rate_date, currency, reporting_currency, rate, source) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (rate_date, currency, reporting_currency) DO UPDATE
             SET rate = EXCLUDED.rate, source = EXCLUDED.source, loaded_at = now()"
        ))
        .await?;
    for r in rates {
        tx.execute(
            &stmt,
            &[
                &r.date,
                &r.currency,
                &r.reporting_currency,
                &r.rate,
                &source,
            ],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rates_in_any_column_order() {
        let r = parse(
            "r.csv",
            "\u{feff}rate,date,currency,reporting_currency\r\n0.0871,2026-03-02,SEK,EUR\n\n",
        )
        .unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].rate, "0.0871".parse().unwrap());
        assert_eq!(r[0].currency, "SEK");
    }

    #[test]
    fn bad_rates_name_file_line_column_and_field() {
        let cases = [
            ("date,currency,reporting_currency,rate\n2026-02-30,SEK,EUR,1\n", "r.csv: line 2, column 1 (`date`): `2026-02-30` is not a date"),
            ("date,currency,reporting_currency,rate\n2026-03-02,sek,EUR,1\n", "line 2, column 2 (`currency`): `sek` is not an ISO 4217 code"),
            ("date,currency,reporting_currency,rate\n2026-03-02,SEK,EUR,-1\n", "line 2, column 4 (`rate`): rate -1 is not positive"),
            ("date,currency,reporting_currency,rate\n2026-03-02,SEK,EUR,1.2.3\n", "column 4 (`rate`): `1.2.3` is not a decimal number"),
            ("date,currency,rate\n", "line 1: header has no `reporting_currency` column"),
            ("date,currency,reporting_currency,rate\n2026-03-02,SEK,EUR\n", "line 2: 3 fields, the header has 4"),
            ("date,currency,reporting_currency,rate\n2026-03-02,SEK,EUR,1\n2026-03-02,SEK,EUR,2\n", "line 3: SEK→EUR on 2026-03-02 is given twice (also line 2)"),
            ("", "line 1: empty file"),
        ];
        for (text, want) in cases {
            let e = parse("r.csv", text).unwrap_err().to_string();
            assert!(e.contains(want), "{e:?} does not contain {want:?}");
        }
    }
}
