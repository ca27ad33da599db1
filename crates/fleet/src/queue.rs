//! The Redis side of the fleet: keys, the job life cycle as Lua scripts
//! (each state change atomic), stream reads and claims, results, worker
//! heartbeats and a snapshot for health and metrics.
//!
//! Keys (`{p}` is [`FleetConfig::prefix`]):
//! - `{p}:jobs:{profile}`: stream of `job=<id>` entries, consumer group
//!   `workers`; an entry is deleted once acknowledged, so the stream's
//!   length is what waits plus what runs.
//! - `{p}:job:{id}`: hash (`request`, `profile`, `state`, `attempts`,
//!   `worker`, `last_error`, `error`, `error_kind`, `result` or
//!   `result_path`, `format`, `timings`, `gaussians`, `created_us`,
//!   `started_us`, `finished_us`, and `image` for an image job); expires
//!   [`FleetConfig::result_ttl`] after it finished, died or was cancelled,
//!   never while queued or running.
//! - `{p}:image:{sha256}`: hash (`bytes`, `refs`): an image job's input,
//!   stored once per content. `refs` counts the jobs that hold it from their
//!   submission to their first finish, death or withdrawal; the last one
//!   deletes it, so Redis holds the images of queued and running jobs only
//!   (each distinct picture once, however many jobs share it).
//! - `{p}:dead`: dead-letter stream (`job`, `error`, `attempts`).
//! - `{p}:done`: pub/sub channel; the id of every job that finished or died.
//! - `{p}:stats`: counters (`submitted`, `completed`, `retries`,
//!   `reclaimed`, `dead`, `duplicate_runs`).
//! - `{p}:profiles`: set of the profiles jobs were submitted for.
//! - `{p}:workers`: sorted set of worker names by last heartbeat (Redis
//!   time, ms); `{p}:worker:{name}`: its JSON description, expiring.
//! - `{p}:batch:{id}`: see [`crate::batch`].

use std::sync::Arc;

use redis::aio::ConnectionManager;

use crate::{FleetConfig, FleetError};

mod delivery;
mod health;
mod jobs;
mod scripts;
#[cfg(test)]
mod tests;

pub use delivery::{Delivery, FailMode, Finished, Ownership, Start};
pub use health::{ProfileDepth, Snapshot, WorkerInfo};
pub use jobs::JobResult;
use scripts::Scripts;

/// The consumer group every worker joins.
pub const GROUP: &str = "workers";

/// A connection to one fleet's keys. Clones share the connection (commands
/// are multiplexed); a blocking read needs [`Queue::dedicated`]. The
/// connection reconnects by itself after Redis restarts.
#[derive(Clone)]
pub struct Queue {
    config: Arc<FleetConfig>,
    client: redis::Client,
    con: ConnectionManager,
    scripts: Arc<Scripts>,
}

fn data(m: impl Into<String>) -> FleetError {
    FleetError::Data(m.into())
}

impl Queue {
    /// Connects (retrying for a few seconds while Redis starts).
    pub async fn connect(config: FleetConfig) -> Result<Queue, FleetError> {
        config.validate()?;
        let client = redis::Client::open(config.redis_url.as_str())?;
        let con = ConnectionManager::new(client.clone()).await?;
        Ok(Queue {
            config: Arc::new(config),
            client,
            con,
            scripts: Arc::new(Scripts::new()),
        })
    }

    /// The same fleet on a connection of its own (for blocking reads, which
    /// hold their connection until they return).
    pub async fn dedicated(&self) -> Result<Queue, FleetError> {
        let con = ConnectionManager::new(self.client.clone()).await?;
        Ok(Queue {
            con,
            ..self.clone()
        })
    }

    pub fn config(&self) -> &FleetConfig {
        &self.config
    }

    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    pub(crate) fn key(&self, rest: &str) -> String {
        format!("{}:{rest}", self.config.prefix)
    }

    pub fn stream_key(&self, profile: &str) -> String {
        self.key(&format!("jobs:{profile}"))
    }

    pub fn job_key(&self, id: &str) -> String {
        self.key(&format!("job:{id}"))
    }

    /// Where the bytes of the image with SHA-256 `hash` are.
    pub fn image_key(&self, hash: &str) -> String {
        self.key(&format!("image:{hash}"))
    }

    pub fn done_channel(&self) -> String {
        self.key("done")
    }

    pub fn dead_key(&self) -> String {
        self.key("dead")
    }

    pub(crate) fn con(&self) -> ConnectionManager {
        self.con.clone()
    }
}
