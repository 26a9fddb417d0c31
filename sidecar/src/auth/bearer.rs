//! A static bearer token: `Authorization: Bearer <token>`.

use http::header::AUTHORIZATION;
use sidekey_crds::SecretFile;

use super::{Credential, Fixed};
use crate::error::Error;
use crate::sources::Sources;

pub fn scheme(token: &SecretFile, sources: &Sources) -> Result<Fixed, Error> {
    let value = format!("Bearer {}", sources.secret_text(token)?);
    let credential = Credential::header(AUTHORIZATION, value.as_bytes()).map_err(|reason| {
        Error::InvalidSetting {
            field: "authentication.bearerToken",
            reason: format!("secret {:?} key {:?}: {reason}", token.secret, token.key),
        }
    })?;
    Ok(Fixed::new(credential))
}
