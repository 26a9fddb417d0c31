//! Prometheus metrics served on the admin port's `/metrics`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::error::ReconcileError;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    pub error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdmissionLabel {
    /// `injected`, `unchanged` or `refused`.
    pub result: &'static str,
    /// Why: `Injected`, `AlreadyInjected`, `DatasourceNotFound`, ...
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DatasourceLabel {
    pub namespace: String,
    pub datasource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PageLabel {
    /// `authorize` or `callback`.
    pub route: &'static str,
    pub code: u16,
}

/// The operator's metrics; clones share the same series.
#[derive(Clone)]
pub struct Metrics {
    /// Completed reconciles, by the `Ready` reason they wrote.
    pub reconciles: Family<ReasonLabel, Counter>,
    /// Reconciles that failed and were retried, by error name.
    pub errors: Family<ErrorLabel, Counter>,
    /// Time spent in each reconcile, failed or not.
    pub duration: Histogram,
    /// 1 while this process holds the leader Lease.
    pub leader: Gauge,
    /// Pod admissions answered by the webhook, by result and reason.
    pub admissions: Family<AdmissionLabel, Counter>,
    /// Time the webhook took to answer each admission.
    pub admission_duration: Histogram,
    /// Refreshes of authorization-code tokens, by result: `success`,
    /// `refused` (a person must authorize again) or `failed` (retried).
    pub oauth_refreshes: Family<ResultLabel, Counter>,
    /// Seconds until each datasource's access token expires, as of the
    /// scrape (computed from `oauth_expires_at` when encoding).
    pub oauth_expiry: Family<DatasourceLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    oauth_expires_at: Arc<
        std::sync::Mutex<std::collections::HashMap<DatasourceLabel, k8s_openapi::jiff::Timestamp>>,
    >,
    /// Pages the authorization endpoint served, by route and status code.
    pub oauth_pages: Family<PageLabel, Counter>,
    registry: Arc<Registry>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("sidekey_operator");
        let reconciles = Family::<ReasonLabel, Counter>::default();
        let errors = Family::<ErrorLabel, Counter>::default();
        let duration = Histogram::new([
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]);
        let leader = Gauge::default();
        registry.register(
            "reconciles",
            "Completed reconciles, by the Ready reason written",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciles that failed and were retried, by error",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of each reconcile",
            duration.clone(),
        );
        registry.register(
            "leader",
            "1 while this process holds the leader Lease",
            leader.clone(),
        );
        let admissions = Family::<AdmissionLabel, Counter>::default();
        registry.register(
            "admissions",
            "Pod admissions answered by the webhook, by result and reason",
            admissions.clone(),
        );
        let admission_duration = Histogram::new([
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
        ]);
        registry.register(
            "admission_duration_seconds",
            "Time the webhook took to answer each admission",
            admission_duration.clone(),
        );
        let oauth_refreshes = Family::<ResultLabel, Counter>::default();
        registry.register(
            "oauth_refreshes",
            "Refreshes of authorization-code access tokens, by result",
            oauth_refreshes.clone(),
        );
        let oauth_expiry = Family::default();
        registry.register(
            "oauth_access_token_expires_in_seconds",
            "Seconds until each authorization-code datasource's access token expires",
            oauth_expiry.clone(),
        );
        let oauth_pages = Family::<PageLabel, Counter>::default();
        registry.register(
            "oauth_pages",
            "Pages the authorization endpoint served, by route and status code",
            oauth_pages.clone(),
        );
        Self {
            reconciles,
            errors,
            duration,
            leader,
            admissions,
            admission_duration,
            oauth_refreshes,
            oauth_expiry,
            oauth_expires_at: Arc::default(),
            oauth_pages,
            registry: Arc::new(registry),
        }
    }
}

impl Metrics {
    /// Starts timing a reconcile; the time is recorded when the guard drops.
    pub fn time_reconcile(&self) -> ReconcileTimer {
        ReconcileTimer {
            start: Instant::now(),
            histogram: self.duration.clone(),
        }
    }

    pub fn reconciled(&self, reason: &str) {
        self.reconciles
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn failed(&self, error: &ReconcileError) {
        self.errors
            .get_or_create(&ErrorLabel {
                error: error.reason().to_owned(),
            })
            .inc();
    }

    /// Counts one admission and its duration.
    pub fn admitted(&self, result: &'static str, reason: &'static str, took: Duration) {
        self.admissions
            .get_or_create(&AdmissionLabel { result, reason })
            .inc();
        self.admission_duration.observe(took.as_secs_f64());
    }

    pub fn oauth_refreshed(&self, result: &'static str) {
        self.oauth_refreshes
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// Records when a datasource's access token expires; none, no series.
    pub fn oauth_expiry(
        &self,
        namespace: &str,
        datasource: &str,
        expires_at: Option<k8s_openapi::jiff::Timestamp>,
    ) {
        let label = DatasourceLabel {
            namespace: namespace.to_owned(),
            datasource: datasource.to_owned(),
        };
        let mut known = self
            .oauth_expires_at
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match expires_at {
            Some(t) => {
                known.insert(label, t);
            }
            None => {
                known.remove(&label);
                self.oauth_expiry.remove(&label);
            }
        }
    }

    pub fn oauth_request(&self, route: &'static str, status: http::StatusCode) {
        self.oauth_pages
            .get_or_create(&PageLabel {
                route,
                code: status.as_u16(),
            })
            .inc();
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let now = k8s_openapi::jiff::Timestamp::now();
        for (label, expires_at) in self
            .oauth_expires_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let left = expires_at.duration_since(now).as_secs_f64().max(0.0);
            self.oauth_expiry.get_or_create(label).set(left);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

pub struct ReconcileTimer {
    start: Instant,
    histogram: Histogram,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_reasons_errors_and_duration() {
        let m = Metrics::default();
        m.reconciled("Reconciled");
        m.failed(&ReconcileError::MissingMetadata("uid"));
        drop(m.time_reconcile());
        m.admitted("refused", "DatasourceNotFound", Duration::from_millis(2));
        let text = m.encode();
        assert!(
            text.contains(
                "sidekey_operator_admissions_total{result=\"refused\",reason=\"DatasourceNotFound\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("sidekey_operator_admission_duration_seconds_count 1"),
            "{text}"
        );
        assert!(
            text.contains("sidekey_operator_reconciles_total{reason=\"Reconciled\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("sidekey_operator_reconcile_errors_total{error=\"MissingMetadata\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("sidekey_operator_reconcile_duration_seconds_count 1"),
            "{text}"
        );
        assert!(text.contains("# EOF"), "{text}");
    }
}
