//! Watches the datasource file and the secret files by polling: Kubernetes
//! replaces a mounted volume's files by swapping a `..data` symlink, which
//! file-event watchers see poorly, while reading a few small files every
//! couple of seconds costs nothing. A change builds a new snapshot and
//! swaps it in; in-flight requests finish on the one they started with. A
//! broken change keeps the old snapshot, is logged once, and counted.
//!
//! Each datasource has a task of its own: one datasource's broken file
//! never holds up another's reload.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::error::{ConfigError, chain};
use crate::snapshot::Snapshot;
use crate::sources::Locations;
use crate::state::State;

pub async fn watch_files(
    state: Arc<State>,
    locations: Locations,
    interval: Duration,
    mut fingerprint: u64,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let reading = locations.clone();
        let Ok((seen, sources)) = tokio::task::spawn_blocking(move || reading.read()).await else {
            continue;
        };
        if seen == fingerprint {
            continue;
        }
        fingerprint = seen;
        let current = state.snapshot.load_full();
        let built = sources.and_then(|sources| {
            // The name labels logs and metrics and is unique among the
            // datasources served, as checked at startup.
            let named = sources.datasource.name.as_str();
            if named != &*state.name {
                return Err(ConfigError::DatasourceRenamed {
                    path: locations.datasource.clone(),
                    from: state.name.to_string(),
                    to: named.to_owned(),
                });
            }
            Snapshot::build(
                &sources,
                Some(&current),
                &state.timeouts,
                &state.metrics,
                state.slot,
            )
        });
        match built {
            Ok(snapshot) => {
                handover(&state, &current, &snapshot, &mut shutdown).await;
                state.snapshot.store(Arc::new(snapshot));
                state.metrics.reloads.inc();
                tracing::info!(datasource = %state.name, "configuration reloaded");
            }
            Err(e) => {
                state.metrics.reload_failures.inc();
                tracing::error!(
                    datasource = %state.name,
                    error = e.code(),
                    reason = %chain(&e),
                    "configuration change refused; the previous configuration keeps serving"
                );
            }
        }
    }
}

/// How often a waiting handover looks at the two tokens.
const HANDOVER_POLL: Duration = Duration::from_millis(100);

/// A rebuilt authentication that has to fetch its token first (OAuth 2.0
/// with a new client secret or CA) takes over only once it has one, or
/// once the old one it replaces can no longer serve either: requests are
/// never left waiting for a token, or refused, while the old token is
/// valid. Changes made to the files meanwhile are read afterwards.
async fn handover(
    state: &State,
    current: &Snapshot,
    next: &Snapshot,
    shutdown: &mut watch::Receiver<bool>,
) {
    if Arc::ptr_eq(&current.auth, &next.auth) || !next.auth.renewable() {
        return;
    }
    if next.auth.current().is_some() || current.auth.current().is_none() {
        return;
    }
    tracing::info!(
        datasource = %state.name,
        "configuration changed; the current token serves until the new one is obtained"
    );
    while next.auth.current().is_none() && current.auth.current().is_some() {
        tokio::select! {
            () = tokio::time::sleep(HANDOVER_POLL) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Registry;
    use crate::state::testing::{state, yaml};

    #[tokio::test]
    async fn a_renamed_datasource_is_refused_and_keeps_serving_as_before() {
        let dir = tempfile::tempdir().expect("tempdir");
        let registry = Registry::new();
        let crm = state(dir.path(), &registry, 0, "crm", "    type: None\n");
        let before = crm.snapshot.load_full();
        let file = dir.path().join("crm.yaml");
        let locations = Locations::new(file.clone(), dir.path().to_path_buf());
        let (fingerprint, _) = locations.read();
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(watch_files(
            crm.clone(),
            locations,
            Duration::from_millis(20),
            fingerprint,
            stopped,
        ));
        std::fs::write(&file, yaml("payments", "    type: None\n")).expect("write");
        for _ in 0..250 {
            if crm.metrics.reload_failures.get() > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = stop.send(true);
        task.await.expect("reload task");
        assert_eq!(crm.metrics.reload_failures.get(), 1);
        assert_eq!(crm.metrics.reloads.get(), 0);
        assert!(Arc::ptr_eq(&before, &crm.snapshot.load_full()));
    }
}
