//! The in-memory Gaussian splat: one struct of arrays, in the 3DGS conventions.

use crate::error::SplatError;

/// Spherical-harmonics constant of degree 0 ([`crate::sh::C0`] in `f32`):
/// `rgb = 0.5 + SH_C0 * f_dc`.
pub const SH_C0: f32 = crate::sh::C0 as f32;

/// Number of SH coefficients per colour channel for a degree (1, 4, 9, 16).
pub const fn sh_coeffs_per_channel(degree: u8) -> usize {
    let d = degree as usize + 1;
    d * d
}

/// A set of 3D Gaussians, stored as parallel arrays (one entry per Gaussian).
///
/// All values are **pre-activation**, exactly as the 3DGS PLY stores them:
/// - `means`: world-space centres (x, y, z), in scene units.
/// - `log_scales`: natural log of the three standard deviations along the
///   Gaussian's local axes; `exp(log_scale)` is the scale in scene units.
/// - `rotations`: quaternions in (w, x, y, z) order, *not* necessarily
///   normalised; consumers normalise before use.
/// - `opacity_logits`: `sigmoid(logit)` is the opacity in [0, 1].
/// - `sh_dc`: the degree-0 SH coefficient per channel (R, G, B);
///   the base colour is `0.5 + SH_C0 * sh_dc`.
/// - `sh_rest`: the higher-order SH coefficients, laid out
///   `[gaussian][coefficient][channel]` with `rest_coeffs()` coefficients per
///   Gaussian (0, 3, 8 or 15). Note the PLY stores them channel-major
///   (all R, then all G, then all B); the readers and writers convert.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Gaussians {
    pub means: Vec<[f32; 3]>,
    pub log_scales: Vec<[f32; 3]>,
    pub rotations: Vec<[f32; 4]>,
    pub opacity_logits: Vec<f32>,
    pub sh_dc: Vec<[f32; 3]>,
    pub sh_rest: Vec<f32>,
    /// SH degree, 0 to 3.
    pub sh_degree: u8,
}

impl Gaussians {
    /// An empty set with room for `n` Gaussians of the given SH degree.
    pub fn with_capacity(n: usize, sh_degree: u8) -> Self {
        let rest = sh_coeffs_per_channel(sh_degree) - 1;
        Gaussians {
            means: Vec::with_capacity(n),
            log_scales: Vec::with_capacity(n),
            rotations: Vec::with_capacity(n),
            opacity_logits: Vec::with_capacity(n),
            sh_dc: Vec::with_capacity(n),
            sh_rest: Vec::with_capacity(n * rest * 3),
            sh_degree,
        }
    }

    /// Number of Gaussians.
    pub fn len(&self) -> usize {
        self.means.len()
    }

    pub fn is_empty(&self) -> bool {
        self.means.is_empty()
    }

    /// Higher-order SH coefficients per channel (0, 3, 8 or 15).
    pub fn rest_coeffs(&self) -> usize {
        sh_coeffs_per_channel(self.sh_degree) - 1
    }

    /// The `rest_coeffs() * 3` higher-order SH values of Gaussian `i`,
    /// `[coefficient][channel]`.
    pub fn sh_rest_of(&self, i: usize) -> &[f32] {
        let k = self.rest_coeffs() * 3;
        &self.sh_rest[i * k..(i + 1) * k]
    }

    /// Checks that all arrays agree in length and the SH degree is supported.
    pub fn check_consistent(&self) -> Result<(), SplatError> {
        let n = self.len();
        if self.sh_degree > 3 {
            return Err(SplatError::invalid(format!(
                "SH degree {} is not supported (0 to 3)",
                self.sh_degree
            )));
        }
        let lens = [
            ("log_scales", self.log_scales.len()),
            ("rotations", self.rotations.len()),
            ("opacity_logits", self.opacity_logits.len()),
            ("sh_dc", self.sh_dc.len()),
        ];
        for (name, len) in lens {
            if len != n {
                return Err(SplatError::invalid(format!(
                    "{name} has {len} entries but there are {n} means"
                )));
            }
        }
        let want = n * self.rest_coeffs() * 3;
        if self.sh_rest.len() != want {
            return Err(SplatError::invalid(format!(
                "sh_rest has {} values, expected {want} for {n} Gaussians of SH degree {}",
                self.sh_rest.len(),
                self.sh_degree
            )));
        }
        Ok(())
    }

    /// Keeps only the Gaussians for which `keep(i)` is true, preserving order.
    pub fn retain_indices(&mut self, keep: impl Fn(usize) -> bool) {
        let k = self.rest_coeffs() * 3;
        let mut out = Gaussians::with_capacity(self.len(), self.sh_degree);
        for i in (0..self.len()).filter(|&i| keep(i)) {
            out.means.push(self.means[i]);
            out.log_scales.push(self.log_scales[i]);
            out.rotations.push(self.rotations[i]);
            out.opacity_logits.push(self.opacity_logits[i]);
            out.sh_dc.push(self.sh_dc[i]);
            out.sh_rest
                .extend_from_slice(&self.sh_rest[i * k..(i + 1) * k]);
        }
        *self = out;
    }

    /// Axis-aligned bounds of the means: (min, max). `None` when empty.
    pub fn bounds(&self) -> Option<([f32; 3], [f32; 3])> {
        let first = *self.means.first()?;
        let mut lo = first;
        let mut hi = first;
        for m in &self.means {
            for a in 0..3 {
                lo[a] = lo[a].min(m[a]);
                hi[a] = hi[a].max(m[a]);
            }
        }
        Some((lo, hi))
    }
}

/// Logistic sigmoid, the activation of an opacity logit.
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Inverse sigmoid, clamped so that 0 and 1 map to finite logits.
pub fn logit(p: f32) -> f32 {
    let p = p.clamp(1e-7, 1.0 - 1e-7);
    (p / (1.0 - p)).ln()
}

#[cfg(test)]
pub(crate) use tests::sample;

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic splat of `n` Gaussians for tests in this crate.
    pub(crate) fn sample(n: usize, sh_degree: u8) -> Gaussians {
        let mut g = Gaussians::with_capacity(n, sh_degree);
        let mut s = 0x2545_f491_u32;
        let mut rnd = move || {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) * 2.0 - 1.0
        };
        for _ in 0..n {
            g.means.push([rnd(), rnd(), rnd()]);
            g.log_scales.push([rnd() - 4.0, rnd() - 4.0, rnd() - 4.0]);
            g.rotations.push([rnd(), rnd(), rnd(), rnd()]);
            g.opacity_logits.push(rnd() * 3.0);
            g.sh_dc.push([rnd(), rnd(), rnd()]);
            for _ in 0..g.rest_coeffs() * 3 {
                g.sh_rest.push(rnd() * 0.3);
            }
        }
        g
    }

    #[test]
    fn consistent_sample_and_retain() {
        let mut g = sample(10, 2);
        g.check_consistent().unwrap();
        let kept: Vec<_> = (0..10).filter(|i| i % 3 == 0).map(|i| g.means[i]).collect();
        let rest3 = g.sh_rest_of(3).to_vec();
        g.retain_indices(|i| i % 3 == 0);
        g.check_consistent().unwrap();
        assert_eq!(g.means, kept);
        assert_eq!(g.sh_rest_of(1), &rest3[..]);
    }

    #[test]
    fn inconsistent_lengths_are_reported() {
        let mut g = sample(4, 1);
        g.opacity_logits.pop();
        let e = g.check_consistent().unwrap_err().to_string();
        assert!(e.contains("opacity_logits"), "{e}");
    }

    #[test]
    fn sigmoid_logit_inverse() {
        for p in [0.01f32, 0.1, 0.5, 0.9, 0.99] {
            assert!((sigmoid(logit(p)) - p).abs() < 1e-6);
        }
        assert!(logit(0.0).is_finite() && logit(1.0).is_finite());
    }
}
