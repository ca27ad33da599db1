//! `SparseStructureDecoder` (`trellis/models/sparse_structure_vae.py`): the 3D convolutional
//! decoder from the `[B, 8, 16³]` structure latent to `[B, 1, 64³]` occupancy logits, and
//! the occupied coordinates (`logits > 0`, as `sample_sparse_structure` takes them).
//!
//! The dense 3D convolution ([`Conv3d`]) is written on candle ops (im2col over depth slabs,
//! then one matrix product per slab), so it runs on any device; the GPU path is meant to
//! replace it with cuDNN's graph API (the runtime's 2D convolutions already use it).

use candle_core::{DType, Tensor};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};
use splatforge_nn::ops::{self, GroupNorm};

use crate::blocks::LayerNorm32;
use crate::{Result, TrellisError};

/// The official class name in `ckpts/<name>.json`.
pub const CLASS: &str = "SparseStructureDecoder";

/// The most elements one im2col slab may hold (256 MiB of f32): bounds the convolution's
/// scratch memory whatever the volume.
const IM2COL_SLAB_ELEMENTS: usize = 1 << 26;

/// `nn.Conv3d(in, out, k, padding=k/2)`, stride 1: `weight [O, I, k, k, k]`, `bias [O]`.
#[derive(Debug, Clone)]
pub struct Conv3d {
    weight: Tensor,
    bias: Tensor,
}

impl Conv3d {
    /// Loads `weight` and `bias` under `vb` (odd `kernel`, "same" padding).
    pub fn load(
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        if kernel % 2 == 0 {
            return Err(TrellisError::Config(format!(
                "3D convolution: even kernel {kernel} has no centred padding"
            )));
        }
        let fan_in = (in_channels * kernel.pow(3)) as f64;
        let bound = fan_in.powf(-0.5);
        let weight = vb.get_with_hints(
            (out_channels, in_channels, kernel, kernel, kernel),
            "weight",
            Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )?;
        let bias = vb.get_with_hints(
            out_channels,
            "bias",
            Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )?;
        Ok(Self { weight, bias })
    }

    /// `x [B, I, D, H, W]` → `[B, O, D, H, W]`: zero padding `k/2`, cross-correlation as
    /// torch's `conv3d`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, d, h, w) = x.dims5()?;
        let (o, i, k, _, _) = self.weight.dims5()?;
        if c != i {
            return Err(TrellisError::InvalidArgument(format!(
                "3D convolution over {i} channels got {:?}",
                x.dims()
            )));
        }
        let pad = k / 2;
        let x = x.to_dtype(self.weight.dtype())?;
        if let Some(y) = splatforge_nn::ops::conv3d(&x, &self.weight, Some(&self.bias), pad, 1)? {
            return Ok(y);
        }
        let padded = x
            .pad_with_zeros(2, pad, pad)?
            .pad_with_zeros(3, pad, pad)?
            .pad_with_zeros(4, pad, pad)?;
        let taps = c * k * k * k;
        let kernel = self.weight.reshape((o, taps))?;
        let slab_depth = (IM2COL_SLAB_ELEMENTS / (taps * h * w).max(1)).clamp(1, d.max(1));
        let mut items = Vec::with_capacity(b);
        for item in 0..b {
            let volume = padded.get(item)?;
            let mut slabs = Vec::new();
            let mut z0 = 0;
            while z0 < d {
                let depth = slab_depth.min(d - z0);
                let mut columns = Vec::with_capacity(k * k * k);
                for kd in 0..k {
                    for kh in 0..k {
                        for kw in 0..k {
                            columns.push(
                                volume
                                    .narrow(1, z0 + kd, depth)?
                                    .narrow(2, kh, h)?
                                    .narrow(3, kw, w)?,
                            );
                        }
                    }
                }
                // [C, k³, depth, H, W]: rows in the weight's (c, kd, kh, kw) order.
                let columns = Tensor::stack(&columns, 1)?.reshape((taps, depth * h * w))?;
                slabs.push(kernel.matmul(&columns)?);
                z0 += depth;
            }
            items.push(
                Tensor::cat(&slabs, 1)?
                    .broadcast_add(&self.bias.unsqueeze(1)?)?
                    .reshape((o, d, h, w))?,
            );
        }
        Ok(Tensor::stack(&items, 0)?)
    }
}

/// `pixel_shuffle_3d`: `[B, C·8, D, H, W]` → `[B, C, 2D, 2H, 2W]`, channel `c·8 + (i·4 + j·2
/// + l)` landing at offset `(i, j, l)` of each 2³ cell.
pub fn pixel_shuffle_3d(x: &Tensor) -> Result<Tensor> {
    let (b, c8, d, h, w) = x.dims5()?;
    if c8 % 8 != 0 {
        return Err(TrellisError::InvalidArgument(format!(
            "pixel shuffle of {c8} channels"
        )));
    }
    let c = c8 / 8;
    let x = x
        .reshape(vec![b, c, 2, 2, 2, d, h, w])?
        .permute([0, 1, 5, 2, 6, 3, 7, 4])?;
    Ok(x.contiguous()?.reshape((b, c, 2 * d, 2 * h, 2 * w))?)
}

/// The decoder's normalisation: `ChannelLayerNorm32` (`norm_type="layer"`, the default:
/// layer norm over channels, eps 1e-5, with affine) or `GroupNorm32` (32 groups).
#[derive(Debug, Clone)]
enum ChannelNorm {
    Layer(LayerNorm32),
    Group(GroupNorm),
}

impl ChannelNorm {
    fn load(norm_type: &str, channels: usize, vb: VarBuilder) -> Result<Self> {
        let vb = vb.to_dtype(DType::F32);
        match norm_type {
            "layer" => Ok(Self::Layer(LayerNorm32::load(channels, 1e-5, true, vb)?)),
            "group" => Ok(Self::Group(ops::group_norm(32, channels, 1e-5, vb)?)),
            other => Err(TrellisError::Config(format!(
                "norm_type `{other}` (layer or group)"
            ))),
        }
    }

    /// `[B, C, D, H, W]` → same, in the input dtype; SiLU after the norm when `silu`.
    fn forward(&self, x: &Tensor, silu: bool) -> Result<Tensor> {
        match self {
            Self::Layer(norm) => Ok(norm.forward_channels(x, silu)?),
            Self::Group(norm) => {
                let h = norm
                    .forward(&x.to_dtype(DType::F32)?)?
                    .to_dtype(x.dtype())?;
                Ok(if silu { h.silu()? } else { h })
            }
        }
    }
}

/// `ResBlock3d(channels, out_channels)`.
#[derive(Debug, Clone)]
struct ResBlock3d {
    norm1: ChannelNorm,
    conv1: Conv3d,
    norm2: ChannelNorm,
    conv2: Conv3d,
    skip_connection: Option<Conv3d>,
}

impl ResBlock3d {
    fn load(channels: usize, out_channels: usize, norm_type: &str, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm1: ChannelNorm::load(norm_type, channels, vb.pp("norm1"))?,
            conv1: Conv3d::load(channels, out_channels, 3, vb.pp("conv1"))?,
            norm2: ChannelNorm::load(norm_type, out_channels, vb.pp("norm2"))?,
            conv2: Conv3d::load(out_channels, out_channels, 3, vb.pp("conv2"))?,
            skip_connection: if channels == out_channels {
                None
            } else {
                Some(Conv3d::load(
                    channels,
                    out_channels,
                    1,
                    vb.pp("skip_connection"),
                )?)
            },
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward(x, true)?)?;
        let h = self.conv2.forward(&self.norm2.forward(&h, true)?)?;
        let skip = match &self.skip_connection {
            Some(conv) => conv.forward(x)?,
            None => x.clone(),
        };
        Ok((h + skip)?)
    }
}

#[derive(Debug, Clone)]
enum DecoderBlock {
    Res(ResBlock3d),
    /// `UpsampleBlock3d(mode="conv")`: a convolution to 8× the channels, then pixel shuffle.
    Upsample(Conv3d),
}

fn default_middle_blocks() -> usize {
    2
}
fn default_norm_type() -> String {
    "layer".into()
}

/// The constructor arguments (`args` of `ckpts/ss_dec_*.json`), defaults as the official.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SparseStructureDecoderConfig {
    pub out_channels: usize,
    pub latent_channels: usize,
    pub num_res_blocks: usize,
    pub channels: Vec<usize>,
    #[serde(default = "default_middle_blocks")]
    pub num_res_blocks_middle: usize,
    #[serde(default = "default_norm_type")]
    pub norm_type: String,
    #[serde(default)]
    pub use_fp16: bool,
}

impl SparseStructureDecoderConfig {
    /// `ckpts/ss_dec_conv3d_16l8_fp16.json` of TRELLIS-image-large, as published at
    /// <https://huggingface.co/JeffreyXiang/TRELLIS-image-large/blob/main/ckpts/ss_dec_conv3d_16l8_fp16.json>
    /// (the decoder of the official `configs/vae/ss_vae_conv3d_16l8_fp16.json`), `norm_type` at
    /// its default.
    pub fn image_large() -> Self {
        Self {
            out_channels: 1,
            latent_channels: 8,
            num_res_blocks: 2,
            channels: vec![512, 128, 32],
            num_res_blocks_middle: 2,
            norm_type: "layer".into(),
            use_fp16: true,
        }
    }

    /// The same structure at test size: channels 16 → 8, one res block per level.
    pub fn tiny() -> Self {
        Self {
            out_channels: 1,
            latent_channels: 4,
            num_res_blocks: 1,
            channels: vec![16, 8],
            num_res_blocks_middle: 1,
            norm_type: "layer".into(),
            use_fp16: false,
        }
    }
}

/// The stage-1 decoder.
#[derive(Debug, Clone)]
pub struct SparseStructureDecoder {
    input_layer: Conv3d,
    middle_block: Vec<ResBlock3d>,
    blocks: Vec<DecoderBlock>,
    out_norm: ChannelNorm,
    out_conv: Conv3d,
    /// The dtype of the middle and upsampling blocks (`vb`'s at load).
    dtype: DType,
}

impl SparseStructureDecoder {
    /// Builds the decoder from weights under the official names; the input and output
    /// layers load in f32, the rest in `vb`'s dtype (as `convert_to_fp16` leaves them).
    pub fn load(config: &SparseStructureDecoderConfig, vb: VarBuilder) -> Result<Self> {
        let ch = &config.channels;
        let (first, last) = match (ch.first(), ch.last()) {
            (Some(f), Some(l)) => (*f, *l),
            _ => {
                return Err(TrellisError::Config(
                    "SparseStructureDecoder needs at least one channel level".into(),
                ))
            }
        };
        let f32_vb = vb.to_dtype(DType::F32);
        let norm = config.norm_type.as_str();
        let middle_block = (0..config.num_res_blocks_middle)
            .map(|i| ResBlock3d::load(first, first, norm, vb.pp("middle_block").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let mut blocks = Vec::new();
        for (level, &c) in ch.iter().enumerate() {
            for _ in 0..config.num_res_blocks {
                blocks.push(DecoderBlock::Res(ResBlock3d::load(
                    c,
                    c,
                    norm,
                    vb.pp("blocks").pp(blocks.len()),
                )?));
            }
            if let Some(&next) = ch.get(level + 1) {
                blocks.push(DecoderBlock::Upsample(Conv3d::load(
                    c,
                    next * 8,
                    3,
                    vb.pp("blocks").pp(blocks.len()).pp("conv"),
                )?));
            }
        }
        Ok(Self {
            input_layer: Conv3d::load(config.latent_channels, first, 3, f32_vb.pp("input_layer"))?,
            middle_block,
            blocks,
            out_norm: ChannelNorm::load(norm, last, f32_vb.pp("out_layer").pp("0"))?,
            out_conv: Conv3d::load(last, config.out_channels, 3, f32_vb.pp("out_layer").pp("2"))?,
            dtype: vb.dtype(),
        })
    }

    /// How many times the decoder doubles the latent's side.
    pub fn upsampling_levels(&self) -> usize {
        self.blocks
            .iter()
            .filter(|b| matches!(b, DecoderBlock::Upsample(_)))
            .count()
    }

    /// `z [B, latent, R, R, R]` → logits `[B, out, R·2^(levels−1), …]` (f32).
    pub fn forward(&self, z: &Tensor) -> Result<Tensor> {
        let mut h = self
            .input_layer
            .forward(&z.to_dtype(DType::F32)?)?
            .to_dtype(self.dtype)?;
        for block in &self.middle_block {
            h = block.forward(&h)?;
        }
        for block in &self.blocks {
            h = match block {
                DecoderBlock::Res(res) => res.forward(&h)?,
                DecoderBlock::Upsample(conv) => pixel_shuffle_3d(&conv.forward(&h)?)?,
            };
        }
        let h = self.out_norm.forward(&h.to_dtype(DType::F32)?, true)?;
        self.out_conv.forward(&h)
    }
}

/// The voxels with a positive logit in channel 0 of `logits [B, 1, X, Y, Z]`, as
/// `(batch, x, y, z)` in row-major order (`torch.argwhere(logits > 0)[:, [0, 2, 3, 4]]`).
pub fn occupied_coords(logits: &Tensor) -> Result<Vec<[u32; 4]>> {
    let (_, _, x, y, z) = logits.dims5()?;
    let values = logits
        .narrow(1, 0, 1)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    Ok(values
        .iter()
        .enumerate()
        .filter(|(_, v)| **v > 0.0)
        .map(|(i, _)| {
            [
                (i / (x * y * z)) as u32,
                ((i / (y * z)) % x) as u32,
                ((i / z) % y) as u32,
                (i % z) as u32,
            ]
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use splatforge_nn::weights::SeededInit;

    fn randn(dims: &[usize], seed: u64) -> Tensor {
        SeededInit::new(seed)
            .var_builder()
            .get_with_hints(
                dims,
                "x",
                Init::Randn {
                    mean: 0.0,
                    stdev: 1.0,
                },
            )
            .unwrap()
    }

    /// torch's conv3d (stride 1, zero padding k/2) as nested loops in f64.
    fn naive_conv3d(
        x: &[f32],
        dims: [usize; 5],
        w: &[f32],
        bias: &[f32],
        o: usize,
        k: usize,
    ) -> Vec<f64> {
        let [b, c, d, h, wd] = dims;
        let p = k as isize / 2;
        let mut out = vec![0f64; b * o * d * h * wd];
        for bi in 0..b {
            for oc in 0..o {
                for z in 0..d {
                    for y in 0..h {
                        for xx in 0..wd {
                            let mut s = bias[oc] as f64;
                            for ic in 0..c {
                                for kd in 0..k {
                                    for kh in 0..k {
                                        for kw in 0..k {
                                            let (zz, yy, xw) = (
                                                z as isize + kd as isize - p,
                                                y as isize + kh as isize - p,
                                                xx as isize + kw as isize - p,
                                            );
                                            if zz < 0
                                                || yy < 0
                                                || xw < 0
                                                || zz >= d as isize
                                                || yy >= h as isize
                                                || xw >= wd as isize
                                            {
                                                continue;
                                            }
                                            let xi = (((bi * c + ic) * d + zz as usize) * h
                                                + yy as usize)
                                                * wd
                                                + xw as usize;
                                            let wi = (((oc * c + ic) * k + kd) * k + kh) * k + kw;
                                            s += x[xi] as f64 * w[wi] as f64;
                                        }
                                    }
                                }
                            }
                            out[(((bi * o + oc) * d + z) * h + y) * wd + xx] = s;
                        }
                    }
                }
            }
        }
        out
    }

    fn flat(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    #[test]
    fn conv3d_matches_the_naive_loop() {
        for (k, dims) in [(3usize, [2usize, 3, 4, 5, 3]), (1, [1, 4, 2, 3, 2])] {
            let init = SeededInit::new(k as u64);
            let conv = Conv3d::load(dims[1], 5, k, init.var_builder()).unwrap();
            let x = randn(&dims, 7);
            let y = conv.forward(&x).unwrap();
            assert_eq!(y.dims(), &[dims[0], 5, dims[2], dims[3], dims[4]]);
            let t = init.tensors();
            let want = naive_conv3d(
                &flat(&x),
                dims,
                &flat(&t["weight"]),
                &flat(&t["bias"]),
                5,
                k,
            );
            let diff = flat(&y)
                .iter()
                .zip(&want)
                .map(|(a, b)| (*a as f64 - b).abs())
                .fold(0.0, f64::max);
            assert!(diff < 1e-4, "k={k}: max |Δ| {diff}");
        }
        assert!(Conv3d::load(2, 2, 2, SeededInit::new(1).var_builder()).is_err());
    }

    #[test]
    fn conv3d_over_depth_slabs_equals_one_pass() {
        // A volume whose im2col needs several slabs: 64·27 taps × 64² rows per depth slice.
        let init = SeededInit::new(3);
        let conv = Conv3d::load(64, 2, 3, init.var_builder()).unwrap();
        let x = randn(&[1, 64, 18, 64, 64], 2);
        let y = conv.forward(&x).unwrap();
        let t = init.tensors();
        let w = t["weight"].reshape((2, 64 * 27)).unwrap();
        // Output voxel (z=17, y=0, x=63) written out from the padded neighbourhood.
        let padded = x
            .pad_with_zeros(2, 1, 1)
            .unwrap()
            .pad_with_zeros(3, 1, 1)
            .unwrap()
            .pad_with_zeros(4, 1, 1)
            .unwrap();
        let patch = padded
            .get(0)
            .unwrap()
            .narrow(1, 17, 3)
            .unwrap()
            .narrow(2, 0, 3)
            .unwrap()
            .narrow(3, 63, 3)
            .unwrap();
        let want = (w
            .matmul(&patch.reshape((64 * 27, 1)).unwrap())
            .unwrap()
            .squeeze(1)
            .unwrap()
            + &t["bias"])
            .unwrap();
        let got = y
            .get(0)
            .unwrap()
            .narrow(1, 17, 1)
            .unwrap()
            .narrow(2, 0, 1)
            .unwrap()
            .narrow(3, 63, 1)
            .unwrap()
            .flatten_all()
            .unwrap();
        let diff = (got - want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-3, "{diff}");
    }

    #[test]
    fn pixel_shuffle_places_channels_in_cells() {
        let x = Tensor::arange(0f32, 16.0 * 8.0, &Device::Cpu)
            .unwrap()
            .reshape((1, 16, 2, 2, 2))
            .unwrap();
        let y = pixel_shuffle_3d(&x).unwrap();
        assert_eq!(y.dims(), &[1, 2, 4, 4, 4]);
        let (yv, xv) = (flat(&y), flat(&x));
        // y[0, c, 2D+i, 2H+j, 2W+l] = x[0, c·8 + i·4 + j·2 + l, D, H, W]
        for (c, i, j, l, d, h, w) in [
            (1, 1, 0, 1, 0, 1, 1),
            (0, 0, 1, 0, 1, 0, 1),
            (1, 1, 1, 1, 1, 1, 1),
        ] {
            let yi = ((c * 4 + 2 * d + i) * 4 + 2 * h + j) * 4 + 2 * w + l;
            let xi = (((c * 8 + i * 4 + j * 2 + l) * 2 + d) * 2 + h) * 2 + w;
            assert_eq!(yv[yi], xv[xi]);
        }
    }

    #[test]
    fn tiny_decoder_runs_with_official_names_and_layer_norm_over_channels() {
        let config = SparseStructureDecoderConfig::tiny();
        let init = SeededInit::new(5);
        let dec = SparseStructureDecoder::load(&config, init.var_builder()).unwrap();
        let names: Vec<String> = init.tensors().keys().cloned().collect();
        for n in [
            "input_layer.weight",
            "middle_block.0.norm1.weight",
            "middle_block.0.conv2.bias",
            "blocks.0.conv1.weight",
            "blocks.1.conv.weight",
            "blocks.2.norm2.bias",
            "out_layer.0.weight",
            "out_layer.2.weight",
        ] {
            assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
        }
        assert_eq!(
            init.tensors()["blocks.1.conv.weight"].dims(),
            &[64, 16, 3, 3, 3]
        );
        let z = randn(&[1, 4, 4, 4, 4], 9);
        let logits = dec.forward(&z).unwrap();
        assert_eq!(logits.dims(), &[1, 1, 8, 8, 8]);

        // ChannelLayerNorm32: every voxel's channels normalised with the affine.
        let norm =
            ChannelNorm::load("layer", 16, init.var_builder().pp("middle_block.0.norm1")).unwrap();
        let x = randn(&[1, 16, 2, 2, 2], 4);
        let y = flat(&norm.forward(&x, false).unwrap());
        let xv = flat(&x);
        let (w, b) = (
            flat(&init.tensors()["middle_block.0.norm1.weight"]),
            flat(&init.tensors()["middle_block.0.norm1.bias"]),
        );
        let voxel = 5;
        let v: Vec<f64> = (0..16).map(|c| xv[c * 8 + voxel] as f64).collect();
        let mean = v.iter().sum::<f64>() / 16.0;
        let var = v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / 16.0;
        for c in 0..16 {
            let want = (v[c] - mean) / (var + 1e-5).sqrt() * w[c] as f64 + b[c] as f64;
            assert!((y[c * 8 + voxel] as f64 - want).abs() < 1e-4);
        }
    }

    #[test]
    fn the_preset_is_the_published_checkpoint_json() {
        let published = r#"{"name": "SparseStructureDecoder", "args": {"out_channels": 1, "latent_channels": 8,
            "num_res_blocks": 2, "num_res_blocks_middle": 2, "channels": [512, 128, 32], "use_fp16": true}}"#;
        let ckpt: crate::config::Checkpoint<SparseStructureDecoderConfig> =
            serde_json::from_str(published).unwrap();
        assert_eq!(ckpt.name, CLASS);
        assert_eq!(ckpt.args, SparseStructureDecoderConfig::image_large());
    }

    #[test]
    fn occupied_coords_are_argwhere_order() {
        let mut v = vec![-1f32; 2 * 2 * 3 * 2];
        for i in [5usize, 0, 23, 13] {
            v[i] = 0.5;
        }
        v[7] = 0.0; // not > 0
        let logits = Tensor::from_vec(v, (2, 1, 2, 3, 2), &Device::Cpu).unwrap();
        let coords = occupied_coords(&logits).unwrap();
        assert_eq!(
            coords,
            vec![[0, 0, 0, 0], [0, 0, 2, 1], [1, 0, 0, 1], [1, 1, 2, 1]]
        );
    }
}
