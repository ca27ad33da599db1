//! Worker heartbeats, dead letters and the fleet's snapshot for health and
//! metrics.

use std::collections::BTreeMap;

use redis::Value;
use serde::Serialize;

use crate::FleetError;

use super::{data, Queue, GROUP};

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

fn string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        Value::Okay => Some("OK".into()),
        _ => None,
    }
}

impl Queue {
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

    /// Workers heard from within
    /// [`FleetConfig::worker_liveness`](crate::FleetConfig::worker_liveness).
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
pub(super) fn group_pending(v: &Value) -> Option<u64> {
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
