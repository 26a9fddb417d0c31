//! What sidekey's two binaries, the operator and the sidecar, both need
//! around their real work, written once: one module a job.
//!
//! - [`logging`]: the global log subscriber, text or JSON lines, on stdout
//!   or stderr, with an env-filter that falls back to `info` (and says so).
//! - [`chain`]: an error with its sources, each message once.
//! - [`signal`]: the future that completes on SIGTERM or Ctrl-C.
//! - [`admin`]: the admin port's answers, `/healthz`, `/readyz` and
//!   `/metrics`, and the plain-text and OpenMetrics responses.
//! - [`serve`]: the accept loop, HTTP/1.1 and h2c, that drains in-flight
//!   requests on shutdown; the sidecar's proxy runs on it too.
//! - [`coarse_timer`]: a timer for hyper's per-request header-read timeout
//!   that costs no timer-wheel entry, and no driver wake-up, per request.
//!
//! It depends on nothing of ours and on nothing of kube: the sidecar, which
//! deliberately does not compile kube's client (see the root
//! `Cargo.toml`), depends on it, and every crate it uses is one both
//! binaries already had.
//!
//! # Why not kubert
//!
//! kubert (0.25) offers the same three things behind its `admin`, `log`
//! and `shutdown` features, and those features do not need kube. It still
//! did not fit:
//! - its kube-based features (`runtime`, `lease`, `client`) are built on
//!   kube 1.1, and this workspace is on kube 5, so the operator could use
//!   nothing of kubert but these same small helpers;
//! - its admin server speaks HTTP/1.1 only and its readiness is one flag,
//!   so the sidecar's 503 that names each datasource not ready (a JSON
//!   body) has no place in it, and its serving does not drain in-flight
//!   requests the way the sidecar's proxy must;
//! - it would add crates the sidecar does not have (kubert itself,
//!   `ahash`, `drain`), where the sidecar must stay small.
//!
//! What both binaries share is a few dozen lines on hyper, tokio and
//! tracing-subscriber, so a small crate of our own it is.

pub mod admin;
pub mod chain;
pub mod coarse_timer;
pub mod logging;
pub mod serve;
pub mod signal;
