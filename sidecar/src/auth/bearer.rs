//! A static bearer token: `Authorization: Bearer <token>`.

use http::header::AUTHORIZATION;
use sidekey_crds::SecretFile;

use super::{Credential, Fixed};
use crate::error::ConfigError;
use crate::sources::Sources;

pub fn scheme(token: &SecretFile, sources: &Sources) -> Result<Fixed, ConfigError> {
    let value = format!("Bearer {}", sources.secret_text(token)?);
    let credential = Credential::header(AUTHORIZATION, value.as_bytes()).map_err(|reason| {
        ConfigError::InvalidSetting {
            field: "authentication.bearerToken",
            reason: format!("secret {:?} key {:?}: {reason}", token.secret, token.key),
        }
    })?;
    Ok(Fixed::new(credential))
}
