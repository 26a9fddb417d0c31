//! HTTP Basic: `Authorization: Basic base64(username:password)`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::header::AUTHORIZATION;
use sidekey_crds::SecretFile;

use super::{Credential, Fixed};
use crate::error::ConfigError;
use crate::sources::Sources;

pub fn scheme(
    username: &str,
    password: &SecretFile,
    sources: &Sources,
) -> Result<Fixed, ConfigError> {
    let password_value = sources.secret(password)?;
    let mut plain = Vec::with_capacity(username.len() + 1 + password_value.len());
    plain.extend_from_slice(username.as_bytes());
    plain.push(b':');
    plain.extend_from_slice(password_value.expose());
    let value = format!("Basic {}", STANDARD.encode(&plain));
    plain.iter_mut().for_each(|b| *b = 0);
    let credential = Credential::header(AUTHORIZATION, value.as_bytes()).map_err(|reason| {
        ConfigError::InvalidSetting {
            field: "authentication.basic",
            reason,
        }
    })?;
    Ok(Fixed::new(credential))
}
