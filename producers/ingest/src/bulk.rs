//! The bulk lane: the messages of a large upload past its first `--bulk-after-rows` share one
//! rate per worker (`--bulk-records-per-sec`), so that a large upload does not fill the broker
//! and the sinks ahead of the small uploads that land meanwhile. Every sink consumes a partition
//! in offset order: a small file's records wait behind every record a large upload produced
//! before them, so holding back the large upload in the ingest is what keeps them near.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Messages taken from the lane at once (one lock per this many messages).
const CHUNK: u64 = 100;

/// The worker's bulk lane: a token bucket shared by its large uploads.
#[derive(Debug)]
pub struct BulkLane {
    after_rows: u64,
    per_sec: f64,
    bucket: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl BulkLane {
    /// A lane for the messages of an upload past its first `after_rows`, at `per_sec` messages a
    /// second for all of the worker's uploads together; 0: no lane (no upload is held back).
    pub fn new(after_rows: u64, per_sec: u64) -> Self {
        BulkLane {
            after_rows,
            per_sec: per_sec as f64,
            bucket: Mutex::new(Bucket {
                tokens: 0.0,
                at: Instant::now(),
            }),
        }
    }

    /// Whether an upload's `n`-th message goes through the lane.
    pub fn holds(&self, n: u64) -> bool {
        self.per_sec > 0.0 && n > self.after_rows
    }

    /// Whether an upload's `n`-th message is its first through the lane (the upload is large).
    pub fn enters(&self, n: u64) -> bool {
        self.holds(n) && n == self.after_rows + 1
    }

    /// Messages of an upload before it goes through the lane.
    pub fn after_rows(&self) -> u64 {
        self.after_rows
    }

    /// Called on the scanning thread after an upload's `n`-th message: blocks while the lane's
    /// rate is spent. Returns the time it waited.
    pub fn pace(&self, n: u64) -> Duration {
        if !self.holds(n) || !n.is_multiple_of(CHUNK) {
            return Duration::ZERO;
        }
        let need = CHUNK as f64;
        // At most a tenth of a second's messages at once.
        let burst = (self.per_sec / 10.0).max(need);
        let mut waited = Duration::ZERO;
        loop {
            let wait = {
                let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                let refill = now.duration_since(b.at).as_secs_f64() * self.per_sec;
                b.tokens = (b.tokens + refill).min(burst);
                b.at = now;
                if b.tokens >= need {
                    b.tokens -= need;
                    return waited;
                }
                Duration::from_secs_f64((need - b.tokens) / self.per_sec)
            };
            std::thread::sleep(wait);
            waited += wait;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_rows_and_a_lane_without_rate_are_never_held() {
        let lane = BulkLane::new(1000, 500);
        assert!(!lane.holds(1000));
        assert!(lane.holds(1001));
        assert!(lane.enters(1001) && !lane.enters(1002) && !lane.enters(1000));
        for n in 1..=1000 {
            assert_eq!(lane.pace(n), Duration::ZERO);
        }
        let off = BulkLane::new(0, 0);
        for n in 1..=100_000 {
            assert_eq!(off.pace(n), Duration::ZERO);
        }
    }

    #[test]
    fn uploads_past_their_first_rows_share_the_rate() {
        // Two uploads of 1,000 held messages each at 4,000 a second: about half a second in all
        // (less the tenth of a second the bucket may hold), whichever thread sends them.
        let lane = std::sync::Arc::new(BulkLane::new(0, 4000));
        let started = Instant::now();
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let lane = lane.clone();
                std::thread::spawn(move || (1..=1000).map(|n| lane.pace(n)).sum::<Duration>())
            })
            .collect();
        let waited: Vec<Duration> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(400), "took {took:?}");
        assert!(waited.iter().all(|w| *w > Duration::ZERO), "{waited:?}");
    }
}
