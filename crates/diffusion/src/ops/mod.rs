//! The diffusion models' hot operations, each with one entry point that picks
//! a fused CUDA kernel where one applies and candle's composite otherwise.
//!
//! | op | fused CUDA kernel (feature `cuda`) | composite path |
//! |---|---|---|
//! | [`attention`] | `cuda/attention.cu`: flash-style, f16/bf16, head dim 64 or 128 | scores materialised, softmax in f32 |
//! | [`GroupNorm::forward`] / [`GroupNorm::forward_silu`] | `cuda/group_norm.cu`: statistics + normalise + SiLU in three launches | candle ops, statistics in f32 |
//! | [`Conv2d::forward`] | cuDNN (feature `cudnn`) with tensor-op math and the algorithm cached per shape | candle's `conv2d` |
//!
//! The composite path is the reference: it runs on the CPU, for f64, for
//! shapes the kernels don't cover, and for attention whenever an input takes
//! part in autograd. GroupNorm and the convolution have a backward for their
//! input (the SDS path differentiates the VAE encoder with respect to the
//! images); their weights take no gradient. `examples/parity.rs ops` checks
//! each kernel (and these backwards) against the composite path on the GPU
//! with random inputs.

#[cfg(feature = "cuda")]
mod cuda;

use candle_core::{DType, Device, Result, Tensor, D};
use candle_nn::VarBuilder;

/// Multi-head softmax attention: `q [B, Nq, H·D]`, `k, v [B, Nk, H·D]` →
/// `[B, Nq, H·D]`, scale `D^−½`, softmax in f32.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if let Some(out) = cuda::attention(q, k, v, heads)? {
        return Ok(out);
    }
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
        if let Some(y) =
            cuda::group_norm(x, &self.weight, &self.bias, self.groups, self.eps, silu)?
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
/// heuristics at every call.
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
        if let Some(y) = cuda::conv2d(x, self.inner.weight(), self.inner.bias(), self.inner.config())? {
            return Ok(y);
        }
        candle_core::Module::forward(&self.inner, x)
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

/// One-time settings of a CUDA device for the models (a cuBLAS workspace,
/// freed memory kept in the device's pool); nothing on the CPU. Called by the
/// model loaders.
pub fn configure_device(device: &Device) -> Result<()> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = device {
        cuda::configure_device(d)?;
    }
    let _ = device;
    Ok(())
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
        let v: Vec<f32> = (0..8).map(|i| (i % 4) as f32 + if i < 4 { 100.0 } else { -7.0 }).collect();
        let x = Tensor::from_vec(v, (1, 2, 4), &dev).unwrap();
        let gn = GroupNorm::new(Tensor::ones(2, DType::F32, &dev).unwrap(), Tensor::zeros(2, DType::F32, &dev).unwrap(), 2, 0.0).unwrap();
        let y: Vec<f32> = gn.forward(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap();
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
        assert!(gn.forward(&Tensor::zeros((1, 4, 2), DType::F32, &dev).unwrap()).is_err());
    }

    #[test]
    fn attention_is_softmax_of_scaled_scores() {
        // One head, one query: the output is the softmax-weighted mean of v.
        let dev = Device::Cpu;
        let q = Tensor::from_vec(vec![1f32, 0.0, 0.0, 0.0], (1, 1, 4), &dev).unwrap();
        let k = Tensor::from_vec(vec![2f32, 0., 0., 0., 0., 0., 0., 0.], (1, 2, 4), &dev).unwrap();
        let v = Tensor::from_vec(vec![1f32, 1., 1., 1., 3., 3., 3., 3.], (1, 2, 4), &dev).unwrap();
        let out: Vec<f32> = attention(&q, &k, &v, 1).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        // scores 2/√4 = 1 and 0 → weights e/(e+1), 1/(e+1).
        let e = std::f32::consts::E;
        let want = (e * 1.0 + 3.0) / (e + 1.0);
        for o in out {
            assert!((o - want).abs() < 1e-6, "{o} vs {want}");
        }
    }
}
