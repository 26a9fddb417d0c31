//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several
//! replicas exactly one reconciles. Built on `kube-lease-manager` (kube 5):
//! it takes a free or expired Lease with server-side apply (a second
//! claimant gets a conflict), renews it `grace` seconds before it expires,
//! and reports each change of holder on a watch channel.
//!
//! The operator keeps this simple: it waits to become leader, reconciles
//! while leader, and exits when leadership is lost, to rejoin the election
//! as a fresh process; a graceful stop releases the Lease so the standby
//! takes over at once instead of after the lease duration.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};

/// Which Lease, who we are, and its timing.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    /// How long a holder's claim lasts without renewal, in seconds.
    pub duration_seconds: u64,
    /// How long before expiry the holder renews, in seconds; less than
    /// `duration_seconds`.
    pub grace_seconds: u64,
}

impl LeaseConfig {
    /// The timing must allow a renewal before expiry.
    pub fn check(&self) -> Result<(), String> {
        if self.duration_seconds == 0 || self.grace_seconds == 0 {
            return Err("lease duration and grace must be at least 1 second".into());
        }
        if self.grace_seconds >= self.duration_seconds {
            return Err(format!(
                "lease grace ({} s) must be less than the lease duration ({} s)",
                self.grace_seconds, self.duration_seconds
            ));
        }
        Ok(())
    }
}

/// This process's place in the election.
pub struct Leadership {
    config: LeaseConfig,
    state: watch::Receiver<bool>,
    /// Taken by `step_down`; aborted on drop otherwise.
    task: Option<JoinHandle<Result<kube_lease_manager::LeaseManager, LeaseManagerError>>>,
}

impl Leadership {
    /// Joins the election: creates the Lease if needed and starts competing
    /// for it in the background.
    pub async fn join(client: Client, config: LeaseConfig) -> Result<Self> {
        let manager = LeaseManagerBuilder::new(client, &config.name)
            .with_namespace(&config.namespace)
            .with_identity(&config.identity)
            .with_duration(config.duration_seconds)
            .with_grace(config.grace_seconds)
            .build()
            .await
            .map_err(|source| Error::LeaderElection {
                namespace: config.namespace.clone(),
                name: config.name.clone(),
                source,
            })?;
        let (state, task) = manager.watch().await;
        Ok(Self {
            config,
            state,
            task: Some(task),
        })
    }

    /// Returns once this process holds the Lease.
    pub async fn acquired(&mut self) -> Result<()> {
        let acquired = self.state.wait_for(|leader| *leader).await.is_ok();
        if acquired {
            Ok(())
        } else {
            Err(self.lost_error())
        }
    }

    /// Returns once this process no longer holds the Lease (another took
    /// it, or the election task ended).
    pub async fn lost(&mut self) -> Error {
        let _ = self.state.wait_for(|leader| !*leader).await;
        self.lost_error()
    }

    /// Leaves the election, releasing the Lease if held, so a standby can
    /// take over without waiting for it to expire.
    pub async fn step_down(mut self) {
        let Some(task) = self.task.take() else { return };
        // Closing the channel (dropping self) tells the manager to release
        // the Lease and stop.
        drop(self);
        match tokio::time::timeout(Duration::from_secs(5), task).await {
            Ok(Ok(Ok(_))) => tracing::info!("released the leader Lease"),
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "releasing the leader Lease failed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "leader election task failed"),
            Err(_) => tracing::warn!("releasing the leader Lease timed out"),
        }
    }

    fn lost_error(&self) -> Error {
        Error::LostLeadership {
            namespace: self.config.namespace.clone(),
            name: self.config.name.clone(),
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        // Leaving without `step_down` (leadership lost, or a fatal error):
        // stop competing; the Lease expires on its own.
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(duration: u64, grace: u64) -> LeaseConfig {
        LeaseConfig {
            name: "l".into(),
            namespace: "n".into(),
            identity: "i".into(),
            duration_seconds: duration,
            grace_seconds: grace,
        }
    }

    #[test]
    fn grace_must_be_shorter_than_the_lease() {
        assert!(config(15, 5).check().is_ok());
        assert!(config(5, 5).check().is_err());
        assert!(config(5, 0).check().is_err());
    }
}
