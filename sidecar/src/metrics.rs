//! Prometheus metrics of the proxy, the token renewal and the reloader.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabel {
    class: &'static str,
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Every metric, cheap to clone (clones share the values).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Requests by status class, resolved once so a request only counts.
    by_class: [Counter; 5],
    upstream_latency: Histogram,
    pub token_fetches: Counter,
    pub token_fetch_failures: Counter,
    token_expiry: Gauge<f64, AtomicU64>,
    pub reloads: Counter,
    pub reload_failures: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sidekey");
        let requests = Family::<ClassLabel, Counter>::default();
        registry.register(
            "requests",
            "Requests answered to the app, by status class",
            requests.clone(),
        );
        let by_class = CLASSES.map(|class| requests.get_or_create(&ClassLabel { class }).clone());
        let upstream_latency = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            "upstream_latency_seconds",
            "Time from sending a request upstream to its response headers",
            upstream_latency.clone(),
        );
        let token_fetches = Counter::default();
        registry.register(
            "token_fetches",
            "Requests made to the OAuth 2.0 token endpoint",
            token_fetches.clone(),
        );
        let token_fetch_failures = Counter::default();
        registry.register(
            "token_fetch_failures",
            "Token requests that failed",
            token_fetch_failures.clone(),
        );
        let token_expiry = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "token_expiry_seconds",
            "Seconds until the current access token expires (0 without one)",
            token_expiry.clone(),
        );
        let reloads = Counter::default();
        registry.register(
            "config_reloads",
            "Configuration changes applied",
            reloads.clone(),
        );
        let reload_failures = Counter::default();
        registry.register(
            "config_reload_failures",
            "Configuration changes refused; the previous configuration kept serving",
            reload_failures.clone(),
        );
        Self {
            registry: Arc::new(registry),
            by_class,
            upstream_latency,
            token_fetches,
            token_fetch_failures,
            token_expiry,
            reloads,
            reload_failures,
        }
    }

    pub fn request_answered(&self, status: http::StatusCode) {
        let index = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.by_class[index].inc();
    }

    pub fn upstream_answered(&self, latency: Duration) {
        self.upstream_latency.observe(latency.as_secs_f64());
    }

    /// The Prometheus text exposition, with the token expiry as of now.
    pub fn render(&self, token_expires_in: Option<Duration>) -> String {
        self.token_expiry
            .set(token_expires_in.map_or(0.0, |d| d.as_secs_f64()));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_class() {
        let m = Metrics::new();
        m.request_answered(http::StatusCode::OK);
        m.request_answered(http::StatusCode::BAD_GATEWAY);
        m.request_answered(http::StatusCode::BAD_GATEWAY);
        let text = m.render(Some(Duration::from_secs(5)));
        assert!(
            text.contains("sidekey_requests_total{class=\"2xx\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("sidekey_requests_total{class=\"5xx\"} 2"),
            "{text}"
        );
        assert!(text.contains("sidekey_token_expiry_seconds 5"), "{text}");
    }
}
