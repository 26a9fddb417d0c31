//! One loaded configuration with everything per-datasource precomputed:
//! the target, the default headers and query, the authentication scheme,
//! the signer and the upstream client. Requests read it through an
//! `ArcSwap` without locks; a reload builds a new one and swaps it in.

use std::sync::Arc;
use std::time::Duration;

use sidekey_crds::{ResolvedAuthentication, SecretValue};

use crate::auth::{self, Authenticate};
use crate::error::ConfigError;
use crate::metrics::Metrics;
use crate::outgoing::Target;
use crate::signature::Signer;
use crate::sources::{OperatorTokens, Sources};
use crate::tls::{self, CaBundle};
use crate::upstream::Upstream;

/// Timeouts that come from the command line, not the datasource.
#[derive(Clone, Debug)]
pub struct Timeouts {
    pub connect: Duration,
    pub upstream: Duration,
    /// Between two reads of the upstream's response body.
    pub body_idle: Duration,
    pub token: Duration,
}

pub struct Snapshot {
    pub target: Target,
    pub auth: Arc<dyn Authenticate>,
    pub signer: Option<Signer>,
    pub upstream: Upstream,
    tls: Arc<rustls::ClientConfig>,
    /// What the TLS setup was built from, to reuse it (and the connection
    /// pool) when a reload leaves it unchanged.
    tls_inputs: (Option<SecretValue>, bool),
    /// What the authentication was built from, to keep the scheme (and an
    /// OAuth token) when a reload leaves it unchanged.
    auth_inputs: (ResolvedAuthentication, Option<SecretValue>, OperatorTokens),
}

impl Snapshot {
    /// Builds the snapshot of one datasource from what `sources` read,
    /// reusing what `previous` holds where its inputs did not change.
    /// `slot` is the datasource's place among those served (see
    /// [`Upstream::new`]).
    pub fn build(
        sources: &Sources,
        previous: Option<&Snapshot>,
        timeouts: &Timeouts,
        metrics: &Metrics,
        slot: usize,
    ) -> Result<Self, ConfigError> {
        let ds = &sources.datasource;
        let target = Target::new(ds)?;

        let ca = match &ds.tls.ca_certificate {
            Some(file) => Some((file, sources.secret(file)?)),
            None => None,
        };
        let tls_inputs = (ca.map(|(_, v)| v.clone()), ds.tls.trust_system_roots);
        let tls = match previous.filter(|p| p.tls_inputs == tls_inputs) {
            Some(p) => p.tls.clone(),
            None => {
                let bundle = ca.map(|(file, pem)| CaBundle { file, pem });
                tls::client_config(bundle, ds.tls.trust_system_roots)?
            }
        };
        // The pools hold connections to one origin with one TLS setup.
        let upstream = match previous
            .filter(|p| Arc::ptr_eq(&p.tls, &tls) && p.target.origin() == target.origin())
        {
            Some(p) => p.upstream.clone(),
            None => Upstream::new(
                slot,
                target.origin(),
                tls.clone(),
                timeouts.connect,
                timeouts.upstream,
            ),
        };

        let auth_inputs = (
            ds.authentication.clone(),
            // The operator-only client secret may be absent (see `Sources`).
            ds.authentication
                .credential()
                .and_then(|(_, file)| sources.secret(file).ok().cloned()),
            sources.operator_tokens.clone(),
        );
        let reusable =
            previous.filter(|p| p.auth_inputs == auth_inputs && Arc::ptr_eq(&p.tls, &tls));
        let auth = match reusable {
            Some(p) => p.auth.clone(),
            None => auth::from_config(&auth::Setup {
                sources,
                tls: &tls,
                metrics,
                token_timeout: timeouts.token,
            })?,
        };

        let signer = match &ds.signature {
            Some(spec) => Some(Signer::new(spec, sources.secret(&spec.secret)?)?),
            None => None,
        };

        Ok(Self {
            target,
            auth,
            signer,
            upstream,
            tls,
            tls_inputs,
            auth_inputs,
        })
    }
}
