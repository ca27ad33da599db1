//! The structured-latent flow model of stage 2: TRELLIS' `SLatFlowModel` /
//! `ElasticSLatFlowModel` (`trellis/models/structured_latent_flow.py`; the elastic
//! variant only changes training-time checkpointing), and undoing the latent's
//! normalisation.
//!
//! Over the occupied voxels of the 64³ grid: `input_layer` (per-voxel linear), the input
//! `SparseResBlock3d`s (sparse 3×3×3 convolutions, adaLN-style scale/shift from the
//! timestep, the last one of each level downsampling by 2: the "patchify"), the absolute
//! sin-cos position embedding of the coarse coordinates, 24 modulated cross-attention
//! blocks (full self-attention over each batch item's voxels, cross-attention to the
//! image tokens), the output res blocks (the first of each level upsampling back, each
//! taking the matching input block's output concatenated as a skip connection), a layer
//! norm without affine (eps 1e-5) and `out_layer`.
//!
//! Precision as the official `use_fp16`: `input_layer`, `t_embedder` and `out_layer` run
//! in f32, the torso (`input_blocks`, `blocks`, `out_blocks`) in the model dtype, layer
//! norms in f32.
//!
//! Coordinates are fixed over a sampling run, so everything derived from them (neighbour
//! maps, the down/upsampling mapping, position embeddings, per-row batch indices) is built
//! once into a [`SlatGeometry`] and passed to every [`SLatFlowModel::forward`].

use candle_core::{DType, Device, Tensor};
use candle_nn::{Linear, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::blocks::{
    linear, linear_forward, AbsolutePositionEmbedder, Attend, BlockConfig, LayerNorm32,
    ModulatedTransformerCrossBlock, TimestepEmbedder, BLOCK_NORM_EPS,
};
use crate::sampler::FlowModel;
use crate::sparse::{varlen_attention, NeighbourMap, SparseConv3d, SparseDownsample, SparseTensor};
use crate::{Result, TrellisError};

/// The class name in the model's `ckpts/<name>.json` (`SLatFlowModel` with training-time
/// memory management; the same module at inference).
pub const CLASS: &str = "ElasticSLatFlowModel";

/// The eps of the final layer norm (`F.layer_norm` with its default).
const OUT_NORM_EPS: f64 = 1e-5;

fn default_head_channels() -> usize {
    64
}
fn default_mlp_ratio() -> f64 {
    4.0
}
fn default_two() -> usize {
    2
}
fn default_pe_mode() -> String {
    "ape".into()
}
fn default_true() -> bool {
    true
}

/// The constructor arguments of `SLatFlowModel` (the `args` of its checkpoint JSON),
/// with the official defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SLatFlowConfig {
    /// Side of the voxel grid (64).
    pub resolution: usize,
    /// Latent channels per voxel in.
    pub in_channels: usize,
    /// Transformer width.
    pub model_channels: usize,
    /// Width of the conditioning tokens (DINOv2 ViT-L: 1024).
    pub cond_channels: usize,
    /// Latent channels per voxel out.
    pub out_channels: usize,
    /// Number of transformer blocks.
    pub num_blocks: usize,
    /// Attention heads; `None`: `model_channels / num_head_channels`.
    #[serde(default)]
    pub num_heads: Option<usize>,
    #[serde(default = "default_head_channels")]
    pub num_head_channels: usize,
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    /// Total downsampling of the io blocks: `2^len(io_block_channels)`.
    #[serde(default = "default_two")]
    pub patch_size: usize,
    /// Res blocks per io level (the last input one downsamples, the first output one
    /// upsamples).
    #[serde(default = "default_two")]
    pub num_io_res_blocks: usize,
    /// Channels of each io level, finest first; `None`: no io blocks.
    #[serde(default)]
    pub io_block_channels: Option<Vec<usize>>,
    /// Position embedding: only `"ape"` (absolute) is supported (`"rope"` is in no
    /// released checkpoint).
    #[serde(default = "default_pe_mode")]
    pub pe_mode: String,
    /// Half-precision torso in the official code; here the dtype is chosen at load.
    #[serde(default)]
    pub use_fp16: bool,
    /// Training only (gradient checkpointing).
    #[serde(default)]
    pub use_checkpoint: bool,
    #[serde(default = "default_true")]
    pub use_skip_connection: bool,
    /// One modulation for all blocks: in no released checkpoint, not supported.
    #[serde(default)]
    pub share_mod: bool,
    /// QK RMSNorm in the self-attention.
    #[serde(default)]
    pub qk_rms_norm: bool,
    /// QK RMSNorm in the cross-attention.
    #[serde(default)]
    pub qk_rms_norm_cross: bool,
}

impl SLatFlowConfig {
    /// `TRELLIS-image-large`'s `ckpts/slat_flow_img_dit_L_64l8p2_fp16.json`, the
    /// `denoiser` of the official `configs/generation/slat_flow_img_dit_L_64l8p2_fp16.json`.
    pub fn image_large() -> Self {
        Self {
            resolution: 64,
            in_channels: 8,
            model_channels: 1024,
            cond_channels: 1024,
            out_channels: 8,
            num_blocks: 24,
            num_heads: Some(16),
            num_head_channels: 64,
            mlp_ratio: 4.0,
            patch_size: 2,
            num_io_res_blocks: 2,
            io_block_channels: Some(vec![128]),
            pe_mode: "ape".into(),
            use_fp16: true,
            use_checkpoint: false,
            use_skip_connection: true,
            share_mod: false,
            qk_rms_norm: true,
            qk_rms_norm_cross: false,
        }
    }

    /// A tiny model of the same structure for CPU tests.
    pub fn tiny() -> Self {
        Self {
            resolution: 8,
            model_channels: 32,
            cond_channels: 16,
            num_blocks: 2,
            num_heads: Some(2),
            mlp_ratio: 2.0,
            io_block_channels: Some(vec![8]),
            use_fp16: false,
            ..Self::image_large()
        }
    }

    /// Attention heads.
    pub fn heads(&self) -> usize {
        self.num_heads
            .unwrap_or(self.model_channels / self.num_head_channels.max(1))
    }

    /// The io levels' channels, finest first (empty without io blocks).
    fn io_channels(&self) -> &[usize] {
        self.io_block_channels.as_deref().unwrap_or(&[])
    }

    /// Fails on what the model cannot run.
    pub fn validate(&self) -> Result<()> {
        let fail = |m: String| Err(TrellisError::Config(format!("SLatFlowModel: {m}")));
        if self.pe_mode != "ape" {
            return fail(format!(
                "position embedding {:?} is not supported (only \"ape\")",
                self.pe_mode
            ));
        }
        if self.share_mod {
            return fail("share_mod is not supported (no released checkpoint uses it)".into());
        }
        let heads = self.heads();
        if heads == 0 || self.model_channels % heads != 0 {
            return fail(format!(
                "{} channels cannot be split into {heads} heads",
                self.model_channels
            ));
        }
        let levels = self.io_channels().len();
        if levels > 0 && (self.patch_size != 1 << levels || self.num_io_res_blocks == 0) {
            return fail(format!(
                "patch size {} needs log2(patch size) = {levels} io levels and at least one res block each",
                self.patch_size
            ));
        }
        if self.resolution == 0 || self.resolution > u16::MAX as usize {
            return fail(format!("resolution {} out of range", self.resolution));
        }
        if [
            self.in_channels,
            self.out_channels,
            self.model_channels,
            self.cond_channels,
            self.num_blocks,
        ]
        .contains(&0)
            || self.io_channels().contains(&0)
        {
            return fail("channel and block counts must be positive".into());
        }
        Ok(())
    }
}

/// Undoes the latent's normalisation (`slat_normalization` of `pipeline.json`, whose
/// `mean` and `std` lists are passed): `feats · std + mean` per channel, the official `sample_slat`'s last
/// step (statistics rounded to f32, as `torch.tensor` of the JSON lists).
pub fn denormalize_slat(x: &SparseTensor, mean: &[f64], std: &[f64]) -> Result<SparseTensor> {
    let channels = x.channels();
    if mean.len() != channels || std.len() != channels {
        return Err(TrellisError::InvalidArgument(format!(
            "slat normalisation has {} means and {} stds for {channels} channels",
            mean.len(),
            std.len()
        )));
    }
    let row = |v: &[f64]| -> Result<Tensor> {
        let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
        Ok(Tensor::from_vec(v, (1, channels), x.device())?.to_dtype(x.feats.dtype())?)
    };
    x.with_feats(
        x.feats
            .broadcast_mul(&row(std)?)?
            .broadcast_add(&row(mean)?)?,
    )
}

/// What a [`SlatGeometry`] keeps of one resolution.
#[derive(Debug, Clone)]
struct VoxelLevel {
    map: NeighbourMap,
    /// `[N]` `u32`: the batch item of each row (to spread per-item terms over rows).
    row_batch: Tensor,
    /// Rows of each batch item.
    lens: Vec<usize>,
}

impl VoxelLevel {
    fn new(coords: &[[u32; 4]], device: &Device) -> Result<Self> {
        let items = coords.last().map_or(0, |c| c[0] as usize + 1);
        let mut lens = vec![0; items];
        for c in coords {
            lens[c[0] as usize] += 1;
        }
        let rows: Vec<u32> = coords.iter().map(|c| c[0]).collect();
        Ok(Self {
            map: NeighbourMap::new(coords, device)?,
            row_batch: Tensor::from_vec(rows, coords.len(), device)?,
            lens,
        })
    }

    /// Per-item rows `[B, C]` → one per voxel `[N, C]`.
    fn per_row(&self, per_item: &Tensor) -> Result<Tensor> {
        Ok(per_item.contiguous()?.index_select(&self.row_batch, 0)?)
    }
}

/// Everything [`SLatFlowModel::forward`] derives from the voxel coordinates, built once
/// per coordinate set by [`SLatFlowModel::geometry`].
#[derive(Debug, Clone)]
pub struct SlatGeometry {
    coords: Vec<[u32; 4]>,
    /// Level 0 is the input resolution, each next one downsampled by 2.
    levels: Vec<VoxelLevel>,
    /// `downsamples[i]` maps level `i` to level `i + 1`.
    downsamples: Vec<SparseDownsample>,
    /// `[T, model_channels]` in the torso dtype: the position embedding of the coarsest
    /// level's voxels (computed in f32).
    position: Tensor,
}

impl SlatGeometry {
    /// The voxels the geometry was built for.
    pub fn coords(&self) -> &[[u32; 4]] {
        &self.coords
    }

    /// The voxels the transformer blocks attend over (the coarsest level).
    pub fn token_coords(&self) -> &[[u32; 4]] {
        self.downsamples
            .last()
            .map_or(&self.coords, |d| d.coarse_coords())
    }
}

/// Whether a res block resamples its input first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resampling {
    None,
    Down,
    Up,
}

/// `SparseResBlock3d`: optional down/upsampling, then
/// `conv2(silu(norm2(conv1(silu(norm1(x)))) · (1 + scale) + shift)) + skip(x)` with
/// `(scale, shift) = emb_layers(t_emb)` per batch item.
#[derive(Debug, Clone)]
struct SparseResBlock3d {
    norm1: LayerNorm32,
    norm2: LayerNorm32,
    conv1: SparseConv3d,
    conv2: SparseConv3d,
    /// `emb_layers.1`: SiLU, then `[B, emb] → [B, 2·out]` (scale, then shift).
    emb_layers: Linear,
    /// `skip_connection` when the channel count changes (identity otherwise).
    skip_connection: Option<Linear>,
    resampling: Resampling,
    out_channels: usize,
}

impl SparseResBlock3d {
    fn load(
        channels: usize,
        emb_channels: usize,
        out_channels: usize,
        resampling: Resampling,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            norm1: LayerNorm32::load(channels, BLOCK_NORM_EPS, true, vb.pp("norm1"))?,
            norm2: LayerNorm32::load(out_channels, BLOCK_NORM_EPS, false, vb.pp("norm2"))?,
            conv1: SparseConv3d::new(channels, out_channels, vb.pp("conv1"))?,
            conv2: SparseConv3d::new(out_channels, out_channels, vb.pp("conv2"))?,
            emb_layers: linear(
                emb_channels,
                2 * out_channels,
                true,
                vb.pp("emb_layers").pp("1"),
            )?,
            skip_connection: if channels == out_channels {
                None
            } else {
                Some(linear(
                    channels,
                    out_channels,
                    true,
                    vb.pp("skip_connection"),
                )?)
            },
            resampling,
            out_channels,
        })
    }

    /// The block on `x` at level `level` of `geometry` (its output is one level coarser
    /// when it downsamples, one finer when it upsamples); `emb [B, emb]`.
    fn forward(
        &self,
        x: &SparseTensor,
        emb: &Tensor,
        geometry: &SlatGeometry,
        level: usize,
    ) -> Result<SparseTensor> {
        let (x, level) = match self.resampling {
            Resampling::None => (x.clone(), level),
            Resampling::Down => (geometry.downsamples[level].forward(x)?, level + 1),
            Resampling::Up => (geometry.downsamples[level - 1].upsample(x)?, level - 1),
        };
        let voxels = &geometry.levels[level];
        let emb_out = linear_forward(&self.emb_layers, &emb.silu()?)?.to_dtype(x.feats.dtype())?;
        let scale = voxels.per_row(&emb_out.narrow(1, 0, self.out_channels)?)?;
        let shift = voxels.per_row(&emb_out.narrow(1, self.out_channels, self.out_channels)?)?;
        let h = x.with_feats(self.norm1.forward(&x.feats)?.silu()?)?;
        let h = self.conv1.forward(&h, &voxels.map)?;
        let h = self
            .norm2
            .forward_modulated(&h.feats, &shift, &scale)?
            .silu()?;
        let h = self.conv2.forward(&x.with_feats(h)?, &voxels.map)?;
        let skip = match &self.skip_connection {
            Some(layer) => linear_forward(layer, &x.feats)?,
            None => x.feats.clone(),
        };
        x.with_feats((h.feats + skip)?)
    }
}

/// `SLatFlowModel` / `ElasticSLatFlowModel` (see the module docs).
#[derive(Debug, Clone)]
pub struct SLatFlowModel {
    config: SLatFlowConfig,
    dtype: DType,
    t_embedder: TimestepEmbedder,
    pos_embedder: AbsolutePositionEmbedder,
    input_layer: Linear,
    input_blocks: Vec<SparseResBlock3d>,
    blocks: Vec<ModulatedTransformerCrossBlock>,
    out_blocks: Vec<SparseResBlock3d>,
    out_norm: LayerNorm32,
    out_layer: Linear,
}

impl SLatFlowModel {
    /// Loads the model from `vb` by the official names (`t_embedder.mlp.0`, `input_layer`,
    /// `input_blocks.{i}.conv1.conv.weight`, `blocks.{i}.self_attn.to_qkv`, `out_blocks.{i}`,
    /// `out_layer`, …); the torso in `dtype` (f32 on the CPU, f16/bf16 on the GPU), the
    /// input/output layers and the timestep embedder in f32.
    pub fn load(config: &SLatFlowConfig, vb: VarBuilder, dtype: DType) -> Result<Self> {
        config.validate()?;
        let c = config.model_channels;
        let vb32 = vb.to_dtype(DType::F32);
        let torso = vb.to_dtype(dtype);
        let io = config.io_channels();
        let first = io.first().copied().unwrap_or(c);

        let mut input_blocks = Vec::new();
        let next_channels = io.iter().skip(1).copied().chain(std::iter::once(c));
        for (&chs, next) in io.iter().zip(next_channels) {
            for _ in 1..config.num_io_res_blocks {
                input_blocks.push((chs, chs, Resampling::None));
            }
            input_blocks.push((chs, next, Resampling::Down));
        }
        let mut out_blocks = Vec::new();
        let skip_factor = if config.use_skip_connection { 2 } else { 1 };
        let prev_channels = std::iter::once(c).chain(io.iter().skip(1).rev().copied());
        for (&chs, prev) in io.iter().rev().zip(prev_channels) {
            out_blocks.push((prev * skip_factor, chs, Resampling::Up));
            for _ in 1..config.num_io_res_blocks {
                out_blocks.push((chs * skip_factor, chs, Resampling::None));
            }
        }
        let res_blocks = |specs: Vec<(usize, usize, Resampling)>,
                          vb: VarBuilder|
         -> Result<Vec<SparseResBlock3d>> {
            specs
                .into_iter()
                .enumerate()
                .map(|(i, (chs, out, resampling))| {
                    SparseResBlock3d::load(chs, c, out, resampling, vb.pp(i))
                })
                .collect()
        };
        let block_config = BlockConfig {
            channels: c,
            heads: config.heads(),
            mlp_ratio: config.mlp_ratio,
            qkv_bias: true,
            qk_rms_norm: config.qk_rms_norm,
        };
        let blocks = (0..config.num_blocks)
            .map(|i| {
                ModulatedTransformerCrossBlock::load(
                    block_config,
                    config.cond_channels,
                    config.qk_rms_norm_cross,
                    false,
                    torso.pp("blocks").pp(i),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            config: config.clone(),
            dtype,
            t_embedder: TimestepEmbedder::load(c, vb32.pp("t_embedder"))?,
            pos_embedder: AbsolutePositionEmbedder::new(c, 3)?,
            input_layer: linear(config.in_channels, first, true, vb32.pp("input_layer"))?,
            input_blocks: res_blocks(input_blocks, torso.pp("input_blocks"))?,
            blocks,
            out_blocks: res_blocks(out_blocks, torso.pp("out_blocks"))?,
            out_norm: LayerNorm32::load(first, OUT_NORM_EPS, false, vb32.clone())?,
            out_layer: linear(first, config.out_channels, true, vb32.pp("out_layer"))?,
        })
    }

    pub fn config(&self) -> &SLatFlowConfig {
        &self.config
    }

    /// The torso's dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The geometry of voxels `coords` (`(batch, x, y, z)` grouped by batch, each axis
    /// below the resolution) for [`forward`](Self::forward), its tensors on `device`.
    pub fn geometry(&self, coords: &[[u32; 4]], device: &Device) -> Result<SlatGeometry> {
        let resolution = self.config.resolution as u32;
        if let Some(c) = coords
            .iter()
            .find(|c| c[1..].iter().any(|&v| v >= resolution))
        {
            return Err(TrellisError::InvalidArgument(format!(
                "voxel {c:?} is outside the {resolution}³ grid"
            )));
        }
        let mut levels = vec![VoxelLevel::new(coords, device)?];
        let mut downsamples: Vec<SparseDownsample> = Vec::new();
        for _ in self.config.io_channels() {
            let fine = downsamples.last().map_or(coords, |d| d.coarse_coords());
            let down = SparseDownsample::new(fine, 2, device)?;
            levels.push(VoxelLevel::new(down.coarse_coords(), device)?);
            downsamples.push(down);
        }
        let tokens = downsamples.last().map_or(coords, |d| d.coarse_coords());
        let xyz: Vec<u32> = tokens.iter().flat_map(|c| c[1..].iter().copied()).collect();
        let position = self
            .pos_embedder
            .embed(&xyz, device)?
            .to_dtype(self.dtype)?;
        Ok(SlatGeometry {
            coords: coords.to_vec(),
            levels,
            downsamples,
            position,
        })
    }

    /// The velocity for the noisy latent `x` (`[N, in_channels]` on `geometry`'s voxels)
    /// at times `t [B]` (the sampler's t × 1000) with conditioning tokens
    /// `cond [B, L, cond_channels]` → `[N, out_channels]` f32 at the same voxels.
    pub fn forward(
        &self,
        x: &SparseTensor,
        t: &Tensor,
        cond: &Tensor,
        geometry: &SlatGeometry,
    ) -> Result<SparseTensor> {
        let batch = t.dim(0)?;
        let (cond_batch, _, cond_channels) = cond.dims3()?;
        if x.coords != geometry.coords || x.channels() != self.config.in_channels {
            return Err(TrellisError::InvalidArgument(format!(
                "SLatFlowModel: {} voxels × {} channels, but the geometry has {} voxels and the model takes {} channels",
                x.len(),
                x.channels(),
                geometry.coords.len(),
                self.config.in_channels
            )));
        }
        if x.batch_size() != batch
            || cond_batch != batch
            || cond_channels != self.config.cond_channels
        {
            return Err(TrellisError::InvalidArgument(format!(
                "SLatFlowModel: {} batch items, {batch} times, conditioning {:?} (want [{batch}, L, {}])",
                x.batch_size(),
                cond.dims(),
                self.config.cond_channels
            )));
        }
        let h = linear_forward(&self.input_layer, &x.feats.to_dtype(DType::F32)?)?
            .to_dtype(self.dtype)?;
        let t_emb = self
            .t_embedder
            .forward(&t.to_dtype(DType::F32)?)?
            .to_dtype(self.dtype)?;
        let cond = cond.to_dtype(self.dtype)?;

        let mut h = x.with_feats(h)?;
        let mut level = 0;
        let mut skips = Vec::with_capacity(self.input_blocks.len());
        for block in &self.input_blocks {
            h = block.forward(&h, &t_emb, geometry, level)?;
            if block.resampling == Resampling::Down {
                level += 1;
            }
            skips.push(h.feats.clone());
        }
        let tokens = (&h.feats + &geometry.position)?;
        let tokens = self.transformer(&tokens, &t_emb, &cond, &geometry.levels[level])?;
        h = h.with_feats(tokens)?;
        for (block, skip) in self.out_blocks.iter().zip(skips.iter().rev()) {
            let input = if self.config.use_skip_connection {
                Tensor::cat(&[&h.feats, skip], 1)?
            } else {
                h.feats.clone()
            };
            h = block.forward(&h.with_feats(input)?, &t_emb, geometry, level)?;
            if block.resampling == Resampling::Up {
                level -= 1;
            }
        }
        let out = self.out_norm.forward(&h.feats)?.to_dtype(DType::F32)?;
        x.with_feats(linear_forward(&self.out_layer, &out)?)
    }

    /// The transformer blocks over `tokens [T, C]` (rows grouped by batch item).
    /// Items of equal length run as one dense `[B, N, C]` batch; otherwise all rows run
    /// as one sequence with per-row modulation and attention restricted to each item.
    fn transformer(
        &self,
        tokens: &Tensor,
        t_emb: &Tensor,
        cond: &Tensor,
        voxels: &VoxelLevel,
    ) -> Result<Tensor> {
        let (rows, channels) = tokens.dims2()?;
        let lens = &voxels.lens;
        if lens.is_empty() {
            return Ok(tokens.clone());
        }
        if lens.iter().all(|&n| n == lens[0]) {
            let mut h = tokens.reshape((lens.len(), lens[0], channels))?;
            for block in &self.blocks {
                h = block.forward(&h, t_emb, cond)?;
            }
            return Ok(h.reshape((rows, channels))?);
        }
        let (items, context_len, _) = cond.dims3()?;
        let kv_lens = vec![context_len; items];
        let to_candle = |e: TrellisError| candle_core::Error::wrap(e);
        let self_attend =
            |q: &Tensor, k: &Tensor, v: &Tensor, heads: usize| -> candle_core::Result<Tensor> {
                varlen_attention(
                    &q.squeeze(0)?,
                    &k.squeeze(0)?,
                    &v.squeeze(0)?,
                    lens,
                    lens,
                    heads,
                )
                .map_err(to_candle)?
                .unsqueeze(0)
            };
        let cross_attend =
            |q: &Tensor, k: &Tensor, v: &Tensor, heads: usize| -> candle_core::Result<Tensor> {
                let flat = |t: &Tensor| t.reshape((items * context_len, t.dim(2)?));
                varlen_attention(&q.squeeze(0)?, &flat(k)?, &flat(v)?, lens, &kv_lens, heads)
                    .map_err(to_candle)?
                    .unsqueeze(0)
            };
        let (self_attend, cross_attend): (Attend, Attend) = (&self_attend, &cross_attend);
        let mut h = tokens.unsqueeze(0)?;
        for block in &self.blocks {
            let terms = block
                .modulation_terms(t_emb)?
                .map(|t| Ok(voxels.per_row(&t.squeeze(1)?)?.unsqueeze(0)?))?;
            h = block.forward_with(&h, &terms, cond, self_attend, cross_attend)?;
        }
        Ok(h.squeeze(0)?)
    }
}

/// The stage-2 flow as [`FlowEulerSampler`](crate::sampler::FlowEulerSampler) drives it:
/// [`SLatFlowModel`] over one fixed voxel set, the sampled tensor being its features
/// `[N, in_channels]`. The conditional and unconditional passes run as one batch of twice
/// the items (the voxels repeated under new batch indices), as the geometry of both is
/// built once here.
#[derive(Debug, Clone)]
pub struct SlatVelocity<'a> {
    model: &'a SLatFlowModel,
    items: usize,
    single: SlatGeometry,
    pair: SlatGeometry,
}

impl<'a> SlatVelocity<'a> {
    /// The flow over voxels `coords` (`(batch, x, y, z)` grouped by batch, as the sparse
    /// structure stage gives them), geometry on `device`.
    pub fn new(model: &'a SLatFlowModel, coords: &[[u32; 4]], device: &Device) -> Result<Self> {
        let items = coords.last().map_or(0, |c| c[0] as usize + 1);
        let repeated = coords
            .iter()
            .map(|c| [c[0] + items as u32, c[1], c[2], c[3]]);
        let pair: Vec<[u32; 4]> = coords.iter().copied().chain(repeated).collect();
        Ok(Self {
            model,
            items,
            single: model.geometry(coords, device)?,
            pair: model.geometry(&pair, device)?,
        })
    }

    /// The voxels sampled over.
    pub fn coords(&self) -> &[[u32; 4]] {
        self.single.coords()
    }
}

impl FlowModel for SlatVelocity<'_> {
    fn velocity(&self, x_t: &Tensor, timestep: f64, cond: &Tensor) -> Result<Tensor> {
        let x = SparseTensor::new(self.single.coords.clone(), x_t.clone())?;
        let t = Tensor::full(timestep as f32, self.items, x_t.device())?;
        Ok(self.model.forward(&x, &t, cond, &self.single)?.feats)
    }

    /// Both passes as one batch of `2B` items.
    fn guided_velocities(
        &self,
        x_t: &Tensor,
        timestep: f64,
        cond: &Tensor,
        neg_cond: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let rows = x_t.dim(0)?;
        let x = SparseTensor::new(self.pair.coords.clone(), Tensor::cat(&[x_t, x_t], 0)?)?;
        let t = Tensor::full(timestep as f32, 2 * self.items, x_t.device())?;
        let v = self
            .model
            .forward(&x, &t, &Tensor::cat(&[cond, neg_cond], 0)?, &self.pair)?
            .feats;
        Ok((v.narrow(0, 0, rows)?, v.narrow(0, rows, rows)?))
    }
}

#[cfg(test)]
mod tests;
