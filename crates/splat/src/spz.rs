//! SPZ (Niantic's compressed splat format) and 404-GEN's zstd variant.
//!
//! # Layout
//!
//! A v2/v3 SPZ *payload* is a 16-byte little-endian header — `u32` magic
//! `0x5053474e` ("NGSP"), `u32` version, `u32` point count, `u8` SH degree,
//! `u8` fractional bits, `u8` flags (`0x1` antialiased, `0x2` extensions),
//! `u8` reserved — followed by six attribute planes, each for all points in
//! turn: positions (3 × 24-bit signed fixed point), alphas (1 byte), colours
//! (3 bytes), scales (3 bytes), rotations (3 bytes in v2, 4 in v3) and the
//! higher-order SH coefficients (`[point][coefficient][channel]`, 1 byte
//! each). The quantisation formulas, each with its source, are in the
//! private submodule `spz/codec.rs`.
//!
//! The file wraps the payload in a compressor, detected here from the first
//! bytes, never from the file name:
//!
//! | first bytes | container | written by |
//! |---|---|---|
//! | `1f 8b` | gzip of the whole payload | Niantic (`saveSpz`, versions 2 and 3) |
//! | `28 b5 2f fd` | zstd of the whole payload | 404-GEN (`404-Repo/spz`, `pyspz.compress`: v2 payload) |
//! | `4e 47 53 50`, version 4 | NGSP v4: 32-byte plain header, table of contents, one zstd stream per plane | Niantic SPZ 4 |
//! | `4e 47 53 50`, version 2/3 | an uncompressed payload (read only; no writer produces it) | — |
//!
//! # Values
//!
//! Reading yields pre-activation values exactly like a 3DGS PLY: positions,
//! log scales, `(w, x, y, z)` quaternions (Niantic stores `x, y, z, w`;
//! we reorder), opacity logits (inverse sigmoid of `alpha / 255`, with the
//! byte clamped to 0.25..254.75 so that 0 and 255 give finite logits that
//! re-encode to 0 and 255; Niantic clamps to 1..254) and SH coefficients.
//! Decoding and re-encoding a v2 file written with Niantic's default
//! settings normally gives back the same payload (the robocop fixture does,
//! byte for byte); v3 can differ in the rotation of a near-tie.
//!
//! **Coordinates are taken as stored, with no axis flips.** Niantic's
//! library *can* convert between coordinate systems on save/load (its README
//! says SPZ is RUB while PLY is usually RDF), but only when the caller names
//! them; with the default `UNSPECIFIED` it packs and unpacks values as-is.
//! 404-GEN's fork has no conversion at all: `pyspz.compress` packs the 3DGS
//! PLY straight through and `pyspz.decompress` unpacks the same way. So 404
//! files hold PLY (RDF) coordinates, and a PLY → SPZ → PLY trip through this
//! module is axis-preserving, like theirs. A Niantic file written with
//! `from = RDF` would read here with y and z negated relative to the PLY
//! it came from.
//!
//! # Robustness
//!
//! Every decoder checks the header before decompressing anything, caps the
//! point count at [`MAX_POINTS`], refuses a header whose payload could only
//! come from a compression ratio above [`MAX_COMPRESSION_RATIO`] (once the
//! payload exceeds [`RATIO_FREE_PAYLOAD`]), and decompresses through a
//! `take(expected + 1)` limit, so memory follows what the input really
//! decompresses to, never a count field. Truncation gives
//! [`SplatError::Truncated`]; anything else wrong gives
//! [`SplatError::Malformed`]. (The ratio rule means a splat bigger than
//! 64 MiB that is so repetitive it compresses over 1024× — no real capture
//! does — can be written but not read back.)
//!
//! **Trailing data is rejected:** bytes after the compressed stream, or
//! decompressed bytes beyond the planes the header announces, are an error —
//! with one exception: when the header's extensions flag (`0x2`) is set, the
//! v2/v3 payload may end with Niantic extension records
//! (`u32 type, u32 length, payload`, at most [`MAX_EXTENSION_BYTES`]), which
//! are checked for structure and then ignored. In v4 the extension block
//! between the header and the table of contents is skipped unread.
//!
//! # v4
//!
//! v4 support follows Niantic's `loadPackedGaussiansFromNgsp` /
//! `decompressNgspStreams` as found in a vendored copy of Niantic's
//! `load-spz.cc` (the copy of `nianticlabs/spz` we could read predates v4)
//! (`NgspFileHeader`: magic, version, count, SH degree, fractional bits,
//! flags, `u8` stream count, `u32` TOC offset, 12 reserved bytes; TOC of
//! `u64` compressed and uncompressed sizes; streams back to back after the
//! TOC in plane order, empty planes omitted, ending exactly at end of file).
//! We read v4 but do not write it. SH degree 4 (allowed by v3+ Niantic
//! files) is refused: [`Gaussians`] holds degrees 0 to 3.

use std::io::Read;

use crate::{Gaussians, SplatError};

mod codec;
#[cfg(test)]
mod tests;

use codec::{Layout, LegacyHeader, FLAG_ANTIALIASED, FLAG_EXTENSIONS, LEGACY_HEADER_LEN, MAGIC};

/// Most points a file may claim (read) or hold (write).
pub const MAX_POINTS: usize = 100_000_000;
/// Largest decompressed-to-compressed size ratio we believe. Real splat
/// payloads compress by 1.2–3× (robocop: 1.5×), deflate cannot exceed about
/// 1032×, and Niantic's v4 loader uses 1024 too.
pub const MAX_COMPRESSION_RATIO: usize = 1024;
/// Payloads up to this size are accepted whatever their compression ratio
/// (so tiny or highly repetitive splats still load).
pub const RATIO_FREE_PAYLOAD: usize = 64 << 20;
/// Most bytes of extension records accepted at the end of a v2/v3 payload.
pub const MAX_EXTENSION_BYTES: usize = 1 << 20;
/// zstd level of [`SpzFlavor::Zstd404`]. The 404-GEN fixture
/// (`robocop-with-hammer.spz`, 3,472,162 bytes) is about the size level 3
/// gives (3,436,237 bytes here; multithreaded zstd packs slightly worse),
/// not level 1, `pyspz.compress`'s default (3,731,353 bytes); level 3 takes
/// ~30 ms for it.
pub const ZSTD_LEVEL: i32 = 3;
/// gzip level of the Niantic flavours. Niantic writes zlib's default, 6;
/// with flate2's pure-Rust backend that takes 0.5–1 s for a 5 MB payload
/// (robocop) and saves only 6 % over level 1 (~70 ms), which keeps an
/// SPZ → SPZ conversion well under half a second. Any level reads the same.
pub const GZIP_LEVEL: u32 = 1;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
const NGSP_MAGIC: [u8; 4] = MAGIC.to_le_bytes();
const V4_HEADER_LEN: usize = 32;

/// Which SPZ variant to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpzFlavor {
    /// Niantic SPZ v2, gzip-compressed.
    NianticV2,
    /// Niantic SPZ v3, gzip-compressed, "smallest three" rotations.
    NianticV3,
    /// 404-GEN: the SPZ v2 layout compressed with zstd instead of gzip.
    Zstd404,
}

/// How an SPZ file is wrapped, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpzContainer {
    /// The whole v2/v3 payload gzip-compressed (Niantic).
    Gzip,
    /// The whole v2/v3 payload zstd-compressed (404-GEN).
    Zstd,
    /// NGSP v4: plain header and table of contents, zstd per attribute.
    NgspV4,
    /// A v2/v3 payload with no compression.
    Uncompressed,
}

/// What the header of an SPZ file says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpzInfo {
    pub container: SpzContainer,
    pub version: u32,
    pub num_points: u32,
    pub sh_degree: u8,
    pub fractional_bits: u8,
    /// Header flag `0x1`: trained with mip-splatting antialiasing. Not kept
    /// in [`Gaussians`]; written as unset.
    pub antialiased: bool,
    /// Header flag `0x2`: extension records present (ignored).
    pub has_extensions: bool,
}

/// The container `bytes` would be read as, from its magic bytes alone; `None`
/// if it is none of them. Gzip and zstd magic say nothing about the
/// content, so `Some` does not promise a valid SPZ file.
pub fn detect_container(bytes: &[u8]) -> Option<SpzContainer> {
    if bytes.starts_with(&GZIP_MAGIC) {
        Some(SpzContainer::Gzip)
    } else if bytes.starts_with(&ZSTD_MAGIC) {
        Some(SpzContainer::Zstd)
    } else if bytes.starts_with(&NGSP_MAGIC) {
        match bytes.get(4..8).map(|v| codec::u32_at(v, 0)) {
            Some(4) => Some(SpzContainer::NgspV4),
            _ => Some(SpzContainer::Uncompressed),
        }
    } else {
        None
    }
}

/// Whether `bytes` starts like an SPZ file of any supported container
/// (see [`detect_container`] for how little that promises).
pub fn is_spz(bytes: &[u8]) -> bool {
    detect_container(bytes).is_some()
}

/// Decodes any supported SPZ variant, detected from its magic bytes.
pub fn read_spz(bytes: &[u8]) -> Result<Gaussians, SplatError> {
    read_spz_with_info(bytes).map(|(g, _)| g)
}

/// Decodes any supported SPZ variant and also returns what its header says.
pub fn read_spz_with_info(bytes: &[u8]) -> Result<(Gaussians, SpzInfo), SplatError> {
    let container = detect_container(bytes).ok_or_else(|| {
        let head: Vec<String> = bytes.iter().take(4).map(|b| format!("{b:02x}")).collect();
        SplatError::malformed(
            "SPZ",
            format!(
                "unknown magic bytes [{}]: expected gzip (1f 8b), zstd (28 b5 2f fd) or NGSP",
                head.join(" ")
            ),
        )
    })?;
    let (header, layout, body) = match container {
        SpzContainer::Gzip => read_legacy(
            flate2::bufread::MultiGzDecoder::new(bytes),
            bytes.len(),
            "gzip",
        )?,
        SpzContainer::Zstd => {
            let dec = zstd::stream::read::Decoder::with_buffer(bytes)
                .map_err(|e| SplatError::malformed("SPZ", format!("cannot start zstd: {e}")))?;
            read_legacy(dec, bytes.len(), "zstd")?
        }
        SpzContainer::Uncompressed => read_legacy(bytes, bytes.len(), "uncompressed")?,
        SpzContainer::NgspV4 => read_v4(bytes)?,
    };
    let g = codec::decode_body(layout, header.fractional_bits, &body);
    let info = SpzInfo {
        container,
        version: header.version,
        num_points: header.num_points,
        sh_degree: header.sh_degree,
        fractional_bits: header.fractional_bits,
        antialiased: header.flags & FLAG_ANTIALIASED != 0,
        has_extensions: header.flags & FLAG_EXTENSIONS != 0,
    };
    Ok((g, info))
}

/// Encodes `g` as SPZ of the given flavour, with no header flags.
///
/// Positions use 12 fractional bits (steps of 1/4096, Niantic's default)
/// when all coordinates lie within ±2048 units; a larger splat gets the most
/// fractional bits that still fit the 24-bit range (11 for ±4096, …), which
/// every reader honours, so any splat [`read_spz`] returns can be written
/// again. Fails on inconsistent arrays, non-finite values, zero quaternions
/// and coordinates of magnitude 2^23 or more. Other out-of-range values
/// clamp to their byte range, as in Niantic's writer (log scales to
/// -10..5.94, SH DC to about ±3.33, higher SH to about ±1).
pub fn write_spz(g: &Gaussians, flavor: SpzFlavor) -> Result<Vec<u8>, SplatError> {
    g.check_consistent()?;
    let version = match flavor {
        SpzFlavor::NianticV2 | SpzFlavor::Zstd404 => 2,
        SpzFlavor::NianticV3 => 3,
    };
    let payload = codec::encode_payload(g, version)?;
    let io_err = |e| SplatError::io("compressing SPZ", e);
    match flavor {
        SpzFlavor::NianticV2 | SpzFlavor::NianticV3 => {
            use std::io::Write;
            let mut enc = flate2::write::GzEncoder::new(
                Vec::with_capacity(payload.len() / 2),
                flate2::Compression::new(GZIP_LEVEL),
            );
            enc.write_all(&payload).map_err(io_err)?;
            enc.finish().map_err(io_err)
        }
        // Single-shot compression records the content size in the frame
        // header, which 404's decoder relies on to size its buffer.
        SpzFlavor::Zstd404 => zstd::bulk::compress(&payload, ZSTD_LEVEL).map_err(io_err),
    }
}

// ---------------------------------------------------------------------------

/// Maps a decompression error: an early end is truncation, the rest corruption.
fn stream_error(e: std::io::Error, what: &str) -> SplatError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        SplatError::truncated("SPZ", format!("the {what} stream ends early"))
    } else {
        SplatError::malformed("SPZ", format!("corrupt {what} stream: {e}"))
    }
}

/// Rejects a payload that could only come from an implausible compression ratio.
fn check_ratio(payload_len: usize, input_len: usize) -> Result<(), SplatError> {
    if payload_len > RATIO_FREE_PAYLOAD && payload_len / MAX_COMPRESSION_RATIO > input_len {
        return Err(SplatError::malformed(
            "SPZ",
            format!(
                "header announces {payload_len} bytes of data in a {input_len}-byte file, \
                 a compression ratio above {MAX_COMPRESSION_RATIO}"
            ),
        ));
    }
    Ok(())
}

/// Reads up to `limit` bytes from `r`, growing the buffer only as data arrives.
fn read_limited(
    r: impl Read,
    limit: usize,
    expected: usize,
    input_len: usize,
    what: &str,
) -> Result<Vec<u8>, SplatError> {
    let mut out =
        Vec::with_capacity(expected.min(input_len.saturating_mul(4).saturating_add(4096)));
    r.take(limit as u64)
        .read_to_end(&mut out)
        .map_err(|e| stream_error(e, what))?;
    Ok(out)
}

/// Decompresses (or reads) a v2/v3 payload: header first, then exactly the
/// planes it announces, plus extension records when flagged.
fn read_legacy(
    mut r: impl Read,
    input_len: usize,
    what: &str,
) -> Result<(LegacyHeader, Layout, Vec<u8>), SplatError> {
    let mut head = [0u8; LEGACY_HEADER_LEN];
    let mut got = 0;
    while got < head.len() {
        match r.read(&mut head[got..]) {
            Ok(0) => {
                return Err(SplatError::truncated(
                    "SPZ",
                    format!("{got} bytes of data, less than the {LEGACY_HEADER_LEN}-byte header"),
                ))
            }
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(stream_error(e, what)),
        }
    }
    let header = LegacyHeader::parse(&head)?;
    let layout = header.layout();
    let body_len = layout
        .body_len()
        .ok_or_else(|| SplatError::malformed("SPZ", "point count overflows the payload size"))?;
    check_ratio(body_len, input_len)?;
    let has_ext = header.flags & FLAG_EXTENSIONS != 0;
    let slack = if has_ext { MAX_EXTENSION_BYTES } else { 0 };
    let mut body = read_limited(r, body_len + slack + 1, body_len, input_len, what)?;
    if body.len() < body_len {
        return Err(SplatError::truncated(
            "SPZ",
            format!(
                "{} points of {} bytes need {body_len} bytes after the header, found {}",
                header.num_points,
                layout.bytes_per_point(),
                body.len()
            ),
        ));
    }
    if body.len() > body_len {
        let extra = &body[body_len..];
        if !has_ext {
            let more = if extra.len() > slack { "at least " } else { "" };
            return Err(SplatError::malformed(
                "SPZ",
                format!(
                    "{more}{} unexpected bytes after the {} points the header announces",
                    extra.len(),
                    header.num_points
                ),
            ));
        }
        check_extension_records(extra)?;
        body.truncate(body_len);
    }
    Ok((header, layout, body))
}

/// Checks that `b` is a whole number of `u32 type, u32 length, payload` records.
fn check_extension_records(mut b: &[u8]) -> Result<(), SplatError> {
    if b.len() > MAX_EXTENSION_BYTES {
        return Err(SplatError::malformed(
            "SPZ",
            format!("extension records longer than {MAX_EXTENSION_BYTES} bytes"),
        ));
    }
    while !b.is_empty() {
        if b.len() < 8 {
            return Err(SplatError::malformed(
                "SPZ",
                "extension records end inside a record header",
            ));
        }
        let len = codec::u32_at(b, 4) as usize;
        if len > b.len() - 8 {
            return Err(SplatError::malformed(
                "SPZ",
                format!(
                    "extension record of type {:#010x} overruns the payload",
                    codec::u32_at(b, 0)
                ),
            ));
        }
        b = &b[8 + len..];
    }
    Ok(())
}

/// Reads an NGSP v4 file: plain 32-byte header, optional extension block,
/// table of contents, then one zstd stream per non-empty plane.
fn read_v4(bytes: &[u8]) -> Result<(LegacyHeader, Layout, Vec<u8>), SplatError> {
    if bytes.len() < V4_HEADER_LEN {
        return Err(SplatError::truncated(
            "SPZ",
            format!(
                "{} bytes, less than the {V4_HEADER_LEN}-byte v4 header",
                bytes.len()
            ),
        ));
    }
    let header = LegacyHeader {
        version: codec::u32_at(bytes, 4),
        num_points: codec::u32_at(bytes, 8),
        sh_degree: bytes[12],
        fractional_bits: bytes[13],
        flags: bytes[14],
    };
    let num_streams = bytes[15] as usize;
    let toc_offset = codec::u32_at(bytes, 16) as usize;
    header.check_common()?;
    let layout = header.layout();
    let body_len = layout
        .body_len()
        .ok_or_else(|| SplatError::malformed("SPZ", "point count overflows the payload size"))?;
    check_ratio(body_len, bytes.len())?;
    let planes: Vec<usize> = layout.plane_lens().into_iter().filter(|&l| l > 0).collect();
    if num_streams != planes.len() {
        return Err(SplatError::malformed(
            "SPZ",
            format!(
                "v4 header lists {num_streams} streams; {} points of SH degree {} need {}",
                header.num_points,
                header.sh_degree,
                planes.len()
            ),
        ));
    }
    if toc_offset < V4_HEADER_LEN {
        return Err(SplatError::malformed(
            "SPZ",
            format!("v4 table of contents at offset {toc_offset}, inside the header"),
        ));
    }
    let toc_end = toc_offset.saturating_add(16 * num_streams);
    if toc_end > bytes.len() {
        return Err(SplatError::truncated(
            "SPZ",
            format!(
                "v4 table of contents ends at byte {toc_end}, past the end of the {}-byte file",
                bytes.len()
            ),
        ));
    }
    let mut body =
        Vec::with_capacity(body_len.min(bytes.len().saturating_mul(4).saturating_add(4096)));
    let mut offset = toc_end;
    for (i, &plane_len) in planes.iter().enumerate() {
        let e = toc_offset + 16 * i;
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let (compressed, uncompressed) = (u64_at(e), u64_at(e + 8));
        if uncompressed != plane_len as u64 {
            return Err(SplatError::malformed(
                "SPZ",
                format!("v4 stream {i} holds {uncompressed} bytes; the header implies {plane_len}"),
            ));
        }
        let remaining = (bytes.len() - offset) as u64;
        if compressed > remaining {
            return Err(SplatError::truncated(
                "SPZ",
                format!("v4 stream {i} needs {compressed} bytes, {remaining} remain"),
            ));
        }
        let src = &bytes[offset..offset + compressed as usize];
        offset += compressed as usize;
        let dec = zstd::stream::read::Decoder::with_buffer(src)
            .map_err(|e| SplatError::malformed("SPZ", format!("cannot start zstd: {e}")))?;
        let before = body.len();
        dec.take(plane_len as u64 + 1)
            .read_to_end(&mut body)
            .map_err(|e| stream_error(e, "v4 zstd"))?;
        let got = body.len() - before;
        if got != plane_len {
            return Err(SplatError::malformed(
                "SPZ",
                format!(
                    "v4 stream {i} decompresses to {}{got} bytes, its table entry says {plane_len}",
                    if got > plane_len { "more than " } else { "" }
                ),
            ));
        }
    }
    if offset != bytes.len() {
        return Err(SplatError::malformed(
            "SPZ",
            format!(
                "{} unexpected bytes after the last v4 stream",
                bytes.len() - offset
            ),
        ));
    }
    Ok((header, layout, body))
}
