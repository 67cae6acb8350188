//! One writer per dataset root: the builder holds a lease, `_writer.json` at the root, renewed
//! while it runs and released when it stops.
//!
//! A builder of another host or group that finds a live lease does not write: its batches are
//! retried (the sink reports itself unavailable, `/readyz` says why) until the holder stops
//! renewing or releases the lease. A builder restarted on the holder's host with the holder's
//! group (a crash, a restart in place) takes the lease over at once. Before every batch the
//! holder reads the lease again, so a builder that lost it (paused past the lease's lifetime
//! while another took over) stops writing too.
//!
//! This is a guard against a misconfiguration (two builders on one root, e.g. replicas: 2), not a
//! consensus protocol: object stores offer no compare-and-swap through this interface, so two
//! builders starting within the same instant may both write one batch before one of them sees
//! the other.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload};
use serde::{Deserialize, Serialize};

/// Who holds the lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub group: String,
    pub host: String,
    /// This process (pid and start time), for the logs of whoever is refused.
    pub instance: String,
    pub renewed_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

impl Holder {
    /// Group, host and instance, as recorded in the table's commits.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({"group": self.group, "host": self.host, "instance": self.instance})
    }

    fn same_owner(&self, other: &Holder) -> bool {
        self.group == other.group && self.host == other.host
    }
}

/// Why this builder may not write now.
#[derive(Debug, thiserror::Error)]
#[error(
    "another dataset builder holds the dataset root (group {}, host {}, instance {}, lease until \
     {}); one builder per root: stop the other one or give this one another root",
    .0.group, .0.host, .0.instance, .0.expires_at
)]
pub struct Held(pub Holder);

pub struct Lease {
    store: Arc<dyn ObjectStore>,
    path: Path,
    me: Holder,
    ttl: Duration,
    /// Whether this process wrote the lease last (its time is `me.renewed_at`).
    held: bool,
}

impl Holder {
    /// This process as a writer of the table: its group, host and instance (pid and start time).
    pub fn me(group: &str) -> Self {
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .ok()
                    .map(|h| h.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let now = Utc::now();
        let instance = format!(
            "{}-{:x}",
            std::process::id(),
            now.timestamp_nanos_opt().unwrap_or_default()
        );
        Holder {
            group: group.to_string(),
            host,
            instance,
            renewed_at: now,
            expires_at: now,
        }
    }
}

impl Lease {
    /// This builder as a holder of the lease (group, host, instance).
    pub fn me(&self) -> &Holder {
        &self.me
    }

    pub fn new(store: Arc<dyn ObjectStore>, root: &Path, group: &str, ttl: Duration) -> Self {
        Lease {
            store,
            path: root.child("_writer.json"),
            me: Holder::me(group),
            ttl,
            held: false,
        }
    }

    async fn read(&self) -> anyhow::Result<Option<Holder>> {
        match self.store.get(&self.path).await {
            Ok(r) => {
                let bytes = r.bytes().await?;
                // A lease nobody can read is treated as no lease (and replaced).
                Ok(serde_json::from_slice(&bytes).ok())
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn write(&mut self) -> anyhow::Result<()> {
        let now = Utc::now();
        let me = Holder {
            renewed_at: now,
            expires_at: now
                + chrono::Duration::from_std(self.ttl).unwrap_or(chrono::Duration::seconds(60)),
            ..self.me.clone()
        };
        let body = serde_json::to_vec_pretty(&me)?;
        self.store
            .put(&self.path, PutPayload::from(body))
            .await
            .with_context(|| format!("writing the writer lease {}", self.path))?;
        // Only a lease that reached the store counts as renewed.
        self.me = me;
        self.held = true;
        Ok(())
    }

    /// Makes sure this builder holds the lease before it writes: takes a free, expired or own
    /// (same host and group) lease, renews it when a third of its lifetime has passed, and
    /// fails with [`Held`] when another builder holds it.
    pub async fn ensure(&mut self) -> anyhow::Result<()> {
        let current = self.read().await?;
        match current {
            Some(h) if h.instance == self.me.instance => {
                let due = !self.held
                    || Utc::now() - self.me.renewed_at
                        >= chrono::Duration::from_std(self.ttl / 3).unwrap_or_default();
                if due {
                    self.write().await?;
                }
                Ok(())
            }
            Some(h) if h.same_owner(&self.me) || h.expires_at <= Utc::now() => {
                if !h.same_owner(&self.me) {
                    tracing::warn!(group = %h.group, host = %h.host, instance = %h.instance,
                        "Taking over the dataset root from a builder whose lease expired.");
                } else if !self.held {
                    tracing::info!(previous = %h.instance, "Taking over the dataset root from this host's previous builder.");
                }
                self.write().await
            }
            Some(h) => {
                self.held = false;
                Err(Held(h).into())
            }
            None => self.write().await,
        }
    }

    /// Gives the lease up (on shutdown) if this builder still holds it.
    pub async fn release(&mut self) {
        if !self.held {
            return;
        }
        if let Ok(Some(h)) = self.read().await {
            if h.instance == self.me.instance {
                match self.store.delete(&self.path).await {
                    Ok(()) => tracing::info!("Released the dataset root."),
                    Err(e) => {
                        tracing::warn!(error = %e, "Could not release the dataset root; it frees itself when the lease expires.")
                    }
                }
            }
        }
        self.held = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn lease(store: &Arc<dyn ObjectStore>, group: &str, host: &str, ttl_ms: u64) -> Lease {
        let mut l = Lease::new(
            store.clone(),
            &Path::from("datasets"),
            group,
            Duration::from_millis(ttl_ms),
        );
        l.me.host = host.to_string();
        l
    }

    #[tokio::test]
    async fn one_holder_at_a_time_until_it_expires_or_is_released() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let mut a = lease(&store, "g", "host-a", 60_000);
        let mut b = lease(&store, "g", "host-b", 60_000);
        a.ensure().await.unwrap();
        let err = b.ensure().await.unwrap_err().to_string();
        assert!(
            err.contains("host host-a") && err.contains("one builder per root"),
            "{err}"
        );
        a.ensure().await.unwrap(); // still a's
        a.release().await;
        b.ensure().await.unwrap();
        // a, wanting to write again, now finds b's lease.
        assert!(a.ensure().await.is_err());
    }

    #[tokio::test]
    async fn an_expired_lease_is_taken_over_and_its_old_holder_stops() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let mut a = lease(&store, "g", "host-a", 50);
        let mut b = lease(&store, "g", "host-b", 60_000);
        a.ensure().await.unwrap();
        assert!(b.ensure().await.is_err());
        tokio::time::sleep(Duration::from_millis(80)).await;
        b.ensure().await.unwrap();
        let err = a.ensure().await.unwrap_err().to_string();
        assert!(err.contains("host host-b"), "{err}");
    }

    #[tokio::test]
    async fn a_restart_on_the_same_host_and_group_takes_over_at_once() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let mut before = lease(&store, "g", "host-a", 60_000);
        before.ensure().await.unwrap();
        // Killed: no release. Its replacement on the same host, same group:
        let mut after = lease(&store, "g", "host-a", 60_000);
        after.me.instance = "replacement".into();
        after.ensure().await.unwrap();
        // Another group on the same host is another builder.
        let mut other = lease(&store, "other", "host-a", 60_000);
        assert!(other.ensure().await.is_err());
    }
}
