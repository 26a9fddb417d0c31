//! No authentication: requests go as the app sent them.

use super::{Credential, Fixed};

pub fn scheme() -> Fixed {
    Fixed::new(Credential::None)
}
