//! The job life cycle's Lua scripts (each state change atomic) and the
//! workers' heartbeat scripts.

use redis::Script;

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

/// The scripts, loaded once per [`Queue`](super::Queue) and shared by its clones.
pub(super) struct Scripts {
    pub(super) submit: Script,
    pub(super) start: Script,
    pub(super) finish: Script,
    pub(super) fail: Script,
    pub(super) requeue: Script,
    pub(super) keep_alive: Script,
    pub(super) cancel: Script,
    pub(super) heartbeat: Script,
    pub(super) alive: Script,
}

impl Scripts {
    /// Each script, those that drop an image's hold with `release_image` put
    /// before them.
    pub(super) fn new() -> Scripts {
        Scripts {
            submit: Script::new(SUBMIT),
            start: Script::new(START),
            finish: Script::new(&format!("{RELEASE_IMAGE}{FINISH}")),
            fail: Script::new(&format!("{RELEASE_IMAGE}{FAIL}")),
            requeue: Script::new(REQUEUE),
            keep_alive: Script::new(KEEP_ALIVE),
            cancel: Script::new(&format!("{RELEASE_IMAGE}{CANCEL}")),
            heartbeat: Script::new(HEARTBEAT),
            alive: Script::new(ALIVE),
        }
    }
}
