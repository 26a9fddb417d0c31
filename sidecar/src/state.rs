//! What every request and background task shares.

use arc_swap::ArcSwap;

use crate::metrics::Metrics;
use crate::snapshot::{Snapshot, Timeouts};

pub struct State {
    /// The configuration in force; replaced whole by the reloader.
    pub snapshot: ArcSwap<Snapshot>,
    pub metrics: Metrics,
    pub timeouts: Timeouts,
}
