//! A seam for services built on this one (the fleet's front end): extra
//! routes, a condition on readiness, and extra metrics, without changing
//! the generation endpoints.

use axum::Router;

/// What an extension adds to `/health`.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtensionHealth {
    /// `false` keeps `/health` at 503 even when the generators are ready.
    pub ready: bool,
    /// The `status` of `/health` when the generators are ready and this is
    /// not (e.g. `"no_workers"`).
    pub status: &'static str,
    /// Shown in `/health` under the extension's [`ServiceExtension::name`].
    pub detail: serde_json::Value,
}

/// Extra parts of the service. `health` and `metrics` are called on the
/// async runtime at every request of `/health` and `/metrics`: they should
/// answer from state kept up to date elsewhere, not wait on I/O.
pub trait ServiceExtension: Send + Sync + 'static {
    /// The key of [`ExtensionHealth::detail`] in `/health` (e.g. `"fleet"`).
    fn name(&self) -> &'static str;
    /// Routes merged into the service's (they must not clash with its own).
    fn routes(&self) -> Router;
    fn health(&self) -> ExtensionHealth;
    /// Prometheus text exposition appended to `/metrics` (its own metric
    /// families, each with `# HELP` and `# TYPE`).
    fn metrics(&self) -> String;
}
