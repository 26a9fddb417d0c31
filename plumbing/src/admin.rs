//! The admin port's answers: `/healthz` (the process runs), `/readyz`
//! (what the process says) and `/metrics` (OpenMetrics text), and the
//! plain responses they and other small servers are made of. No
//! credential ever passes here.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

/// Content type of a plain-text answer.
pub const TEXT: &str = "text/plain; charset=utf-8";
/// Content type of `/metrics`.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the admin port shows of one process.
pub trait Probes {
    /// The answer to `/readyz`: 200 when ready, else 503 with the reason
    /// ([`text`] or [`answer`] build either).
    fn readyz(&self) -> Response<Full<Bytes>>;

    /// The OpenMetrics text of `/metrics`.
    fn metrics(&self) -> String;
}

/// The answer to `path` on an admin port.
pub fn route(path: &str, probes: &impl Probes) -> Response<Full<Bytes>> {
    match path {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => probes.readyz(),
        "/metrics" => answer(StatusCode::OK, OPENMETRICS, probes.metrics()),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// A plain-text answer.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    answer(status, TEXT, body)
}

/// An answer of `content_type`.
pub fn answer(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use http_body_util::BodyExt;

    use super::*;

    #[derive(Default)]
    struct Flag(Cell<bool>);

    impl Probes for Flag {
        fn readyz(&self) -> Response<Full<Bytes>> {
            if self.0.get() {
                text(StatusCode::OK, "ok\n")
            } else {
                answer(StatusCode::SERVICE_UNAVAILABLE, "application/json", "{}")
            }
        }

        fn metrics(&self) -> String {
            "# EOF\n".to_owned()
        }
    }

    async fn body(response: Response<Full<Bytes>>) -> String {
        let bytes = response.into_body().collect().await.expect("body");
        String::from_utf8_lossy(&bytes.to_bytes()).into_owned()
    }

    fn content_type(response: &Response<Full<Bytes>>) -> &str {
        response.headers()[header::CONTENT_TYPE]
            .to_str()
            .expect("ascii")
    }

    #[test]
    fn readyz_is_what_the_probes_say() {
        let probes = Flag::default();
        let not_ready = route("/readyz", &probes);
        assert_eq!(not_ready.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(content_type(&not_ready), "application/json");
        probes.0.set(true);
        assert_eq!(route("/readyz", &probes).status(), StatusCode::OK);
        let health = route("/healthz", &probes);
        assert_eq!(health.status(), StatusCode::OK);
        assert_eq!(content_type(&health), TEXT);
        assert_eq!(route("/nope", &probes).status(), StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn metrics_are_openmetrics_text() {
        let response = route("/metrics", &Flag::default());
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(content_type(&response), OPENMETRICS);
        assert_eq!(body(response).await, "# EOF\n");
        assert_eq!(body(route("/healthz", &Flag::default())).await, "ok\n");
    }
}
