//! Property tests (issue 12) of what the operator reads from a pod and from
//! a Secret: the `sidekey.dev/datasources` annotation assigns each
//! datasource a usable port or is refused with a named reason, and a CA
//! bundle the operator accepts is one the sidecar's TLS stack accepts,
//! holding the certificates counted. `PROPTEST_CASES` overrides the
//! budget below.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use proptest::prelude::*;
use proptest::test_runner::Config;
use sidekey_crds::{SecretFile, SecretValue, names};
use sidekey_oauth::tls::{CaBundle, client_config};
use sidekey_operator::validate::count_certificates;
use sidekey_operator::webhook::annotation::assign;

/// 512 cases a property in CI. Failures are not persisted to files: each
/// one found becomes a plain unit test instead.
fn config() -> Config {
    Config {
        cases: sidekey_tests::proptest_cases(512),
        failure_persistence: None,
        ..Config::default()
    }
}

/// Every reason `assign` may refuse with: a refusal outside this list is
/// a failure of the property.
const ANNOTATION_REASONS: &[&str] = &[
    "MalformedAnnotation",
    "InvalidPort",
    "DuplicateDatasource",
    "DuplicateEnvName",
    "DuplicatePort",
    "PortInUse",
    "ReservedPort",
    "NoFreePort",
];

fn entry() -> impl Strategy<Value = String> {
    let name = prop_oneof![
        4 => "[a-z][a-z0-9-]{0,6}[a-z0-9]",
        1 => "[a-z]\\.[a-z]",
        1 => "[a-z]-[a-z]",
        1 => "[A-Za-z0-9_. -]{0,5}",
        1 => "\\PC{0,4}",
    ];
    let port = prop_oneof![
        2 => Just(None),
        2 => (1024u32..1100).prop_map(|p| Some(p.to_string())),
        2 => (14998u32..15095).prop_map(|p| Some(p.to_string())),
        1 => any::<u32>().prop_map(|p| Some(p.to_string())),
        1 => "[0-9a-z +-]{0,6}".prop_map(Some),
    ];
    (name, port, "[ ]{0,2}").prop_map(|(name, port, pad)| match port {
        Some(p) => format!("{pad}{name}{pad}:{pad}{p}"),
        None => format!("{pad}{name}"),
    })
}

fn annotation() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => proptest::collection::vec(entry(), 0..6).prop_map(|e| e.join(",")),
        1 => "\\PC{0,30}",
        1 => "[a-z0-9:, ]{0,30}",
    ]
}

/// Ports the pod's containers declare.
fn taken() -> impl Strategy<Value = BTreeMap<u16, String>> {
    proptest::collection::btree_map(
        prop_oneof![14998u16..15010, 1024u16..1030, any::<u16>()],
        "[a-z]{1,5}",
        0..6,
    )
}

/// A few real CA certificates, made once.
fn certificates() -> &'static [String] {
    static CERTS: OnceLock<Vec<String>> = OnceLock::new();
    CERTS.get_or_init(|| {
        (0..3)
            .map(|i| {
                let key = rcgen::KeyPair::generate().expect("key");
                let mut params =
                    rcgen::CertificateParams::new(vec![format!("ca{i}.test")]).expect("params");
                params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
                params.self_signed(&key).expect("cert").pem()
            })
            .collect()
    })
}

/// A piece of a PEM bundle, and how many good certificates it holds
/// (`None`: it spoils the bundle).
#[derive(Clone, Debug)]
enum Piece {
    Certificate(usize),
    /// A certificate with one base64 character changed.
    Corrupted(usize, usize),
    /// A certificate cut short (no END line).
    Truncated(usize),
    PrivateKey,
    Text(String),
    Bytes(Vec<u8>),
}

fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        4 => (0usize..3).prop_map(Piece::Certificate),
        1 => (0usize..3, any::<usize>()).prop_map(|(c, at)| Piece::Corrupted(c, at)),
        1 => (0usize..3).prop_map(Piece::Truncated),
        1 => Just(Piece::PrivateKey),
        3 => "[ -~\n]{0,40}".prop_map(Piece::Text),
        1 => proptest::collection::vec(any::<u8>(), 0..40).prop_map(Piece::Bytes),
    ]
}

fn render(pieces: &[Piece]) -> Vec<u8> {
    let certs = certificates();
    let mut out = Vec::new();
    for p in pieces {
        match p {
            Piece::Certificate(i) => out.extend_from_slice(certs[*i].as_bytes()),
            Piece::Corrupted(i, at) => {
                let pem = certs[*i].as_bytes();
                let mut bytes = pem.to_vec();
                // A character of the base64 body, between the two lines.
                let start = pem.iter().position(|&b| b == b'\n').expect("BEGIN") + 1;
                let end = pem.len() - "-----END CERTIFICATE-----\n".len();
                let at = start + at % (end - start);
                bytes[at] = if bytes[at] == b'A' { b'#' } else { b'A' };
                out.extend_from_slice(&bytes);
            }
            Piece::Truncated(i) => {
                let pem = &certs[*i];
                out.extend_from_slice(&pem.as_bytes()[..pem.len() / 2]);
            }
            Piece::PrivateKey => out.extend_from_slice(
                rcgen::KeyPair::generate()
                    .expect("key")
                    .serialize_pem()
                    .as_bytes(),
            ),
            Piece::Text(t) => out.extend_from_slice(t.as_bytes()),
            Piece::Bytes(b) => out.extend_from_slice(b),
        }
        out.push(b'\n');
    }
    out
}

proptest! {
    #![proptest_config(config())]

    /// Whatever the annotation and the pod's ports: each datasource named
    /// once, in order, on a port of its own that is unprivileged, not the
    /// admin port and not a port of the pod, the port it asked for if it
    /// asked; or a refusal with one of the named reasons.
    #[test]
    fn prop_annotation_assigns_usable_ports_or_is_refused_by_name(
        annotation in annotation(),
        taken in taken(),
    ) {
        match assign(&annotation, &taken, names::SIDECAR_ADMIN_PORT) {
            Ok(assigned) => {
                let entries: Vec<&str> = annotation.split(',').map(str::trim).collect();
                prop_assert_eq!(assigned.len(), entries.len());
                let mut ports = std::collections::BTreeSet::new();
                for (a, entry) in assigned.iter().zip(&entries) {
                    let (name, asked) = match entry.split_once(':') {
                        Some((n, p)) => (n.trim(), Some(p.trim().parse::<u16>().expect("a port"))),
                        None => (*entry, None),
                    };
                    prop_assert_eq!(a.name.as_str(), name);
                    prop_assert!(a.port >= 1024, "{}", a.port);
                    prop_assert_ne!(a.port, names::SIDECAR_ADMIN_PORT);
                    prop_assert!(!taken.contains_key(&a.port), "{} is the pod's", a.port);
                    prop_assert!(ports.insert(a.port), "{} twice", a.port);
                    if let Some(p) = asked {
                        prop_assert_eq!(a.port, p);
                    }
                }
            }
            Err(e) => {
                prop_assert!(ANNOTATION_REASONS.contains(&e.reason()), "{}: {}", e.reason(), e);
                prop_assert!(!e.to_string().is_empty());
            }
        }
    }

    /// Every CA bundle the operator accepts, the sidecar's TLS set-up
    /// accepts too: text and bytes between certificates are ignored by
    /// both (as OpenSSL ignores them); a broken PEM block is refused by
    /// both; and what the operator counts is what the bundle holds.
    #[test]
    fn prop_ca_bundle_is_accepted_by_operator_and_sidecar_alike(
        pieces in proptest::collection::vec(piece(), 0..6),
    ) {
        let pem = SecretValue::new(render(&pieces));
        let file = SecretFile { secret: "ca".into(), key: "ca.crt".into(), path: "ca/ca.crt".into() };
        let operator = count_certificates(&pem);
        let sidecar = client_config(Some(CaBundle { file: &file, pem: &pem }), false);
        // The operator is the stricter: it parses each certificate whole
        // (x509-parser), where the sidecar's TLS stack reads only the
        // anchor's name and key, so a damaged date or signature passes
        // there. Found by this property; it is the operator that should
        // refuse, with the certificate's number, before any pod sees it.
        prop_assert!(
            operator.is_err() || sidecar.is_ok(),
            "operator: {:?}, sidecar: {:?}",
            operator,
            sidecar.as_ref().err().map(|e| sidekey_plumbing::chain::chain(e))
        );
        let spoiled = pieces.iter().any(|p| matches!(p, Piece::Corrupted(..) | Piece::Truncated(_)));
        let good = pieces.iter().filter(|p| matches!(p, Piece::Certificate(_))).count();
        // A changed character may leave a certificate that still parses.
        let corrupted = pieces.iter().filter(|p| matches!(p, Piece::Corrupted(..))).count();
        if let Ok(n) = operator {
            prop_assert!((good..=good + corrupted).contains(&n), "{} of {} good", n, good);
        } else if !spoiled && good > 0 {
            // Only garbage that looks like PEM may spoil a bundle of good
            // certificates.
            let text = String::from_utf8_lossy(pem.expose()).into_owned();
            prop_assert!(text.matches("-----").count() > 4 * good, "{:?} refused", pieces);
        }
    }
}
