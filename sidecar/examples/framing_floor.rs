//! The floor for a proxy with its own HTTP/1 framing on `httparse`, the
//! step issue 10 leaves out of scope ("as Pingora did"): measured only, to
//! say what that step could give on this machine. Each app connection
//! owns one upstream TLS connection and one set of buffers; a request is
//! parsed in place, rewritten into one buffer (origin-form path under the
//! upstream's base, `Host`, `Authorization: Bearer <token>`, the app's
//! other headers minus the hop-by-hop ones) and sent with one write; the
//! answer is parsed alike and written back with one write. No allocation
//! per request, no task hand-over, no header map.
//!
//! Not for use: it frames only what the benchmark sends (no request body,
//! answers with `Content-Length`), has no timeouts, and is not proved
//! strict against smuggling as hyper is. bench/run.sh runs it as the
//! `minimal1` row with `MINIMAL_BIN=target/release/examples/framing_floor`.
//!
//! ```sh
//! framing_floor 127.0.0.1:PORT https://127.0.0.1:UP/bearer ca.crt TOKEN
//! ```

use std::rc::Rc;
use std::sync::Arc;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

mod common;

use common::Failed;

/// Headers a proxy does not forward (RFC 9110 7.6.1), plus the two it sets.
const DROPPED: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "host",
    "authorization",
];

struct Target {
    addr: String,
    name: ServerName<'static>,
    connector: TlsConnector,
    base: String,
    authority: String,
    bearer: String,
}

fn main() -> Result<(), Failed> {
    let (listen, upstream, tls, token) = common::args("framing_floor")?;
    let authority = upstream.authority().ok_or("the upstream URL has no host")?;
    let target = Rc::new(Target {
        addr: format!(
            "{}:{}",
            authority.host(),
            authority.port_u16().unwrap_or(443)
        ),
        name: ServerName::try_from(authority.host().to_owned())?,
        connector: TlsConnector::from(Arc::new(tls)),
        base: upstream.path().trim_end_matches('/').to_owned(),
        authority: authority.as_str().to_owned(),
        bearer: format!("Bearer {token}"),
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    tokio::task::LocalSet::new().block_on(&runtime, async move {
        let listener = tokio::net::TcpListener::bind(listen.as_str()).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            tokio::task::spawn_local(serve(stream, target.clone()));
        }
    })
}

/// Buffers kept for the life of an app connection.
struct Connection {
    app: TcpStream,
    upstream: Option<TlsStream<TcpStream>>,
    request: Vec<u8>,
    response: Vec<u8>,
    out: Vec<u8>,
}

async fn serve(app: TcpStream, target: Rc<Target>) {
    let mut connection = Connection {
        app,
        upstream: None,
        request: Vec::with_capacity(8192),
        response: Vec::with_capacity(16384),
        out: Vec::with_capacity(8192),
    };
    while let Ok(true) = connection.exchange(&target).await {}
}

impl Connection {
    /// One request and its answer; `Ok(false)` when the app closed.
    async fn exchange(&mut self, target: &Target) -> Result<bool, Failed> {
        let head = loop {
            if let Some(head) = rewrite_request(&self.request, target, &mut self.out)? {
                break head;
            }
            if read_more(&mut self.app, &mut self.request).await? == 0 {
                return Ok(false);
            }
        };
        self.request.drain(..head);
        // A kept connection the upstream closed fails on first use: once more
        // on a new one.
        let mut fresh = self.upstream.is_none();
        let (head, body) = loop {
            let upstream = match &mut self.upstream {
                Some(upstream) => upstream,
                None => {
                    let tcp = TcpStream::connect(&target.addr).await?;
                    tcp.set_nodelay(true)?;
                    let tls = target.connector.connect(target.name.clone(), tcp).await?;
                    self.upstream.insert(tls)
                }
            };
            self.response.clear();
            match round_trip(upstream, &mut self.out, &mut self.response).await {
                Ok(sizes) => break sizes,
                Err(e) if fresh => return Err(e),
                Err(_) => {
                    self.upstream = None;
                    fresh = true;
                }
            }
        };
        let upstream = self.upstream.as_mut().ok_or("no upstream connection")?;
        while self.response.len() < head + body {
            if read_more(upstream, &mut self.response).await? == 0 {
                return Err("the upstream closed in the body".into());
            }
        }
        self.out
            .extend_from_slice(&self.response[head..head + body]);
        self.app.write_all(&self.out).await?;
        self.response.drain(..head + body);
        Ok(true)
    }
}

/// Sends `out` and reads until the answer's head parsed, then rewrites that
/// head into `out`; the lengths of the head read and of the body.
async fn round_trip(
    upstream: &mut TlsStream<TcpStream>,
    out: &mut Vec<u8>,
    response: &mut Vec<u8>,
) -> Result<(usize, usize), Failed> {
    upstream.write_all(out).await?;
    upstream.flush().await?;
    loop {
        if read_more(upstream, response).await? == 0 {
            return Err("the upstream closed".into());
        }
        if let Some(sizes) = rewrite_response(response, out)? {
            return Ok(sizes);
        }
    }
}

async fn read_more(
    stream: &mut (impl AsyncRead + Unpin),
    buffer: &mut Vec<u8>,
) -> std::io::Result<usize> {
    if buffer.capacity() - buffer.len() < 4096 {
        buffer.reserve(8192);
    }
    stream.read_buf(buffer).await
}

fn dropped(name: &str) -> bool {
    DROPPED.iter().any(|d| d.eq_ignore_ascii_case(name))
}

/// Parses a request head from `input` and writes the upstream's request
/// into `out`; the head's length once complete.
fn rewrite_request(
    input: &[u8],
    target: &Target,
    out: &mut Vec<u8>,
) -> Result<Option<usize>, Failed> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(len) = request.parse(input)? else {
        return Ok(None);
    };
    let (Some(method), Some(path)) = (request.method, request.path) else {
        return Err("incomplete request line".into());
    };
    out.clear();
    for part in [
        method,
        " ",
        &target.base,
        path,
        " HTTP/1.1\r\nhost: ",
        &target.authority,
    ] {
        out.extend_from_slice(part.as_bytes());
    }
    out.extend_from_slice(b"\r\nauthorization: ");
    out.extend_from_slice(target.bearer.as_bytes());
    out.extend_from_slice(b"\r\n");
    for header in request.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length")
            || header.name.eq_ignore_ascii_case("transfer-encoding")
        {
            return Err("request bodies are not framed here".into());
        }
        if !dropped(header.name) {
            copy_header(out, header);
        }
    }
    out.extend_from_slice(b"\r\n");
    Ok(Some(len))
}

/// Parses an answer's head in `response` and writes it into `out` minus
/// the hop-by-hop headers; the lengths of the head read and of the body.
fn rewrite_response(response: &[u8], out: &mut Vec<u8>) -> Result<Option<(usize, usize)>, Failed> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(len) = parsed.parse(response)? else {
        return Ok(None);
    };
    let code = parsed.code.ok_or("no status")?;
    let mut body = None;
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(&[
        b'0' + (code / 100 % 10) as u8,
        b'0' + (code / 10 % 10) as u8,
        b'0' + (code % 10) as u8,
        b' ',
    ]);
    out.extend_from_slice(parsed.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for header in parsed.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            body = Some(std::str::from_utf8(header.value)?.trim().parse::<usize>()?);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err("chunked answers are not framed here".into());
        }
        if !dropped(header.name) {
            copy_header(out, header);
        }
    }
    out.extend_from_slice(b"\r\n");
    let body = body.ok_or("answers without Content-Length are not framed here")?;
    Ok(Some((len, body)))
}

fn copy_header(out: &mut Vec<u8>, header: &httparse::Header<'_>) {
    out.extend_from_slice(header.name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(header.value);
    out.extend_from_slice(b"\r\n");
}
