//! Records the git commit the server was built from (for `GET /version`).
//! `SPLATFORGE_GIT_HASH` in the environment wins; no git, no hash.

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=SPLATFORGE_GIT_HASH");
    let hash = std::env::var("SPLATFORGE_GIT_HASH")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            // Rebuild when HEAD moves: watch HEAD, the branch it names, and packed-refs.
            if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
                let dir = PathBuf::from(dir);
                for f in ["HEAD", "packed-refs"] {
                    if dir.join(f).exists() {
                        println!("cargo:rerun-if-changed={}", dir.join(f).display());
                    }
                }
                if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
                    if dir.join(&r).exists() {
                        println!("cargo:rerun-if-changed={}", dir.join(r).display());
                    }
                }
            }
            git(&["rev-parse", "--short=12", "HEAD"])
        });
    if let Some(h) = hash {
        println!("cargo:rustc-env=SPLATFORGE_GIT_HASH={h}");
    }
}
