//! The fleet: many generation machines behind one front end, on **Redis
//! Streams with consumer groups**.
//!
//! - A job is a hash `{prefix}:job:{id}` (request, state, attempts, result)
//!   plus an entry `job=<id>` in the stream `{prefix}:jobs:{profile}`.
//!   Submitting an id that exists returns the existing job (dedup). An
//!   image job's picture is stored once per content, `{prefix}:image:{sha256}`,
//!   while queued or running jobs hold it.
//! - Workers ([`worker::run_worker`]) read the stream through the consumer
//!   group `workers` (`XREADGROUP`), keep their running entries fresh with
//!   `XCLAIM … JUSTID` heartbeats, and take entries whose worker stopped
//!   heartbeating for [`FleetConfig::claim_after`] (`XAUTOCLAIM`). A job that
//!   failed or whose workers died [`FleetConfig::max_attempts`] times goes to
//!   the dead-letter stream `{prefix}:dead` with its last error.
//! - Results (PLY/SPZ bytes, stage timings, errors) are kept for
//!   [`FleetConfig::result_ttl`]; results larger than
//!   [`FleetConfig::inline_limit`] go to [`FleetConfig::results_dir`] (a
//!   directory every front end can read, e.g. a shared mount) and Redis
//!   holds the path.
//! - The front end ([`front`]) is a [`splatforge_server::Generator`] that
//!   enqueues and waits, so the HTTP service stays as it is; it adds
//!   `/batches` and the fleet's health and metrics through
//!   [`splatforge_server::ServiceExtension`].
//!
//! Every state change of a job is one Lua script, so a job is never half
//! submitted, half finished or both retried and dead.

pub mod batch;
pub mod front;
pub mod job;
pub mod queue;
pub mod test_redis;
pub mod worker;

use std::path::PathBuf;
use std::time::Duration;

pub use job::{JobRequest, JobState, JobStatus, OutputFormat, Submission};
pub use queue::Queue;

/// How a fleet's Redis keys are named and how its jobs are handled. Front
/// ends and workers of one fleet must agree on `prefix`; the rest matters
/// to the side that acts on it (workers: claiming and retries; both:
/// result storage).
#[derive(Debug, Clone, PartialEq)]
pub struct FleetConfig {
    /// Redis URL (`redis://127.0.0.1:6379/0`).
    pub redis_url: String,
    /// Prefix of every key (`splatforge`): several fleets can share a Redis.
    pub prefix: String,
    /// A running job whose worker has not heartbeaten for this long is
    /// claimed by another worker (30 s). Heartbeats come every quarter of it.
    pub claim_after: Duration,
    /// Starts of a job (first delivery, retries after failures, claims after
    /// a worker died) before it goes to the dead-letter stream (3).
    pub max_attempts: u32,
    /// How long finished and dead jobs and their results are kept (24 h).
    pub result_ttl: Duration,
    /// Results larger than this many bytes go to `results_dir` when it is
    /// set (1 MiB).
    pub inline_limit: usize,
    /// Where large results are written, as `{job id}.{ply|spz}`; `None`
    /// keeps every result in Redis.
    pub results_dir: Option<PathBuf>,
    /// A worker is alive while its last heartbeat is younger than this (5 s;
    /// workers heartbeat every second).
    pub worker_liveness: Duration,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            redis_url: "redis://127.0.0.1:6379/0".into(),
            prefix: "splatforge".into(),
            claim_after: Duration::from_secs(30),
            max_attempts: 3,
            result_ttl: Duration::from_secs(24 * 3600),
            inline_limit: 1 << 20,
            results_dir: None,
            worker_liveness: Duration::from_secs(5),
        }
    }
}

impl FleetConfig {
    pub fn validate(&self) -> Result<(), FleetError> {
        let bad = |m: &str| Err(FleetError::Config(m.to_string()));
        if self.prefix.is_empty() || self.prefix.contains(char::is_whitespace) {
            return bad("the key prefix must be non-empty and without spaces");
        }
        if self.claim_after < Duration::from_millis(400) {
            return bad(
                "the claim timeout must be at least 0.4 s (heartbeats come every quarter of it)",
            );
        }
        if self.max_attempts == 0 {
            return bad("max attempts must be at least 1");
        }
        if self.result_ttl < Duration::from_secs(1) {
            return bad("the result TTL must be at least 1 s");
        }
        if self.worker_liveness < Duration::from_secs(2) {
            return bad(
                "the worker liveness window must be at least 2 s (workers heartbeat every second)",
            );
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("invalid fleet configuration: {0}")]
    Config(String),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A value in Redis that this version cannot read (another version's
    /// job, or a key written by something else under the prefix).
    #[error("unexpected data in redis: {0}")]
    Data(String),
    #[error("invalid request: {0}")]
    Request(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    /// A device's generator could not be built or warmed up.
    #[error("startup failed: {0}")]
    Startup(String),
    #[error("not found: {0}")]
    NotFound(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_checks() {
        assert!(FleetConfig::default().validate().is_ok());
        let bad = [
            FleetConfig {
                prefix: String::new(),
                ..Default::default()
            },
            FleetConfig {
                prefix: "a b".into(),
                ..Default::default()
            },
            FleetConfig {
                claim_after: Duration::from_millis(100),
                ..Default::default()
            },
            FleetConfig {
                max_attempts: 0,
                ..Default::default()
            },
            FleetConfig {
                result_ttl: Duration::ZERO,
                ..Default::default()
            },
            FleetConfig {
                worker_liveness: Duration::from_secs(1),
                ..Default::default()
            },
        ];
        for c in bad {
            assert!(matches!(c.validate(), Err(FleetError::Config(_))), "{c:?}");
        }
    }
}
