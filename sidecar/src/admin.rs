//! The admin server: `/healthz`, `/readyz` and `/metrics`, for every
//! datasource the process serves. No credential ever passes here.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use sidekey_plumbing::admin::{self, Probes, answer, text};

use crate::metrics::Registry;
use crate::state::State;

/// What the admin server reads.
pub struct Admin {
    /// Every datasource served, in `--datasource` order.
    pub datasources: Vec<Arc<State>>,
    pub metrics: Registry,
}

pub async fn handle<B>(
    admin: Arc<Admin>,
    request: Request<B>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(admin::route(request.uri().path(), &*admin))
}

impl Probes for Admin {
    fn readyz(&self) -> Response<Full<Bytes>> {
        match not_ready(&self.datasources) {
            None => text(StatusCode::OK, "ready\n"),
            Some(body) => answer(
                StatusCode::SERVICE_UNAVAILABLE,
                "application/json",
                body.to_string(),
            ),
        }
    }

    fn metrics(&self) -> String {
        for datasource in &self.datasources {
            let expires_in = datasource.snapshot.load().auth.expires_in();
            datasource.metrics.set_token_expiry(expires_in);
        }
        self.metrics.render()
    }
}

/// `None` when every datasource can serve; else the body of the 503:
/// `{"error": "not_ready", "reason": ..., "datasources": [{"name", "reason"}]}`
/// naming each datasource that cannot, `reason` all of them in one sentence.
fn not_ready(datasources: &[Arc<State>]) -> Option<serde_json::Value> {
    let waiting: Vec<(&str, String)> = datasources
        .iter()
        .filter_map(|d| {
            let reason = d.snapshot.load().auth.readiness().err()?;
            Some((&*d.name, reason))
        })
        .collect();
    if waiting.is_empty() {
        return None;
    }
    let reason = waiting
        .iter()
        .map(|(name, reason)| format!("datasource {name:?}: {reason}"))
        .collect::<Vec<_>>()
        .join("; ");
    let each: Vec<_> = waiting
        .iter()
        .map(|(name, reason)| serde_json::json!({ "name": name, "reason": reason }))
        .collect();
    Some(serde_json::json!({
        "error": "not_ready",
        "reason": reason,
        "datasources": each,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::testing::state;

    async fn get(admin: &Arc<Admin>, path: &str) -> (StatusCode, String) {
        use http_body_util::BodyExt;
        let request = Request::get(path).body(()).expect("request");
        let Ok(response) = handle(admin.clone(), request).await;
        let status = response.status();
        let body = response.into_body().collect().await.expect("body");
        (
            status,
            String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        )
    }

    #[tokio::test]
    async fn readiness_names_each_datasource_that_cannot_serve() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("crm-oauth")).expect("mkdir");
        std::fs::write(dir.path().join("crm-oauth/secret"), "s").expect("write");
        let registry = Registry::new();
        let payments = state(dir.path(), &registry, 0, "payments", "    type: None\n");
        // The authorization-code grant without its refresh token: not ready,
        // and no token request is made.
        let crm = state(
            dir.path(),
            &registry,
            1,
            "crm",
            "    type: OAuth2\n    oauth2:\n      grantType: AuthorizationCode\n      accessTokenUrl: https://127.0.0.1:9/token\n      authorizationUrl: https://127.0.0.1:9/auth\n      redirectUrl: https://app.test/callback\n      clientId: crm\n      clientSecretRef: {name: crm-oauth, key: secret}\n",
        );
        let admin = Arc::new(Admin {
            datasources: vec![payments.clone(), crm],
            metrics: registry,
        });
        let (status, body) = get(&admin, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let body: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(body["error"], "not_ready");
        let each = body["datasources"].as_array().expect("datasources");
        assert_eq!(each.len(), 1, "{body}");
        assert_eq!(each[0]["name"], "crm");
        let reason = each[0]["reason"].as_str().expect("reason");
        assert!(reason.contains("crm-sidekey-oauth"), "{reason}");
        assert!(
            body["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("datasource \"crm\": ")),
            "{body}"
        );

        let only_payments = Arc::new(Admin {
            datasources: vec![payments],
            metrics: Registry::new(),
        });
        assert_eq!(
            get(&only_payments, "/readyz").await,
            (StatusCode::OK, "ready\n".to_owned())
        );
        assert_eq!(get(&admin, "/healthz").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn metrics_carry_each_datasource() {
        let dir = tempfile::tempdir().expect("tempdir");
        let registry = Registry::new();
        let a = state(dir.path(), &registry, 0, "a", "    type: None\n");
        let b = state(dir.path(), &registry, 1, "b", "    type: None\n");
        b.metrics.reloads.inc();
        let admin = Arc::new(Admin {
            datasources: vec![a, b],
            metrics: registry,
        });
        let (status, text) = get(&admin, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        for sample in [
            "sidekey_config_reloads_total{datasource=\"a\"} 0",
            "sidekey_config_reloads_total{datasource=\"b\"} 1",
            "sidekey_token_expiry_seconds{datasource=\"a\"} 0.0",
        ] {
            assert!(text.lines().any(|l| l == sample), "{sample} in:\n{text}");
        }
    }
}
