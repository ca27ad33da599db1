//! Recentring, rescaling and changing the up axis of a splat.

use crate::sh::ShRotation;
use crate::{Gaussians, SplatError};

/// The validators' bounding-box size.
pub const VALIDATOR_BOX: f32 = 1.5;

/// Moves the centre of the means' bounding box to the origin and scales the
/// splat uniformly so its longest side is `size` (log-scales follow).
/// A splat of one point, or of coincident points, is only recentred.
pub fn fit_to_box(g: &mut Gaussians, size: f32) -> Result<(), SplatError> {
    if !(size.is_finite() && size > 0.0) {
        return Err(SplatError::invalid(format!("box size must be positive, got {size}")));
    }
    let Some((lo, hi)) = g.bounds() else { return Ok(()) };
    if lo.iter().chain(&hi).any(|v| !v.is_finite()) {
        return Err(SplatError::invalid("positions contain NaN or Inf; cannot normalise"));
    }
    let centre: [f32; 3] = std::array::from_fn(|a| 0.5 * (lo[a] + hi[a]));
    let extent = (0..3).map(|a| hi[a] - lo[a]).fold(0.0f32, f32::max);
    let k = if extent > 0.0 { size / extent } else { 1.0 };
    for m in &mut g.means {
        for a in 0..3 {
            m[a] = (m[a] - centre[a]) * k;
        }
    }
    let log_k = k.ln();
    for s in &mut g.log_scales {
        s.iter_mut().for_each(|v| *v += log_k);
    }
    Ok(())
}

/// Which world axis points up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpAxis {
    Y,
    Z,
}

/// Rotates the splat so that what pointed up along `from` points up along
/// `to`: Z-up → Y-up maps (x, y, z) to (x, z, −y), a −90° turn about X.
/// Rotations and view-dependent colour (SH) turn with it.
pub fn convert_up_axis(g: &mut Gaussians, from: UpAxis, to: UpAxis) {
    let half = std::f32::consts::FRAC_1_SQRT_2;
    let (r, q) = match (from, to) {
        (UpAxis::Z, UpAxis::Y) => ([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]], [half, -half, 0.0, 0.0]),
        (UpAxis::Y, UpAxis::Z) => ([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]], [half, half, 0.0, 0.0]),
        _ => return,
    };
    for m in &mut g.means {
        *m = std::array::from_fn(|a| (0..3).map(|b| r[a][b] * m[b]).sum());
    }
    for rot in &mut g.rotations {
        *rot = quat_mul(q, *rot);
    }
    if g.sh_degree > 0 {
        let sh = ShRotation::new(r, g.sh_degree);
        let k = g.rest_coeffs() * 3;
        g.sh_rest.chunks_exact_mut(k).for_each(|rest| sh.apply(rest));
    }
}

/// Hamilton product of (w, x, y, z) quaternions.
fn quat_mul(a: [f32; 4], b: [f32; 4]) -> [f32; 4] {
    [
        a[0] * b[0] - a[1] * b[1] - a[2] * b[2] - a[3] * b[3],
        a[0] * b[1] + a[1] * b[0] + a[2] * b[3] - a[3] * b[2],
        a[0] * b[2] - a[1] * b[3] + a[2] * b[0] + a[3] * b[1],
        a[0] * b[3] + a[1] * b[2] - a[2] * b[1] + a[3] * b[0],
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gaussians::sample;

    #[test]
    fn fit_to_box_centres_and_scales() {
        let mut g = sample(50, 0);
        let before = g.clone();
        fit_to_box(&mut g, VALIDATOR_BOX).unwrap();
        let (lo, hi) = g.bounds().unwrap();
        let extent = (0..3).map(|a| hi[a] - lo[a]).fold(0.0f32, f32::max);
        assert!((extent - 1.5).abs() < 1e-5);
        for a in 0..3 {
            assert!((lo[a] + hi[a]).abs() < 1e-5);
        }
        let (blo, bhi) = before.bounds().unwrap();
        let k = 1.5 / (0..3).map(|a| bhi[a] - blo[a]).fold(0.0f32, f32::max);
        assert!((g.log_scales[7][2] - before.log_scales[7][2] - k.ln()).abs() < 1e-5);
        assert!(fit_to_box(&mut g, 0.0).is_err());
        let mut one = sample(1, 0);
        fit_to_box(&mut one, 1.5).unwrap();
        assert_eq!(one.means[0], [0.0; 3]);
    }

    #[test]
    fn z_up_to_y_up_and_back() {
        let mut g = sample(10, 3);
        g.means[0] = [0.0, 0.0, 1.0];
        let before = g.clone();
        convert_up_axis(&mut g, UpAxis::Z, UpAxis::Y);
        assert!((g.means[0][1] - 1.0).abs() < 1e-6 && g.means[0][2].abs() < 1e-6);
        convert_up_axis(&mut g, UpAxis::Y, UpAxis::Z);
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-4);
        assert!(close(g.means.as_flattened(), before.means.as_flattened()));
        assert!(close(&g.sh_rest, &before.sh_rest));
        // Quaternions come back up to sign.
        for (q, p) in g.rotations.iter().zip(&before.rotations) {
            let dot: f32 = q.iter().zip(p).map(|(a, b)| a * b).sum();
            let nn: f32 = p.iter().map(|v| v * v).sum();
            assert!((dot.abs() - nn).abs() < 1e-4);
        }
    }
}
