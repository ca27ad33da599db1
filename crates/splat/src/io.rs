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
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
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
        EncodeOptions {
            format,
            ply: PlyWriteOptions::default(),
            spz_flavor: SpzFlavor::NianticV2,
        }
    }
}

/// Decodes a splat of any supported format, detected from its content: PLY
/// and SPZ by their magic bytes, then base64 text of either (the 404-GEN
/// miner's transport, whitespace and line breaks allowed, padding optional).
/// Base64 is undone once: base64 of base64 is refused.
pub fn read_splat_bytes(bytes: &[u8]) -> Result<Gaussians, SplatError> {
    if let Some(g) = read_binary_splat(bytes) {
        return g;
    }
    let unknown = || {
        let head: Vec<String> = bytes.iter().take(4).map(|b| format!("{b:02x}")).collect();
        SplatError::malformed(
            "unknown format",
            format!(
                "first bytes [{}]: not PLY, not SPZ (gzip, zstd or NGSP), not base64 of either",
                head.join(" ")
            ),
        )
    };
    let decoded = decode_base64_text(bytes).ok_or_else(unknown)?;
    match read_binary_splat(&decoded) {
        Some(g) => g.map_err(|e| SplatError::malformed("base64 payload", e)),
        None => Err(unknown()),
    }
}

/// A PLY or SPZ file by its magic bytes, decoded; `None` for any other bytes.
fn read_binary_splat(bytes: &[u8]) -> Option<Result<Gaussians, SplatError>> {
    if ply::is_ply(bytes) {
        Some(ply::read_ply(bytes))
    } else if spz::is_spz(bytes) {
        Some(spz::read_spz(bytes))
    } else {
        None
    }
}

/// The bytes that `text` encodes in standard base64 (RFC 4648 alphabet,
/// `=` padding optional, ASCII whitespace ignored); `None` if it is empty or
/// not such text. Allocates at most the input's length.
fn decode_base64_text(text: &[u8]) -> Option<Vec<u8>> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    use base64::Engine;
    const LENIENT_PADDING: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let compact: Vec<u8> = text
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if compact.is_empty() {
        return None;
    }
    LENIENT_PADDING.decode(&compact).ok()
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
pub fn write_splat_file(
    path: &Path,
    g: &Gaussians,
    options: &EncodeOptions,
) -> Result<(), SplatError> {
    write_atomic(path, &encode_splat(g, options)?)
}

/// Writes `bytes` to `path` through a temporary file in the same directory
/// and a rename, so readers never see a half-written file and a failure
/// leaves any existing file untouched. Temporary files that an earlier
/// writer of the same path left when it was killed mid-write are removed
/// first ([`remove_stale_temp_files`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), SplatError> {
    use std::io::Write;
    remove_stale_temp_files(path);
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

/// The temporary file of one write to `path`: `.NAME.PID.N.tmp` beside it,
/// with this process's id and a counter of its writes.
fn temp_path_beside(path: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.{}.{unique}.tmp", std::process::id()))
}

/// Removes the temporary files of [`temp_path_beside`]'s pattern for `path`
/// whose process is no longer running: what a writer killed mid-write left.
/// Those of running processes (concurrent writers) stay. Best effort: a
/// folder that cannot be listed or a file that cannot be removed is left
/// as it is, and the write goes on.
fn remove_stale_temp_files(path: &Path) {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return;
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let prefix = format!(".{name}.");
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(pid_and_counter) = file_name
            .to_str()
            .and_then(|f| f.strip_prefix(&prefix))
            .and_then(|f| f.strip_suffix(".tmp"))
        else {
            continue;
        };
        let Some((pid, counter)) = pid_and_counter.split_once('.') else {
            continue;
        };
        let (Ok(pid), Ok(_)) = (pid.parse::<u32>(), counter.parse::<u64>()) else {
            continue;
        };
        if pid != std::process::id() && !process_is_running(pid) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Whether process `pid` exists. Linux tells through `/proc`; elsewhere we
/// cannot tell without a system library, and answer yes (the file stays).
fn process_is_running(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new("/proc").join(pid.to_string()).exists()
    } else {
        true
    }
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

    /// Fails on the code before issue 17 (item 15): the killed writer's
    /// temporary file stayed.
    #[test]
    fn a_write_removes_temp_files_of_dead_writers_of_the_same_path_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.ply");
        // Above Linux's largest pid (2^22): no process has it.
        let dead = dir.path().join(".out.ply.4194305.0.tmp");
        let live = dir.path().join(format!(
            ".out.ply.{}.0.tmp",
            std::os::unix::process::parent_id()
        ));
        let other_path = dir.path().join(".other.ply.4194305.0.tmp");
        let not_ours = dir.path().join(".out.ply.backup.tmp");
        for p in [&dead, &live, &other_path, &not_ours] {
            std::fs::write(p, b"partial").unwrap();
        }
        write_atomic(&path, b"new").unwrap();
        assert!(!dead.exists(), "the dead writer's temporary file stayed");
        assert!(live.exists() && other_path.exists() && not_ours.exists());
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
    }

    fn base64(bytes: &[u8]) -> Vec<u8> {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .encode(bytes)
            .into_bytes()
    }

    /// Fails on the code before issue 17 (item 1): base64 was refused as
    /// "unknown magic bytes".
    #[test]
    fn reads_base64_of_ply_and_of_every_spz_flavour() {
        let g = sample(20, 2);
        let ply_bytes = crate::ply::write_ply(&g, PlyWriteOptions::default()).unwrap();
        assert_eq!(read_splat_bytes(&base64(&ply_bytes)).unwrap(), g);
        for flavor in [
            SpzFlavor::NianticV2,
            SpzFlavor::NianticV3,
            SpzFlavor::Zstd404,
        ] {
            let spz_bytes = spz::write_spz(&g, flavor).unwrap();
            let direct = read_splat_bytes(&spz_bytes).unwrap();
            assert_eq!(
                read_splat_bytes(&base64(&spz_bytes)).unwrap(),
                direct,
                "{flavor:?}"
            );
        }
        // Line-wrapped, unpadded text with a final newline, as tools write it.
        let mut wrapped: Vec<u8> = base64(&ply_bytes)
            .chunks(76)
            .flat_map(|l| [l, b"\n"].concat())
            .collect();
        while wrapped.ends_with(b"=\n") {
            wrapped.remove(wrapped.len() - 2);
        }
        assert_eq!(read_splat_bytes(&wrapped).unwrap(), g);
    }

    #[test]
    fn undecodable_input_names_what_was_tried() {
        let expected = "not PLY, not SPZ (gzip, zstd or NGSP), not base64 of either";
        for bytes in [
            &b""[..],
            b"\x00\x01garbage",
            b"aGVsbG8gd29ybGQ=",
            b"  \n",
            &base64(&base64(b"ply\n")),
        ] {
            let msg = read_splat_bytes(bytes).unwrap_err().to_string();
            assert!(msg.contains(expected), "{msg}");
        }
        let truncated = crate::ply::write_ply(&sample(20, 2), PlyWriteOptions::default()).unwrap();
        let msg = read_splat_bytes(&base64(&truncated[..truncated.len() / 2]))
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with("base64 payload: PLY: truncated"), "{msg}");
    }

    #[test]
    fn format_from_extension() {
        assert_eq!(
            SplatFormat::from_path(Path::new("a/B.PLY")).unwrap(),
            SplatFormat::Ply
        );
        assert_eq!(
            SplatFormat::from_path(Path::new("x.spz")).unwrap(),
            SplatFormat::Spz
        );
        assert!(SplatFormat::from_path(Path::new("x.obj")).is_err());
    }
}
