//! The readiness checks of this process (`/readyz`, `skuflow_ready`, `skuflow_check_up`).

use std::collections::BTreeMap;
use std::sync::{LazyLock, Mutex};

use chrono::{DateTime, Utc};

use crate::metrics::metrics;

/// The readiness checks of this process: each is failing until first reported passing.
pub struct Health {
    checks: Mutex<BTreeMap<&'static str, Check>>,
}

#[derive(Debug, Clone)]
struct Check {
    ok: bool,
    detail: String,
    since: DateTime<Utc>,
}

static HEALTH: LazyLock<Health> = LazyLock::new(|| Health {
    checks: Mutex::new(BTreeMap::new()),
});

/// The process-wide readiness checks.
pub fn health() -> &'static Health {
    &HEALTH
}

impl Health {
    /// Records the latest result of check `name` (`broker`, `sink`, `store`, `shutdown`);
    /// changes are logged once, not on every report.
    pub fn report(&self, name: &'static str, result: Result<(), String>) {
        let (ok, detail) = match result {
            Ok(()) => (true, "ok".to_string()),
            Err(why) => (false, why),
        };
        let mut checks = self.checks.lock().unwrap_or_else(|p| p.into_inner());
        let changed = checks.get(name).map(|c| c.ok != ok).unwrap_or(true);
        if changed {
            if ok {
                tracing::info!(check = name, "Readiness check passing.");
            } else {
                tracing::warn!(check = name, %detail, "Readiness check failing.");
            }
            checks.insert(
                name,
                Check {
                    ok,
                    detail,
                    since: Utc::now(),
                },
            );
        } else if let Some(c) = checks.get_mut(name) {
            c.detail = detail;
        }
        metrics()
            .check_up
            .with_label_values(&[name])
            .set(i64::from(ok));
        let all = checks.values().all(|c| c.ok);
        metrics().ready.set(i64::from(all && !checks.is_empty()));
    }

    /// Declares a check that has not passed yet (so `/readyz` waits for it).
    pub fn expect(&self, name: &'static str) {
        let mut checks = self.checks.lock().unwrap_or_else(|p| p.into_inner());
        checks.entry(name).or_insert(Check {
            ok: false,
            detail: "not checked yet".into(),
            since: Utc::now(),
        });
        metrics().ready.set(0);
    }

    /// Ready when every check passes (and there is at least one), with each check's state.
    pub fn summary(&self) -> (bool, serde_json::Value) {
        let checks = self.checks.lock().unwrap_or_else(|p| p.into_inner());
        let ready = !checks.is_empty() && checks.values().all(|c| c.ok);
        let each: serde_json::Map<String, serde_json::Value> = checks
            .iter()
            .map(|(name, c)| {
                (
                    name.to_string(),
                    serde_json::json!({"ok": c.ok, "detail": c.detail, "since": c.since}),
                )
            })
            .collect();
        (ready, serde_json::json!({"ready": ready, "checks": each}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_declared_check_passes() {
        let h = Health {
            checks: Mutex::new(BTreeMap::new()),
        };
        assert!(!h.summary().0, "no check declared yet");
        h.expect("broker");
        h.report("sink", Ok(()));
        let (ready, body) = h.summary();
        assert!(!ready);
        assert_eq!(body["checks"]["broker"]["detail"], "not checked yet");
        h.report("broker", Ok(()));
        assert!(h.summary().0);
        h.report("sink", Err("connection refused".into()));
        let (ready, body) = h.summary();
        assert!(!ready);
        assert_eq!(body["checks"]["sink"]["ok"], false);
        assert_eq!(body["checks"]["sink"]["detail"], "connection refused");
    }
}
