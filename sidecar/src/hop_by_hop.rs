//! Hop-by-hop headers (RFC 9110 section 7.6.1) describe one connection and
//! must not be forwarded, in either direction. One exception: a request's
//! `TE: trailers`, which says the client accepts trailer fields, an
//! end-to-end matter (gRPC needs it: its servers and the proxies on the way
//! use it to tell that trailers, and with them the call's status, get
//! through).

use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const TRAILERS: HeaderValue = HeaderValue::from_static("trailers");

const ALWAYS: [HeaderName; 10] = [
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    // hyper already answered the app's `Expect: 100-continue`.
    header::EXPECT,
    KEEP_ALIVE,
    PROXY_CONNECTION,
];

/// Whether `name` is in [`ALWAYS`], by comparisons the compiler can fold:
/// `ALWAYS.contains` would build and drop the array for each header
/// (measured: seven times a request), a static array compares slower.
fn is_always(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::PROXY_AUTHENTICATE
        || name == header::PROXY_AUTHORIZATION
        || name == header::TE
        || name == header::TRAILER
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == header::EXPECT
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

/// Removes from a request's headers the standard hop-by-hop headers and
/// those the `Connection` header names, but keeps `TE: trailers`.
pub fn strip(headers: &mut HeaderMap) {
    strip_hops(headers, true);
}

/// Removes from a response's headers the standard hop-by-hop headers and
/// those the `Connection` header names.
pub fn strip_response(headers: &mut HeaderMap) {
    strip_hops(headers, false);
}

fn strip_hops(headers: &mut HeaderMap, request: bool) {
    // One pass over the few headers present instead of a lookup per
    // hop-by-hop name: most requests carry none of them, and a gRPC
    // request over HTTP/2 carries only `te: trailers`. A header named by
    // `Connection` implies `Connection` itself, which is in `ALWAYS`.
    {
        let mut hops = headers.keys().filter(|name| is_always(name));
        match (hops.next(), hops.next()) {
            (None, _) => return,
            (Some(name), None) if request && name == header::TE && only_trailers(headers) => {
                return;
            }
            // `Connection: keep-alive` (or `close`), which nginx sends on
            // every response: it names no header but the absent
            // `Keep-Alive`, so removing it is all there is to do.
            (Some(name), None) if name == header::CONNECTION && names_no_header(headers) => {
                headers.remove(header::CONNECTION);
                return;
            }
            _ => {}
        }
    }
    let keep_trailers = request && accepts_trailers(headers);
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in ALWAYS {
        headers.remove(name);
    }
    if keep_trailers {
        // Only `trailers` goes on: HTTP/2 allows no other TE value (RFC
        // 9113 section 8.2.2), and transfer codings such as `gzip` are
        // between the app and the sidecar, whose upstream connection
        // decodes none but chunked. The app's `trailers` still holds: the
        // sidecar passes the upstream's trailers on.
        headers.insert(header::TE, TRAILERS);
    }
}

/// Whether every `Connection` token is `keep-alive` or `close`.
fn names_no_header(headers: &HeaderMap) -> bool {
    headers.get_all(header::CONNECTION).iter().all(|v| {
        v.as_bytes().split(|&b| b == b',').all(|token| {
            let token = token.trim_ascii();
            token.eq_ignore_ascii_case(b"keep-alive") || token.eq_ignore_ascii_case(b"close")
        })
    })
}

/// Whether the TE header is exactly one `trailers`, ready to go on as is.
fn only_trailers(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(header::TE).iter();
    values.next().is_some_and(|v| v == "trailers") && values.next().is_none()
}

/// Whether the TE header lists `trailers` among its members.
fn accepts_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|member| member.trim().eq_ignore_ascii_case("trailers"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_always_is_membership_in_always() {
        for name in ALWAYS {
            assert!(is_always(&name), "{name}");
        }
        for name in [
            "host",
            "authorization",
            "x-keep-alive",
            "content-length",
            "te-x",
        ] {
            let name = HeaderName::from_static(name);
            assert!(!is_always(&name), "{name}");
        }
    }

    #[test]
    fn connection_named_and_standard_headers_go_others_stay() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, X-Secret-Hop".parse().expect("v"));
        h.insert("x-secret-hop", "1".parse().expect("v"));
        h.insert("keep-alive", "timeout=5".parse().expect("v"));
        h.insert("transfer-encoding", "chunked".parse().expect("v"));
        h.insert("x-kept", "yes".parse().expect("v"));
        strip(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn connection_keep_alive_or_close_alone_goes_and_nothing_else() {
        for value in ["keep-alive", "Keep-Alive", "close", "keep-alive, close"] {
            let mut h = HeaderMap::new();
            h.insert(header::CONNECTION, HeaderValue::from_static(value));
            h.insert("x-app", HeaderValue::from_static("1"));
            strip_response(&mut h);
            assert!(!h.contains_key(header::CONNECTION), "{value}");
            assert_eq!(h.len(), 1, "{value}");
        }
        // A token naming a present header still removes it.
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-hop"),
        );
        h.insert("x-hop", HeaderValue::from_static("1"));
        strip_response(&mut h);
        assert!(h.is_empty(), "{h:?}");
    }

    #[test]
    fn lone_keep_alive_and_proxy_connection_go() {
        let mut h = HeaderMap::new();
        h.insert("keep-alive", "timeout=5".parse().expect("v"));
        h.insert("proxy-connection", "close".parse().expect("v"));
        h.insert("x-kept", "yes".parse().expect("v"));
        strip(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    fn te(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::TE, v.parse().expect("v"));
        }
        h.insert("x-kept", "yes".parse().expect("v"));
        h
    }

    fn te_values(h: &HeaderMap) -> Vec<&str> {
        h.get_all(header::TE)
            .iter()
            .map(|v| v.to_str().expect("ascii"))
            .collect()
    }

    #[test]
    fn te_trailers_stays_on_a_request() {
        let mut h = te(&["trailers"]);
        strip(&mut h);
        assert_eq!(te_values(&h), ["trailers"]);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn te_goes_from_a_request_without_trailers_and_from_any_response() {
        type Strip = fn(&mut HeaderMap);
        let cases: [(&[&str], Strip); 2] = [(&["gzip"], strip), (&["trailers"], strip_response)];
        for (values, strip) in cases {
            let mut h = te(values);
            strip(&mut h);
            assert!(te_values(&h).is_empty(), "{h:?}");
            assert!(h.contains_key("x-kept"));
        }
    }

    #[test]
    fn te_with_trailers_and_codings_is_reduced_to_trailers() {
        for values in [
            &["trailers, gzip"][..],
            &["gzip;q=0.5, Trailers"],
            &["gzip", "trailers"],
        ] {
            let mut h = te(values);
            strip(&mut h);
            assert_eq!(te_values(&h), ["trailers"], "{values:?}");
        }
    }

    #[test]
    fn te_trailers_stays_beside_other_hop_by_hop_headers_even_when_connection_names_it() {
        // What an HTTP/1.1 client sends: TE is a connection option.
        let mut h = te(&["trailers"]);
        h.insert("connection", "TE, x-hop".parse().expect("v"));
        h.insert("x-hop", "1".parse().expect("v"));
        h.insert("transfer-encoding", "chunked".parse().expect("v"));
        strip(&mut h);
        assert_eq!(te_values(&h), ["trailers"]);
        assert_eq!(h.len(), 2, "{h:?}");
    }
}
