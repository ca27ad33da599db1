//! What a job asks for, where it stands, and its id.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use splatforge_server::MAX_PROMPT_CHARS;

use crate::FleetError;

/// Longest job id, in bytes.
pub const MAX_JOB_ID_BYTES: usize = 128;

/// The bytes a job produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// Binary 3DGS PLY with normals (lossless: what the front end asks for,
    /// so that it can encode any HTTP format from it).
    #[default]
    Ply,
    /// 404-GEN's SPZ (Niantic SPZ v2, zstd).
    Spz,
}

impl OutputFormat {
    pub fn extension(self) -> &'static str {
        match self {
            OutputFormat::Ply => "ply",
            OutputFormat::Spz => "spz",
        }
    }

    pub fn parse(s: &str) -> Result<Self, FleetError> {
        match s {
            "ply" => Ok(OutputFormat::Ply),
            "spz" => Ok(OutputFormat::Spz),
            other => Err(FleetError::Request(format!(
                "format must be 'ply' or 'spz', got '{other}'"
            ))),
        }
    }
}

/// What a worker generates: stored as JSON in the job hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRequest {
    /// Text prompt: non-empty, at most [`MAX_PROMPT_CHARS`] characters.
    pub prompt: String,
    pub seed: Option<u64>,
    #[serde(default)]
    pub format: OutputFormat,
}

impl JobRequest {
    pub fn validate(&self) -> Result<(), FleetError> {
        let chars = self.prompt.trim().chars().count();
        if chars == 0 {
            return Err(FleetError::Request("the prompt is empty".into()));
        }
        if chars > MAX_PROMPT_CHARS {
            return Err(FleetError::Request(format!(
                "the prompt has {chars} characters; at most {MAX_PROMPT_CHARS} are accepted"
            )));
        }
        Ok(())
    }
}

/// Where a job stands (the `state` field of its hash).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// In the stream, waiting for a worker (also after a failed attempt).
    Queued,
    Running,
    /// Finished; the result is stored.
    Done,
    /// Gave up after the last attempt; in the dead-letter stream.
    Dead,
    /// Withdrawn by its submitter (a request that timed out); workers skip it.
    Cancelled,
}

impl JobState {
    pub fn parse(s: &str) -> Result<Self, FleetError> {
        Ok(match s {
            "queued" => JobState::Queued,
            "running" => JobState::Running,
            "done" => JobState::Done,
            "dead" => JobState::Dead,
            "cancelled" => JobState::Cancelled,
            other => return Err(FleetError::Data(format!("unknown job state '{other}'"))),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Dead => "dead",
            JobState::Cancelled => "cancelled",
        }
    }

    /// No worker will touch the job again.
    pub fn is_terminal(self) -> bool {
        matches!(self, JobState::Done | JobState::Dead | JobState::Cancelled)
    }
}

/// A job as its hash tells it (without the result bytes).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobStatus {
    pub id: String,
    pub state: JobState,
    pub profile: String,
    /// Starts so far (first delivery, retries, claims).
    pub attempts: u32,
    /// The worker that ran (or runs) it.
    pub worker: Option<String>,
    /// Why it is dead, or why its last attempt failed.
    pub error: Option<String>,
    pub gaussians: Option<u64>,
    /// Microseconds since the Unix epoch, by the clocks of the submitter
    /// (`created`) and the worker (`started`, `finished`).
    pub created_us: Option<u64>,
    pub started_us: Option<u64>,
    pub finished_us: Option<u64>,
}

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// A fresh id, unique across processes and machines for practical purposes:
/// time, process id, a counter and 64 random bits (from the standard
/// library's randomly keyed hasher).
pub fn new_job_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    format!("{:x}-{:016x}", now_us() / 1000, h.finish())
}

/// A content id: the first 20 hex digits of the SHA-1 of `bytes` (for
/// idempotent submissions of the same file).
pub fn content_id(bytes: &[u8]) -> String {
    let mut hex = sha1_smol::Sha1::from(bytes).digest().to_string();
    hex.truncate(20);
    hex
}

/// Ids become parts of Redis keys and file names: `[A-Za-z0-9._:-]`, not
/// starting with a dot, at most [`MAX_JOB_ID_BYTES`].
pub fn check_id(id: &str) -> Result<(), FleetError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_JOB_ID_BYTES
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'));
    if ok {
        Ok(())
    } else {
        Err(FleetError::Request(format!(
            "ids and stems are 1 to {MAX_JOB_ID_BYTES} of [A-Za-z0-9._:-], not starting with '.'; got '{}'",
            id.chars().take(MAX_JOB_ID_BYTES).collect::<String>()
        )))
    }
}

/// Seconds, as Redis `EXPIRE` takes them (at least 1).
pub fn ttl_secs(d: Duration) -> u64 {
    d.as_secs().max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_validate() {
        let r = JobRequest {
            prompt: "a red chair".into(),
            seed: Some(7),
            format: OutputFormat::Spz,
        };
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, r#"{"prompt":"a red chair","seed":7,"format":"spz"}"#);
        assert_eq!(serde_json::from_str::<JobRequest>(&json).unwrap(), r);
        let plain: JobRequest = serde_json::from_str(r#"{"prompt":"x","seed":null}"#).unwrap();
        assert_eq!(plain.format, OutputFormat::Ply);
        assert!(r.validate().is_ok());
        assert!(JobRequest {
            prompt: "  ".into(),
            ..r.clone()
        }
        .validate()
        .is_err());
        assert!(JobRequest {
            prompt: "a".repeat(MAX_PROMPT_CHARS + 1),
            ..r
        }
        .validate()
        .is_err());
        assert!(OutputFormat::parse("obj").is_err());
    }

    #[test]
    fn ids() {
        let a = new_job_id();
        let b = new_job_id();
        assert_ne!(a, b);
        check_id(&a).unwrap();
        assert_eq!(content_id(b"abc"), "a9993e364706816aba3e");
        for bad in [
            "",
            ".hidden",
            "a/b",
            "a b",
            &"x".repeat(MAX_JOB_ID_BYTES + 1),
        ] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
        for s in ["queued", "running", "done", "dead", "cancelled"] {
            assert_eq!(JobState::parse(s).unwrap().as_str(), s);
        }
        assert!(JobState::parse("lost").is_err());
    }
}
