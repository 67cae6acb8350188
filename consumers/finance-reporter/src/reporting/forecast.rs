//! Revenue projections: additive Holt-Winters exponential smoothing with a weekly season
//! (ETS(A,A,A) in error-correction form), parameters chosen by least squares over a grid,
//! 95 % prediction intervals from the model's forecast variance, and a backtest on a held-back
//! window. All arithmetic in decimal; the series is scaled to its mean first so that squares
//! stay small whatever the currency.

use chrono::{Duration, NaiveDate};
use rust_decimal::{Decimal, MathematicalOps};
use serde::Serialize;

/// Season length: a week of days.
pub const SEASON: usize = 7;
/// Days needed to fit: three weeks (two to initialise the season and trend, one to fit).
pub const MIN_FIT_DAYS: usize = 21;
/// Shortest backtest window.
pub const MIN_BACKTEST_DAYS: usize = 7;
/// Longest backtest window.
pub const MAX_BACKTEST_DAYS: usize = 14;

/// Why there is no projection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForecastError {
    TooLittleHistory {
        days: usize,
        need: usize,
    },
    /// A daily value too large for the projection's exact arithmetic.
    OutOfRange {
        date: NaiveDate,
    },
}

/// Longest history a projection reads, in days: older days are left out, so that a stray
/// business date decades back cannot make it walk millions of days.
pub const MAX_HISTORY_DAYS: i64 = 3660;

/// Largest daily value projected: the sums and products over `MAX_HISTORY_DAYS` days then stay
/// within exact decimal arithmetic.
fn max_value() -> Decimal {
    Decimal::from_i128_with_scale(10i128.pow(24), 0)
}

impl std::error::Error for ForecastError {}

impl std::fmt::Display for ForecastError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ForecastError::TooLittleHistory { days, need } => write!(
                f,
                "too little history: {days} day{} of revenue, a projection needs at least {need} \
                 ({MIN_FIT_DAYS} to fit a weekly season and trend, {MIN_BACKTEST_DAYS} to backtest)",
                if *days == 1 { "" } else { "s" }
            ),
            ForecastError::OutOfRange { date } => write!(
                f,
                "the revenue of {date} is beyond the 10^24 a projection can compute exactly"
            ),
        }
    }
}

/// One projected day.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    pub date: NaiveDate,
    pub value: Decimal,
    pub lower: Decimal,
    pub upper: Decimal,
}

/// Error of the same method on a held-back window at the end of the history.
#[derive(Debug, Clone, Serialize)]
pub struct Backtest {
    pub metric: &'static str,
    pub window_days: usize,
    /// Symmetric mean absolute percentage error, in percent.
    pub value: Decimal,
}

/// A projection of a daily series.
#[derive(Debug, Clone, Serialize)]
pub struct Projection {
    pub method: &'static str,
    pub history_days: usize,
    /// Days without data inside the history, filled by linear interpolation.
    pub filled_days: usize,
    pub alpha: Decimal,
    pub beta: Decimal,
    pub gamma: Decimal,
    pub interval: &'static str,
    pub points: Vec<Point>,
    pub backtest: Backtest,
}

#[derive(Debug, Clone, Copy)]
struct Params {
    alpha: Decimal,
    beta: Decimal,
    gamma: Decimal,
    /// Whether the initial trend is estimated from the first two weeks (else it starts flat:
    /// a step in the first weeks is not taken for a trend).
    initial_trend: bool,
}

/// State after running the model over a series.
struct Fit {
    level: Decimal,
    trend: Decimal,
    season: [Decimal; SEASON],
    /// Index in `season` of the day after the last observation.
    next: usize,
    sse: Decimal,
    count: usize,
}

fn d(s: &str) -> Decimal {
    s.parse().expect("literal decimal")
}

fn mean(xs: &[Decimal]) -> Decimal {
    xs.iter().copied().sum::<Decimal>() / Decimal::from(xs.len())
}

/// Runs ETS(A,A,A) over `y` (at least two seasons long).
fn run(y: &[Decimal], p: Params) -> Fit {
    let m = Decimal::from(SEASON);
    let first = mean(&y[..SEASON]);
    let second = mean(&y[SEASON..2 * SEASON]);
    let trend = if p.initial_trend {
        (second - first) / m
    } else {
        Decimal::ZERO
    };
    // Each weekday's initial effect: the median over the whole weeks of its difference to its
    // week's mean (a median, so that one unusual week does not shape the season).
    let weeks: Vec<&[Decimal]> = y.chunks_exact(SEASON).collect();
    let mut season = [Decimal::ZERO; SEASON];
    for (i, s) in season.iter_mut().enumerate() {
        let mut diffs: Vec<Decimal> = weeks.iter().map(|w| w[i] - mean(w)).collect();
        diffs.sort();
        let n = diffs.len();
        *s = if n % 2 == 1 {
            diffs[n / 2]
        } else {
            (diffs[n / 2 - 1] + diffs[n / 2]) / Decimal::TWO
        };
    }
    let centre = mean(&season);
    for s in &mut season {
        *s -= centre;
    }
    let mut fit = Fit {
        // The level before the first fitted week such that the model's mean over that week is
        // the week's mean (a step inside the first week does not carry over).
        level: second - Decimal::from(4) * trend,
        trend,
        season,
        next: 0,
        sse: Decimal::ZERO,
        count: 0,
    };
    for (t, &obs) in y.iter().enumerate().skip(SEASON) {
        let i = t % SEASON;
        let e = obs - (fit.level + fit.trend + fit.season[i]);
        fit.level += fit.trend + p.alpha * e;
        fit.trend += p.beta * e;
        fit.season[i] += p.gamma * e;
        fit.sse += e * e;
        fit.count += 1;
    }
    fit.next = y.len() % SEASON;
    fit
}

fn grid() -> Vec<Params> {
    let alphas = [
        "0.05", "0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9",
    ];
    let betas = ["0", "0.002", "0.005", "0.01", "0.02", "0.05", "0.1"];
    let gammas = ["0", "0.05", "0.1", "0.2", "0.3", "0.4"];
    let mut out = Vec::new();
    for a in alphas.map(d) {
        for b in betas.map(d).into_iter().filter(|b| *b <= a) {
            for g in gammas.map(d).into_iter().filter(|g| *g <= Decimal::ONE - a) {
                for initial_trend in [true, false] {
                    out.push(Params {
                        alpha: a,
                        beta: b,
                        gamma: g,
                        initial_trend,
                    });
                }
            }
        }
    }
    out
}

/// The parameters with the least one-step squared error, and the fit they give.
fn best_fit(y: &[Decimal]) -> (Params, Fit) {
    grid()
        .into_iter()
        .map(|p| (p, run(y, p)))
        .min_by(|a, b| a.1.sse.cmp(&b.1.sse))
        .expect("the grid is not empty")
}

/// Point forecasts and 95 % interval half-widths for `h` days after the fit.
fn project(fit: &Fit, p: Params, h: usize) -> Vec<(Decimal, Decimal)> {
    let dof = fit.count.saturating_sub(3).max(1);
    let sigma2 = fit.sse / Decimal::from(dof);
    let z = d("1.96");
    let mut acc = Decimal::ZERO;
    (1..=h)
        .map(|k| {
            if k > 1 {
                let j = k - 1;
                let seasonal = if j % SEASON == 0 {
                    p.gamma
                } else {
                    Decimal::ZERO
                };
                let c = p.alpha + p.beta * Decimal::from(j) + seasonal;
                acc += c * c;
            }
            let value =
                fit.level + Decimal::from(k) * fit.trend + fit.season[(fit.next + k - 1) % SEASON];
            let half = z * (sigma2 * (Decimal::ONE + acc)).sqrt().unwrap_or_default();
            (value, half)
        })
        .collect()
}

/// Symmetric MAPE in percent; days where forecast and actual are both zero are left out.
pub fn smape(forecast: &[Decimal], actual: &[Decimal]) -> Decimal {
    let mut sum = Decimal::ZERO;
    let mut n = 0u32;
    for (f, a) in forecast.iter().zip(actual) {
        let denom = f.abs() + a.abs();
        if !denom.is_zero() {
            sum += Decimal::TWO * (f - a).abs() / denom;
            n += 1;
        }
    }
    if n == 0 {
        Decimal::ZERO
    } else {
        (sum / Decimal::from(n) * Decimal::ONE_HUNDRED).round_dp(2)
    }
}

/// Days of history needed for a projection.
pub fn min_history() -> usize {
    MIN_FIT_DAYS + MIN_BACKTEST_DAYS
}

/// Projects the daily series `history` (dates ascending, no duplicates) `horizon` days past its
/// last date.
pub fn forecast(
    history: &[(NaiveDate, Decimal)],
    horizon: usize,
) -> Result<Projection, ForecastError> {
    // Only the last MAX_HISTORY_DAYS days count (history is in date order).
    let recent = history.last().map_or(0, |&(end, _)| {
        history.partition_point(|(d, _)| (end - *d).num_days() >= MAX_HISTORY_DAYS)
    });
    let history = &history[recent..];
    if let Some((date, _)) = history.iter().find(|(_, v)| v.abs() > max_value()) {
        return Err(ForecastError::OutOfRange { date: *date });
    }
    let (Some(&(start, _)), Some(&(end, _))) = (history.first(), history.last()) else {
        return Err(ForecastError::TooLittleHistory {
            days: 0,
            need: min_history(),
        });
    };
    let span = (end - start).num_days() as usize + 1;
    if span < min_history() {
        return Err(ForecastError::TooLittleHistory {
            days: span,
            need: min_history(),
        });
    }
    // A value per day; a missing day is interpolated between its neighbours.
    let mut y: Vec<Option<Decimal>> = vec![None; span];
    for (date, v) in history {
        y[(*date - start).num_days() as usize] = Some(*v);
    }
    let filled_days = y.iter().filter(|v| v.is_none()).count();
    let mut values = Vec::with_capacity(span);
    for i in 0..span {
        values.push(match y[i] {
            Some(v) => v,
            None => {
                let (pi, pv) = (0..i)
                    .rev()
                    .find_map(|j| y[j].map(|v| (j, v)))
                    .expect("first day present");
                let (ni, nv) = (i + 1..span)
                    .find_map(|j| y[j].map(|v| (j, v)))
                    .expect("last day present");
                pv + (nv - pv) * Decimal::from(i - pi) / Decimal::from(ni - pi)
            }
        });
    }
    let scale = mean(&values.iter().map(|v| v.abs()).collect::<Vec<_>>());
    let scale = if scale.is_zero() { Decimal::ONE } else { scale };
    let scaled: Vec<Decimal> = values.iter().map(|v| v / scale).collect();

    let window = horizon
        .clamp(MIN_BACKTEST_DAYS, MAX_BACKTEST_DAYS)
        .min(span - MIN_FIT_DAYS);
    let train = &scaled[..span - window];
    let (bp, bfit) = best_fit(train);
    let nonnegative = values.iter().all(|v| !v.is_sign_negative());
    let predicted: Vec<Decimal> = project(&bfit, bp, window)
        .into_iter()
        .map(|(v, _)| if nonnegative { v.max(Decimal::ZERO) } else { v })
        .collect();
    let backtest = Backtest {
        metric: "sMAPE",
        window_days: window,
        value: smape(&predicted, &scaled[span - window..]),
    };

    let (p, fit) = best_fit(&scaled);
    // A series that never went below zero (revenue) is not projected below zero either.
    let floor = |x: Decimal| {
        if nonnegative {
            x.max(Decimal::ZERO)
        } else {
            x
        }
    };
    let points = project(&fit, p, horizon)
        .into_iter()
        .enumerate()
        .map(|(k, (v, half))| Point {
            date: end + Duration::days(k as i64 + 1),
            value: floor(v * scale).round_dp(2),
            lower: floor((v - half) * scale).round_dp(2),
            upper: floor((v + half) * scale).round_dp(2),
        })
        .collect();
    Ok(Projection {
        method: "Holt-Winters additive, weekly season (ETS(A,A,A)), least-squares parameters and initial trend",
        history_days: span,
        filled_days,
        alpha: p.alpha,
        beta: p.beta,
        gamma: p.gamma,
        interval: "95%",
        points,
        backtest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEEK: [i64; 7] = [120, -40, -60, -30, 0, 90, -80];

    #[test]
    fn a_stray_ancient_date_is_left_out_and_huge_values_are_an_error_not_a_panic() {
        let start = NaiveDate::from_ymd_opt(2026, 9, 1).unwrap();
        let mut history: Vec<(NaiveDate, Decimal)> =
            vec![(NaiveDate::from_ymd_opt(1, 1, 1).unwrap(), Decimal::from(5))];
        history.extend((0..70).map(|t| (start + Duration::days(t), truth(t))));
        let p = forecast(&history, 14).expect("projects the last 70 days");
        assert_eq!(p.points.len(), 14);
        assert_eq!(p.points[0].date, start + Duration::days(70));

        let mut huge = history.clone();
        huge[40].1 = Decimal::MAX;
        let e = forecast(&huge, 14).unwrap_err();
        assert!(e.to_string().contains("10^24"), "{e}");
    }

    fn truth(t: i64) -> Decimal {
        Decimal::from(1000 + 4 * t + WEEK[(t % 7) as usize])
    }

    /// Deterministic noise, uniform in [-15, 15].
    fn noise(t: i64) -> Decimal {
        let x = (t as u64)
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        Decimal::from(((x >> 33) % 31) as i64 - 15)
    }

    #[test]
    fn projects_a_known_trend_and_weekly_season_within_two_percent() {
        let start = NaiveDate::from_ymd_opt(2026, 1, 5).unwrap();
        let history: Vec<(NaiveDate, Decimal)> = (0..84)
            .map(|t| (start + Duration::days(t), truth(t) + noise(t)))
            .collect();
        let p = forecast(&history, 28).unwrap();
        assert_eq!(p.points.len(), 28);
        assert_eq!(p.history_days, 84);
        for (k, point) in p.points.iter().enumerate() {
            let t = 84 + k as i64;
            let want = truth(t);
            let err = ((point.value - want) / want).abs();
            // Tolerance: every projected day within 2 % of the noise-free truth.
            assert!(err < d("0.02"), "day {t}: {} vs {want}", point.value);
            assert!(
                point.lower <= want && want <= point.upper,
                "day {t}: {want} outside {}..{}",
                point.lower,
                point.upper
            );
            assert!(point.date == start + Duration::days(t));
        }
        // Intervals widen with the horizon.
        let width = |p: &Point| p.upper - p.lower;
        assert!(width(&p.points[27]) > width(&p.points[0]));
        assert!(
            p.backtest.value < d("3"),
            "backtest sMAPE {}",
            p.backtest.value
        );
        assert_eq!(p.backtest.window_days, 14);
    }

    #[test]
    fn too_little_history_is_an_error_not_a_number() {
        let start = NaiveDate::from_ymd_opt(2026, 1, 5).unwrap();
        let history: Vec<(NaiveDate, Decimal)> = (0..20)
            .map(|t| (start + Duration::days(t), truth(t)))
            .collect();
        let e = forecast(&history, 28).unwrap_err();
        assert_eq!(e, ForecastError::TooLittleHistory { days: 20, need: 28 });
        assert!(e.to_string().contains("too little history: 20 days"));
        assert!(forecast(&[], 28).is_err());
    }

    #[test]
    fn missing_days_are_interpolated_and_counted() {
        let start = NaiveDate::from_ymd_opt(2026, 1, 5).unwrap();
        let history: Vec<(NaiveDate, Decimal)> = (0..60)
            .filter(|t| t % 10 != 3)
            .map(|t| (start + Duration::days(t), truth(t)))
            .collect();
        let p = forecast(&history, 7).unwrap();
        assert_eq!(p.filled_days, 6);
        assert_eq!(p.backtest.window_days, 7);
        let err = ((p.points[0].value - truth(60)) / truth(60)).abs();
        assert!(err < d("0.05"), "{}", p.points[0].value);
    }

    #[test]
    fn a_step_in_the_first_weeks_is_not_taken_for_a_trend() {
        let start = NaiveDate::from_ymd_opt(2026, 1, 5).unwrap();
        let history: Vec<(NaiveDate, Decimal)> = (0..35)
            .map(|t| {
                let v = if t < 3 { 180_000 } else { 30_000 } + WEEK[(t % 7) as usize] * 10;
                (start + Duration::days(t), Decimal::from(v))
            })
            .collect();
        let p = forecast(&history, 28).unwrap();
        for (k, point) in p.points.iter().enumerate() {
            let want = Decimal::from(30_000 + WEEK[(35 + k) % 7] * 10);
            assert!(
                ((point.value - want) / want).abs() < d("0.02"),
                "day {k}: {} vs {want}",
                point.value
            );
            assert!(point.lower >= Decimal::ZERO);
        }
        assert!(
            p.backtest.value < d("2"),
            "backtest sMAPE {}",
            p.backtest.value
        );
    }

    #[test]
    fn a_flat_zero_series_projects_zero() {
        let start = NaiveDate::from_ymd_opt(2026, 1, 5).unwrap();
        let history: Vec<(NaiveDate, Decimal)> = (0..30)
            .map(|t| (start + Duration::days(t), Decimal::ZERO))
            .collect();
        let p = forecast(&history, 3).unwrap();
        assert!(p
            .points
            .iter()
            .all(|x| x.value.is_zero() && x.upper.is_zero()));
        assert_eq!(p.backtest.value, Decimal::ZERO);
    }
}
