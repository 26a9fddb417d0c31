//! Property tests (issue 12) of what the sidecar makes of the app's request
//! target: the path joined to the datasource's base path can never climb
//! above it, dot segments go as RFC 3986 and WHATWG remove them, `%2F`
//! stays encoded, a credential query parameter the app sets never
//! survives, and every datasource the operator accepts gives a target the
//! sidecar can build requests for. `PROPTEST_CASES` overrides the budget.

use http::Request;
use http::request::Parts;
use proptest::prelude::*;
use proptest::test_runner::Config;
use sidekey_crds::{
    ApiDatasourceSpec, NameValue, ResolvedAuthentication, ResolvedDatasource, ResolvedTls,
};
use sidekey_sidecar::outgoing::{Outgoing, Target};
use url::form_urlencoded;

/// 512 cases a property in CI. Failures are not persisted to files: each
/// one found becomes a plain unit test instead.
fn config() -> Config {
    Config {
        cases: sidekey_tests::proptest_cases(512),
        failure_persistence: None,
        ..Config::default()
    }
}

fn datasource(url: &str, query_parameters: Vec<NameValue>) -> ResolvedDatasource {
    ResolvedDatasource {
        api_version: "sidekey.dev/v1alpha1".into(),
        kind: "ResolvedApiDatasource".into(),
        name: "t".into(),
        namespace: None,
        url: url.into(),
        headers: vec![],
        query_parameters,
        signature: None,
        tls: ResolvedTls {
            ca_certificate: None,
            trust_system_roots: true,
        },
        authentication: ResolvedAuthentication::None,
    }
}

fn target(url: &str) -> Target {
    Target::new(&datasource(url, vec![])).expect("target")
}

fn parts(uri: &str) -> Parts {
    Request::builder()
        .uri(uri)
        .body(())
        .expect("a request target http accepts")
        .into_parts()
        .0
}

fn body() -> sidekey_sidecar::upstream::UpstreamBody {
    http_body_util::Either::Left(Default::default())
}

/// Pieces of paths: dot segments in every spelling, near misses, encoded
/// separators (`%2F`, `%5C`, `\`), plain names.
fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop_oneof![
            Just("."), Just(".."), Just("%2e"), Just("%2E"), Just(".%2e"), Just("%2E."),
            Just("%2e%2E"), Just("..."), Just("..a"), Just(".a"), Just("%2e%2e%2e"),
        ].prop_map(str::to_owned),
        2 => prop_oneof![
            Just("%2F"), Just("%2f"), Just("x%2Fy"), Just("..%2F"), Just("%2f.."),
            Just("%5C"), Just("%5c.."), Just("\\"), Just("a\\..")
        ].prop_map(str::to_owned),
        1 => Just(String::new()),
        4 => "[a-zA-Z0-9_~!$&'()*+,;=:@-]{1,4}",
        1 => "[a-z]{0,2}(%[0-9A-F]{2}){1,2}",
    ]
}

fn pieces(separators: bool) -> impl Strategy<Value = String> {
    let piece = piece();
    let piece = if separators {
        piece.boxed()
    } else {
        piece
            .prop_filter("no encoded separator", |p| {
                let l = p.to_ascii_lowercase();
                !(l.contains("%2f") || l.contains("%5c") || l.contains('\\'))
            })
            .boxed()
    };
    proptest::collection::vec(piece, 0..8).prop_map(|p| format!("/{}", p.join("/")))
}

fn base_url() -> impl Strategy<Value = String> {
    (
        "(/[a-z0-9]{1,4}){0,3}/?",
        proptest::option::of("[a-z]{1,3}=[a-z0-9]{0,3}"),
    )
        .prop_map(|(path, query)| match query {
            Some(q) => format!("https://h{path}?{q}"),
            None => format!("https://h{path}"),
        })
}

/// Whether a segment is `.` or `..`, `%2e` read as a dot.
fn is_dot_segment(segment: &str) -> bool {
    let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
    decoded == "." || decoded == ".."
}

/// Whether a segment holds a dot segment once `%2F`, `%5C` and `\` are
/// read as separators, as some upstream servers read them.
fn hides_dot_segment(segment: &str) -> bool {
    let l = segment.to_ascii_lowercase();
    let split = l.replace("%2f", "/").replace("%5c", "/").replace('\\', "/");
    split.contains('/') && split.split('/').any(is_dot_segment)
}

fn path_of(outgoing: &Outgoing) -> &str {
    let pq = outgoing.path_and_query();
    pq.split_once('?').map_or(pq, |(p, _)| p)
}

/// `sub` is `full` with some elements left out, the order kept.
fn is_subsequence(sub: &[&str], full: &[&str]) -> bool {
    let mut full = full.iter();
    sub.iter().all(|s| full.any(|f| f == s))
}

proptest! {
    #![proptest_config(config())]

    /// The forwarded path starts with the base path, holds no dot segment
    /// after it, and its segments are the app's own, kept verbatim (so
    /// `%2F` stays encoded) and in order. Refused only when a segment hides
    /// a dot segment behind an encoded separator, and then with a 400.
    #[test]
    fn prop_joined_path_never_climbs_above_the_base_path(
        base in base_url(),
        app in pieces(true),
        query in proptest::option::of("[a-z0-9=&./%]{0,8}"),
    ) {
        let t = target(&base);
        let base_path = url::Url::parse(&base).expect("url").path().trim_end_matches('/').to_owned();
        let uri = match &query { Some(q) => format!("{app}?{q}"), None => app.clone() };
        let app_segments: Vec<&str> = app[1..].split('/').collect();
        match t.outgoing(parts(&uri)) {
            Ok(o) => {
                let path = path_of(&o);
                let rest = path.strip_prefix(base_path.as_str()).filter(|r| r.starts_with('/'));
                let rest = rest.ok_or_else(|| TestCaseError::fail(format!("{path} is not under {base_path}/")))?;
                let segments: Vec<&str> = rest[1..].split('/').collect();
                prop_assert!(!segments.iter().any(|s| is_dot_segment(s)), "{} -> {}", app, path);
                let (last, init) = segments.split_last().expect("one segment at least");
                // A path ending in a dot segment ends with `/`: that empty
                // last segment is the only one the app did not write.
                let kept = if last.is_empty() { init } else { &segments[..] };
                prop_assert!(is_subsequence(kept, &app_segments), "{} -> {}", app, path);
                prop_assert!(!app_segments.iter().any(|s| hides_dot_segment(s)), "{} forwarded", app);
            }
            Err(e) => {
                prop_assert_eq!(e.status(), http::StatusCode::BAD_REQUEST);
                prop_assert!(app_segments.iter().any(|s| hides_dot_segment(s)), "{} refused: {}", app, e);
            }
        }
    }

    /// Without encoded separators the result is what RFC 3986 section
    /// 5.2.4 and WHATWG (the `url` crate, which also reads `%2e` as a dot)
    /// make of the path, under the base path.
    #[test]
    fn prop_dot_segments_are_removed_as_whatwg_removes_them(
        base in base_url(),
        app in pieces(false),
    ) {
        // The `url` crate never pops a segment like `a:` (a Windows drive
        // letter, which WHATWG keeps for file: URLs only); RFC 3986 does.
        prop_assume!(!app.split('/').any(|s| {
            let b = s.as_bytes();
            b.len() == 2 && b[0].is_ascii_alphabetic() && (b[1] == b':' || b[1] == b'|')
        }));
        let t = target(&base);
        let base_path = url::Url::parse(&base).expect("url").path().trim_end_matches('/').to_owned();
        let o = t.outgoing(parts(&app)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let whatwg = url::Url::parse(&format!("http://x{app}")).expect("url");
        prop_assert_eq!(path_of(&o), format!("{base_path}{}", whatwg.path()), "{}", app);
    }

    /// Normalising a normalised path changes nothing.
    #[test]
    fn prop_dot_segment_removal_is_idempotent(app in pieces(true)) {
        let root = target("https://h");
        if let Ok(once) = root.outgoing(parts(&app)) {
            let twice = root.outgoing(parts(path_of(&once))).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(path_of(&twice), path_of(&once));
        }
    }

    /// Whatever is forwarded becomes a request with the same target, in
    /// origin-form: nothing of the app's scheme or host, whatever it sent;
    /// the datasource's host is where the upstream client sends it.
    #[test]
    fn prop_forwarded_request_always_builds(
        base in base_url(),
        app in pieces(true),
        query in proptest::option::of("[!-~&&[^#]]{0,12}"),
        defaults in proptest::collection::vec(("[ -~]{1,4}", any::<String>()), 0..3),
    ) {
        let defaults = defaults.into_iter().map(|(name, value)| NameValue { name, value }).collect();
        let t = Target::new(&datasource(&base, defaults)).expect("target");
        let uri = match &query { Some(q) => format!("{app}?{q}"), None => app.clone() };
        let Ok(app_parts) = Request::builder().uri(&uri).body(()) else {
            return Err(TestCaseError::reject("http refuses the target"));
        };
        if let Ok(mut o) = t.outgoing(app_parts.into_parts().0) {
            let sent = o.path_and_query().to_owned();
            let r = o.request(body(), false).map_err(|e| TestCaseError::fail(format!("{sent}: {e}")))?;
            prop_assert_eq!(t.origin().1.as_str(), "h");
            prop_assert!(r.uri().scheme().is_none() && r.uri().authority().is_none(), "{}", r.uri());
            prop_assert_eq!(r.uri().path_and_query().map(|p| p.as_str()), Some(sent.as_str()));
        }
    }

    /// The credential parameter replaces every parameter of its name the
    /// app or the datasource sent, however encoded; the others stay, in
    /// order, and the request still builds.
    #[test]
    fn prop_app_credential_query_parameter_never_survives(
        name in prop_oneof!["[a-z_]{1,4}", Just("api_key".to_owned()), Just("a b".to_owned())],
        app_pairs in proptest::collection::vec(
            prop_oneof![
                Just("api_key".to_owned()), Just("api%5Fkey".to_owned()), Just("api%5fkey".to_owned()),
                Just("a+b".to_owned()), Just("a%20b".to_owned()), "[a-z_]{0,4}",
            ].prop_flat_map(|n| (Just(n), proptest::option::of("[a-z0-9%+=]{0,4}"))),
            0..6,
        ),
        defaults in proptest::collection::vec(prop_oneof![Just("api_key".to_owned()), "[a-z_ ]{1,4}"], 0..3),
        secret in "[ -~]{0,8}",
    ) {
        let query = app_pairs.iter()
            .map(|(n, v)| match v { Some(v) => format!("{n}={v}"), None => n.clone() })
            .collect::<Vec<_>>()
            .join("&");
        let defaults: Vec<NameValue> = defaults.into_iter()
            .map(|name| NameValue { name, value: "d".into() })
            .collect();
        let t = Target::new(&datasource("https://h/v2", defaults)).expect("target");
        let uri = if query.is_empty() { "/a".to_owned() } else { format!("/a?{query}") };
        let mut o = t.outgoing(parts(&uri)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let before: Vec<(String, String)> = o.path_and_query().split_once('?')
            .map(|(_, q)| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        let pair = form_urlencoded::Serializer::new(String::new()).append_pair(&name, &secret).finish();
        o.set_query_param(&name, &pair);
        let (_, q) = o.path_and_query().split_once('?').expect("a query");
        let after: Vec<(String, String)> = form_urlencoded::parse(q.as_bytes()).into_owned().collect();
        let mut expected: Vec<(String, String)> = before.into_iter().filter(|(n, _)| *n != name).collect();
        expected.push((name.clone(), secret.clone()));
        prop_assert_eq!(&after, &expected, "{}", o.path_and_query());
        prop_assert!(o.request(body(), true).is_ok());
    }

    /// Every URL and default header the operator accepts gives a target
    /// the sidecar builds, and its requests build.
    #[test]
    fn prop_datasource_the_operator_accepts_builds_a_target(
        url in prop_oneof![
            (
                prop_oneof![Just("http"), Just("https"), Just("HTTPS")],
                prop_oneof![
                    "[a-zA-Z0-9!$&'()*+,;=_~`{}|^\"%.-]{1,10}",
                    "[0-9]{1,3}(\\.[0-9]{1,3}){3}",
                    Just("[::1]".to_owned()),
                    Just("xn--nxasmq6b".to_owned()),
                    Just("bücher.example".to_owned()),
                ],
                proptest::option::of(any::<u16>()),
                "(/[!-~&&[^?#]]{0,5}){0,3}",
                proptest::option::of("[!-~&&[^#]]{0,8}"),
            ).prop_map(|(s, h, port, path, q)| {
                let port = port.map(|p| format!(":{p}")).unwrap_or_default();
                let q = q.map(|q| format!("?{q}")).unwrap_or_default();
                format!("{s}://{h}{port}{path}{q}")
            }),
            "https?://[ -~]{1,20}",
        ],
        headers in proptest::collection::vec(("[!-~]{1,6}", "[ -~\\t\u{80}-\u{10ffff}]{0,6}"), 0..3),
    ) {
        let spec = ApiDatasourceSpec {
            url,
            headers: headers.into_iter().map(|(name, value)| NameValue { name, value }).collect(),
            query_parameters: vec![],
            signature: None,
            tls: None,
            authentication: Default::default(),
        };
        // About a third is accepted; the rest is the operator's to refuse
        // (the crds properties check how).
        let Ok(resolved) = spec.resolve("t", None) else {
            return Ok(());
        };
        let t = Target::new(&resolved).map_err(|e| TestCaseError::fail(format!("{}: {e:?}", resolved.url)))?;
        let mut o = t.outgoing(parts("/x")).map_err(|e| TestCaseError::fail(e.to_string()))?;
        o.request(body(), false).map_err(|e| TestCaseError::fail(format!("{}: {e}", resolved.url)))?;
    }
}
