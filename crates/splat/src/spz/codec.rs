//! The uncompressed SPZ payload: the 16-byte header and the six attribute
//! planes, and the quantisation of every attribute.
//!
//! Formulas follow Niantic's reference implementation
//! (`nianticlabs/spz`, `src/cc/load-spz.cc`: `packGaussians`,
//! `unpackGaussians`, `packQuaternionFirstThree`,
//! `packQuaternionSmallestThree`, `unpackQuaternionSmallestThree`,
//! `quantizeSH`, `unquantizeSH`, `toUint8`; `src/cc/splat-types.h`:
//! `normalized`). 404-GEN's fork (`404-Repo/spz`, `src/cc/load-spz.cc`)
//! uses the same v2 formulas. Written from those descriptions, not copied.

use crate::gaussians::{logit, sh_coeffs_per_channel, sigmoid};
use crate::{Gaussians, SplatError};

/// "NGSP" read as a little-endian u32.
pub(crate) const MAGIC: u32 = 0x5053_474e;
/// Length of the header of a v1–v3 payload.
pub(crate) const LEGACY_HEADER_LEN: usize = 16;
/// Header flag: the splat was trained with mip-splatting antialiasing.
pub(crate) const FLAG_ANTIALIASED: u8 = 0x1;
/// Header flag: the file carries extension records.
pub(crate) const FLAG_EXTENSIONS: u8 = 0x2;
/// Fractional bits of the 24-bit fixed-point positions we write when the
/// splat fits in ±2048 units (Niantic's and 404-GEN's writers always use 12:
/// steps of 1/4096). Larger splats get fewer; see `choose_fractional_bits`.
pub(crate) const WRITE_FRACTIONAL_BITS: u8 = 12;
/// More fractional bits than this cannot be meaningful for a 24-bit value
/// (Niantic's loader uses the same limit).
pub(crate) const MAX_FRACTIONAL_BITS: u8 = 24;
/// Niantic's `colorScale`: `byte = f_dc * 0.15 * 255 + 127.5`.
pub(crate) const COLOR_SCALE: f32 = 0.15;
/// The bucket size of the degree-1 SH coefficients when writing
/// (Niantic's `sh1Bits = 5`: `1 << (8 - 5)`).
pub(crate) const SH1_BUCKET: i32 = 8;
/// The bucket size of the degree-2 and 3 SH coefficients when writing
/// (Niantic's `shRestBits = 4`: `1 << (8 - 4)`).
pub(crate) const SH_REST_BUCKET: i32 = 16;
/// Decoded alpha bytes are clamped to this much of a quantisation step away
/// from 0 and 255 before the inverse sigmoid, so 0 and 255 give finite
/// logits *and* re-encode to 0 and 255 (see `alpha_logit`).
const ALPHA_EDGE: f32 = 0.25;

const SQRT1_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 9-bit magnitude mask of the smallest-three rotation encoding.
const MAG_MASK: u32 = (1 << 9) - 1;

/// Sizes that follow from a header: how many points, which SH degree and how
/// rotations are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    pub n: usize,
    pub sh_degree: u8,
    /// 3 for v2 ("first three"), 4 for v3+ ("smallest three").
    pub rotation_bytes: usize,
}

impl Layout {
    pub fn for_version(n: usize, sh_degree: u8, version: u32) -> Layout {
        Layout {
            n,
            sh_degree,
            rotation_bytes: if version >= 3 { 4 } else { 3 },
        }
    }

    /// SH rest values per point (coefficients × 3 channels).
    pub fn rest_values(&self) -> usize {
        (sh_coeffs_per_channel(self.sh_degree) - 1) * 3
    }

    pub fn bytes_per_point(&self) -> usize {
        9 + 1 + 3 + 3 + self.rotation_bytes + self.rest_values()
    }

    /// Length of the attribute planes, `None` on overflow.
    pub fn body_len(&self) -> Option<usize> {
        self.n.checked_mul(self.bytes_per_point())
    }

    /// Plane lengths in file order: positions, alphas, colours, scales,
    /// rotations, SH. Only call after `body_len()` succeeded.
    pub fn plane_lens(&self) -> [usize; 6] {
        let n = self.n;
        [
            9 * n,
            n,
            3 * n,
            3 * n,
            self.rotation_bytes * n,
            self.rest_values() * n,
        ]
    }
}

/// The fields of a v1–v3 header (also the common part of a v4 header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LegacyHeader {
    pub version: u32,
    pub num_points: u32,
    pub sh_degree: u8,
    pub fractional_bits: u8,
    pub flags: u8,
}

pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl LegacyHeader {
    /// Parses and checks a 16-byte v2/v3 header.
    pub fn parse(b: &[u8; LEGACY_HEADER_LEN]) -> Result<LegacyHeader, SplatError> {
        let magic = u32_at(b, 0);
        if magic != MAGIC {
            return Err(SplatError::malformed(
                "SPZ",
                format!("payload does not start with the NGSP magic (found {magic:#010x})"),
            ));
        }
        let h = LegacyHeader {
            version: u32_at(b, 4),
            num_points: u32_at(b, 8),
            sh_degree: b[12],
            fractional_bits: b[13],
            flags: b[14],
        };
        match h.version {
            2 | 3 => {}
            1 => {
                return Err(SplatError::malformed(
                    "SPZ",
                    "version 1 (float16 positions, never released by Niantic) is not supported",
                ))
            }
            4 => {
                return Err(SplatError::malformed(
                    "SPZ",
                    "version 4 header inside a compressed stream; v4 files are not wrapped in gzip or zstd",
                ))
            }
            v => return Err(SplatError::malformed("SPZ", format!("unsupported version {v}"))),
        }
        h.check_common()?;
        Ok(h)
    }

    /// Checks shared by all versions: SH degree, fractional bits, count cap.
    pub fn check_common(&self) -> Result<(), SplatError> {
        if self.sh_degree > 3 {
            return Err(SplatError::malformed(
                "SPZ",
                format!("SH degree {} is not supported (0 to 3)", self.sh_degree),
            ));
        }
        if self.fractional_bits > MAX_FRACTIONAL_BITS {
            return Err(SplatError::malformed(
                "SPZ",
                format!(
                    "{} fractional bits for 24-bit positions (at most {MAX_FRACTIONAL_BITS})",
                    self.fractional_bits
                ),
            ));
        }
        if self.num_points as u64 > super::MAX_POINTS as u64 {
            return Err(SplatError::malformed(
                "SPZ",
                format!(
                    "header claims {} points, more than the limit of {}",
                    self.num_points,
                    super::MAX_POINTS
                ),
            ));
        }
        Ok(())
    }

    pub fn layout(&self) -> Layout {
        Layout::for_version(self.num_points as usize, self.sh_degree, self.version)
    }

    pub fn to_bytes(self) -> [u8; LEGACY_HEADER_LEN] {
        let mut b = [0u8; LEGACY_HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&self.version.to_le_bytes());
        b[8..12].copy_from_slice(&self.num_points.to_le_bytes());
        b[12] = self.sh_degree;
        b[13] = self.fractional_bits;
        b[14] = self.flags;
        b[15] = 0; // reserved
        b
    }
}

// ---------------------------------------------------------------------------
// Scalar quantisation (one function per formula, so tests can pin them).

/// Niantic's `toUint8`: round half away from zero, clamp to 0..=255.
#[inline]
pub(crate) fn to_u8(x: f32) -> u8 {
    // `as u8` saturates and maps NaN to 0; the clamp documents the intent.
    x.round().clamp(0.0, 255.0) as u8
}

/// Opacity logit → alpha byte: `toUint8(sigmoid(logit) * 255)`.
#[inline]
pub(crate) fn alpha_byte(opacity_logit: f32) -> u8 {
    to_u8(sigmoid(opacity_logit) * 255.0)
}

/// Alpha byte → opacity logit: `ln(p / (1 - p))` with `p = byte / 255`.
///
/// Niantic's unpack clamps `p` to `[1/255, 254/255]` so 0 and 255 give
/// finite logits; we clamp to `[0.25/255, 254.75/255]` instead, which is
/// equally finite (±6.93) but re-encodes 0 → 0 and 255 → 255, so decoding
/// and re-encoding never changes an alpha byte.
#[inline]
pub(crate) fn alpha_logit(b: u8) -> f32 {
    let p = (b as f32).clamp(ALPHA_EDGE, 255.0 - ALPHA_EDGE) / 255.0;
    logit(p)
}

/// SH DC coefficient → colour byte: `toUint8(f_dc * 0.15 * 255 + 0.5 * 255)`.
#[inline]
pub(crate) fn color_byte(f_dc: f32) -> u8 {
    to_u8(f_dc * (COLOR_SCALE * 255.0) + (0.5 * 255.0))
}

/// Colour byte → SH DC coefficient: `(byte / 255 - 0.5) / 0.15`.
#[inline]
pub(crate) fn color_value(b: u8) -> f32 {
    ((b as f32 / 255.0) - 0.5) / COLOR_SCALE
}

/// Log scale → byte: `toUint8((log_scale + 10) * 16)`.
#[inline]
pub(crate) fn scale_byte(log_scale: f32) -> u8 {
    to_u8((log_scale + 10.0) * 16.0)
}

/// Byte → log scale: `byte / 16 - 10` (so -10 to 5.9375 in steps of 1/16).
#[inline]
pub(crate) fn scale_value(b: u8) -> f32 {
    b as f32 / 16.0 - 10.0
}

/// Niantic's `quantizeSH`: `q = round(x * 128) + 128`, then rounded to the
/// nearest multiple of `bucket` (ties up, C integer division), clamped to
/// 0..=255.
#[inline]
pub(crate) fn sh_byte(x: f32, bucket: i32) -> u8 {
    // `as i32` saturates for huge |x|, where C would be undefined.
    let q = ((x * 128.0).round() + 128.0) as i32;
    let q = q.saturating_add(bucket / 2) / bucket * bucket;
    q.clamp(0, 255) as u8
}

/// Niantic's `unquantizeSH` (the default, "legacy" scaling): `(byte - 128) / 128`.
#[inline]
pub(crate) fn sh_value(b: u8) -> f32 {
    (b as f32 - 128.0) / 128.0
}

/// Position → 24-bit fixed point, `None` when it does not fit.
#[inline]
pub(crate) fn fixed24(x: f32, scale: f32) -> Option<i32> {
    let v = (x * scale).round();
    if (-8_388_608.0..=8_388_607.0).contains(&v) {
        Some(v as i32)
    } else {
        None
    }
}

/// 24-bit little-endian two's complement → position.
#[inline]
fn position_value(b: &[u8], scale: f32) -> f32 {
    let v = (b[0] as i32) | (b[1] as i32) << 8 | (b[2] as i32) << 16;
    let v = (v << 8) >> 8; // sign-extend bit 23
    v as f32 * scale
}

/// Normalises a quaternion the way Niantic's `normalized` does (divide by the
/// f32 norm), rescaling first when the norm under- or overflows. `None` for
/// a zero quaternion.
#[inline]
pub(crate) fn normalized(q: [f32; 4]) -> Option<[f32; 4]> {
    let norm = (q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]).sqrt();
    if norm.is_normal() {
        return Some(q.map(|c| c / norm));
    }
    let m = q.iter().fold(0.0f32, |m, c| m.max(c.abs()));
    if m == 0.0 || !m.is_finite() {
        return None;
    }
    let s = q.map(|c| c / m);
    let norm = (s[0] * s[0] + s[1] * s[1] + s[2] * s[2] + s[3] * s[3]).sqrt();
    Some(s.map(|c| c / norm))
}

/// v2 rotation: the normalised quaternion with `w >= 0`, x, y, z stored as
/// `toUint8(c * 127.5 + 127.5)`. Input and output orders: `xyzw` is Niantic's
/// internal order; `q` here is already normalised and in `xyzw`.
#[inline]
pub(crate) fn rotation_first_three(q_xyzw: [f32; 4]) -> [u8; 3] {
    let s = if q_xyzw[3] < 0.0 { -127.5 } else { 127.5 };
    [
        to_u8(q_xyzw[0] * s + 127.5),
        to_u8(q_xyzw[1] * s + 127.5),
        to_u8(q_xyzw[2] * s + 127.5),
    ]
}

/// v2 rotation bytes → `xyzw`: `c = byte / 127.5 - 1`, `w = sqrt(max(0, 1 - |xyz|²))`.
#[inline]
fn rotation_from_first_three(r: &[u8]) -> [f32; 4] {
    let k = 1.0f32 / 127.5;
    let x = r[0] as f32 * k - 1.0;
    let y = r[1] as f32 * k - 1.0;
    let z = r[2] as f32 * k - 1.0;
    let w = (1.0 - (x * x + y * y + z * z)).max(0.0).sqrt();
    [x, y, z, w]
}

/// v3 "smallest three" rotation of a normalised `xyzw` quaternion: a u32
/// (little-endian) holding, from the top, the 2-bit index (in `xyzw` order)
/// of the largest-magnitude component, then for each other component in
/// index order a sign bit and a 9-bit magnitude `round(511 * |c| / sqrt(1/2))`.
/// The quaternion is negated first if needed so the largest component is
/// positive (q and -q are the same rotation).
#[inline]
pub(crate) fn rotation_smallest_three(q: [f32; 4]) -> [u8; 4] {
    let mut largest = 0usize;
    for i in 1..4 {
        if q[i].abs() > q[largest].abs() {
            largest = i;
        }
    }
    let negate = q[largest] < 0.0;
    let mut comp = largest as u32;
    for (i, &c) in q.iter().enumerate() {
        if i == largest {
            continue;
        }
        // Niantic tests `c < 0`; the sign bit differs only for -0.0 and
        // makes decode -> encode reproduce the stored sign of a zero.
        let negbit = (c.is_sign_negative() ^ negate) as u32;
        // Niantic truncates `x + 0.5`; the clamp only matters for inputs a
        // hair off unit length (|c| ≤ sqrt(1/2) for the non-largest ones).
        let mag = ((MAG_MASK as f32 * (c.abs() / SQRT1_2) + 0.5) as u32).min(MAG_MASK);
        comp = (comp << 10) | (negbit << 9) | mag;
    }
    comp.to_le_bytes()
}

/// v3 rotation bytes → `xyzw`. The largest component is
/// `sqrt(max(0, 1 - sum of squares))` (Niantic omits the `max`, which gives
/// NaN for corrupt data).
#[inline]
fn rotation_from_smallest_three(r: &[u8]) -> [f32; 4] {
    let mut comp = u32::from_le_bytes([r[0], r[1], r[2], r[3]]);
    let largest = (comp >> 30) as usize;
    let mut q = [0.0f32; 4];
    let mut sum = 0.0f32;
    for i in (0..4).rev() {
        if i == largest {
            continue;
        }
        let mag = comp & MAG_MASK;
        let negative = (comp >> 9) & 1 == 1;
        comp >>= 10;
        let v = SQRT1_2 * mag as f32 / MAG_MASK as f32;
        q[i] = if negative { -v } else { v };
        sum += q[i] * q[i];
    }
    q[largest] = (1.0 - sum).max(0.0).sqrt();
    q
}

// ---------------------------------------------------------------------------
// Whole payloads.

/// Decodes the attribute planes (`body`, exactly `layout.body_len()` bytes)
/// into pre-activation Gaussians.
pub(crate) fn decode_body(layout: Layout, fractional_bits: u8, body: &[u8]) -> Gaussians {
    let [lp, la, lc, ls, lr, _] = layout.plane_lens();
    let (pos, rest) = body.split_at(lp);
    let (alpha, rest) = rest.split_at(la);
    let (color, rest) = rest.split_at(lc);
    let (scale, rest) = rest.split_at(ls);
    let (rot, sh) = rest.split_at(lr);

    // Byte → value tables: one division-free lookup per attribute byte.
    let alpha_lut: [f32; 256] = std::array::from_fn(|b| alpha_logit(b as u8));
    let color_lut: [f32; 256] = std::array::from_fn(|b| color_value(b as u8));
    let scale_lut: [f32; 256] = std::array::from_fn(|b| scale_value(b as u8));
    let sh_lut: [f32; 256] = std::array::from_fn(|b| sh_value(b as u8));

    let pscale = 1.0f32 / (1u32 << fractional_bits) as f32;
    let mut g = Gaussians::with_capacity(layout.n, layout.sh_degree);
    g.means.extend(pos.chunks_exact(9).map(|p| {
        [
            position_value(&p[0..3], pscale),
            position_value(&p[3..6], pscale),
            position_value(&p[6..9], pscale),
        ]
    }));
    g.opacity_logits
        .extend(alpha.iter().map(|&b| alpha_lut[b as usize]));
    g.sh_dc.extend(color.chunks_exact(3).map(|c| {
        [
            color_lut[c[0] as usize],
            color_lut[c[1] as usize],
            color_lut[c[2] as usize],
        ]
    }));
    g.log_scales.extend(scale.chunks_exact(3).map(|s| {
        [
            scale_lut[s[0] as usize],
            scale_lut[s[1] as usize],
            scale_lut[s[2] as usize],
        ]
    }));
    if layout.rotation_bytes == 4 {
        g.rotations.extend(rot.chunks_exact(4).map(|r| {
            let [x, y, z, w] = rotation_from_smallest_three(r);
            [w, x, y, z]
        }));
    } else {
        g.rotations.extend(rot.chunks_exact(3).map(|r| {
            let [x, y, z, w] = rotation_from_first_three(r);
            [w, x, y, z]
        }));
    }
    // SPZ and `Gaussians` both lay SH out [point][coefficient][channel].
    g.sh_rest.extend(sh.iter().map(|&b| sh_lut[b as usize]));
    g
}

/// Checks that every value is finite, naming the first offender.
fn check_finite(g: &Gaussians) -> Result<(), SplatError> {
    fn first_bad<T: AsRef<[f32]>>(v: &[T]) -> Option<usize> {
        v.iter()
            .position(|a| a.as_ref().iter().any(|x| !x.is_finite()))
    }
    let checks: [(&str, Option<usize>); 5] = [
        ("position", first_bad(&g.means)),
        ("log scale", first_bad(&g.log_scales)),
        ("rotation", first_bad(&g.rotations)),
        ("SH DC colour", first_bad(&g.sh_dc)),
        (
            "opacity",
            g.opacity_logits.iter().position(|x| !x.is_finite()),
        ),
    ];
    for (what, bad) in checks {
        if let Some(i) = bad {
            return Err(SplatError::invalid(format!(
                "cannot write SPZ: Gaussian {i} has a non-finite {what}"
            )));
        }
    }
    if let Some(j) = g.sh_rest.iter().position(|x| !x.is_finite()) {
        let i = j / g.rest_coeffs().max(1) / 3;
        return Err(SplatError::invalid(format!(
            "cannot write SPZ: Gaussian {i} has a non-finite higher-order SH coefficient"
        )));
    }
    Ok(())
}

/// The fractional bits for `g`'s positions: 12 when every coordinate fits
/// the 24-bit range at 12 bits (±2048 units), else the most that fit — each
/// bit fewer doubles the range and the step. Readers (Niantic's, 404's and
/// ours) take the count from the header. This way any splat this module
/// decodes (whatever its file's fractional bits) can be written again; only
/// coordinates of magnitude 2^23 or more cannot be stored at all.
pub(crate) fn choose_fractional_bits(g: &Gaussians) -> Result<u8, SplatError> {
    let (mut lo, mut hi) = (0.0f32, 0.0f32);
    for m in &g.means {
        for &c in m {
            lo = lo.min(c);
            hi = hi.max(c);
        }
    }
    // Rounding is monotonic, so if the extremes fit, everything does.
    for fb in (0..=WRITE_FRACTIONAL_BITS).rev() {
        let scale = (1u32 << fb) as f32;
        if fixed24(lo, scale).is_some() && fixed24(hi, scale).is_some() {
            return Ok(fb);
        }
    }
    let (i, c) = g
        .means
        .iter()
        .enumerate()
        .flat_map(|(i, m)| m.iter().map(move |&c| (i, c)))
        .find(|&(_, c)| fixed24(c, 1.0).is_none())
        .unwrap_or((0, hi));
    Err(SplatError::invalid(format!(
        "cannot write SPZ: Gaussian {i} has position coordinate {c}, beyond the 24-bit \
         fixed-point range (±8388608) even with 0 fractional bits"
    )))
}

/// Encodes `g` (checked consistent by the caller) as an uncompressed v2 or v3
/// payload: header and planes, no flags, fractional bits from
/// `choose_fractional_bits` (12 for any splat within ±2048 units).
pub(crate) fn encode_payload(g: &Gaussians, version: u32) -> Result<Vec<u8>, SplatError> {
    check_finite(g)?;
    let n = g.len();
    if n > super::MAX_POINTS {
        return Err(SplatError::invalid(format!(
            "cannot write SPZ: {n} Gaussians is more than the limit of {}",
            super::MAX_POINTS
        )));
    }
    let fractional_bits = choose_fractional_bits(g)?;
    let layout = Layout::for_version(n, g.sh_degree, version);
    let header = LegacyHeader {
        version,
        num_points: n as u32,
        sh_degree: g.sh_degree,
        fractional_bits,
        flags: 0,
    };
    let body_len = layout.body_len().expect("bounded by MAX_POINTS");
    let mut out = vec![0u8; LEGACY_HEADER_LEN + body_len];
    out[..LEGACY_HEADER_LEN].copy_from_slice(&header.to_bytes());

    let [lp, la, lc, ls, lr, _] = layout.plane_lens();
    let body = &mut out[LEGACY_HEADER_LEN..];
    let (pos, rest) = body.split_at_mut(lp);
    let (alpha, rest) = rest.split_at_mut(la);
    let (color, rest) = rest.split_at_mut(lc);
    let (scale, rest) = rest.split_at_mut(ls);
    let (rot, sh) = rest.split_at_mut(lr);

    let pscale = (1u32 << fractional_bits) as f32;
    for (dst, m) in pos.chunks_exact_mut(9).zip(&g.means) {
        for a in 0..3 {
            // Cannot fail: `choose_fractional_bits` checked the extremes.
            let v = fixed24(m[a], pscale).unwrap_or(0);
            dst[a * 3..a * 3 + 3].copy_from_slice(&v.to_le_bytes()[..3]);
        }
    }
    for (dst, &o) in alpha.iter_mut().zip(&g.opacity_logits) {
        *dst = alpha_byte(o);
    }
    for (dst, c) in color.chunks_exact_mut(3).zip(&g.sh_dc) {
        dst.copy_from_slice(&c.map(color_byte));
    }
    for (dst, s) in scale.chunks_exact_mut(3).zip(&g.log_scales) {
        dst.copy_from_slice(&s.map(scale_byte));
    }
    let rb = layout.rotation_bytes;
    for (i, (dst, r)) in rot.chunks_exact_mut(rb).zip(&g.rotations).enumerate() {
        let [w, x, y, z] = normalized(*r).ok_or_else(|| {
            SplatError::invalid(format!(
                "cannot write SPZ: Gaussian {i} has a zero rotation quaternion"
            ))
        })?;
        if rb == 4 {
            dst.copy_from_slice(&rotation_smallest_three([x, y, z, w]));
        } else {
            dst.copy_from_slice(&rotation_first_three([x, y, z, w]));
        }
    }
    let per_point = layout.rest_values();
    if per_point > 0 {
        for (dst, src) in sh
            .chunks_exact_mut(per_point)
            .zip(g.sh_rest.chunks_exact(per_point))
        {
            for (j, (d, &x)) in dst.iter_mut().zip(src).enumerate() {
                // The first 9 values are degree 1 (3 coefficients × RGB).
                *d = sh_byte(x, if j < 9 { SH1_BUCKET } else { SH_REST_BUCKET });
            }
        }
    }
    Ok(out)
}
