//! The mutating admission webhook: it injects the sidecar into pods that
//! ask for it. Runs on every replica, leader or not.

pub mod certs;
