//! The models' hot operations, each with one entry point that picks
//! a fused CUDA kernel where one applies and candle's composite otherwise.
//!
//! | op | fused CUDA kernel (feature `cuda`) | composite path |
//! |---|---|---|
//! | [`attention`] | cuDNN's fused attention (feature `cudnn`, graph API, `ops/cudnn/attention.rs`), else `cuda/attention.cu`: flash-style, f16/bf16, head dim 64 or 128 | scores materialised, softmax in f32 |
//! | [`GroupNorm::forward`] / [`GroupNorm::forward_silu`] | `cuda/group_norm.cu`: statistics + normalise + SiLU in three launches | candle ops, statistics in f32 |
//! | [`linear`] | cuBLAS product, then `cuda/elementwise.cu`: bias, GELU, gated residual in one pass | candle-nn's `Linear`, then candle ops |
//! | [`rms_norm_rope`] | `cuda/elementwise.cu`: FLUX's per-head RMSNorm and rotary embedding in one pass | candle-nn's `rms_norm`, `rope_i` |
//! | [`multi_head_rms_norm`] | the same kernel: TRELLIS' per-head RMSNorm (a scale per head, no rotation) | candle-nn's `rms_norm` in f32, a broadcast product |
//! | [`layer_norm_modulate`] | `cuda/elementwise.cu`: LayerNorm with the adaLN modulation in one pass | candle-nn's `layer_norm` in f32, broadcast ops |
//! | [`channel_layer_norm`] | `cuda/elementwise.cu`: LayerNorm over channels (+ SiLU) read in place | permutes around [`layer_norm_modulate`]'s composite |
//! | [`upsample_nearest2x`] | `cuda/elementwise.cu` | candle's `upsample_nearest2d` |
//! | [`Conv2d::forward`] | cuDNN's graph API (feature `cudnn`), one execution plan cached per shape | candle's `conv2d` |
//! | [`deform_conv2d`] | `cuda/deform.cu`: the modulated samples straight into the column matrix, then cuBLAS | the same columns by a loop on the CPU, then candle's product |
//!
//! The composite path is the reference: it runs on the CPU, for f64, for
//! shapes the kernels don't cover, and for attention whenever an input takes
//! part in autograd. GroupNorm and the convolution have a backward for their
//! input (the SDS path differentiates the VAE encoder with respect to the
//! images); their weights take no gradient. `examples/parity.rs ops` checks
//! each kernel (and these backwards) against the composite path on the GPU
//! with random inputs.

/// The `cpu_fwd` of a CUDA-only candle custom op: an error saying so (the
/// entry points below send CPU tensors elsewhere). One `(storage, layout)`
/// pair of parameter names per input.
#[cfg(feature = "cuda")]
macro_rules! cuda_only {
    ($what:literal; $(($storage:ident, $layout:ident)),+) => {
        fn cpu_fwd(
            &self,
            $($storage: &candle_core::CpuStorage, $layout: &Layout),+
        ) -> Result<(candle_core::CpuStorage, Shape)> {
            candle_core::bail!($what)
        }
    };
}

#[cfg(feature = "cuda")]
mod cuda;
#[cfg(feature = "cudnn")]
mod cudnn;
mod deform;

pub use deform::deform_conv2d;

use candle_core::{DType, Device, Result, Tensor, D};
use candle_nn::VarBuilder;

/// Multi-head softmax attention: `q [B, Nq, H·D]`, `k, v [B, Nk, H·D]` →
/// `[B, Nq, H·D]`, scale `D^−½`, softmax in f32.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
    attention_with(q, k, v, heads, AttentionKernel::Auto)
}

/// Which implementation runs [`attention`] on the GPU (benchmarks and parity
/// checks force one; everything else takes `Auto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionKernel {
    /// What `SPLATFORGE_ATTENTION` says (read once):
    /// - unset or `auto`: cuDNN's fused attention for shapes of at least
    ///   [`CUDNN_MIN_SCORES`] scores per head where the build has `cudnn` and
    ///   an engine takes the shape, our kernel for the rest;
    /// - `cudnn`: cuDNN wherever an engine takes the shape, however small;
    /// - `fused`: our kernel only.
    Auto,
    /// Our flash-attention kernel (`cuda/attention.cu`) with block shape
    /// `variant` (`SfAttentionArgs` in `cuda/api.h`; 0 is the tuned default,
    /// unknown ones fail).
    Fused(u32),
    /// cuDNN's fused attention (`ops/cudnn/attention.rs`); fails without the
    /// `cudnn` feature or where no engine takes the shape.
    Cudnn,
}

/// The smallest `Nq · Nk` that `Auto` sends to cuDNN. Measured on an H100
/// (BENCHMARKS.md, TRELLIS, fifth session): cuDNN's attention is 0.72–0.95×
/// torch's SDPA and 1.2–2.4× faster than our kernel at every model shape from
/// 1374² (DINOv2) up; but each new shape costs a plan, and TRELLIS' windowed
/// attention makes hundreds of small per-run shapes (up to 512² each): with
/// cuDNN for all of them the Gaussian decoder took 3.7 s instead of 0.27 s.
pub const CUDNN_MIN_SCORES: usize = 1 << 20;

/// [`AttentionKernel`] after `SPLATFORGE_ATTENTION`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resolved {
    Fused(u32),
    /// cuDNN for shapes of at least `min_scores` scores per head; `strict`:
    /// a shape it doesn't take is an error instead of our kernel.
    Cudnn {
        min_scores: usize,
        strict: bool,
    },
}

impl AttentionKernel {
    /// `Auto` resolved through `SPLATFORGE_ATTENTION` (read once); an unknown
    /// value is an error, not a silent default.
    fn resolve(self) -> Result<Resolved> {
        match self {
            Self::Fused(variant) => Ok(Resolved::Fused(variant)),
            Self::Cudnn => Ok(Resolved::Cudnn {
                min_scores: 0,
                strict: true,
            }),
            Self::Auto => {
                static CHOICE: std::sync::OnceLock<std::result::Result<Resolved, String>> =
                    std::sync::OnceLock::new();
                CHOICE
                    .get_or_init(|| {
                        Resolved::from_env(std::env::var("SPLATFORGE_ATTENTION").ok().as_deref())
                    })
                    .clone()
                    .map_err(candle_core::Error::Msg)
            }
        }
    }
}

impl Resolved {
    /// `Auto`'s meaning for a value of `SPLATFORGE_ATTENTION` (`None`: unset).
    fn from_env(value: Option<&str>) -> std::result::Result<Self, String> {
        match value {
            None | Some("auto") => Ok(Self::Cudnn {
                min_scores: CUDNN_MIN_SCORES,
                strict: false,
            }),
            Some("fused") => Ok(Self::Fused(0)),
            Some("cudnn") => Ok(Self::Cudnn {
                min_scores: 0,
                strict: false,
            }),
            Some(other) => Err(format!(
                "SPLATFORGE_ATTENTION={other}: expected auto, fused or cudnn"
            )),
        }
    }
}

/// [`attention`] on the implementation `kernel` picks. CPU tensors, autograd
/// and shapes no kernel covers take the composite path whatever `kernel` says.
pub fn attention_with(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    kernel: AttentionKernel,
) -> Result<Tensor> {
    let resolved = kernel.resolve()?;
    #[cfg(feature = "cudnn")]
    if let Resolved::Cudnn { min_scores, .. } = resolved {
        if q.dim(1)? * k.dim(1)? >= min_scores {
            if let Some(out) = cudnn::attention::attention(q, k, v, heads)? {
                return Ok(out);
            }
        }
    }
    #[cfg(feature = "cuda")]
    {
        let variant = match resolved {
            Resolved::Fused(variant) => variant,
            Resolved::Cudnn { strict: true, .. } if fusable(q) => {
                candle_core::bail!(
                    "cuDNN attention does not take this shape (or the build has no cudnn): {}",
                    cudnn_plan_summary().join("; ")
                )
            }
            Resolved::Cudnn { .. } => 0,
        };
        if let Some(out) = cuda::attention(q, k, v, heads, variant)? {
            return Ok(out);
        }
    }
    let _ = resolved;
    attention_reference(q, k, v, heads)
}

/// [`attention`] with the scores materialised: the CPU path, the autograd
/// path and the reference the fused kernel is checked against.
pub fn attention_reference(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, nq, inner) = q.dims3()?;
    let nk = k.dim(1)?;
    let d = inner / heads;
    let split = |t: &Tensor, n: usize| -> Result<Tensor> {
        t.reshape((b, n, heads, d))?.transpose(1, 2)?.contiguous()
    };
    let (q, k, v) = (split(q, nq)?, split(k, nk)?, split(v, nk)?);
    let in_dtype = q.dtype();
    let soft = if in_dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    };
    let scores = (q.matmul(&k.t()?)? * (d as f64).powf(-0.5))?;
    let probs = softmax_last(&scores.to_dtype(soft)?)?.to_dtype(in_dtype)?;
    probs.matmul(&v)?.transpose(1, 2)?.reshape((b, nq, inner))
}

/// Softmax over the last dimension: candle's fused kernel when no gradient
/// is being tracked, else the differentiable composition.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    if x.track_op() {
        candle_nn::ops::softmax(x, D::Minus1)
    } else {
        candle_nn::ops::softmax_last_dim(x)
    }
}

/// GroupNorm over `[N, C, ...]` with a per-channel affine (`weight`, `bias`),
/// as `torch.nn.GroupNorm`: biased variance, statistics in f32 for half
/// precision inputs. [`forward_silu`](Self::forward_silu) fuses the SiLU that
/// follows most norms of the UNet and the VAE.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

impl GroupNorm {
    pub fn new(weight: Tensor, bias: Tensor, groups: usize, eps: f64) -> Result<Self> {
        let c = weight.dims1()?;
        if groups == 0 || c % groups != 0 || bias.dims1()? != c {
            candle_core::bail!(
                "GroupNorm: {c} channels cannot be split into {groups} groups (bias {:?})",
                bias.dims()
            );
        }
        Ok(Self {
            weight,
            bias,
            groups,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, false)
    }

    /// `silu(group_norm(x))`.
    pub fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, true)
    }

    fn run(&self, x: &Tensor, silu: bool) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        if let Some(y) = cuda::group_norm(x, &self.weight, &self.bias, self.groups, self.eps, silu)?
        {
            return Ok(y);
        }
        let y = self.reference(x)?;
        if silu {
            y.silu()
        } else {
            Ok(y)
        }
    }

    /// The composite path (candle ops; statistics in f32 for f16/bf16).
    /// Not `candle_nn::GroupNorm`: that one rounds to the input dtype before
    /// the affine; here the affine is in f32 too, as in the kernel and torch,
    /// so both paths round once.
    pub fn reference(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        if dims.len() < 2 || dims[1] != self.weight.dim(0)? {
            candle_core::bail!(
                "GroupNorm over {} channels got input {dims:?}",
                self.weight.dim(0)?
            );
        }
        let dtype = x.dtype();
        let internal = match dtype {
            DType::F16 | DType::BF16 => DType::F32,
            d => d,
        };
        let n = dims[0];
        let xg = x.to_dtype(internal)?.reshape((n, self.groups, ()))?;
        let mean = xg.mean_keepdim(D::Minus1)?;
        let xc = xg.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        let xn = xc.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        let mut shape = vec![1; dims.len()];
        shape[1] = dims[1];
        let w = self.weight.to_dtype(internal)?.reshape(shape.as_slice())?;
        let b = self.bias.to_dtype(internal)?.reshape(shape.as_slice())?;
        xn.reshape(dims)?
            .broadcast_mul(&w)?
            .broadcast_add(&b)?
            .to_dtype(dtype)
    }
}

/// Loads `weight` and `bias` of `channels` elements (initialised to 1 and 0
/// when `vb` creates variables), like `candle_nn::group_norm`.
pub fn group_norm(groups: usize, channels: usize, eps: f64, vb: VarBuilder) -> Result<GroupNorm> {
    let weight = vb.get_with_hints(channels, "weight", candle_nn::Init::Const(1.))?;
    let bias = vb.get_with_hints(channels, "bias", candle_nn::Init::Const(0.))?;
    GroupNorm::new(weight, bias, groups, eps)
}

/// A 2D convolution holding candle-nn's weights (same names, shapes and
/// initialisation hints as `candle_nn::conv2d`).
///
/// Why not candle's own cuDNN path: it sets no math type on the convolution,
/// and cuDNN then runs bf16/f16 convolutions without tensor cores (measured
/// ≈ 25 TFLOP/s on an H200, 10–40× torch's time), and it asks cuDNN's
/// heuristics at every call. Ours uses the graph API (`ops/cudnn/conv.rs`).
#[derive(Debug, Clone)]
pub struct Conv2d {
    inner: candle_nn::Conv2d,
}

impl Conv2d {
    pub fn new(inner: candle_nn::Conv2d) -> Self {
        Self { inner }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        #[cfg(feature = "cudnn")]
        if let Some(y) = cudnn::conv::conv2d(
            x,
            self.inner.weight(),
            self.inner.bias(),
            self.inner.config(),
        )? {
            return Ok(y);
        }
        candle_core::Module::forward(&self.inner, x)
    }
}

/// A 3-D convolution `x [N, C, D, H, W]` ∗ `weight [K, C, T, R, S]` (+ `bias [K]`),
/// cross-correlation with the same `padding` and `stride` on every axis, through cuDNN's
/// graph API when it applies (a CUDA build with `cudnn`, a CUDA tensor in f32/f16/bf16);
/// `None` otherwise, and the caller runs its own composite path (candle has no 3-D
/// convolution). cuDNN ran TRELLIS' structure decoder 13× faster than an im2col on candle ops.
pub fn conv3d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    padding: usize,
    stride: usize,
) -> Result<Option<Tensor>> {
    #[cfg(feature = "cudnn")]
    return cudnn::conv::conv3d(x, weight, bias, padding, stride);
    #[cfg(not(feature = "cudnn"))]
    {
        let _ = (x, weight, bias, padding, stride);
        Ok(None)
    }
}

/// Loads a convolution like `candle_nn::conv2d` (`weight`, `bias`).
pub fn conv2d(
    in_channels: usize,
    out_channels: usize,
    kernel_size: usize,
    config: candle_nn::Conv2dConfig,
    vb: VarBuilder,
) -> Result<Conv2d> {
    candle_nn::conv2d(in_channels, out_channels, kernel_size, config, vb).map(Conv2d::new)
}

/// What follows a linear layer's product `y = x·Wᵀ` (with the layer's bias):
/// `out = residual + gate ⊙ act(y + bias + extra)`, each term optional. On
/// CUDA without autograd it is one kernel pass after the product (candle's
/// broadcast bias add alone took 10× the memory-bound time); otherwise
/// candle ops in this order, rounding after each.
#[derive(Debug, Clone, Copy, Default)]
pub struct LinearEpilogue<'a> {
    /// GELU, tanh approximation, after the bias (and `extra`).
    pub gelu: bool,
    /// Added to the product, `[.., N, out]` like it (a second product summed in).
    pub extra: Option<&'a Tensor>,
    /// Multiplies the activation, `[B, 1, out]` (one row per batch item);
    /// needs `residual`.
    pub gate: Option<&'a Tensor>,
    /// Added last, `[.., N, out]` like the product.
    pub residual: Option<&'a Tensor>,
}

/// `layer` on `x [.., K]` followed by `epilogue` (see [`LinearEpilogue`]).
pub fn linear(x: &Tensor, layer: &candle_nn::Linear, epilogue: LinearEpilogue) -> Result<Tensor> {
    if epilogue.gate.is_some() && epilogue.residual.is_none() {
        candle_core::bail!("a gated linear epilogue needs the residual it adds to");
    }
    #[cfg(feature = "cuda")]
    {
        let inputs = [
            Some(x),
            Some(layer.weight()),
            layer.bias(),
            epilogue.extra,
            epilogue.gate,
            epilogue.residual,
        ];
        let dtype_ok = matches!(x.dtype(), DType::F32 | DType::F16 | DType::BF16);
        if dtype_ok
            && inputs
                .iter()
                .flatten()
                .all(|t| fusable(t) && t.dtype() == x.dtype())
        {
            let dims = x.dims();
            let k = *dims
                .last()
                .ok_or_else(|| candle_core::Error::Msg("linear: scalar input".into()))?;
            let rows = x.elem_count() / k.max(1);
            let y = x
                .contiguous()?
                .reshape((rows, k))?
                .matmul(&layer.weight().t()?)?;
            let out_features = y.dim(1)?;
            let flat = |t: &Tensor| t.contiguous()?.reshape((rows, out_features));
            let gate = match epilogue.gate {
                Some(g) => {
                    let batch = g.dim(0)?;
                    if batch == 0 || rows % batch != 0 {
                        candle_core::bail!(
                            "linear: gate {:?} does not divide {rows} rows",
                            g.dims()
                        );
                    }
                    Some((
                        g.contiguous()?.reshape((batch, out_features))?,
                        rows / batch,
                    ))
                }
                None => None,
            };
            let terms = cuda::EpilogueTerms {
                bias: layer.bias().map(|b| b.contiguous()).transpose()?,
                extra: epilogue.extra.map(flat).transpose()?,
                gate,
                residual: epilogue.residual.map(flat).transpose()?,
                gelu: epilogue.gelu,
            };
            let mut shape = dims.to_vec();
            *shape.last_mut().expect("rank ≥ 1") = out_features;
            let plain = terms.bias.is_none()
                && terms.extra.is_none()
                && terms.gate.is_none()
                && terms.residual.is_none()
                && !terms.gelu;
            // Nothing to add: the product is the result (no copy pass).
            let y = if plain {
                y
            } else {
                cuda::linear_epilogue(&y, terms)?
            };
            return y.reshape(shape);
        }
    }
    let mut v = candle_core::Module::forward(layer, x)?;
    if let Some(e) = epilogue.extra {
        v = (v + e)?;
    }
    if epilogue.gelu {
        v = v.gelu()?;
    }
    match (epilogue.gate, epilogue.residual) {
        (Some(g), Some(r)) => r + v.broadcast_mul(g)?,
        (None, Some(r)) => r + v,
        _ => Ok(v),
    }
}

/// `LayerNorm32` and the adaLN modulation of DiT blocks (TRELLIS' flows):
/// `x [.., C]` normalised over `C` in f32 with the f32 affine `weight`, `bias [C]`, the
/// result in `x`'s dtype, then, with `modulation = (shift, scale)`,
/// `· (1 + scale) + shift` where `shift`, `scale` are `[B, 1, C]` (one row per batch item
/// of `x [B, N, C]`) or `x`'s shape (one per row). One kernel on CUDA without autograd
/// (`C` ≤ 2048; f32 throughout, one rounding); otherwise the composite: candle-nn's
/// `layer_norm` in f32, rounded to `x`'s dtype, then broadcast ops.
pub fn layer_norm_modulate(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f32,
    modulation: Option<(&Tensor, &Tensor)>,
) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    let c = x.dim(D::Minus1)?;
    #[cfg(feature = "cuda")]
    if [Some(x), Some(weight), Some(bias)]
        .into_iter()
        .chain(
            modulation
                .iter()
                .flat_map(|(sh, sc)| [Some(*sh), Some(*sc)]),
        )
        .flatten()
        .all(fusable)
        && matches!(x.dtype(), DType::F32 | DType::F16 | DType::BF16)
        && weight.dtype() == DType::F32
        && bias.dtype() == DType::F32
        && modulation.is_none_or(|(sh, sc)| sh.dtype() == x.dtype() && sc.dtype() == x.dtype())
        && c <= 2048
    {
        let rows = x.elem_count() / c.max(1);
        let per_item = |t: &Tensor| -> Result<Tensor> {
            if t.dims() == x.dims() {
                t.contiguous()?.reshape((rows, c))
            } else {
                t.contiguous()?.reshape((t.elem_count() / c.max(1), c))
            }
        };
        let fits = modulation.is_none_or(|(sh, sc)| {
            let items = sh.elem_count() / c.max(1);
            sh.dims() == sc.dims()
                && (sh.dims() == x.dims()
                    || (x.rank() == 3 && sh.dims() == [x.dims()[0], 1, c] && items > 0))
        });
        if fits {
            let op = cuda::LayerNormModulate {
                weight: weight.contiguous()?,
                bias: bias.contiguous()?,
                modulation: modulation
                    .map(|(sh, sc)| Ok::<_, candle_core::Error>((per_item(sh)?, per_item(sc)?)))
                    .transpose()?,
                eps,
            };
            return x
                .contiguous()?
                .reshape((rows, c))?
                .apply_op1_no_bwd(&op)?
                .reshape(x.dims());
        }
    }
    let x32 = x.to_dtype(DType::F32)?.contiguous()?;
    let normed = candle_nn::ops::layer_norm(&x32, weight, bias, eps)?.to_dtype(x.dtype())?;
    match modulation {
        Some((shift, scale)) => normed.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(shift),
        None => Ok(normed),
    }
}

/// FLUX's query/key preparation: `x [B, N, H, D]` plus the projection's
/// `bias [H·D]` (when given), RMSNorm over each head's `D` values (weights
/// `scale [D]`), then the interleaved rotary embedding, pair `(x[2j], x[2j+1])`
/// of token `t` rotated by the angle with `cos[b, t, j]`, `sin[b, t, j]`
/// (`[B, N, D/2]`, `x`'s dtype) → `[B, N, H·D]`. One kernel on CUDA without
/// autograd (f32 throughout, one rounding; `D` even and at most 256);
/// otherwise candle ops, then candle-nn's `rms_norm` and `rope_i`.
pub fn rms_norm_rope(
    x: &Tensor,
    bias: Option<&Tensor>,
    scale: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    eps: f32,
) -> Result<Tensor> {
    let (b, n, h, d) = x.dims4()?;
    #[cfg(feature = "cuda")]
    if [Some(x), bias, Some(scale), Some(cos), Some(sin)]
        .iter()
        .flatten()
        .all(|t| fusable(t) && t.dtype() == x.dtype())
        && matches!(x.dtype(), DType::F32 | DType::F16 | DType::BF16)
        && d % 2 == 0
        && d <= 256
    {
        let op = cuda::RmsNormRope {
            bias: bias.map(|t| t.contiguous()).transpose()?,
            // Exact: every f16/bf16 value is an f32.
            scale: scale.to_dtype(DType::F32)?.contiguous()?,
            scale_per_head: false,
            rope: Some((
                cos.contiguous()?.reshape((b * n, d / 2))?,
                sin.contiguous()?.reshape((b * n, d / 2))?,
            )),
            eps,
        };
        return x
            .contiguous()?
            .reshape((b * n, h, d))?
            .apply_op1_no_bwd(&op)?
            .reshape((b, n, h * d));
    }
    let x = match bias {
        Some(bias) => x.broadcast_add(&bias.reshape((h, d))?)?,
        None => x.contiguous()?,
    };
    let normed = candle_nn::ops::rms_norm(&x, scale, eps)?;
    // rope_i rotates [B', H', T, D] with cos/sin [B', T, D/2]; as
    // [B·N, H, 1, D] each token's heads share its angles.
    let (cos, sin) = (
        cos.contiguous()?.reshape((b * n, 1, d / 2))?,
        sin.contiguous()?.reshape((b * n, 1, d / 2))?,
    );
    candle_nn::rotary_emb::rope_i(&normed.reshape((b * n, h, 1, d))?, &cos, &sin)?.reshape((
        b,
        n,
        h * d,
    ))
}

/// `ChannelLayerNorm32` (TRELLIS' structure decoder), then SiLU when `silu`: `x [N, C, …]`
/// normalised over `C` at every spatial position in f32 with the f32 affine `weight`, `bias`
/// `[C]`, the result in `x`'s dtype. One kernel on CUDA without autograd (SiLU before the one
/// rounding); otherwise [`layer_norm_modulate`] between permutes to channels-last and back
/// (the official order: the norm rounded to `x`'s dtype, then SiLU).
pub fn channel_layer_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f32,
    silu: bool,
) -> Result<Tensor> {
    let rank = x.rank();
    if rank < 2 {
        candle_core::bail!("channel LayerNorm needs x [N, C, …], got {:?}", x.dims())
    }
    #[cfg(feature = "cuda")]
    if fusable(x)
        && fusable(weight)
        && fusable(bias)
        && matches!(x.dtype(), DType::F32 | DType::F16 | DType::BF16)
        && weight.dtype() == DType::F32
        && bias.dtype() == DType::F32
        && x.elem_count() > 0
    {
        let op = cuda::ChannelLayerNorm {
            weight: weight.contiguous()?,
            bias: bias.contiguous()?,
            eps,
            silu,
        };
        return x.contiguous()?.apply_op1_no_bwd(&op);
    }
    let to_last: Vec<usize> = [0].into_iter().chain(2..rank).chain([1]).collect();
    let to_first: Vec<usize> = [0, rank - 1].into_iter().chain(1..rank - 1).collect();
    let normed = layer_norm_modulate(&x.permute(to_last)?, weight, bias, eps, None)?
        .permute(to_first)?
        .contiguous()?;
    if silu {
        normed.silu()
    } else {
        Ok(normed)
    }
}

/// TRELLIS' `MultiHeadRMSNorm` of queries and keys: `x [.., H·D]` normalised head by head,
/// `x · rstd · gamma[h]` with `rstd = 1 / √(mean(x²) + eps)` over the head's `D` values and
/// the f32 `gamma [H, D]`, computed in f32 and rounded once to `x`'s dtype. One kernel on
/// CUDA without autograd (`cuda/elementwise.cu`, FLUX's without the bias and rotation;
/// `D` even and at most 256); otherwise candle-nn's `rms_norm` in f32 and a broadcast
/// product (six passes over the f32 copy, where the kernel reads and writes once).
pub fn multi_head_rms_norm(x: &Tensor, gamma: &Tensor, eps: f32) -> Result<Tensor> {
    let (heads, d) = gamma.dims2()?;
    let dims = x.dims();
    if dims.last() != Some(&(heads * d)) || gamma.dtype() != DType::F32 {
        candle_core::bail!(
            "multi-head RMSNorm: f32 gamma [{heads}, {d}] for x [.., {}], got x {dims:?}, gamma {:?}",
            heads * d,
            gamma.dtype()
        )
    }
    let rows = x.elem_count() / (heads * d).max(1);
    #[cfg(feature = "cuda")]
    if fusable(x)
        && fusable(gamma)
        && matches!(x.dtype(), DType::F32 | DType::F16 | DType::BF16)
        && d % 2 == 0
        && d <= 256
        && rows > 0
    {
        let op = cuda::RmsNormRope {
            bias: None,
            scale: gamma.contiguous()?.flatten_all()?,
            scale_per_head: true,
            rope: None,
            eps,
        };
        return x
            .contiguous()?
            .reshape((rows, heads, d))?
            .apply_op1_no_bwd(&op)?
            .reshape(dims);
    }
    let x32 = x
        .to_dtype(DType::F32)?
        .contiguous()?
        .reshape((rows, heads, d))?;
    let ones = Tensor::ones(d, DType::F32, x.device())?;
    candle_nn::ops::rms_norm(&x32, &ones, eps)?
        .broadcast_mul(gamma)?
        .to_dtype(x.dtype())?
        .reshape(dims)
}

/// Nearest-neighbour 2× upsampling of `[N, C, H, W]` (the VAE decoder's and
/// the UNet's): our kernel on CUDA without autograd, candle's
/// `upsample_nearest2d` otherwise.
pub fn upsample_nearest2x(x: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if let Some(y) = cuda::upsample_nearest2x(x)? {
        return Ok(y);
    }
    let (_, _, h, w) = x.dims4()?;
    x.upsample_nearest2d(2 * h, 2 * w)
}

/// The cuDNN plans this thread has made (convolutions, then attention), a
/// line each (shape, engine, workspace; for benchmark reports). Empty without
/// the `cudnn` feature or before the first such op on a GPU.
pub fn cudnn_plan_summary() -> Vec<String> {
    #[cfg(feature = "cudnn")]
    return cudnn::plan_summary();
    #[cfg(not(feature = "cudnn"))]
    Vec::new()
}

/// Whether `t` lives on a CUDA device and takes part in no autograd graph,
/// the condition for a fused kernel.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn fusable(t: &Tensor) -> bool {
    matches!(t.device(), Device::Cuda(_)) && !t.track_op()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::max_abs;

    fn values(t: &Tensor) -> Vec<f64> {
        t.to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn attention_setting_parses_and_rejects_unknown_values() {
        let auto = Resolved::Cudnn {
            min_scores: CUDNN_MIN_SCORES,
            strict: false,
        };
        assert_eq!(Resolved::from_env(None), Ok(auto));
        assert_eq!(Resolved::from_env(Some("auto")), Ok(auto));
        assert_eq!(Resolved::from_env(Some("fused")), Ok(Resolved::Fused(0)));
        assert_eq!(
            Resolved::from_env(Some("cudnn")),
            Ok(Resolved::Cudnn {
                min_scores: 0,
                strict: false
            })
        );
        let err = Resolved::from_env(Some("flash")).unwrap_err();
        assert!(err.contains("SPLATFORGE_ATTENTION=flash"), "{err}");
        // Forcing a kernel ignores the variable.
        assert_eq!(
            AttentionKernel::Fused(3).resolve().unwrap(),
            Resolved::Fused(3)
        );
        assert_eq!(
            AttentionKernel::Cudnn.resolve().unwrap(),
            Resolved::Cudnn {
                min_scores: 0,
                strict: true
            }
        );
    }

    fn gelu_tanh(v: f64) -> f64 {
        0.5 * v * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v.powi(3))).tanh())
    }

    #[test]
    fn linear_epilogue_follows_its_formula() {
        // out = residual + gate ⊙ gelu(x·Wᵀ + bias + extra), gates per batch item,
        // against the formula written out element by element.
        let dev = Device::Cpu;
        let (b, n, k, o) = (2, 3, 4, 5);
        let r = |s: &[usize]| Tensor::randn(0f32, 1.0, s, &dev).unwrap();
        let (x, w, bias) = (r(&[b, n, k]), r(&[o, k]), r(&[o]));
        let (extra, gate, res) = (r(&[b, n, o]), r(&[b, 1, o]), r(&[b, n, o]));
        let layer = candle_nn::Linear::new(w.clone(), Some(bias.clone()));
        let epilogue = LinearEpilogue {
            gelu: true,
            extra: Some(&extra),
            gate: Some(&gate),
            residual: Some(&res),
        };
        let got = values(&linear(&x, &layer, epilogue).unwrap());
        let (xv, wv, bv) = (values(&x), values(&w), values(&bias));
        let (ev, gv, rv) = (values(&extra), values(&gate), values(&res));
        for bi in 0..b {
            for t in 0..n {
                for j in 0..o {
                    let row = bi * n + t;
                    let dot: f64 = (0..k).map(|c| xv[row * k + c] * wv[j * k + c]).sum();
                    let want =
                        rv[row * o + j] + gv[bi * o + j] * gelu_tanh(dot + bv[j] + ev[row * o + j]);
                    assert!(
                        (got[row * o + j] - want).abs() < 1e-5,
                        "({bi}, {t}, {j}): {} vs {want}",
                        got[row * o + j]
                    );
                }
            }
        }
        // Without terms it is the layer itself; a gate needs the residual.
        let plain = linear(&x, &layer, LinearEpilogue::default()).unwrap();
        assert!(max_abs(&plain, &candle_core::Module::forward(&layer, &x).unwrap()) < 1e-6);
        let gate_only = LinearEpilogue {
            gate: Some(&gate),
            ..Default::default()
        };
        assert!(linear(&x, &layer, gate_only).is_err());
    }

    #[test]
    fn channel_layer_norm_follows_its_formula() {
        // At every (item, voxel): the channels normalised, the affine, then SiLU.
        let dev = Device::Cpu;
        let (n, c, d, h, w) = (2, 5, 2, 3, 2);
        let x = Tensor::randn(0f32, 2.0, (n, c, d, h, w), &dev).unwrap();
        let weight = Tensor::randn(1f32, 0.3, c, &dev).unwrap();
        let bias = Tensor::randn(0f32, 0.3, c, &dev).unwrap();
        let eps = 1e-5;
        let spatial = d * h * w;
        let (xv, wv, bv) = (values(&x), values(&weight), values(&bias));
        for silu in [false, true] {
            let got = channel_layer_norm(&x, &weight, &bias, eps, silu).unwrap();
            assert_eq!(got.dims(), x.dims());
            let got = values(&got);
            for item in 0..n {
                for s in 0..spatial {
                    let at = |ch: usize| (item * c + ch) * spatial + s;
                    let mean = (0..c).map(|ch| xv[at(ch)]).sum::<f64>() / c as f64;
                    let var = (0..c).map(|ch| (xv[at(ch)] - mean).powi(2)).sum::<f64>() / c as f64;
                    for ch in 0..c {
                        let y = (xv[at(ch)] - mean) / (var + eps as f64).sqrt() * wv[ch] + bv[ch];
                        let want = if silu { y / (1.0 + (-y).exp()) } else { y };
                        assert!((got[at(ch)] - want).abs() < 1e-4, "{item} {s} {ch} {silu}");
                    }
                }
            }
        }
        assert!(channel_layer_norm(&x.flatten_all().unwrap(), &weight, &bias, eps, false).is_err());
    }

    #[test]
    fn multi_head_rms_norm_follows_its_formula() {
        // Per row and head: v / rms(v) · gamma[head], rms over the head's D values.
        let dev = Device::Cpu;
        let (rows, h, d) = (5, 3, 4);
        let x = Tensor::randn(0f32, 2.0, (1, rows, h * d), &dev).unwrap();
        let gamma = Tensor::randn(0f32, 1.0, (h, d), &dev).unwrap();
        let eps = 1e-6;
        let got = multi_head_rms_norm(&x, &gamma, eps).unwrap();
        assert_eq!(got.dims(), [1, rows, h * d]);
        let (got, xv, gv) = (values(&got), values(&x), values(&gamma));
        for r in 0..rows {
            for hd in 0..h {
                let v = &xv[(r * h + hd) * d..(r * h + hd + 1) * d];
                let rms = (v.iter().map(|a| a * a).sum::<f64>() / d as f64 + eps as f64).sqrt();
                for i in 0..d {
                    let want = v[i] / rms * gv[hd * d + i];
                    let at = (r * h + hd) * d + i;
                    assert!((got[at] - want).abs() < 1e-5, "row {r} head {hd} {i}");
                }
            }
        }
        // bf16 in, bf16 out, computed in f32.
        let half = multi_head_rms_norm(&x.to_dtype(DType::BF16).unwrap(), &gamma, eps).unwrap();
        assert_eq!(half.dtype(), DType::BF16);
        assert!(multi_head_rms_norm(&x, &gamma.to_dtype(DType::F16).unwrap(), eps).is_err());
        assert!(multi_head_rms_norm(&x, &gamma.narrow(1, 0, 2).unwrap(), eps).is_err());
    }

    #[test]
    fn rms_norm_rope_follows_its_formula() {
        // Per (token, head): v = x + bias, v / rms(v) · scale, then pair j of
        // token t rotated by (cos, sin)[t, j].
        let dev = Device::Cpu;
        let (n, h, d) = (3, 2, 4);
        let r = |s: &[usize]| Tensor::randn(0f32, 1.0, s, &dev).unwrap();
        let (x, bias, scale) = (r(&[1, n, h, d]), r(&[h * d]), r(&[d]));
        let angles = Tensor::rand(0f32, 6.0, (1, n, d / 2), &dev).unwrap();
        let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
        let eps = 1e-6;
        let got = values(&rms_norm_rope(&x, Some(&bias), &scale, &cos, &sin, eps).unwrap());
        let (xv, bv, sv, cv, snv) = (
            values(&x),
            values(&bias),
            values(&scale),
            values(&cos),
            values(&sin),
        );
        for t in 0..n {
            for hd in 0..h {
                let v: Vec<f64> = (0..d)
                    .map(|i| xv[(t * h + hd) * d + i] + bv[hd * d + i])
                    .collect();
                let rms = (v.iter().map(|a| a * a).sum::<f64>() / d as f64 + eps as f64).sqrt();
                for j in 0..d / 2 {
                    let (a, b) = (
                        v[2 * j] / rms * sv[2 * j],
                        v[2 * j + 1] / rms * sv[2 * j + 1],
                    );
                    let (c, s) = (cv[t * d / 2 + j], snv[t * d / 2 + j]);
                    let at = (t * h + hd) * d + 2 * j;
                    assert!(
                        (got[at] - (a * c - b * s)).abs() < 1e-5,
                        "token {t} head {hd} pair {j}"
                    );
                    assert!(
                        (got[at + 1] - (a * s + b * c)).abs() < 1e-5,
                        "token {t} head {hd} pair {j}"
                    );
                }
            }
        }
    }

    #[test]
    fn upsample_nearest2x_repeats_each_value() {
        let x = Tensor::arange(0f32, 6.0, &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 2, 3))
            .unwrap();
        let y: Vec<f32> = upsample_nearest2x(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let row0 = [0.0, 0.0, 1.0, 1.0, 2.0, 2.0];
        let row1 = [3.0, 3.0, 4.0, 4.0, 5.0, 5.0];
        assert_eq!(y, [row0, row0, row1, row1].concat());
    }

    #[test]
    fn group_norm_matches_candle_nn() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0.5f32, 2.0, (2, 8, 5, 3), &dev).unwrap();
        let w = Tensor::randn(1f32, 0.3, 8, &dev).unwrap();
        let b = Tensor::randn(0f32, 0.3, 8, &dev).unwrap();
        let ours = GroupNorm::new(w.clone(), b.clone(), 4, 1e-5).unwrap();
        let theirs = candle_nn::GroupNorm::new(w, b, 8, 4, 1e-5).unwrap();
        let want = candle_core::Module::forward(&theirs, &x).unwrap();
        assert!(max_abs(&ours.forward(&x).unwrap(), &want) < 1e-5);
        let want_silu = want.silu().unwrap();
        assert!(max_abs(&ours.forward_silu(&x).unwrap(), &want_silu) < 1e-5);
    }

    #[test]
    fn group_norm_statistics_per_group() {
        // Two groups of constant-plus-ramp values: each normalises to the
        // same zero-mean, unit-variance ramp whatever its offset.
        let dev = Device::Cpu;
        let v: Vec<f32> = (0..8)
            .map(|i| (i % 4) as f32 + if i < 4 { 100.0 } else { -7.0 })
            .collect();
        let x = Tensor::from_vec(v, (1, 2, 4), &dev).unwrap();
        let gn = GroupNorm::new(
            Tensor::ones(2, DType::F32, &dev).unwrap(),
            Tensor::zeros(2, DType::F32, &dev).unwrap(),
            2,
            0.0,
        )
        .unwrap();
        let y: Vec<f32> = gn
            .forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let r = 1.25f32.sqrt();
        let want = [-1.5 / r, -0.5 / r, 0.5 / r, 1.5 / r];
        for (i, got) in y.iter().enumerate() {
            assert!((got - want[i % 4]).abs() < 1e-5, "{i}: {got}");
        }
    }

    #[test]
    fn group_norm_rejects_bad_groups() {
        let dev = Device::Cpu;
        let w = Tensor::ones(6, DType::F32, &dev).unwrap();
        assert!(GroupNorm::new(w.clone(), w.clone(), 4, 1e-5).is_err());
        let gn = GroupNorm::new(w.clone(), w, 3, 1e-5).unwrap();
        assert!(gn
            .forward(&Tensor::zeros((1, 4, 2), DType::F32, &dev).unwrap())
            .is_err());
    }

    #[test]
    fn attention_is_softmax_of_scaled_scores() {
        // One head, one query: the output is the softmax-weighted mean of v.
        let dev = Device::Cpu;
        let q = Tensor::from_vec(vec![1f32, 0.0, 0.0, 0.0], (1, 1, 4), &dev).unwrap();
        let k = Tensor::from_vec(vec![2f32, 0., 0., 0., 0., 0., 0., 0.], (1, 2, 4), &dev).unwrap();
        let v = Tensor::from_vec(vec![1f32, 1., 1., 1., 3., 3., 3., 3.], (1, 2, 4), &dev).unwrap();
        let out: Vec<f32> = attention(&q, &k, &v, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        // scores 2/√4 = 1 and 0 → weights e/(e+1), 1/(e+1).
        let e = std::f32::consts::E;
        let want = (e * 1.0 + 3.0) / (e + 1.0);
        for o in out {
            assert!((o - want).abs() < 1e-6, "{o} vs {want}");
        }
    }
}
