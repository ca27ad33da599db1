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
mod tests {
    use super::*;
    use crate::blocks::tests::{layer_norm, lin, max_diff, Mat};
    use crate::config::{checkpoint_weights, write_checkpoint, Checkpoint};
    use crate::sampler::{FlowEulerSampler, SamplerParams};
    use candle_core::Module;
    use splatforge_nn::weights::{RandomRecorder, SeededInit};
    use std::collections::BTreeMap;

    fn randn(dims: &[usize], seed: u64) -> Tensor {
        SeededInit::new(seed)
            .var_builder()
            .get_with_hints(
                dims,
                "x",
                candle_nn::Init::Randn {
                    mean: 0.0,
                    stdev: 1.0,
                },
            )
            .unwrap()
    }

    fn silu(m: &Mat) -> Mat {
        m.map_rows(|r| r.iter().map(|v| v / (1.0 + (-v).exp())).collect())
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn downsampling_res_block_follows_its_equations() {
        // Isolated voxels (no neighbours, one per coarse voxel, in the same order): each
        // convolution is its centre tap and pooling halves the features, so the block can
        // be written out row by row.
        let coords = vec![[0, 0, 0, 0], [0, 4, 4, 4], [1, 2, 0, 6]];
        let (cin, cout, emb_dim) = (4, 6, 5);
        let init = SeededInit::new(21);
        let block =
            SparseResBlock3d::load(cin, emb_dim, cout, Resampling::Down, init.var_builder())
                .unwrap();
        let down = SparseDownsample::new(&coords, 2, &Device::Cpu).unwrap();
        assert_eq!(
            down.coarse_coords(),
            &[[0, 0, 0, 0], [0, 2, 2, 2], [1, 1, 0, 3]]
        );
        let geometry = SlatGeometry {
            coords: coords.clone(),
            levels: vec![
                VoxelLevel::new(&coords, &Device::Cpu).unwrap(),
                VoxelLevel::new(down.coarse_coords(), &Device::Cpu).unwrap(),
            ],
            downsamples: vec![down],
            position: Tensor::zeros((3, 1), DType::F32, &Device::Cpu).unwrap(),
        };
        let x = randn(&[3, cin], 1);
        let emb = randn(&[2, emb_dim], 2);
        let got = block
            .forward(
                &SparseTensor::new(coords, x.clone()).unwrap(),
                &emb,
                &geometry,
                0,
            )
            .unwrap();
        assert_eq!(got.coords, geometry.downsamples[0].coarse_coords());

        let mut w: BTreeMap<String, Tensor> = init.tensors();
        for conv in ["conv1", "conv2"] {
            let k = w[&format!("{conv}.conv.weight")].clone();
            let (o, i) = (k.dim(0).unwrap(), k.dim(4).unwrap());
            let centre = k
                .reshape((o, 27, i))
                .unwrap()
                .narrow(1, 13, 1)
                .unwrap()
                .reshape((o, i))
                .unwrap();
            let bias = w[&format!("{conv}.conv.bias")].clone();
            w.insert(format!("{conv}.weight"), centre);
            w.insert(format!("{conv}.bias"), bias);
        }
        let pooled = Mat::of(&x).map_rows(|r| r.iter().map(|v| v / 2.0).collect());
        let (n1w, n1b) = (Mat::of(&w["norm1.weight"]), Mat::of(&w["norm1.bias"]));
        let h = lin(
            &w,
            "conv1",
            &silu(&layer_norm(&pooled, 1e-6, Some((&n1w, &n1b)))),
        );
        let h = layer_norm(&h, 1e-6, None);
        let e = lin(&w, "emb_layers.1", &silu(&Mat::of(&emb)));
        let batch_of_row = [0, 0, 1];
        let modulated = Mat {
            rows: h.rows,
            cols: h.cols,
            v: (0..h.rows)
                .flat_map(|r| {
                    let (h, e) = (h.row(r), e.row(batch_of_row[r]));
                    (0..cout).map(move |c| h[c] * (1.0 + e[c]) + e[cout + c])
                })
                .collect(),
        };
        let want = lin(&w, "conv2", &silu(&modulated)).add(&lin(&w, "skip_connection", &pooled));
        let diff = max_diff(&got.feats, &want);
        assert!(diff < 1e-5, "max |Δ| {diff}");
    }

    /// Two batch items: the first 14 voxels of a blob, and a different blob.
    fn two_items() -> Vec<[u32; 4]> {
        let mut coords = Vec::new();
        for (b, offset, count) in [(0u32, 0u32, 14usize), (1, 2, 23)] {
            let mut item: Vec<[u32; 4]> = (0..4u32)
                .flat_map(|x| {
                    (0..3u32).flat_map(move |y| {
                        (0..3u32).map(move |z| [b, x + offset, y + offset, z * 2])
                    })
                })
                .collect();
            item.truncate(count);
            coords.extend(item);
        }
        coords
    }

    /// The rows of batch item `item` alone, renumbered as item 0.
    fn item_alone(coords: &[[u32; 4]], item: u32) -> (Vec<[u32; 4]>, Vec<u32>) {
        let rows: Vec<u32> = (0..coords.len() as u32)
            .filter(|&r| coords[r as usize][0] == item)
            .collect();
        let alone = rows
            .iter()
            .map(|&r| {
                let c = coords[r as usize];
                [0, c[1], c[2], c[3]]
            })
            .collect();
        (alone, rows)
    }

    fn tiny_model(seed: u64) -> SLatFlowModel {
        SLatFlowModel::load(
            &SLatFlowConfig::tiny(),
            SeededInit::new(seed).var_builder(),
            DType::F32,
        )
        .unwrap()
    }

    fn check_batch_matches_items_alone(coords: Vec<[u32; 4]>) {
        let model = tiny_model(5);
        let cfg = model.config().clone();
        let x =
            SparseTensor::new(coords.clone(), randn(&[coords.len(), cfg.in_channels], 7)).unwrap();
        let t = Tensor::new(&[300f32, 820.0], &Device::Cpu).unwrap();
        let cond = randn(&[2, 5, cfg.cond_channels], 8);
        let geometry = model.geometry(&coords, &Device::Cpu).unwrap();
        let batched = model.forward(&x, &t, &cond, &geometry).unwrap();
        assert_eq!(batched.coords, coords);
        for item in 0..2u32 {
            let (alone, rows) = item_alone(&coords, item);
            let ids = Tensor::new(rows.as_slice(), &Device::Cpu).unwrap();
            let x_item =
                SparseTensor::new(alone.clone(), x.feats.index_select(&ids, 0).unwrap()).unwrap();
            let i = item as usize;
            let single = model
                .forward(
                    &x_item,
                    &t.narrow(0, i, 1).unwrap(),
                    &cond.narrow(0, i, 1).unwrap(),
                    &model.geometry(&alone, &Device::Cpu).unwrap(),
                )
                .unwrap();
            let diff = max_abs_diff(&single.feats, &batched.feats.index_select(&ids, 0).unwrap());
            assert!(diff < 1e-4, "item {item}: max |Δ| {diff}");
        }
    }

    #[test]
    fn model_follows_the_official_forward() {
        // `SLatFlowModel.forward` written out over the components (each tested on its own):
        // input layer, input res blocks keeping their outputs, APE of the coarse voxels,
        // each item alone through the dense blocks, output res blocks on [h, skip], layer
        // norm (eps 1e-5, no affine), output layer.
        let model = tiny_model(9);
        let cfg = model.config().clone();
        let coords = two_items();
        let geometry = model.geometry(&coords, &Device::Cpu).unwrap();
        let x = randn(&[coords.len(), cfg.in_channels], 1);
        let t = Tensor::new(&[640f32, 75.0], &Device::Cpu).unwrap();
        let cond = randn(&[2, 4, cfg.cond_channels], 2);
        let got = model
            .forward(
                &SparseTensor::new(coords.clone(), x.clone()).unwrap(),
                &t,
                &cond,
                &geometry,
            )
            .unwrap();

        let t_emb = model.t_embedder.forward(&t).unwrap();
        let h = SparseTensor::new(coords.clone(), model.input_layer.forward(&x).unwrap()).unwrap();
        let h0 = model.input_blocks[0]
            .forward(&h, &t_emb, &geometry, 0)
            .unwrap();
        let h1 = model.input_blocks[1]
            .forward(&h0, &t_emb, &geometry, 0)
            .unwrap();
        let coarse = geometry.downsamples[0].coarse_coords();
        assert_eq!(h1.coords, coarse);
        let xyz: Vec<u32> = coarse.iter().flat_map(|c| c[1..].to_vec()).collect();
        let position = AbsolutePositionEmbedder::new(cfg.model_channels, 3)
            .unwrap()
            .embed(&xyz, &Device::Cpu)
            .unwrap();
        let tokens = (&h1.feats + position).unwrap();
        let mut items = Vec::new();
        let mut start = 0;
        for (i, &n) in geometry.levels[1].lens.iter().enumerate() {
            let mut item = tokens.narrow(0, start, n).unwrap().unsqueeze(0).unwrap();
            for block in &model.blocks {
                item = block
                    .forward(
                        &item,
                        &t_emb.narrow(0, i, 1).unwrap(),
                        &cond.narrow(0, i, 1).unwrap(),
                    )
                    .unwrap();
            }
            items.push(item.squeeze(0).unwrap());
            start += n;
        }
        let h = h1.with_feats(Tensor::cat(&items, 0).unwrap()).unwrap();
        let h = h
            .with_feats(Tensor::cat(&[&h.feats, &h1.feats], 1).unwrap())
            .unwrap();
        let h = model.out_blocks[0]
            .forward(&h, &t_emb, &geometry, 1)
            .unwrap();
        assert_eq!(h.coords, coords);
        let h = h
            .with_feats(Tensor::cat(&[&h.feats, &h0.feats], 1).unwrap())
            .unwrap();
        let h = model.out_blocks[1]
            .forward(&h, &t_emb, &geometry, 0)
            .unwrap();
        let mut w = BTreeMap::new();
        w.insert("out.weight".to_string(), model.out_layer.weight().clone());
        w.insert(
            "out.bias".to_string(),
            model.out_layer.bias().unwrap().clone(),
        );
        let want = lin(&w, "out", &layer_norm(&Mat::of(&h.feats), 1e-5, None));
        let diff = max_diff(&got.feats, &want);
        assert!(diff < 1e-4, "max |Δ| {diff}");
    }

    #[test]
    fn items_of_different_lengths_match_each_item_run_alone() {
        check_batch_matches_items_alone(two_items());
    }

    #[test]
    fn items_of_equal_coordinates_match_each_item_run_alone() {
        let (first, _) = item_alone(&two_items(), 1);
        let second = first.iter().map(|c| [1, c[1], c[2], c[3]]);
        check_batch_matches_items_alone(first.iter().copied().chain(second).collect());
    }

    #[test]
    fn sampler_velocities_are_the_model_on_the_voxels() {
        let model = tiny_model(4);
        let coords = two_items();
        let flow = SlatVelocity::new(&model, &coords, &Device::Cpu).unwrap();
        let x = randn(&[coords.len(), 8], 1);
        let (cond, neg) = (
            randn(&[2, 3, 16], 2),
            Tensor::zeros((2, 3, 16), DType::F32, &Device::Cpu).unwrap(),
        );
        let direct = |c: &Tensor| {
            let t = Tensor::new(&[250f32, 250.0], &Device::Cpu).unwrap();
            let geometry = model.geometry(&coords, &Device::Cpu).unwrap();
            model
                .forward(
                    &SparseTensor::new(coords.clone(), x.clone()).unwrap(),
                    &t,
                    c,
                    &geometry,
                )
                .unwrap()
                .feats
        };
        let (v_cond, v_neg) = flow.guided_velocities(&x, 250.0, &cond, &neg).unwrap();
        assert!(max_abs_diff(&v_cond, &direct(&cond)) < 1e-5);
        assert!(max_abs_diff(&v_neg, &direct(&neg)) < 1e-5);
        assert!(max_abs_diff(&flow.velocity(&x, 250.0, &cond).unwrap(), &direct(&cond)) < 1e-5);
        let params = SamplerParams {
            steps: 2,
            cfg_strength: 3.0,
            cfg_interval: (0.5, 1.0),
            rescale_t: 3.0,
        };
        let sample = FlowEulerSampler { sigma_min: 1e-5 }
            .sample(&flow, &x, &cond, &neg, &params, |_, _| {
                std::ops::ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!(sample.dims(), x.dims());
        let values = sample.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(values.iter().all(|v| v.is_finite()));
        assert!(max_abs_diff(&sample, &x) > 0.0);
    }

    #[test]
    fn loads_a_random_weight_file_by_the_official_names() {
        let cfg = SLatFlowConfig::tiny();
        let recorder = RandomRecorder::new(5);
        SLatFlowModel::load(&cfg, recorder.var_builder(), DType::F32).unwrap();
        let recipes = recorder.recipes();
        for name in [
            "t_embedder.mlp.0.weight",
            "input_layer.weight",
            "input_blocks.0.conv1.conv.weight",
            "input_blocks.1.skip_connection.weight",
            "input_blocks.1.emb_layers.1.bias",
            "blocks.1.self_attn.q_rms_norm.gamma",
            "blocks.0.cross_attn.to_kv.weight",
            "blocks.0.adaLN_modulation.1.weight",
            "out_blocks.0.conv1.conv.weight",
            "out_blocks.1.norm1.bias",
            "out_layer.bias",
        ] {
            assert!(recipes.contains_key(name), "{name} missing");
        }
        let dir = tempfile::tempdir().unwrap();
        let stem = dir.path().join("ckpts/slat_flow_img_dit_L_64l8p2_fp16");
        write_checkpoint(&stem, CLASS, &cfg, &recipes, DType::F32).unwrap();
        let read = Checkpoint::<SLatFlowConfig>::read(&stem, CLASS).unwrap();
        assert_eq!(read.args, cfg);
        let vb = checkpoint_weights(&stem, DType::F32, &Device::Cpu).unwrap();
        let from_file = SLatFlowModel::load(&cfg, vb, DType::F32).unwrap();
        let seeded = tiny_model(5);
        let coords = two_items();
        let x =
            SparseTensor::new(coords.clone(), randn(&[coords.len(), cfg.in_channels], 3)).unwrap();
        let t = Tensor::new(&[500f32, 10.0], &Device::Cpu).unwrap();
        let cond = randn(&[2, 3, cfg.cond_channels], 4);
        let geometry = seeded.geometry(&coords, &Device::Cpu).unwrap();
        let a = seeded.forward(&x, &t, &cond, &geometry).unwrap();
        let b = from_file.forward(&x, &t, &cond, &geometry).unwrap();
        assert_eq!(max_abs_diff(&a.feats, &b.feats), 0.0);
        assert_eq!(a.feats.dims(), &[coords.len(), cfg.out_channels]);
    }

    #[test]
    fn image_large_has_the_official_tensor_shapes() {
        let recorder = RandomRecorder::new(1);
        SLatFlowModel::load(
            &SLatFlowConfig::image_large(),
            recorder.var_builder(),
            DType::F16,
        )
        .unwrap();
        let recipes = recorder.recipes();
        // t_embedder 4, input_layer 2, input_blocks 8 + 10, 24 blocks × 20, out_blocks 10 + 10, out_layer 2.
        assert_eq!(recipes.len(), 526);
        for (name, dims) in [
            ("input_layer.weight", vec![128, 8]),
            ("input_blocks.0.conv1.conv.weight", vec![128, 3, 3, 3, 128]),
            ("input_blocks.1.conv1.conv.weight", vec![1024, 3, 3, 3, 128]),
            ("input_blocks.1.skip_connection.weight", vec![1024, 128]),
            ("input_blocks.1.emb_layers.1.weight", vec![2048, 1024]),
            ("blocks.23.self_attn.to_qkv.weight", vec![3072, 1024]),
            ("blocks.23.self_attn.k_rms_norm.gamma", vec![16, 64]),
            ("blocks.0.cross_attn.to_kv.weight", vec![2048, 1024]),
            ("blocks.0.mlp.mlp.0.weight", vec![4096, 1024]),
            ("out_blocks.0.conv1.conv.weight", vec![128, 3, 3, 3, 2048]),
            ("out_blocks.0.skip_connection.weight", vec![128, 2048]),
            ("out_blocks.1.conv1.conv.weight", vec![128, 3, 3, 3, 256]),
            ("out_layer.weight", vec![8, 128]),
        ] {
            assert_eq!(recipes[name].dims(), dims.as_slice(), "{name}");
        }
        assert!(!recipes.contains_key("input_blocks.0.skip_connection.weight"));
        assert!(!recipes.contains_key("blocks.0.cross_attn.q_rms_norm.gamma"));
    }

    #[test]
    fn config_parses_the_checkpoint_args_and_rejects_unsupported_ones() {
        let args = r#"{"resolution": 64, "in_channels": 8, "out_channels": 8, "model_channels": 1024,
            "cond_channels": 1024, "num_blocks": 24, "num_heads": 16, "mlp_ratio": 4, "patch_size": 2,
            "num_io_res_blocks": 2, "io_block_channels": [128], "pe_mode": "ape", "qk_rms_norm": true,
            "use_fp16": true}"#;
        let cfg: SLatFlowConfig = serde_json::from_str(args).unwrap();
        assert_eq!(cfg, SLatFlowConfig::image_large());
        cfg.validate().unwrap();
        for bad in [
            SLatFlowConfig {
                pe_mode: "rope".into(),
                ..cfg.clone()
            },
            SLatFlowConfig {
                share_mod: true,
                ..cfg.clone()
            },
            SLatFlowConfig {
                patch_size: 4,
                ..cfg.clone()
            },
            SLatFlowConfig {
                num_heads: Some(5),
                ..cfg.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn denormalize_scales_and_shifts_each_channel() {
        let x = SparseTensor::new(
            vec![[0, 0, 0, 0], [0, 1, 0, 0]],
            Tensor::new(&[[1f32, 2.0], [0.0, -4.0]], &Device::Cpu).unwrap(),
        )
        .unwrap();
        let got = denormalize_slat(&x, &[1.0, -2.0], &[3.0, 0.5]).unwrap();
        assert_eq!(
            got.feats.to_vec2::<f32>().unwrap(),
            vec![vec![4.0, -1.0], vec![1.0, -4.0]]
        );
        assert!(denormalize_slat(&x, &[1.0; 8], &[1.0; 8]).is_err());
    }

    #[test]
    fn rejects_foreign_voxels_and_mismatched_batches() {
        let model = tiny_model(1);
        let coords = two_items();
        let geometry = model.geometry(&coords, &Device::Cpu).unwrap();
        let x = SparseTensor::new(coords.clone(), randn(&[coords.len(), 8], 1)).unwrap();
        let cond = randn(&[2, 3, 16], 2);
        assert!(model
            .forward(
                &x,
                &Tensor::new(&[1f32], &Device::Cpu).unwrap(),
                &cond,
                &geometry
            )
            .is_err());
        let other = model.geometry(&coords[..10], &Device::Cpu).unwrap();
        assert!(model
            .forward(
                &x,
                &Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap(),
                &cond,
                &other
            )
            .is_err());
        assert!(model.geometry(&[[0, 8, 0, 0]], &Device::Cpu).is_err());
    }
}
