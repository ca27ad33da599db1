//! A worker's side of a job: stream reads and claims, then the job's life
//! cycle from start to finish, failure or requeue.

use std::time::Duration;

use redis::streams::{StreamAutoClaimReply, StreamReadReply};

use crate::job::{now_us, ttl_secs, JobRequest, OutputFormat};
use crate::FleetError;

use super::{data, Queue, GROUP};

/// One stream entry handed to this consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub entry: String,
    pub job: String,
    /// Taken from a worker that stopped heartbeating (`XAUTOCLAIM`).
    pub reclaimed: bool,
}

/// What [`Queue::start`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// Run it: the request and this attempt's number (1 for the first).
    Run { request: JobRequest, attempt: u32 },
    /// Every attempt was used: dead-letter it with this error (`image`: its
    /// image's hash, for [`Queue::fail`]).
    Exhausted {
        attempts: u32,
        last_error: String,
        image: Option<String>,
    },
    /// Finished, dead, cancelled or gone already: acknowledged, nothing to do.
    Skip,
}

/// What [`Queue::fail`] does with a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailMode {
    /// Back into the stream while attempts remain, else dead.
    Retry,
    /// Dead now (every attempt was used).
    GiveUp,
    /// Dead now with `error_kind` `bad_input`: the input cannot be turned
    /// into 3D, so another attempt would fail the same way.
    BadInput,
}

impl FailMode {
    fn as_str(self) -> &'static str {
        match self {
            FailMode::Retry => "retry",
            FailMode::GiveUp => "give_up",
            FailMode::BadInput => "bad_input",
        }
    }
}

/// What a running job's heartbeat found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    Owned,
    /// The entry is no longer pending (another worker finished it, or it was
    /// acknowledged): stop, and leave the entry alone.
    Lost,
    /// Its submitter withdrew it: stop, and acknowledge the entry.
    Cancelled,
}

/// What a worker hands back for [`Queue::finish`].
#[derive(Debug, Clone)]
pub struct Finished {
    pub format: OutputFormat,
    pub bytes: Vec<u8>,
    pub timings: Vec<(String, Duration)>,
    pub gaussians: u64,
}

pub(super) fn timings_json(t: &[(String, Duration)]) -> String {
    let pairs: Vec<(&str, f64)> = t
        .iter()
        .map(|(s, d)| (s.as_str(), d.as_secs_f64()))
        .collect();
    serde_json::to_string(&pairs).unwrap_or_else(|_| "[]".into())
}

impl Queue {
    /// Creates the consumer group of `profile`'s stream (and the stream)
    /// unless it exists; it starts at the stream's beginning, so jobs
    /// submitted before any worker came are delivered.
    pub async fn ensure_group(&self, profile: &str) -> Result<(), FleetError> {
        let r: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(self.stream_key(profile))
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut self.con())
            .await;
        match r {
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            other => Ok(other?),
        }
    }

    /// Takes one entry that has waited for a heartbeat longer than
    /// [`FleetConfig::claim_after`](crate::FleetConfig::claim_after) (its worker
    /// died), if any.
    pub async fn reclaim(
        &self,
        profile: &str,
        consumer: &str,
    ) -> Result<Option<Delivery>, FleetError> {
        let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(self.stream_key(profile))
            .arg(GROUP)
            .arg(consumer)
            .arg(self.config.claim_after.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.con())
            .await?;
        let Some(entry) = reply.claimed.into_iter().next() else {
            return Ok(None);
        };
        let job = entry
            .get::<String>("job")
            .ok_or_else(|| data(format!("stream entry {} has no job field", entry.id)))?;
        let _: i64 = redis::cmd("HINCRBY")
            .arg(self.key("stats"))
            .arg("reclaimed")
            .arg(1)
            .query_async(&mut self.con())
            .await?;
        Ok(Some(Delivery {
            entry: entry.id,
            job,
            reclaimed: true,
        }))
    }

    /// Waits up to `block` for a new entry (`XREADGROUP … >`). Use on a
    /// [`Queue::dedicated`] connection.
    pub async fn read_new(
        &self,
        profile: &str,
        consumer: &str,
        block: Duration,
    ) -> Result<Option<Delivery>, FleetError> {
        let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(consumer)
            .arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(block.as_millis().max(1) as u64)
            .arg("STREAMS")
            .arg(self.stream_key(profile))
            .arg(">")
            .query_async(&mut self.con())
            .await?;
        let Some(entry) = reply
            .and_then(|r| r.keys.into_iter().next())
            .and_then(|k| k.ids.into_iter().next())
        else {
            return Ok(None);
        };
        let job = entry
            .get::<String>("job")
            .ok_or_else(|| data(format!("stream entry {} has no job field", entry.id)))?;
        Ok(Some(Delivery {
            entry: entry.id,
            job,
            reclaimed: false,
        }))
    }

    /// Marks a delivered job running (or says why not).
    pub async fn start(
        &self,
        profile: &str,
        delivery: &Delivery,
        worker: &str,
    ) -> Result<Start, FleetError> {
        let v: Vec<String> = self
            .scripts
            .start
            .key(self.job_key(&delivery.job))
            .key(self.stream_key(profile))
            .arg(worker)
            .arg(now_us())
            .arg(self.config.max_attempts)
            .arg(&delivery.entry)
            .arg(GROUP)
            .invoke_async(&mut self.con())
            .await?;
        match v.first().map(String::as_str) {
            Some("run") if v.len() == 3 => {
                let attempt = v[2].parse().map_err(|_| data("attempt count"))?;
                match serde_json::from_str::<JobRequest>(&v[1]) {
                    Ok(request) => Ok(Start::Run { request, attempt }),
                    Err(e) => Ok(Start::Exhausted {
                        attempts: attempt,
                        last_error: format!("unreadable request: {e}"),
                        image: None,
                    }),
                }
            }
            Some("exhausted") if v.len() == 4 => Ok(Start::Exhausted {
                attempts: v[1].parse().map_err(|_| data("attempt count"))?,
                last_error: v[2].clone(),
                image: Some(v[3].clone()).filter(|h| !h.is_empty()),
            }),
            Some(_) => Ok(Start::Skip),
            None => Err(data("empty answer from the start script")),
        }
    }

    /// Resets the idle time of a running entry (`XCLAIM … JUSTID`) while this
    /// consumer holds it, so that no other worker claims it, and tells whether the job is still this
    /// worker's to finish.
    pub async fn keep_alive(
        &self,
        profile: &str,
        delivery: &Delivery,
        consumer: &str,
    ) -> Result<Ownership, FleetError> {
        let answer: String = self
            .scripts
            .keep_alive
            .key(self.stream_key(profile))
            .key(self.job_key(&delivery.job))
            .arg(GROUP)
            .arg(&delivery.entry)
            .arg(consumer)
            .invoke_async(&mut self.con())
            .await?;
        Ok(match answer.as_str() {
            "owned" => Ownership::Owned,
            "cancelled" => Ownership::Cancelled,
            _ => Ownership::Lost,
        })
    }

    /// Stores the result and acknowledges the entry. Results larger than
    /// [`FleetConfig::inline_limit`](crate::FleetConfig::inline_limit) are written
    /// to the results directory first (temporary file, then rename). Returns
    /// `false` when the job had already finished elsewhere or was cancelled
    /// (nothing stored). `image`: the job's image hash (its hold on the bytes
    /// ends here).
    pub async fn finish(
        &self,
        profile: &str,
        delivery: &Delivery,
        worker: &str,
        image: Option<&str>,
        result: &Finished,
    ) -> Result<bool, FleetError> {
        let (inline, path) = match &self.config.results_dir {
            Some(dir) if result.bytes.len() > self.config.inline_limit => {
                let path = dir.join(format!("{}.{}", delivery.job, result.format.extension()));
                let bytes = result.bytes.clone();
                let target = path.clone();
                tokio::task::spawn_blocking(move || {
                    splatforge_splat::write_atomic(&target, &bytes)
                })
                .await
                .map_err(|e| data(format!("writing a result: {e}")))?
                .map_err(|e| FleetError::Io {
                    context: format!("writing {}", path.display()),
                    source: std::io::Error::other(e.to_string()),
                })?;
                (&[][..], path.to_string_lossy().into_owned())
            }
            _ => (&result.bytes[..], String::new()),
        };
        let mut invocation = self.scripts.finish.prepare_invoke();
        invocation
            .key(self.job_key(&delivery.job))
            .key(self.stream_key(profile))
            .key(self.key("stats"))
            .arg(&delivery.entry)
            .arg(GROUP)
            .arg(now_us())
            .arg(ttl_secs(self.config.result_ttl))
            .arg(self.done_channel())
            .arg(&delivery.job)
            .arg(inline)
            .arg(path)
            .arg(result.format.extension())
            .arg(timings_json(&result.timings))
            .arg(result.gaussians)
            .arg(worker);
        if let Some(hash) = image {
            invocation.key(self.image_key(hash));
        }
        let stored: i64 = invocation.invoke_async(&mut self.con()).await?;
        Ok(stored == 1)
    }

    /// Records a failed attempt as `mode` says: back into the stream, or to
    /// the dead-letter stream. Returns `true` when the job is now dead.
    /// `image`: the job's image hash (a dead job's hold on the bytes ends).
    pub async fn fail(
        &self,
        profile: &str,
        delivery: &Delivery,
        worker: &str,
        image: Option<&str>,
        error: &str,
        mode: FailMode,
    ) -> Result<bool, FleetError> {
        let mut invocation = self.scripts.fail.prepare_invoke();
        invocation
            .key(self.job_key(&delivery.job))
            .key(self.stream_key(profile))
            .key(self.key("stats"))
            .key(self.dead_key())
            .arg(&delivery.entry)
            .arg(GROUP)
            .arg(now_us())
            .arg(ttl_secs(self.config.result_ttl))
            .arg(self.done_channel())
            .arg(&delivery.job)
            .arg(error)
            .arg(self.config.max_attempts)
            .arg(worker)
            .arg(mode.as_str());
        if let Some(hash) = image {
            invocation.key(self.image_key(hash));
        }
        let outcome: String = invocation.invoke_async(&mut self.con()).await?;
        Ok(outcome == "dead")
    }

    /// Puts a job this worker is abandoning (shutdown) back in the stream
    /// without counting the attempt.
    pub async fn requeue(&self, profile: &str, delivery: &Delivery) -> Result<(), FleetError> {
        let _: i64 = self
            .scripts
            .requeue
            .key(self.job_key(&delivery.job))
            .key(self.stream_key(profile))
            .arg(&delivery.entry)
            .arg(GROUP)
            .arg(&delivery.job)
            .invoke_async(&mut self.con())
            .await?;
        Ok(())
    }
}
