//! A static API key: header `<key>: <prefix> <value>` (the value alone
//! without a prefix) or query parameter `<key>=<value>`.

use http::header::HeaderName;
use sidekey_crds::{ApiKeyPlacement, SecretFile};

use super::{Credential, Fixed};
use crate::error::ConfigError;
use crate::sources::Sources;

pub fn scheme(
    key: &str,
    value: &SecretFile,
    prefix: Option<&str>,
    add_to: ApiKeyPlacement,
    sources: &Sources,
) -> Result<Fixed, ConfigError> {
    let secret = sources.secret_text(value)?;
    let invalid = |reason: String| ConfigError::InvalidSetting {
        field: "authentication.apiKey",
        reason,
    };
    let credential = match add_to {
        ApiKeyPlacement::Header => {
            let name = HeaderName::from_bytes(key.as_bytes())
                .map_err(|_| invalid(format!("{key:?} is not a valid header name")))?;
            let text = match prefix {
                Some(prefix) => format!("{prefix} {secret}"),
                None => secret.to_owned(),
            };
            Credential::header(name, text.as_bytes()).map_err(|reason| {
                invalid(format!(
                    "secret {:?} key {:?}: {reason}",
                    value.secret, value.key
                ))
            })?
        }
        ApiKeyPlacement::QueryParameter => Credential::query(key, secret),
    };
    Ok(Fixed::new(credential))
}
