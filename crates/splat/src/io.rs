//! Reading and writing splat files: format detection and atomic writes.

use std::path::{Path, PathBuf};

use crate::ply::{self, PlyWriteOptions};
use crate::spz::{self, SpzFlavor};
use crate::{Gaussians, SplatError};

/// A splat file format, chosen for output by the file extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplatFormat {
    Ply,
    Spz,
}

impl SplatFormat {
    /// The format named by `path`'s extension (`.ply` or `.spz`, any case).
    pub fn from_path(path: &Path) -> Result<SplatFormat, SplatError> {
        let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("ply") => Ok(SplatFormat::Ply),
            Some("spz") => Ok(SplatFormat::Spz),
            _ => Err(SplatError::invalid(format!(
                "{}: unknown splat extension; use .ply or .spz",
                path.display()
            ))),
        }
    }
}

/// How to encode a splat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodeOptions {
    pub format: SplatFormat,
    pub ply: PlyWriteOptions,
    pub spz_flavor: SpzFlavor,
}

impl EncodeOptions {
    pub fn new(format: SplatFormat) -> Self {
        EncodeOptions { format, ply: PlyWriteOptions::default(), spz_flavor: SpzFlavor::NianticV2 }
    }
}

/// Decodes a splat of any supported format, detected from its magic bytes.
pub fn read_splat_bytes(bytes: &[u8]) -> Result<Gaussians, SplatError> {
    if ply::is_ply(bytes) {
        ply::read_ply(bytes)
    } else {
        spz::read_spz(bytes)
    }
}

/// Reads and decodes a splat file.
pub fn read_splat_file(path: &Path) -> Result<Gaussians, SplatError> {
    let bytes = std::fs::read(path).map_err(|e| SplatError::io(path.display(), e))?;
    read_splat_bytes(&bytes).map_err(|e| match e {
        SplatError::Io { .. } => e,
        e => SplatError::invalid(format!("{}: {e}", path.display())),
    })
}

/// Encodes `g` as asked.
pub fn encode_splat(g: &Gaussians, options: &EncodeOptions) -> Result<Vec<u8>, SplatError> {
    match options.format {
        SplatFormat::Ply => ply::write_ply(g, options.ply),
        SplatFormat::Spz => spz::write_spz(g, options.spz_flavor),
    }
}

/// Encodes `g` and writes it to `path` atomically.
pub fn write_splat_file(path: &Path, g: &Gaussians, options: &EncodeOptions) -> Result<(), SplatError> {
    write_atomic(path, &encode_splat(g, options)?)
}

/// Writes `bytes` to `path` through a temporary file in the same directory
/// and a rename, so readers never see a half-written file and a failure
/// leaves any existing file untouched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), SplatError> {
    use std::io::Write;
    let tmp = temp_path_beside(path);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        SplatError::io(format!("writing {}", path.display()), e)
    })
}

fn temp_path_beside(path: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.{}.{unique}.tmp", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gaussians::sample;

    #[test]
    fn atomic_write_replaces_and_failure_leaves_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.ply");
        let g = sample(5, 0);
        write_splat_file(&path, &g, &EncodeOptions::new(SplatFormat::Ply)).unwrap();
        assert_eq!(read_splat_file(&path).unwrap(), g);
        let mut bad = g.clone();
        bad.sh_dc.pop();
        assert!(write_splat_file(&path, &bad, &EncodeOptions::new(SplatFormat::Ply)).is_err());
        assert_eq!(read_splat_file(&path).unwrap(), g);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "temporary files left behind");
        let missing_dir = dir.path().join("no/such/dir/out.ply");
        assert!(write_atomic(&missing_dir, b"x").is_err());
    }

    #[test]
    fn format_from_extension() {
        assert_eq!(SplatFormat::from_path(Path::new("a/B.PLY")).unwrap(), SplatFormat::Ply);
        assert_eq!(SplatFormat::from_path(Path::new("x.spz")).unwrap(), SplatFormat::Spz);
        assert!(SplatFormat::from_path(Path::new("x.obj")).is_err());
    }
}
