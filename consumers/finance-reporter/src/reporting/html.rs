//! The HTML report: one self-contained page (inline CSS, inline SVG charts, no script or font
//! from elsewhere) that works offline. A small inline script marks the page once every chart
//! has drawn and whether the page is wider than the window, which is what the headless-browser
//! test reads. Revenue charts have round gridlines labelled in k/M, weekly date ticks, a line
//! where the projection starts and a legend.

use std::fmt::Write as _;

use chrono::Datelike;
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;

use super::model::{Converted, ProjectionEntry, Report};

/// Text escaped for HTML content and attribute values.
pub use skuflow_platform::text::html_escape as esc;

fn money(x: Decimal) -> String {
    let s = x.round_dp(2).to_string();
    let (int, frac) = s.split_once('.').unwrap_or((&s, "00"));
    let (sign, digits) = int.strip_prefix('-').map_or(("", int), |d| ("-", d));
    let mut grouped = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push('\u{202f}');
        }
        grouped.push(ch);
    }
    format!("{sign}{grouped}.{frac:0<2}")
}

/// Screen coordinates only: amounts stay decimal everywhere else.
fn coord(x: Decimal) -> f64 {
    x.to_f64().unwrap_or(0.0)
}

const W: f64 = 760.0;
const H: f64 = 260.0;
const PAD: f64 = 48.0;

/// A round step for about five gridlines up to `hi`, and the top gridline.
fn nice_scale(hi: f64) -> (f64, f64) {
    let raw = (hi / 5.0).max(1e-9);
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude);
    (step, (hi / step).ceil() * step)
}

/// An axis label: `950`, `12k`, `1.5M`, `2B`.
fn si(v: f64) -> String {
    let (div, unit) = match v.abs() {
        a if a >= 1e9 => (1e9, "B"),
        a if a >= 1e6 => (1e6, "M"),
        a if a >= 1e3 => (1e3, "k"),
        _ => (1.0, ""),
    };
    let x = v / div;
    let text = format!("{x:.1}");
    let text = text.strip_suffix(".0").unwrap_or(&text);
    format!("{text}{unit}")
}

/// Revenue over time with the projection and its 95 % band.
fn revenue_chart(p: &ProjectionEntry, id: &str) -> String {
    let hist: Vec<(chrono::NaiveDate, f64)> =
        p.history.iter().map(|(d, v)| (*d, coord(*v))).collect();
    let points = p
        .projection
        .as_ref()
        .map(|x| x.points.as_slice())
        .unwrap_or(&[]);
    let Some(first) = hist.first().map(|h| h.0) else {
        return String::new();
    };
    let last = points
        .last()
        .map(|x| x.date)
        .or(hist.last().map(|h| h.0))
        .unwrap_or(first);
    let days = ((last - first).num_days().max(1)) as f64;
    let mut lo = f64::MAX;
    let mut hi = f64::MIN;
    for (_, v) in &hist {
        lo = lo.min(*v);
        hi = hi.max(*v);
    }
    for pt in points {
        lo = lo.min(coord(pt.lower));
        hi = hi.max(coord(pt.upper));
    }
    lo = lo.min(0.0);
    if hi <= lo {
        hi = lo + 1.0;
    }
    let (step, top) = nice_scale(hi);
    hi = hi.max(top);
    let x = |d: chrono::NaiveDate| PAD + (d - first).num_days() as f64 / days * (W - 2.0 * PAD);
    let y = |v: f64| H - PAD - (v - lo) / (hi - lo) * (H - 2.0 * PAD);
    let mut svg = format!(
        "<svg data-chart=\"{id}\" viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\" role=\"img\" aria-label=\"Revenue of {} with projection\">",
        esc(&p.country)
    );
    // Amounts: gridlines at round steps, labelled in thousands (k) or millions (M).
    let mut v = 0.0;
    while v <= hi + step / 2.0 {
        let at = y(v);
        let _ = write!(
            svg,
            "<line x1=\"{PAD}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" class=\"grid\"/><text x=\"{}\" y=\"{:.1}\" class=\"tick\" data-mark=\"ytick\" text-anchor=\"end\">{}</text>",
            W - PAD,
            PAD - 6.0,
            at + 4.0,
            si(v),
            y = at,
        );
        v += step;
    }
    let _ = write!(
        svg,
        "<line x1=\"{PAD}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" class=\"axis\"/>",
        H - PAD,
        W - PAD,
        H - PAD
    );
    // Dates: a tick every week (or every day for a short history), Mondays when weekly.
    let every = if days > 21.0 { 7 } else { 1 };
    let mut d = first;
    if every == 7 {
        while d.weekday() != chrono::Weekday::Mon {
            d += chrono::Duration::days(1);
        }
    }
    let mut n = 0;
    while d <= last {
        let label = if n % 2 == 0 || every == 1 && days <= 10.0 {
            d.format("%b %-d").to_string()
        } else {
            String::new()
        };
        let _ = write!(
            svg,
            "<line x1=\"{x:.1}\" y1=\"{}\" x2=\"{x:.1}\" y2=\"{}\" class=\"axis\"/><text x=\"{x:.1}\" y=\"{}\" class=\"tick\" data-mark=\"xtick\" text-anchor=\"middle\">{label}</text>",
            H - PAD,
            H - PAD + 4.0,
            H - PAD + 16.0,
            x = x(d),
        );
        d += chrono::Duration::days(every);
        n += 1;
    }
    if let (Some(end), false) = (hist.last().map(|h| h.0), points.is_empty()) {
        let _ = write!(
            svg,
            "<line x1=\"{x:.1}\" y1=\"{}\" x2=\"{x:.1}\" y2=\"{}\" class=\"today\"/><text x=\"{:.1}\" y=\"{}\" class=\"tick\">projection</text>",
            PAD / 2.0,
            H - PAD,
            x(end) + 4.0,
            PAD / 2.0 + 8.0,
            x = x(end),
        );
    }
    // The legend, above the plot.
    let _ = write!(
        svg,
        "<g data-mark=\"legend\" class=\"legend\"><line x1=\"{PAD}\" y1=\"12\" x2=\"{}\" y2=\"12\" class=\"history\"/><text x=\"{}\" y=\"16\" class=\"tick\">revenue</text>",
        PAD + 22.0,
        PAD + 28.0
    );
    if !points.is_empty() {
        let _ = write!(
            svg,
            "<line x1=\"{}\" y1=\"12\" x2=\"{}\" y2=\"12\" class=\"projection\"/><text x=\"{}\" y=\"16\" class=\"tick\">projection</text><rect x=\"{}\" y=\"6\" width=\"22\" height=\"12\" class=\"band\"/><text x=\"{}\" y=\"16\" class=\"tick\">95 % interval</text>",
            PAD + 100.0,
            PAD + 122.0,
            PAD + 128.0,
            PAD + 210.0,
            PAD + 238.0
        );
    }
    svg.push_str("</g>");
    if !points.is_empty() {
        let upper: Vec<String> = points
            .iter()
            .map(|pt| format!("{:.1},{:.1}", x(pt.date), y(coord(pt.upper))))
            .collect();
        let lower: Vec<String> = points
            .iter()
            .rev()
            .map(|pt| format!("{:.1},{:.1}", x(pt.date), y(coord(pt.lower))))
            .collect();
        let _ = write!(
            svg,
            "<polygon data-mark=\"band\" class=\"band\" points=\"{} {}\"/>",
            upper.join(" "),
            lower.join(" ")
        );
    }
    let line: Vec<String> = hist
        .iter()
        .map(|(d, v)| format!("{:.1},{:.1}", x(*d), y(*v)))
        .collect();
    let _ = write!(
        svg,
        "<polyline data-mark=\"history\" class=\"history\" points=\"{}\"/>",
        line.join(" ")
    );
    if !points.is_empty() {
        let (ld, lv) = hist[hist.len() - 1];
        let mut proj = vec![format!("{:.1},{:.1}", x(ld), y(lv))];
        proj.extend(
            points
                .iter()
                .map(|pt| format!("{:.1},{:.1}", x(pt.date), y(coord(pt.value)))),
        );
        let _ = write!(
            svg,
            "<polyline data-mark=\"projection\" class=\"projection\" points=\"{}\"/>",
            proj.join(" ")
        );
    }
    svg.push_str("</svg>");
    svg
}

/// Horizontal bars of `value` per item.
fn bar_chart(id: &str, label: &str, items: &[(String, Decimal, String)]) -> String {
    let row = 26.0;
    let h = PAD + row * items.len().max(1) as f64;
    let max = items
        .iter()
        .map(|(_, v, _)| coord(*v).abs())
        .fold(0.0f64, f64::max)
        .max(1.0);
    let left = 220.0;
    let mut svg = format!(
        "<svg data-chart=\"{id}\" viewBox=\"0 0 {W} {h}\" width=\"{W}\" height=\"{h}\" role=\"img\" aria-label=\"{}\">",
        esc(label)
    );
    for (i, (name, v, note)) in items.iter().enumerate() {
        let y = 10.0 + i as f64 * row;
        let w = (coord(*v).abs() / max * (W - left - 160.0)).max(1.0);
        let class = if v.is_sign_negative() {
            "bar neg"
        } else {
            "bar"
        };
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" class=\"label\" text-anchor=\"end\">{}</text>\
             <rect data-mark=\"bar\" class=\"{class}\" x=\"{left}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{:.1}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" class=\"value\">{} {}</text>",
            left - 8.0,
            y + 15.0,
            esc(name),
            row - 8.0,
            left + w + 6.0,
            y + 15.0,
            money(*v),
            esc(note)
        );
    }
    svg.push_str("</svg>");
    svg
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn pct(x: Option<Decimal>) -> String {
    x.map(|p| format!("{p} %")).unwrap_or_else(|| "n/a".into())
}

fn store_label(s: &Converted) -> String {
    match &s.chain {
        Some(c) => format!("{} {} ({c})", s.country.as_deref().unwrap_or(""), s.name),
        None => format!("{} {}", s.country.as_deref().unwrap_or(""), s.name),
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2rem;color:#1d2430;max-width:900px}\
svg{max-width:100%;height:auto}.wide{overflow-x:auto}td{white-space:nowrap}\
h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2rem}table{border-collapse:collapse;margin:.5rem 0}\
td,th{border-bottom:1px solid #d8dde6;padding:.25rem .6rem;text-align:right}td:first-child,th:first-child{text-align:left}\
.axis{stroke:#8893a5}.tick,.label,.value{font-size:11px;fill:#394150}.history{fill:none;stroke:#1f5fbf;stroke-width:1.5}\
.projection{fill:none;stroke:#d9480f;stroke-width:1.5;stroke-dasharray:4 3}.band{fill:#fd7e14;opacity:.18}\
.grid{stroke:#e3e7ee}.today{stroke:#8893a5;stroke-dasharray:2 3}\
.bar{fill:#2f9e44}.bar.neg{fill:#c92a2a}.warn{color:#a61e4d}.note{color:#5c677d;font-size:.9rem}";

const SCRIPT: &str = "document.addEventListener('DOMContentLoaded',function(){\
var c=document.querySelectorAll('svg[data-chart]'),ok=0;\
c.forEach(function(s){var b=s.getBBox();if(b.width>0&&b.height>0&&s.querySelectorAll('[data-mark]').length>0){ok++;}});\
document.body.setAttribute('data-charts',String(c.length));\
document.body.setAttribute('data-charts-rendered',String(ok));\
var d=document.documentElement;document.body.setAttribute('data-overflow',d.scrollWidth>d.clientWidth?'yes':'no');});";

/// The whole page.
pub fn render(r: &Report) -> String {
    let cur = esc(&r.reporting_currency);
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>skuflow finance report</title>\
         <style>{STYLE}</style></head><body><h1>skuflow finance report</h1>\
         <p class=\"note\">Generated {} · business dates {} to {} · {} aggregate rows · reporting currency {cur}</p>",
        r.generated_at.format("%Y-%m-%d %H:%M UTC"),
        r.from.map_or("first".into(), |d| d.to_string()),
        r.to.map_or("last".into(), |d| d.to_string()),
        r.rows
    );
    h.push_str("<h2>Totals per country</h2><div class=\"wide\"><table><tr><th>Country</th><th>Currency</th><th>Revenue</th><th>Cost</th><th>Gross margin</th><th>Margin</th><th>Units</th><th>Revenue in ");
    h.push_str(&cur);
    h.push_str("</th></tr>");
    for t in &r.totals {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}{}</td></tr>",
            esc(&t.country),
            esc(&t.currency),
            money(t.sums.revenue),
            money(t.sums.cost),
            money(t.sums.gross_margin),
            pct(t.margin_pct),
            t.sums.units,
            money(t.revenue_reporting),
            if t.days_without_rate > 0 {
                format!(
                    " <span class=\"warn\">({} without a rate)</span>",
                    plural(t.days_without_rate, "day")
                )
            } else {
                String::new()
            }
        );
    }
    let _ = write!(
        h,
        "</table></div><p>All converted: revenue {} {cur}, gross margin {} {cur} ({}).</p>",
        money(r.grand_total.revenue),
        money(r.grand_total.gross_margin),
        pct(r.grand_total.margin_pct())
    );
    if !r.missing_rates.is_empty() {
        h.push_str("<h2 class=\"warn\">Missing rates</h2><p>These days are left out of every converted figure; add the rates and run the report again.</p><div class=\"wide\"><table><tr><th>Date</th><th>Currency</th><th>Rows</th><th>Revenue</th></tr>");
        for m in &r.missing_rates {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                m.date,
                esc(&m.currency),
                m.rows,
                money(m.revenue)
            );
        }
        h.push_str("</table></div>");
    }
    h.push_str("<h2>Revenue and projection</h2>");
    for (i, p) in r.projections.iter().enumerate() {
        let who = match &p.store_id {
            Some(s) => format!("{} store {}", esc(&p.country), esc(s)),
            None => esc(&p.country),
        };
        let _ = write!(h, "<h3>{who} ({})</h3>", esc(&p.currency));
        match (&p.projection, &p.error) {
            (Some(proj), _) => {
                let _ = write!(
                    h,
                    "<p class=\"note\">{} days of history{}; next {} days projected by {}; band: {} prediction interval. \
                     Backtest on the last {} days: {} {} %.</p>",
                    proj.history_days,
                    if proj.filled_days > 0 {
                        format!(" ({} missing days interpolated)", proj.filled_days)
                    } else {
                        String::new()
                    },
                    proj.points.len(),
                    esc(proj.method),
                    proj.interval,
                    proj.backtest.window_days,
                    proj.backtest.metric,
                    proj.backtest.value
                );
            }
            (None, e) => {
                let _ = write!(
                    h,
                    "<p class=\"warn\">No projection: {}.</p>",
                    esc(e.as_deref().unwrap_or("unknown"))
                );
            }
        }
        h.push_str(&revenue_chart(p, &format!("revenue-{i}")));
    }
    h.push_str("<h2>Gross margin by category</h2>");
    let cats: Vec<(String, Decimal, String)> = r
        .by_category
        .iter()
        .map(|c| {
            (
                c.name.clone(),
                c.sums.gross_margin,
                format!("{cur} · {}", pct(c.margin_pct)),
            )
        })
        .collect();
    h.push_str(&bar_chart(
        "margin-by-category",
        "Gross margin by category",
        &cats,
    ));
    h.push_str("<h2>Top stores by revenue</h2>");
    let stores: Vec<(String, Decimal, String)> = r
        .top_stores
        .iter()
        .map(|s| (store_label(s), s.sums.revenue, cur.clone()))
        .collect();
    h.push_str(&bar_chart("top-stores", "Top stores by revenue", &stores));
    let _ = write!(h, "<script>{SCRIPT}</script></body></html>");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_from_uploads() {
        assert_eq!(esc("<b a=\"1\">&'"), "&lt;b a=&quot;1&quot;&gt;&amp;&#39;");
    }

    #[test]
    fn money_groups_thousands_and_keeps_cents() {
        assert_eq!(
            money("1234567.5".parse().unwrap()),
            "1\u{202f}234\u{202f}567.50"
        );
        assert_eq!(money("-12".parse().unwrap()), "-12.00");
        assert_eq!(money("999.99".parse().unwrap()), "999.99");
    }

    #[test]
    fn axes_are_round_and_short() {
        assert_eq!(nice_scale(3_069_536.0), (1_000_000.0, 4_000_000.0));
        assert_eq!(nice_scale(930.0), (200.0, 1000.0));
        assert_eq!(nice_scale(12.0), (2.5, 12.5));
        assert_eq!(si(0.0), "0");
        assert_eq!(si(1_500_000.0), "1.5M");
        assert_eq!(si(250_000.0), "250k");
        assert_eq!(si(2_000_000_000.0), "2B");
        assert_eq!(si(950.0), "950");
    }
}
