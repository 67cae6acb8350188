//! CSV contract v1 for store SKU uploads: header mapping and row validation.

use chrono::NaiveDate;
use rust_decimal::Decimal;
use skuflow_schemas::RejectReason;

use crate::codes;

/// A column of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Column {
    Sku,
    ProductName,
    Category,
    Brand,
    UnitPrice,
    UnitCost,
    Currency,
    QuantityOnHand,
    UnitsSold,
    BusinessDate,
    Barcode,
}

impl Column {
    pub const ALL: [Column; 11] = [
        Column::Sku,
        Column::ProductName,
        Column::Category,
        Column::Brand,
        Column::UnitPrice,
        Column::UnitCost,
        Column::Currency,
        Column::QuantityOnHand,
        Column::UnitsSold,
        Column::BusinessDate,
        Column::Barcode,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Column::Sku => "sku",
            Column::ProductName => "product_name",
            Column::Category => "category",
            Column::Brand => "brand",
            Column::UnitPrice => "unit_price",
            Column::UnitCost => "unit_cost",
            Column::Currency => "currency",
            Column::QuantityOnHand => "quantity_on_hand",
            Column::UnitsSold => "units_sold",
            Column::BusinessDate => "business_date",
            Column::Barcode => "barcode",
        }
    }

    pub fn required(self) -> bool {
        !matches!(self, Column::Brand | Column::UnitCost | Column::Barcode)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Normalizes a header name: trimmed, lower case, inner runs of spaces, `-` and `_` as one `_`.
pub fn normalize_header(h: &str) -> String {
    let mut out = String::with_capacity(h.len());
    let mut sep = false;
    for c in h.trim().chars() {
        if c.is_whitespace() || c == '_' || c == '-' {
            sep = true;
        } else {
            if sep && !out.is_empty() {
                out.push('_');
            }
            sep = false;
            out.extend(c.to_lowercase());
        }
    }
    out
}

/// Which file column holds each contract column.
#[derive(Debug, Clone)]
pub struct HeaderMap {
    /// For each contract column (by [`Column::ALL`] order), its 0-based file column.
    positions: [Option<usize>; 11],
    /// Number of columns in the header.
    pub width: usize,
    /// Header names that are not part of the contract (ignored).
    pub extra: Vec<String>,
    /// The business dates a row may carry.
    pub dates: DateWindow,
}

/// The business dates the contract accepts: a date outside is a typo (year 0001, 9999) that
/// would otherwise reach every sink and make reports iterate over millions of days.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateWindow {
    pub earliest: NaiveDate,
    pub latest: NaiveDate,
}

impl DateWindow {
    /// Every date chrono can represent.
    pub const UNBOUNDED: DateWindow = DateWindow {
        earliest: NaiveDate::MIN,
        latest: NaiveDate::MAX,
    };

    /// From `earliest` to `days_ahead` days after `today`.
    pub fn until_ahead(earliest: NaiveDate, today: NaiveDate, days_ahead: u32) -> Self {
        DateWindow {
            earliest,
            latest: today
                .checked_add_days(chrono::Days::new(u64::from(days_ahead)))
                .unwrap_or(NaiveDate::MAX),
        }
    }

    pub fn contains(&self, d: NaiveDate) -> bool {
        (self.earliest..=self.latest).contains(&d)
    }
}

/// Why a header cannot be used: the file fails as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("missing required column(s): {}", .0.join(", "))]
    Missing(Vec<&'static str>),
    #[error("column {name} appears twice (columns {first} and {second})")]
    Duplicate {
        name: String,
        first: usize,
        second: usize,
    },
}

impl HeaderMap {
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Self, HeaderError> {
        let mut positions = [None; 11];
        let mut extra = Vec::new();
        let mut seen: Vec<(String, usize)> = Vec::new();
        let mut width = 0;
        for (i, raw) in names.into_iter().enumerate() {
            width = i + 1;
            let name = normalize_header(raw);
            if let Some((_, first)) = seen.iter().find(|(n, _)| *n == name) {
                return Err(HeaderError::Duplicate {
                    name,
                    first: first + 1,
                    second: i + 1,
                });
            }
            seen.push((name.clone(), i));
            match Column::ALL.iter().find(|c| c.name() == name) {
                Some(c) => positions[c.index()] = Some(i),
                None => extra.push(raw.trim().to_string()),
            }
        }
        let missing: Vec<&'static str> = Column::ALL
            .iter()
            .filter(|c| c.required() && positions[c.index()].is_none())
            .map(|c| c.name())
            .collect();
        if !missing.is_empty() {
            return Err(HeaderError::Missing(missing));
        }
        Ok(HeaderMap {
            positions,
            width,
            extra,
            dates: DateWindow::UNBOUNDED,
        })
    }

    /// 0-based file column of `c`.
    pub fn position(&self, c: Column) -> Option<usize> {
        self.positions[c.index()]
    }
}

/// A row that passed the contract. Its text fields borrow the row's (trimmed) fields: nothing is
/// copied until a record is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidRow<'a> {
    pub sku: &'a str,
    pub product_name: &'a str,
    pub category: &'a str,
    pub brand: Option<&'a str>,
    pub unit_price: Decimal,
    pub unit_cost: Option<Decimal>,
    /// The ISO 4217 code, upper case.
    pub currency: &'static str,
    pub quantity_on_hand: i32,
    pub units_sold: i32,
    pub business_date: NaiveDate,
    pub barcode: Option<&'a str>,
}

/// Largest value length quoted back in a reason.
const VALUE_CAP: usize = 200;
pub const MAX_PRODUCT_NAME: usize = 256;
pub const MAX_TEXT: usize = 128;
const MAX_INTEGER_DIGITS: usize = 14;
const MAX_SCALE: usize = 4;

struct Check<'f, 'a> {
    map: &'f HeaderMap,
    fields: &'f [&'a str],
    reasons: Vec<RejectReason>,
}

impl<'a> Check<'_, 'a> {
    fn raw(&self, c: Column) -> Option<&'a str> {
        self.map
            .position(c)
            .and_then(|i| self.fields.get(i))
            .map(|s| s.trim())
    }

    fn fail(&mut self, c: Column, value: Option<&str>, rule: &str, message: String) {
        let value = value.map(|v| skuflow_platform::text::truncate_chars(v, VALUE_CAP));
        self.reasons.push(RejectReason {
            field: Some(c.name().to_string()),
            column: self.map.position(c).map(|p| p as u32 + 1),
            value,
            rule: rule.to_string(),
            message,
        });
    }

    /// The trimmed value, or `None` when empty; records a `required` reason if it must be there.
    fn value(&mut self, c: Column) -> Option<&'a str> {
        match self.raw(c) {
            Some(v) if !v.is_empty() => Some(v),
            _ => {
                if c.required() {
                    self.fail(c, None, "required", format!("{} is required", c.name()));
                }
                None
            }
        }
    }

    fn text(&mut self, c: Column, max: usize) -> Option<&'a str> {
        let v = self.value(c)?;
        // Counting characters is only needed when the bytes could be too many.
        if v.len() > max && v.chars().count() > max {
            self.fail(
                c,
                Some(v),
                "max_length",
                format!("{} is longer than {max} characters", c.name()),
            );
            return None;
        }
        let control = |ch: char| ch.is_control() && !matches!(ch, '\n' | '\r' | '\t');
        let has_control = if v.is_ascii() {
            v.bytes().any(|b| control(char::from(b)))
        } else {
            v.chars().any(control)
        };
        if has_control {
            self.fail(
                c,
                Some(v),
                "control_characters",
                format!("{} contains control characters", c.name()),
            );
            return None;
        }
        Some(v)
    }

    fn decimal(&mut self, c: Column) -> Option<Decimal> {
        let v = self.value(c)?;
        let (negative, digits) = match v.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, v),
        };
        let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
        let well_formed = !int.is_empty()
            && int.bytes().all(|b| b.is_ascii_digit())
            && frac.bytes().all(|b| b.is_ascii_digit())
            && (frac.is_empty() != digits.contains('.'));
        if !well_formed {
            self.fail(
                c,
                Some(v),
                "decimal",
                format!("{} must be a plain decimal number like 12.50", c.name()),
            );
            return None;
        }
        if frac.len() > MAX_SCALE {
            self.fail(
                c,
                Some(v),
                "decimal_places",
                format!("{} has more than {MAX_SCALE} decimal places", c.name()),
            );
            return None;
        }
        if int.trim_start_matches('0').len() > MAX_INTEGER_DIGITS {
            self.fail(
                c,
                Some(v),
                "range",
                format!(
                    "{} has more than {MAX_INTEGER_DIGITS} integer digits",
                    c.name()
                ),
            );
            return None;
        }
        let Ok(d) = digits.parse::<Decimal>() else {
            self.fail(
                c,
                Some(v),
                "decimal",
                format!("{} is not a decimal number", c.name()),
            );
            return None;
        };
        if negative && !d.is_zero() {
            self.fail(
                c,
                Some(v),
                "non_negative",
                format!("{} must be >= 0", c.name()),
            );
            return None;
        }
        Some(d)
    }

    fn integer(&mut self, c: Column) -> Option<i32> {
        let v = self.value(c)?;
        let (negative, digits) = match v.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, v),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            self.fail(
                c,
                Some(v),
                "integer",
                format!("{} must be a whole number", c.name()),
            );
            return None;
        }
        let n: Option<i32> = digits.parse().ok();
        match (negative, n) {
            (true, Some(0)) | (false, Some(_)) => n,
            (true, _) => {
                self.fail(
                    c,
                    Some(v),
                    "non_negative",
                    format!("{} must be >= 0", c.name()),
                );
                None
            }
            (false, None) => {
                self.fail(
                    c,
                    Some(v),
                    "range",
                    format!("{} is larger than {}", c.name(), i32::MAX),
                );
                None
            }
        }
    }
}

fn gtin_check_ok(digits: &[u8]) -> bool {
    let (body, check) = digits.split_at(digits.len() - 1);
    let sum: u32 = body
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| u32::from(d - b'0') * if i % 2 == 0 { 3 } else { 1 })
        .sum();
    (10 - sum % 10) % 10 == u32::from(check[0] - b'0')
}

/// Validates one row's fields (already known to be UTF-8) against the contract, collecting
/// every reason it fails.
pub fn validate_row<'a>(
    map: &HeaderMap,
    fields: &[&'a str],
) -> Result<ValidRow<'a>, Vec<RejectReason>> {
    let mut ck = Check {
        map,
        fields,
        reasons: Vec::new(),
    };
    if fields.len() != map.width {
        ck.reasons.push(RejectReason {
            field: None,
            column: None,
            value: None,
            rule: "field_count".into(),
            message: format!(
                "expected {} fields (as in the header), found {}",
                map.width,
                fields.len()
            ),
        });
    }
    let sku = ck.value(Column::Sku).and_then(|v| {
        let ok = v.len() <= 64
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Some(v)
        } else {
            ck.fail(
                Column::Sku,
                Some(v),
                "sku_format",
                "sku must be 1-64 characters of A-Z a-z 0-9 . _ -".into(),
            );
            None
        }
    });
    let product_name = ck.text(Column::ProductName, MAX_PRODUCT_NAME);
    let category = ck.text(Column::Category, MAX_TEXT);
    let brand = ck.text(Column::Brand, MAX_TEXT);
    let unit_price = ck.decimal(Column::UnitPrice);
    let unit_cost = ck.decimal(Column::UnitCost);
    let currency = ck.value(Column::Currency).and_then(|v| {
        let code = codes::currency(v);
        if code.is_some() {
            code
        } else {
            ck.fail(
                Column::Currency,
                Some(v),
                "currency",
                "currency must be an ISO 4217 code such as EUR".into(),
            );
            None
        }
    });
    let quantity_on_hand = ck.integer(Column::QuantityOnHand);
    let units_sold = ck.integer(Column::UnitsSold);
    let business_date = ck.value(Column::BusinessDate).and_then(|v| {
        let parsed = (v.len() == 10)
            .then(|| {
                // The common form without chrono's general parser; anything else still goes
                // through it, so what is accepted does not change.
                skuflow_schemas::wire_time::plain_date(v.as_bytes())
                    .or_else(|| NaiveDate::parse_from_str(v, "%Y-%m-%d").ok())
            })
            .flatten();
        match parsed {
            None => ck.fail(
                Column::BusinessDate,
                Some(v),
                "date",
                "business_date must be a real date in YYYY-MM-DD form".into(),
            ),
            Some(d) if !map.dates.contains(d) => {
                ck.fail(
                    Column::BusinessDate,
                    Some(v),
                    "date_range",
                    format!(
                        "business_date must be between {} and {} (a typo in the year?)",
                        map.dates.earliest, map.dates.latest
                    ),
                );
                return None;
            }
            Some(_) => {}
        }
        parsed
    });
    let barcode = ck.value(Column::Barcode).and_then(|v| {
        let b = v.as_bytes();
        if !(matches!(b.len(), 8 | 12 | 13 | 14) && b.iter().all(u8::is_ascii_digit)) {
            ck.fail(
                Column::Barcode,
                Some(v),
                "gtin_format",
                "barcode must be a GTIN of 8, 12, 13 or 14 digits".into(),
            );
            None
        } else if !gtin_check_ok(b) {
            ck.fail(
                Column::Barcode,
                Some(v),
                "gtin_check_digit",
                "barcode check digit is wrong".into(),
            );
            None
        } else {
            Some(v)
        }
    });
    if !ck.reasons.is_empty() {
        return Err(ck.reasons);
    }
    match (
        sku,
        product_name,
        category,
        unit_price,
        currency,
        quantity_on_hand,
        units_sold,
        business_date,
    ) {
        (
            Some(sku),
            Some(product_name),
            Some(category),
            Some(unit_price),
            Some(currency),
            Some(quantity_on_hand),
            Some(units_sold),
            Some(business_date),
        ) => Ok(ValidRow {
            sku,
            product_name,
            category,
            brand,
            unit_price,
            unit_cost,
            currency,
            quantity_on_hand,
            units_sold,
            business_date,
            barcode,
        }),
        _ => Err(vec![RejectReason {
            field: None,
            column: None,
            value: None,
            rule: "internal".into(),
            message: "row incomplete without a recorded reason".into(),
        }]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: [&str; 11] = [
        "SKU",
        " Product Name ",
        "category",
        "brand",
        "unit_price",
        "unit_cost",
        "currency",
        "quantity_on_hand",
        "units_sold",
        "business_date",
        "barcode",
    ];

    fn map() -> HeaderMap {
        HeaderMap::from_names(HEADER).unwrap()
    }

    fn row(overrides: &[(usize, &str)]) -> Vec<String> {
        let mut r: Vec<String> = [
            "A-1",
            "Oat milk",
            "dairy",
            "",
            "1.2900",
            "0.8",
            "eur",
            "10",
            "3",
            "2026-11-01",
            "4006381333931",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for (i, v) in overrides {
            r[*i] = v.to_string();
        }
        r
    }

    fn check(r: &[String]) -> Result<ValidRow<'_>, Vec<RejectReason>> {
        let fields: Vec<&str> = r.iter().map(String::as_str).collect();
        validate_row(&map(), &fields)
    }

    fn rules(r: &[String]) -> Vec<String> {
        check(r)
            .unwrap_err()
            .into_iter()
            .map(|x| format!("{}:{}", x.field.unwrap_or_default(), x.rule))
            .collect()
    }

    #[test]
    fn a_good_row_passes_exactly() {
        let r = row(&[(6, "eur")]);
        let v = check(&r).unwrap();
        assert_eq!(v.unit_price.to_string(), "1.2900");
        assert_eq!(v.unit_cost.unwrap().to_string(), "0.8");
        assert_eq!(v.currency, "EUR");
        assert_eq!(v.brand, None);
    }

    #[test]
    fn business_dates_outside_the_window_are_rejected_with_the_window() {
        let day = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        let mut m = map();
        m.dates = DateWindow::until_ahead(day("2000-01-01"), day("2026-12-02"), 31);
        assert_eq!(m.dates.latest, day("2027-01-02"));
        for (date, ok) in [
            ("0001-01-01", false),
            ("1999-12-31", false),
            ("2000-01-01", true),
            ("2027-01-02", true),
            ("2027-01-03", false),
            ("9999-12-31", false),
        ] {
            let r = row(&[(9, date)]);
            let fields: Vec<&str> = r.iter().map(String::as_str).collect();
            match validate_row(&m, &fields) {
                Ok(_) => assert!(ok, "{date} passed"),
                Err(reasons) => {
                    assert!(!ok, "{date} rejected: {reasons:?}");
                    assert_eq!(reasons.len(), 1);
                    assert_eq!(reasons[0].rule, "date_range");
                    assert_eq!(reasons[0].column, Some(10));
                    assert!(
                        reasons[0]
                            .message
                            .contains("between 2000-01-01 and 2027-01-02"),
                        "{}",
                        reasons[0].message
                    );
                }
            }
        }
    }

    #[test]
    fn headers_match_case_and_space_insensitively_in_any_order() {
        let m = HeaderMap::from_names([
            "units sold",
            "Unit-Price",
            "extra",
            "sku",
            "PRODUCT_NAME",
            "category",
            "currency",
            "quantity on hand",
            "business date",
        ])
        .unwrap();
        assert_eq!(m.position(Column::UnitsSold), Some(0));
        assert_eq!(m.extra, vec!["extra"]);
        assert_eq!(m.position(Column::Barcode), None);
    }

    #[test]
    fn header_errors_name_the_columns() {
        let e = HeaderMap::from_names(["sku", "category"]).unwrap_err();
        assert!(e.to_string().contains("product_name"));
        let e = HeaderMap::from_names(["sku", "SKU "]).unwrap_err();
        assert_eq!(
            e,
            HeaderError::Duplicate {
                name: "sku".into(),
                first: 1,
                second: 2
            }
        );
    }

    #[test]
    fn every_reason_is_reported() {
        let r = rules(&row(&[
            (0, "bad sku!"),
            (4, "-1"),
            (6, "EURO"),
            (7, "1.5"),
            (9, "2026-02-30"),
            (10, "4006381333932"),
        ]));
        assert_eq!(
            r,
            vec![
                "sku:sku_format",
                "unit_price:non_negative",
                "currency:currency",
                "quantity_on_hand:integer",
                "business_date:date",
                "barcode:gtin_check_digit",
            ]
        );
    }

    #[test]
    fn text_length_counts_characters_and_control_characters_are_refused() {
        // Column 1 is product_name (at most MAX_PRODUCT_NAME characters).
        let ascii = "a".repeat(MAX_PRODUCT_NAME);
        let wide = "é".repeat(MAX_PRODUCT_NAME); // twice the bytes, still within the limit
        for ok in [
            ascii.as_str(),
            wide.as_str(),
            "tab\tand\nnewline",
            "日本語 — ok",
        ] {
            assert!(check(&row(&[(1, ok)])).is_ok(), "{ok:?}");
        }
        let long_ascii = "a".repeat(MAX_PRODUCT_NAME + 1);
        let long_wide = "é".repeat(MAX_PRODUCT_NAME + 1);
        for (bad, rule) in [
            (long_ascii.as_str(), "max_length"),
            (long_wide.as_str(), "max_length"),
            ("bell\u{7}", "control_characters"),
            ("del\u{7f}", "control_characters"),
            ("ünï\u{85}code", "control_characters"),
            ("ünï\u{1b}code", "control_characters"),
        ] {
            assert_eq!(
                rules(&row(&[(1, bad)])),
                vec![format!("product_name:{rule}")],
                "{bad:?}"
            );
        }
    }

    #[test]
    fn decimals_are_strict() {
        for (v, rule) in [
            ("1.23456", "decimal_places"),
            ("1e3", "decimal"),
            ("1,5", "decimal"),
            ("", "required"),
            ("1.", "decimal"),
            (".5", "decimal"),
            ("123456789012345", "range"),
            ("+1", "decimal"),
        ] {
            assert_eq!(
                rules(&row(&[(4, v)])),
                vec![format!("unit_price:{rule}")],
                "{v}"
            );
        }
        assert_eq!(check(&row(&[(4, "0")])).unwrap().unit_price, Decimal::ZERO);
        assert_eq!(check(&row(&[(5, "")])).unwrap().unit_cost, None);
    }

    #[test]
    fn field_count_and_integers() {
        let mut r = row(&[]);
        r.pop();
        assert!(rules(&r).contains(&":field_count".to_string()));
        assert_eq!(rules(&row(&[(8, "99999999999")])), vec!["units_sold:range"]);
        assert_eq!(rules(&row(&[(8, "-2")])), vec!["units_sold:non_negative"]);
    }

    #[test]
    fn gtin_lengths() {
        assert!(check(&row(&[(10, "96385074")])).is_ok()); // GTIN-8
        assert!(check(&row(&[(10, "036000291452")])).is_ok()); // UPC-A
        assert!(check(&row(&[(10, "10614141000415")])).is_ok()); // GTIN-14
        assert_eq!(rules(&row(&[(10, "12345")])), vec!["barcode:gtin_format"]);
    }

    #[test]
    fn reasons_carry_columns() {
        let e = check(&row(&[(4, "x")])).unwrap_err();
        assert_eq!(e[0].column, Some(5));
        assert_eq!(e[0].value.as_deref(), Some("x"));
    }
}
