//! Exponential backoff with jitter, the one retry pause every skuflow component uses.

use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;

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
