//! FLUX.1's rectified-flow transformer (schnell and dev: 19 double-stream and
//! 38 single-stream blocks), our implementation of Black Forest Labs'
//! architecture. It loads the same tensors under the same (original BFL)
//! names as candle-transformers' `flux::model::Flux` and computes the same
//! forward ([`FluxTransformer::forward`], also as candle's `WithForward`).
//!
//! Layouts: activations stay token-major, `[B, N, C]`, and per head
//! `[B, N, H, D]` (`C = H·D`) without transposes; the joint sequence is the
//! text tokens followed by the image tokens. The fused `qkv` / `linear1`
//! weights are split into their q, k, v (and MLP) row blocks at load, so each
//! projection writes its own contiguous output. Rotary embedding: FLUX's
//! interleaved pairs `(x[2i], x[2i+1])` rotated by `pos[axis] · θ^(−2j/d_axis)`
//! (pair `j` of its axis, axes of `axes_dim` dimensions in order); cos and sin
//! are computed once per forward in f32 from the ids, stored in the
//! activations' dtype (the kernels take one dtype) and applied together with
//! the QK-RMSNorm by [`splatforge_nn::ops::rms_norm_rope`]. Attention runs through
//! [`splatforge_nn::ops::attention`], and every linear layer through
//! [`splatforge_nn::ops::linear`] with its bias, GELU and gated residual fused.
//!
//! Why ours: candle's `Flux` materialises the attention scores (softmax over
//! `[24, 4352, 4352]` at 1024²), its attention function and block fields are
//! private so our fused flash-attention kernel cannot be plugged in, and its
//! RoPE is many small broadcast ops in a `[B, H, N, D/2, 2]` layout with
//! transposes. On an H100 one step took 196 ms at 512² and 930 ms at 1024²,
//! against diffusers' 73 / 176 ms.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{Linear, VarBuilder};
use candle_transformers::models::flux::model::Config;
use candle_transformers::models::flux::WithForward;

use splatforge_nn::ops::{linear, rms_norm_rope, LinearEpilogue};

/// ε of every LayerNorm and of the QK RMSNorms.
const NORM_EPS: f32 = 1e-6;
/// Width of the sinusoidal timestep (and guidance) embedding.
const TIME_EMBED_DIM: usize = 256;
/// FLUX's timesteps are in [0, 1]; the embedding sees them × 1000.
const TIME_FACTOR: f64 = 1000.0;
/// Longest period of the timestep embedding's sinusoids.
const TIME_MAX_PERIOD: f64 = 10_000.0;

/// Splits a linear layer by output features into consecutive blocks of
/// `sizes` rows (weight and bias), each a layer of its own.
fn split_outputs(layer: &Linear, sizes: &[usize]) -> Result<Vec<Linear>> {
    let mut offset = 0;
    let mut parts = Vec::with_capacity(sizes.len());
    for &n in sizes {
        let weight = layer.weight().narrow(0, offset, n)?;
        let bias = layer.bias().map(|b| b.narrow(0, offset, n)).transpose()?;
        parts.push(Linear::new(weight, bias));
        offset += n;
    }
    Ok(parts)
}

/// `(1 + scale) · LayerNorm(x) + shift`: LayerNorm without affine over the
/// last dimension of `x [B, N, C]`, modulation `shift`, `scale` `[B, 1, C]`.
/// With one batch item the modulation is the fused norm's own affine (one
/// kernel, one rounding).
fn modulated_layer_norm(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    let x = x.contiguous()?;
    let c = x.dim(D::Minus1)?;
    let one_plus_scale = (scale + 1.0)?;
    if x.dim(0)? == 1 {
        return candle_nn::ops::layer_norm(
            &x,
            &one_plus_scale.reshape(c)?,
            &shift.reshape(c)?.contiguous()?,
            NORM_EPS,
        );
    }
    let ones = Tensor::ones(c, x.dtype(), x.device())?;
    let zeros = Tensor::zeros(c, x.dtype(), x.device())?;
    candle_nn::ops::layer_norm(&x, &ones, &zeros, NORM_EPS)?
        .broadcast_mul(&one_plus_scale)?
        .broadcast_add(shift)
}

/// BFL's sinusoidal embedding of `t [B]`: `[cos(1000·t·ω_k), sin(1000·t·ω_k)]`,
/// `ω_k = 10000^(−k/128)`, `k < 128`, returned in `dtype` `[B, 256]`. `t` is
/// scaled by 1000 in its own dtype before f32, as BFL's code, diffusers and
/// candle do (in bf16, 0.75 becomes 752), so the embeddings match theirs.
fn timestep_embedding(t: &Tensor, dtype: DType) -> Result<Tensor> {
    let half = TIME_EMBED_DIM / 2;
    let step = (-TIME_MAX_PERIOD.ln() / half as f64) as f32;
    let freqs: Vec<f32> = (0..half).map(|k| (k as f32 * step).exp()).collect();
    let freqs = Tensor::from_vec(freqs, (1, half), t.device())?;
    let args = (t * TIME_FACTOR)?
        .to_dtype(DType::F32)?
        .unsqueeze(1)?
        .broadcast_mul(&freqs)?;
    Tensor::cat(&[args.cos()?, args.sin()?], 1)?.to_dtype(dtype)
}

/// FLUX's rotary frequencies (BFL's `EmbedNd`): for each of the head's `D/2`
/// interleaved pairs, the id axis it reads and its angular frequency
/// `θ^(−2j/d_axis)`, `j` the pair's index within its axis.
#[derive(Debug, Clone)]
struct RotaryFrequencies {
    /// `[D/2]` u32: the axis of each pair.
    axis: Tensor,
    /// `[D/2]` f32.
    inv_freq: Tensor,
    axes: usize,
}

impl RotaryFrequencies {
    fn new(axes_dim: &[usize], theta: f64, device: &candle_core::Device) -> Result<Self> {
        let mut axis = Vec::new();
        let mut inv_freq = Vec::new();
        for (a, &dim) in axes_dim.iter().enumerate() {
            for j in 0..dim / 2 {
                axis.push(a as u32);
                inv_freq.push(theta.powf(-((2 * j) as f64) / dim as f64) as f32);
            }
        }
        let pairs = axis.len();
        Ok(Self {
            axis: Tensor::from_vec(axis, pairs, device)?,
            inv_freq: Tensor::from_vec(inv_freq, pairs, device)?,
            axes: axes_dim.len(),
        })
    }

    /// The rotation of the tokens with positions `ids [B, N, axes]` (any
    /// dtype); angles, cos and sin in f32, stored in `dtype` (the activations'
    /// dtype, which the fused kernels require).
    fn rotation(&self, ids: &Tensor, dtype: DType) -> Result<Rotation> {
        let axes = ids.dim(2)?;
        if axes != self.axes {
            candle_core::bail!(
                "FLUX ids have {axes} axes, the rotary embedding {}",
                self.axes
            );
        }
        let pos = ids.to_dtype(DType::F32)?.index_select(&self.axis, 2)?;
        let angles = pos.broadcast_mul(&self.inv_freq)?;
        Ok(Rotation {
            cos: angles.cos()?.to_dtype(dtype)?,
            sin: angles.sin()?.to_dtype(dtype)?,
        })
    }
}

/// cos and sin of one forward's rotary angles, `[B, T, D/2]` each: one
/// angle set per token, shared by the heads.
struct Rotation {
    cos: Tensor,
    sin: Tensor,
}

impl Rotation {
    /// The angles of tokens `start .. start + len`.
    fn tokens(&self, start: usize, len: usize) -> Result<Self> {
        Ok(Self {
            cos: self.cos.narrow(1, start, len)?,
            sin: self.sin.narrow(1, start, len)?,
        })
    }
}

/// Shift, scale and gate of one adaLN modulation, `[B, 1, C]` each.
struct Modulation {
    shift: Tensor,
    scale: Tensor,
    gate: Tensor,
}

impl Modulation {
    /// The `sets` modulations that `lin` (`C → 3·sets·C`) makes from
    /// `silu(vec) [B, C]`, in BFL's order (shift, scale, gate per set).
    fn from_linear(lin: &Linear, silu_vec: &Tensor, sets: usize) -> Result<Vec<Self>> {
        let chunks = lin
            .forward(silu_vec)?
            .unsqueeze(1)?
            .chunk(3 * sets, D::Minus1)?;
        Ok(chunks
            .chunks_exact(3)
            .map(|c| Self {
                shift: c[0].clone(),
                scale: c[1].clone(),
                gate: c[2].clone(),
            })
            .collect())
    }

    fn norm(&self, x: &Tensor) -> Result<Tensor> {
        modulated_layer_norm(x, &self.shift, &self.scale)
    }

    /// `x + gate · (layer(input) + extra)`, one fused epilogue on the GPU.
    fn gated_linear(
        &self,
        x: &Tensor,
        layer: &Linear,
        input: &Tensor,
        extra: Option<&Tensor>,
    ) -> Result<Tensor> {
        let epilogue = LinearEpilogue {
            extra,
            gate: Some(&self.gate),
            residual: Some(x),
            ..Default::default()
        };
        linear(input, layer, epilogue)
    }
}

/// `in_layer`, SiLU, `out_layer`: the timestep, guidance and pooled-text embedders.
#[derive(Debug, Clone)]
struct MlpEmbedder {
    in_layer: Linear,
    out_layer: Linear,
}

impl MlpEmbedder {
    fn new(in_dim: usize, hidden: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            in_layer: candle_nn::linear(in_dim, hidden, vb.pp("in_layer"))?,
            out_layer: candle_nn::linear(hidden, hidden, vb.pp("out_layer"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.out_layer.forward(&self.in_layer.forward(x)?.silu()?)
    }
}

/// The feed-forward of a double-stream block: `0`, GELU (tanh
/// approximation), `2`.
#[derive(Debug, Clone)]
struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    fn new(hidden: usize, mlp_hidden: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            fc1: candle_nn::linear(hidden, mlp_hidden, vb.pp("0"))?,
            fc2: candle_nn::linear(mlp_hidden, hidden, vb.pp("2"))?,
        })
    }

    /// `x + gate · fc2(gelu(fc1(norm_x)))`.
    fn gated_forward(
        &self,
        x: &Tensor,
        norm_x: &Tensor,
        modulation: &Modulation,
    ) -> Result<Tensor> {
        let hidden = linear(
            norm_x,
            &self.fc1,
            LinearEpilogue {
                gelu: true,
                ..Default::default()
            },
        )?;
        modulation.gated_linear(x, &self.fc2, &hidden, None)
    }
}

/// q, k, v projections with the QK-RMSNorm (per head over `D`, scales
/// `query_norm.scale` / `key_norm.scale` `[D]`).
#[derive(Debug, Clone)]
struct QkvProjection {
    q: Linear,
    k: Linear,
    v: Linear,
    query_scale: Tensor,
    key_scale: Tensor,
    heads: usize,
}

impl QkvProjection {
    /// `x [B, N, C]` and the rotation of its `N` tokens → q, k (normalised and
    /// rotated) and v, `[B, N, H·D]` each.
    fn project(&self, x: &Tensor, rotation: &Rotation) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, n, _) = x.dims3()?;
        let plain = LinearEpilogue::default();
        // The bias joins the norm's pass (the product alone needs no epilogue).
        let prepare = |layer: &Linear, scale: &Tensor| {
            let product = linear(x, &Linear::new(layer.weight().clone(), None), plain)?;
            let t = product.reshape((b, n, self.heads, ()))?;
            rms_norm_rope(
                &t,
                layer.bias(),
                scale,
                &rotation.cos,
                &rotation.sin,
                NORM_EPS,
            )
        };
        Ok((
            prepare(&self.q, &self.query_scale)?,
            prepare(&self.k, &self.key_scale)?,
            linear(x, &self.v, plain)?,
        ))
    }
}

fn qk_scales(head_dim: usize, vb: &VarBuilder) -> Result<(Tensor, Tensor)> {
    let vb = vb.pp("norm");
    Ok((
        vb.get(head_dim, "query_norm.scale")?,
        vb.get(head_dim, "key_norm.scale")?,
    ))
}

/// One stream (image or text) of a double-stream block: `{img,txt}_mod.lin`
/// (two modulations: attention, MLP), `_attn.qkv`, `_attn.norm`,
/// `_attn.proj`, `_mlp`.
#[derive(Debug, Clone)]
struct Stream {
    modulation: Linear,
    qkv: QkvProjection,
    proj: Linear,
    mlp: Mlp,
}

impl Stream {
    fn new(cfg: &Config, prefix: &str, vb: &VarBuilder) -> Result<Self> {
        let c = cfg.hidden_size;
        let attn = vb.pp(format!("{prefix}_attn"));
        let qkv = candle_nn::linear_b(c, 3 * c, cfg.qkv_bias, attn.pp("qkv"))?;
        let [q, k, v]: [Linear; 3] = split_outputs(&qkv, &[c; 3])?
            .try_into()
            .expect("one part per size");
        let (query_scale, key_scale) = qk_scales(c / cfg.num_heads, &attn)?;
        Ok(Self {
            modulation: candle_nn::linear(c, 6 * c, vb.pp(format!("{prefix}_mod.lin")))?,
            qkv: QkvProjection {
                q,
                k,
                v,
                query_scale,
                key_scale,
                heads: cfg.num_heads,
            },
            proj: candle_nn::linear(c, c, attn.pp("proj"))?,
            mlp: Mlp::new(c, mlp_hidden(cfg), vb.pp(format!("{prefix}_mlp")))?,
        })
    }
}

/// Width of the blocks' feed-forward (`hidden_size · mlp_ratio`).
fn mlp_hidden(cfg: &Config) -> usize {
    (cfg.hidden_size as f64 * cfg.mlp_ratio) as usize
}

/// Image and text streams with their own weights, joined in one attention
/// over the text-then-image sequence.
#[derive(Debug, Clone)]
struct DoubleStreamBlock {
    img: Stream,
    txt: Stream,
    heads: usize,
}

impl DoubleStreamBlock {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            img: Stream::new(cfg, "img", &vb)?,
            txt: Stream::new(cfg, "txt", &vb)?,
            heads: cfg.num_heads,
        })
    }

    /// `img [B, N, C]`, `txt [B, L, C]`, `silu_vec [B, C]`, `rotation` of
    /// the `L + N` joint tokens → the updated `(img, txt)`.
    fn forward(
        &self,
        img: &Tensor,
        txt: &Tensor,
        silu_vec: &Tensor,
        rotation: &Rotation,
    ) -> Result<(Tensor, Tensor)> {
        let img_mods = Modulation::from_linear(&self.img.modulation, silu_vec, 2)?;
        let txt_mods = Modulation::from_linear(&self.txt.modulation, silu_vec, 2)?;
        let txt_len = txt.dim(1)?;
        let img_rotation = rotation.tokens(txt_len, img.dim(1)?)?;
        let (img_q, img_k, img_v) = self
            .img
            .qkv
            .project(&img_mods[0].norm(img)?, &img_rotation)?;
        let (txt_q, txt_k, txt_v) = self
            .txt
            .qkv
            .project(&txt_mods[0].norm(txt)?, &rotation.tokens(0, txt_len)?)?;
        let q = Tensor::cat(&[txt_q, img_q], 1)?;
        let k = Tensor::cat(&[txt_k, img_k], 1)?;
        let v = Tensor::cat(&[txt_v, img_v], 1)?;
        let attn = splatforge_nn::ops::attention(&q, &k, &v, self.heads)?;
        let txt_len = txt.dim(1)?;
        let txt_attn = attn.narrow(1, 0, txt_len)?;
        let img_attn = attn.narrow(1, txt_len, img.dim(1)?)?;
        let update = |x: &Tensor, attn: &Tensor, stream: &Stream, mods: &[Modulation]| {
            let x = mods[0].gated_linear(x, &stream.proj, attn, None)?;
            stream.mlp.gated_forward(&x, &mods[1].norm(&x)?, &mods[1])
        };
        Ok((
            update(img, &img_attn, &self.img, &img_mods)?,
            update(txt, &txt_attn, &self.txt, &txt_mods)?,
        ))
    }
}

/// One stream over the joint sequence: `linear1` makes q, k, v and the MLP
/// input from one modulated norm, `linear2` maps `[attention | gelu(mlp)]`
/// back. Both are split at load: `linear1` by output rows, `linear2` by input
/// columns (two products summed instead of concatenating their inputs).
#[derive(Debug, Clone)]
struct SingleStreamBlock {
    modulation: Linear,
    qkv: QkvProjection,
    mlp_in: Linear,
    /// `linear2`'s attention columns, with its bias.
    out_attn: Linear,
    /// `linear2`'s MLP columns.
    out_mlp: Linear,
}

impl SingleStreamBlock {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let c = cfg.hidden_size;
        let mlp = mlp_hidden(cfg);
        let linear1 = candle_nn::linear(c, 3 * c + mlp, vb.pp("linear1"))?;
        let [q, k, v, mlp_in]: [Linear; 4] = split_outputs(&linear1, &[c, c, c, mlp])?
            .try_into()
            .expect("one part per size");
        let linear2 = candle_nn::linear(c + mlp, c, vb.pp("linear2"))?;
        let columns = |from: usize, n: usize| linear2.weight().narrow(1, from, n)?.contiguous();
        let (query_scale, key_scale) = qk_scales(c / cfg.num_heads, &vb)?;
        Ok(Self {
            modulation: candle_nn::linear(c, 3 * c, vb.pp("modulation.lin"))?,
            qkv: QkvProjection {
                q,
                k,
                v,
                query_scale,
                key_scale,
                heads: cfg.num_heads,
            },
            mlp_in,
            out_attn: Linear::new(columns(0, c)?, linear2.bias().cloned()),
            out_mlp: Linear::new(columns(c, mlp)?, None),
        })
    }

    /// `x [B, L + N, C]` (text then image tokens) → updated `x`.
    fn forward(&self, x: &Tensor, silu_vec: &Tensor, rotation: &Rotation) -> Result<Tensor> {
        let mods = Modulation::from_linear(&self.modulation, silu_vec, 1)?;
        let x_mod = mods[0].norm(x)?;
        let (q, k, v) = self.qkv.project(&x_mod, rotation)?;
        let attn = splatforge_nn::ops::attention(&q, &k, &v, self.qkv.heads)?;
        let mlp = linear(
            &x_mod,
            &self.mlp_in,
            LinearEpilogue {
                gelu: true,
                ..Default::default()
            },
        )?;
        let mlp_out = linear(&mlp, &self.out_mlp, LinearEpilogue::default())?;
        mods[0].gated_linear(x, &self.out_attn, &attn, Some(&mlp_out))
    }
}

/// `final_layer`: modulated norm (`adaLN_modulation.1` → shift, scale), `linear`.
#[derive(Debug, Clone)]
struct FinalLayer {
    modulation: Linear,
    linear: Linear,
}

impl FinalLayer {
    fn new(hidden: usize, out_channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            modulation: candle_nn::linear(hidden, 2 * hidden, vb.pp("adaLN_modulation.1"))?,
            linear: candle_nn::linear(hidden, out_channels, vb.pp("linear"))?,
        })
    }

    fn forward(&self, x: &Tensor, silu_vec: &Tensor) -> Result<Tensor> {
        let chunks = self
            .modulation
            .forward(silu_vec)?
            .unsqueeze(1)?
            .chunk(2, D::Minus1)?;
        self.linear
            .forward(&modulated_layer_norm(x, &chunks[0], &chunks[1])?)
    }
}

/// The FLUX.1 transformer. Build it with [`FluxTransformer::new`] from
/// candle-transformers' `Config` (`Config::schnell()`, or
/// [`crate::flux::FluxTransformerConfig::to_candle`]) and weights in BFL names.
#[derive(Debug, Clone)]
pub struct FluxTransformer {
    img_in: Linear,
    txt_in: Linear,
    time_in: MlpEmbedder,
    vector_in: MlpEmbedder,
    guidance_in: Option<MlpEmbedder>,
    rotary: RotaryFrequencies,
    double_blocks: Vec<DoubleStreamBlock>,
    single_blocks: Vec<SingleStreamBlock>,
    final_layer: FinalLayer,
}

impl FluxTransformer {
    /// Loads the transformer from `vb` (names `img_in`, `double_blocks.{i}.…`,
    /// `single_blocks.{i}.…`, `final_layer.…`, as candle's `Flux`). Fails on
    /// a configuration whose rotary axes (`axes_dim`, even, summing to the
    /// head dimension) do not fit its heads, or on missing or misshapen tensors.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let c = cfg.hidden_size;
        if cfg.num_heads == 0 || c % cfg.num_heads != 0 {
            candle_core::bail!(
                "FLUX: hidden size {c} is not a multiple of {} heads",
                cfg.num_heads
            );
        }
        let head_dim = c / cfg.num_heads;
        if cfg.axes_dim.iter().sum::<usize>() != head_dim || cfg.axes_dim.iter().any(|d| d % 2 != 0)
        {
            candle_core::bail!(
                "FLUX: rotary axes {:?} must be even and sum to the head dimension {head_dim}",
                cfg.axes_dim
            );
        }
        let guidance_in = if cfg.guidance_embed {
            Some(MlpEmbedder::new(TIME_EMBED_DIM, c, vb.pp("guidance_in"))?)
        } else {
            None
        };
        let double_blocks = (0..cfg.depth)
            .map(|i| DoubleStreamBlock::new(cfg, vb.pp("double_blocks").pp(i)))
            .collect::<Result<_>>()?;
        let single_blocks = (0..cfg.depth_single_blocks)
            .map(|i| SingleStreamBlock::new(cfg, vb.pp("single_blocks").pp(i)))
            .collect::<Result<_>>()?;
        Ok(Self {
            img_in: candle_nn::linear(cfg.in_channels, c, vb.pp("img_in"))?,
            txt_in: candle_nn::linear(cfg.context_in_dim, c, vb.pp("txt_in"))?,
            time_in: MlpEmbedder::new(TIME_EMBED_DIM, c, vb.pp("time_in"))?,
            vector_in: MlpEmbedder::new(cfg.vec_in_dim, c, vb.pp("vector_in"))?,
            guidance_in,
            rotary: RotaryFrequencies::new(&cfg.axes_dim, cfg.theta as f64, vb.device())?,
            double_blocks,
            single_blocks,
            final_layer: FinalLayer::new(c, cfg.in_channels, vb.pp("final_layer"))?,
        })
    }

    /// The velocity for packed latents `img [B, N, in_channels]` at
    /// positions `img_ids [B, N, axes]` (`(0, row, column)` per 2×2 patch),
    /// text `txt [B, L, context_in_dim]` at `txt_ids [B, L, axes]` (zeros),
    /// noise levels `timesteps [B]` in [0, 1], pooled text `y [B, vec_in_dim]`
    /// and `guidance [B]` for guidance-distilled models (dev; a model without
    /// a guidance embedder ignores it, `None` skips the embedder). Activations
    /// and the result `[B, N, in_channels]` have `img`'s dtype.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        img: &Tensor,
        img_ids: &Tensor,
        txt: &Tensor,
        txt_ids: &Tensor,
        timesteps: &Tensor,
        y: &Tensor,
        guidance: Option<&Tensor>,
    ) -> Result<Tensor> {
        if img.rank() != 3 || txt.rank() != 3 {
            candle_core::bail!(
                "FLUX: img {:?} and txt {:?} must be [B, N, C]",
                img.shape(),
                txt.shape()
            );
        }
        let dtype = img.dtype();
        let rotation = self
            .rotary
            .rotation(&Tensor::cat(&[txt_ids, img_ids], 1)?, dtype)?;
        let mut img = self.img_in.forward(img)?;
        let mut txt = self.txt_in.forward(txt)?;
        let mut vec = self
            .time_in
            .forward(&timestep_embedding(timesteps, dtype)?)?;
        if let (Some(guidance_in), Some(g)) = (&self.guidance_in, guidance) {
            vec = (vec + guidance_in.forward(&timestep_embedding(g, dtype)?)?)?;
        }
        // Every modulation reads silu(vec).
        let silu_vec = (vec + self.vector_in.forward(y)?)?.silu()?;
        for block in &self.double_blocks {
            (img, txt) = block.forward(&img, &txt, &silu_vec, &rotation)?;
        }
        let txt_len = txt.dim(1)?;
        let mut joint = Tensor::cat(&[&txt, &img], 1)?;
        for block in &self.single_blocks {
            joint = block.forward(&joint, &silu_vec, &rotation)?;
        }
        let img = joint.narrow(1, txt_len, img.dim(1)?)?;
        self.final_layer.forward(&img, &silu_vec)
    }
}

impl WithForward for FluxTransformer {
    fn forward(
        &self,
        img: &Tensor,
        img_ids: &Tensor,
        txt: &Tensor,
        txt_ids: &Tensor,
        timesteps: &Tensor,
        y: &Tensor,
        guidance: Option<&Tensor>,
    ) -> Result<Tensor> {
        FluxTransformer::forward(self, img, img_ids, txt, txt_ids, timesteps, y, guidance)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::VarMap;
    use candle_transformers::models::flux::model::Flux;
    use splatforge_nn::rng::hash_name;

    /// Normal values of mean `mean` and std `std`, from `seed` (f32, CPU).
    fn normal(seed: u64, mean: f64, std: f64, dims: &[usize]) -> Tensor {
        splatforge_nn::rng::randn(seed, dims, DType::F32, &Device::Cpu)
            .and_then(|t| t.affine(std, mean))
            .unwrap()
    }

    fn tiny_config(in_channels: usize, guidance_embed: bool) -> Config {
        Config {
            in_channels,
            vec_in_dim: 12,
            context_in_dim: 24,
            hidden_size: 64,
            mlp_ratio: 4.0,
            num_heads: 2,
            depth: 2,
            depth_single_blocks: 2,
            axes_dim: vec![8, 12, 12],
            theta: 10_000,
            qkv_bias: true,
            guidance_embed,
        }
    }

    /// Every tensor candle's `Flux` asks for, random normal (seeded by its
    /// name): weights with std `fan_in^−½`, biases 0.1, norm scales around 1
    /// (std 0.3), so the activations stay of order 1 and the attention is
    /// neither uniform nor one-hot.
    fn random_weights(cfg: &Config) -> VarMap {
        let vars = VarMap::new();
        Flux::new(
            cfg,
            VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu),
        )
        .unwrap();
        for (name, var) in vars.data().lock().unwrap().iter() {
            let dims = var.dims();
            let (mean, std) = if name.ends_with(".scale") {
                (1.0, 0.3)
            } else if name.ends_with(".bias") {
                (0.0, 0.1)
            } else {
                (0.0, (dims[1] as f64).powf(-0.5))
            };
            var.set(&normal(hash_name(name), mean, std, dims)).unwrap();
        }
        vars
    }

    /// `(0, row, column)` of a `rows × cols` patch grid, rows offset by
    /// `row0`, `[1, rows·cols, 3]`.
    fn grid_ids(rows: usize, cols: usize, row0: usize) -> Tensor {
        let ids: Vec<f32> = (0..rows * cols)
            .flat_map(|i| [0.0, (row0 + i / cols) as f32, (i % cols) as f32])
            .collect();
        Tensor::from_vec(ids, (1, rows * cols, 3), &Device::Cpu).unwrap()
    }

    struct Inputs {
        img: Tensor,
        img_ids: Tensor,
        txt: Tensor,
        txt_ids: Tensor,
        t: Tensor,
        y: Tensor,
        guidance: Tensor,
    }

    impl Inputs {
        /// Standard normal latents and text for batch `img_ids.dim(0)`,
        /// `txt_len` text tokens.
        fn new(cfg: &Config, img_ids: Tensor, txt_len: usize, t: &[f32]) -> Self {
            let dev = Device::Cpu;
            let (b, n, _) = img_ids.dims3().unwrap();
            Self {
                img: normal(1, 0.0, 1.0, &[b, n, cfg.in_channels]),
                img_ids,
                txt: normal(2, 0.0, 1.0, &[b, txt_len, cfg.context_in_dim]),
                txt_ids: Tensor::zeros((b, txt_len, 3), DType::F32, &dev).unwrap(),
                t: Tensor::new(t, &dev).unwrap(),
                y: normal(3, 0.0, 1.0, &[b, cfg.vec_in_dim]),
                guidance: Tensor::full(4f32, b, &dev).unwrap(),
            }
        }

        fn run(&self, model: &dyn WithForward, img_ids: &Tensor) -> Tensor {
            model
                .forward(
                    &self.img,
                    img_ids,
                    &self.txt,
                    &self.txt_ids,
                    &self.t,
                    &self.y,
                    Some(&self.guidance),
                )
                .unwrap()
        }
    }

    /// ‖a − b‖₂ / ‖b‖₂.
    fn rel_l2(a: &Tensor, b: &Tensor) -> f32 {
        let norm = |t: &Tensor| {
            t.sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .sqrt()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        norm(&(a - b).unwrap()) / norm(b)
    }

    /// Ours and candle's `Flux` on the same weights and inputs: returns the
    /// relative error, after checking the shape, and that the comparison
    /// sees the rotary embedding (image rows and columns swapped move
    /// candle's output by far more than the tolerance).
    fn compare(cfg: &Config, inputs: &Inputs) -> f32 {
        let vars = random_weights(cfg);
        let vb = VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu);
        let ours = FluxTransformer::new(cfg, vb.clone()).unwrap();
        let theirs = Flux::new(cfg, vb).unwrap();
        let want = inputs.run(&theirs, &inputs.img_ids);
        let got = inputs.run(&ours, &inputs.img_ids);
        let (b, n, _) = inputs.img.dims3().unwrap();
        assert_eq!(got.dims(), &[b, n, cfg.in_channels]);
        let swapped = Tensor::cat(
            &[
                inputs.img_ids.narrow(2, 0, 1).unwrap(),
                inputs.img_ids.narrow(2, 2, 1).unwrap(),
                inputs.img_ids.narrow(2, 1, 1).unwrap(),
            ],
            2,
        )
        .unwrap();
        let moved = rel_l2(&inputs.run(&theirs, &swapped), &want);
        assert!(
            moved > 1e-3,
            "rows ↔ columns moved candle's output by only {moved:e}"
        );
        rel_l2(&got, &want)
    }

    #[test]
    fn matches_candle_flux() {
        for guidance_embed in [false, true] {
            let cfg = tiny_config(16, guidance_embed);
            let inputs = Inputs::new(&cfg, grid_ids(4, 4, 0), 8, &[0.75]);
            let err = compare(&cfg, &inputs);
            println!("guidance_embed {guidance_embed}: relative L2 error vs candle's Flux {err:e}");
            assert!(err <= 1e-5, "relative error {err:e}");
        }
    }

    /// Two items with different positions (a crop three rows down for the
    /// second), 7 text tokens, a 3 × 5 grid of image tokens, timesteps `t`.
    fn ragged_batch(t: &[f32]) -> (Config, Inputs) {
        let cfg = tiny_config(64, true);
        let ids = Tensor::cat(&[grid_ids(3, 5, 0), grid_ids(3, 5, 3)], 0).unwrap();
        let inputs = Inputs::new(&cfg, ids, 7, t);
        (cfg, inputs)
    }

    #[test]
    fn matches_candle_flux_ragged_batch() {
        let (cfg, inputs) = ragged_batch(&[0.3, 0.9]);
        let err = compare(&cfg, &inputs);
        println!("ragged batch of 2: relative L2 error vs candle's Flux {err:e}");
        assert!(err <= 1e-5, "relative error {err:e}");
    }

    #[test]
    fn bf16_is_close_to_f32() {
        // The half-precision path (rotation and modulations stored in bf16)
        // against candle's f32 forward. Timesteps and guidance with 1000·t
        // exact in bf16: the embedding scales in the input's dtype as the
        // references do, and 0.75 → 752 would move a random-weight model far
        // more than bf16's rounding does.
        let (cfg, inputs) = ragged_batch(&[0.25, 0.5]);
        let vars = random_weights(&cfg);
        let want = inputs.run(
            &Flux::new(
                &cfg,
                VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu),
            )
            .unwrap(),
            &inputs.img_ids,
        );
        let bf16: std::collections::HashMap<String, Tensor> = vars
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(name, var)| (name.clone(), var.to_dtype(DType::BF16).unwrap()))
            .collect();
        let ours = FluxTransformer::new(
            &cfg,
            VarBuilder::from_tensors(bf16, DType::BF16, &Device::Cpu),
        )
        .unwrap();
        let half = |t: &Tensor| t.to_dtype(DType::BF16).unwrap();
        let got = ours
            .forward(
                &half(&inputs.img),
                &half(&inputs.img_ids),
                &half(&inputs.txt),
                &half(&inputs.txt_ids),
                &half(&inputs.t),
                &half(&inputs.y),
                Some(&half(&inputs.guidance)),
            )
            .unwrap();
        assert_eq!(got.dtype(), DType::BF16);
        let err = rel_l2(&got.to_dtype(DType::F32).unwrap(), &want);
        println!("bf16: relative L2 error vs candle's Flux in f32 {err:e}");
        assert!(err <= 2e-2, "relative error {err:e}");
    }

    #[test]
    fn rejects_axes_that_do_not_fit_the_heads() {
        let mut cfg = tiny_config(16, false);
        cfg.axes_dim = vec![8, 12, 10];
        let vars = VarMap::new();
        let vb = VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu);
        assert!(FluxTransformer::new(&cfg, vb).is_err());
    }
}
