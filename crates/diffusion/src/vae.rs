//! The Stable Diffusion KL autoencoder (diffusers `AutoencoderKL`): encoder
//! and decoder written here from candle-nn operations, so that candle's
//! autograd runs from the latents back to the input image (SDS needs the
//! encoder's gradient), with tiled encoding and decoding for large images.
//!
//! candle-transformers has the same architecture as
//! `stable_diffusion::vae::AutoEncoderKL`, but its encoder is private; ours
//! has the same tensor names (diffusers' `AutoencoderKL`: `encoder.down_blocks.{i}.resnets.{j}.conv1`,
//! `decoder.mid_block.attentions.0.to_q`, `quant_conv`, ...; the older
//! attention names `query`/`key`/`value`/`proj_attn` are read too), so it
//! loads diffusers folders and, through [`crate::mvdream::ldm::vae_key`], the
//! `first_stage_model.*` part of LDM checkpoints.
//!
//! Architecture (diffusers `Encoder` / `Decoder` with `DownEncoderBlock2D` /
//! `UpDecoderBlock2D`): ResNet blocks without time embedding (GroupNorm,
//! SiLU, 3×3 conv, twice; 1×1 `conv_shortcut` when the width changes),
//! downsampling by a stride-2 3×3 convolution after zero padding (0, 1, 0, 1),
//! upsampling by nearest ×2 and a 3×3 convolution, a mid block of ResNet /
//! single-head self-attention / ResNet, GroupNorm eps 1e-6 everywhere.
//! `SD` latents are `(mean − shift_factor) · scaling_factor` (SD: shift 0,
//! scale 0.18215; FLUX: shift 0.1159, scale 0.3611).
//!
//! # Tiling
//! Above [`TilingOptions::tile_px`] pixels on a side, [`Vae::decode`] and
//! [`Vae::encode`] work on overlapping tiles (`tile_px` square, `overlap_px`
//! shared between neighbours, the last tile of a row or column moved back to
//! end at the border so that all tiles have the same shape). Each tile's
//! output is multiplied by a separable raised-cosine ramp (rising over the
//! overlap at the tile's start, falling at its end; computed once per tile
//! shape and overlap and cached on the device), accumulated, and the sum is
//! divided by the accumulated weights. Tiles see only their part of the
//! image (GroupNorm statistics and the mid-block attention are per tile), so
//! tiled and untiled results differ slightly: see the tests and BENCHMARKS.md
//! for the measured bound.

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{linear, Conv2dConfig, Linear, VarBuilder};

use serde::{Deserialize, Serialize};
use splatforge_nn::ops::{conv2d, group_norm, Conv2d, GroupNorm};

/// `vae/config.json` (diffusers `AutoencoderKL`), the fields we use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VaeConfig {
    #[serde(default = "three")]
    pub in_channels: usize,
    #[serde(default = "three")]
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    #[serde(default = "four")]
    pub latent_channels: usize,
    #[serde(default = "thirty_two")]
    pub norm_num_groups: usize,
    /// Latents are multiplied by this after encoding (SD: 0.18215).
    #[serde(default = "sd_scale")]
    pub scaling_factor: f64,
    /// Subtracted from the latent mean before scaling (FLUX: 0.1159; SD: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shift_factor: Option<f64>,
    #[serde(default = "yes")]
    pub use_quant_conv: bool,
    #[serde(default = "yes")]
    pub use_post_quant_conv: bool,
    /// Whether the mid blocks have their self-attention (diffusers `mid_block_add_attention`).
    #[serde(default = "yes")]
    pub mid_block_add_attention: bool,
}

fn three() -> usize {
    3
}
fn four() -> usize {
    4
}
fn thirty_two() -> usize {
    32
}
fn sd_scale() -> f64 {
    0.18215
}
fn yes() -> bool {
    true
}

impl VaeConfig {
    /// SD 2.1 (and MVDream) VAE: `ch 128, ch_mult [1, 2, 4, 4], num_res_blocks 2`.
    pub fn sd21() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            latent_channels: 4,
            norm_num_groups: 32,
            scaling_factor: 0.18215,
            shift_factor: None,
            use_quant_conv: true,
            use_post_quant_conv: true,
            mid_block_add_attention: true,
        }
    }

    /// FLUX.1's VAE (`black-forest-labs/FLUX.1-schnell`, `vae/config.json`):
    /// 16 latent channels, no quant convolutions, shift 0.1159, scale 0.3611.
    pub fn flux() -> Self {
        Self {
            latent_channels: 16,
            scaling_factor: 0.3611,
            shift_factor: Some(0.1159),
            use_quant_conv: false,
            use_post_quant_conv: false,
            ..Self::sd21()
        }
    }

    /// Image pixels per latent pixel (2^(levels−1); 8 for SD).
    pub fn downscale(&self) -> usize {
        1 << (self.block_out_channels.len().saturating_sub(1))
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.block_out_channels.is_empty() {
            return Err("vae: block_out_channels is empty".into());
        }
        if self.layers_per_block == 0 {
            return Err("vae: layers_per_block is 0".into());
        }
        if let Some(c) = self
            .block_out_channels
            .iter()
            .find(|&&c| c % self.norm_num_groups != 0)
        {
            return Err(format!(
                "vae: {c} channels are not divisible into {} groups",
                self.norm_num_groups
            ));
        }
        Ok(())
    }
}

/// GroupNorm epsilon of every norm in the KL autoencoder.
const EPS: f64 = 1e-6;

fn conv3(cin: usize, cout: usize, vb: VarBuilder) -> Result<Conv2d> {
    conv2d(
        cin,
        cout,
        3,
        Conv2dConfig {
            padding: 1,
            ..Default::default()
        },
        vb,
    )
}

fn conv1(cin: usize, cout: usize, vb: VarBuilder) -> Result<Conv2d> {
    conv2d(cin, cout, 1, Conv2dConfig::default(), vb)
}

/// `ResnetBlock2D` without time embedding.
#[derive(Debug, Clone)]
struct ResBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    norm2: GroupNorm,
    conv2: Conv2d,
    shortcut: Option<Conv2d>,
}

impl ResBlock {
    fn new(vb: VarBuilder, cin: usize, cout: usize, groups: usize) -> Result<Self> {
        Ok(Self {
            norm1: group_norm(groups, cin, EPS, vb.pp("norm1"))?,
            conv1: conv3(cin, cout, vb.pp("conv1"))?,
            norm2: group_norm(groups, cout, EPS, vb.pp("norm2"))?,
            conv2: conv3(cout, cout, vb.pp("conv2"))?,
            shortcut: if cin != cout {
                Some(conv1(cin, cout, vb.pp("conv_shortcut"))?)
            } else {
                None
            },
        })
    }

    /// The `n` ResNet blocks of one encoder or decoder level (`vb.pp(j)`): the
    /// first from `cin` to `cout` channels, the others at `cout`.
    fn chain(
        vb: VarBuilder,
        n: usize,
        cin: usize,
        cout: usize,
        groups: usize,
    ) -> Result<Vec<Self>> {
        (0..n)
            .map(|j| Self::new(vb.pp(j), if j == 0 { cin } else { cout }, cout, groups))
            .collect()
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward_silu(x)?)?;
        let h = self.conv2.forward(&self.norm2.forward_silu(&h)?)?;
        match &self.shortcut {
            Some(s) => s.forward(x)? + h,
            None => x + h,
        }
    }
}

/// The mid block's single-head self-attention over all pixels (diffusers
/// `Attention` with `residual_connection`, softmax in f32).
#[derive(Debug, Clone)]
struct AttnBlock {
    norm: GroupNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
}

impl AttnBlock {
    fn new(vb: VarBuilder, c: usize, groups: usize) -> Result<Self> {
        let (q, k, v, o) =
            if !vb.contains_tensor("to_q.weight") && vb.contains_tensor("query.weight") {
                ("query", "key", "value", "proj_attn")
            } else {
                ("to_q", "to_k", "to_v", "to_out.0")
            };
        Ok(Self {
            norm: group_norm(groups, c, EPS, vb.pp("group_norm"))?,
            q: linear(c, c, vb.pp(q))?,
            k: linear(c, c, vb.pp(k))?,
            v: linear(c, c, vb.pp(v))?,
            out: linear(c, c, vb.pp(o))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let t = self
            .norm
            .forward(x)?
            .reshape((b, c, h * w))?
            .transpose(1, 2)?
            .contiguous()?;
        let q = self.q.forward(&t)?;
        let k = self.k.forward(&t)?;
        let v = self.v.forward(&t)?;
        let o = self
            .out
            .forward(&splatforge_nn::ops::attention(&q, &k, &v, 1)?)?;
        let o = o.transpose(1, 2)?.reshape((b, c, h, w))?;
        x + o
    }
}

/// `UNetMidBlock2D`: ResNet, attention, ResNet.
#[derive(Debug, Clone)]
struct MidBlock {
    res0: ResBlock,
    attn: Option<AttnBlock>,
    res1: ResBlock,
}

impl MidBlock {
    fn new(vb: VarBuilder, c: usize, groups: usize, attention: bool) -> Result<Self> {
        Ok(Self {
            res0: ResBlock::new(vb.pp("resnets").pp(0), c, c, groups)?,
            attn: if attention {
                Some(AttnBlock::new(vb.pp("attentions").pp(0), c, groups)?)
            } else {
                None
            },
            res1: ResBlock::new(vb.pp("resnets").pp(1), c, c, groups)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.res0.forward(x)?;
        if let Some(a) = &self.attn {
            h = a.forward(&h)?;
        }
        self.res1.forward(&h)
    }
}

#[derive(Debug, Clone)]
struct DownBlock {
    resnets: Vec<ResBlock>,
    /// Stride-2 3×3 convolution after zero padding right and bottom by one.
    down: Option<Conv2d>,
}

#[derive(Debug, Clone)]
struct UpBlock {
    resnets: Vec<ResBlock>,
    /// Nearest ×2, then a 3×3 convolution.
    up: Option<Conv2d>,
}

/// diffusers `Encoder`: image `[B, in, H, W]` in [−1, 1] → moments `[B, 2·latent, H/f, W/f]`.
#[derive(Debug, Clone)]
struct Encoder {
    conv_in: Conv2d,
    blocks: Vec<DownBlock>,
    mid: MidBlock,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Encoder {
    fn new(vb: VarBuilder, c: &VaeConfig) -> Result<Self> {
        let ch = &c.block_out_channels;
        let g = c.norm_num_groups;
        let conv_in = conv3(c.in_channels, ch[0], vb.pp("conv_in"))?;
        let mut blocks = vec![];
        let mut cin = ch[0];
        for (i, &cout) in ch.iter().enumerate() {
            let bvb = vb.pp("down_blocks").pp(i);
            let resnets = ResBlock::chain(bvb.pp("resnets"), c.layers_per_block, cin, cout, g)?;
            let down = if i + 1 < ch.len() {
                Some(conv2d(
                    cout,
                    cout,
                    3,
                    Conv2dConfig {
                        stride: 2,
                        ..Default::default()
                    },
                    bvb.pp("downsamplers").pp(0).pp("conv"),
                )?)
            } else {
                None
            };
            blocks.push(DownBlock { resnets, down });
            cin = cout;
        }
        let last = *ch.last().expect("validated");
        Ok(Self {
            conv_in,
            blocks,
            mid: MidBlock::new(vb.pp("mid_block"), last, g, c.mid_block_add_attention)?,
            norm_out: group_norm(g, last, EPS, vb.pp("conv_norm_out"))?,
            conv_out: conv3(last, 2 * c.latent_channels, vb.pp("conv_out"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.conv_in.forward(x)?;
        for b in &self.blocks {
            for r in &b.resnets {
                h = r.forward(&h)?;
            }
            if let Some(d) = &b.down {
                h = d.forward(&h.pad_with_zeros(D::Minus1, 0, 1)?.pad_with_zeros(
                    D::Minus2,
                    0,
                    1,
                )?)?;
            }
        }
        let h = self.mid.forward(&h)?;
        self.conv_out.forward(&self.norm_out.forward_silu(&h)?)
    }
}

/// diffusers `Decoder`: latents `[B, latent, h, w]` → image `[B, out, f·h, f·w]` in ≈[−1, 1].
#[derive(Debug, Clone)]
struct Decoder {
    conv_in: Conv2d,
    mid: MidBlock,
    blocks: Vec<UpBlock>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    fn new(vb: VarBuilder, c: &VaeConfig) -> Result<Self> {
        let rev: Vec<usize> = c.block_out_channels.iter().rev().copied().collect();
        let g = c.norm_num_groups;
        let conv_in = conv3(c.latent_channels, rev[0], vb.pp("conv_in"))?;
        let mid = MidBlock::new(vb.pp("mid_block"), rev[0], g, c.mid_block_add_attention)?;
        let mut blocks = vec![];
        let mut cin = rev[0];
        for (i, &cout) in rev.iter().enumerate() {
            let bvb = vb.pp("up_blocks").pp(i);
            let resnets = ResBlock::chain(bvb.pp("resnets"), c.layers_per_block + 1, cin, cout, g)?;
            let up = if i + 1 < rev.len() {
                Some(conv3(cout, cout, bvb.pp("upsamplers").pp(0).pp("conv"))?)
            } else {
                None
            };
            blocks.push(UpBlock { resnets, up });
            cin = cout;
        }
        let first = c.block_out_channels[0];
        Ok(Self {
            conv_in,
            mid,
            blocks,
            norm_out: group_norm(g, first, EPS, vb.pp("conv_norm_out"))?,
            conv_out: conv3(first, c.out_channels, vb.pp("conv_out"))?,
        })
    }

    fn forward(&self, z: &Tensor) -> Result<Tensor> {
        let mut h = self.mid.forward(&self.conv_in.forward(z)?)?;
        for b in &self.blocks {
            for r in &b.resnets {
                h = r.forward(&h)?;
            }
            if let Some(u) = &b.up {
                h = u.forward(&splatforge_nn::ops::upsample_nearest2x(&h)?)?;
            }
        }
        self.conv_out.forward(&self.norm_out.forward_silu(&h)?)
    }
}

/// Tiled encoding/decoding settings (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TilingOptions {
    /// Tiling on at all.
    pub enabled: bool,
    /// Tile side in image pixels; images no larger than this on both sides are not tiled.
    pub tile_px: usize,
    /// Pixels shared by neighbouring tiles.
    pub overlap_px: usize,
}

impl Default for TilingOptions {
    /// 1024-pixel tiles with 128 pixels of overlap.
    fn default() -> Self {
        Self {
            enabled: true,
            tile_px: 1024,
            overlap_px: 128,
        }
    }
}

impl TilingOptions {
    /// No tiling.
    pub fn off() -> Self {
        Self {
            enabled: false,
            ..Self::default()
        }
    }

    fn check(&self, f: usize) -> Result<()> {
        if self.tile_px < 2 * f || self.tile_px % f != 0 || self.overlap_px % f != 0 {
            candle_core::bail!(
                "vae tiling: tile {} px and overlap {} px must be multiples of {f} (tile ≥ {})",
                self.tile_px,
                self.overlap_px,
                2 * f
            )
        }
        if self.overlap_px >= self.tile_px {
            candle_core::bail!(
                "vae tiling: overlap {} px must be smaller than the tile {} px",
                self.overlap_px,
                self.tile_px
            )
        }
        Ok(())
    }
}

/// Start offsets of the tiles covering `len` with tiles of `tile` sharing
/// `overlap`: `0, s, 2s, …` with `s = tile − overlap`, the last one moved
/// back to `len − tile`. One tile `[0, len)` when `len ≤ tile`.
pub fn tile_starts(len: usize, tile: usize, overlap: usize) -> Vec<usize> {
    if len <= tile {
        return vec![0];
    }
    let stride = tile - overlap;
    let mut v = vec![];
    let mut s = 0;
    while s + tile < len {
        v.push(s);
        s += stride;
    }
    v.push(len - tile);
    v
}

/// The 1-D blending weights of a tile of `n` samples with `overlap` samples
/// shared at each end: a raised cosine `½ − ½·cos(π·(i+1)/(overlap+1))`
/// rising over the first `overlap` samples, mirrored at the end, 1 between.
/// All weights are positive, so normalising by the weight sum is exact
/// where only one tile covers a pixel.
pub fn cosine_ramp(n: usize, overlap: usize) -> Vec<f32> {
    let o = overlap.min(n / 2);
    let r = |i: usize| -> f64 {
        if i < o {
            0.5 - 0.5 * (std::f64::consts::PI * (i + 1) as f64 / (o + 1) as f64).cos()
        } else {
            1.0
        }
    };
    (0..n).map(|i| (r(i) * r(n - 1 - i)) as f32).collect()
}

/// Blending weights per tile shape and overlap: `(h, w, overlap h, overlap
/// w, dtype, device)` → `[1, 1, h, w]` separable cosine ramps, computed once.
#[derive(Debug, Default)]
pub struct RampCache {
    #[allow(clippy::type_complexity)]
    map: Mutex<HashMap<(usize, usize, usize, usize, DType, String), Tensor>>,
}

impl RampCache {
    /// The ramp of a `h × w` tile with overlaps `oh`, `ow` (0: no ramp on that axis).
    pub fn get(
        &self,
        h: usize,
        w: usize,
        oh: usize,
        ow: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let key = (h, w, oh, ow, dtype, format!("{:?}", device.location()));
        if let Some(t) = self.map.lock().expect("poisoned").get(&key) {
            return Ok(t.clone());
        }
        let rh = Tensor::from_vec(cosine_ramp(h, oh), (h, 1), &Device::Cpu)?;
        let rw = Tensor::from_vec(cosine_ramp(w, ow), (1, w), &Device::Cpu)?;
        let t = rh
            .broadcast_mul(&rw)?
            .reshape((1, 1, h, w))?
            .to_dtype(dtype)?
            .to_device(device)?;
        self.map.lock().expect("poisoned").insert(key, t.clone());
        Ok(t)
    }

    /// Number of ramps computed so far.
    pub fn len(&self) -> usize {
        self.map.lock().expect("poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Applies `f` to overlapping tiles of `x` `[B, C, H, W]` and blends the
/// outputs: tiles of `tile` (× `tile`) input samples sharing `overlap`
/// ([`tile_starts`] on each axis), outputs `num/den` times the input size
/// (8/1 for decoding, 1/8 for encoding), each multiplied by its cached
/// [`cosine_ramp`] (over `overlap·num/den` output samples, on the axes that
/// have more than one tile), summed, and divided by the summed weights.
/// Differentiable (narrow, pad, mul, add, div).
pub fn tiled_apply(
    x: &Tensor,
    tile: usize,
    overlap: usize,
    (num, den): (usize, usize),
    out_dtype: DType,
    ramps: &RampCache,
    f: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let ys = tile_starts(h, tile, overlap);
    let xs = tile_starts(w, tile, overlap);
    let th = tile.min(h);
    let tw = tile.min(w);
    let o_out = overlap * num / den;
    let (oh, ow) = (
        if ys.len() > 1 { o_out } else { 0 },
        if xs.len() > 1 { o_out } else { 0 },
    );
    let (h_out, w_out) = (h * num / den, w * num / den);
    let (th_out, tw_out) = (th * num / den, tw * num / den);
    let ramp = ramps.get(th_out, tw_out, oh, ow, out_dtype, x.device())?;
    let mut acc: Option<Tensor> = None;
    let mut wsum: Option<Tensor> = None;
    for &y0 in &ys {
        for &x0 in &xs {
            let t = x.narrow(2, y0, th)?.narrow(3, x0, tw)?;
            let out = f(&t)?.to_dtype(out_dtype)?;
            if out.dim(2)? != th_out || out.dim(3)? != tw_out {
                candle_core::bail!(
                    "tiled: a {th}×{tw} tile gave {:?}, expected {th_out}×{tw_out}",
                    out.dims()
                )
            }
            let (oy, ox) = (y0 * num / den, x0 * num / den);
            let place = |t: &Tensor| -> Result<Tensor> {
                t.pad_with_zeros(2, oy, h_out - oy - th_out)?
                    .pad_with_zeros(3, ox, w_out - ox - tw_out)
            };
            let contrib = place(&out.broadcast_mul(&ramp)?)?;
            let wc = place(&ramp)?;
            acc = Some(match acc {
                Some(a) => (a + contrib)?,
                None => contrib,
            });
            wsum = Some(match wsum {
                Some(s) => (s + wc)?,
                None => wc,
            });
        }
    }
    acc.expect("one tile at least")
        .broadcast_div(&wsum.expect("one tile at least"))
}

/// The SD KL autoencoder.
#[derive(Debug)]
pub struct Vae {
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    config: VaeConfig,
    dtype: DType,
    device: Device,
    tiling: TilingOptions,
    ramps: RampCache,
}

impl Vae {
    /// `vb` at the VAE root (`encoder.…`, `decoder.…`, `quant_conv.…`); the
    /// model runs in `vb`'s dtype on its device. Tiling starts at its defaults.
    pub fn new(vb: VarBuilder, config: &VaeConfig) -> Result<Self> {
        config.validate().map_err(candle_core::Error::Msg)?;
        let l = config.latent_channels;
        Ok(Self {
            encoder: Encoder::new(vb.pp("encoder"), config)?,
            decoder: Decoder::new(vb.pp("decoder"), config)?,
            quant_conv: if config.use_quant_conv {
                Some(conv1(2 * l, 2 * l, vb.pp("quant_conv"))?)
            } else {
                None
            },
            post_quant_conv: if config.use_post_quant_conv {
                Some(conv1(l, l, vb.pp("post_quant_conv"))?)
            } else {
                None
            },
            config: config.clone(),
            dtype: vb.dtype(),
            device: vb.device().clone(),
            tiling: TilingOptions::default(),
            ramps: RampCache::default(),
        })
    }

    pub fn config(&self) -> &VaeConfig {
        &self.config
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// f32, or f64 for an f64 model (gradient checks).
    fn io_dtype(&self) -> DType {
        if self.dtype == DType::F64 {
            DType::F64
        } else {
            DType::F32
        }
    }

    pub fn tiling(&self) -> TilingOptions {
        self.tiling
    }

    /// Sets the tiling options (checked on use: tile and overlap must be
    /// multiples of the downscale factor, overlap < tile).
    pub fn set_tiling(&mut self, tiling: TilingOptions) {
        self.tiling = tiling;
    }

    /// Builder form of [`Self::set_tiling`].
    pub fn with_tiling(mut self, tiling: TilingOptions) -> Self {
        self.tiling = tiling;
        self
    }

    /// Encoder moments without tiling: images in [−1, 1] `[B, 3, H, W]` →
    /// `(mean, logvar)`, each `[B, latent, H/f, W/f]`, in the model dtype.
    /// `H`, `W` must be multiples of the downscale factor.
    pub fn encode_moments(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let f = self.config.downscale();
        let (_, _, h, w) = x.dims4()?;
        if h % f != 0 || w % f != 0 || h == 0 || w == 0 {
            candle_core::bail!("vae: image size {h}×{w} is not a positive multiple of {f}")
        }
        let m = self.encoder.forward(&x.to_dtype(self.dtype)?)?;
        let m = match &self.quant_conv {
            Some(q) => q.forward(&m)?,
            None => m,
        };
        let l = self.config.latent_channels;
        Ok((m.narrow(1, 0, l)?, m.narrow(1, l, l)?))
    }

    /// Untiled: images in [−1, 1] → posterior mean (unscaled), model dtype.
    pub fn encode_raw(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.encode_moments(x)?.0)
    }

    /// Images `[B, 3, H, W]` in [0, 1] → latents as the diffusion model sees
    /// them: `(mean − shift) · scaling_factor`, f32 (f64 for an f64 model),
    /// on the model's device.
    /// Tiled when the image is larger than the tile (see the module docs).
    ///
    /// Differentiable: when `images` is (or depends on) a candle `Var`,
    /// `backward()` of any function of the result reaches it.
    pub fn encode(&self, images: &Tensor) -> Result<Tensor> {
        let out = self.io_dtype();
        let x = ((images.to_device(&self.device)?.to_dtype(out)? * 2.0)? - 1.0)?;
        let mean = self.encode_tiled_raw(&x)?.to_dtype(out)?;
        let mean = match self.config.shift_factor {
            Some(s) => (mean - s)?,
            None => mean,
        };
        mean * self.config.scaling_factor
    }

    /// Raw decoder without tiling: unscaled latents → images in [−1, 1], model dtype.
    pub fn decode_raw(&self, z: &Tensor) -> Result<Tensor> {
        let z = z.to_dtype(self.dtype)?;
        let z = match &self.post_quant_conv {
            Some(p) => p.forward(&z)?,
            None => z,
        };
        self.decoder.forward(&z)
    }

    /// Scaled latents `[B, latent, h, w]` (as the diffusion model sees them)
    /// → images `[B, 3, f·h, f·w]` in [0, 1], f32, on the model's device
    /// (tiled above the tile size). Not clamped, so gradients pass; see
    /// [`Self::decode_to_images`] for clamped output.
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let out = self.io_dtype();
        let z = (latents.to_device(&self.device)?.to_dtype(out)? / self.config.scaling_factor)?;
        let z = match self.config.shift_factor {
            Some(s) => (z + s)?,
            None => z,
        };
        let x = self.decode_tiled_raw(&z)?.to_dtype(out)?;
        (x + 1.0)? / 2.0
    }

    /// [`Self::decode`] clamped to [0, 1] (`dtype` is ignored: the VAE runs
    /// in the dtype it was loaded with; kept for compatibility).
    pub fn decode_to_images(&self, latents: &Tensor, dtype: DType) -> Result<Tensor> {
        let _ = dtype;
        self.decode(latents)?.clamp(0f32, 1f32)
    }

    /// Number of cached ramps (for tests).
    pub fn cached_ramps(&self) -> usize {
        self.ramps.len()
    }

    fn tiling_applies(&self, h_px: usize, w_px: usize) -> Result<bool> {
        let t = &self.tiling;
        if !t.enabled || (h_px <= t.tile_px && w_px <= t.tile_px) {
            return Ok(false);
        }
        t.check(self.config.downscale())?;
        Ok(true)
    }

    /// Images in [−1, 1] → unscaled posterior mean (f32 when tiled), tiled
    /// above the tile size.
    pub fn encode_tiled_raw(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        if !self.tiling_applies(h, w)? {
            return self.encode_raw(x);
        }
        let f = self.config.downscale();
        tiled_apply(
            x,
            self.tiling.tile_px,
            self.tiling.overlap_px,
            (1, f),
            self.io_dtype(),
            &self.ramps,
            |t| self.encode_raw(t),
        )
    }

    /// Unscaled latents → images in [−1, 1] (f32 when tiled), tiled above the tile size.
    pub fn decode_tiled_raw(&self, z: &Tensor) -> Result<Tensor> {
        let f = self.config.downscale();
        let (_, _, h, w) = z.dims4()?;
        if !self.tiling_applies(h * f, w * f)? {
            return self.decode_raw(z);
        }
        tiled_apply(
            z,
            self.tiling.tile_px / f,
            self.tiling.overlap_px / f,
            (f, 1),
            self.io_dtype(),
            &self.ramps,
            |t| self.decode_raw(t),
        )
    }
}

/// A text → image pipeline's result ([`crate::SdOutput`], [`crate::FluxOutput`]): the images
/// the VAE decoded and the final latents they came from.
#[derive(Debug, Clone)]
pub struct DecodedImages {
    /// `[1, 3, H, W]` f32 in [0, 1], on the CPU.
    pub images: Tensor,
    /// Final latents `[1, C, H/8, W/8]` f32 (FLUX's unpacked), on the CPU.
    pub latents: Tensor,
}

impl DecodedImages {
    pub fn to_rgb_images(&self) -> crate::Result<Vec<image::RgbImage>> {
        tensor_to_rgb_images(&self.images)
    }
}

/// `[N, 3, H, W]` images in [0, 1] (any float dtype, any device) → 8-bit RGB images.
pub fn tensor_to_rgb_images(images: &Tensor) -> crate::Result<Vec<image::RgbImage>> {
    let (n, c, h, w) = images.dims4()?;
    if c != 3 {
        return Err(crate::DiffusionError::InvalidArgument(format!(
            "{c} channels, expected 3"
        )));
    }
    let data = images
        .to_dtype(DType::F32)?
        .permute((0, 2, 3, 1))?
        .contiguous()?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let per = h * w * 3;
    Ok((0..n)
        .map(|i| {
            let px: Vec<u8> = data[i * per..(i + 1) * per]
                .iter()
                .map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
                .collect();
            image::RgbImage::from_raw(w as u32, h as u32, px).expect("buffer size")
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_cover_and_share_shapes() {
        assert_eq!(tile_starts(100, 128, 16), vec![0]);
        assert_eq!(tile_starts(128, 128, 16), vec![0]);
        assert_eq!(tile_starts(129, 128, 16), vec![0, 1]);
        assert_eq!(tile_starts(256, 128, 16), vec![0, 112, 128]);
        assert_eq!(tile_starts(2048, 1024, 128), vec![0, 896, 1024]);
        for (len, t, o) in [(300, 64, 8), (1000, 128, 32), (77, 16, 4)] {
            let s = tile_starts(len, t, o);
            assert_eq!(*s.last().unwrap(), len - t);
            for p in s.windows(2) {
                assert!(p[1] > p[0] && p[1] - p[0] <= t - o, "{s:?}");
            }
        }
    }

    #[test]
    fn blending_is_exact_for_local_operations() {
        let x = splatforge_nn::rng::randn(3, &[2, 3, 21, 30], DType::F32, &Device::Cpu).unwrap();
        let cache = RampCache::default();
        let diff = splatforge_nn::test_util::max_abs;
        // "Decoder": nearest ×4 then a pointwise map; tiles of 8 sharing 3.
        let up = |t: &Tensor| {
            let (_, _, h, w) = t.dims4()?;
            (t.upsample_nearest2d(4 * h, 4 * w)? * 2.0)?.exp()
        };
        let full = up(&x).unwrap();
        let tiled = tiled_apply(&x, 8, 3, (4, 1), DType::F32, &cache, up).unwrap();
        assert_eq!(tiled.dims(), &[2, 3, 84, 120]);
        assert!(diff(&full, &tiled) < 1e-5 * 20.0, "{}", diff(&full, &tiled));
        // "Encoder": 3×3 average pooling; tiles of 12 sharing 6.
        let y = splatforge_nn::rng::randn(4, &[1, 2, 27, 36], DType::F32, &Device::Cpu).unwrap();
        let pool = |t: &Tensor| t.avg_pool2d(3);
        let tiled = tiled_apply(&y, 12, 6, (1, 3), DType::F32, &cache, pool).unwrap();
        assert!(diff(&pool(&y).unwrap(), &tiled) < 1e-6);
        // One ramp per tile shape: 8×8 tiles → 32×32 outputs, 12 → 4.
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn ramps_are_positive_symmetric_and_complementary() {
        let r = cosine_ramp(16, 4);
        assert!(r.iter().all(|&x| x > 0.0 && x <= 1.0));
        for i in 0..16 {
            assert!((r[i] - r[15 - i]).abs() < 1e-7);
        }
        assert_eq!(&r[4..12], &[1.0; 8]);
        // Two tiles sharing 4 samples: the rising and falling parts sum to 1.
        for i in 0..4 {
            assert!((r[i] + r[12 + i] - 1.0).abs() < 1e-6, "{i}");
        }
        assert_eq!(cosine_ramp(5, 0), vec![1.0; 5]);
    }
}
