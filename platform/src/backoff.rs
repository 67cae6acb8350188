//! Exponential backoff with jitter, the one retry pause every skuflow component uses.

use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;

/// Lets periodic upkeep (deleting what is past its retention) run at most once per `period`:
/// the first call is due, then one per period.
#[derive(Debug, Clone)]
pub struct AtMostEvery {
    period: Duration,
    last: Option<std::time::Instant>,
}

impl AtMostEvery {
    pub fn new(period: Duration) -> Self {
        AtMostEvery { period, last: None }
    }

    /// Whether it is time; if so, the period starts again now.
    pub fn due(&mut self) -> bool {
        if self.last.is_some_and(|t| t.elapsed() < self.period) {
            return false;
        }
        self.last = Some(std::time::Instant::now());
        true
    }
}

/// Doubling pauses from `initial` up to `max`, each drawn in 50–100 % of its nominal length so
/// that many clients retrying at once spread out.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            next: initial,
            max: max.max(initial),
            attempt: 0,
        }
    }

    /// The pause before the next attempt; counts the attempt.
    pub fn next_pause(&mut self) -> Duration {
        self.attempt += 1;
        let pause = self.next.mul_f64(rand::rng().random_range(0.5..=1.0));
        self.next = (self.next * 2).min(self.max);
        pause
    }

    /// Attempts counted so far.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Sleeps `pause` unless `shutdown` comes first; `false` when it did.
    pub async fn sleep(pause: Duration, shutdown: &CancellationToken) -> bool {
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep(pause) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upkeep_is_due_once_per_period() {
        let mut hourly = AtMostEvery::new(Duration::from_secs(3600));
        assert!(hourly.due(), "the first call is due");
        assert!(!hourly.due() && !hourly.due());
        let mut always = AtMostEvery::new(Duration::ZERO);
        assert!(always.due() && always.due());
    }

    #[test]
    fn pauses_double_up_to_the_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let nominal = [100, 200, 400, 800, 1000, 1000];
        for n in nominal {
            let p = b.next_pause().as_millis() as u64;
            assert!(p >= n / 2 && p <= n, "{p} outside {}..={n}", n / 2);
        }
        assert_eq!(b.attempts(), 6);
    }
}
