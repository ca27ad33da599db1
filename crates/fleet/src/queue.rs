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

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::streams::{StreamAutoClaimReply, StreamReadReply};
use redis::{Script, Value};
use serde::Serialize;

use crate::job::{
    check_id, now_us, ttl_secs, JobRequest, JobState, JobStatus, OutputFormat, Submission,
};
use crate::{FleetConfig, FleetError};

/// The consumer group every worker joins.
pub const GROUP: &str = "workers";

/// Drops one job's hold on its image (KEYS[n] of the script that includes
/// it, absent for a text job); the last holder deletes the bytes.
const RELEASE_IMAGE: &str = r"
local function release_image(key)
  if key and redis.call('HINCRBY', key, 'refs', -1) <= 0 then redis.call('DEL', key) end
end
";

/// KEYS: job, stream, stats, profiles, [image]. ARGV: id, request, profile,
/// now_us, [image bytes, image hash].
const SUBMIT: &str = r"
local state = redis.call('HGET', KEYS[1], 'state')
if state then return {0, state} end
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'request', ARGV[2], 'profile', ARGV[3], 'state', 'queued',
  'created_us', ARGV[4], 'attempts', 0)
if KEYS[5] then
  redis.call('HSET', KEYS[1], 'image', ARGV[6])
  if redis.call('HINCRBY', KEYS[5], 'refs', 1) == 1 then redis.call('HSET', KEYS[5], 'bytes', ARGV[5]) end
end
redis.call('XADD', KEYS[2], '*', 'job', ARGV[1])
redis.call('HINCRBY', KEYS[3], 'submitted', 1)
redis.call('SADD', KEYS[4], ARGV[3])
return {1, 'queued'}
";

/// KEYS: job, stream. ARGV: worker, now_us, max_attempts, entry, group.
const START: &str = r"
local h = redis.call('HMGET', KEYS[1], 'state', 'request', 'last_error', 'image')
if (not h[1]) or h[1] == 'done' or h[1] == 'dead' or h[1] == 'cancelled' then
  redis.call('XACK', KEYS[2], ARGV[5], ARGV[4])
  redis.call('XDEL', KEYS[2], ARGV[4])
  return {h[1] or 'gone'}
end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
if attempts > tonumber(ARGV[3]) then
  redis.call('HINCRBY', KEYS[1], 'attempts', -1)
  return {'exhausted', tostring(attempts - 1), h[3] or '', h[4] or ''}
end
redis.call('HSET', KEYS[1], 'state', 'running', 'worker', ARGV[1], 'started_us', ARGV[2])
return {'run', h[2], tostring(attempts)}
";

/// KEYS: job, stream, stats, [image]. ARGV: entry, group, now_us, ttl_s,
/// channel, id, result, result_path, format, timings, gaussians, worker.
const FINISH: &str = r"
local state = redis.call('HGET', KEYS[1], 'state')
redis.call('XACK', KEYS[2], ARGV[2], ARGV[1])
redis.call('XDEL', KEYS[2], ARGV[1])
if state ~= 'running' and state ~= 'queued' then
  redis.call('HINCRBY', KEYS[3], 'duplicate_runs', 1)
  return 0
end
redis.call('HSET', KEYS[1], 'state', 'done', 'finished_us', ARGV[3], 'result', ARGV[7], 'result_path', ARGV[8],
  'format', ARGV[9], 'timings', ARGV[10], 'gaussians', ARGV[11], 'worker', ARGV[12])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('HINCRBY', KEYS[3], 'completed', 1)
release_image(KEYS[4])
redis.call('PUBLISH', ARGV[5], ARGV[6])
return 1
";

/// KEYS: job, stream, stats, dead, [image]. ARGV: entry, group, now_us,
/// ttl_s, channel, id, error, max_attempts, worker, mode (`retry`: again
/// while attempts remain; `give_up`; `bad_input`: dead at once, kind
/// recorded).
const FAIL: &str = r"
local h = redis.call('HMGET', KEYS[1], 'state', 'attempts')
redis.call('XACK', KEYS[2], ARGV[2], ARGV[1])
redis.call('XDEL', KEYS[2], ARGV[1])
if h[1] ~= 'running' and h[1] ~= 'queued' then return 'ignored' end
local attempts = tonumber(h[2] or '0')
redis.call('HSET', KEYS[1], 'last_error', ARGV[7], 'worker', ARGV[9])
if ARGV[10] == 'retry' and attempts < tonumber(ARGV[8]) then
  redis.call('HSET', KEYS[1], 'state', 'queued')
  redis.call('XADD', KEYS[2], '*', 'job', ARGV[6])
  redis.call('HINCRBY', KEYS[3], 'retries', 1)
  return 'retried'
end
redis.call('HSET', KEYS[1], 'state', 'dead', 'finished_us', ARGV[3], 'error', ARGV[7])
if ARGV[10] == 'bad_input' then redis.call('HSET', KEYS[1], 'error_kind', 'bad_input') end
redis.call('EXPIRE', KEYS[1], ARGV[4])
release_image(KEYS[5])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', 100000, '*', 'job', ARGV[6], 'error', ARGV[7], 'attempts', tostring(attempts))
redis.call('HINCRBY', KEYS[3], 'dead', 1)
redis.call('PUBLISH', ARGV[5], ARGV[6])
return 'dead'
";

/// A worker stopping mid-job puts it back without counting the attempt.
/// KEYS: job, stream. ARGV: entry, group, id.
const REQUEUE: &str = r"
redis.call('XACK', KEYS[2], ARGV[2], ARGV[1])
redis.call('XDEL', KEYS[2], ARGV[1])
if redis.call('HGET', KEYS[1], 'state') == 'running' then
  redis.call('HINCRBY', KEYS[1], 'attempts', -1)
  redis.call('HSET', KEYS[1], 'state', 'queued')
  redis.call('XADD', KEYS[2], '*', 'job', ARGV[3])
end
return 1
";

/// KEYS: stream, job. ARGV: group, entry, consumer. Refreshes the entry's
/// idle time only while this consumer holds it and the job runs.
const KEEP_ALIVE: &str = r"
local state = redis.call('HGET', KEYS[2], 'state')
if state == 'cancelled' then return 'cancelled' end
if state ~= 'running' then return 'lost' end
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #p == 0 or p[1][2] ~= ARGV[3] then return 'lost' end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'JUSTID')
return 'owned'
";

/// KEYS: job, [image]. ARGV: ttl_s.
const CANCEL: &str = r"
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'queued' or state == 'running' then
  redis.call('HSET', KEYS[1], 'state', 'cancelled')
  redis.call('EXPIRE', KEYS[1], ARGV[1])
  release_image(KEYS[2])
  return 1
end
return 0
";

/// KEYS: workers zset, worker key. ARGV: name, info, ttl_ms. Scored by
/// Redis's clock, so that the machines' clocks need not agree.
const HEARTBEAT: &str = r"
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], ms, ARGV[1])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms - 86400000)
return ms
";

/// KEYS: workers zset. ARGV: liveness_ms, worker key prefix. Returns
/// name, info pairs of the workers heard from within the window.
const ALIVE: &str = r"
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local names = redis.call('ZRANGEBYSCORE', KEYS[1], ms - tonumber(ARGV[1]), '+inf')
local out = {}
for _, n in ipairs(names) do
  table.insert(out, n)
  table.insert(out, redis.call('GET', ARGV[2] .. n) or '{}')
end
return out
";

struct Scripts {
    submit: Script,
    start: Script,
    finish: Script,
    fail: Script,
    requeue: Script,
    keep_alive: Script,
    cancel: Script,
    heartbeat: Script,
    alive: Script,
}

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

/// What a worker hands back for [`Queue::finish`].
#[derive(Debug, Clone)]
pub struct Finished {
    pub format: OutputFormat,
    pub bytes: Vec<u8>,
    pub timings: Vec<(String, Duration)>,
    pub gaussians: u64,
}

/// One worker process as its heartbeat describes it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, Default)]
pub struct WorkerInfo {
    pub name: String,
    pub host: String,
    pub pid: u32,
    pub profile: String,
    pub devices: Vec<u32>,
    /// Jobs it can run at once.
    pub slots: usize,
    pub running: usize,
    pub completed: u64,
    pub failed: u64,
}

/// Queue depth of one profile's stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProfileDepth {
    pub profile: String,
    /// Entries not yet delivered to any worker.
    pub waiting: u64,
    /// Delivered and not acknowledged: running, or held by a dead worker.
    pub in_flight: u64,
}

/// The fleet at one moment, for `/health` and `/metrics`.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Snapshot {
    pub profiles: Vec<ProfileDepth>,
    /// Counters from `{p}:stats`.
    pub counters: BTreeMap<String, u64>,
    pub dead_letters: u64,
    pub workers: Vec<WorkerInfo>,
}

fn data(m: impl Into<String>) -> FleetError {
    FleetError::Data(m.into())
}

fn string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        Value::Okay => Some("OK".into()),
        _ => None,
    }
}

fn timings_json(t: &[(String, Duration)]) -> String {
    let pairs: Vec<(&str, f64)> = t
        .iter()
        .map(|(s, d)| (s.as_str(), d.as_secs_f64()))
        .collect();
    serde_json::to_string(&pairs).unwrap_or_else(|_| "[]".into())
}

impl Queue {
    /// Connects (retrying for a few seconds while Redis starts).
    pub async fn connect(config: FleetConfig) -> Result<Queue, FleetError> {
        config.validate()?;
        let client = redis::Client::open(config.redis_url.as_str())?;
        let con = ConnectionManager::new(client.clone()).await?;
        let scripts = Scripts {
            submit: Script::new(SUBMIT),
            start: Script::new(START),
            finish: Script::new(&format!("{RELEASE_IMAGE}{FINISH}")),
            fail: Script::new(&format!("{RELEASE_IMAGE}{FAIL}")),
            requeue: Script::new(REQUEUE),
            keep_alive: Script::new(KEEP_ALIVE),
            cancel: Script::new(&format!("{RELEASE_IMAGE}{CANCEL}")),
            heartbeat: Script::new(HEARTBEAT),
            alive: Script::new(ALIVE),
        };
        Ok(Queue {
            config: Arc::new(config),
            client,
            con,
            scripts: Arc::new(scripts),
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

    /// The bytes of a queued or running job's image, `None` once no such
    /// job holds it.
    pub async fn image(&self, hash: &str) -> Result<Option<Vec<u8>>, FleetError> {
        Ok(redis::cmd("HGET")
            .arg(self.image_key(hash))
            .arg("bytes")
            .query_async(&mut self.con())
            .await?)
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
    /// [`FleetConfig::claim_after`] (its worker died), if any.
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
    /// [`FleetConfig::inline_limit`] are written to the results directory
    /// first (temporary file, then rename). Returns `false` when the job had
    /// already finished elsewhere or was cancelled (nothing stored). `image`:
    /// the job's image hash (its hold on the bytes ends here).
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

    /// The latest dead letters, newest first: (job id, error, attempts).
    pub async fn dead_letters(
        &self,
        count: usize,
    ) -> Result<Vec<(String, String, u32)>, FleetError> {
        let reply: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(self.dead_key())
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.con())
            .await?;
        Ok(reply
            .ids
            .into_iter()
            .map(|e| {
                let job = e.get::<String>("job").unwrap_or_default();
                let error = e.get::<String>("error").unwrap_or_default();
                let attempts = e
                    .get::<String>("attempts")
                    .and_then(|a| a.parse().ok())
                    .unwrap_or(0);
                (job, error, attempts)
            })
            .collect())
    }

    /// Announces a live worker (call every second).
    pub async fn heartbeat(&self, info: &WorkerInfo) -> Result<(), FleetError> {
        let json = serde_json::to_string(info).map_err(|e| data(e.to_string()))?;
        let _: i64 = self
            .scripts
            .heartbeat
            .key(self.key("workers"))
            .key(self.key(&format!("worker:{}", info.name)))
            .arg(&info.name)
            .arg(json)
            .arg(self.config.worker_liveness.as_millis() as u64)
            .invoke_async(&mut self.con())
            .await?;
        Ok(())
    }

    /// Removes a worker that is stopping cleanly.
    pub async fn remove_worker(&self, name: &str) -> Result<(), FleetError> {
        let _: () = redis::pipe()
            .zrem(self.key("workers"), name)
            .ignore()
            .del(self.key(&format!("worker:{name}")))
            .ignore()
            .query_async(&mut self.con())
            .await?;
        Ok(())
    }

    /// Workers heard from within [`FleetConfig::worker_liveness`].
    pub async fn alive_workers(&self) -> Result<Vec<WorkerInfo>, FleetError> {
        let v: Vec<String> = self
            .scripts
            .alive
            .key(self.key("workers"))
            .arg(self.config.worker_liveness.as_millis() as u64)
            .arg(self.key("worker:"))
            .invoke_async(&mut self.con())
            .await?;
        Ok(v.chunks(2)
            .map(|p| {
                let mut info: WorkerInfo = serde_json::from_str(&p[1]).unwrap_or_default();
                info.name = p[0].clone();
                info
            })
            .collect())
    }

    /// Depths, counters, dead letters and live workers.
    pub async fn snapshot(&self) -> Result<Snapshot, FleetError> {
        let mut con = self.con();
        let mut profiles: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.key("profiles"))
            .query_async(&mut con)
            .await?;
        profiles.sort();
        let mut depths = Vec::with_capacity(profiles.len());
        for profile in profiles {
            let stream = self.stream_key(&profile);
            let (len, pending): (u64, Value) = redis::pipe()
                .cmd("XLEN")
                .arg(&stream)
                .cmd("XINFO")
                .arg("GROUPS")
                .arg(&stream)
                .query_async(&mut con)
                .await
                .or_else(|e| {
                    if e.code() == Some("ERR") {
                        Ok((0, Value::Nil))
                    } else {
                        Err(e)
                    }
                })?;
            let in_flight = group_pending(&pending).unwrap_or(0);
            depths.push(ProfileDepth {
                profile,
                waiting: len.saturating_sub(in_flight),
                in_flight,
            });
        }
        let counters: BTreeMap<String, u64> = redis::cmd("HGETALL")
            .arg(self.key("stats"))
            .query_async(&mut con)
            .await?;
        let dead_letters: u64 = redis::cmd("XLEN")
            .arg(self.dead_key())
            .query_async(&mut con)
            .await?;
        let workers = self.alive_workers().await?;
        Ok(Snapshot {
            profiles: depths,
            counters,
            dead_letters,
            workers,
        })
    }
}

/// The `pending` count of the group `workers` in an `XINFO GROUPS` reply
/// (RESP2: a list of flat field/value lists; RESP3: maps).
fn group_pending(v: &Value) -> Option<u64> {
    let Value::Array(groups) = v else { return None };
    groups.iter().find_map(|g| {
        let fields: Vec<(String, &Value)> = match g {
            Value::Array(kv) => kv
                .chunks(2)
                .filter_map(|p| Some((string(&p[0])?, p.get(1)?)))
                .collect(),
            Value::Map(kv) => kv
                .iter()
                .filter_map(|(k, v)| Some((string(k)?, v)))
                .collect(),
            _ => return None,
        };
        let name = fields
            .iter()
            .find(|(k, _)| k == "name")
            .and_then(|(_, v)| string(v))?;
        if name != GROUP {
            return None;
        }
        fields
            .iter()
            .find(|(k, _)| k == "pending")
            .and_then(|(_, v)| string(v))
            .and_then(|s| s.parse().ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_from_xinfo_groups() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let v = Value::Array(vec![
            Value::Array(vec![
                bulk("name"),
                bulk("other"),
                bulk("pending"),
                Value::Int(9),
            ]),
            Value::Array(vec![
                bulk("name"),
                bulk(GROUP),
                bulk("consumers"),
                Value::Int(2),
                bulk("pending"),
                Value::Int(3),
            ]),
        ]);
        assert_eq!(group_pending(&v), Some(3));
        assert_eq!(group_pending(&Value::Nil), None);
        assert_eq!(
            timings_json(&[("fit".into(), Duration::from_millis(1500))]),
            r#"[["fit",1.5]]"#
        );
    }
}
