//! The pod's `sidekey.dev/datasources` annotation (`payments,crm:15001`)
//! turned into one loopback port per datasource: the given port, else the
//! next free one from 15000 up, in list order.

use std::collections::{BTreeMap, BTreeSet};

use sidekey_crds::names;

use super::error::InjectError;

/// One datasource a pod asked for, and the port its sidecar serves it on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    pub name: String,
    pub port: u16,
}

/// Lowest port a datasource may ask for: the sidecar runs as a non-root
/// user, which cannot bind privileged ports.
const LOWEST_PORT: u16 = 1024;

/// Parses `annotation` and assigns ports. `taken` holds the ports the
/// pod's containers declare, with the container that declares each; the
/// sidecar's admin port is reserved too.
pub fn assign(
    annotation: &str,
    taken: &BTreeMap<u16, String>,
    admin_port: u16,
) -> Result<Vec<Assignment>, InjectError> {
    let malformed = |detail: String| InjectError::MalformedAnnotation {
        value: annotation.to_owned(),
        detail,
    };
    if annotation.trim().is_empty() {
        return Err(malformed(
            "it names no datasource; list them as `name` or `name:port`, separated by commas"
                .into(),
        ));
    }
    let mut wanted: Vec<(String, Option<u16>)> = Vec::new();
    for (index, entry) in annotation.split(',').enumerate() {
        let entry = entry.trim();
        if entry.is_empty() {
            return Err(malformed(format!("entry {} is empty", index + 1)));
        }
        let (name, port) = match entry.split_once(':') {
            Some((name, port)) => (name.trim(), Some(parse_port(port.trim(), entry)?)),
            None => (entry, None),
        };
        if let Some(detail) = invalid_name(name) {
            return Err(malformed(format!("{name:?} {detail}")));
        }
        wanted.push((name.to_owned(), port));
    }

    let mut names_seen = BTreeSet::new();
    let mut env_seen: BTreeMap<String, &str> = BTreeMap::new();
    for (name, _) in &wanted {
        if !names_seen.insert(name.as_str()) {
            return Err(InjectError::DuplicateDatasource { name: name.clone() });
        }
        // `a-b` and `a.b` would both be SIDEKEY_A_B_URL.
        if let Some(other) = env_seen.insert(names::url_env_name(name), name) {
            return Err(InjectError::SameEnvName {
                first: other.to_owned(),
                second: name.clone(),
                env: names::url_env_name(name),
            });
        }
    }

    // Explicit ports first: they are reserved before any port is picked.
    let mut used: BTreeMap<u16, String> = BTreeMap::new();
    for (name, port) in &wanted {
        let Some(port) = *port else { continue };
        if port == admin_port {
            return Err(InjectError::ReservedPort {
                name: name.clone(),
                port,
            });
        }
        if let Some(container) = taken.get(&port) {
            return Err(InjectError::PortInUse {
                name: name.clone(),
                port,
                container: container.clone(),
            });
        }
        if let Some(first) = used.insert(port, name.clone()) {
            return Err(InjectError::SamePort {
                first,
                second: name.clone(),
                port,
            });
        }
    }
    let mut next = names::FIRST_PROXY_PORT;
    let mut out = Vec::with_capacity(wanted.len());
    for (name, port) in wanted {
        let port = match port {
            Some(p) => p,
            None => {
                while next == admin_port || taken.contains_key(&next) || used.contains_key(&next) {
                    next = next.checked_add(1).ok_or(InjectError::NoFreePort)?;
                }
                used.insert(next, name.clone());
                next
            }
        };
        out.push(Assignment { name, port });
    }
    Ok(out)
}

fn parse_port(text: &str, entry: &str) -> Result<u16, InjectError> {
    let bad = |detail: &str| InjectError::InvalidPort {
        entry: entry.to_owned(),
        detail: detail.to_owned(),
    };
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("the port is not a number"));
    }
    let port: u16 = text.parse().map_err(|_| bad("the port is above 65535"))?;
    if port < LOWEST_PORT {
        return Err(bad(
            "ports below 1024 need root, and the sidecar runs as a non-root user",
        ));
    }
    Ok(port)
}

/// Why `name` cannot be an object name (RFC 1123 subdomain), if it cannot.
fn invalid_name(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("is empty");
    }
    if name.len() > names::MAX_DATASOURCE_NAME_LEN {
        return Some("is longer than the 63 characters of an ApiDatasource name");
    }
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    let alnum = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !ok_chars || !alnum(name.bytes().next()) || !alnum(name.bytes().last()) {
        return Some(
            "is not an ApiDatasource name (lower-case letters, digits, '-' and '.', \
             starting and ending with a letter or digit)",
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports(annotation: &str, taken: &[(u16, &str)]) -> Result<Vec<(String, u16)>, InjectError> {
        let taken = taken.iter().map(|(p, c)| (*p, (*c).to_owned())).collect();
        assign(annotation, &taken, names::SIDECAR_ADMIN_PORT)
            .map(|a| a.into_iter().map(|a| (a.name, a.port)).collect())
    }

    fn pairs(list: &[(&str, u16)]) -> Vec<(String, u16)> {
        list.iter().map(|(n, p)| ((*n).to_owned(), *p)).collect()
    }

    #[test]
    fn ports_are_given_from_15000_in_list_order_after_explicit_ones() {
        assert_eq!(
            ports("payments,crm:15001", &[]).expect("valid"),
            pairs(&[("payments", 15000), ("crm", 15001)])
        );
        assert_eq!(
            ports("a, b:15000 ,c", &[]).expect("valid"),
            pairs(&[("a", 15001), ("b", 15000), ("c", 15002)])
        );
    }

    #[test]
    fn ports_the_pod_declares_are_skipped() {
        assert_eq!(
            ports("a,b", &[(15000, "app"), (15002, "app")]).expect("valid"),
            pairs(&[("a", 15001), ("b", 15003)])
        );
    }

    #[test]
    fn malformed_annotations_are_refused_with_what_is_wrong() {
        let cases = [
            ("", "names no datasource"),
            ("a,,b", "entry 2 is empty"),
            ("a,", "entry 2 is empty"),
            ("Payments", "is not an ApiDatasource name"),
            ("a:", "not a number"),
            ("a:http", "not a number"),
            ("a:-1", "not a number"),
            ("a:70000", "above 65535"),
            ("a:80", "below 1024"),
            ("a b", "is not an ApiDatasource name"),
        ];
        for (annotation, expected) in cases {
            let err = ports(annotation, &[]).expect_err(annotation);
            let text = err.to_string();
            assert!(text.contains(expected), "{annotation:?}: {text}");
            assert!(text.contains(names::DATASOURCES_ANNOTATION), "{text}");
        }
    }

    #[test]
    fn a_name_twice_is_refused() {
        let err = ports("a,b,a", &[]).expect_err("twice");
        assert!(matches!(err, InjectError::DuplicateDatasource { ref name } if name == "a"));
    }

    #[test]
    fn two_names_with_one_env_variable_are_refused() {
        let err = ports("a-b,a.b", &[]).expect_err("same env");
        assert!(err.to_string().contains("SIDEKEY_A_B_URL"), "{err}");
    }

    #[test]
    fn two_datasources_on_one_port_are_refused() {
        let err = ports("a:15005,b:15005", &[]).expect_err("same port");
        assert!(
            matches!(err, InjectError::SamePort { port: 15005, .. }),
            "{err}"
        );
    }

    #[test]
    fn a_port_a_container_uses_is_refused_naming_the_container() {
        let err = ports("a:8080", &[(8080, "web")]).expect_err("in use");
        let text = err.to_string();
        assert!(text.contains("8080") && text.contains("\"web\""), "{text}");
    }

    #[test]
    fn the_admin_port_is_reserved() {
        let err = ports("a:15090", &[]).expect_err("reserved");
        assert!(matches!(err, InjectError::ReservedPort { .. }), "{err}");
        let many: Vec<String> = (0..100).map(|i| format!("d{i}")).collect();
        let assigned = ports(&many.join(","), &[]).expect("valid");
        assert!(
            assigned
                .iter()
                .all(|(_, p)| *p != names::SIDECAR_ADMIN_PORT)
        );
    }
}
