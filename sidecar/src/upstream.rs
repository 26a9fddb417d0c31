//! The pooled HTTP client to the upstream: hyper with rustls, HTTP/1.1 and
//! HTTP/2 by ALPN, keep-alive connections reused across requests, and the
//! translation of its failures into the errors an app sees.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::error::{Error, chain};

/// A request body going upstream: kept whole (small, replayable) or
/// streamed straight from the app.
pub type UpstreamBody = Either<Full<Bytes>, Incoming>;

/// How long an idle upstream connection stays in the pool.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Cheap to clone: clones share one connection pool.
#[derive(Clone)]
pub struct Upstream {
    client: Client<HttpsConnector<HttpConnector>, UpstreamBody>,
    timeout: Duration,
}

impl Upstream {
    pub fn new(
        tls: Arc<rustls::ClientConfig>,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config((*tls).clone())
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        Self { client, timeout }
    }

    /// Sends `request` and waits for the response head, at most the
    /// configured timeout. The response body streams afterwards.
    pub async fn send(&self, request: Request<UpstreamBody>) -> Result<Response<Incoming>, Error> {
        match tokio::time::timeout(self.timeout, self.client.request(request)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(classify(&e, self.timeout)),
            Err(_) => Err(Error::UpstreamTimeout {
                after: self.timeout,
            }),
        }
    }
}

fn classify(e: &hyper_util::client::legacy::Error, timeout: Duration) -> Error {
    if let Some(tls) = find::<rustls::Error>(e) {
        let hint = match tls {
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer) => {
                " (the upstream's certificate is not signed by a trusted CA: \
                 set tls.caCertificateSecretRef to the CA that signed it)"
            }
            rustls::Error::InvalidCertificate(_) => " (the upstream's certificate was refused)",
            _ => "",
        };
        return Error::UpstreamTls {
            reason: format!("{tls}{hint}"),
        };
    }
    let timed_out = find::<std::io::Error>(e)
        .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        || chain(e).contains("timed out");
    if timed_out {
        return Error::UpstreamTimeout { after: timeout };
    }
    if e.is_connect() {
        Error::UpstreamUnreachable { reason: chain(e) }
    } else {
        Error::UpstreamFailed { reason: chain(e) }
    }
}

/// The first error of type `T` in `e`'s chain, looking inside `io::Error`s
/// too (their `source()` skips the error they wrap).
fn find<'a, T: StdError + 'static>(e: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(found) = err.downcast_ref::<T>() {
            return Some(found);
        }
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            let inner: &(dyn StdError + 'static) = inner;
            if let Some(found) = find::<T>(inner) {
                return Some(found);
            }
        }
        next = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rustls_error_is_found_inside_an_io_error() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        let found = find::<rustls::Error>(&io).expect("found");
        assert!(matches!(found, rustls::Error::InvalidCertificate(_)));
    }
}
