//! The parameter buffer's layout (one f32 buffer: means, quaternions,
//! log-scales, opacity logits, SH; see the module docs) and its
//! conversions from and to [`Gaussians`], with the gradients of a step in
//! the same groups.

use super::*;

/// Floats per Gaussian in the parameter layout for `k` SH coefficients.
pub(super) fn row_floats(k: usize) -> usize {
    11 + 3 * k
}

/// Packs `g` into the device layout (see the module docs).
pub(super) fn pack_params(g: &Gaussians) -> Vec<f32> {
    let n = g.len();
    let sh = pack_sh(g);
    let k = sh_coeffs_per_channel(g.sh_degree);
    let mut out = Vec::with_capacity(n * row_floats(k));
    out.extend(g.means.iter().flatten());
    out.extend(g.rotations.iter().flatten());
    out.extend(g.log_scales.iter().flatten());
    out.extend_from_slice(&g.opacity_logits);
    out.extend_from_slice(&sh);
    out
}

/// Inverse of [`pack_params`].
fn unpack_params(p: &[f32], n: usize, sh_degree: u8) -> Gaussians {
    let k = sh_coeffs_per_channel(sh_degree);
    assert_eq!(p.len(), n * row_floats(k));
    let a3 = |s: &[f32]| {
        s.chunks_exact(3)
            .map(|c| [c[0], c[1], c[2]])
            .collect::<Vec<_>>()
    };
    let (sh_dc, sh_rest) = split_sh(&p[11 * n..], sh_degree);
    Gaussians {
        means: a3(&p[..3 * n]),
        rotations: p[3 * n..7 * n]
            .chunks_exact(4)
            .map(|c| [c[0], c[1], c[2], c[3]])
            .collect(),
        log_scales: a3(&p[7 * n..10 * n]),
        opacity_logits: p[10 * n..11 * n].to_vec(),
        sh_dc,
        sh_rest,
        sh_degree,
    }
}

/// Gradients of the parameter groups, shaped as [`GaussianTensors`] and
/// contiguous (what the fused Adam reads).
pub(super) struct ParamGrads {
    pub(super) means: Tensor,
    pub(super) quats: Tensor,
    pub(super) log_scales: Tensor,
    pub(super) opacity_logits: Tensor,
    pub(super) sh: Tensor,
}

impl ParamGrads {
    pub(super) fn of(g: GradientTensors) -> Self {
        ParamGrads {
            means: g.means,
            quats: g.quats,
            log_scales: g.log_scales,
            opacity_logits: g.opacity_logits,
            sh: g.sh,
        }
    }

    /// The element-wise sum (the gradients of two rasterizer calls).
    pub(super) fn add(&self, o: &ParamGrads) -> Result<ParamGrads> {
        Ok(ParamGrads {
            means: (&self.means + &o.means)?,
            quats: (&self.quats + &o.quats)?,
            log_scales: (&self.log_scales + &o.log_scales)?,
            opacity_logits: (&self.opacity_logits + &o.opacity_logits)?,
            sh: (&self.sh + &o.sh)?,
        })
    }
}

impl CudaBackend {
    /// Downloads the Gaussians, the optimiser state and the densification
    /// statistics in the CPU backend's types.
    pub fn download_state(&mut self) -> Result<(Gaussians, Adam, DensifyState)> {
        self.check_deferred()?;
        let g = self.try_gaussians()?;
        let n = self.n;
        let rest = g.rest_coeffs() * 3;
        let mut adam = Adam::new(n, rest, self.settings.adam);
        let m = self
            .stream
            .clone_dtoh(&self.m)
            .map_err(|e| dev_err("download", e))?;
        let v = self
            .stream
            .clone_dtoh(&self.v)
            .map_err(|e| dev_err("download", e))?;
        let gm = unpack_params(
            &m[..n * row_floats(sh_coeffs_per_channel(self.sh_degree))],
            n,
            self.sh_degree,
        );
        let gv = unpack_params(
            &v[..n * row_floats(sh_coeffs_per_channel(self.sh_degree))],
            n,
            self.sh_degree,
        );
        for (grp, step) in Group::ALL.iter().zip(self.adam_steps) {
            let pick = |x: &Gaussians| -> Vec<f32> {
                match grp {
                    Group::Xyz => x.means.as_flattened().to_vec(),
                    Group::FDc => x.sh_dc.as_flattened().to_vec(),
                    Group::FRest => x.sh_rest.clone(),
                    Group::Opacity => x.opacity_logits.clone(),
                    Group::Scaling => x.log_scales.as_flattened().to_vec(),
                    Group::Rotation => x.rotations.as_flattened().to_vec(),
                }
            };
            let mm = adam.group_mut(*grp);
            mm.m = pick(&gm);
            mm.v = pick(&gv);
            mm.step = step;
        }
        let dl = |s: &CudaSlice<f32>| -> Result<Vec<f32>> {
            let mut v = self
                .stream
                .clone_dtoh(s)
                .map_err(|e| dev_err("download", e))?;
            v.truncate(n);
            Ok(v)
        };
        let state = DensifyState {
            grad_accum: dl(&self.grad_accum)?,
            denom: dl(&self.denom)?,
            max_radii: dl(&self.max_radii)?,
        };
        Ok((g, adam, state))
    }

    /// The Gaussians, or the device error.
    pub fn try_gaussians(&self) -> Result<Gaussians> {
        let host = self.params.to_vec1::<f32>()?;
        Ok(unpack_params(&host, self.n, self.sh_degree))
    }

    pub(super) fn gaussian_tensors(&self) -> Result<GaussianTensors> {
        let n = self.n;
        let k = self.k();
        let p = &self.params;
        Ok(GaussianTensors {
            means: p.narrow(0, 0, 3 * n)?.reshape((n, 3))?,
            quats: p.narrow(0, 3 * n, 4 * n)?.reshape((n, 4))?,
            log_scales: p.narrow(0, 7 * n, 3 * n)?.reshape((n, 3))?,
            opacity_logits: p.narrow(0, 10 * n, n)?,
            sh: p.narrow(0, 11 * n, 3 * k * n)?.reshape((n, k, 3))?,
            sh_degree: self.sh_degree,
        })
    }
}
