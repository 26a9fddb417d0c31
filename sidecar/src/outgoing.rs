//! Builds the upstream request from the app's: the datasource URL's path
//! joined with the app's (its dot segments removed first, so that it
//! cannot climb above the URL's path), the app's query followed by the datasource's
//! parameters, the app's headers less hop-by-hop ones and `Host`, and the
//! datasource's default headers where the app sent none of that name.
//! Everything per-datasource is computed once, in [`Target::new`].

use http::header::{self, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Method, Request, Uri, Version, request};
use sidekey_crds::ResolvedDatasource;
use std::borrow::Cow;
use url::form_urlencoded;

use crate::error::{BoxError, ConfigError, RequestError};
use crate::hop_by_hop;
use crate::upstream::UpstreamBody;

/// Where requests go and what every request gets, precomputed.
pub struct Target {
    scheme: Scheme,
    authority: Authority,
    /// The URL's path without its trailing `/`: `/v2` for `https://h/v2/`.
    base_path: String,
    /// The URL's own query and the datasource's parameters, encoded.
    default_query: String,
    /// Default headers grouped by name, so that two values of one name
    /// are both added when the app sent neither.
    headers: Vec<(HeaderName, Vec<HeaderValue>)>,
}

impl Target {
    pub fn new(ds: &ResolvedDatasource) -> Result<Self, ConfigError> {
        let invalid = |source: BoxError| ConfigError::InvalidUrl {
            field: "url",
            source,
        };
        let url = url::Url::parse(&ds.url).map_err(|e| invalid(e.into()))?;
        let scheme = Scheme::try_from(url.scheme()).map_err(|e| invalid(e.into()))?;
        let host = url.host_str().ok_or_else(|| ConfigError::InvalidSetting {
            field: "url",
            reason: "the URL has no host".into(),
        })?;
        let authority = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        let authority = Authority::try_from(authority).map_err(|e| invalid(e.into()))?;
        let base_path = url.path().trim_end_matches('/').to_owned();

        let mut query = form_urlencoded::Serializer::new(url.query().unwrap_or("").to_owned());
        for p in &ds.query_parameters {
            query.append_pair(&p.name, &p.value);
        }
        let default_query = query.finish();

        let mut headers: Vec<(HeaderName, Vec<HeaderValue>)> = Vec::new();
        for h in &ds.headers {
            let bad = || ConfigError::InvalidHeaderValue {
                field: "headers",
                name: h.name.clone(),
            };
            let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| bad())?;
            let value = HeaderValue::from_str(&h.value).map_err(|_| bad())?;
            match headers.iter_mut().find(|(n, _)| *n == name) {
                Some((_, values)) => values.push(value),
                None => headers.push((name, vec![value])),
            }
        }
        Ok(Self {
            scheme,
            authority,
            base_path,
            default_query,
            headers,
        })
    }

    /// The scheme and authority every request goes to.
    pub fn origin(&self) -> (&Scheme, &Authority) {
        (&self.scheme, &self.authority)
    }

    /// The upstream request for the app's request head; refused when its
    /// path hides a dot segment behind an encoded slash.
    pub fn outgoing(&self, app: request::Parts) -> Result<Outgoing, RequestError> {
        let refuse = |what: &'static str, reason: &'static str| RequestError::BadRequest {
            what,
            source: reason.into(),
        };
        // The upstream is the datasource's and nothing else: no tunnel to
        // wherever the app names. Absolute-form is served, its scheme and
        // authority ignored; authority-form, which only CONNECT may use,
        // is refused.
        if app.method == Method::CONNECT {
            return Err(refuse(
                "CONNECT is not served",
                "the sidecar forwards requests to its datasource and opens no tunnels",
            ));
        }
        let app_path = app.uri.path();
        if app_path.is_empty() {
            return Err(refuse(
                "the request target cannot be forwarded",
                "authority-form is for CONNECT only",
            ));
        }
        let app_path = if app_path.starts_with('/') {
            remove_dot_segments(app_path)
                .map_err(|reason| refuse("the request path cannot be forwarded", reason))?
        } else {
            Cow::Borrowed("/")
        };
        let mut path_and_query = String::with_capacity(
            self.base_path.len()
                + app_path.len()
                + app.uri.query().map_or(0, str::len)
                + self.default_query.len()
                + 2,
        );
        path_and_query.push_str(&self.base_path);
        path_and_query.push_str(&app_path);
        let query_start = path_and_query.len();
        let queries = [app.uri.query().unwrap_or(""), &self.default_query];
        for q in queries.into_iter().filter(|q| !q.is_empty()) {
            path_and_query.push(if path_and_query.len() == query_start {
                '?'
            } else {
                '&'
            });
            path_and_query.push_str(q);
        }

        let mut headers = app.headers;
        hop_by_hop::strip(&mut headers);
        // The client writes Host (HTTP/1.1) or :authority (HTTP/2) from the URI.
        headers.remove(header::HOST);
        for (name, values) in &self.headers {
            if !headers.contains_key(name) {
                for v in values {
                    headers.append(name.clone(), v.clone());
                }
            }
        }
        Ok(Outgoing {
            method: app.method,
            path_and_query,
            query_start,
            headers,
        })
    }
}

/// What a path segment is once `%2e`/`%2E` are read as dots.
#[derive(PartialEq)]
enum Segment {
    Dot,
    DotDot,
    Other,
}

fn segment(s: &str) -> Segment {
    let mut rest = s.as_bytes();
    let mut dots = 0;
    while !rest.is_empty() {
        if rest[0] == b'.' {
            rest = &rest[1..];
        } else if rest.len() >= 3 && rest[..3].eq_ignore_ascii_case(b"%2e") {
            rest = &rest[3..];
        } else {
            return Segment::Other;
        }
        dots += 1;
    }
    match dots {
        1 => Segment::Dot,
        2 => Segment::DotDot,
        _ => Segment::Other,
    }
}

/// RFC 3986's remove_dot_segments on an absolute path, with `.`, `..` and
/// their percent-encoded spellings (`%2e`, `%2E`, mixed) as dot segments,
/// like Envoy's `normalize_path`; a `..` at the top is dropped. Nothing
/// else is decoded: `%2F` stays in its segment, encoded. A segment that
/// would hold a dot segment were its `%2F`, `%5C` or `\` read as a
/// separator is refused: some servers decode those before resolving.
fn remove_dot_segments(path: &str) -> Result<Cow<'_, str>, &'static str> {
    let suspicious =
        |b: &[u8]| b.contains(&b'.') || b.windows(3).any(|w| w.eq_ignore_ascii_case(b"%2e"));
    if !suspicious(path.as_bytes()) {
        return Ok(Cow::Borrowed(path));
    }
    let pieces: Vec<&str> = path[1..].split('/').collect();
    let last = pieces.len() - 1;
    let mut kept: Vec<&str> = Vec::with_capacity(pieces.len());
    for (i, piece) in pieces.into_iter().enumerate() {
        match segment(piece) {
            Segment::Dot => {}
            Segment::DotDot => {
                kept.pop();
            }
            Segment::Other => {
                if hides_dot_segment(piece) {
                    return Err("a dot segment behind an encoded slash or a backslash");
                }
                kept.push(piece);
                continue;
            }
        }
        // `/a/.` and `/a/b/..` end with a slash.
        if i == last {
            kept.push("");
        }
    }
    let mut out = String::with_capacity(path.len());
    for piece in kept {
        out.push('/');
        out.push_str(piece);
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

/// Whether `segment`, split at `%2F`, `%5C` and `\`, has a dot segment.
fn hides_dot_segment(segment: &str) -> bool {
    let normalised = segment
        .replace("%2F", "/")
        .replace("%2f", "/")
        .replace("%5C", "/")
        .replace("%5c", "/")
        .replace('\\', "/");
    normalised.contains('/')
        && normalised
            .split('/')
            .any(|p| self::segment(p) != Segment::Other)
}

/// An upstream request being prepared; credentials and the signature are
/// set on it before it is turned into a [`Request`].
pub struct Outgoing {
    pub method: Method,
    path_and_query: String,
    /// Where the path ends in `path_and_query`.
    query_start: usize,
    pub headers: HeaderMap,
}

impl Outgoing {
    /// Sets a header, replacing any value of that name the app sent.
    pub fn set_header(&mut self, name: &HeaderName, value: &HeaderValue) {
        self.headers.insert(name.clone(), value.clone());
    }

    /// Sets a query parameter, dropping any of that name already present.
    /// `name` is decoded; `pair` is `name=value`, encoded.
    pub fn set_query_param(&mut self, name: &str, pair: &str) {
        let query = &self.path_and_query[self.query_start..];
        let query = query.strip_prefix('?').unwrap_or(query);
        let mut kept = String::with_capacity(query.len() + pair.len() + 1);
        for piece in query.split('&').filter(|p| !p.is_empty()) {
            let same = form_urlencoded::parse(piece.as_bytes())
                .next()
                .is_some_and(|(n, _)| n == name);
            if !same {
                kept.push_str(piece);
                kept.push('&');
            }
        }
        kept.push_str(pair);
        self.path_and_query.truncate(self.query_start);
        self.path_and_query.push('?');
        self.path_and_query.push_str(&kept);
    }

    /// The path and query as they will be sent (tests and debugging).
    pub fn path_and_query(&self) -> &str {
        &self.path_and_query
    }

    /// The request to send, its URI in origin-form (path and query): the
    /// upstream client sends it to the datasource's origin, and nowhere
    /// else. `keep` leaves `self` intact for a retry, at the cost of
    /// copying the headers.
    pub fn request(
        &mut self,
        body: UpstreamBody,
        keep: bool,
    ) -> Result<Request<UpstreamBody>, RequestError> {
        let path_and_query = PathAndQuery::try_from(self.path_and_query.as_str()).map_err(|e| {
            RequestError::BadRequest {
                what: "the request path cannot be forwarded",
                source: e.into(),
            }
        })?;
        let headers = if keep {
            self.headers.clone()
        } else {
            std::mem::take(&mut self.headers)
        };
        let mut request = Request::new(body);
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = Uri::from(path_and_query);
        // HTTP/1.1 here; the upstream client moves to HTTP/2 when ALPN
        // picks it.
        *request.version_mut() = Version::HTTP_11;
        *request.headers_mut() = headers;
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str, extra: &str) -> Target {
        let yaml =
            format!("kind: ApiDatasource\nmetadata: {{name: t}}\nspec:\n  url: {url}\n{extra}");
        let ds = ResolvedDatasource::from_yaml(&yaml).expect("valid");
        Target::new(&ds).expect("target")
    }

    impl Target {
        fn outgoing_ok(&self, app: request::Parts) -> Outgoing {
            self.outgoing(app).expect("forwardable")
        }
    }

    fn parts(uri: &str, headers: &[(&str, &str)]) -> request::Parts {
        let mut b = Request::builder().uri(uri);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).expect("request").into_parts().0
    }

    #[test]
    fn path_is_appended_to_the_url_path() {
        let t = target("https://h/v2", "");
        let o = t.outgoing_ok(parts("/charges/7?x=1", &[]));
        assert_eq!(o.path_and_query(), "/v2/charges/7?x=1");
    }

    #[test]
    fn trailing_slash_of_the_url_is_not_doubled() {
        let t = target("https://h/v2/", "");
        assert_eq!(t.outgoing_ok(parts("/a", &[])).path_and_query(), "/v2/a");
        let root = target("https://h", "");
        assert_eq!(root.outgoing_ok(parts("/a", &[])).path_and_query(), "/a");
    }

    #[test]
    fn default_query_follows_the_apps_own() {
        let t = target(
            "https://h/v2?fixed=1",
            "  queryParameters: [ {name: region, value: eu west} ]\n",
        );
        let o = t.outgoing_ok(parts("/a?x=1", &[]));
        assert_eq!(o.path_and_query(), "/v2/a?x=1&fixed=1&region=eu+west");
        let o = t.outgoing_ok(parts("/a", &[]));
        assert_eq!(o.path_and_query(), "/v2/a?fixed=1&region=eu+west");
    }

    #[test]
    fn query_credential_replaces_the_apps_parameter_of_that_name() {
        let t = target("https://h", "");
        let mut o = t.outgoing_ok(parts("/a?api_key=mine&b=2&api%5Fkey=x", &[]));
        o.set_query_param("api_key", "api_key=real");
        assert_eq!(o.path_and_query(), "/a?b=2&api_key=real");
        let mut o = t.outgoing_ok(parts("/a", &[]));
        o.set_query_param("k", "k=v");
        assert_eq!(o.path_and_query(), "/a?k=v");
    }

    #[test]
    fn default_header_yields_to_the_apps_value() {
        let t = target(
            "https://h",
            "  headers: [ {name: X-Tenant, value: acme}, {name: X-Env, value: prod}, {name: X-Env, value: eu} ]\n",
        );
        let o = t.outgoing_ok(parts(
            "/",
            &[("x-tenant", "app"), ("host", "127.0.0.1:15000")],
        ));
        assert_eq!(o.headers["x-tenant"], "app");
        let envs: Vec<_> = o.headers.get_all("x-env").iter().collect();
        assert_eq!(envs, ["prod", "eu"]);
        assert!(!o.headers.contains_key("host"));
    }

    #[test]
    fn request_carries_the_upstream_uri() {
        let t = target("https://api.example:8443/v2", "");
        let mut o = t.outgoing_ok(parts("/a?b=1", &[]));
        let r = o
            .request(http_body_util::Either::Left(Default::default()), false)
            .expect("request");
        assert_eq!(r.uri(), "/v2/a?b=1");
        assert_eq!(t.origin().1, "api.example:8443");
    }

    #[test]
    fn dot_segments_cannot_climb_above_the_url_path() {
        let t = target("https://h/v2/", "");
        let cases = [
            ("/a/../../etc/passwd", "/v2/etc/passwd"),
            ("/..", "/v2/"),
            ("/../..//x", "/v2//x"),
            ("/%2e%2e/x", "/v2/x"),
            ("/%2E%2E/%2e./.%2E/x", "/v2/x"),
            ("/a/./b/.", "/v2/a/b/"),
            ("/a/%2e/b/%2E%2e", "/v2/a/"),
            ("/a/b/..", "/v2/a/"),
            ("/a//../b", "/v2/a/b"),
            ("/a/...", "/v2/a/..."),
            ("/a/..b/.c", "/v2/a/..b/.c"),
            // Not a drive letter to keep, as the `url` crate keeps it: found
            // by prop_dot_segments_are_removed_as_whatwg_removes_them.
            ("/a:/.%2e", "/v2/"),
            ("/a/%2e%2e%2e", "/v2/a/%2e%2e%2e"),
            ("/file.json", "/v2/file.json"),
            ("/", "/v2/"),
            ("/x?q=../..", "/v2/x?q=../.."),
        ];
        for (app, sent) in cases {
            assert_eq!(
                t.outgoing_ok(parts(app, &[])).path_and_query(),
                sent,
                "{app}"
            );
        }
        let root = target("https://h", "");
        assert_eq!(root.outgoing_ok(parts("/../a", &[])).path_and_query(), "/a");
    }

    #[test]
    fn encoded_slash_stays_encoded_inside_its_segment() {
        let t = target("https://h/v2", "");
        let o = t.outgoing_ok(parts("/projects/group%2Fproject/../x%2fy", &[]));
        assert_eq!(o.path_and_query(), "/v2/projects/x%2fy");
    }

    #[test]
    fn dot_segment_behind_an_encoded_slash_is_refused() {
        let t = target("https://h/v2", "");
        for app in [
            "/a/%2E%2E%2Fb",
            "/a/..%2f..%2fetc",
            "/a/x%2F..",
            "/a/%2e%2e%5cb",
            "/a/.%2Fb",
        ] {
            let refused = t.outgoing(parts(app, &[])).err().expect(app);
            assert_eq!(refused.status(), http::StatusCode::BAD_REQUEST, "{app}");
        }
    }

    #[test]
    fn connect_and_authority_form_are_refused_absolute_form_keeps_the_upstream() {
        let t = target("https://api.example/v2", "");
        let connect = Request::builder()
            .method(Method::CONNECT)
            .uri("evil.example:443")
            .body(())
            .expect("request")
            .into_parts()
            .0;
        let refused = t.outgoing(connect).err().expect("CONNECT refused");
        assert_eq!(refused.status(), http::StatusCode::BAD_REQUEST);
        let refused = t
            .outgoing(parts("evil.example:443", &[]))
            .err()
            .expect("authority-form");
        assert_eq!(refused.status(), http::StatusCode::BAD_REQUEST);
        let mut o = t.outgoing_ok(parts(
            "http://evil.example/x?y=1",
            &[("host", "evil.example")],
        ));
        let r = o
            .request(http_body_util::Either::Left(Default::default()), false)
            .expect("request");
        // Origin-form: the app's scheme and authority are gone; the
        // upstream client sends it to the datasource's origin.
        assert_eq!(r.uri(), "/v2/x?y=1");
        assert_eq!(
            t.origin(),
            (&Scheme::HTTPS, &Authority::from_static("api.example"))
        );
        assert!(!r.headers().contains_key("host"));
    }
}
