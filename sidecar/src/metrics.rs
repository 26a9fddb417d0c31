//! Prometheus metrics of the proxy, the token renewal and the reloader.
//!
//! One family per metric for the whole process, every series labelled with
//! its `datasource`. (A labelled sub-registry per datasource would write
//! each family's HELP and TYPE once per datasource, and OpenMetrics wants a
//! family's name once per exposition.) Each datasource holds handles to its
//! own series, resolved once, so counting costs what it did with one.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use crate::error::BODY_ERROR_REASONS;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DatasourceLabel {
    datasource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    datasource: String,
    class: &'static str,
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BodyErrorLabels {
    datasource: String,
    reason: &'static str,
}

type ExpiryGauge = Gauge<f64, AtomicU64>;

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// The process's metrics: what `/metrics` renders, and the families each
/// datasource's [`Metrics`] take their series from.
pub struct Registry {
    registry: prometheus_client::registry::Registry,
    requests: Family<RequestLabels, Counter>,
    upstream_latency: Family<DatasourceLabel, Histogram, fn() -> Histogram>,
    upstream_body_errors: Family<BodyErrorLabels, Counter>,
    token_fetches: Family<DatasourceLabel, Counter>,
    token_fetch_failures: Family<DatasourceLabel, Counter>,
    token_expiry: Family<DatasourceLabel, ExpiryGauge>,
    reloads: Family<DatasourceLabel, Counter>,
    reload_failures: Family<DatasourceLabel, Counter>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    pub fn new() -> Self {
        let mut registry = prometheus_client::registry::Registry::with_prefix("sidekey");
        let requests = Family::default();
        registry.register(
            "requests",
            "Requests answered to the app, by status class",
            requests.clone(),
        );
        let upstream_latency = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register(
            "upstream_latency_seconds",
            "Time from sending a request upstream to its response headers",
            upstream_latency.clone(),
        );
        let upstream_body_errors = Family::default();
        registry.register(
            "upstream_body_errors",
            "Upstream response bodies that failed after their head was passed on, cutting the app's response short",
            upstream_body_errors.clone(),
        );
        let token_fetches = Family::default();
        registry.register(
            "token_fetches",
            "Requests made to the OAuth 2.0 token endpoint",
            token_fetches.clone(),
        );
        let token_fetch_failures = Family::default();
        registry.register(
            "token_fetch_failures",
            "Token requests that failed",
            token_fetch_failures.clone(),
        );
        let token_expiry = Family::default();
        registry.register(
            "token_expiry_seconds",
            "Seconds until the current access token expires (0 without one)",
            token_expiry.clone(),
        );
        let reloads = Family::default();
        registry.register(
            "config_reloads",
            "Configuration changes applied",
            reloads.clone(),
        );
        let reload_failures = Family::default();
        registry.register(
            "config_reload_failures",
            "Configuration changes refused; the previous configuration kept serving",
            reload_failures.clone(),
        );
        Self {
            registry,
            requests,
            upstream_latency,
            upstream_body_errors,
            token_fetches,
            token_fetch_failures,
            token_expiry,
            reloads,
            reload_failures,
        }
    }

    /// The series of datasource `name`, created now so that every one of
    /// them shows (at 0) from the start.
    pub fn datasource(&self, name: &str) -> Metrics {
        let label = DatasourceLabel {
            datasource: name.to_owned(),
        };
        let by_class = CLASSES.map(|class| {
            self.requests
                .get_or_create(&RequestLabels {
                    datasource: name.to_owned(),
                    class,
                })
                .clone()
        });
        let body_errors = BODY_ERROR_REASONS.map(|reason| {
            self.upstream_body_errors
                .get_or_create(&BodyErrorLabels {
                    datasource: name.to_owned(),
                    reason,
                })
                .clone()
        });
        Metrics {
            by_class,
            body_errors,
            upstream_latency: self.upstream_latency.get_or_create(&label).clone(),
            token_fetches: self.token_fetches.get_or_create(&label).clone(),
            token_fetch_failures: self.token_fetch_failures.get_or_create(&label).clone(),
            token_expiry: self.token_expiry.get_or_create(&label).clone(),
            reloads: self.reloads.get_or_create(&label).clone(),
            reload_failures: self.reload_failures.get_or_create(&label).clone(),
        }
    }

    /// The OpenMetrics text exposition. Set each datasource's token expiry
    /// ([`Metrics::set_token_expiry`]) first: it is read, not pushed.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// One datasource's series. Cheap to clone (clones share the values).
#[derive(Clone)]
pub struct Metrics {
    /// Requests by status class, resolved once so a request only counts.
    by_class: [Counter; 5],
    upstream_latency: Histogram,
    /// By reason, in the order of [`BODY_ERROR_REASONS`].
    body_errors: [Counter; BODY_ERROR_REASONS.len()],
    pub token_fetches: Counter,
    pub token_fetch_failures: Counter,
    token_expiry: ExpiryGauge,
    pub reloads: Counter,
    pub reload_failures: Counter,
}

impl Metrics {
    pub fn request_answered(&self, status: http::StatusCode) {
        let index = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.by_class[index].inc();
    }

    pub fn upstream_answered(&self, latency: Duration) {
        self.upstream_latency.observe(latency.as_secs_f64());
    }

    /// An upstream response body failed with `reason`, one of
    /// [`BODY_ERROR_REASONS`].
    pub fn upstream_body_failed(&self, reason: &str) {
        if let Some(i) = BODY_ERROR_REASONS.iter().position(|r| *r == reason) {
            self.body_errors[i].inc();
        }
    }

    /// The token expiry as of now, for the next rendering.
    pub fn set_token_expiry(&self, expires_in: Option<Duration>) {
        self.token_expiry
            .set(expires_in.map_or(0.0, |d| d.as_secs_f64()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_datasource_and_class() {
        let registry = Registry::new();
        let payments = registry.datasource("payments");
        let crm = registry.datasource("crm");
        payments.request_answered(http::StatusCode::OK);
        crm.request_answered(http::StatusCode::BAD_GATEWAY);
        crm.request_answered(http::StatusCode::BAD_GATEWAY);
        payments.set_token_expiry(Some(Duration::from_secs(5)));
        crm.set_token_expiry(None);
        crm.upstream_body_failed("idle_timeout");
        let text = registry.render();
        for sample in [
            "sidekey_requests_total{datasource=\"payments\",class=\"2xx\"} 1",
            "sidekey_requests_total{datasource=\"crm\",class=\"5xx\"} 2",
            "sidekey_requests_total{datasource=\"crm\",class=\"2xx\"} 0",
            "sidekey_token_expiry_seconds{datasource=\"payments\"} 5.0",
            "sidekey_token_expiry_seconds{datasource=\"crm\"} 0.0",
            "sidekey_config_reloads_total{datasource=\"crm\"} 0",
            "sidekey_upstream_body_errors_total{datasource=\"crm\",reason=\"idle_timeout\"} 1",
            "sidekey_upstream_body_errors_total{datasource=\"payments\",reason=\"reset\"} 0",
        ] {
            assert!(text.lines().any(|l| l == sample), "{sample} in:\n{text}");
        }
    }

    #[test]
    fn every_series_carries_the_datasource_label_and_each_family_shows_once() {
        let registry = Registry::new();
        let a = registry.datasource("a");
        registry.datasource("b");
        a.upstream_answered(Duration::from_millis(3));
        let text = registry.render();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.contains("datasource=\""), "{line}");
        }
        let types: Vec<_> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
        let mut unique = types.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(types.len(), unique.len(), "{text}");
        assert_eq!(types.len(), 8, "{text}");
    }
}
