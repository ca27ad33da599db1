//! Recentring, rescaling and changing the up axis of a splat.

use crate::sh::ShRotation;
use crate::{logit, sigmoid, Gaussians, SplatError};

/// The validators' bounding-box size.
pub const VALIDATOR_BOX: f32 = 1.5;

/// The transform the 404-GEN validator applies before rendering, exactly:
/// `transform_gs_data` (with `recenter_gs_points`) in
/// `validation/engine/rendering/gaussian_splatting/gs_utils.py` of
/// 404-Repo/three-gen-subnet, called by `Renderer.render_gs` in
/// `validation/engine/rendering/renderer.py` with `ref_bbox_size = 1.5`.
/// With `k = ref_box / e`, where `e` is the longest side of the means'
/// axis-aligned bounding box (open3d's, in f64):
/// - means: `(p − m) · k`, where `m` is numpy's `points.mean()` without an
///   axis, i.e. the mean of all 3N coordinates: ONE scalar subtracted from
///   x, y and z alike (so the result is not centred per axis);
/// - scales (after the exponential): `· k` (log-scales `+ ln k`);
/// - opacities (after the sigmoid): `clip(α / k, 0, 1)` (the code's
///   `volume_scale = np.prod(scaling)` of the scalar `k` is `k` itself), so
///   a splat shrunk into the box becomes more opaque. An opacity clipped
///   to 1 is stored as the largest logit [`logit`] gives (1 − 1.2e-7).
///
/// Rotations and colours are untouched. A splat whose means all coincide
/// (`e = 0`, where the validator divides by zero) is only recentred.
/// Applying it twice changes nothing more: the mean is then 0 and `k` 1.
pub fn validator_transform(g: &mut Gaussians, ref_box: f32) -> Result<(), SplatError> {
    if !(ref_box.is_finite() && ref_box > 0.0) {
        return Err(SplatError::invalid(format!(
            "box size must be positive, got {ref_box}"
        )));
    }
    let Some((lo, hi)) = g.bounds() else {
        return Ok(());
    };
    if lo.iter().chain(&hi).any(|v| !v.is_finite()) {
        return Err(SplatError::invalid(
            "positions contain NaN or Inf; cannot normalise",
        ));
    }
    let extent = (0..3)
        .map(|a| f64::from(hi[a]) - f64::from(lo[a]))
        .fold(0.0f64, f64::max);
    let k = if extent > 0.0 {
        f64::from(ref_box) / extent
    } else {
        1.0
    };
    let coordinate_sum: f64 = g.means.iter().flatten().map(|&v| f64::from(v)).sum();
    let mean = (coordinate_sum / (3 * g.means.len()) as f64) as f32;
    let k32 = k as f32;
    for m in &mut g.means {
        m.iter_mut().for_each(|v| *v = (*v - mean) * k32);
    }
    let log_k = k.ln() as f32;
    for s in &mut g.log_scales {
        s.iter_mut().for_each(|v| *v += log_k);
    }
    for o in &mut g.opacity_logits {
        *o = logit((f64::from(sigmoid(*o)) / k).clamp(0.0, 1.0) as f32);
    }
    Ok(())
}

/// Moves the centre of the means' bounding box to the origin and scales the
/// splat uniformly so its longest side is `size` (log-scales follow;
/// opacities stay). A splat of one point, or of coincident points, is only
/// recentred. Not what the validators do ([`validator_transform`]): their
/// mean-based recentring leaves a splat off-centre by up to half its box.
pub fn fit_to_box(g: &mut Gaussians, size: f32) -> Result<(), SplatError> {
    if !(size.is_finite() && size > 0.0) {
        return Err(SplatError::invalid(format!(
            "box size must be positive, got {size}"
        )));
    }
    let Some((lo, hi)) = g.bounds() else {
        return Ok(());
    };
    if lo.iter().chain(&hi).any(|v| !v.is_finite()) {
        return Err(SplatError::invalid(
            "positions contain NaN or Inf; cannot normalise",
        ));
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
        (UpAxis::Z, UpAxis::Y) => (
            [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]],
            [half, -half, 0.0, 0.0],
        ),
        (UpAxis::Y, UpAxis::Z) => (
            [[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]],
            [half, half, 0.0, 0.0],
        ),
        _ => return,
    };
    rotate(g, r, q);
}

/// Turns a Y-down splat upright: 180° about X, (x, y, z) → (x, −y, −z). TRELLIS' `save_ply`
/// frame is Y-down (its Z-up turned by (x, y, z) → (x, −z, y)); 404's competition wants the
/// object's up along +Y, as SuperSplat shows it. A proper rotation (not a mirror), so
/// rotations and SH turn with it and nothing is reflected.
pub fn y_down_to_y_up(g: &mut Gaussians) {
    rotate(
        g,
        [[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]],
        [0.0, 1.0, 0.0, 0.0],
    );
}

/// Turns means by `r`, rotations by the quaternion `q` (the same rotation) and SH with them.
fn rotate(g: &mut Gaussians, r: [[f32; 3]; 3], q: [f32; 4]) {
    for m in &mut g.means {
        *m = std::array::from_fn(|a| (0..3).map(|b| r[a][b] * m[b]).sum());
    }
    for rot in &mut g.rotations {
        *rot = quat_mul(q, *rot);
    }
    if g.sh_degree > 0 {
        let sh = ShRotation::new(r, g.sh_degree);
        let k = g.rest_coeffs() * 3;
        g.sh_rest
            .chunks_exact_mut(k)
            .for_each(|rest| sh.apply(rest));
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

    /// Pins [`validator_transform`] against values worked out by hand from
    /// `transform_gs_data`'s formulas. Fails on the code before issue 17
    /// (item 2), which had only the bounding-box fit.
    #[test]
    fn validator_transform_matches_the_validators_formulas_by_hand() {
        let mut g = sample(3, 1);
        g.means = vec![[0.0, 0.0, 0.0], [2.0, 1.0, 0.0], [1.0, 3.0, 3.0]];
        g.opacity_logits = vec![logit(0.3), logit(0.8), logit(0.25)];
        g.log_scales = vec![[0.0, 1.0, -1.0], [0.5, 0.5, 0.5], [-2.0, -2.0, -2.0]];
        let before = g.clone();
        validator_transform(&mut g, 1.5).unwrap();
        // points.mean() = (0+0+0 + 2+1+0 + 1+3+3) / 9 = 10/9; extents
        // (2, 3, 3) → max 3 → scaling = 1.5 / 3 = 0.5.
        let (m, k) = (10.0f32 / 9.0, 0.5f32);
        let expected_means = [
            [-m * k, -m * k, -m * k],
            [(2.0 - m) * k, (1.0 - m) * k, -m * k],
            [(1.0 - m) * k, (3.0 - m) * k, (3.0 - m) * k],
        ];
        for (got, want) in g.means.iter().zip(&expected_means) {
            for a in 0..3 {
                assert!((got[a] - want[a]).abs() < 1e-6, "{got:?} vs {want:?}");
            }
        }
        // Scales · 0.5; opacities / 0.5 clipped to 1: 0.6, 1, 0.5.
        for (got, was) in g.log_scales.iter().zip(&before.log_scales) {
            for a in 0..3 {
                assert!((got[a] - (was[a] + k.ln())).abs() < 1e-6);
            }
        }
        let opacities: Vec<f32> = g.opacity_logits.iter().map(|&o| sigmoid(o)).collect();
        for (got, want) in opacities.iter().zip([0.6, 1.0, 0.5]) {
            assert!((got - want).abs() < 1e-6, "{opacities:?}");
        }
        assert!(g.opacity_logits.iter().all(|o| o.is_finite()));
        assert_eq!((&g.rotations, &g.sh_dc), (&before.rotations, &before.sh_dc));

        // Idempotent: the mean is now 0 and the extent 1.5.
        let once = g.clone();
        validator_transform(&mut g, 1.5).unwrap();
        for (a, b) in g.means.as_flattened().iter().zip(once.means.as_flattened()) {
            assert!((a - b).abs() < 1e-6);
        }
        assert!(validator_transform(&mut g, 0.0).is_err());
        let mut one = sample(1, 0);
        one.means[0] = [1.0, 2.0, 6.0];
        validator_transform(&mut one, 1.5).unwrap();
        assert_eq!(
            one.means[0],
            [-2.0, -1.0, 3.0],
            "coincident means: only the scalar mean 3 is subtracted"
        );
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

    /// TRELLIS' `save_ply` frame turned upright equals the Z-up → Y-up turn of the model's
    /// own frame: `save_ply`'s (x, −z, y) is `convert_up_axis(Y, Z)`, and
    /// [`y_down_to_y_up`] after it gives what `convert_up_axis(Z, Y)` gives directly. Fails
    /// if the turn were a mirror (y → −y alone) or the wrong axis.
    #[test]
    fn save_ply_frame_turned_upright_is_y_up() {
        let mut z_up = sample(20, 3);
        z_up.means[0] = [0.1, 0.2, 1.0];
        let mut upright = z_up.clone();
        convert_up_axis(&mut upright, UpAxis::Z, UpAxis::Y);
        let mut ply = z_up.clone();
        convert_up_axis(&mut ply, UpAxis::Y, UpAxis::Z);
        assert!(
            (ply.means[0][1] + 1.0).abs() < 1e-6,
            "save_ply's frame is Y-down"
        );
        y_down_to_y_up(&mut ply);
        assert!((ply.means[0][1] - 1.0).abs() < 1e-6, "up is +Y");
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-4);
        assert!(close(
            ply.means.as_flattened(),
            upright.means.as_flattened()
        ));
        assert!(close(&ply.sh_rest, &upright.sh_rest));
        for (q, p) in ply.rotations.iter().zip(&upright.rotations) {
            let dot: f32 = q.iter().zip(p).map(|(a, b)| a * b).sum();
            let nn: f32 = p.iter().map(|v| v * v).sum();
            assert!((dot.abs() - nn).abs() < 1e-4, "{q:?} vs {p:?}");
        }
    }
}
