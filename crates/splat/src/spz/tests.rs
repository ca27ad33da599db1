//! Tests of the SPZ reader and writer.

use std::io::{Read, Write};

use super::codec::{self, Layout};
use super::*;
use crate::gaussians::{sample, sigmoid};

const ALL_FLAVORS: [SpzFlavor; 3] = [
    SpzFlavor::NianticV2,
    SpzFlavor::NianticV3,
    SpzFlavor::Zstd404,
];

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/fixtures/robocop-with-hammer.spz"
);

fn fixture() -> Option<Vec<u8>> {
    match std::fs::read(FIXTURE) {
        Ok(b) => Some(b),
        Err(e) => {
            println!("skipping: SPZ fixture {FIXTURE} not readable ({e})");
            None
        }
    }
}

fn gunzip(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b)
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn unzstd(b: &[u8]) -> Vec<u8> {
    zstd::stream::decode_all(b).unwrap()
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

/// The payload inside a file written by `write_spz`.
fn payload_of(file: &[u8]) -> Vec<u8> {
    match detect_container(file) {
        Some(SpzContainer::Gzip) => gunzip(file),
        Some(SpzContainer::Zstd) => unzstd(file),
        other => panic!("unexpected container {other:?}"),
    }
}

/// A 16-byte v2/v3 header.
fn header(version: u32, n: u32, sh_degree: u8, fractional_bits: u8, flags: u8) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(b"NGSP");
    h.extend_from_slice(&version.to_le_bytes());
    h.extend_from_slice(&n.to_le_bytes());
    h.extend_from_slice(&[sh_degree, fractional_bits, flags, 0]);
    h
}

/// Builds an NGSP v4 file holding `g`, from the planes of our v3 payload.
fn build_v4(g: &Gaussians, flags: u8, extensions: &[u8]) -> Vec<u8> {
    let payload = codec::encode_payload(g, 3).unwrap();
    let layout = Layout::for_version(g.len(), g.sh_degree, 3);
    let mut streams: Vec<(Vec<u8>, u64)> = Vec::new();
    let mut at = 16;
    for len in layout.plane_lens() {
        if len > 0 {
            streams.push((
                zstd::bulk::compress(&payload[at..at + len], 3).unwrap(),
                len as u64,
            ));
        }
        at += len;
    }
    let toc_offset = 32 + extensions.len() as u32;
    let mut f = Vec::new();
    f.extend_from_slice(b"NGSP");
    f.extend_from_slice(&4u32.to_le_bytes());
    f.extend_from_slice(&(g.len() as u32).to_le_bytes());
    f.extend_from_slice(&[g.sh_degree, 12, flags, streams.len() as u8]);
    f.extend_from_slice(&toc_offset.to_le_bytes());
    f.extend_from_slice(&[0u8; 12]);
    f.extend_from_slice(extensions);
    for (c, u) in &streams {
        f.extend_from_slice(&(c.len() as u64).to_le_bytes());
        f.extend_from_slice(&u.to_le_bytes());
    }
    for (c, _) in &streams {
        f.extend_from_slice(c);
    }
    f
}

// ---------------------------------------------------------------------------
// Formulas, pinned with values worked out by hand.

#[test]
fn scalar_quantisers_match_hand_values() {
    // toUint8: round half away from zero, then clamp.
    assert_eq!(codec::to_u8(0.5), 1);
    assert_eq!(codec::to_u8(127.5), 128);
    assert_eq!(codec::to_u8(-3.0), 0);
    assert_eq!(codec::to_u8(300.0), 255);
    // SH, 5 bits (bucket 8): 0.3*128 = 38.4 -> 38 -> 166 -> (166+4)/8*8 = 168.
    assert_eq!(codec::sh_byte(0.3, 8), 168);
    // SH, 4 bits (bucket 16): 166 -> (166+8)/16*16 = 160.
    assert_eq!(codec::sh_byte(0.3, 16), 160);
    // Negative sums truncate toward zero as in C, then clamp: -5*128+128 = -512.
    assert_eq!(codec::sh_byte(-5.0, 16), 0);
    assert_eq!(codec::sh_byte(1.0, 8), 255); // 256 -> clamp
    assert_eq!(codec::sh_value(0), -1.0);
    assert_eq!(codec::sh_value(192), 0.5);
    // Scales: (s + 10) * 16.
    assert_eq!(codec::scale_byte(-10.0), 0);
    assert_eq!(codec::scale_byte(-4.0), 96);
    assert_eq!(codec::scale_value(96), -4.0);
    // Colours: f_dc * 38.25 + 127.5.
    assert_eq!(codec::color_byte(2.0), 204); // 76.5 + 127.5
    assert!((codec::color_value(204) - 2.0).abs() < 1e-5);
    // Alphas: sigmoid(0) * 255 = 127.5 -> 128.
    assert_eq!(codec::alpha_byte(0.0), 128);
    // Fixed point: 1.5 * 4096 = 6144.
    assert_eq!(codec::fixed24(1.5, 4096.0), Some(6144));
    assert_eq!(codec::fixed24(2048.0, 4096.0), None); // 2^23 does not fit
    assert_eq!(codec::fixed24(-2048.0, 4096.0), Some(-8_388_608));
}

#[test]
fn fractional_bits_shrink_only_for_large_splats() {
    let mut g = sample(10, 0);
    let bits = |g: &Gaussians| {
        read_spz_with_info(&write_spz(g, SpzFlavor::NianticV2).unwrap())
            .unwrap()
            .1
            .fractional_bits
    };
    g.means[3] = [-2048.0, 2047.9, 0.0]; // the 12-bit range is [-2048, 2048 - 1/4096]
    assert_eq!(bits(&g), 12);
    g.means[3][1] = 2048.0;
    assert_eq!(bits(&g), 11);
    g.means[3][1] = -5000.0; // needs ±8192: 10 bits
    assert_eq!(bits(&g), 10);
    let back = read_spz(&write_spz(&g, SpzFlavor::NianticV3).unwrap()).unwrap();
    for (a, b) in g.means.iter().zip(&back.means) {
        for c in 0..3 {
            assert!((a[c] - b[c]).abs() <= 0.5 / 1024.0 + 1e-6, "{a:?} {b:?}");
        }
    }
    // A file with few fractional bits and far-out points decodes and
    // re-encodes exactly (what the fuzz target demands of every file).
    let mut p = codec::encode_payload(&sample(3, 0), 2).unwrap();
    p[13] = 0; // fractional bits 0: the stored integers are the coordinates
    p[16..19].copy_from_slice(&[0xff, 0xff, 0x7f]); // x of point 0: 8388607
    let g = read_spz(&p).unwrap();
    assert_eq!(g.means[0][0], 8_388_607.0);
    let again = payload_of(&write_spz(&g, SpzFlavor::Zstd404).unwrap());
    assert_eq!(again, p);
}

#[test]
fn every_byte_decodes_finite_and_reencodes_to_itself() {
    for b in 0..=255u8 {
        let a = codec::alpha_logit(b);
        assert!(a.is_finite(), "alpha {b}");
        assert_eq!(codec::alpha_byte(a), b, "alpha {b} -> {a}");
        assert_eq!(codec::color_byte(codec::color_value(b)), b, "colour {b}");
        assert_eq!(codec::scale_byte(codec::scale_value(b)), b, "scale {b}");
        // SH bytes that are bucket centres survive re-encoding.
        if b % 16 == 0 {
            assert_eq!(codec::sh_byte(codec::sh_value(b), 16), b, "sh {b}");
        }
        if b % 8 == 0 {
            assert_eq!(codec::sh_byte(codec::sh_value(b), 8), b, "sh {b}");
        }
    }
    // Extremes stay finite and on the right side (Niantic clamps similarly).
    assert!(codec::alpha_logit(0) < -6.0 && codec::alpha_logit(255) > 6.0);
}

/// Two points, SH degree 1; every expected byte is derived by hand from the
/// format rules in the comments, not by running the encoder.
fn tiny_splat() -> Gaussians {
    Gaussians {
        means: vec![[1.0, -0.5, 1.0 / 4096.0], [2047.999, -2048.0, 0.0]],
        log_scales: vec![[-10.0, -5.0, 0.0], [-11.0, 5.9375, -9.96875]],
        rotations: vec![[1.0, 0.0, 0.0, 0.0], [0.8, 0.6, 0.0, 0.0]], // (w, x, y, z)
        opacity_logits: vec![0.0, 20.0],
        sh_dc: vec![[0.0, 1.0, -1.0], [3.4, -3.4, 0.1]],
        sh_rest: vec![
            0.5, -0.3, 1.0, 0.0, 0.0, 0.0, -1.0, 0.03, 2.0, //
            0.25, -0.25, 0.06, -0.04, 0.015, -5.0, 0.0, 0.0, 0.0,
        ],
        sh_degree: 1,
    }
}

fn tiny_expected(version: u32) -> Vec<u8> {
    let mut e = header(version, 2, 1, 12, 0);
    // Positions, x*4096 as 24-bit little-endian two's complement:
    //   1.0 -> 4096 = 0x001000; -0.5 -> -2048 = 0xfff800; 1/4096 -> 1;
    //   2047.999 (f32 2047.9990234375) -> 8388604 = 0x7ffffc;
    //   -2048 -> -8388608 = 0x800000; 0 -> 0.
    e.extend_from_slice(&[0x00, 0x10, 0x00, 0x00, 0xf8, 0xff, 0x01, 0x00, 0x00]);
    e.extend_from_slice(&[0xfc, 0xff, 0x7f, 0x00, 0x00, 0x80, 0x00, 0x00, 0x00]);
    // Alphas, sigmoid(logit)*255: 0 -> 127.5 -> 128; 20 -> 1.0 (f32) -> 255.
    e.extend_from_slice(&[128, 255]);
    // Colours, f_dc*38.25 + 127.5: 0 -> 128 (127.5 rounds up); 1 -> 165.75
    // -> 166; -1 -> 89.25 -> 89; 3.4 -> 257.55 -> 255; -3.4 -> 0;
    // 0.1 -> 131.325 -> 131.
    e.extend_from_slice(&[128, 166, 89, 255, 0, 131]);
    // Scales, (s+10)*16: -10 -> 0; -5 -> 80; 0 -> 160; -11 -> -16 -> 0;
    // 5.9375 -> 255; -9.96875 -> 0.5 -> 1.
    e.extend_from_slice(&[0, 80, 160, 0, 255, 1]);
    if version == 2 {
        // v2, x,y,z of the unit quaternion with w >= 0, c*127.5 + 127.5:
        //   identity -> 127.5 -> 128 each; (x 0.6, w 0.8) -> x 204, y 128, z 128.
        e.extend_from_slice(&[128, 128, 128, 204, 128, 128]);
    } else {
        // v3, smallest three over x,y,z,w (indices 0..3):
        //   identity: largest w (3), the others 0: 3 << 30 = 0xc000_0000.
        //   (x 0.6, w 0.8): largest w (3); x: 511*0.6/sqrt(1/2) + 0.5 = 434.1
        //   -> 434, y and z 0: (3 << 30) | (434 << 20) = 0xdb20_0000.
        e.extend_from_slice(&[0x00, 0x00, 0x00, 0xc0, 0x00, 0x00, 0x20, 0xdb]);
    }
    // SH rest, bucket 8 for degree 1: q = round(x*128)+128, then
    // (q+4)/8*8 clamped: 0.5 -> 192; -0.3 -> 90 -> 88; 1.0 -> 256 -> 255;
    // 0 -> 128; -1 -> 0; 0.03 -> 132 -> 136; 2 -> 384 -> 255;
    // 0.25 -> 160; -0.25 -> 96; 0.06 -> 136; -0.04 -> 123 -> 120;
    // 0.015 -> 130 -> 128; -5 -> -512 -> -504 -> 0.
    e.extend_from_slice(&[192, 88, 255, 128, 128, 128, 0, 136, 255]);
    e.extend_from_slice(&[160, 96, 136, 120, 128, 0, 128, 128, 128]);
    e
}

#[test]
fn tiny_splat_encodes_to_hand_derived_bytes() {
    let g = tiny_splat();
    for (flavor, version) in [
        (SpzFlavor::NianticV2, 2),
        (SpzFlavor::NianticV3, 3),
        (SpzFlavor::Zstd404, 2),
    ] {
        let file = write_spz(&g, flavor).unwrap();
        assert_eq!(payload_of(&file), tiny_expected(version), "{flavor:?}");
    }
}

#[test]
fn tiny_splat_decodes_from_hand_derived_bytes() {
    for version in [2, 3] {
        let (g, info) = read_spz_with_info(&tiny_expected(version)).unwrap();
        assert_eq!(info.container, SpzContainer::Uncompressed);
        assert_eq!(
            (info.version, info.num_points, info.sh_degree),
            (version, 2, 1)
        );
        assert_eq!(
            g.means,
            vec![[1.0, -0.5, 1.0 / 4096.0], [2047.999, -2048.0, 0.0]]
        ); // 2047.999 is 2047.9990234375 in f32
        assert_eq!(
            g.log_scales,
            vec![[-10.0, -5.0, 0.0], [-10.0, 5.9375, -9.9375]]
        );
        // ln(128/127) and the clamped top byte ln(254.75/0.25).
        assert!((g.opacity_logits[0] - (128.0f32 / 127.0).ln()).abs() < 1e-5);
        assert!((g.opacity_logits[1] - (254.75f32 / 0.25).ln()).abs() < 1e-3);
        assert!((g.sh_dc[0][1] - (166.0 / 255.0 - 0.5) / 0.15).abs() < 1e-6);
        assert_eq!(g.sh_rest[0], 0.5); // (192-128)/128
        assert_eq!(g.sh_rest[6], -1.0);
        let r0 = g.rotations[0];
        let r1 = g.rotations[1];
        if version == 2 {
            // 128/127.5 - 1 = 1/255 in x, y, z; w from unit length.
            let c = 128.0f32 / 127.5 - 1.0;
            assert!((r0[1] - c).abs() < 1e-6 && (r0[0] - (1.0 - 3.0 * c * c).sqrt()).abs() < 1e-6);
            assert!((r1[1] - (204.0f32 / 127.5 - 1.0)).abs() < 1e-6);
        } else {
            assert_eq!(r0, [1.0, 0.0, 0.0, 0.0]);
            let x = std::f32::consts::FRAC_1_SQRT_2 * 434.0 / 511.0;
            assert!((r1[1] - x).abs() < 1e-6 && (r1[0] - (1.0 - x * x).sqrt()).abs() < 1e-6);
        }
    }
}

// ---------------------------------------------------------------------------
// Round trips.

/// Bounds (stated per attribute) that encode -> decode must respect.
fn assert_within_quantisation(orig: &Gaussians, dec: &Gaussians, v3_rotations: bool, what: &str) {
    assert_eq!(orig.len(), dec.len(), "{what}");
    assert_eq!(orig.sh_degree, dec.sh_degree, "{what}");
    dec.check_consistent().unwrap();
    let eps = 1e-5;
    for i in 0..orig.len() {
        for a in 0..3 {
            // Positions: half a step of 1/4096 (12 fractional bits).
            let d = (orig.means[i][a] - dec.means[i][a]).abs();
            assert!(d <= 0.5 / 4096.0 + 1e-6, "{what} mean {i}: {d}");
            // Log scales: half a step of 1/16 (inside -10..5.9375).
            let d = (orig.log_scales[i][a] - dec.log_scales[i][a]).abs();
            assert!(d <= 0.5 / 16.0 + eps, "{what} scale {i}: {d}");
            // SH DC: half a step of 1/(0.15*255) (inside ±3.33).
            let d = (orig.sh_dc[i][a] - dec.sh_dc[i][a]).abs();
            assert!(d <= 0.5 / 38.25 + eps, "{what} dc {i}: {d}");
        }
        // Opacity, compared after the sigmoid: half a step of 1/255.
        let d = (sigmoid(orig.opacity_logits[i]) - sigmoid(dec.opacity_logits[i])).abs();
        assert!(d <= 0.5 / 255.0 + eps, "{what} opacity {i}: {d}");
        // Higher SH (inside ±1): rounding to 1/128 plus bucketing to 8
        // steps (degree 1) or 16 steps (degrees 2, 3): (0.5 + 4)/128 and (0.5 + 8)/128.
        let k = orig.rest_coeffs() * 3;
        for j in 0..k {
            let d = (orig.sh_rest[i * k + j] - dec.sh_rest[i * k + j]).abs();
            let bound = if j < 9 { 4.5 / 128.0 } else { 8.5 / 128.0 };
            assert!(d <= bound + eps, "{what} sh {i}/{j}: {d}");
        }
        // Rotations: compare unit quaternions with the same sign.
        let q = codec::normalized(orig.rotations[i]).unwrap();
        let mut r = codec::normalized(dec.rotations[i]).unwrap();
        let dot: f32 = (0..4).map(|c| q[c] * r[c]).sum();
        if dot < 0.0 {
            r = r.map(|c| -c);
        }
        if v3_rotations {
            // Stored components: half a step of sqrt(1/2)/511 each (0.00069);
            // the largest (>= 1/2) is derived, its error at most about
            // 2*sum|c|*0.00069 + 3*0.00069^2 < 0.003. Bound: 0.004.
            for c in 0..4 {
                assert!(
                    (q[c] - r[c]).abs() <= 0.004,
                    "{what} rot {i}: {q:?} vs {r:?}"
                );
            }
        } else {
            // Stored x, y, z (with w >= 0): half a step of 1/127.5 each,
            // plus the renormalisation of a w derived from them. w itself
            // is derived and can be off by up to ~0.12 when it is near 0,
            // so for the whole quaternion only |dot| >= 0.99 is asserted.
            let s = if q[0] < 0.0 { -1.0 } else { 1.0 };
            let d = dec.rotations[i];
            for c in 1..4 {
                assert!(
                    (q[c] * s - d[c]).abs() <= 0.5 / 127.5 + eps,
                    "{what} rot {i}: {q:?} vs {d:?}"
                );
            }
            assert!(dot.abs() >= 0.99, "{what} rot {i}: dot {dot}");
        }
    }
}

#[test]
fn round_trip_within_quantisation_bounds() {
    for degree in 0..=3 {
        let g = sample(500, degree);
        for flavor in ALL_FLAVORS {
            let file = write_spz(&g, flavor).unwrap();
            let (dec, info) = read_spz_with_info(&file).unwrap();
            let want = match flavor {
                SpzFlavor::Zstd404 => (SpzContainer::Zstd, 2),
                SpzFlavor::NianticV2 => (SpzContainer::Gzip, 2),
                SpzFlavor::NianticV3 => (SpzContainer::Gzip, 3),
            };
            assert_eq!((info.container, info.version), want);
            assert_eq!(info.fractional_bits, 12);
            assert!(!info.antialiased && !info.has_extensions);
            assert_within_quantisation(
                &g,
                &dec,
                flavor == SpzFlavor::NianticV3,
                &format!("{flavor:?} degree {degree}"),
            );
            // Decoding then encoding again changes nothing, except that a v3
            // rotation whose two largest components (nearly) tie may pick the
            // other one as "largest" the second time; it still decodes to
            // (nearly) the same rotation.
            let again = write_spz(&dec, flavor).unwrap();
            if flavor == SpzFlavor::NianticV3 {
                let (a, b) = (payload_of(&file), payload_of(&again));
                let [lp, la, lc, ls, lr, _] = Layout::for_version(g.len(), degree, 3).plane_lens();
                let r = 16 + lp + la + lc + ls;
                assert_eq!(a[..r], b[..r]);
                assert_eq!(a[r + lr..], b[r + lr..]);
                let changed = (0..g.len())
                    .filter(|i| a[r + 4 * i..r + 4 * i + 4] != b[r + 4 * i..r + 4 * i + 4])
                    .count();
                assert!(changed <= g.len() / 100, "{changed} rotations changed");
                let dec2 = read_spz(&again).unwrap();
                for (q, p) in dec.rotations.iter().zip(&dec2.rotations) {
                    let dot: f32 = (0..4).map(|c| q[c] * p[c]).sum();
                    assert!(dot.abs() > 0.99998, "{q:?} vs {p:?}");
                }
            } else {
                assert_eq!(payload_of(&again), payload_of(&file), "{flavor:?} {degree}");
            }
        }
    }
}

#[test]
fn empty_splat_round_trips() {
    for degree in [0, 3] {
        let g = Gaussians {
            sh_degree: degree,
            ..Default::default()
        };
        for flavor in ALL_FLAVORS {
            let back = read_spz(&write_spz(&g, flavor).unwrap()).unwrap();
            assert_eq!(back, g, "{flavor:?}");
        }
    }
}

#[test]
fn magic_detection() {
    let g = sample(3, 0);
    let gz = write_spz(&g, SpzFlavor::NianticV2).unwrap();
    let zs = write_spz(&g, SpzFlavor::Zstd404).unwrap();
    assert_eq!(&gz[..2], &[0x1f, 0x8b]);
    assert_eq!(&zs[..4], &[0x28, 0xb5, 0x2f, 0xfd]);
    assert_eq!(detect_container(&gz), Some(SpzContainer::Gzip));
    assert_eq!(detect_container(&zs), Some(SpzContainer::Zstd));
    assert_eq!(
        detect_container(&build_v4(&g, 0, &[])),
        Some(SpzContainer::NgspV4)
    );
    assert_eq!(
        detect_container(&tiny_expected(2)),
        Some(SpzContainer::Uncompressed)
    );
    assert_eq!(detect_container(b"ply\nformat"), None);
    assert!(is_spz(&gz) && is_spz(&zs) && !is_spz(b"") && !is_spz(&[0x1f]));
    // The zstd frame records its content size (404's decoder sizes its buffer from it).
    let size = zstd::zstd_safe::get_frame_content_size(&zs).unwrap();
    assert_eq!(size, Some(payload_of(&zs).len() as u64));
    // Unknown magic: malformed, naming the bytes.
    match read_spz(b"PK\x03\x04rest") {
        Err(SplatError::Malformed {
            format: "SPZ",
            message,
        }) => assert!(message.contains("50 4b 03 04"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(read_spz(b""), Err(SplatError::Malformed { .. })));
}

#[test]
fn antialiased_flag_is_reported() {
    let mut p = tiny_expected(3);
    p[14] = 0x1;
    let (_, info) = read_spz_with_info(&gzip(&p)).unwrap();
    assert!(info.antialiased && !info.has_extensions);
}

// ---------------------------------------------------------------------------
// v4.

#[test]
fn v4_reads_like_v3() {
    for degree in [0, 2] {
        let g = sample(200, degree);
        let v3 = read_spz(&write_spz(&g, SpzFlavor::NianticV3).unwrap()).unwrap();
        let (v4, info) = read_spz_with_info(&build_v4(&g, 0, &[])).unwrap();
        assert_eq!((info.container, info.version), (SpzContainer::NgspV4, 4));
        assert_eq!(v4, v3);
        // An extension block between header and TOC is skipped.
        let mut ext = 0xadbe_0002u32.to_le_bytes().to_vec();
        ext.extend_from_slice(&12u32.to_le_bytes());
        ext.extend_from_slice(&[0u8; 12]);
        let (v4e, info) = read_spz_with_info(&build_v4(&g, FLAG_EXTENSIONS, &ext)).unwrap();
        assert!(info.has_extensions);
        assert_eq!(v4e, v3);
    }
}

#[test]
fn v4_malformed_variants_are_errors() {
    let g = sample(50, 1);
    let good = build_v4(&g, 0, &[]);
    read_spz(&good).unwrap();
    let patched = |at: usize, bytes: &[u8]| {
        let mut f = good.clone();
        f[at..at + bytes.len()].copy_from_slice(bytes);
        f
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("stream count", patched(15, &[5])),
        ("toc inside header", patched(16, &8u32.to_le_bytes())),
        ("toc past end", patched(16, &u32::MAX.to_le_bytes())),
        ("sh degree 4", patched(12, &[4])),
        ("fractional bits", patched(13, &[30])),
        ("huge count", patched(8, &u32::MAX.to_le_bytes())),
        ("count mismatch", patched(8, &49u32.to_le_bytes())),
        (
            "wrong uncompressed size",
            patched(32 + 8, &1u64.to_le_bytes()),
        ),
        (
            "compressed size too big",
            patched(32, &u64::MAX.to_le_bytes()),
        ),
        ("trailing", [good.clone(), vec![0u8; 3]].concat()),
        ("short", good[..good.len() - 1].to_vec()),
        ("header only", good[..20].to_vec()),
    ];
    for (what, f) in cases {
        assert!(read_spz(&f).is_err(), "{what}");
    }
}

// ---------------------------------------------------------------------------
// Robustness: errors, never panics, never allocations a count field asks for.

fn small_files() -> Vec<(String, Vec<u8>)> {
    let g = sample(30, 1);
    let mut files: Vec<(String, Vec<u8>)> = ALL_FLAVORS
        .iter()
        .map(|&f| (format!("{f:?}"), write_spz(&g, f).unwrap()))
        .collect();
    files.push(("v4".into(), build_v4(&g, 0, &[])));
    files.push(("raw".into(), codec::encode_payload(&g, 3).unwrap()));
    files
}

#[test]
fn every_truncation_is_an_error() {
    for (name, f) in small_files() {
        read_spz(&f).unwrap();
        for len in 0..f.len() {
            assert!(
                read_spz(&f[..len]).is_err(),
                "{name} cut to {len} of {}",
                f.len()
            );
        }
    }
    // The raw payload cut inside the planes is reported as truncation.
    let raw = codec::encode_payload(&sample(30, 1), 2).unwrap();
    assert!(matches!(
        read_spz(&raw[..100]),
        Err(SplatError::Truncated { .. })
    ));
    assert!(matches!(
        read_spz(&raw[..10]),
        Err(SplatError::Truncated { .. })
    ));
}

#[test]
fn truncated_fixture_is_an_error() {
    let Some(f) = fixture() else { return };
    for len in [0, 3, 4, 10, 100, 1000, f.len() / 2, f.len() - 1] {
        let r = read_spz(&f[..len]);
        assert!(r.is_err(), "cut to {len}");
    }
    assert!(matches!(
        read_spz(&f[..f.len() / 2]),
        Err(SplatError::Truncated { .. })
    ));
}

#[test]
fn corrupted_bytes_never_panic() {
    let mut seed = 0x9e37_79b9u32;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed
    };
    for (_, f) in small_files() {
        for i in 0..f.len() {
            for mask in [0x01u8, 0x80, 0xff] {
                let mut c = f.clone();
                c[i] ^= mask;
                // As in fuzz/fuzz_targets/read_spz.rs: whatever decodes re-encodes.
                if let Ok(g) = read_spz(&c) {
                    let bytes =
                        write_spz(&g, SpzFlavor::Zstd404).expect("a decoded splat re-encodes");
                    assert_eq!(
                        read_spz(&bytes).expect("our own output reads back").len(),
                        g.len()
                    );
                }
            }
        }
        // Random garbage behind each container's magic.
        for _ in 0..200 {
            let len = (rnd() % 300) as usize;
            let mut c: Vec<u8> = f[..f.len().min(4)].to_vec();
            c.extend((0..len).map(|_| rnd() as u8));
            let _ = read_spz(&c);
        }
    }
}

#[test]
fn trailing_data_is_rejected() {
    for (name, f) in small_files() {
        let mut c = f.clone();
        c.extend_from_slice(b"junk");
        assert!(read_spz(&c).is_err(), "{name}");
    }
    // Decompressed bytes beyond the announced planes, without the extension flag.
    let mut p = codec::encode_payload(&sample(5, 0), 2).unwrap();
    p.push(0);
    let e = read_spz(&gzip(&p)).unwrap_err().to_string();
    assert!(e.contains("unexpected bytes"), "{e}");
}

#[test]
fn legacy_extension_records_are_skipped_when_flagged() {
    let g = sample(20, 0);
    let mut p = codec::encode_payload(&g, 3).unwrap();
    p[14] = FLAG_EXTENSIONS;
    let mut with_ext = p.clone();
    for (ty, len) in [(0xadbe_0002u32, 12u32), (0x1234_0001, 0)] {
        with_ext.extend_from_slice(&ty.to_le_bytes());
        with_ext.extend_from_slice(&len.to_le_bytes());
        with_ext.extend(std::iter::repeat_n(7, len as usize));
    }
    let (dec, info) = read_spz_with_info(&gzip(&with_ext)).unwrap();
    assert!(info.has_extensions);
    assert_eq!(
        dec,
        read_spz(&gzip(&codec::encode_payload(&g, 3).unwrap())).unwrap()
    );
    // No records at all is fine too; a broken record is not.
    read_spz(&gzip(&p)).unwrap();
    let mut broken = with_ext.clone();
    broken.truncate(broken.len() - 3);
    assert!(read_spz(&gzip(&broken)).is_err());
}

#[test]
fn bad_headers_are_errors() {
    let body = codec::encode_payload(&sample(4, 0), 2).unwrap()[16..].to_vec();
    let with = |h: Vec<u8>| [h, body.clone()].concat();
    let cases = [
        ("version 1", with(header(1, 4, 0, 12, 0))),
        ("version 5", with(header(5, 4, 0, 12, 0))),
        ("version 4 in gzip", gzip(&with(header(4, 4, 0, 12, 0)))),
        ("sh degree 4", with(header(2, 4, 4, 12, 0))),
        ("fractional bits 25", with(header(2, 4, 0, 25, 0))),
        (
            "bad inner magic",
            gzip(&[b"XXXX".to_vec(), with(header(2, 4, 0, 12, 0))[4..].to_vec()].concat()),
        ),
    ];
    for (what, f) in cases {
        assert!(
            matches!(read_spz(&f), Err(SplatError::Malformed { .. })),
            "{what}"
        );
        assert!(read_spz(&gzip(&f)).is_err(), "{what}");
    }
    // More points announced than data present.
    assert!(matches!(
        read_spz(&gzip(&with(header(2, 5, 0, 12, 0)))),
        Err(SplatError::Truncated { .. })
    ));
}

#[test]
fn huge_count_headers_fail_fast() {
    let start = std::time::Instant::now();
    for n in [
        u32::MAX,
        MAX_POINTS as u32 + 1,
        MAX_POINTS as u32,
        50_000_000,
        3_000_000,
    ] {
        for degree in [0, 3] {
            let mut p = header(3, n, degree, 12, 0);
            p.extend_from_slice(&[0u8; 64]);
            for f in [p.clone(), gzip(&p), zstd::bulk::compress(&p, 1).unwrap()] {
                let e = read_spz(&f).unwrap_err();
                assert!(
                    matches!(
                        e,
                        SplatError::Malformed { .. } | SplatError::Truncated { .. }
                    ),
                    "{e}"
                );
            }
        }
    }
    assert!(start.elapsed().as_secs_f32() < 2.0, "{:?}", start.elapsed());
}

#[test]
fn decompression_bomb_stops_at_the_announced_size() {
    // 10 points announced, then 200 MB of zeros: a ~6 KB zstd file.
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
    enc.write_all(&header(2, 10, 0, 12, 0)).unwrap();
    std::io::copy(&mut std::io::repeat(0).take(200 << 20), &mut enc).unwrap();
    let bomb = enc.finish().unwrap();
    assert!(bomb.len() < 100_000, "{}", bomb.len());
    let start = std::time::Instant::now();
    let e = read_spz(&bomb).unwrap_err().to_string();
    assert!(e.contains("unexpected bytes"), "{e}");
    // It stopped reading after the 10 points (200 MB would take far longer in debug).
    assert!(start.elapsed().as_secs_f32() < 1.0, "{:?}", start.elapsed());
    // A header that could only be met by an absurd ratio is refused before inflating.
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
    enc.write_all(&header(2, 10_000_000, 0, 12, 0)).unwrap();
    std::io::copy(&mut std::io::repeat(0).take(1 << 20), &mut enc).unwrap();
    let e = read_spz(&enc.finish().unwrap()).unwrap_err().to_string();
    assert!(e.contains("compression ratio"), "{e}");
}

// ---------------------------------------------------------------------------
// Writer errors.

#[test]
fn writer_rejects_bad_input() {
    let check = |g: &Gaussians, needle: &str| {
        for flavor in ALL_FLAVORS {
            let e = write_spz(g, flavor).unwrap_err().to_string();
            assert!(e.contains(needle), "{flavor:?}: {e}");
        }
    };
    let mut g = sample(5, 1);
    g.sh_rest.pop();
    check(&g, "sh_rest");
    let mut g = sample(5, 1);
    g.means[3][1] = f32::NAN;
    check(&g, "Gaussian 3 has a non-finite position");
    let mut g = sample(5, 1);
    g.opacity_logits[2] = f32::INFINITY;
    check(&g, "Gaussian 2 has a non-finite opacity");
    let mut g = sample(5, 2);
    g.sh_rest[4 * 24 + 5] = f32::NEG_INFINITY;
    check(&g, "Gaussian 4 has a non-finite higher-order SH");
    let mut g = sample(5, 0);
    g.rotations[1] = [0.0; 4];
    check(&g, "Gaussian 1 has a zero rotation");
    let mut g = sample(5, 0);
    g.means[4][2] = 9e6;
    check(
        &g,
        "Gaussian 4 has position coordinate 9000000, beyond the 24-bit",
    );
    g.means[4][2] = -8_388_608.0; // the most negative value fits, at 0 bits
    let (back, info) = read_spz_with_info(&write_spz(&g, SpzFlavor::Zstd404).unwrap()).unwrap();
    assert_eq!(info.fractional_bits, 0);
    assert_eq!(back.means[4][2], -8_388_608.0);
    // Tiny and huge (finite) quaternions still normalise.
    let mut g = sample(2, 0);
    g.rotations[0] = [1e-30, 0.0, 0.0, 0.0];
    g.rotations[1] = [0.0, 3e38, 3e38, 0.0];
    let back = read_spz(&write_spz(&g, SpzFlavor::NianticV3).unwrap()).unwrap();
    assert_eq!(back.rotations[0], [1.0, 0.0, 0.0, 0.0]);
    assert!((back.rotations[1][1] - std::f32::consts::FRAC_1_SQRT_2).abs() < 0.002);
}

// ---------------------------------------------------------------------------
// The real 404-GEN file.

#[test]
fn robocop_fixture_reads_plausibly() {
    let Some(f) = fixture() else { return };
    let (g, info) = read_spz_with_info(&f).unwrap();
    assert_eq!(info.container, SpzContainer::Zstd);
    assert_eq!(
        (
            info.version,
            info.num_points,
            info.sh_degree,
            info.fractional_bits
        ),
        (2, 267_776, 0, 12)
    );
    assert_eq!(g.len(), 267_776);
    g.check_consistent().unwrap();
    let (lo, hi) = g.bounds().unwrap();
    println!("robocop bounds {lo:?} .. {hi:?}");
    for a in 0..3 {
        assert!(
            lo[a] > -5.0 && hi[a] < 5.0 && hi[a] - lo[a] > 0.1,
            "axis {a}: {lo:?} {hi:?}"
        );
    }
    for i in 0..g.len() {
        assert!(g.means[i]
            .iter()
            .chain(&g.log_scales[i])
            .chain(&g.sh_dc[i])
            .all(|x| x.is_finite()));
        let o = sigmoid(g.opacity_logits[i]);
        assert!(g.opacity_logits[i].is_finite() && (0.0..=1.0).contains(&o));
        let n: f32 = g.rotations[i].iter().map(|c| c * c).sum();
        assert!(
            g.rotations[i][0] >= 0.0 && (0.98..=1.02).contains(&n),
            "rotation {i}: {:?}",
            g.rotations[i]
        );
        assert!(g.log_scales[i].iter().all(|s| (-10.0..=6.0).contains(s)));
    }
    let mean_opacity: f32 =
        g.opacity_logits.iter().map(|&o| sigmoid(o)).sum::<f32>() / g.len() as f32;
    assert!(mean_opacity > 0.05 && mean_opacity < 0.99, "{mean_opacity}");
}

#[test]
fn robocop_fixture_reencodes_byte_for_byte() {
    let Some(f) = fixture() else { return };
    let g = read_spz(&f).unwrap();
    let original = unzstd(&f);
    let again = payload_of(&write_spz(&g, SpzFlavor::Zstd404).unwrap());
    // Every alpha, colour and scale byte re-encodes to itself by design (see
    // `every_byte_decodes_finite_and_reencodes_to_itself`), positions are
    // exact, and this file has no v2 rotation whose rounded x, y, z leave
    // the unit ball, so the whole payload comes back unchanged.
    assert_eq!(original.len(), again.len());
    let differing = original.iter().zip(&again).filter(|(a, b)| a != b).count();
    assert_eq!(differing, 0, "{differing} payload bytes differ");
}

/// `cargo test --release -p splatforge-splat robocop_timing -- --ignored --nocapture`
#[test]
#[ignore]
fn robocop_timing() {
    let Some(f) = fixture() else { return };
    let mut best = (f64::MAX, f64::MAX);
    for _ in 0..5 {
        let t = std::time::Instant::now();
        let g = read_spz(&f).unwrap();
        let dec = t.elapsed().as_secs_f64();
        let t = std::time::Instant::now();
        let out = write_spz(&g, SpzFlavor::Zstd404).unwrap();
        let enc = t.elapsed().as_secs_f64();
        assert!(out.len() > 1000);
        best = (best.0.min(dec), best.1.min(enc));
    }
    let t = std::time::Instant::now();
    let gz = write_spz(&read_spz(&f).unwrap(), SpzFlavor::NianticV3).unwrap();
    let gz_time = t.elapsed().as_secs_f64();
    println!(
        "robocop ({} bytes): decode {:.1} ms, encode Zstd404 {:.1} ms, total {:.1} ms (best of 5); \
         decode + encode NianticV3 (gzip) {:.1} ms -> {} bytes",
        f.len(),
        best.0 * 1e3,
        best.1 * 1e3,
        (best.0 + best.1) * 1e3,
        gz_time * 1e3,
        gz.len()
    );
}
