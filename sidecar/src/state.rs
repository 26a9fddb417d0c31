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
