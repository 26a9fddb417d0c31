//! What every request and background task of one datasource shares.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::metrics::Metrics;
use crate::snapshot::{Snapshot, Timeouts};

pub struct State {
    /// The datasource's name, fixed for the process: it labels the
    /// datasource's log lines and metrics.
    pub name: Arc<str>,
    /// The configuration in force; replaced whole by the reloader.
    pub snapshot: ArcSwap<Snapshot>,
    pub metrics: Metrics,
    pub timeouts: Timeouts,
    /// Which of each worker thread's upstream client slots this
    /// datasource's connections live in (its place in `--datasource`).
    pub slot: usize,
}

/// States built from files, for unit tests of what reads them.
#[cfg(test)]
pub mod testing {
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    use arc_swap::ArcSwap;

    use super::State;
    use crate::metrics::Registry;
    use crate::snapshot::{Snapshot, Timeouts};
    use crate::sources::Locations;

    /// The YAML of datasource `name` with `auth` (lines under `authentication:`).
    pub fn yaml(name: &str, auth: &str) -> String {
        format!(
            "kind: ApiDatasource\nmetadata: {{name: {name}}}\nspec:\n  url: https://127.0.0.1:9\n  authentication:\n{auth}"
        )
    }

    /// The state of datasource `name` with `auth`, its file `<dir>/<name>.yaml`
    /// and secrets in `dir`, served in `slot`.
    pub fn state(
        dir: &Path,
        registry: &Registry,
        slot: usize,
        name: &str,
        auth: &str,
    ) -> Arc<State> {
        let file = dir.join(format!("{name}.yaml"));
        std::fs::write(&file, yaml(name, auth)).expect("write");
        let (_, sources) = Locations::new(file, dir.to_path_buf()).read();
        let sources = sources.expect("sources");
        let second = Duration::from_secs(1);
        let timeouts = Timeouts {
            connect: second,
            upstream: second,
            body_idle: second,
            token: second,
        };
        let metrics = registry.datasource(name);
        let snapshot =
            Snapshot::build(&sources, None, &timeouts, &metrics, slot).expect("snapshot");
        Arc::new(State {
            name: Arc::from(name),
            snapshot: ArcSwap::from_pointee(snapshot),
            metrics,
            timeouts,
            slot,
        })
    }
}
