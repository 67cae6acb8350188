//! Fast reading of the dates and timestamps records carry. Records are read millions of times
//! (every sink parses every record), and the forms skuflow writes — `2026-11-01` and
//! `2026-11-01T08:30:00[.ffffff]Z` — are read here without the general date parser; any other
//! form falls back to chrono's, so what is accepted does not change.

use std::fmt;

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use serde::de::{self, Deserializer, Visitor};

fn digits(b: &[u8]) -> Option<u32> {
    b.iter().try_fold(0u32, |n, c| {
        c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
    })
}

/// `YYYY-MM-DD` (four-digit year, two-digit month and day), or `None` for any other form.
pub fn plain_date(b: &[u8]) -> Option<NaiveDate> {
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    NaiveDate::from_ymd_opt(
        digits(&b[..4])? as i32,
        digits(&b[5..7])?,
        digits(&b[8..10])?,
    )
}

/// `YYYY-MM-DDTHH:MM:SS`, an optional fraction of up to 9 digits, then `Z` or `+00:00`.
fn fast_timestamp(s: &str) -> Option<DateTime<Utc>> {
    let b = s.as_bytes();
    if b.len() < 20 || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let date = plain_date(&b[..10])?;
    let (h, m, sec) = (
        digits(&b[11..13])?,
        digits(&b[14..16])?,
        digits(&b[17..19])?,
    );
    let mut rest = &b[19..];
    let mut nanos = 0;
    if let Some(frac) = rest.strip_prefix(b".") {
        let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 || n > 9 {
            return None;
        }
        nanos = digits(&frac[..n])? * 10u32.pow(9 - n as u32);
        rest = &frac[n..];
    }
    if rest != b"Z" && rest != b"+00:00" {
        return None;
    }
    // Leap seconds and anything else unusual go to chrono's parser.
    let time = (sec < 60).then(|| NaiveTime::from_hms_nano_opt(h, m, sec, nanos))??;
    Some(date.and_time(time).and_utc())
}

struct DateVisitor;

impl Visitor<'_> for DateVisitor {
    type Value = NaiveDate;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a date, YYYY-MM-DD")
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<NaiveDate, E> {
        match plain_date(s.as_bytes()) {
            Some(d) => Ok(d),
            None => s.parse().map_err(E::custom),
        }
    }
}

struct TimestampVisitor;

impl Visitor<'_> for TimestampVisitor {
    type Value = DateTime<Utc>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an RFC 3339 timestamp")
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<DateTime<Utc>, E> {
        match fast_timestamp(s) {
            Some(t) => Ok(t),
            None => s.parse().map_err(E::custom),
        }
    }
}

pub(crate) fn date<'de, D: Deserializer<'de>>(d: D) -> Result<NaiveDate, D::Error> {
    d.deserialize_str(DateVisitor)
}

pub(crate) fn timestamp<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    d.deserialize_str(TimestampVisitor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_forms_read_as_chrono_reads_them() {
        for s in [
            "2026-11-01T08:30:00Z",
            "2026-11-01T08:30:00.5Z",
            "2026-11-01T08:30:00.123456Z",
            "2026-11-01T08:30:00.123456789Z",
            "2026-11-01T23:59:59+00:00",
            "1970-01-01T00:00:00Z",
            "2024-02-29T12:00:00Z",
        ] {
            let want: DateTime<Utc> = s.parse().unwrap();
            assert_eq!(fast_timestamp(s), Some(want), "{s}");
        }
        for s in ["2026-11-01", "2024-02-29", "0001-01-01"] {
            let want: NaiveDate = s.parse().unwrap();
            assert_eq!(plain_date(s.as_bytes()), Some(want), "{s}");
        }
    }

    #[test]
    fn other_forms_fall_back_or_fail_as_before() {
        for s in [
            "2026-11-01T08:30:00+02:00",
            "2026-11-01 08:30:00Z",
            "2026-11-01T08:30:60Z",
            "2026-11-01T08:30:00.Z",
            "2026-02-30T08:30:00Z",
            "2026-11-01T08:30:00",
            "x",
            "",
        ] {
            assert_eq!(fast_timestamp(s), None, "{s}");
            let fast: Result<DateTime<Utc>, serde_json::Error> =
                timestamp(&mut serde_json::Deserializer::from_str(&format!("{s:?}")));
            let chrono: Result<DateTime<Utc>, _> = s.parse::<DateTime<Utc>>();
            assert_eq!(fast.ok(), chrono.ok(), "{s}");
        }
        for s in ["2026-2-01", "2026-02-30", "20261101", "2026-11-01x"] {
            assert_eq!(plain_date(s.as_bytes()), None, "{s}");
            let fast: Result<NaiveDate, serde_json::Error> =
                date(&mut serde_json::Deserializer::from_str(&format!("{s:?}")));
            assert_eq!(fast.ok(), s.parse::<NaiveDate>().ok(), "{s}");
        }
    }
}
