//! The Hugging Face cache and hub.
//!
//! Layout (as `huggingface_hub` writes it):
//! `HUB/models--ORG--NAME/refs/REVISION` holds a commit hash and the files
//! are at `HUB/models--ORG--NAME/snapshots/COMMIT/PATH`, where `HUB` is
//! `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`.
//! A file found there is used as is. Otherwise, unless `HF_HUB_OFFLINE` is
//! set (to anything but `0`/`false`/empty), it is downloaded with `hf-hub`'s
//! blocking API into the same cache; the error when it cannot be had names
//! the file and the repository.

use std::path::{Path, PathBuf};

use crate::error::{NnError, Result};

/// Where the hub cache is and whether we may go online.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubConfig {
    /// The `hub` folder (holding `models--…` folders).
    pub cache_dir: PathBuf,
    /// Never touch the network.
    pub offline: bool,
}

fn env_truthy(v: Option<String>) -> bool {
    matches!(v, Some(s) if !s.is_empty() && s != "0" && !s.eq_ignore_ascii_case("false") && !s.eq_ignore_ascii_case("no"))
}

impl HubConfig {
    /// From `HF_HUB_CACHE`, `HF_HOME`, `HOME` and `HF_HUB_OFFLINE`.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|s| !s.is_empty());
        Self::from_vars(
            var("HF_HUB_CACHE"),
            var("HF_HOME"),
            var("HOME"),
            var("HF_HUB_OFFLINE"),
        )
    }

    /// The same rules with explicit values (testable without touching the environment).
    pub fn from_vars(
        hub_cache: Option<String>,
        hf_home: Option<String>,
        home: Option<String>,
        offline: Option<String>,
    ) -> Self {
        let cache_dir = match (hub_cache, hf_home, home) {
            (Some(c), _, _) => PathBuf::from(c),
            (None, Some(h), _) => PathBuf::from(h).join("hub"),
            (None, None, Some(home)) => PathBuf::from(home)
                .join(".cache")
                .join("huggingface")
                .join("hub"),
            (None, None, None) => PathBuf::from(".cache").join("huggingface").join("hub"),
        };
        Self {
            cache_dir,
            offline: env_truthy(offline),
        }
    }

    /// `HUB/models--ORG--NAME`.
    pub fn repo_dir(&self, repo: &str) -> PathBuf {
        self.cache_dir
            .join(format!("models--{}", repo.replace('/', "--")))
    }

    /// The cached file of `repo` at `revision` (a branch/tag with a `refs/`
    /// entry, or a commit hash), if present.
    pub fn cached(&self, repo: &str, revision: &str, file: &str) -> Option<PathBuf> {
        let dir = self.repo_dir(repo);
        let commit = match std::fs::read_to_string(dir.join("refs").join(revision)) {
            Ok(c) => c.trim().to_string(),
            Err(_) => revision.to_string(),
        };
        let p = dir.join("snapshots").join(commit).join(file);
        p.is_file().then_some(p)
    }

    /// How to fetch a file by hand (for error messages).
    pub fn how_to_get(&self, repo: &str, revision: &str, file: &str) -> String {
        let rev = if revision == "main" {
            String::new()
        } else {
            format!(" --revision {revision}")
        };
        format!(
            "download it with `huggingface-cli download {repo} {file}{rev}` (it lands in {}), or from https://huggingface.co/{repo}/blob/{revision}/{file}",
            self.repo_dir(repo).display()
        )
    }

    /// The file from the cache, else downloaded (unless offline).
    pub fn get(&self, repo: &str, revision: &str, file: &str) -> Result<PathBuf> {
        if let Some(p) = self.cached(repo, revision, file) {
            return Ok(p);
        }
        let expected = self
            .repo_dir(repo)
            .join("snapshots")
            .join(revision)
            .join(file);
        if self.offline {
            return Err(NnError::MissingFile {
                file: expected,
                hint: format!(
                    "`{file}` of the Hugging Face repository {repo} is not in the cache and HF_HUB_OFFLINE is set; {}",
                    self.how_to_get(repo, revision, file)
                ),
            });
        }
        self.download(repo, revision, file).map_err(|e| NnError::MissingFile {
            file: expected,
            hint: format!("`{file}` of the Hugging Face repository {repo} could not be downloaded ({e}); {}", self.how_to_get(repo, revision, file)),
        })
    }

    fn download(
        &self,
        repo: &str,
        revision: &str,
        file: &str,
    ) -> std::result::Result<PathBuf, String> {
        use hf_hub::api::sync::ApiBuilder;
        use hf_hub::{Repo, RepoType};
        let api = ApiBuilder::from_env()
            .with_cache_dir(self.cache_dir.clone())
            .with_progress(true)
            .build()
            .map_err(|e| e.to_string())?;
        api.repo(Repo::with_revision(
            repo.to_string(),
            RepoType::Model,
            revision.to_string(),
        ))
        .get(file)
        .map_err(|e| e.to_string())
    }
}

/// A model on the hub named on a command line: `hf:ORG/NAME[@REVISION][:FILE]`
/// (revision `main` when not given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubSpec {
    pub repo: String,
    pub revision: String,
    /// One file of the repository (a single checkpoint), or the whole repository.
    pub file: Option<String>,
}

impl HubSpec {
    /// The spec of `s`, `None` when `s` does not start with `hf:`.
    pub fn parse(s: &str) -> Option<Self> {
        let rest = s.strip_prefix("hf:")?;
        let (repo_rev, file) = match rest.split_once(':') {
            Some((a, f)) => (a, Some(f.to_string())),
            None => (rest, None),
        };
        let (repo, revision) = match repo_rev.split_once('@') {
            Some((r, v)) => (r.to_string(), v.to_string()),
            None => (repo_rev.to_string(), "main".to_string()),
        };
        Some(Self {
            repo,
            revision,
            file,
        })
    }
}

/// Finds files of a model: in a local folder, or in a hub repository.
pub trait FileSource {
    /// The first of `candidates` (paths relative to the model root) that
    /// exists; the error names `candidates[0]` and how to get it.
    fn find(&self, candidates: &[&str]) -> Result<PathBuf>;
    /// Like `find`, `None` when none exists.
    fn find_optional(&self, candidates: &[&str]) -> Option<PathBuf>;
    /// A description for messages.
    fn describe(&self) -> String;
}

/// A local model folder.
#[derive(Debug, Clone)]
pub struct LocalDir {
    pub root: PathBuf,
    /// Appended to missing-file errors (e.g. which repository to download).
    pub hint: String,
}

impl FileSource for LocalDir {
    fn find(&self, candidates: &[&str]) -> Result<PathBuf> {
        self.find_optional(candidates)
            .ok_or_else(|| NnError::MissingFile {
                file: self.root.join(candidates[0]),
                hint: if candidates.len() > 1 {
                    format!(
                        "also looked for {}; {}",
                        candidates[1..].join(", "),
                        self.hint
                    )
                } else {
                    self.hint.clone()
                },
            })
    }

    fn find_optional(&self, candidates: &[&str]) -> Option<PathBuf> {
        candidates
            .iter()
            .map(|c| self.root.join(c))
            .find(|p| p.is_file())
    }

    fn describe(&self) -> String {
        self.root.display().to_string()
    }
}

/// A hub repository through the cache (downloading when allowed).
#[derive(Debug, Clone)]
pub struct HubRepo {
    pub hub: HubConfig,
    pub repo: String,
    pub revision: String,
}

impl FileSource for HubRepo {
    fn find(&self, candidates: &[&str]) -> Result<PathBuf> {
        if let Some(p) = candidates
            .iter()
            .find_map(|c| self.hub.cached(&self.repo, &self.revision, c))
        {
            return Ok(p);
        }
        let mut first_err = None;
        for c in candidates {
            match self.hub.get(&self.repo, &self.revision, c) {
                Ok(p) => return Ok(p),
                Err(e) => {
                    if first_err.is_none() {
                        first_err = Some(e);
                    }
                    if self.hub.offline {
                        break;
                    }
                }
            }
        }
        Err(first_err.expect("at least one candidate"))
    }

    fn find_optional(&self, candidates: &[&str]) -> Option<PathBuf> {
        if let Some(p) = candidates
            .iter()
            .find_map(|c| self.hub.cached(&self.repo, &self.revision, c))
        {
            return Some(p);
        }
        if self.hub.offline {
            return None;
        }
        candidates
            .iter()
            .find_map(|c| self.hub.get(&self.repo, &self.revision, c).ok())
    }

    fn describe(&self) -> String {
        format!("{}@{}", self.repo, self.revision)
    }
}

/// `path`'s parent, or `.`.
pub fn parent_or_dot(path: &Path) -> PathBuf {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_specs() {
        assert_eq!(HubSpec::parse("models/x"), None);
        assert_eq!(
            HubSpec::parse("hf:a/b"),
            Some(HubSpec {
                repo: "a/b".into(),
                revision: "main".into(),
                file: None
            })
        );
        assert_eq!(
            HubSpec::parse("hf:a/b@v1:sub/c.pt"),
            Some(HubSpec {
                repo: "a/b".into(),
                revision: "v1".into(),
                file: Some("sub/c.pt".into())
            })
        );
    }

    #[test]
    fn env_rules() {
        let s = |x: &str| Some(x.to_string());
        let c = HubConfig::from_vars(None, s("/hf"), s("/home/u"), None);
        assert_eq!(c.cache_dir, PathBuf::from("/hf/hub"));
        assert!(!c.offline);
        let c = HubConfig::from_vars(s("/cache"), s("/hf"), s("/home/u"), s("1"));
        assert_eq!(c.cache_dir, PathBuf::from("/cache"));
        assert!(c.offline);
        let c = HubConfig::from_vars(None, None, s("/home/u"), s("0"));
        assert_eq!(c.cache_dir, PathBuf::from("/home/u/.cache/huggingface/hub"));
        assert!(!c.offline);
        assert!(HubConfig::from_vars(None, None, None, s("true")).offline);
        assert!(!HubConfig::from_vars(None, None, None, s("false")).offline);
    }

    #[test]
    fn cache_layout_and_offline_error() {
        let tmp = tempfile::tempdir().unwrap();
        let hub = HubConfig {
            cache_dir: tmp.path().to_path_buf(),
            offline: true,
        };
        let repo_dir = hub.repo_dir("org/name");
        assert!(repo_dir.ends_with("models--org--name"));
        std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
        std::fs::write(repo_dir.join("refs/main"), "abc123\n").unwrap();
        std::fs::create_dir_all(repo_dir.join("snapshots/abc123/unet")).unwrap();
        std::fs::write(repo_dir.join("snapshots/abc123/unet/config.json"), "{}").unwrap();
        assert_eq!(
            hub.cached("org/name", "main", "unet/config.json"),
            Some(repo_dir.join("snapshots/abc123/unet/config.json"))
        );
        // A commit hash works as a revision too.
        assert!(hub
            .cached("org/name", "abc123", "unet/config.json")
            .is_some());
        assert!(hub.get("org/name", "main", "unet/config.json").is_ok());
        let err = hub
            .get("org/name", "main", "vae/config.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains("vae/config.json"), "{err}");
        assert!(err.contains("org/name"), "{err}");
        assert!(err.contains("HF_HUB_OFFLINE"), "{err}");
        let src = HubRepo {
            hub,
            repo: "org/name".into(),
            revision: "main".into(),
        };
        assert!(src
            .find(&["unet/missing.safetensors", "unet/config.json"])
            .is_ok());
        assert!(src.find_optional(&["nope"]).is_none());
    }
}
