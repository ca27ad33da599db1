//! MVDream's multi-view UNet (`MultiViewUNetModel`): the SD 2.1-base UNet
//! whose self-attention runs jointly over the tokens of all views of an
//! object, with a camera-matrix embedding added to the timestep embedding.
//!
//! Written from MVDream's public code (bytedance/MVDream,
//! `ldm/modules/diffusionmodules/openaimodel.py` and `ldm/modules/attention.py`):
//!
//! * `emb = time_embed(timestep_embedding(t, model_channels)) + camera_embed(camera)`,
//!   both MLPs `Linear → SiLU → Linear` to `4·model_channels`; the camera is
//!   the flattened 4×4 camera-to-world matrix (16 numbers, see [`crate::mvdream::camera`]).
//! * `SpatialTransformer3D` / `BasicTransformerBlock3D`: tokens of the
//!   `num_frames` consecutive batch items are concatenated for the
//!   self-attention (`"(b f) l c -> b (f l) c"`), while the cross-attention to
//!   the text and the feed-forward stay per view.
//! * Everything else is the LDM `UNetModel` of SD 2.x (ResBlocks without
//!   scale-shift, linear `proj_in/out`, GEGLU feed-forward, 32-group norms).
//!
//! Tensor names are MVDream's (= LDM `UNetModel`) names without the
//! `model.diffusion_model.` prefix, which is also how the diffusers export
//! (`ashawkey/mvdream-sd2.1-diffusers`, `unet/`) stores them:
//! `time_embed.0`, `camera_embed.2`, `input_blocks.1.1.transformer_blocks.0.attn1.to_q`, ...

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{layer_norm, linear, linear_no_bias, Conv2dConfig, LayerNorm, Linear, VarBuilder};
use serde::{Deserialize, Serialize};

use splatforge_nn::ops::{attention, conv2d, group_norm, Conv2d, GroupNorm};

/// Number of groups of every GroupNorm of the LDM UNet (`GroupNorm32`).
pub const NORM_GROUPS: usize = 32;

/// An integer or one integer per level (upstream accepts both for `num_res_blocks`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PerLevel {
    All(usize),
    Each(Vec<usize>),
}

impl PerLevel {
    pub fn get(&self, level: usize) -> usize {
        match self {
            PerLevel::All(n) => *n,
            PerLevel::Each(v) => v[level],
        }
    }
}

/// `MultiViewUNetModel` parameters, as in MVDream's `unet_config.params`
/// (`configs/sd-v2-base.yaml`) and the diffusers export's `unet/config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MultiViewUNetConfig {
    #[serde(default = "d32")]
    pub image_size: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub model_channels: usize,
    pub num_res_blocks: PerLevel,
    /// Downsampling factors (1, 2, 4, ...) at which transformers are used.
    pub attention_resolutions: Vec<usize>,
    pub channel_mult: Vec<usize>,
    #[serde(default = "minus_one")]
    pub num_heads: i64,
    #[serde(default = "minus_one")]
    pub num_head_channels: i64,
    #[serde(default = "one")]
    pub transformer_depth: usize,
    pub context_dim: usize,
    /// 16 for MVDream (flattened 4×4 camera matrix); `None`: no camera embedding.
    #[serde(default)]
    pub camera_dim: Option<usize>,
    #[serde(default = "yes")]
    pub use_linear_in_transformer: bool,
    #[serde(default)]
    pub legacy: bool,
    #[serde(default)]
    pub use_scale_shift_norm: bool,
    #[serde(default)]
    pub resblock_updown: bool,
    #[serde(default = "yes")]
    pub conv_resample: bool,
    #[serde(default)]
    pub num_classes: Option<serde_json::Value>,
    /// ImageDream's image-prompt tokens; must be 0 (MVDream).
    #[serde(default)]
    pub ip_dim: usize,
}

fn d32() -> usize {
    32
}
fn minus_one() -> i64 {
    -1
}
fn one() -> usize {
    1
}
fn yes() -> bool {
    true
}

impl MultiViewUNetConfig {
    /// MVDream `sd-v2.1-base-4view` (`configs/sd-v2-base.yaml`).
    pub fn sd21_base_4view() -> Self {
        Self {
            image_size: 32,
            in_channels: 4,
            out_channels: 4,
            model_channels: 320,
            num_res_blocks: PerLevel::All(2),
            attention_resolutions: vec![4, 2, 1],
            channel_mult: vec![1, 2, 4, 4],
            num_heads: -1,
            num_head_channels: 64,
            transformer_depth: 1,
            context_dim: 1024,
            camera_dim: Some(16),
            use_linear_in_transformer: true,
            legacy: false,
            use_scale_shift_norm: false,
            resblock_updown: false,
            conv_resample: true,
            num_classes: None,
            ip_dim: 0,
        }
    }

    pub fn time_embed_dim(&self) -> usize {
        self.model_channels * 4
    }

    /// Checks the features we implement.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let bad = |m: &str| Err(format!("unet: {m}"));
        if self.use_scale_shift_norm {
            return bad("use_scale_shift_norm is not supported");
        }
        if self.resblock_updown {
            return bad("resblock_updown is not supported");
        }
        if !self.conv_resample {
            return bad("conv_resample = false is not supported");
        }
        if self.num_classes.as_ref().is_some_and(|v| !v.is_null()) {
            return bad("class conditioning (num_classes) is not supported");
        }
        if self.ip_dim != 0 {
            return bad("ImageDream image prompts (ip_dim > 0) are not supported");
        }
        if self.channel_mult.is_empty() {
            return bad("channel_mult is empty");
        }
        if let PerLevel::Each(v) = &self.num_res_blocks {
            if v.len() != self.channel_mult.len() {
                return bad("num_res_blocks has a different length than channel_mult");
            }
        }
        if self.num_heads <= 0 && self.num_head_channels <= 0 {
            return bad("either num_heads or num_head_channels must be set");
        }
        for m in &self.channel_mult {
            let ch = m * self.model_channels;
            if ch % NORM_GROUPS != 0 {
                return bad(&format!(
                    "{ch} channels are not divisible into {NORM_GROUPS} groups"
                ));
            }
            let (heads, dim_head) = self.heads_for(ch);
            if heads == 0 || dim_head == 0 || heads * dim_head != ch {
                return bad(&format!(
                    "{ch} channels do not split into attention heads ({heads} × {dim_head})"
                ));
            }
        }
        Ok(())
    }

    /// (heads, head dim) of a transformer on `ch` channels, as upstream computes them.
    pub fn heads_for(&self, ch: usize) -> (usize, usize) {
        let (mut heads, mut dim_head) = if self.num_head_channels <= 0 {
            let h = self.num_heads as usize;
            (h, ch / h.max(1))
        } else {
            let d = self.num_head_channels as usize;
            (ch / d, d)
        };
        if self.legacy {
            // legacy: dim_head = ch // num_heads for spatial transformers
            dim_head = ch / heads.max(1);
            heads = ch / dim_head.max(1);
        }
        (heads, dim_head)
    }
}

/// LDM's sinusoidal timestep embedding: `[cos(t·f), sin(t·f)]` with
/// `f_i = exp(−ln(10000)·i/half)`, `i < half = dim/2` (zero-padded if `dim` is odd).
/// `timesteps`: `[B]`; returns `[B, dim]` f32.
pub fn timestep_embedding(timesteps: &Tensor, dim: usize) -> Result<Tensor> {
    let half = dim / 2;
    let dev = timesteps.device();
    let freqs: Vec<f32> = (0..half)
        .map(|i| (-(10000f64.ln()) * i as f64 / half as f64).exp() as f32)
        .collect();
    let freqs = Tensor::from_vec(freqs, (1, half), dev)?;
    let args = timesteps
        .to_dtype(DType::F32)?
        .unsqueeze(1)?
        .broadcast_mul(&freqs)?;
    let emb = Tensor::cat(&[args.cos()?, args.sin()?], D::Minus1)?;
    if dim % 2 == 1 {
        let z = Tensor::zeros((emb.dim(0)?, 1), DType::F32, dev)?;
        Tensor::cat(&[emb, z], D::Minus1)
    } else {
        Ok(emb)
    }
}

#[derive(Debug, Clone)]
struct CrossAttention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
}

impl CrossAttention {
    fn new(
        vb: VarBuilder,
        query_dim: usize,
        context_dim: usize,
        heads: usize,
        dim_head: usize,
    ) -> Result<Self> {
        let inner = heads * dim_head;
        Ok(Self {
            to_q: linear_no_bias(query_dim, inner, vb.pp("to_q"))?,
            to_k: linear_no_bias(context_dim, inner, vb.pp("to_k"))?,
            to_v: linear_no_bias(context_dim, inner, vb.pp("to_v"))?,
            to_out: linear(inner, query_dim, vb.pp("to_out").pp("0"))?,
            heads,
        })
    }

    fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        let ctx = context.unwrap_or(x);
        let q = self.to_q.forward(x)?;
        let k = self.to_k.forward(ctx)?;
        let v = self.to_v.forward(ctx)?;
        self.to_out.forward(&attention(&q, &k, &v, self.heads)?)
    }
}

/// GEGLU feed-forward (`ff.net.0.proj`, `ff.net.2`), exact GELU.
#[derive(Debug, Clone)]
struct FeedForward {
    proj: Linear,
    out: Linear,
}

impl FeedForward {
    fn new(vb: VarBuilder, dim: usize) -> Result<Self> {
        let inner = dim * 4;
        Ok(Self {
            proj: linear(dim, inner * 2, vb.pp("net").pp("0").pp("proj"))?,
            out: linear(inner, dim, vb.pp("net").pp("2"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.proj.forward(x)?;
        let chunks = h.chunk(2, D::Minus1)?;
        self.out.forward(&(&chunks[0] * chunks[1].gelu_erf()?)?)
    }
}

#[derive(Debug, Clone)]
struct TransformerBlock3D {
    attn1: CrossAttention,
    attn2: CrossAttention,
    ff: FeedForward,
    norm1: LayerNorm,
    norm2: LayerNorm,
    norm3: LayerNorm,
}

impl TransformerBlock3D {
    fn new(
        vb: VarBuilder,
        dim: usize,
        heads: usize,
        dim_head: usize,
        context_dim: usize,
    ) -> Result<Self> {
        Ok(Self {
            attn1: CrossAttention::new(vb.pp("attn1"), dim, dim, heads, dim_head)?,
            attn2: CrossAttention::new(vb.pp("attn2"), dim, context_dim, heads, dim_head)?,
            ff: FeedForward::new(vb.pp("ff"), dim)?,
            norm1: layer_norm(dim, 1e-5, vb.pp("norm1"))?,
            norm2: layer_norm(dim, 1e-5, vb.pp("norm2"))?,
            norm3: layer_norm(dim, 1e-5, vb.pp("norm3"))?,
        })
    }

    /// `x`: `[(b·f), L, C]`; `context`: `[(b·f), T, Cctx]`.
    fn forward(&self, x: &Tensor, context: &Tensor, num_frames: usize) -> Result<Tensor> {
        let (bf, l, c) = x.dims3()?;
        // Self-attention over the tokens of all `num_frames` views at once.
        let xv = x.reshape((bf / num_frames, num_frames * l, c))?;
        let xv = (self.attn1.forward(&self.norm1.forward(&xv)?, None)? + &xv)?;
        let x = xv.reshape((bf, l, c))?;
        let x = (self
            .attn2
            .forward(&self.norm2.forward(&x)?, Some(context))?
            + &x)?;
        self.ff.forward(&self.norm3.forward(&x)?)? + &x
    }
}

#[derive(Debug, Clone)]
enum Proj {
    Linear(Linear),
    Conv(Conv2d),
}

#[derive(Debug, Clone)]
struct SpatialTransformer3D {
    norm: GroupNorm,
    proj_in: Proj,
    blocks: Vec<TransformerBlock3D>,
    proj_out: Proj,
}

impl SpatialTransformer3D {
    fn new(
        vb: VarBuilder,
        ch: usize,
        heads: usize,
        dim_head: usize,
        depth: usize,
        cfg: &MultiViewUNetConfig,
    ) -> Result<Self> {
        let inner = heads * dim_head;
        let (proj_in, proj_out) = if cfg.use_linear_in_transformer {
            (
                Proj::Linear(linear(ch, inner, vb.pp("proj_in"))?),
                Proj::Linear(linear(inner, ch, vb.pp("proj_out"))?),
            )
        } else {
            let c = Conv2dConfig::default();
            (
                Proj::Conv(conv2d(ch, inner, 1, c, vb.pp("proj_in"))?),
                Proj::Conv(conv2d(inner, ch, 1, c, vb.pp("proj_out"))?),
            )
        };
        let blocks = (0..depth)
            .map(|d| {
                TransformerBlock3D::new(
                    vb.pp("transformer_blocks").pp(d),
                    inner,
                    heads,
                    dim_head,
                    cfg.context_dim,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            norm: group_norm(NORM_GROUPS, ch, 1e-6, vb.pp("norm"))?,
            proj_in,
            blocks,
            proj_out,
        })
    }

    fn forward(&self, x: &Tensor, context: &Tensor, num_frames: usize) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let mut t = self.norm.forward(x)?;
        let to_tokens = |t: &Tensor| -> Result<Tensor> {
            let c = t.dim(1)?;
            t.reshape((b, c, h * w))?.transpose(1, 2)?.contiguous()
        };
        t = match &self.proj_in {
            Proj::Linear(l) => l.forward(&to_tokens(&t)?)?,
            Proj::Conv(cv) => to_tokens(&cv.forward(&t)?)?,
        };
        for block in &self.blocks {
            t = block.forward(&t, context, num_frames)?;
        }
        let from_tokens = |t: &Tensor| -> Result<Tensor> {
            let c = t.dim(2)?;
            t.transpose(1, 2)?.contiguous()?.reshape((b, c, h, w))
        };
        let out = match &self.proj_out {
            Proj::Linear(l) => from_tokens(&l.forward(&t)?)?,
            Proj::Conv(cv) => cv.forward(&from_tokens(&t)?)?,
        };
        debug_assert_eq!(out.dim(1)?, c);
        out + x
    }
}

#[derive(Debug, Clone)]
struct ResBlock {
    in_norm: GroupNorm,
    in_conv: Conv2d,
    emb: Linear,
    out_norm: GroupNorm,
    out_conv: Conv2d,
    skip: Option<Conv2d>,
}

impl ResBlock {
    fn new(vb: VarBuilder, ch: usize, emb_ch: usize, out_ch: usize) -> Result<Self> {
        let c3 = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        Ok(Self {
            in_norm: group_norm(NORM_GROUPS, ch, 1e-5, vb.pp("in_layers").pp("0"))?,
            in_conv: conv2d(ch, out_ch, 3, c3, vb.pp("in_layers").pp("2"))?,
            emb: linear(emb_ch, out_ch, vb.pp("emb_layers").pp("1"))?,
            out_norm: group_norm(NORM_GROUPS, out_ch, 1e-5, vb.pp("out_layers").pp("0"))?,
            out_conv: conv2d(out_ch, out_ch, 3, c3, vb.pp("out_layers").pp("3"))?,
            skip: if ch == out_ch {
                None
            } else {
                Some(conv2d(
                    ch,
                    out_ch,
                    1,
                    Conv2dConfig::default(),
                    vb.pp("skip_connection"),
                )?)
            },
        })
    }

    fn forward(&self, x: &Tensor, emb: &Tensor) -> Result<Tensor> {
        let h = self.in_conv.forward(&self.in_norm.forward_silu(x)?)?;
        let e = self.emb.forward(&emb.silu()?)?.unsqueeze(2)?.unsqueeze(3)?;
        let h = h.broadcast_add(&e)?;
        let h = self.out_conv.forward(&self.out_norm.forward_silu(&h)?)?;
        match &self.skip {
            Some(s) => s.forward(x)? + h,
            None => x + h,
        }
    }
}

#[derive(Debug, Clone)]
enum Layer {
    Conv(Conv2d),
    Res(ResBlock),
    Attn(SpatialTransformer3D),
    Down(Conv2d),
    Up(Conv2d),
}

#[derive(Debug, Clone)]
struct Block(Vec<Layer>);

impl Block {
    fn forward(
        &self,
        mut h: Tensor,
        emb: &Tensor,
        context: &Tensor,
        num_frames: usize,
    ) -> Result<Tensor> {
        for layer in &self.0 {
            h = match layer {
                Layer::Conv(c) | Layer::Down(c) => c.forward(&h)?,
                Layer::Res(r) => r.forward(&h, emb)?,
                Layer::Attn(a) => a.forward(&h, context, num_frames)?,
                Layer::Up(c) => c.forward(&splatforge_nn::ops::upsample_nearest2x(&h)?)?,
            };
        }
        Ok(h)
    }
}

/// MVDream's multi-view UNet.
#[derive(Debug, Clone)]
pub struct MultiViewUNet {
    time_embed: (Linear, Linear),
    camera_embed: Option<(Linear, Linear)>,
    input_blocks: Vec<Block>,
    middle_block: Block,
    output_blocks: Vec<Block>,
    out_norm: GroupNorm,
    out_conv: Conv2d,
    config: MultiViewUNetConfig,
    dtype: DType,
}

impl MultiViewUNet {
    /// Builds the UNet; `vb` at the UNet root (`time_embed.0.weight`, ...).
    pub fn new(vb: VarBuilder, config: &MultiViewUNetConfig) -> Result<Self> {
        config.validate().map_err(candle_core::Error::Msg)?;
        let cfg = config;
        let mc = cfg.model_channels;
        let ted = cfg.time_embed_dim();
        let c3 = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let time_embed = (
            linear(mc, ted, vb.pp("time_embed").pp("0"))?,
            linear(ted, ted, vb.pp("time_embed").pp("2"))?,
        );
        let camera_embed = match cfg.camera_dim {
            Some(cd) => Some((
                linear(cd, ted, vb.pp("camera_embed").pp("0"))?,
                linear(ted, ted, vb.pp("camera_embed").pp("2"))?,
            )),
            None => None,
        };
        let attn = |vb: VarBuilder, ch: usize| -> Result<Layer> {
            let (heads, dim_head) = cfg.heads_for(ch);
            Ok(Layer::Attn(SpatialTransformer3D::new(
                vb,
                ch,
                heads,
                dim_head,
                cfg.transformer_depth,
                cfg,
            )?))
        };

        let ib = vb.pp("input_blocks");
        let mut input_blocks = vec![Block(vec![Layer::Conv(conv2d(
            cfg.in_channels,
            mc,
            3,
            c3,
            ib.pp("0").pp("0"),
        )?)])];
        let mut chans = vec![mc];
        let mut ch = mc;
        let mut ds = 1;
        let levels = cfg.channel_mult.len();
        for (level, mult) in cfg.channel_mult.iter().enumerate() {
            for _ in 0..cfg.num_res_blocks.get(level) {
                let vbk = ib.pp(input_blocks.len());
                let mut layers = vec![Layer::Res(ResBlock::new(vbk.pp("0"), ch, ted, mult * mc)?)];
                ch = mult * mc;
                if cfg.attention_resolutions.contains(&ds) {
                    layers.push(attn(vbk.pp("1"), ch)?);
                }
                input_blocks.push(Block(layers));
                chans.push(ch);
            }
            if level + 1 != levels {
                let vbk = ib.pp(input_blocks.len());
                let c = Conv2dConfig {
                    padding: 1,
                    stride: 2,
                    ..Default::default()
                };
                input_blocks.push(Block(vec![Layer::Down(conv2d(
                    ch,
                    ch,
                    3,
                    c,
                    vbk.pp("0").pp("op"),
                )?)]));
                chans.push(ch);
                ds *= 2;
            }
        }

        let mb = vb.pp("middle_block");
        let middle_block = Block(vec![
            Layer::Res(ResBlock::new(mb.pp("0"), ch, ted, ch)?),
            attn(mb.pp("1"), ch)?,
            Layer::Res(ResBlock::new(mb.pp("2"), ch, ted, ch)?),
        ]);

        let ob = vb.pp("output_blocks");
        let mut output_blocks = vec![];
        for (level, mult) in cfg.channel_mult.iter().enumerate().rev() {
            let n = cfg.num_res_blocks.get(level);
            for i in 0..=n {
                let vbk = ob.pp(output_blocks.len());
                let ich = chans.pop().expect("skip connection channels");
                let mut layers = vec![Layer::Res(ResBlock::new(
                    vbk.pp("0"),
                    ch + ich,
                    ted,
                    mc * mult,
                )?)];
                ch = mc * mult;
                if cfg.attention_resolutions.contains(&ds) {
                    layers.push(attn(vbk.pp("1"), ch)?);
                }
                if level > 0 && i == n {
                    let idx = layers.len();
                    layers.push(Layer::Up(conv2d(ch, ch, 3, c3, vbk.pp(idx).pp("conv"))?));
                    ds /= 2;
                }
                output_blocks.push(Block(layers));
            }
        }
        let out_norm = group_norm(NORM_GROUPS, ch, 1e-5, vb.pp("out").pp("0"))?;
        let out_conv = conv2d(mc, cfg.out_channels, 3, c3, vb.pp("out").pp("2"))?;
        Ok(Self {
            time_embed,
            camera_embed,
            input_blocks,
            middle_block,
            output_blocks,
            out_norm,
            out_conv,
            config: cfg.clone(),
            dtype: vb.dtype(),
        })
    }

    pub fn config(&self) -> &MultiViewUNetConfig {
        &self.config
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The conditioning embedding `time_embed(t) [+ camera_embed(camera)]`, `[B, 4·model_channels]`.
    pub fn embedding(&self, timesteps: &Tensor, camera: Option<&Tensor>) -> Result<Tensor> {
        let t = timestep_embedding(timesteps, self.config.model_channels)?.to_dtype(self.dtype)?;
        let mut emb = self
            .time_embed
            .1
            .forward(&self.time_embed.0.forward(&t)?.silu()?)?;
        match (camera, &self.camera_embed) {
            (Some(cam), Some((l0, l2))) => {
                let c = l2.forward(&l0.forward(&cam.to_dtype(self.dtype)?)?.silu()?)?;
                emb = (emb + c)?;
            }
            (Some(_), None) => {
                candle_core::bail!("a camera was given but this UNet has no camera embedding")
            }
            _ => {}
        }
        Ok(emb)
    }

    /// Noise prediction.
    ///
    /// * `x`: latents `[B, C, h, w]`, `B = n · num_frames`, the views of one
    ///   object consecutive (items `k·num_frames .. (k+1)·num_frames`).
    /// * `timesteps`: `[B]` (any float or integer dtype).
    /// * `context`: text embeddings `[B, T, context_dim]`.
    /// * `camera`: `[B, camera_dim]` flattened camera matrices, or `None`.
    ///
    /// Returns `[B, out_channels, h, w]` in the model dtype. `h` and `w`
    /// must be divisible by 2^(levels−1).
    pub fn forward(
        &self,
        x: &Tensor,
        timesteps: &Tensor,
        context: &Tensor,
        camera: Option<&Tensor>,
        num_frames: usize,
    ) -> Result<Tensor> {
        let (b, _, h, w) = x.dims4()?;
        if num_frames == 0 || b % num_frames != 0 {
            candle_core::bail!("batch {b} is not a multiple of num_frames {num_frames}")
        }
        let f = 1 << (self.config.channel_mult.len() - 1);
        if h % f != 0 || w % f != 0 {
            candle_core::bail!("latent size {h}×{w} is not divisible by {f}")
        }
        if timesteps.dims() != [b]
            || context.dim(0)? != b
            || camera.is_some_and(|c| c.dims().first() != Some(&b))
        {
            candle_core::bail!("timesteps, context and camera need batch {b}")
        }
        let emb = self.embedding(timesteps, camera)?;
        let context = context.to_dtype(self.dtype)?;
        let mut h = x.to_dtype(self.dtype)?;
        let mut hs = Vec::with_capacity(self.input_blocks.len());
        for block in &self.input_blocks {
            h = block.forward(h, &emb, &context, num_frames)?;
            hs.push(h.clone());
        }
        h = self.middle_block.forward(h, &emb, &context, num_frames)?;
        for block in &self.output_blocks {
            let skip = hs.pop().expect("skip");
            h = block.forward(Tensor::cat(&[&h, &skip], 1)?, &emb, &context, num_frames)?;
        }
        self.out_conv.forward(&self.out_norm.forward_silu(&h)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use splatforge_nn::rng::randn;
    use splatforge_nn::test_util::max_abs;
    use splatforge_nn::weights::SeededInit;

    fn tiny() -> MultiViewUNetConfig {
        crate::random_models::tiny_config().unet
    }

    #[test]
    fn timestep_embedding_values() {
        let t = Tensor::new(&[0f32, 1.0], &Device::Cpu).unwrap();
        let e = timestep_embedding(&t, 4).unwrap().to_vec2::<f32>().unwrap();
        // half = 2, freqs = [1, 10000^(-1/2) = 0.01]; [cos(t·f), sin(t·f)].
        assert_eq!(e[0], vec![1.0, 1.0, 0.0, 0.0]);
        let expect = [1f32.cos(), 0.01f32.cos(), 1f32.sin(), 0.01f32.sin()];
        for (a, b) in e[1].iter().zip(expect) {
            assert!((a - b).abs() < 1e-6);
        }
        assert_eq!(timestep_embedding(&t, 5).unwrap().dims(), &[2, 5]);
    }

    #[test]
    fn sd21_heads() {
        let c = MultiViewUNetConfig::sd21_base_4view();
        c.validate().unwrap();
        assert_eq!(c.heads_for(320), (5, 64));
        assert_eq!(c.heads_for(1280), (20, 64));
        assert_eq!(c.time_embed_dim(), 1280);
    }

    #[test]
    fn mvdream_yaml_unet_params_parse() {
        // unet_config.params of MVDream's configs/sd-v2-base.yaml, as JSON.
        let c: MultiViewUNetConfig = serde_json::from_str(
            r#"{"image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320,
                "attention_resolutions": [4, 2, 1], "num_res_blocks": 2, "channel_mult": [1, 2, 4, 4],
                "num_head_channels": 64, "use_spatial_transformer": true, "use_linear_in_transformer": true,
                "transformer_depth": 1, "context_dim": 1024, "use_checkpoint": false, "legacy": false, "camera_dim": 16}"#,
        )
        .unwrap();
        assert_eq!(c, MultiViewUNetConfig::sd21_base_4view());
    }

    fn block() -> TransformerBlock3D {
        let init = SeededInit::new(5);
        TransformerBlock3D::new(init.var_builder(), 16, 2, 8, 12).unwrap()
    }

    #[test]
    fn view_attention_with_one_frame_is_per_view_attention() {
        let b = block();
        let x = randn(1, &[4, 6, 16], DType::F32, &Device::Cpu).unwrap();
        let ctx = randn(2, &[4, 5, 12], DType::F32, &Device::Cpu).unwrap();
        let joint = b.forward(&x, &ctx, 1).unwrap();
        for i in 0..4 {
            let xi = x.narrow(0, i, 1).unwrap();
            let ci = ctx.narrow(0, i, 1).unwrap();
            let single = b.forward(&xi, &ci, 1).unwrap();
            assert!(max_abs(&joint.narrow(0, i, 1).unwrap(), &single) < 1e-6);
        }
    }

    #[test]
    fn four_frame_attention_is_self_attention_over_all_views_tokens() {
        let b = block();
        let x = randn(3, &[4, 6, 16], DType::F32, &Device::Cpu).unwrap();
        let c1 = randn(4, &[1, 5, 12], DType::F32, &Device::Cpu).unwrap();
        let ctx = c1.broadcast_as((4, 5, 12)).unwrap().contiguous().unwrap();
        let mv = b.forward(&x, &ctx, 4).unwrap();
        // One sequence of 4·6 tokens with the same text context.
        let seq = b
            .forward(&x.reshape((1, 24, 16)).unwrap(), &c1, 1)
            .unwrap()
            .reshape((4, 6, 16))
            .unwrap();
        assert!(max_abs(&mv, &seq) < 1e-5);
        // And the views do interact.
        let per_view = b.forward(&x, &ctx, 1).unwrap();
        assert!(max_abs(&mv, &per_view) > 1e-3);
    }

    #[test]
    fn unet_shapes_and_frame_grouping() {
        let init = SeededInit::new(9);
        let unet = MultiViewUNet::new(init.var_builder(), &tiny()).unwrap();
        let x = randn(1, &[8, 4, 8, 8], DType::F32, &Device::Cpu).unwrap();
        let t = Tensor::new(
            &[999f32, 999., 999., 999., 500., 500., 500., 500.],
            &Device::Cpu,
        )
        .unwrap();
        let ctx = randn(2, &[8, 7, 32], DType::F32, &Device::Cpu).unwrap();
        let cam = randn(3, &[8, 16], DType::F32, &Device::Cpu).unwrap();
        let out = unet.forward(&x, &t, &ctx, Some(&cam), 4).unwrap();
        assert_eq!(out.dims(), &[8, 4, 8, 8]);
        // Groups of 4 views are independent of each other.
        let first = unet
            .forward(
                &x.narrow(0, 0, 4).unwrap(),
                &t.narrow(0, 0, 4).unwrap(),
                &ctx.narrow(0, 0, 4).unwrap(),
                Some(&cam.narrow(0, 0, 4).unwrap()),
                4,
            )
            .unwrap();
        assert!(max_abs(&out.narrow(0, 0, 4).unwrap(), &first) < 1e-5);
        // With num_frames = 1 every item is independent.
        let one = unet.forward(&x, &t, &ctx, Some(&cam), 1).unwrap();
        let item = unet
            .forward(
                &x.narrow(0, 5, 1).unwrap(),
                &t.narrow(0, 5, 1).unwrap(),
                &ctx.narrow(0, 5, 1).unwrap(),
                Some(&cam.narrow(0, 5, 1).unwrap()),
                1,
            )
            .unwrap();
        assert!(max_abs(&one.narrow(0, 5, 1).unwrap(), &item) < 1e-5);
        // The camera matters.
        let other = unet
            .forward(&x, &t, &ctx, Some(&(&cam * 2.0).unwrap()), 4)
            .unwrap();
        assert!(max_abs(&out, &other) > 1e-4);
        // Bad shapes are errors.
        assert!(unet.forward(&x, &t, &ctx, Some(&cam), 3).is_err());
        assert!(unet
            .forward(&x.narrow(2, 0, 7).unwrap(), &t, &ctx, Some(&cam), 4)
            .is_err());
    }
}
