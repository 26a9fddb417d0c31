//! Property tests (issue 12): a datasource spec resolves or is refused with
//! a named error, whatever it holds; the resolved spec the operator writes
//! to the ConfigMap reads back (YAML and JSON) as it was written; and every
//! header name and value the resolution accepts is one the sidecar's HTTP
//! stack accepts too. `PROPTEST_CASES` overrides the budget below.

use proptest::prelude::*;
use proptest::test_runner::Config;
use sidekey_crds::{
    ApiDatasource, ApiDatasourceSpec, ApiKey, ApiKeyPlacement, Authentication, AuthenticationType,
    BasicAuth, BearerToken, ClientAuthentication, GrantType, NameValue, OAuth2, ResolvedDatasource,
    SecretRef, Signature, SignatureAlgorithm, SpecError, Tls, TokenPlacement,
};

/// The CI budget: 256 cases a property unless `PROPTEST_CASES` says more.
/// Failures are not persisted to files: each one found is kept as a plain
/// unit test instead.
fn config() -> Config {
    let mut config = Config {
        failure_persistence: None,
        ..Config::default()
    };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 256;
    }
    config
}

/// Every reason a spec can be refused with, as the `Ready` condition says.
const REASONS: [&str; 4] = [
    "InvalidUrl",
    "InvalidAuthentication",
    "InvalidHeader",
    "InvalidFile",
];

fn url() -> BoxedStrategy<String> {
    (
        prop_oneof![Just("http"), Just("https")],
        // No "--" in a label: "xn--" opens a punycode label, and a bare
        // one is an invalid international domain name (CI found "http://xn--").
        "[a-z][a-z0-9]{0,5}(-[a-z0-9]{1,4})?(\\.[a-z]{2,5}){0,2}",
        proptest::option::of(1u16..),
        "(/[A-Za-z0-9._~%!$&'()*+,;=:@-]{0,8}){0,4}/?",
        proptest::option::of("[A-Za-z0-9_]{1,5}=[A-Za-z0-9_]{0,5}"),
    )
        .prop_map(|(scheme, host, port, path, query)| {
            let port = port.map(|p| format!(":{p}")).unwrap_or_default();
            let query = query.map(|q| format!("?{q}")).unwrap_or_default();
            format!("{scheme}://{host}{port}{path}{query}")
        })
        .boxed()
}

/// RFC 9110 token characters.
const TOKEN: &str = "[!#$%&'*+.^_`|~0-9A-Za-z-]";

fn header_name() -> BoxedStrategy<String> {
    proptest::string::string_regex(&format!("{TOKEN}{{1,24}}"))
        .expect("regex")
        .boxed()
}

/// Field values the sidecar can send: no control character but tab.
fn header_value() -> BoxedStrategy<String> {
    "[\\PC\t]{0,24}".boxed()
}

/// Any string: controls, quotes, YAML indicators, non-ASCII.
fn text() -> BoxedStrategy<String> {
    prop_oneof![
        any::<String>(),
        "[ -~]{0,16}",
        Just(String::new()),
        Just("null".to_owned()),
        Just("~".to_owned()),
        Just("- a: b\n#c".to_owned()),
        Just("123".to_owned()),
        Just("true".to_owned()),
        Just(" lead and trail ".to_owned()),
    ]
    .boxed()
}

fn secret_ref() -> BoxedStrategy<SecretRef> {
    ("[a-z0-9][a-z0-9.-]{0,20}", "[A-Za-z0-9._-]{1,20}")
        .prop_map(|(name, key)| SecretRef { name, key })
        .boxed()
}

fn name_values(value: impl Strategy<Value = String> + 'static) -> BoxedStrategy<Vec<NameValue>> {
    proptest::collection::vec(
        (header_name(), value).prop_map(|(name, value)| NameValue { name, value }),
        0..4,
    )
    .boxed()
}

fn signature() -> BoxedStrategy<Signature> {
    (
        secret_ref(),
        header_name(),
        text(),
        1u32..=86400,
        prop_oneof![
            Just(SignatureAlgorithm::Auto),
            Just(SignatureAlgorithm::Hs256),
            Just(SignatureAlgorithm::Hs384),
            Just(SignatureAlgorithm::Hs512),
        ],
    )
        .prop_map(
            |(secret_ref, header_name, issuer, ttl_seconds, algorithm)| Signature {
                secret_ref,
                header_name,
                issuer,
                ttl_seconds,
                algorithm,
            },
        )
        .boxed()
}

fn tls() -> BoxedStrategy<Tls> {
    (proptest::option::of(secret_ref()), any::<bool>())
        .prop_map(|(r, trust)| Tls {
            ca_certificate_secret_ref: r,
            trust_system_roots: trust,
        })
        .boxed()
}

fn oauth2() -> BoxedStrategy<OAuth2> {
    let grants = prop_oneof![
        Just(GrantType::ClientCredentials),
        Just(GrantType::AuthorizationCode)
    ];
    (
        (
            grants,
            url(),
            text(),
            secret_ref(),
            proptest::collection::vec(text(), 0..3),
        ),
        (
            prop_oneof![
                Just(ClientAuthentication::Body),
                Just(ClientAuthentication::BasicHeader)
            ],
            prop_oneof![
                Just(TokenPlacement::Header),
                Just(TokenPlacement::QueryParameter)
            ],
            "[!-~]{0,10}",
            proptest::option::of(text()),
            proptest::option::of(text()),
        ),
        (name_values(text()), url(), url(), any::<bool>(), 1u32..),
    )
        .prop_map(
            |(
                (grant_type, access_token_url, client_id, client_secret_ref, scopes),
                (client_authentication, add_token_to, header_prefix, audience, resource),
                (custom_parameters, authorization_url, redirect_url, send_scope, lifetime),
            )| {
                // Only the authorization-code grant needs (and keeps) them.
                let code = grant_type == GrantType::AuthorizationCode;
                OAuth2 {
                    grant_type,
                    access_token_url,
                    client_id,
                    client_secret_ref,
                    scopes,
                    client_authentication,
                    add_token_to,
                    header_prefix,
                    audience,
                    resource,
                    custom_parameters,
                    authorization_url: code.then_some(authorization_url),
                    redirect_url: code.then_some(redirect_url),
                    send_scope_on_refresh: send_scope,
                    token_lifetime_seconds: lifetime,
                }
            },
        )
        .boxed()
}

/// One authentication type with its own block and no other.
fn authentication() -> BoxedStrategy<Authentication> {
    let none = Just(Authentication::default());
    let basic = (text(), secret_ref()).prop_map(|(username, r)| Authentication {
        type_: AuthenticationType::Basic,
        basic: Some(BasicAuth {
            username,
            password_secret_ref: r,
        }),
        ..Default::default()
    });
    let api_key = (
        header_name(),
        secret_ref(),
        proptest::option::of("[!-~]{0,10}"),
        prop_oneof![
            Just(ApiKeyPlacement::Header),
            Just(ApiKeyPlacement::QueryParameter)
        ],
    )
        .prop_map(|(key, r, prefix, add_to)| Authentication {
            type_: AuthenticationType::ApiKey,
            api_key: Some(ApiKey {
                key,
                value_secret_ref: r,
                prefix,
                add_to,
            }),
            ..Default::default()
        });
    let bearer = secret_ref().prop_map(|r| Authentication {
        type_: AuthenticationType::BearerToken,
        bearer_token: Some(BearerToken {
            token_secret_ref: r,
        }),
        ..Default::default()
    });
    let oauth2 = oauth2().prop_map(|o| Authentication {
        type_: AuthenticationType::OAuth2,
        oauth2: Some(o),
        ..Default::default()
    });
    prop_oneof![none, basic, api_key, bearer, oauth2].boxed()
}

/// A spec the operator accepts.
fn valid_spec() -> BoxedStrategy<ApiDatasourceSpec> {
    (
        url(),
        name_values(header_value()),
        name_values(text()),
        proptest::option::of(signature()),
        proptest::option::of(tls()),
        authentication(),
    )
        .prop_map(
            |(url, headers, query_parameters, signature, tls, authentication)| ApiDatasourceSpec {
                url,
                headers,
                query_parameters,
                signature,
                tls,
                authentication,
            },
        )
        .boxed()
}

/// Anything a manifest can hold: near-valid and invalid strings in the
/// checked fields, any type with any set of blocks.
fn any_spec() -> BoxedStrategy<ApiDatasourceSpec> {
    let any_url = || prop_oneof![url(), text(), "[a-z+]{0,6}://[ -~]{0,20}"];
    let any_name = || prop_oneof![header_name(), text()];
    let any_name_values = || {
        proptest::collection::vec(
            (any_name(), text()).prop_map(|(name, value)| NameValue { name, value }),
            0..3,
        )
    };
    let types = prop_oneof![
        Just(AuthenticationType::None),
        Just(AuthenticationType::Basic),
        Just(AuthenticationType::OAuth2),
        Just(AuthenticationType::ApiKey),
        Just(AuthenticationType::BearerToken),
    ];
    let blocks = (
        types,
        proptest::option::of(authentication()),
        proptest::option::of(authentication()),
        proptest::option::of((any_name(), text())),
        proptest::option::of((any_url(), any_url(), any_url())),
    )
        .prop_map(|(type_, a, b, key_and_prefix, urls)| {
            // Blocks of two generated authentications, under a third type.
            let mut auth = a.unwrap_or_default();
            if let Some(b) = b {
                auth.basic = auth.basic.or(b.basic);
                auth.oauth2 = auth.oauth2.or(b.oauth2);
                auth.api_key = auth.api_key.or(b.api_key);
                auth.bearer_token = auth.bearer_token.or(b.bearer_token);
            }
            auth.type_ = type_;
            if let (Some(k), Some((key, prefix))) = (&mut auth.api_key, key_and_prefix.clone()) {
                k.key = key;
                k.prefix = Some(prefix);
            }
            if let (Some(o), Some((token, authorize, redirect))) = (&mut auth.oauth2, urls) {
                o.access_token_url = token;
                o.authorization_url = Some(authorize);
                o.redirect_url = Some(redirect);
                if let Some((_, prefix)) = key_and_prefix {
                    o.header_prefix = prefix;
                }
            }
            auth
        });
    (
        any_url(),
        any_name_values(),
        any_name_values(),
        proptest::option::of((signature(), any_name())),
        proptest::option::of(tls()),
        blocks,
    )
        .prop_map(
            |(url, headers, query_parameters, signature, tls, authentication)| ApiDatasourceSpec {
                url,
                headers,
                query_parameters,
                signature: signature.map(|(s, header_name)| Signature { header_name, ..s }),
                tls,
                authentication,
            },
        )
        .boxed()
}

fn manifest(spec: &ApiDatasourceSpec, name: &str, namespace: Option<&str>) -> String {
    let mut ds = ApiDatasource::new(name, spec.clone());
    ds.metadata.namespace = namespace.map(str::to_owned);
    serde_saphyr::to_string(&ds).expect("a manifest serializes")
}

/// Every header name and value the resolved spec will send, with the
/// field it comes from; prefixes are checked as the sidecar writes them,
/// `<prefix> <secret>`.
fn header_fields(r: &ResolvedDatasource) -> (Vec<String>, Vec<String>) {
    use sidekey_crds::ResolvedAuthentication as A;
    let mut names: Vec<String> = r.headers.iter().map(|h| h.name.clone()).collect();
    let mut values: Vec<String> = r.headers.iter().map(|h| h.value.clone()).collect();
    if let Some(s) = &r.signature {
        names.push(s.header_name.clone());
    }
    match &r.authentication {
        A::ApiKey {
            key,
            prefix,
            add_to: ApiKeyPlacement::Header,
            ..
        } => {
            names.push(key.clone());
            values.extend(prefix.as_ref().map(|p| format!("{p} secret")));
        }
        A::OAuth2(o) if o.add_token_to == TokenPlacement::Header => {
            values.push(format!("{} token", o.header_prefix));
        }
        _ => {}
    }
    (names, values)
}

proptest! {
    #![proptest_config(config())]

    /// The resolved spec the operator writes reads back identical, as YAML
    /// (the ConfigMap) and as JSON.
    #[test]
    fn prop_resolved_spec_round_trips(
        spec in valid_spec(),
        name in "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?",
        namespace in proptest::option::of("[a-z0-9]{1,10}"),
    ) {
        let resolved = spec.resolve(&name, namespace.as_deref());
        let resolved = resolved.map_err(|e| TestCaseError::fail(format!("refused: {e}")))?;
        let yaml = resolved.to_yaml();
        let again = ResolvedDatasource::from_yaml(&yaml)
            .map_err(|e| TestCaseError::fail(format!("{e}\n{yaml}")))?;
        prop_assert_eq!(&again, &resolved, "{}", yaml);
        let json = serde_json::to_string(&resolved).expect("JSON");
        let again: ResolvedDatasource = serde_json::from_str(&json).expect("JSON reads back");
        prop_assert_eq!(&again, &resolved);
        // The JSON form is also a datasource file the sidecar reads.
        prop_assert_eq!(&ResolvedDatasource::from_yaml(&json).expect("JSON file"), &resolved);
    }

    /// A manifest written out and read back resolves as the spec does.
    #[test]
    fn prop_manifest_round_trips_to_the_same_resolved_spec(
        spec in valid_spec(),
        namespace in proptest::option::of("[a-z0-9]{1,10}"),
    ) {
        let direct = spec.resolve("ds", namespace.as_deref()).expect("valid spec");
        let text = manifest(&spec, "ds", namespace.as_deref());
        let read = ResolvedDatasource::from_yaml(&text)
            .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(read, direct, "{}", text);
    }

    /// Any spec resolves or is refused with one of the named reasons, and
    /// a refusal names the field at fault. Accepted specs round-trip.
    #[test]
    fn prop_any_spec_resolves_or_is_refused_by_name(spec in any_spec()) {
        match spec.resolve("ds", Some("ns")) {
            Ok(resolved) => {
                let again = ResolvedDatasource::from_yaml(&resolved.to_yaml());
                prop_assert_eq!(again.as_ref(), Ok(&resolved));
            }
            Err(e) => {
                prop_assert!(REASONS.contains(&e.reason()), "{:?}", e);
                prop_assert!(e.to_string().contains("spec."), "no field named: {}", e);
            }
        }
    }

    /// Any text as a datasource file: parsed or refused, never a panic.
    #[test]
    fn prop_any_datasource_file_is_parsed_or_refused(
        text in prop_oneof![
            any::<String>(),
            "(kind: (ApiDatasource|ResolvedApiDatasource|[a-z]{0,4})\n)?([a-zA-Z]{1,8}: [ -~]{0,12}\n){0,6}",
        ]
    ) {
        if let Err(e) = ResolvedDatasource::from_yaml(&text) {
            prop_assert!(REASONS.contains(&e.reason()), "{:?}", e);
        }
    }

    /// Header names and values: what resolution accepts, `http` accepts;
    /// what it refuses is `InvalidHeader` naming the field.
    #[test]
    fn prop_accepted_header_names_and_values_are_valid_http(
        name in prop_oneof![
            4 => header_name(),
            4 => any::<String>(),
            4 => "[ -~]{0,12}",
            // Past http's longest name (64 KiB - 1).
            1 => (65530usize..65540).prop_map(|n| "x".repeat(n)),
        ],
        value in prop_oneof![header_value(), any::<String>(), "[\\x00-\\x7f]{0,8}"],
        prefix in prop_oneof![Just(None), proptest::option::of(any::<String>())],
        in_api_key in any::<bool>(),
    ) {
        let mut spec = ApiDatasourceSpec {
            url: "https://h".into(),
            headers: vec![NameValue { name: name.clone(), value: value.clone() }],
            query_parameters: vec![],
            signature: None,
            tls: None,
            authentication: Authentication::default(),
        };
        if in_api_key {
            spec.headers[0].name = "x".into();
            spec.authentication = Authentication {
                type_: AuthenticationType::ApiKey,
                api_key: Some(ApiKey {
                    key: name.clone(),
                    value_secret_ref: SecretRef { name: "s".into(), key: "k".into() },
                    prefix,
                    add_to: ApiKeyPlacement::Header,
                }),
                ..Default::default()
            };
        }
        match spec.resolve("ds", None) {
            Ok(resolved) => {
                let (names, values) = header_fields(&resolved);
                for n in names {
                    prop_assert!(http::HeaderName::from_bytes(n.as_bytes()).is_ok(), "name {:?}", n);
                }
                for v in values {
                    prop_assert!(http::HeaderValue::from_str(&v).is_ok(), "value {:?}", v);
                }
            }
            Err(e) => {
                prop_assert!(
                    matches!(e, SpecError::InvalidHeaderName { .. } | SpecError::InvalidHeaderValue { .. }),
                    "{:?}", e
                );
                prop_assert_eq!(e.reason(), "InvalidHeader");
            }
        }
    }
}
