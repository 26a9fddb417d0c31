//! The HTTP client to the upstream: hyper with rustls, HTTP/1.1 and HTTP/2
//! by ALPN, keep-alive connections reused across requests, and the
//! translation of its failures into the errors an app sees.
//!
//! Each worker thread has its own connections per datasource, so a
//! request, its connection's task and the pool never leave the thread that
//! accepted it: no cross-thread wake-ups, no contended pool lock.
//!
//! HTTP/1.1 connections are pooled here, on `hyper::client::conn::http1`:
//! a stack of idle connections per thread and datasource, the most recently
//! used on top, so a request costs a look at the top of a `Vec` instead of
//! hyper-util's pool (a hashed key, a checkout future, and a task spawned
//! per request to return the connection; measured: bench/README.md). An
//! upstream whose ALPN picks HTTP/2 gets hyper-util's pooled client, which
//! multiplexes the thread's requests over one connection.

use std::cell::{Cell, RefCell};
use std::error::Error as StdError;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::future::{self, Either as Which};
use http::header::HOST;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::rt::Timer as _;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower_service::Service;

use sidekey_plumbing::coarse_timer::CoarseTimer;
use sidekey_plumbing::serve::MAX_REQUEST_HEAD;

use crate::error::{BoxError, RequestError, chain};

/// A request body going upstream: kept whole (small, replayable) or
/// streamed straight from the app.
pub type UpstreamBody = Either<Full<Bytes>, Incoming>;

/// How long an idle upstream connection stays in the pool: HTTP/1.1
/// connections unused for between one and two sweeps are closed, HTTP/2
/// ones (hyper-util's pool) after this.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// How often each thread closes the HTTP/1.1 connections that stayed idle
/// since the last sweep.
const POOL_SWEEP: Duration = Duration::from_secs(45);

type Connector = HttpsConnector<HttpConnector>;
type PooledClient = Client<Connector, UpstreamBody>;

/// Tells the settings of one `Upstream::new` (and its clones) apart from
/// every other, process-wide, so a thread's cached client is never used
/// for settings it was not built from.
static GENERATION: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// This thread's clients, one slot per datasource, each with the
    /// generation of settings it was built for. A reload that changes a
    /// datasource's TLS setup or origin makes a new generation; the next
    /// request for it on each thread then builds a fresh client in its slot
    /// (requests in flight keep the connections they hold). One slot per
    /// datasource, not one per thread: datasources served in turn keep
    /// their pools.
    static CLIENTS: RefCell<Vec<Option<ThreadClient>>> = const { RefCell::new(Vec::new()) };
    /// Whether this thread runs its pool sweeper.
    static SWEEPING: Cell<bool> = const { Cell::new(false) };
}

/// One datasource's connections on one thread.
struct ThreadClient {
    generation: u64,
    connector: Connector,
    /// Idle HTTP/1.1 connections, the most recently used last. One whose
    /// response body is still being read is here too, but not ready.
    idle: Vec<Idle>,
    /// Set once ALPN picked HTTP/2: from then on every request of this
    /// generation goes through it.
    http2: Option<Arc<PooledClient>>,
    /// The upstream timeout of each request: a slot in a list instead of
    /// an entry in tokio's timer wheel (measured), to within a tenth of
    /// the timeout (a second at most).
    timer: CoarseTimer,
}

struct Idle {
    sender: http1::SendRequest<UpstreamBody>,
    /// Left unused since the last sweep: the next one closes it.
    swept: bool,
}

/// Where a request goes.
enum Route {
    Idle(http1::SendRequest<UpstreamBody>),
    Connect(Connector),
    Http2(Arc<PooledClient>),
}

/// The upstream's connection settings. Cheap to clone: clones are the same
/// generation, so on each thread they share that thread's pool (a reload
/// that keeps the TLS setup and the origin keeps the pools).
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
    /// Where every request goes: the URL's scheme and authority.
    scheme: Scheme,
    authority: Authority,
    /// The same, as the URI a connection is made for.
    origin: Uri,
    /// `Host` of every HTTP/1.1 request: the URL's authority.
    host: HeaderValue,
}

impl Upstream {
    /// Settings for the datasource whose clients live in `slot` (its
    /// index; small, as each thread keeps a slot for every lower one),
    /// sending every request to `origin` (scheme and authority).
    pub fn new(
        slot: usize,
        (scheme, authority): (&Scheme, &Authority),
        tls: Arc<rustls::ClientConfig>,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Self {
        let origin = Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .unwrap_or_default();
        let settings = Settings {
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
            slot,
            tls,
            connect_timeout,
            scheme: scheme.clone(),
            authority: authority.clone(),
            origin,
            host: HeaderValue::from_str(authority.as_str())
                .unwrap_or_else(|_| HeaderValue::from_static("")),
        };
        Self {
            settings: Arc::new(settings),
            timeout,
        }
    }

    /// Sends `request` (origin-form URI) to the upstream and waits for the
    /// response head, at most the configured timeout. The response body
    /// streams afterwards. A request whose head is over [`MAX_REQUEST_HEAD`] is
    /// refused here, unsent.
    pub async fn send(
        &self,
        request: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, RequestError> {
        // The app's side holds heads to this limit, but the credential,
        // default headers and signature come on top. Sent anyway, a head
        // over it could make an HTTP/2 upstream on hyper's defaults end
        // the pooled connection (GOAWAY) and every request in flight on
        // it; under it, such an upstream answers 431 on the stream. Which
        // limit the upstream announced is not exposed by hyper's client.
        let size = header_list_size(&request, &self.settings.scheme, &self.settings.authority);
        if size > MAX_REQUEST_HEAD {
            return Err(RequestError::HeadersTooLarge {
                size,
                limit: MAX_REQUEST_HEAD,
            });
        }
        let deadline = self.with_client(|client| client.timer.sleep(self.timeout));
        let dispatch = std::pin::pin!(self.dispatch(request));
        match future::select(dispatch, deadline).await {
            Which::Left((result, _)) => result,
            Which::Right(_) => Err(RequestError::UpstreamTimeout {
                after: self.timeout,
            }),
        }
    }

    async fn dispatch(
        &self,
        mut request: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, RequestError> {
        loop {
            let (mut sender, reused) = match self.route() {
                Route::Http2(client) => {
                    // hyper-util's client wants the absolute URI.
                    let mut uri = http::uri::Parts::default();
                    uri.scheme = Some(self.settings.scheme.clone());
                    uri.authority = Some(self.settings.authority.clone());
                    uri.path_and_query = request.uri().path_and_query().cloned();
                    *request.uri_mut() =
                        Uri::from_parts(uri).map_err(|e| RequestError::BadRequest {
                            what: "the request URI cannot be built",
                            source: e.into(),
                        })?;
                    return client.request(request).await.map_err(|e| {
                        let connect = e.is_connect();
                        self.classify(&e, connect)
                    });
                }
                Route::Idle(sender) => (sender, true),
                Route::Connect(mut connector) => {
                    let io = connector
                        .call(self.settings.origin.clone())
                        .await
                        .map_err(|e| self.classify(&*e, true))?;
                    if io.connected().is_negotiated_h2() {
                        // Dropped: hyper-util's client makes its own.
                        self.use_http2();
                        continue;
                    }
                    let (sender, connection) = http1::handshake(io)
                        .await
                        .map_err(|e| self.classify(&e, true))?;
                    tokio::spawn(async move {
                        if let Err(e) = connection.await {
                            tracing::debug!(error = %chain(&e), "upstream connection ended with an error");
                        }
                    });
                    (sender, false)
                }
            };
            // HTTP/1.1 wants a Host (HTTP/2 takes :authority from the
            // absolute URI).
            request
                .headers_mut()
                .insert(HOST, self.settings.host.clone());
            match sender.try_send_request(request).await {
                Ok(response) => {
                    self.put_back(sender);
                    return Ok(response);
                }
                Err(mut e) => match e.take_message() {
                    // A reused connection closed before the request was
                    // written (the upstream had just closed it while idle):
                    // the request goes on another, as hyper-util's client
                    // retries it. Each retry drops a connection from the
                    // pool or makes a new one, whose failure is final.
                    Some(unsent) if reused => {
                        request = unsent;
                        request.headers_mut().remove(HOST);
                    }
                    _ => return Err(self.classify(&e.into_error(), false)),
                },
            }
        }
    }

    /// Where the next request goes on this thread: an idle connection that
    /// is ready, else a new one, or hyper-util's client for HTTP/2.
    fn route(&self) -> Route {
        self.with_client(|client| {
            if let Some(http2) = &client.http2 {
                return Route::Http2(http2.clone());
            }
            // From the top, dropping closed connections on the way.
            while let Some(top) = client.idle.last() {
                if top.sender.is_closed() {
                    client.idle.pop();
                } else {
                    break;
                }
            }
            let ready = client.idle.iter().rposition(|i| i.sender.is_ready());
            match ready {
                Some(at) => Route::Idle(client.idle.remove(at).sender),
                None => Route::Connect(client.connector.clone()),
            }
        })
    }

    /// Puts a connection whose response head came back into this thread's
    /// pool; it is ready again once the response body has been read.
    fn put_back(&self, sender: http1::SendRequest<UpstreamBody>) {
        let generation = self.settings.generation;
        let slot = self.settings.slot;
        let start_sweeper = CLIENTS.with_borrow_mut(|clients| {
            // Not when a reload has replaced this generation meanwhile: the
            // connection then closes once its body is read.
            if let Some(Some(client)) = clients.get_mut(slot)
                && client.generation == generation
            {
                client.idle.push(Idle {
                    sender,
                    swept: false,
                });
            }
            !SWEEPING.replace(true)
        });
        if start_sweeper {
            tokio::spawn(sweep());
        }
    }

    /// From now on, this thread sends this generation's requests through
    /// hyper-util's pooled client, which multiplexes HTTP/2.
    fn use_http2(&self) {
        self.with_client(|client| {
            client.idle.clear();
            client.http2 = Some(Arc::new(self.settings.client()));
        });
    }

    /// Runs `f` on this thread's client for these settings, building it
    /// first if the thread has none.
    fn with_client<R>(&self, f: impl FnOnce(&mut ThreadClient) -> R) -> R {
        let Settings {
            generation, slot, ..
        } = *self.settings;
        CLIENTS.with_borrow_mut(|clients| {
            if clients.len() <= slot {
                clients.resize_with(slot + 1, || None);
            }
            let cached = &mut clients[slot];
            let client = match cached {
                Some(client) if client.generation == generation => client,
                _ => cached.insert(ThreadClient {
                    generation,
                    connector: self.settings.connector(),
                    idle: Vec::new(),
                    http2: None,
                    timer: CoarseTimer::new(
                        (self.timeout / 10)
                            .clamp(Duration::from_millis(10), Duration::from_secs(1)),
                    ),
                }),
            };
            f(client)
        })
    }

    fn classify(&self, e: &(dyn StdError + 'static), connecting: bool) -> RequestError {
        classify(e, connecting, self.timeout)
    }
}

/// Every `POOL_SWEEP`, closes this thread's idle HTTP/1.1 connections
/// that no request took since the last sweep.
async fn sweep() {
    let mut ticks = tokio::time::interval(POOL_SWEEP);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        sweep_once();
    }
}

fn sweep_once() {
    CLIENTS.with_borrow_mut(|clients| {
        for client in clients.iter_mut().flatten() {
            client
                .idle
                .retain(|i| !(i.sender.is_closed() || (i.swept && i.sender.is_ready())));
            for idle in &mut client.idle {
                idle.swept = true;
            }
        }
    });
}

impl Settings {
    fn connector(&self) -> Connector {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(self.connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        HttpsConnectorBuilder::new()
            .with_tls_config((*self.tls).clone())
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http)
    }

    fn client(&self) -> PooledClient {
        Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(self.connector())
    }
}

/// The size of `request`'s head as HTTP/2 counts a header list (RFC 9113
/// §6.5.2, and the h2 crate): each field's name and value plus 32 bytes,
/// the pseudo-header fields included. Over HTTP/1.1 the head is smaller
/// than this, so one rule serves both.
pub fn header_list_size<B>(request: &Request<B>, scheme: &Scheme, authority: &Authority) -> usize {
    const FIELD: usize = 32;
    let uri = request.uri();
    let pseudo = [
        (":method".len(), request.method().as_str().len()),
        (":scheme".len(), scheme.as_str().len()),
        (":authority".len(), authority.as_str().len()),
        (
            ":path".len(),
            uri.path_and_query().map_or(1, |p| p.as_str().len()),
        ),
    ];
    let pseudo: usize = pseudo.iter().map(|(n, v)| n + v + FIELD).sum();
    let fields: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + FIELD)
        .sum();
    pseudo + fields
}

fn classify(e: &(dyn StdError + 'static), connecting: bool, timeout: Duration) -> RequestError {
    if let Some(tls) = find::<rustls::Error>(e) {
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
    let timed_out = find::<std::io::Error>(e)
        .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        || chain(e).contains("timed out");
    if timed_out {
        return RequestError::UpstreamTimeout { after: timeout };
    }
    let source = BoxError::from(chain(e));
    if connecting {
        RequestError::UpstreamUnreachable { source }
    } else {
        RequestError::UpstreamFailed { source }
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
        CLIENTS.with_borrow(|clients| {
            clients
                .iter()
                .map(|c| c.as_ref().map(|c| c.generation))
                .collect()
        })
    }

    fn upstream(slot: usize) -> Upstream {
        let tls = crate::tls::client_config(None, true).expect("tls");
        let second = Duration::from_secs(1);
        let authority = Authority::from_static("127.0.0.1:9");
        Upstream::new(slot, (&Scheme::HTTP, &authority), tls, second, second)
    }

    #[test]
    fn each_datasource_keeps_its_own_client_on_a_thread() {
        let (a, b) = (upstream(0), upstream(1));
        // Routed, never sent: the client is built, nothing is connected.
        for u in [&a, &b, &a] {
            assert!(matches!(u.route(), Route::Connect(_)));
        }
        let (ga, gb) = (a.settings.generation, b.settings.generation);
        assert_eq!(cached_generations(), [Some(ga), Some(gb)]);
        // A reload of `b` with another TLS setup replaces only its slot.
        let b2 = upstream(1);
        assert!(matches!(b2.route(), Route::Connect(_)));
        assert_eq!(
            cached_generations(),
            [Some(ga), Some(b2.settings.generation)]
        );
    }

    /// A plain HTTP/1.1 upstream on loopback answering `ok`; counts the
    /// connections it accepted and those that have ended.
    async fn counting_upstream() -> (Authority, Arc<AtomicU64>, Arc<AtomicU64>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let authority = Authority::try_from(listener.local_addr().expect("addr").to_string())
            .expect("authority");
        let (accepted, ended) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (a, e) = (accepted.clone(), ended.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let e = e.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|_request| async {
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                    e.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        (authority, accepted, ended)
    }

    async fn get(upstream: &Upstream) {
        use http_body_util::BodyExt as _;
        let request = Request::get("/x")
            .body(Either::Left(Full::default()))
            .expect("request");
        let response = upstream.send(request).await.expect("answered");
        let body = response.into_body().collect().await.expect("body");
        assert_eq!(body.to_bytes(), "ok");
    }

    fn idle_connections(upstream: &Upstream) -> usize {
        upstream.with_client(|client| client.idle.len())
    }

    #[tokio::test]
    async fn idle_connections_are_reused_then_closed_by_the_second_sweep() {
        let (authority, accepted, ended) = counting_upstream().await;
        let tls = crate::tls::client_config(None, true).expect("tls");
        let second = Duration::from_secs(5);
        let upstream = Upstream::new(3, (&Scheme::HTTP, &authority), tls, second, second);
        for _ in 0..5 {
            get(&upstream).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection, reused");
        assert_eq!(idle_connections(&upstream), 1);
        // Idle through one sweep: kept; through a second: closed.
        sweep_once();
        assert_eq!(idle_connections(&upstream), 1);
        sweep_once();
        assert_eq!(idle_connections(&upstream), 0);
        tokio::time::timeout(Duration::from_secs(5), async {
            while ended.load(Ordering::SeqCst) < 1 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the upstream saw the connection closed");
        // A connection used between two sweeps stays.
        get(&upstream).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        sweep_once();
        get(&upstream).await;
        sweep_once();
        assert_eq!(idle_connections(&upstream), 1);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn header_list_size_counts_as_http2_does() {
        let request = Request::get("/v2/x?y=1")
            .header("x-a", "bc")
            .header("x-a", "d")
            .body(())
            .expect("request");
        // :method GET, :scheme https, :authority api.example:8443,
        // :path /v2/x?y=1, then x-a twice.
        let expected = (7 + 3 + 32)
            + (7 + 5 + 32)
            + (10 + 16 + 32)
            + (5 + 9 + 32)
            + (3 + 2 + 32)
            + (3 + 1 + 32);
        let authority = Authority::from_static("api.example:8443");
        assert_eq!(
            header_list_size(&request, &Scheme::HTTPS, &authority),
            expected
        );
    }

    #[tokio::test]
    async fn a_head_over_the_limit_is_refused_unsent() {
        let upstream = upstream(0);
        // Port 9 (discard): were it sent, the error would be another.
        let request = Request::get("/")
            .header("x-big", "x".repeat(MAX_REQUEST_HEAD))
            .body(Either::Left(Full::default()))
            .expect("request");
        let e = upstream.send(request).await.expect_err("too large");
        assert!(
            matches!(e, RequestError::HeadersTooLarge { limit, .. } if limit == MAX_REQUEST_HEAD),
            "{e}"
        );
        assert_eq!(e.status(), 431);
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
