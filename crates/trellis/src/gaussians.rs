//! The Gaussian decoder's output → 3DGS Gaussians, exactly as TRELLIS does it.
//!
//! TRELLIS turns the decoder's per-voxel channels into its `Gaussian` representation in
//! `SLatGaussianDecoder.to_representation` (`trellis/models/structured_latent_vae/decoder_gs.py`),
//! activates them in `trellis/representations/gaussian/gaussian_model.py` (`get_xyz`,
//! `get_scaling` with the 3D filter `mininum_kernel_size`, `get_opacity`, the rotation bias) and
//! writes a PLY in `Gaussian.save_ply`, which maps positions and rotations through a fixed axis
//! transform and stores the inverse activations. [`GaussianRepresentation::to_gaussians`] does all
//! of that in one pass and returns the values `save_ply` writes, as [`Gaussians`] (pre-activation
//! 3DGS parameters), so our PLY of them equals the official one.
//!
//! Arithmetic follows the official precision: the torch part (decoder output → activated
//! Gaussian → inverse activations) in f32, the numpy part of `save_ply` (rotation matrix → turned
//! → quaternion, via utils3d at the commit TRELLIS pins) in f32 and then f64, as numpy promotes.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use splatforge_splat::{sigmoid, Gaussians};

use crate::sparse::SparseTensor;
use crate::{Result, TrellisError};

/// `save_ply`'s default `transform`: the turned position is `T · xyz`, i.e. `(x, y, z)` →
/// `(x, −z, y)` (TRELLIS' Z-up frame to the Y-up frame of 3DGS viewers); rotations are turned
/// as `T · R`.
pub const SAVE_PLY_TRANSFORM: [[f64; 3]; 3] = [[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]];

/// The axis-aligned box `to_representation` gives every Gaussian (`aabb`): `get_xyz` is
/// `_xyz · size + origin`.
const AABB_ORIGIN: f32 = -0.5;
const AABB_SIZE: f32 = 1.0;

/// The activation of the scale channels (`scaling_activation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScalingActivation {
    /// `exp`, inverse `log`.
    Exp,
    /// `softplus` (β = 1, linear above 20, as torch), inverse `x + log(−expm1(−x))`.
    Softplus,
}

impl ScalingActivation {
    fn apply(self, x: f32) -> f32 {
        match self {
            Self::Exp => x.exp(),
            // torch's softplus returns the input above its threshold 20.
            Self::Softplus if x > 20.0 => x,
            Self::Softplus => x.exp().ln_1p(),
        }
    }

    fn inverse(self, y: f32) -> f32 {
        match self {
            Self::Exp => y.ln(),
            Self::Softplus => y + (-(-y).exp_m1()).ln(),
        }
    }
}

/// The per-channel-group multipliers `lr` of the representation config (each decoder channel
/// group is multiplied by its factor before use).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelMultipliers {
    #[serde(rename = "_xyz")]
    pub xyz: f64,
    #[serde(rename = "_features_dc")]
    pub features_dc: f64,
    #[serde(rename = "_opacity")]
    pub opacity: f64,
    #[serde(rename = "_scaling")]
    pub scaling: f64,
    #[serde(rename = "_rotation")]
    pub rotation: f64,
}

/// The decoder's `representation_config` (the `args` of `SLatGaussianDecoder`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepresentationConfig {
    pub lr: ChannelMultipliers,
    /// Whether the offsets get the fixed per-Gaussian perturbation (`offset_perturbation`).
    pub perturb_offset: bool,
    /// Extent of a voxel's Gaussians around its centre, in voxels (offsets reach
    /// `± voxel_size / 2` voxels).
    pub voxel_size: f64,
    /// Gaussians per voxel.
    pub num_gaussians: usize,
    /// The renderer's screen-space filter; not used to make the Gaussians.
    #[serde(rename = "2d_filter_kernel_size")]
    pub filter_2d_kernel_size: f64,
    /// The 3D filter: the smallest scale, added in quadrature to every activated scale
    /// (`mininum_kernel_size`), in the unit of positions.
    #[serde(rename = "3d_filter_kernel_size")]
    pub filter_3d_kernel_size: f64,
    /// Activated scale of a zero scale channel.
    pub scaling_bias: f64,
    /// Opacity of a zero opacity channel.
    pub opacity_bias: f64,
    pub scaling_activation: ScalingActivation,
}

impl RepresentationConfig {
    /// TRELLIS-image-large's decoder (`configs/vae/slat_vae_enc_dec_gs_swin8_B_64l8_fp16.json`,
    /// `models.decoder.args.representation_config`).
    pub fn trellis_image_large() -> Self {
        Self {
            lr: ChannelMultipliers {
                xyz: 1.0,
                features_dc: 1.0,
                opacity: 1.0,
                scaling: 1.0,
                rotation: 0.1,
            },
            perturb_offset: true,
            voxel_size: 1.5,
            num_gaussians: 32,
            filter_2d_kernel_size: 0.1,
            filter_3d_kernel_size: 9e-4,
            scaling_bias: 4e-3,
            opacity_bias: 0.1,
            scaling_activation: ScalingActivation::Softplus,
        }
    }

    /// Decoder output channels per voxel: for each Gaussian 3 offset, 3 colour, 3 scale,
    /// 4 rotation and 1 opacity channels, in the blocks of [`ChannelBlocks`].
    pub fn channels(&self) -> usize {
        self.num_gaussians * 14
    }

    /// Refuses values that make no Gaussians or undefined activations.
    pub fn check(&self) -> Result<()> {
        let bad = |what: &str| {
            Err(TrellisError::Config(format!(
                "representation_config: {what}"
            )))
        };
        if self.num_gaussians == 0 {
            return bad("num_gaussians must be positive");
        }
        if !(self.voxel_size.is_finite() && self.voxel_size > 0.0) {
            return bad("voxel_size must be positive");
        }
        if !(self.scaling_bias.is_finite() && self.scaling_bias > 0.0) {
            return bad("scaling_bias must be positive");
        }
        if !(self.opacity_bias > 0.0 && self.opacity_bias < 1.0) {
            return bad("opacity_bias must lie in (0, 1)");
        }
        if !(self.filter_3d_kernel_size.is_finite() && self.filter_3d_kernel_size >= 0.0) {
            return bad("3d_filter_kernel_size must be finite and non-negative");
        }
        Ok(())
    }
}

/// Where each channel group starts in a voxel's decoder output (the order of the decoder's
/// `layout`: `_xyz`, `_features_dc`, `_scaling`, `_rotation`, `_opacity`), each laid out
/// Gaussian-major (`[gaussian][component]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelBlocks {
    pub xyz: usize,
    pub features_dc: usize,
    pub scaling: usize,
    pub rotation: usize,
    pub opacity: usize,
}

impl ChannelBlocks {
    /// The blocks for `num_gaussians` Gaussians per voxel.
    pub fn new(num_gaussians: usize) -> Self {
        let g = num_gaussians;
        Self {
            xyz: 0,
            features_dc: 3 * g,
            scaling: 6 * g,
            rotation: 9 * g,
            opacity: 13 * g,
        }
    }
}

/// Turns decoder outputs into Gaussians: the representation config, the grid resolution and
/// the decoder's `offset_perturbation` buffer.
#[derive(Debug, Clone)]
pub struct GaussianRepresentation {
    config: RepresentationConfig,
    resolution: u32,
    /// `[num_gaussians]` offsets added (before the tanh) to each voxel's Gaussian offsets, as
    /// the checkpoint stores them.
    offset_perturbation: Vec<[f32; 3]>,
    blocks: ChannelBlocks,
}

impl GaussianRepresentation {
    /// The representation of a decoder over a `resolution`³ grid. `offset_perturbation` is the
    /// decoder's buffer of that name (`[num_gaussians, 3]`, read from its checkpoint as TRELLIS'
    /// `load_state_dict` does; at construction TRELLIS fills it with
    /// [`hammersley_offset_perturbation`]).
    pub fn new(
        config: RepresentationConfig,
        resolution: u32,
        offset_perturbation: Vec<[f32; 3]>,
    ) -> Result<Self> {
        config.check()?;
        if resolution == 0 {
            return Err(TrellisError::Config(
                "decoder resolution must be positive".into(),
            ));
        }
        if offset_perturbation.len() != config.num_gaussians {
            return Err(TrellisError::Config(format!(
                "offset_perturbation has {} rows for {} Gaussians per voxel",
                offset_perturbation.len(),
                config.num_gaussians
            )));
        }
        let blocks = ChannelBlocks::new(config.num_gaussians);
        Ok(Self {
            config,
            resolution,
            offset_perturbation,
            blocks,
        })
    }

    pub fn config(&self) -> &RepresentationConfig {
        &self.config
    }

    /// The Gaussians of each batch item of the decoder output `output` (`[N, channels]` features
    /// at voxel coordinates of this representation's resolution): `num_gaussians` per voxel,
    /// voxel by voxel, with the values `Gaussian.save_ply` writes.
    pub fn to_gaussians(&self, output: &SparseTensor) -> Result<Vec<Gaussians>> {
        let channels = self.config.channels();
        if output.channels() != channels {
            return Err(TrellisError::InvalidArgument(format!(
                "Gaussian decoder output has {} channels per voxel, want {channels}",
                output.channels()
            )));
        }
        if let Some(bad) = output
            .coords
            .iter()
            .find(|c| c[1..].iter().any(|&v| v >= self.resolution))
        {
            return Err(TrellisError::InvalidArgument(format!(
                "voxel {:?} outside the {}³ grid",
                &bad[1..],
                self.resolution
            )));
        }
        let feats: Vec<f32> = output
            .feats
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        let per_voxel = self.config.num_gaussians;
        let items = output.batch_ranges().into_iter().map(|rows| {
            let n = rows.len() * per_voxel;
            let mut g = Gaussians {
                means: vec![[0.0; 3]; n],
                log_scales: vec![[0.0; 3]; n],
                rotations: vec![[0.0; 4]; n],
                opacity_logits: vec![0.0; n],
                sh_dc: vec![[0.0; 3]; n],
                sh_rest: Vec::new(),
                sh_degree: 0,
            };
            // Voxels are independent: fill each one's Gaussians on all cores.
            (
                g.means.par_chunks_mut(per_voxel),
                g.log_scales.par_chunks_mut(per_voxel),
                g.rotations.par_chunks_mut(per_voxel),
                g.opacity_logits.par_chunks_mut(per_voxel),
                g.sh_dc.par_chunks_mut(per_voxel),
            )
                .into_par_iter()
                .zip(rows.into_par_iter())
                .for_each(
                    |((means, log_scales, rotations, opacity_logits, sh_dc), row)| {
                        let c = output.coords[row];
                        let out = VoxelGaussians {
                            means,
                            log_scales,
                            rotations,
                            opacity_logits,
                            sh_dc,
                        };
                        self.fill_voxel(
                            [c[1], c[2], c[3]],
                            &feats[row * channels..(row + 1) * channels],
                            out,
                        );
                    },
                );
            g
        });
        Ok(items.collect())
    }

    /// Writes the Gaussians of the voxel at grid coordinates `voxel` (inside the grid) from its
    /// decoder channels.
    fn fill_voxel(&self, voxel: [u32; 3], channels: &[f32], out: VoxelGaussians) {
        let cfg = &self.config;
        let lr = &cfg.lr;
        let res = self.resolution as f32;
        // Biases as TRELLIS computes them: from f32 tensors of the config values.
        let scale_bias = cfg.scaling_activation.inverse(cfg.scaling_bias as f32);
        let opacity_bias = inverse_sigmoid(cfg.opacity_bias as f32);
        let min_kernel_sq = (cfg.filter_3d_kernel_size * cfg.filter_3d_kernel_size) as f32;
        let centre = voxel.map(|v| (v as f32 + 0.5) / res);
        let b = &self.blocks;
        for (i, perturbation) in self.offset_perturbation.iter().enumerate() {
            let xyz: [f32; 3] = std::array::from_fn(|a| {
                let mut offset = channels[b.xyz + 3 * i + a] * lr.xyz as f32;
                if cfg.perturb_offset {
                    offset += perturbation[a];
                }
                let offset = offset.tanh() / res * 0.5 * cfg.voxel_size as f32;
                (centre[a] + offset) * AABB_SIZE + AABB_ORIGIN
            });
            out.means[i] = turn_position(xyz);
            out.sh_dc[i] = std::array::from_fn(|a| {
                channels[b.features_dc + 3 * i + a] * lr.features_dc as f32
            });
            out.log_scales[i] = std::array::from_fn(|a| {
                let s = channels[b.scaling + 3 * i + a] * lr.scaling as f32;
                let activated = cfg.scaling_activation.apply(s + scale_bias);
                (activated * activated + min_kernel_sq).sqrt().ln()
            });
            let opacity = channels[b.opacity + i] * lr.opacity as f32 + opacity_bias;
            let logit = inverse_sigmoid(sigmoid(opacity));
            // save_ply's sigmoid → inverse sigmoid round trip overflows where the sigmoid rounds
            // to 0 or 1 in f32 (|logit| ≳ 17); the logit it stands for is `opacity`.
            out.opacity_logits[i] = if logit.is_finite() { logit } else { opacity };
            let quaternion: [f32; 4] = std::array::from_fn(|a| {
                let r = channels[b.rotation + 4 * i + a] * lr.rotation as f32;
                // `rots_bias`: the identity quaternion (1, 0, 0, 0).
                if a == 0 {
                    r + 1.0
                } else {
                    r
                }
            });
            out.rotations[i] = turn_rotation(quaternion);
        }
    }
}

/// One voxel's slots in the output arrays, `num_gaussians` each.
struct VoxelGaussians<'a> {
    means: &'a mut [[f32; 3]],
    log_scales: &'a mut [[f32; 3]],
    rotations: &'a mut [[f32; 4]],
    opacity_logits: &'a mut [f32],
    sh_dc: &'a mut [[f32; 3]],
}

/// The perturbation TRELLIS' decoder builds at construction (`_build_perturbation`):
/// Gaussian `i` of `n` takes the 3D Hammersley point `(i/n, φ₂(i), φ₃(i))` (φ_b: radical
/// inverse in base b), mapped to `atanh((2p − 1) / voxel_size)`, in f32 as torch does.
pub fn hammersley_offset_perturbation(num_gaussians: usize, voxel_size: f64) -> Vec<[f32; 3]> {
    let radical_inverse = |base: usize, mut n: usize| {
        let (mut value, inv_base) = (0.0f64, 1.0 / base as f64);
        let mut weight = inv_base;
        while n > 0 {
            value += (n % base) as f64 * weight;
            n /= base;
            weight *= inv_base;
        }
        value
    };
    (0..num_gaussians)
        .map(|i| {
            let point = [
                i as f64 / num_gaussians as f64,
                radical_inverse(2, i),
                radical_inverse(3, i),
            ];
            point.map(|p| ((p as f32 * 2.0 - 1.0) / voxel_size as f32).atanh())
        })
        .collect()
}

/// `inverse_sigmoid` of TRELLIS' `general_utils`: `log(x / (1 − x))`, unclamped.
fn inverse_sigmoid(x: f32) -> f32 {
    (x / (1.0 - x)).ln()
}

/// `save_ply`'s position: `xyz · Tᵀ` in f64 (numpy promotes the integer transform), which is
/// exact for `T`'s entries 0 and ±1.
fn turn_position(xyz: [f32; 3]) -> [f32; 3] {
    let t = &SAVE_PLY_TRANSFORM;
    std::array::from_fn(|r| (0..3).map(|c| t[r][c] * xyz[c] as f64).sum::<f64>() as f32)
}

/// `save_ply`'s rotation: utils3d's `quaternion_to_matrix` (normalises; f32), `T · R` (f64),
/// then utils3d's `matrix_to_quaternion` (f64), stored as f32.
fn turn_rotation(quaternion: [f32; 4]) -> [f32; 4] {
    let m = quaternion_to_matrix(quaternion);
    let t = &SAVE_PLY_TRANSFORM;
    let turned: [[f64; 3]; 3] = std::array::from_fn(|r| {
        std::array::from_fn(|c| (0..3).map(|k| t[r][k] * m[k][c] as f64).sum())
    });
    matrix_to_quaternion(&turned).map(|v| v as f32)
}

/// utils3d's `quaternion_to_matrix` for a (w, x, y, z) quaternion, in f32:
/// `I + 2 (A + w B)` with `A = v vᵀ − |v|² I`, `B = [v]×`, after normalising (norm clipped
/// below at 1e-12).
fn quaternion_to_matrix(q: [f32; 4]) -> [[f32; 3]; 3] {
    let norm = q.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
    let [w, x, y, z] = q.map(|v| v / norm);
    let v = [x, y, z];
    let v_sq = x * x + y * y + z * z;
    let cross = [[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]];
    std::array::from_fn(|r| {
        std::array::from_fn(|c| {
            let identity = if r == c { 1.0 } else { 0.0 };
            let a = v[r] * v[c] - identity * v_sq;
            identity + 2.0 * (a + w * cross[r][c])
        })
    })
}

/// utils3d's `matrix_to_quaternion` (w, x, y, z), in f64: magnitudes from the diagonal, signs
/// relative to the largest component (the first on ties; numpy's `sign`, 0 at 0), normalised.
fn matrix_to_quaternion(m: &[[f64; 3]; 3]) -> [f64; 4] {
    let (d0, d1, d2) = (m[0][0], m[1][1], m[2][2]);
    let magnitude = |s: [f64; 3]| 0.5 * (1.0 + (s[0] * d0 + s[1] * d1 + s[2] * d2)).max(0.0).sqrt();
    let wxyz = [
        magnitude([1.0, 1.0, 1.0]),
        magnitude([1.0, -1.0, -1.0]),
        magnitude([-1.0, 1.0, -1.0]),
        magnitude([-1.0, -1.0, 1.0]),
    ];
    let largest = (1..4).fold(0, |best, i| if wxyz[i] > wxyz[best] { i } else { best });
    let sign = |v: f64| {
        if v > 0.0 {
            1.0
        } else if v < 0.0 {
            -1.0
        } else {
            0.0
        }
    };
    let xw = sign(m[2][1] - m[1][2]);
    let yw = sign(m[0][2] - m[2][0]);
    let zw = sign(m[1][0] - m[0][1]);
    let yz = sign(m[2][1] + m[1][2]);
    let xz = sign(m[0][2] + m[2][0]);
    let xy = sign(m[0][1] + m[1][0]);
    let signs = match largest {
        0 => [1.0, xw, yw, zw],
        1 => [xw, 1.0, xy, xz],
        2 => [yw, xy, 1.0, yz],
        _ => [zw, xz, yz, 1.0],
    };
    let q: [f64; 4] = std::array::from_fn(|i| signs[i] * wxyz[i]);
    let norm = q.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
    q.map(|v| v / norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};
    use splatforge_splat::ply::{write_ply, PlyWriteOptions};
    use splatforge_splat::rng::SplitMix64;

    fn sparse(coords: Vec<[u32; 4]>, feats: Vec<f32>, channels: usize) -> SparseTensor {
        let rows = coords.len();
        SparseTensor::new(
            coords,
            Tensor::from_vec(feats, (rows, channels), &Device::Cpu).unwrap(),
        )
        .unwrap()
    }

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol * (1.0 + b.abs())
    }

    #[test]
    fn config_parses_the_official_json() {
        let json = r#"{
            "lr": {"_xyz": 1.0, "_features_dc": 1.0, "_opacity": 1.0, "_scaling": 1.0, "_rotation": 0.1},
            "perturb_offset": true, "voxel_size": 1.5, "num_gaussians": 32,
            "2d_filter_kernel_size": 0.1, "3d_filter_kernel_size": 9e-4,
            "scaling_bias": 4e-3, "opacity_bias": 0.1, "scaling_activation": "softplus"
        }"#;
        let parsed: RepresentationConfig = serde_json::from_str(json).unwrap();
        assert_eq!(parsed, RepresentationConfig::trellis_image_large());
        assert_eq!(parsed.channels(), 448);
    }

    #[test]
    fn hammersley_perturbation_by_hand() {
        let p = hammersley_offset_perturbation(32, 1.5);
        assert_eq!(p.len(), 32);
        // Gaussian 0: point (0, 0, 0) → atanh(−1/1.5) on every axis.
        let a = (-1.0f64 / 1.5).atanh();
        assert!(p[0].iter().all(|&v| close(v as f64, a, 1e-6)));
        // Gaussian 1: (1/32, 1/2, 1/3).
        let want = [
            ((2.0 / 32.0 - 1.0) / 1.5f64).atanh(),
            0.0,
            ((2.0 / 3.0 - 1.0) / 1.5f64).atanh(),
        ];
        assert!(
            (0..3).all(|i| close(p[1][i] as f64, want[i], 1e-6)),
            "{:?}",
            p[1]
        );
        // Gaussian 6 = 110₂ = 20₃: (6/32, 3/8, 2/9).
        let want = [6.0 / 32.0, 3.0 / 8.0, 2.0 / 9.0].map(|x: f64| ((2.0 * x - 1.0) / 1.5).atanh());
        assert!(
            (0..3).all(|i| close(p[6][i] as f64, want[i], 1e-6)),
            "{:?}",
            p[6]
        );
    }

    #[test]
    fn zero_channels_give_the_biases() {
        let mut config = RepresentationConfig::trellis_image_large();
        config.num_gaussians = 2;
        config.perturb_offset = false;
        let rep = GaussianRepresentation::new(config, 4, vec![[0.3; 3]; 2]).unwrap();
        let out = rep
            .to_gaussians(&sparse(vec![[0, 1, 2, 3]], vec![0.0; 28], 28))
            .unwrap();
        let g = &out[0];
        assert_eq!(g.len(), 2);
        // Voxel centre (1.5, 2.5, 3.5) / 4 − 0.5 = (−0.125, 0.125, 0.375), turned to (x, −z, y).
        assert_eq!(g.means[1], [-0.125, -0.375, 0.125]);
        assert!(close(g.opacity_logits[0] as f64, (0.1f64 / 0.9).ln(), 1e-6));
        // softplus(inverse softplus(0.004)) = 0.004, then the 3D filter: √(0.004² + 0.0009²) = 0.0041.
        assert!(
            g.log_scales[0]
                .iter()
                .all(|&s| close(s as f64, 0.0041f64.ln(), 1e-5)),
            "{:?}",
            g.log_scales[0]
        );
        // The identity turned by T is a +90° turn about x.
        let h = std::f64::consts::FRAC_1_SQRT_2;
        let want = [h, h, 0.0, 0.0];
        assert!(
            (0..4).all(|i| close(g.rotations[0][i] as f64, want[i], 1e-7)),
            "{:?}",
            g.rotations[0]
        );
        assert_eq!(g.sh_dc[0], [0.0; 3]);
    }

    /// One Gaussian's 17 PLY floats as `save_ply` defines them, written out in f64 from the
    /// raw decoder channels: the rotation is turned as a quaternion product with T's
    /// quaternion (+90° about x) and given utils3d's sign (largest component positive).
    fn save_ply_row(
        voxel: [u32; 3],
        ch: &[f32],
        i: usize,
        g: usize,
        res: f64,
        pert: [f32; 3],
        cfg: &RepresentationConfig,
    ) -> [f64; 17] {
        let at = |block: usize, k: usize, n: usize| ch[block * g + n * i + k] as f64;
        let xyz: [f64; 3] = std::array::from_fn(|a| {
            let offset =
                (at(0, a, 3) * cfg.lr.xyz + pert[a] as f64).tanh() / res * 0.5 * cfg.voxel_size;
            (voxel[a] as f64 + 0.5) / res + offset - 0.5
        });
        let softplus = |x: f64| x.exp().ln_1p();
        let scale_bias = cfg.scaling_bias + (-(-cfg.scaling_bias).exp_m1()).ln();
        let scale: [f64; 3] = std::array::from_fn(|a| {
            let s = softplus(at(6, a, 3) * cfg.lr.scaling + scale_bias);
            (s * s + cfg.filter_3d_kernel_size.powi(2)).sqrt().ln()
        });
        let opacity =
            at(13, 0, 1) * cfg.lr.opacity + (cfg.opacity_bias / (1.0 - cfg.opacity_bias)).ln();
        let mut q: [f64; 4] = std::array::from_fn(|k| at(9, k, 4) * cfg.lr.rotation);
        q[0] += 1.0;
        let n = q.iter().map(|v| v * v).sum::<f64>().sqrt();
        let [w, x, y, z] = q.map(|v| v / n);
        let h = std::f64::consts::FRAC_1_SQRT_2;
        // (h, h, 0, 0) ⊗ (w, x, y, z)
        let mut turned = [h * (w - x), h * (x + w), h * (y - z), h * (z + y)];
        let largest = (0..4).fold(0, |b, k| {
            if turned[k].abs() > turned[b].abs() {
                k
            } else {
                b
            }
        });
        if turned[largest] < 0.0 {
            turned = turned.map(|v| -v);
        }
        let dc: [f64; 3] = std::array::from_fn(|a| at(3, a, 3) * cfg.lr.features_dc);
        [
            xyz[0], -xyz[2], xyz[1], 0.0, 0.0, 0.0, dc[0], dc[1], dc[2], opacity, scale[0],
            scale[1], scale[2], turned[0], turned[1], turned[2], turned[3],
        ]
    }

    #[test]
    fn ply_equals_save_ply_on_a_small_latent() {
        let mut config = RepresentationConfig::trellis_image_large();
        config.num_gaussians = 4;
        let (g, res) = (4, 8u32);
        let channels = config.channels();
        let pert = hammersley_offset_perturbation(g, config.voxel_size);
        let rep = GaussianRepresentation::new(config.clone(), res, pert.clone()).unwrap();
        let coords = vec![[0, 0, 7, 3], [0, 5, 1, 2], [1, 7, 7, 7]];
        let mut rng = SplitMix64::new(5);
        let feats: Vec<f32> = (0..coords.len() * channels)
            .map(|_| rng.uniform(-2.0, 2.0) as f32)
            .collect();
        let out = rep
            .to_gaussians(&sparse(coords.clone(), feats.clone(), channels))
            .unwrap();
        assert_eq!(out.iter().map(Gaussians::len).collect::<Vec<_>>(), [8, 4]);

        let names = [
            "x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0",
            "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3",
        ];
        let mut item_rows = [0..2, 2..3].into_iter();
        for gaussians in &out {
            let bytes = write_ply(gaussians, PlyWriteOptions { normals: true }).unwrap();
            // plyfile's header for save_ply's one `vertex` element of f4 properties.
            let mut header = format!(
                "ply\nformat binary_little_endian 1.0\nelement vertex {}\n",
                gaussians.len()
            );
            names
                .iter()
                .for_each(|n| header.push_str(&format!("property float {n}\n")));
            header.push_str("end_header\n");
            assert_eq!(&bytes[..header.len()], header.as_bytes());
            let body: Vec<f32> = bytes[header.len()..]
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            assert_eq!(body.len(), gaussians.len() * 17);
            let rows = item_rows.next().unwrap();
            let mut k = 0;
            for row in rows {
                let c = coords[row];
                for (i, &perturbation) in pert.iter().enumerate() {
                    let want = save_ply_row(
                        [c[1], c[2], c[3]],
                        &feats[row * channels..(row + 1) * channels],
                        i,
                        g,
                        res as f64,
                        perturbation,
                        &config,
                    );
                    for (p, name) in names.iter().enumerate() {
                        let ours = body[k * 17 + p] as f64;
                        // utils3d takes the quaternion's small components from the f32 matrix's
                        // diagonal (√ of a difference near 0), which save_ply inherits: absolute
                        // error there, relative elsewhere.
                        let ok = if name.starts_with("rot") {
                            (ours - want[p]).abs() < 5e-5
                        } else {
                            close(ours, want[p], 2e-6)
                        };
                        assert!(ok, "voxel {row} Gaussian {i} {name}: {ours} vs {}", want[p]);
                    }
                    k += 1;
                }
            }
        }
    }

    #[test]
    fn exp_scaling_activation_uses_log_bias() {
        let mut config = RepresentationConfig::trellis_image_large();
        config.num_gaussians = 1;
        config.scaling_activation = ScalingActivation::Exp;
        let rep = GaussianRepresentation::new(config, 2, vec![[0.0; 3]]).unwrap();
        let mut feats = vec![0.0; 14];
        feats[6] = 1.5;
        let out = rep
            .to_gaussians(&sparse(vec![[0, 1, 1, 1]], feats, 14))
            .unwrap();
        // exp(1.5 + log 0.004) = 0.004·e^1.5, then the 3D filter.
        let s = 0.004 * 1.5f64.exp();
        let want = [
            (s * s + 9e-4f64.powi(2)).sqrt().ln(),
            (0.004f64.powi(2) + 9e-4f64.powi(2)).sqrt().ln(),
        ];
        assert!(
            close(out[0].log_scales[0][0] as f64, want[0], 1e-5),
            "{:?}",
            out[0].log_scales[0]
        );
        assert!(
            close(out[0].log_scales[0][1] as f64, want[1], 1e-5),
            "{:?}",
            out[0].log_scales[0]
        );
    }

    #[test]
    fn saturated_opacity_stays_finite() {
        let mut config = RepresentationConfig::trellis_image_large();
        config.num_gaussians = 1;
        let rep = GaussianRepresentation::new(config, 2, vec![[0.0; 3]]).unwrap();
        let mut feats = vec![0.0; 14];
        feats[13] = 40.0;
        let out = rep
            .to_gaussians(&sparse(vec![[0, 0, 0, 0]], feats, 14))
            .unwrap();
        assert!(close(
            out[0].opacity_logits[0] as f64,
            40.0 + (0.1f64 / 0.9).ln(),
            1e-6
        ));
    }

    #[test]
    fn rejects_bad_inputs() {
        let config = RepresentationConfig::trellis_image_large();
        assert!(GaussianRepresentation::new(config.clone(), 64, vec![[0.0; 3]; 31]).is_err());
        assert!(GaussianRepresentation::new(config.clone(), 0, vec![[0.0; 3]; 32]).is_err());
        let mut bad = config.clone();
        bad.opacity_bias = 1.0;
        assert!(GaussianRepresentation::new(bad, 64, vec![[0.0; 3]; 32]).is_err());
        let rep = GaussianRepresentation::new(config, 4, vec![[0.0; 3]; 32]).unwrap();
        assert!(rep
            .to_gaussians(&sparse(vec![[0, 0, 0, 0]], vec![0.0; 447], 447))
            .is_err());
        assert!(rep
            .to_gaussians(&sparse(vec![[0, 4, 0, 0]], vec![0.0; 448], 448))
            .is_err());
    }
}
