//! gRPC through the sidecar: a tonic app speaks h2c to it, a tonic upstream
//! (grpc.health.v1, over TLS with ALPN h2) checks the bearer token the
//! sidecar adds, and the status travels back in trailers.

mod common;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use futures::{Stream, StreamExt};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio_util::task::AbortOnDropHandle;
use tonic::codegen::Service as _;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::{HealthReporter, HealthService};

const TOKEN: &str = "grpc-bearer-42";

/// A service whose Watch sends SERVING and then fails: its status can only
/// travel in trailers, after the data.
const BROKEN: &str = "broken";

/// tonic-health's own service, plus [`BROKEN`].
struct Service {
    health: HealthService,
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for Service {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.health.check(request).await
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        if request.get_ref().service == BROKEN {
            let items = [
                Ok(HealthCheckResponse {
                    status: ServingStatus::Serving as i32,
                }),
                Err(Status::data_loss("the feed broke")),
            ];
            return Ok(Response::new(Box::pin(futures::stream::iter(items))));
        }
        let stream = self.health.watch(request).await?.into_inner();
        Ok(Response::new(Box::pin(stream)))
    }
}

#[derive(Default)]
struct Seen {
    /// Calls that carried `Bearer TOKEN`.
    authorized: AtomicU64,
    /// Calls refused, with why.
    refused: std::sync::Mutex<Vec<String>>,
}

/// A tonic server over TLS on 127.0.0.1 that refuses any call without
/// `te: trailers` or without `authorization: Bearer TOKEN`.
struct GrpcUpstream {
    port: u16,
    reporter: HealthReporter,
    seen: Arc<Seen>,
    /// Stops serving when dropped.
    _task: AbortOnDropHandle<()>,
}

impl GrpcUpstream {
    async fn start(pki: &Pki) -> Self {
        let reporter = HealthReporter::new();
        let seen = Arc::new(Seen::default());
        let gate = seen.clone();
        let check = move |request: Request<()>| gatekeeper(&gate, request);
        let service = InterceptedService::new(
            HealthServer::new(Service {
                health: HealthService::from_health_reporter(reporter.clone()),
            }),
            check,
        );
        let (port, task) = upstream::accept_tls(pki, move |tls| {
            // HealthServer is always ready: no poll_ready needed.
            let service = service.clone();
            let service = hyper::service::service_fn(move |request| {
                let mut service = service.clone();
                async move { service.call(request).await }
            });
            async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .http2_only()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            }
        })
        .await;
        Self {
            port,
            reporter,
            seen,
            _task: AbortOnDropHandle::new(task),
        }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    fn refused(&self) -> Vec<String> {
        self.seen.refused.lock().expect("lock").clone()
    }
}

fn gatekeeper(seen: &Seen, request: Request<()>) -> Result<Request<()>, Status> {
    // tonic itself does not look at TE, but gRPC's C-core servers (C++,
    // Python, Ruby, ...) refuse a call without `te: trailers` ("Missing :te
    // header"): it is how gRPC tells a proxy that would drop trailers.
    let te = request.metadata().get("te").and_then(|v| v.to_str().ok());
    if te != Some("trailers") {
        let why = format!("te {te:?}");
        seen.refused.lock().expect("lock").push(why.clone());
        return Err(Status::internal(format!("{why}: expected te: trailers")));
    }
    let expected = format!("Bearer {TOKEN}");
    let authorization = request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    if authorization != Some(expected.as_str()) {
        let why = format!("authorization {authorization:?}");
        seen.refused.lock().expect("lock").push(why.clone());
        return Err(Status::unauthenticated(why));
    }
    seen.authorized.fetch_add(1, Ordering::SeqCst);
    Ok(request)
}

/// The sidecar in front of `upstream`, with the bearer token from a Secret.
fn sidecar_for(pki: &Pki, upstream: &GrpcUpstream) -> (Workspace, sidecar::Sidecar) {
    let ws = workspace(pki);
    ws.write_secret("grpc-token", "token", &format!("{TOKEN}\n"));
    ws.write_datasource(&manifest(
        &upstream.url(),
        "  authentication:\n    type: BearerToken\n    bearerToken:\n      tokenSecretRef: { name: grpc-token, key: token }\n",
    ));
    let sidecar = sidecar::start(&ws);
    (ws, sidecar)
}

/// The upstream, the sidecar in front of it and the app's client.
async fn connected() -> (
    GrpcUpstream,
    Workspace,
    sidecar::Sidecar,
    HealthClient<Channel>,
) {
    let pki = Pki::new("grpc");
    let upstream = GrpcUpstream::start(&pki).await;
    let (ws, sidecar) = sidecar_for(&pki, &upstream);
    let client = app(&sidecar).await;
    (upstream, ws, sidecar, client)
}

/// The app's client: plain HTTP/2 (prior knowledge) to the sidecar.
async fn app(sidecar: &sidecar::Sidecar) -> HealthClient<Channel> {
    let channel = Endpoint::from_shared(format!("http://{}", sidecar.addr))
        .expect("endpoint")
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .expect("connect to the sidecar");
    HealthClient::new(channel)
}

/// The stream's next message, waiting at most 10 s.
async fn next(
    stream: &mut tonic::Streaming<HealthCheckResponse>,
) -> Result<Option<HealthCheckResponse>, Status> {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("the next message in time")
}

fn check(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_call_succeeds_with_the_sidecars_bearer_token() {
    let (upstream, _ws, sidecar, mut client) = connected().await;

    // The app's own authorization is replaced, as for any request.
    let mut request = Request::new(check(""));
    request.metadata_mut().insert(
        "authorization",
        "Bearer app-identity".parse().expect("value"),
    );
    let answer = client.check(request).await.unwrap_or_else(|status| {
        panic!(
            "Check failed: {status:?}\nupstream refused: {:?}\nlogs:\n{}",
            upstream.refused(),
            sidecar.logs()
        )
    });
    // A unary success ends with `grpc-status: 0` in trailers: tonic
    // reports an error without it.
    assert_eq!(answer.get_ref().status(), ServingStatus::Serving);
    assert_eq!(upstream.seen.authorized.load(Ordering::SeqCst), 1);
    assert!(upstream.refused().is_empty(), "{:?}", upstream.refused());

    // The connection to the upstream is reused for the next call.
    let again = client.check(check("")).await.expect("second Check");
    assert_eq!(again.get_ref().status(), ServingStatus::Serving);
    assert_eq!(upstream.seen.authorized.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_status_and_message_reach_the_app() {
    let (upstream, _ws, sidecar, mut client) = connected().await;

    // A status with no data: tonic sends it in a trailers-only response.
    let status = client
        .check(check("not.registered"))
        .await
        .expect_err("an unknown service is not found");
    assert_eq!(
        status.code(),
        Code::NotFound,
        "{status:?}\nlogs:\n{}",
        sidecar.logs()
    );
    assert_eq!(status.message(), "service not registered");

    // A status after data: it travels in the response's trailers.
    let mut stream = client
        .watch(check(BROKEN))
        .await
        .unwrap_or_else(|status| panic!("Watch failed: {status:?}\nlogs:\n{}", sidecar.logs()))
        .into_inner();
    let first = stream.next().await.expect("a message").expect("SERVING");
    assert_eq!(first.status(), ServingStatus::Serving);
    let status = stream
        .next()
        .await
        .expect("the stream's end")
        .expect_err("the stream fails");
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
    assert_eq!(status.message(), "the feed broke");
    assert!(upstream.refused().is_empty(), "{:?}", upstream.refused());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_stream_delivers_each_message_and_its_ending() {
    let pki = Pki::new("grpc");
    let mut upstream = GrpcUpstream::start(&pki).await;
    let (_ws, sidecar) = sidecar_for(&pki, &upstream);
    let mut client = app(&sidecar).await;

    let mut stream = client
        .watch(check(""))
        .await
        .unwrap_or_else(|status| panic!("Watch failed: {status:?}\nlogs:\n{}", sidecar.logs()))
        .into_inner();
    let first = next(&mut stream).await.expect("message");
    assert_eq!(
        first.map(|m| m.status()),
        Some(ServingStatus::Serving),
        "the first message"
    );
    // Streamed, not buffered: a change made now arrives while the call is
    // still open.
    upstream
        .reporter
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    let second = next(&mut stream).await.expect("message");
    assert_eq!(second.map(|m| m.status()), Some(ServingStatus::NotServing));
    // Forgetting the service ends the stream with `grpc-status: 0` in
    // trailers: a clean end, not an error.
    upstream.reporter.clear_service_status("").await;
    let end = next(&mut stream).await;
    assert!(
        matches!(end, Ok(None)),
        "{end:?}\nlogs:\n{}",
        sidecar.logs()
    );
    assert_eq!(upstream.seen.authorized.load(Ordering::SeqCst), 1);
}
