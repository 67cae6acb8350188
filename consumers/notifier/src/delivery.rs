//! What every channel shares: one delivery retried with backoff until it is done, refused, or
//! the attempts run out.

use std::future::Future;
use std::time::Duration;

use skuflow_platform::backoff::Backoff;
use skuflow_platform::shutdown::CancellationToken;

/// How one delivery ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    Delivered {
        attempts: u32,
    },
    /// Not delivered, for this reason (a dead letter).
    Undelivered(String),
    /// Shutdown came first: the batch is redelivered.
    Interrupted,
}

/// Delivery settings.
#[derive(Debug, Clone)]
pub struct Policy {
    pub timeout: Duration,
    pub attempts: u32,
    pub first_pause: Duration,
    pub max_pause: Duration,
}

/// Why one attempt failed, and whether another may succeed.
#[derive(Debug)]
pub struct Failure {
    pub why: String,
    pub retry: bool,
}

impl Failure {
    pub fn retry(why: impl Into<String>) -> Failure {
        Failure {
            why: why.into(),
            retry: true,
        }
    }

    pub fn refused(why: impl Into<String>) -> Failure {
        Failure {
            why: why.into(),
            retry: false,
        }
    }
}

/// Runs `attempt` until it succeeds, fails for good, or `policy.attempts` are spent; counts
/// each retry on `skuflow_notifications_total{channel,outcome="retried"}`.
pub async fn with_retries<F, Fut>(
    channel: &'static str,
    id: &str,
    policy: &Policy,
    shutdown: &CancellationToken,
    mut attempt: F,
) -> Delivery
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), Failure>>,
{
    let retried = skuflow_platform::metrics::metrics()
        .notifications
        .with_label_values(&[channel, "retried"]);
    let mut backoff = Backoff::new(policy.first_pause, policy.max_pause);
    let mut n = 0;
    loop {
        n += 1;
        let failure = match attempt().await {
            Ok(()) => return Delivery::Delivered { attempts: n },
            Err(f) => f,
        };
        if !failure.retry {
            return Delivery::Undelivered(format!("{}: not retried", failure.why));
        }
        if n >= policy.attempts {
            return Delivery::Undelivered(format!("{}, after {n} attempts", failure.why));
        }
        retried.inc();
        tracing::warn!(event_id = id, channel, attempt = n, reason = %failure.why, "Not delivered; retrying.");
        if !Backoff::sleep(backoff.next_pause(), shutdown).await {
            return Delivery::Interrupted;
        }
    }
}
