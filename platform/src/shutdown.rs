//! Graceful shutdown on SIGTERM / SIGINT, bounded in time.

use std::time::Duration;

pub use tokio_util::sync::CancellationToken;

/// Exit status of a process whose shutdown outlasted its time limit (EX_TEMPFAIL): the work it
/// cut short is redelivered, but an orchestrator or a script sees that it did not stop cleanly.
pub const FORCED_EXIT_STATUS: i32 = 75;

/// A token cancelled when the process receives SIGTERM or SIGINT. Whatever is still running
/// `grace` later is cut short: the process exits with [`FORCED_EXIT_STATUS`], having stored
/// offsets only for what was durable, so an abandoned batch is redelivered to the partition's
/// next owner.
pub fn on_signal(grace: Duration) -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!(
            grace_secs = grace.as_secs(),
            "Shutdown requested; finishing the batch in flight."
        );
        crate::metrics::metrics().shutdowns.inc();
        crate::health::health().report("shutdown", Err("shutting down".into()));
        t.cancel();
        // A plain thread: the runtime may be too busy (or blocked) to run a timer task.
        std::thread::spawn(move || {
            std::thread::sleep(grace);
            tracing::warn!(
                grace_secs = grace.as_secs(),
                status = FORCED_EXIT_STATUS,
                "Shutdown outlasted its time limit; exiting now. Work not yet durable was not \
                 acknowledged and will be redelivered."
            );
            std::process::exit(FORCED_EXIT_STATUS);
        });
    });
    token
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
