//! Batches: many items submitted at once, tracked together, collected as
//! `{stem}.ply|spz` files plus `_failed.json` (a ZIP over HTTP, a directory
//! from `splatforge submit`).
//!
//! A batch is the hash `{p}:batch:{id}` (`items`: JSON list of
//! [`BatchEntry`], `created_us`); each item is an ordinary job, with id
//! `{batch}.{index}` unless the item names one. Submitting a batch id that
//! exists returns the existing batch, and its jobs are (re)submitted
//! idempotently, so an interrupted submission can simply be repeated. The
//! batch expires [`crate::FleetConfig::result_ttl`] after it is first seen
//! finished.
//!
//! An item is a text prompt or an image: its bytes in base64 (`image`, over
//! HTTP and in `submit`'s file) or a file `submit` reads (`image_path`). The
//! batch stores the images' hashes, never their bytes; each image job holds
//! its picture in Redis only until it finishes (see [`crate::queue`]).

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use splatforge_server::decode_base64_image;

use crate::job::{check_id, now_us, ttl_secs, JobState, OutputFormat, Submission};
use crate::queue::Queue;
use crate::FleetError;

/// Most items in one batch.
pub const MAX_BATCH_ITEMS: usize = 100_000;

/// One item as clients send it (a line of `submit`'s JSONL, or an element
/// of `POST /batches`' list).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchItem {
    pub prompt: Option<String>,
    /// Refused with a clear error: the fleet does not download; send the
    /// bytes (`image`) instead.
    pub image_url: Option<String>,
    /// The image file's bytes in base64 (a `data:image/…;base64,` prefix
    /// and line breaks are fine), for an image profile.
    pub image: Option<String>,
    /// An image file on the submitting machine, relative to the JSONL file:
    /// `splatforge submit` reads it into [`BatchItem::image_file`]; over
    /// HTTP it is refused (the server does not read the client's files).
    pub image_path: Option<PathBuf>,
    /// The bytes `submit` read from `image_path`.
    #[serde(skip)]
    pub image_file: Option<Arc<Vec<u8>>>,
    /// Turn the object's up to +Y (404's competition frame); default: the
    /// generator's own frame, as `/generate/` answers.
    pub y_up: Option<bool>,
    pub seed: Option<u64>,
    /// Default: the front end's (or `submit`'s) profile.
    pub profile: Option<String>,
    /// Default: PLY.
    pub format: Option<OutputFormat>,
    /// Output file name without extension; default: the item's index as
    /// five digits (`00007`).
    pub stem: Option<String>,
    /// Job id (for dedup across batches); default `{batch}.{index}`.
    pub id: Option<String>,
}

/// `POST /batches` takes a list of items or `{"id": …, "items": […]}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum BatchBody {
    Items(Vec<BatchItem>),
    Named {
        id: Option<String>,
        items: Vec<BatchItem>,
    },
}

/// One item as stored with the batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchEntry {
    pub stem: String,
    pub job: String,
    pub format: OutputFormat,
    /// Empty for an image item.
    pub prompt: String,
    /// An image item's file (`image_path`) or `sha256:{hex}` of its bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// A batch's progress (`GET /batches/{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BatchProgress {
    pub id: String,
    pub total: usize,
    pub queued: usize,
    pub running: usize,
    pub done: usize,
    /// Dead, cancelled, or expired before it finished.
    pub failed: usize,
    /// Every item is done or failed.
    pub finished: bool,
}

/// One line of `_failed.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedItem {
    pub stem: String,
    pub id: String,
    pub prompt: String,
    /// An image item's file or `sha256:{hex}` (see [`BatchEntry::image`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    pub error: String,
}

/// A finished batch's files: `{stem}.{ext}` and what failed.
pub struct BatchResults {
    pub files: Vec<(String, Vec<u8>)>,
    pub failed: Vec<FailedItem>,
}

fn request_error(m: impl Into<String>) -> FleetError {
    FleetError::Request(m.into())
}

/// The job an item asks for: exactly one of a prompt, base64 image bytes or
/// an image file `submit` read; its label for the batch's listing.
fn item_job(item: &BatchItem) -> Result<(Submission, Option<String>), String> {
    if item.image_url.is_some() {
        return Err("image_url is not supported: the fleet does not download images; send the file's bytes in base64 as 'image'".into());
    }
    if item.image_path.is_some() && item.image_file.is_none() {
        return Err("image_path names a file on the submitting machine, which only `splatforge submit` reads; send the bytes in base64 as 'image'".into());
    }
    let prompt = item.prompt.as_deref().map(str::trim).unwrap_or_default();
    let format = item.format.unwrap_or_default();
    let given = [
        !prompt.is_empty(),
        item.image.is_some(),
        item.image_path.is_some(),
    ];
    match given.iter().filter(|g| **g).count() {
        0 => return Err("give a text 'prompt', an 'image' (base64) or an 'image_path'".into()),
        1 => {}
        _ => return Err("give one of 'prompt', 'image' and 'image_path', not several".into()),
    }
    let (job, label) = match (&item.image, &item.image_file) {
        (Some(text), _) => {
            let bytes =
                decode_base64_image(text).map_err(|e| format!("'image' is not base64 ({e})"))?;
            let job = Submission::image(Arc::new(bytes), item.seed, format);
            let label = job.request.image.as_ref().map(|h| format!("sha256:{h}"));
            (job, label)
        }
        (None, Some(bytes)) => {
            let label = item.image_path.as_ref().map(|p| p.display().to_string());
            (Submission::image(bytes.clone(), item.seed, format), label)
        }
        (None, None) => (Submission::text(prompt, item.seed, format), None),
    };
    let job = job.y_up(item.y_up.unwrap_or(false));
    job.validate().map_err(|e| match e {
        FleetError::Request(m) => m,
        other => other.to_string(),
    })?;
    Ok((job, label))
}

/// Checks the items and turns them into jobs of batch `batch_id`.
pub fn plan(
    batch_id: &str,
    items: &[BatchItem],
    default_profile: &str,
) -> Result<Vec<(BatchEntry, String, Submission)>, FleetError> {
    check_id(batch_id)?;
    if items.is_empty() {
        return Err(request_error("the batch has no items"));
    }
    if items.len() > MAX_BATCH_ITEMS {
        return Err(request_error(format!(
            "the batch has {} items; at most {MAX_BATCH_ITEMS} are accepted",
            items.len()
        )));
    }
    let mut stems = HashSet::new();
    let mut ids = HashSet::new();
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = |m: String| request_error(format!("item {i}: {m}"));
        let (job, image) = item_job(item).map_err(at)?;
        let stem = item.stem.clone().unwrap_or_else(|| format!("{i:05}"));
        check_id(&stem).map_err(|e| at(e.to_string()))?;
        if stem.starts_with('_') {
            return Err(at(format!(
                "stem '{stem}' starts with '_', which is kept for _failed.json"
            )));
        }
        if !stems.insert(stem.clone()) {
            return Err(at(format!("stem '{stem}' appears twice")));
        }
        let id = item.id.clone().unwrap_or_else(|| format!("{batch_id}.{i}"));
        check_id(&id).map_err(|e| at(e.to_string()))?;
        if !ids.insert(id.clone()) {
            return Err(at(format!("job id '{id}' appears twice")));
        }
        let profile = item
            .profile
            .clone()
            .unwrap_or_else(|| default_profile.to_string());
        check_id(&profile).map_err(|e| at(e.to_string()))?;
        out.push((
            BatchEntry {
                stem,
                job: id,
                format: job.request.format,
                prompt: job.request.prompt.clone(),
                image,
            },
            profile,
            job,
        ));
    }
    Ok(out)
}

fn batch_key(queue: &Queue, id: &str) -> String {
    queue.key(&format!("batch:{id}"))
}

/// Creates batch `batch_id` (or finds it: the stored batch wins over
/// `items`) and submits its jobs. Returns whether it was new.
pub async fn submit_batch(
    queue: &Queue,
    batch_id: &str,
    items: &[BatchItem],
    default_profile: &str,
) -> Result<bool, FleetError> {
    let planned = plan(batch_id, items, default_profile)?;
    let entries: Vec<&BatchEntry> = planned.iter().map(|(e, _, _)| e).collect();
    let json = serde_json::to_string(&entries).map_err(|e| FleetError::Data(e.to_string()))?;
    let key = batch_key(queue, batch_id);
    let (created,): (bool,) = redis::pipe()
        .hset_nx(&key, "items", json)
        .hset_nx(&key, "created_us", now_us())
        .ignore()
        .query_async(&mut queue.con())
        .await?;
    if created {
        for (entry, profile, request) in &planned {
            queue.submit(&entry.job, profile, request).await?;
        }
        return Ok(true);
    }
    // A repeated submission: make sure every stored job was submitted (the
    // first one may have stopped half-way).
    let stored = entries_of(queue, batch_id).await?;
    for (entry, profile, request) in planned
        .iter()
        .filter(|(e, _, _)| stored.iter().any(|s| s.job == e.job))
    {
        queue.submit(&entry.job, profile, request).await?;
    }
    Ok(false)
}

/// The stored items of a batch.
pub async fn entries_of(queue: &Queue, batch_id: &str) -> Result<Vec<BatchEntry>, FleetError> {
    check_id(batch_id)?;
    let items: Option<String> = redis::cmd("HGET")
        .arg(batch_key(queue, batch_id))
        .arg("items")
        .query_async(&mut queue.con())
        .await?;
    let items = items.ok_or_else(|| FleetError::NotFound(format!("batch {batch_id}")))?;
    serde_json::from_str(&items).map_err(|e| FleetError::Data(format!("batch {batch_id}: {e}")))
}

/// Counts the items by state; a finished batch starts to expire.
pub async fn progress(queue: &Queue, batch_id: &str) -> Result<BatchProgress, FleetError> {
    let entries = entries_of(queue, batch_id).await?;
    let ids: Vec<String> = entries.iter().map(|e| e.job.clone()).collect();
    let mut p = BatchProgress {
        id: batch_id.to_string(),
        total: ids.len(),
        queued: 0,
        running: 0,
        done: 0,
        failed: 0,
        finished: false,
    };
    for chunk in ids.chunks(1000) {
        for state in queue.states(chunk).await? {
            match state {
                Some(JobState::Queued) => p.queued += 1,
                Some(JobState::Running) => p.running += 1,
                Some(JobState::Done) => p.done += 1,
                Some(JobState::Dead | JobState::Cancelled) | None => p.failed += 1,
            }
        }
    }
    p.finished = p.done + p.failed == p.total;
    if p.finished {
        let _: i64 = redis::cmd("EXPIRE")
            .arg(batch_key(queue, batch_id))
            .arg(ttl_secs(queue.config().result_ttl))
            .arg("NX")
            .query_async(&mut queue.con())
            .await?;
    }
    Ok(p)
}

/// The files of a finished batch; `Err(Request)` while items are pending.
pub async fn results(queue: &Queue, batch_id: &str) -> Result<BatchResults, FleetError> {
    let p = progress(queue, batch_id).await?;
    if !p.finished {
        return Err(FleetError::Request(format!(
            "batch {batch_id} is not finished: {} of {} items done, {} failed",
            p.done, p.total, p.failed
        )));
    }
    let mut files = Vec::new();
    let mut failed = Vec::new();
    for entry in entries_of(queue, batch_id).await? {
        let fail = |error: String| FailedItem {
            stem: entry.stem.clone(),
            id: entry.job.clone(),
            prompt: entry.prompt.clone(),
            image: entry.image.clone(),
            error,
        };
        match queue.result(&entry.job).await? {
            Some(r) => files.push((format!("{}.{}", entry.stem, r.format.extension()), r.bytes)),
            None => {
                let error = match queue.status(&entry.job).await? {
                    Some(s) => s
                        .error
                        .unwrap_or_else(|| format!("the job is {}", s.state.as_str())),
                    None => "the job expired or was never stored".into(),
                };
                failed.push(fail(error));
            }
        }
    }
    Ok(BatchResults { files, failed })
}

impl BatchResults {
    /// `_failed.json`: the failed items as a JSON list (`[]` when none).
    pub fn failed_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(&self.failed).unwrap_or_else(|_| b"[]".to_vec())
    }

    /// A ZIP of the files and `_failed.json` (deflated).
    pub fn zip(&self) -> Result<Vec<u8>, FleetError> {
        let io = |e: zip::result::ZipError| FleetError::Io {
            context: "writing the ZIP".into(),
            source: std::io::Error::other(e),
        };
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        let failed = self.failed_json();
        for (name, bytes) in self
            .files
            .iter()
            .map(|(n, b)| (n.as_str(), b))
            .chain([("_failed.json", &failed)])
        {
            w.start_file(name, options).map_err(io)?;
            w.write_all(bytes).map_err(|source| FleetError::Io {
                context: "writing the ZIP".into(),
                source,
            })?;
        }
        Ok(w.finish().map_err(io)?.into_inner())
    }

    /// Writes the files and `_failed.json` into `dir` (each to a temporary
    /// file, then renamed).
    pub fn write_dir(&self, dir: &Path) -> Result<(), FleetError> {
        std::fs::create_dir_all(dir).map_err(|source| FleetError::Io {
            context: format!("creating {}", dir.display()),
            source,
        })?;
        let failed = self.failed_json();
        for (name, bytes) in self
            .files
            .iter()
            .map(|(n, b)| (n.as_str(), b))
            .chain([("_failed.json", &failed)])
        {
            let path = dir.join(name);
            splatforge_splat::write_atomic(&path, bytes).map_err(|e| FleetError::Io {
                context: format!("writing {}", path.display()),
                source: std::io::Error::other(e.to_string()),
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(prompt: &str) -> BatchItem {
        BatchItem {
            prompt: Some(prompt.into()),
            ..Default::default()
        }
    }

    #[test]
    fn plans_check_items() {
        let p = plan(
            "b1",
            &[
                item("a chair"),
                BatchItem {
                    stem: Some("car".into()),
                    seed: Some(3),
                    ..item("a car")
                },
            ],
            "speed",
        )
        .unwrap();
        assert_eq!(
            p[0].0,
            BatchEntry {
                stem: "00000".into(),
                job: "b1.0".into(),
                format: OutputFormat::Ply,
                prompt: "a chair".into(),
                image: None,
            }
        );
        assert_eq!(
            (p[1].0.stem.as_str(), p[1].1.as_str(), p[1].2.request.seed),
            ("car", "speed", Some(3))
        );
        let err = |items: &[BatchItem]| plan("b1", items, "speed").unwrap_err().to_string();
        assert!(err(&[]).contains("no items"));
        assert!(err(&[BatchItem {
            image_url: Some("http://x/y.png".into()),
            ..Default::default()
        }])
        .contains("does not download"));
        assert!(err(&[item("")]).contains("item 0"));
        let dup = BatchItem {
            stem: Some("x".into()),
            ..item("a")
        };
        assert!(err(&[dup.clone(), dup]).contains("twice"));
        assert!(err(&[BatchItem {
            stem: Some("../x".into()),
            ..item("a")
        }])
        .contains("[A-Za-z0-9._:-]"));
        assert!(err(&[BatchItem {
            stem: Some("_failed".into()),
            ..item("a")
        }])
        .contains("_failed.json"));
        let body: BatchBody = serde_json::from_str(r#"[{"prompt":"a","format":"spz"}]"#).unwrap();
        assert!(matches!(body, BatchBody::Items(ref v) if v[0].format == Some(OutputFormat::Spz)));
        let body: BatchBody =
            serde_json::from_str(r#"{"id":"x","items":[{"prompt":"a"}]}"#).unwrap();
        assert!(matches!(body, BatchBody::Named { id: Some(ref id), .. } if id == "x"));
        assert!(serde_json::from_str::<BatchItem>(r#"{"prompt":"a","colour":1}"#).is_err());
    }

    #[test]
    fn image_items_carry_bytes_or_files() {
        use base64::Engine;
        let png = b"\x89PNG\r\n\x1a\nfake".to_vec();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
        let hash = crate::job::image_hash(&png);
        let items = [
            BatchItem {
                image: Some(format!("data:image/png;base64,{}", &b64)),
                seed: Some(4),
                y_up: Some(true),
                ..Default::default()
            },
            BatchItem {
                image_path: Some("pics/a.png".into()),
                image_file: Some(Arc::new(png.clone())),
                ..Default::default()
            },
        ];
        let p = plan("b2", &items, "image-speed").unwrap();
        let (entry, _, job) = &p[0];
        assert_eq!(
            entry.image.as_deref(),
            Some(format!("sha256:{hash}").as_str())
        );
        assert_eq!(entry.prompt, "");
        assert_eq!(job.image.as_deref(), Some(&png));
        assert!(job.request.y_up && job.request.seed == Some(4));
        assert_eq!(job.request.image.as_deref(), Some(hash.as_str()));
        assert_eq!(p[1].0.image.as_deref(), Some("pics/a.png"));
        assert!(!p[1].2.request.y_up);
        assert_eq!(p[1].2.request.image, p[0].2.request.image, "stored once");

        let err = |item: BatchItem| plan("b2", &[item], "image-speed").unwrap_err().to_string();
        let over_http = BatchItem {
            image_path: Some("a.png".into()),
            ..Default::default()
        };
        assert!(err(over_http).contains("only `splatforge submit` reads"));
        let both = BatchItem {
            prompt: Some("a chair".into()),
            image: Some(b64),
            ..Default::default()
        };
        assert!(err(both).contains("not several"));
        let broken = BatchItem {
            image: Some("not base64!".into()),
            ..Default::default()
        };
        assert!(err(broken).contains("not base64"));
        assert!(err(BatchItem::default()).contains("give a text 'prompt'"));
        assert!(
            serde_json::from_str::<BatchItem>(r#"{"image_file":"y"}"#).is_err(),
            "image_file is never read from JSON"
        );
    }

    #[test]
    fn zips_hold_the_files_and_the_failures() {
        let r = BatchResults {
            files: vec![("a.ply".into(), b"ply\n...".to_vec())],
            failed: vec![FailedItem {
                stem: "b".into(),
                id: "x.1".into(),
                prompt: "p".into(),
                image: None,
                error: "boom".into(),
            }],
        };
        let zip = r.zip().unwrap();
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip)).unwrap();
        let mut names: Vec<String> = archive
            .file_names()
            .map(|n| n.unwrap().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["_failed.json", "a.ply"]);
        let mut text = String::new();
        std::io::Read::read_to_string(&mut archive.by_name("_failed.json").unwrap(), &mut text)
            .unwrap();
        let failed: Vec<FailedItem> = serde_json::from_str(&text).unwrap();
        assert_eq!(failed, r.failed);
    }
}
