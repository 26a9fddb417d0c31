//! The pooled HTTP client to the upstream: hyper with rustls, HTTP/1.1 and
//! HTTP/2 by ALPN, keep-alive connections reused across requests, and the
//! translation of its failures into the errors an app sees.
//!
//! Each worker thread has its own client and pool per datasource, so a
//! request, its connection's task and the pool never leave the thread that
//! accepted it: no cross-thread wake-ups, no contended pool lock.

use std::cell::RefCell;
use std::error::Error as StdError;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::error::{RequestError, chain};

/// A request body going upstream: kept whole (small, replayable) or
/// streamed straight from the app.
pub type UpstreamBody = Either<Full<Bytes>, Incoming>;

/// How long an idle upstream connection stays in the pool.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

type PooledClient = Client<HttpsConnector<HttpConnector>, UpstreamBody>;

/// Tells the settings of one `Upstream::new` (and its clones) apart from
/// every other, process-wide, so a thread's cached client is never used
/// for settings it was not built from.
static GENERATION: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// This thread's clients, one slot per datasource, each with the
    /// generation of settings it was built for. A reload that changes a
    /// datasource's TLS setup makes a new generation; the next request for
    /// it on each thread then builds a fresh client in its slot (requests
    /// in flight keep the connections they hold). One slot per datasource,
    /// not one per thread: datasources served in turn keep their pools.
    static CLIENTS: RefCell<Vec<Option<(u64, PooledClient)>>> = const { RefCell::new(Vec::new()) };
}

/// The upstream's connection settings. Cheap to clone: clones are the same
/// generation, so on each thread they share that thread's pool (a reload
/// that keeps the TLS setup keeps the pools).
#[derive(Clone)]
pub struct Upstream {
    settings: Arc<Settings>,
    timeout: Duration,
}

struct Settings {
    generation: u64,
    /// The datasource's slot in each thread's [`CLIENTS`].
    slot: usize,
    tls: Arc<rustls::ClientConfig>,
    connect_timeout: Duration,
}

impl Upstream {
    /// Settings for the datasource whose clients live in `slot` (its
    /// index; small, as each thread keeps a slot for every lower one).
    pub fn new(
        slot: usize,
        tls: Arc<rustls::ClientConfig>,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Self {
        let settings = Settings {
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
            slot,
            tls,
            connect_timeout,
        };
        Self {
            settings: Arc::new(settings),
            timeout,
        }
    }

    /// Sends `request` and waits for the response head, at most the
    /// configured timeout. The response body streams afterwards.
    pub async fn send(
        &self,
        request: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, RequestError> {
        match tokio::time::timeout(self.timeout, self.start(request)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(classify(e, self.timeout)),
            Err(_) => Err(RequestError::UpstreamTimeout {
                after: self.timeout,
            }),
        }
    }

    /// Starts `request` on this thread's client, building the client first
    /// if the thread has none for these settings.
    fn start(&self, request: Request<UpstreamBody>) -> ResponseFuture {
        let Settings {
            generation, slot, ..
        } = *self.settings;
        CLIENTS.with_borrow_mut(|clients| {
            if clients.len() <= slot {
                clients.resize_with(slot + 1, || None);
            }
            match &mut clients[slot] {
                Some((built_for, client)) if *built_for == generation => client.request(request),
                cached => {
                    let client = self.settings.client();
                    let started = client.request(request);
                    *cached = Some((generation, client));
                    started
                }
            }
        })
    }
}

impl Settings {
    fn client(&self) -> PooledClient {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(self.connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config((*self.tls).clone())
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector)
    }
}

fn classify(e: hyper_util::client::legacy::Error, timeout: Duration) -> RequestError {
    if let Some(tls) = find::<rustls::Error>(&e) {
        let hint = match tls {
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer) => {
                " (the upstream's certificate is not signed by a trusted CA: \
                 set tls.caCertificateSecretRef to the CA that signed it)"
            }
            rustls::Error::InvalidCertificate(_) => " (the upstream's certificate was refused)",
            _ => "",
        };
        return RequestError::UpstreamTls {
            hint,
            source: tls.clone(),
        };
    }
    let timed_out = find::<std::io::Error>(&e)
        .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        || chain(&e).contains("timed out");
    if timed_out {
        return RequestError::UpstreamTimeout { after: timeout };
    }
    if e.is_connect() {
        RequestError::UpstreamUnreachable { source: e }
    } else {
        RequestError::UpstreamFailed { source: e }
    }
}

/// The first error of type `T` in `e`'s chain, looking inside `io::Error`s
/// too (their `source()` skips the error they wrap).
pub(crate) fn find<'a, T: StdError + 'static>(e: &'a (dyn StdError + 'static)) -> Option<&'a T> {
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

    fn cached_generations() -> Vec<Option<u64>> {
        CLIENTS.with_borrow(|clients| clients.iter().map(|c| c.as_ref().map(|c| c.0)).collect())
    }

    #[test]
    fn each_datasource_keeps_its_own_client_on_a_thread() {
        let tls = crate::tls::client_config(None, true).expect("tls");
        let second = Duration::from_secs(1);
        let a = Upstream::new(0, tls.clone(), second, second);
        let b = Upstream::new(1, tls.clone(), second, second);
        let get = || {
            Request::get("http://127.0.0.1:9/")
                .body(Either::Left(Full::default()))
                .expect("request")
        };
        // Only started, never polled: the client is built, nothing is sent.
        drop(a.start(get()));
        drop(b.start(get()));
        drop(a.start(get()));
        let (ga, gb) = (a.settings.generation, b.settings.generation);
        assert_eq!(cached_generations(), [Some(ga), Some(gb)]);
        // A reload of `b` with another TLS setup replaces only its slot.
        let b2 = Upstream::new(1, tls, second, second);
        drop(b2.start(get()));
        assert_eq!(
            cached_generations(),
            [Some(ga), Some(b2.settings.generation)]
        );
    }

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
