//! What a job asks for, where it stands, and its id.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use splatforge_server::{IMAGE_MAX_BODY_BYTES, MAX_PROMPT_CHARS};

use crate::FleetError;

/// Longest job id, in bytes.
pub const MAX_JOB_ID_BYTES: usize = 128;

/// Largest image a job may carry: the body limit of a single-host image server
/// ([`IMAGE_MAX_BODY_BYTES`], 32 MiB), so that every image `serve` takes, the fleet takes.
pub const MAX_IMAGE_BYTES: usize = IMAGE_MAX_BODY_BYTES;

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

/// What a worker generates: stored as JSON in the job hash. A text job has a
/// prompt; an image job has the SHA-256 of its image instead, whose bytes are
/// stored once per content beside the jobs (see [`crate::queue`]), so that a
/// picture sent many times costs its size in Redis once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRequest {
    /// Text prompt: non-empty, at most [`MAX_PROMPT_CHARS`] characters;
    /// empty for an image job.
    pub prompt: String,
    pub seed: Option<u64>,
    #[serde(default)]
    pub format: OutputFormat,
    /// SHA-256 (hex) of the image file's bytes, for an image job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The object's up along +Y (404's competition API); otherwise the
    /// generator's own frame (`save_ply`'s Y-down for TRELLIS), as
    /// single-host `serve` answers the same request.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub y_up: bool,
}

impl JobRequest {
    pub fn validate(&self) -> Result<(), FleetError> {
        if let Some(hash) = &self.image {
            if !self.prompt.is_empty() {
                return Err(FleetError::Request(
                    "a job takes a text prompt or an image, not both".into(),
                ));
            }
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(FleetError::Request(format!(
                    "the image reference '{hash}' is not a SHA-256 in hex"
                )));
            }
            return Ok(());
        }
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

/// The SHA-256 of `bytes` in hex: the name an image is stored under.
pub fn image_hash(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A job as its submitter hands it over: the request to store and, for an
/// image job, the image file's bytes (shared, so that a request's image is
/// not copied on its way to Redis).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    pub request: JobRequest,
    pub image: Option<Arc<Vec<u8>>>,
}

impl Submission {
    pub fn text(prompt: impl Into<String>, seed: Option<u64>, format: OutputFormat) -> Self {
        Submission {
            request: JobRequest {
                prompt: prompt.into(),
                seed,
                format,
                image: None,
                y_up: false,
            },
            image: None,
        }
    }

    /// An image job; its reference is the bytes' SHA-256.
    pub fn image(bytes: Arc<Vec<u8>>, seed: Option<u64>, format: OutputFormat) -> Self {
        Submission {
            request: JobRequest {
                prompt: String::new(),
                seed,
                format,
                image: Some(image_hash(&bytes)),
                y_up: false,
            },
            image: Some(bytes),
        }
    }

    /// With the object's up along +Y (see [`JobRequest::y_up`]).
    pub fn y_up(mut self, y_up: bool) -> Self {
        self.request.y_up = y_up;
        self
    }

    /// The request is valid and its image reference names the bytes it
    /// carries, which are 1 byte to [`MAX_IMAGE_BYTES`].
    pub fn validate(&self) -> Result<(), FleetError> {
        self.request.validate()?;
        match (&self.request.image, &self.image) {
            (None, None) => Ok(()),
            (Some(hash), Some(bytes)) => {
                if bytes.is_empty() {
                    return Err(FleetError::Request("the image is empty".into()));
                }
                if bytes.len() > MAX_IMAGE_BYTES {
                    return Err(FleetError::Request(format!(
                        "the image has {} bytes; at most {MAX_IMAGE_BYTES} ({} MiB) are accepted",
                        bytes.len(),
                        MAX_IMAGE_BYTES >> 20
                    )));
                }
                if *hash != image_hash(bytes) {
                    return Err(FleetError::Request(
                        "the image reference is not the SHA-256 of the image's bytes".into(),
                    ));
                }
                Ok(())
            }
            (Some(_), None) => Err(FleetError::Request(
                "an image job needs the image's bytes".into(),
            )),
            (None, Some(_)) => Err(FleetError::Request(
                "image bytes without an image reference".into(),
            )),
        }
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
    /// `bad_input` when it died because its input cannot be turned into 3D
    /// (an image that does not decode, shows no object, …): no retry, and
    /// the front end answers 400 as single-host `serve` does.
    pub error_kind: Option<String>,
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
        let r = Submission::text("a red chair", Some(7), OutputFormat::Spz).request;
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
    fn image_jobs_carry_their_hash_and_capped_bytes() {
        let s = Submission::image(Arc::new(b"abc".to_vec()), Some(1), OutputFormat::Ply).y_up(true);
        let hash = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(s.request.image.as_deref(), Some(hash));
        s.validate().unwrap();
        let json = serde_json::to_string(&s.request).unwrap();
        assert_eq!(
            json,
            format!(r#"{{"prompt":"","seed":1,"format":"ply","image":"{hash}","y_up":true}}"#)
        );
        assert_eq!(
            serde_json::from_str::<JobRequest>(&json).unwrap(),
            s.request
        );
        let err = |s: Submission| s.validate().unwrap_err().to_string();
        let big = Submission::image(
            Arc::new(vec![0; MAX_IMAGE_BYTES + 1]),
            None,
            OutputFormat::Ply,
        );
        assert!(err(big).contains("at most 33554432 (32 MiB)"));
        assert!(err(Submission::image(
            Arc::new(Vec::new()),
            None,
            OutputFormat::Ply
        ))
        .contains("empty"));
        let mut both = s.clone();
        both.request.prompt = "a chair".into();
        assert!(err(both).contains("not both"));
        let mut forged = s.clone();
        forged.image = Some(Arc::new(b"abd".to_vec()));
        assert!(err(forged).contains("SHA-256"));
        let mut bytes_lost = s;
        bytes_lost.image = None;
        assert!(err(bytes_lost).contains("needs the image's bytes"));
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
