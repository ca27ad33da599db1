//! The transformer parts TRELLIS' models share, with the official module paths as tensor
//! names: `LayerNorm32`, `MultiHeadRMSNorm`, `MultiHeadAttention` (self and cross),
//! `FeedForwardNet`, the adaLN modulation, `ModulatedTransformerCrossBlock`,
//! `TransformerBlock` (`trellis/modules/{norm,attention,transformer}`), the timestep
//! embedder of `sparse_structure_flow.py` and `AbsolutePositionEmbedder`.
//!
//! Layout: activations are `[B, N, C]` (batch, tokens, channels), in the model dtype;
//! layer norms and the QK RMSNorm compute in f32 and round back, as the official
//! `LayerNorm32` and `MultiHeadRMSNorm` do. The blocks are written once for dense and
//! sparse tensors: the attention between the projections is a parameter ([`Attend`]),
//! dense ([`dense_attention`]) here, variable-length or windowed in the sparse models,
//! which also run the blocks on `[1, rows, C]` with per-row modulation terms
//! ([`ModulationTerms::map`]).

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{Init, Linear, VarBuilder};
use splatforge_nn::ops::{self, LinearEpilogue};

use crate::{Result, TrellisError};

/// The eps of every block's layer norms (`LayerNorm32(..., eps=1e-6)`).
pub const BLOCK_NORM_EPS: f64 = 1e-6;

/// Width of the sinusoidal timestep features (`frequency_embedding_size=256`).
pub const TIMESTEP_FREQUENCY_DIM: usize = 256;

/// The attention between a block's projections: `(q, k, v, heads)` with `q [B, Nq, H·D]`,
/// `k, v [B, Nk, H·D]` → `[B, Nq, H·D]`, softmax of `q·kᵀ·D^−½`.
pub type Attend<'a> = &'a dyn Fn(&Tensor, &Tensor, &Tensor, usize) -> candle_core::Result<Tensor>;

/// Full attention over each batch item's tokens (the runtime's fused kernel on the GPU).
pub fn dense_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
) -> candle_core::Result<Tensor> {
    ops::attention(q, k, v, heads)
}

/// `nn.Linear(in_dim, out_dim, bias)` under `vb` (`weight [out, in]`, `bias [out]`).
pub fn linear(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder) -> Result<Linear> {
    Ok(candle_nn::linear_b(in_dim, out_dim, bias, vb)?)
}

/// `layer` on `x [.., in]` → `[.., out]`: on the GPU one 2-D product over the flattened rows
/// plus the fused bias epilogue (candle's `Linear` runs a batched product and a separate
/// broadcast add, 3× slower at these shapes: BENCHMARKS.md, `op_linear_*`); candle's
/// `Linear` itself on the CPU.
pub fn linear_forward(layer: &Linear, x: &Tensor) -> Result<Tensor> {
    Ok(ops::linear(x, layer, LinearEpilogue::default())?)
}

/// `layer` on `x`, then `residual + gate ⊙ (…)`: one fused epilogue where the gate has one
/// row per batch item (`[B, 1, C]`), candle ops for per-row gates (sparse blocks).
fn linear_into_residual(
    x: &Tensor,
    layer: &Linear,
    gate: Option<&Tensor>,
    residual: &Tensor,
) -> Result<Tensor> {
    let per_item = |g: &Tensor| g.rank() == 3 && g.dims()[1] == 1;
    Ok(match gate {
        Some(g) if !per_item(g) => {
            (residual + ops::linear(x, layer, LinearEpilogue::default())?.broadcast_mul(g)?)?
        }
        gate => ops::linear(
            x,
            layer,
            LinearEpilogue {
                gate,
                residual: Some(residual),
                ..Default::default()
            },
        )?,
    })
}

/// `LayerNorm32`: layer norm over the last dimension in f32 (statistics and affine), the
/// result rounded to the input dtype. Without affine the weight is 1 and the bias 0.
#[derive(Debug, Clone)]
pub struct LayerNorm32 {
    /// `[C]` f32.
    weight: Tensor,
    /// `[C]` f32.
    bias: Tensor,
    eps: f32,
}

impl LayerNorm32 {
    /// `LayerNorm32(channels, elementwise_affine=affine, eps)`; with `affine`, `weight` and
    /// `bias` are read from `vb` (kept in f32, as the official code never halves norms).
    pub fn load(channels: usize, eps: f64, affine: bool, vb: VarBuilder) -> Result<Self> {
        let (weight, bias) = if affine {
            let vb = vb.to_dtype(DType::F32);
            (
                vb.get_with_hints(channels, "weight", Init::Const(1.0))?,
                vb.get_with_hints(channels, "bias", Init::Const(0.0))?,
            )
        } else {
            (
                Tensor::ones(channels, DType::F32, vb.device())?,
                Tensor::zeros(channels, DType::F32, vb.device())?,
            )
        };
        Ok(Self {
            weight,
            bias,
            eps: eps as f32,
        })
    }

    /// Normalises `x [.., C]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(ops::layer_norm_modulate(
            x,
            &self.weight,
            &self.bias,
            self.eps,
            None,
        )?)
    }

    /// `ChannelLayerNorm32`: `x [N, C, …]` normalised over its channels (then SiLU when
    /// `silu`), without permuting it on the GPU ([`ops::channel_layer_norm`]).
    pub fn forward_channels(&self, x: &Tensor, silu: bool) -> Result<Tensor> {
        Ok(ops::channel_layer_norm(
            x,
            &self.weight,
            &self.bias,
            self.eps,
            silu,
        )?)
    }

    /// `self.forward(x)·(1 + scale) + shift`, the official `modulate` after the norm: the adaLN
    /// pre-norm of the DiT blocks, one pass on the GPU (`shift`, `scale` `[B, 1, C]`, broadcast
    /// over the tokens, or `x`'s shape).
    pub fn forward_modulated(&self, x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
        Ok(ops::layer_norm_modulate(
            x,
            &self.weight,
            &self.bias,
            self.eps,
            Some((shift, scale)),
        )?)
    }
}

/// `MultiHeadRMSNorm`: each head's `D` values divided by their L2 norm (`F.normalize`,
/// norm clamped at 1e-12), times `√D` and a per-head, per-channel `gamma [H, D]`; in f32,
/// rounded back to the input dtype.
#[derive(Debug, Clone)]
pub struct MultiHeadRmsNorm {
    /// `[H, D]` f32.
    gamma: Tensor,
    heads: usize,
    head_dim: usize,
}

impl MultiHeadRmsNorm {
    /// `MultiHeadRMSNorm(head_dim, heads)`: `gamma [heads, head_dim]` from `vb`.
    pub fn load(head_dim: usize, heads: usize, vb: VarBuilder) -> Result<Self> {
        let gamma =
            vb.to_dtype(DType::F32)
                .get_with_hints((heads, head_dim), "gamma", Init::Const(1.0))?;
        Ok(Self {
            gamma,
            heads,
            head_dim,
        })
    }

    /// Normalises `x [.., H·D]` head by head ([`ops::multi_head_rms_norm`]).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let width = self.heads * self.head_dim;
        if x.dims().last() != Some(&width) {
            return Err(TrellisError::InvalidArgument(format!(
                "QK RMSNorm over {} heads of {} channels got {:?}",
                self.heads,
                self.head_dim,
                x.dims()
            )));
        }
        // x·√D / √(‖x‖² + D·eps) is F.normalize's x / max(‖x‖, 1e-12) · √D, bar the clamp.
        let eps = 1e-24 / self.head_dim as f32;
        Ok(ops::multi_head_rms_norm(x, &self.gamma, eps)?)
    }
}

/// Loads the optional QK norms `q_rms_norm`, `k_rms_norm`.
fn load_qk_norms(
    enabled: bool,
    channels: usize,
    heads: usize,
    vb: &VarBuilder,
) -> Result<Option<(MultiHeadRmsNorm, MultiHeadRmsNorm)>> {
    if !enabled {
        return Ok(None);
    }
    let head_dim = channels / heads;
    Ok(Some((
        MultiHeadRmsNorm::load(head_dim, heads, vb.pp("q_rms_norm"))?,
        MultiHeadRmsNorm::load(head_dim, heads, vb.pp("k_rms_norm"))?,
    )))
}

fn check_heads(channels: usize, heads: usize) -> Result<()> {
    if heads == 0 || channels % heads != 0 {
        return Err(TrellisError::Config(format!(
            "{channels} channels cannot be split into {heads} heads"
        )));
    }
    Ok(())
}

/// `MultiHeadAttention(type="self", attn_mode="full")`: `to_qkv` (q, k, v stacked along the
/// output channels, each `H·D` head-major), optional QK RMSNorm, `to_out`.
#[derive(Debug, Clone)]
pub struct SelfAttention {
    to_qkv: Linear,
    qk_norm: Option<(MultiHeadRmsNorm, MultiHeadRmsNorm)>,
    to_out: Linear,
    channels: usize,
    heads: usize,
}

impl SelfAttention {
    pub fn load(
        channels: usize,
        heads: usize,
        qkv_bias: bool,
        qk_rms_norm: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        check_heads(channels, heads)?;
        Ok(Self {
            to_qkv: linear(channels, 3 * channels, qkv_bias, vb.pp("to_qkv"))?,
            qk_norm: load_qk_norms(qk_rms_norm, channels, heads, &vb)?,
            to_out: linear(channels, channels, true, vb.pp("to_out"))?,
            channels,
            heads,
        })
    }

    pub fn heads(&self) -> usize {
        self.heads
    }

    /// `x [.., C]` → `(q, k, v)`, each `[.., H·D]` contiguous, q and k normalised when the
    /// layer has QK RMSNorm.
    pub fn project(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let qkv = linear_forward(&self.to_qkv, x)?;
        let c = self.channels;
        let part = |i: usize| qkv.narrow(D::Minus1, i * c, c)?.contiguous();
        let (mut q, mut k, v) = (part(0)?, part(1)?, part(2)?);
        if let Some((q_norm, k_norm)) = &self.qk_norm {
            q = q_norm.forward(&q)?;
            k = k_norm.forward(&k)?;
        }
        Ok((q, k, v))
    }

    /// `residual + gate ⊙ to_out(attend(project(x)))` (`gate` optional, `[B, 1, C]` or
    /// broadcastable to the output).
    pub fn forward_into(
        &self,
        x: &Tensor,
        attend: Attend,
        gate: Option<&Tensor>,
        residual: &Tensor,
    ) -> Result<Tensor> {
        let (q, k, v) = self.project(x)?;
        let h = attend(&q, &k, &v, self.heads)?;
        linear_into_residual(&h, &self.to_out, gate, residual)
    }

    /// `to_out(attention(project(x)))` over `x [B, N, C]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (q, k, v) = self.project(x)?;
        let h = dense_attention(&q, &k, &v, self.heads)?;
        linear_forward(&self.to_out, &h)
    }
}

/// `MultiHeadAttention(type="cross")`: `to_q` on the tokens, `to_kv` on the context (k then
/// v along the output channels), optional QK RMSNorm, `to_out`.
#[derive(Debug, Clone)]
pub struct CrossAttention {
    to_q: Linear,
    to_kv: Linear,
    qk_norm: Option<(MultiHeadRmsNorm, MultiHeadRmsNorm)>,
    to_out: Linear,
    channels: usize,
    heads: usize,
}

impl CrossAttention {
    pub fn load(
        channels: usize,
        ctx_channels: usize,
        heads: usize,
        qkv_bias: bool,
        qk_rms_norm: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        check_heads(channels, heads)?;
        Ok(Self {
            to_q: linear(channels, channels, qkv_bias, vb.pp("to_q"))?,
            to_kv: linear(ctx_channels, 2 * channels, qkv_bias, vb.pp("to_kv"))?,
            qk_norm: load_qk_norms(qk_rms_norm, channels, heads, &vb)?,
            to_out: linear(channels, channels, true, vb.pp("to_out"))?,
            channels,
            heads,
        })
    }

    pub fn heads(&self) -> usize {
        self.heads
    }

    /// `x [.., C]` → `q [.., H·D]` (normalised with QK RMSNorm).
    pub fn project_query(&self, x: &Tensor) -> Result<Tensor> {
        let q = linear_forward(&self.to_q, x)?;
        match &self.qk_norm {
            Some((q_norm, _)) => q_norm.forward(&q),
            None => Ok(q),
        }
    }

    /// `context [.., C_ctx]` → `(k, v)`, each `[.., H·D]` contiguous (k normalised with QK
    /// RMSNorm). Constant over a sampling run, so callers may compute it once.
    pub fn project_context(&self, context: &Tensor) -> Result<(Tensor, Tensor)> {
        let kv = linear_forward(&self.to_kv, context)?;
        let c = self.channels;
        let mut k = kv.narrow(D::Minus1, 0, c)?.contiguous()?;
        let v = kv.narrow(D::Minus1, c, c)?.contiguous()?;
        if let Some((_, k_norm)) = &self.qk_norm {
            k = k_norm.forward(&k)?;
        }
        Ok((k, v))
    }

    /// `residual + to_out(attend(q(x), k(context), v(context)))`.
    pub fn forward_into(
        &self,
        x: &Tensor,
        context: &Tensor,
        attend: Attend,
        residual: &Tensor,
    ) -> Result<Tensor> {
        let q = self.project_query(x)?;
        let (k, v) = self.project_context(context)?;
        let h = attend(&q, &k, &v, self.heads)?;
        linear_into_residual(&h, &self.to_out, None, residual)
    }
}

/// `FeedForwardNet`: `mlp.0` (C → ⌊C·ratio⌋), GELU (tanh approximation), `mlp.2` (back to C).
#[derive(Debug, Clone)]
pub struct FeedForward {
    fc1: Linear,
    fc2: Linear,
}

impl FeedForward {
    /// Loads `mlp.0`, `mlp.2` under `vb` (a block passes `vb.pp("mlp")`, giving the official
    /// `mlp.mlp.0`).
    pub fn load(channels: usize, mlp_ratio: f64, vb: VarBuilder) -> Result<Self> {
        // int(channels * mlp_ratio), as the official module.
        let hidden = (channels as f64 * mlp_ratio) as usize;
        Ok(Self {
            fc1: linear(channels, hidden, true, vb.pp("mlp").pp("0"))?,
            fc2: linear(hidden, channels, true, vb.pp("mlp").pp("2"))?,
        })
    }

    /// `residual + gate ⊙ mlp(x)` (`gate` optional).
    pub fn forward_into(
        &self,
        x: &Tensor,
        gate: Option<&Tensor>,
        residual: &Tensor,
    ) -> Result<Tensor> {
        let h = ops::linear(
            x,
            &self.fc1,
            LinearEpilogue {
                gelu: true,
                ..Default::default()
            },
        )?;
        linear_into_residual(&h, &self.fc2, gate, residual)
    }

    /// `mlp(x)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = ops::linear(
            x,
            &self.fc1,
            LinearEpilogue {
                gelu: true,
                ..Default::default()
            },
        )?;
        linear_forward(&self.fc2, &h)
    }
}

/// The six adaLN terms of a modulated block, each `[B, 1, C]` (or, after
/// [`map`](Self::map), one row per token).
#[derive(Debug, Clone)]
pub struct ModulationTerms {
    pub shift_msa: Tensor,
    pub scale_msa: Tensor,
    pub gate_msa: Tensor,
    pub shift_mlp: Tensor,
    pub scale_mlp: Tensor,
    pub gate_mlp: Tensor,
}

impl ModulationTerms {
    /// Splits `[B, 6·C]` into the six terms, in the official `chunk(6, dim=1)` order.
    pub fn from_packed(packed: &Tensor) -> Result<Self> {
        let (b, six_c) = packed.dims2()?;
        if six_c % 6 != 0 {
            return Err(TrellisError::InvalidArgument(format!(
                "modulation of width {six_c} is not 6·C"
            )));
        }
        let c = six_c / 6;
        let term = |i: usize| packed.narrow(1, i * c, c)?.reshape((b, 1, c));
        Ok(Self {
            shift_msa: term(0)?,
            scale_msa: term(1)?,
            gate_msa: term(2)?,
            shift_mlp: term(3)?,
            scale_mlp: term(4)?,
            gate_mlp: term(5)?,
        })
    }

    /// The six terms through `f` (e.g. gathered to one row per sparse token).
    pub fn map(&self, f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Self> {
        Ok(Self {
            shift_msa: f(&self.shift_msa)?,
            scale_msa: f(&self.scale_msa)?,
            gate_msa: f(&self.gate_msa)?,
            shift_mlp: f(&self.shift_mlp)?,
            scale_mlp: f(&self.scale_mlp)?,
            gate_mlp: f(&self.gate_mlp)?,
        })
    }
}

/// `adaLN_modulation = Sequential(SiLU, Linear(C, 6·C))`, the linear being `…​.1`.
#[derive(Debug, Clone)]
pub struct AdaLnModulation {
    linear: Linear,
}

impl AdaLnModulation {
    /// Loads `adaLN_modulation.1` under `vb`.
    pub fn load(channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            linear: linear(
                channels,
                6 * channels,
                true,
                vb.pp("adaLN_modulation").pp("1"),
            )?,
        })
    }

    /// `linear(silu(emb))`, `emb [B, C]` → the packed `[B, 6·C]` terms.
    pub fn forward(&self, emb: &Tensor) -> Result<Tensor> {
        linear_forward(&self.linear, &emb.silu()?)
    }
}

/// The shape of a transformer block, the official constructor arguments.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockConfig {
    pub channels: usize,
    pub heads: usize,
    pub mlp_ratio: f64,
    pub qkv_bias: bool,
    /// QK RMSNorm in the self-attention.
    pub qk_rms_norm: bool,
}

/// `ModulatedTransformerCrossBlock`: adaLN-modulated self-attention (`norm1`, no affine),
/// cross-attention to the conditioning tokens (`norm2`, with affine), adaLN-modulated MLP
/// (`norm3`, no affine). Its own `adaLN_modulation` unless the model shares one.
#[derive(Debug, Clone)]
pub struct ModulatedTransformerCrossBlock {
    norm1: LayerNorm32,
    norm2: LayerNorm32,
    norm3: LayerNorm32,
    self_attn: SelfAttention,
    cross_attn: CrossAttention,
    mlp: FeedForward,
    modulation: Option<AdaLnModulation>,
}

impl ModulatedTransformerCrossBlock {
    /// `config` of the self-attention and MLP; the cross-attention reads `ctx_channels`
    /// and has QK RMSNorm when `qk_rms_norm_cross`; `share_mod`: no own modulation.
    pub fn load(
        config: BlockConfig,
        ctx_channels: usize,
        qk_rms_norm_cross: bool,
        share_mod: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let c = config.channels;
        Ok(Self {
            norm1: LayerNorm32::load(c, BLOCK_NORM_EPS, false, vb.pp("norm1"))?,
            norm2: LayerNorm32::load(c, BLOCK_NORM_EPS, true, vb.pp("norm2"))?,
            norm3: LayerNorm32::load(c, BLOCK_NORM_EPS, false, vb.pp("norm3"))?,
            self_attn: SelfAttention::load(
                c,
                config.heads,
                config.qkv_bias,
                config.qk_rms_norm,
                vb.pp("self_attn"),
            )?,
            cross_attn: CrossAttention::load(
                c,
                ctx_channels,
                config.heads,
                config.qkv_bias,
                qk_rms_norm_cross,
                vb.pp("cross_attn"),
            )?,
            mlp: FeedForward::load(c, config.mlp_ratio, vb.pp("mlp"))?,
            modulation: if share_mod {
                None
            } else {
                Some(AdaLnModulation::load(c, vb)?)
            },
        })
    }

    /// The terms for `emb`: the timestep embedding `[B, C]` through this block's
    /// modulation, or (shared modulation) the model's packed `[B, 6·C]` terms.
    pub fn modulation_terms(&self, emb: &Tensor) -> Result<ModulationTerms> {
        match &self.modulation {
            Some(m) => ModulationTerms::from_packed(&m.forward(emb)?),
            None => ModulationTerms::from_packed(emb),
        }
    }

    /// The block over dense tokens `x [B, N, C]` with `emb` (see
    /// [`modulation_terms`](Self::modulation_terms)) and `context [B, L, C_ctx]`.
    pub fn forward(&self, x: &Tensor, emb: &Tensor, context: &Tensor) -> Result<Tensor> {
        let terms = self.modulation_terms(emb)?;
        self.forward_with(x, &terms, context, &dense_attention, &dense_attention)
    }

    /// The block with given terms and attentions (sparse models: per-row terms and their
    /// variable-length attentions).
    pub fn forward_with(
        &self,
        x: &Tensor,
        terms: &ModulationTerms,
        context: &Tensor,
        self_attend: Attend,
        cross_attend: Attend,
    ) -> Result<Tensor> {
        let h = self
            .norm1
            .forward_modulated(x, &terms.shift_msa, &terms.scale_msa)?;
        let x = self
            .self_attn
            .forward_into(&h, self_attend, Some(&terms.gate_msa), x)?;
        let h = self.norm2.forward(&x)?;
        let x = self
            .cross_attn
            .forward_into(&h, context, cross_attend, &x)?;
        let h = self
            .norm3
            .forward_modulated(&x, &terms.shift_mlp, &terms.scale_mlp)?;
        self.mlp.forward_into(&h, Some(&terms.gate_mlp), &x)
    }
}

/// `TransformerBlock`: self-attention (`norm1`) and MLP (`norm2`), pre-norm residual; the
/// norms have an affine when `ln_affine`.
#[derive(Debug, Clone)]
pub struct TransformerBlock {
    norm1: LayerNorm32,
    norm2: LayerNorm32,
    attn: SelfAttention,
    mlp: FeedForward,
}

impl TransformerBlock {
    pub fn load(config: BlockConfig, ln_affine: bool, vb: VarBuilder) -> Result<Self> {
        let c = config.channels;
        Ok(Self {
            norm1: LayerNorm32::load(c, BLOCK_NORM_EPS, ln_affine, vb.pp("norm1"))?,
            norm2: LayerNorm32::load(c, BLOCK_NORM_EPS, ln_affine, vb.pp("norm2"))?,
            attn: SelfAttention::load(
                c,
                config.heads,
                config.qkv_bias,
                config.qk_rms_norm,
                vb.pp("attn"),
            )?,
            mlp: FeedForward::load(c, config.mlp_ratio, vb.pp("mlp"))?,
        })
    }

    /// The block over dense tokens `x [B, N, C]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, &dense_attention)
    }

    /// The block with the given attention (sparse models: windowed or variable-length).
    pub fn forward_with(&self, x: &Tensor, attend: Attend) -> Result<Tensor> {
        let x = self
            .attn
            .forward_into(&self.norm1.forward(x)?, attend, None, x)?;
        self.mlp.forward_into(&self.norm2.forward(&x)?, None, &x)
    }
}

/// Sinusoidal timestep features `[B, dim]` (f32) of `t [B]`: `[cos(t·fᵢ), sin(t·fᵢ)]` with
/// `fᵢ = exp(−ln(10000)·i / (dim/2))`, `i < dim/2`, and a zero column when `dim` is odd (the
/// official `TimestepEmbedder.timestep_embedding`, GLIDE's).
pub fn timestep_features(t: &Tensor, dim: usize) -> Result<Tensor> {
    features_at(t, &timestep_frequencies(dim, t.device())?, dim)
}

/// The `fᵢ` of [`timestep_features`]: `[1, dim/2]` f32 on `device`.
fn timestep_frequencies(dim: usize, device: &Device) -> Result<Tensor> {
    let half = dim / 2;
    let log_period = 10000f32.ln();
    let freqs: Vec<f32> = (0..half)
        .map(|i| (-log_period * i as f32 / half as f32).exp())
        .collect();
    Ok(Tensor::from_vec(freqs, (1, half), device)?)
}

/// [`timestep_features`] with its frequencies given (`[1, dim/2]` f32).
fn features_at(t: &Tensor, freqs: &Tensor, dim: usize) -> Result<Tensor> {
    let args = t.to_dtype(DType::F32)?.unsqueeze(1)?.broadcast_mul(freqs)?;
    let mut parts = vec![args.cos()?, args.sin()?];
    if dim % 2 == 1 {
        parts.push(Tensor::zeros((t.dim(0)?, 1), DType::F32, t.device())?);
    }
    Ok(Tensor::cat(&parts, 1)?)
}

/// `TimestepEmbedder`: [`timestep_features`] (256 wide), `mlp.0`, SiLU, `mlp.2`.
#[derive(Debug, Clone)]
pub struct TimestepEmbedder {
    fc1: Linear,
    fc2: Linear,
    /// `[1, 128]` f32: made once, so that a step uploads nothing (a host copy in a step
    /// would also keep it out of a CUDA graph).
    freqs: Tensor,
}

impl TimestepEmbedder {
    pub fn load(hidden: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            fc1: linear(TIMESTEP_FREQUENCY_DIM, hidden, true, vb.pp("mlp").pp("0"))?,
            fc2: linear(hidden, hidden, true, vb.pp("mlp").pp("2"))?,
            freqs: timestep_frequencies(TIMESTEP_FREQUENCY_DIM, vb.device())?,
        })
    }

    /// `t [B]` (the sampler's time × 1000) → `[B, hidden]` in the layers' dtype.
    pub fn forward(&self, t: &Tensor) -> Result<Tensor> {
        let features = features_at(t, &self.freqs, TIMESTEP_FREQUENCY_DIM)?
            .to_dtype(self.fc1.weight().dtype())?;
        linear_forward(&self.fc2, &linear_forward(&self.fc1, &features)?.silu()?)
    }
}

/// `AbsolutePositionEmbedder(channels, in_channels)`: for each coordinate axis,
/// `[sin(x·fⱼ), cos(x·fⱼ)]` with `fⱼ = 10000^(−j/F)`, `F = channels / in_channels / 2`,
/// axes concatenated and zero-padded to `channels`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbsolutePositionEmbedder {
    pub channels: usize,
    pub in_channels: usize,
}

impl AbsolutePositionEmbedder {
    pub fn new(channels: usize, in_channels: usize) -> Result<Self> {
        if in_channels == 0 || channels / in_channels / 2 == 0 {
            return Err(TrellisError::Config(format!(
                "a position embedding of {channels} channels cannot cover {in_channels} axes"
            )));
        }
        Ok(Self {
            channels,
            in_channels,
        })
    }

    /// `coords` (`in_channels` integers per row, row-major) → `[rows, channels]` f32.
    pub fn embed(&self, coords: &[u32], device: &candle_core::Device) -> Result<Tensor> {
        if coords.len() % self.in_channels != 0 {
            return Err(TrellisError::InvalidArgument(format!(
                "{} coordinate values are not rows of {}",
                coords.len(),
                self.in_channels
            )));
        }
        let freq_dim = self.channels / self.in_channels / 2;
        let freqs: Vec<f32> = (0..freq_dim)
            .map(|j| 1.0 / 10000f32.powf(j as f32 / freq_dim as f32))
            .collect();
        let rows = coords.len() / self.in_channels;
        let mut out = vec![0f32; rows * self.channels];
        for (row, point) in out
            .chunks_exact_mut(self.channels)
            .zip(coords.chunks_exact(self.in_channels))
        {
            for (axis, &x) in point.iter().enumerate() {
                let base = axis * 2 * freq_dim;
                for (j, f) in freqs.iter().enumerate() {
                    let arg = x as f32 * f;
                    row[base + j] = arg.sin();
                    row[base + freq_dim + j] = arg.cos();
                }
            }
        }
        Ok(Tensor::from_vec(out, (rows, self.channels), device)?)
    }
}

#[cfg(test)]
pub(crate) mod tests;
