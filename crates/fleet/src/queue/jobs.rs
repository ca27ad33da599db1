//! Submitting jobs, reading their states and results, and withdrawing them.

use std::path::PathBuf;
use std::time::Duration;

use crate::job::{check_id, now_us, ttl_secs, JobState, JobStatus, OutputFormat, Submission};
use crate::FleetError;

use super::{data, Queue};

const STATUS_FIELDS: [&str; 11] = [
    "state",
    "profile",
    "attempts",
    "worker",
    "error",
    "last_error",
    "gaussians",
    "created_us",
    "started_us",
    "finished_us",
    "error_kind",
];

/// A job hash's [`STATUS_FIELDS`] as a status; `None` when it has none.
fn parse_status(id: &str, v: &[Option<String>]) -> Result<Option<JobStatus>, FleetError> {
    let Some(state) = v.first().and_then(|s| s.as_deref()) else {
        return Ok(None);
    };
    let num = |i: usize| {
        v.get(i)
            .and_then(|s| s.as_deref())
            .and_then(|s| s.parse::<u64>().ok())
    };
    let text = |i: usize| v.get(i).cloned().flatten();
    Ok(Some(JobStatus {
        id: id.to_string(),
        state: JobState::parse(state)?,
        profile: text(1).unwrap_or_default(),
        attempts: num(2).unwrap_or(0) as u32,
        worker: text(3),
        error: text(4).or_else(|| text(5)),
        gaussians: num(6),
        created_us: num(7),
        started_us: num(8),
        finished_us: num(9),
        error_kind: text(10),
    }))
}

const RESULT_FIELDS: [&str; 6] = [
    "state",
    "result",
    "result_path",
    "format",
    "timings",
    "gaussians",
];

/// A job hash's [`RESULT_FIELDS`].
type ResultFields = (
    Option<String>,
    Option<Vec<u8>>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<u64>,
);

/// A stored result.
#[derive(Debug, Clone, PartialEq)]
pub struct JobResult {
    pub format: OutputFormat,
    pub bytes: Vec<u8>,
    /// Stage wall times on the worker, in order.
    pub timings: Vec<(String, Duration)>,
    pub gaussians: u64,
}

impl Queue {
    /// The bytes of a queued or running job's image, `None` once no such
    /// job holds it.
    pub async fn image(&self, hash: &str) -> Result<Option<Vec<u8>>, FleetError> {
        Ok(redis::cmd("HGET")
            .arg(self.image_key(hash))
            .arg("bytes")
            .query_async(&mut self.con())
            .await?)
    }

    /// Submits a job unless `id` exists. Returns whether it was created and
    /// the job's state (the existing one for a duplicate).
    /// An image job's image is stored under its hash unless another queued
    /// or running job holds the same bytes already.
    pub async fn submit(
        &self,
        id: &str,
        profile: &str,
        job: &Submission,
    ) -> Result<(bool, JobState), FleetError> {
        check_id(id)?;
        check_id(profile)?;
        job.validate()?;
        let json = serde_json::to_string(&job.request).map_err(|e| data(e.to_string()))?;
        let mut invocation = self.scripts.submit.prepare_invoke();
        invocation
            .key(self.job_key(id))
            .key(self.stream_key(profile))
            .key(self.key("stats"))
            .key(self.key("profiles"))
            .arg(id)
            .arg(json)
            .arg(profile)
            .arg(now_us());
        if let (Some(hash), Some(bytes)) = (&job.request.image, &job.image) {
            invocation
                .key(self.image_key(hash))
                .arg(bytes.as_slice())
                .arg(hash);
        }
        let (created, state): (i64, String) = invocation.invoke_async(&mut self.con()).await?;
        Ok((created == 1, JobState::parse(&state)?))
    }

    /// The job's status, `None` when unknown (never submitted, or expired).
    pub async fn status(&self, id: &str) -> Result<Option<JobStatus>, FleetError> {
        let v: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(self.job_key(id))
            .arg(&STATUS_FIELDS[..])
            .query_async(&mut self.con())
            .await?;
        parse_status(id, &v)
    }

    /// The status and, when it is done, the result, in one round trip.
    pub async fn status_and_result(
        &self,
        id: &str,
    ) -> Result<Option<(JobStatus, Option<JobResult>)>, FleetError> {
        let (v, fields): (Vec<Option<String>>, ResultFields) = redis::pipe()
            .cmd("HMGET")
            .arg(self.job_key(id))
            .arg(&STATUS_FIELDS[..])
            .cmd("HMGET")
            .arg(self.job_key(id))
            .arg(&RESULT_FIELDS[..])
            .query_async(&mut self.con())
            .await?;
        let Some(status) = parse_status(id, &v)? else {
            return Ok(None);
        };
        let result = if status.state == JobState::Done {
            self.parse_result(id, fields).await?
        } else {
            None
        };
        Ok(Some((status, result)))
    }

    /// The states of many jobs at once (`None` for unknown ones), in order.
    pub async fn states(&self, ids: &[String]) -> Result<Vec<Option<JobState>>, FleetError> {
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.hget(self.job_key(id), "state");
        }
        let states: Vec<Option<String>> = pipe.query_async(&mut self.con()).await?;
        states
            .into_iter()
            .map(|s| s.map(|s| JobState::parse(&s)).transpose())
            .collect()
    }

    /// The result of a finished job (`None` unless it is done), reading
    /// the results directory when Redis holds a path.
    pub async fn result(&self, id: &str) -> Result<Option<JobResult>, FleetError> {
        let fields: ResultFields = redis::cmd("HMGET")
            .arg(self.job_key(id))
            .arg(&RESULT_FIELDS[..])
            .query_async(&mut self.con())
            .await?;
        self.parse_result(id, fields).await
    }

    async fn parse_result(
        &self,
        id: &str,
        fields: ResultFields,
    ) -> Result<Option<JobResult>, FleetError> {
        let (state, bytes, path, format, timings, gaussians) = fields;
        if state.as_deref() != Some("done") {
            return Ok(None);
        }
        let format = OutputFormat::parse(format.as_deref().unwrap_or(""))
            .map_err(|e| data(e.to_string()))?;
        let bytes = match path.filter(|p| !p.is_empty()) {
            Some(p) => {
                let p = PathBuf::from(p);
                tokio::fs::read(&p).await.map_err(|source| FleetError::Io {
                    context: format!("reading the result of job {id} from {}", p.display()),
                    source,
                })?
            }
            None => bytes.unwrap_or_default(),
        };
        let pairs: Vec<(String, f64)> = serde_json::from_str(timings.as_deref().unwrap_or("[]"))
            .map_err(|e| data(format!("timings of {id}: {e}")))?;
        let timings = pairs
            .into_iter()
            .map(|(s, secs)| (s, Duration::try_from_secs_f64(secs).unwrap_or_default()))
            .collect();
        Ok(Some(JobResult {
            format,
            bytes,
            timings,
            gaussians: gaussians.unwrap_or(0),
        }))
    }

    /// Withdraws a queued or running job (a running one is cancelled at its
    /// worker's next heartbeat). Returns whether it was withdrawn.
    pub async fn cancel(&self, id: &str) -> Result<bool, FleetError> {
        // A job's image never changes after its submission, so reading it
        // first is no race.
        let image: Option<String> = redis::cmd("HGET")
            .arg(self.job_key(id))
            .arg("image")
            .query_async(&mut self.con())
            .await?;
        let mut invocation = self.scripts.cancel.prepare_invoke();
        invocation
            .key(self.job_key(id))
            .arg(ttl_secs(self.config.result_ttl));
        if let Some(hash) = image.filter(|h| !h.is_empty()) {
            invocation.key(self.image_key(&hash));
        }
        let n: i64 = invocation.invoke_async(&mut self.con()).await?;
        Ok(n == 1)
    }
}
