//! The small layers every BiRefNet component uses: LayerNorm and convolutions as in PyTorch,
//! eval-mode BatchNorm folded to a scale and a shift, bilinear resizing with
//! `align_corners=True` (what every `F.interpolate` of BiRefNet uses).

use candle_core::{DType, Result, Tensor};
use candle_nn::{init::DEFAULT_KAIMING_NORMAL, Conv2dConfig, Init, Linear, VarBuilder};
use splatforge_nn::ops::Conv2d;

/// `nn.LayerNorm` over the last dimension, computed in f32 whatever the model's dtype (as
/// PyTorch's autocast does) and returned in the input's dtype.
#[derive(Debug, Clone)]
pub(crate) struct LayerNorm {
    /// `[C]` f32.
    weight: Tensor,
    /// `[C]` f32.
    bias: Tensor,
}

/// `nn.LayerNorm`'s default epsilon, which Swin v1 keeps.
const LAYER_NORM_EPS: f32 = 1e-5;

impl LayerNorm {
    pub(crate) fn load(dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb
                .get_with_hints(dim, "weight", Init::Const(1.0))?
                .to_dtype(DType::F32)?,
            bias: vb
                .get_with_hints(dim, "bias", Init::Const(0.0))?
                .to_dtype(DType::F32)?,
        })
    }

    /// `x [.., C]` → `[.., C]`: in f32, rounded to `x`'s dtype (one kernel on the GPU).
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        splatforge_nn::ops::layer_norm_modulate(x, &self.weight, &self.bias, LAYER_NORM_EPS, None)
    }
}

/// `nn.BatchNorm2d` in eval mode (running statistics, eps 1e-5) as `x·scale + shift`.
#[derive(Debug, Clone)]
pub(crate) struct BatchNorm {
    /// `[1, C, 1, 1]` in the model's dtype.
    scale: Tensor,
    /// `[1, C, 1, 1]` in the model's dtype.
    shift: Tensor,
}

const BATCH_NORM_EPS: f64 = 1e-5;

impl BatchNorm {
    pub(crate) fn load(channels: usize, vb: VarBuilder) -> Result<Self> {
        let dtype = vb.dtype();
        let f = |name: &str, init: f64| -> Result<Tensor> {
            vb.get_with_hints(channels, name, Init::Const(init))?
                .to_dtype(DType::F32)
        };
        let (weight, bias) = (f("weight", 1.0)?, f("bias", 0.0)?);
        let (mean, var) = (f("running_mean", 0.0)?, f("running_var", 1.0)?);
        let scale = (weight / (var + BATCH_NORM_EPS)?.sqrt()?)?;
        let shift = (bias - (&mean * &scale)?)?;
        Ok(Self {
            scale: scale.reshape((1, channels, 1, 1))?.to_dtype(dtype)?,
            shift: shift.reshape((1, channels, 1, 1))?.to_dtype(dtype)?,
        })
    }

    /// `x [B, C, H, W]` → `[B, C, H, W]`.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.broadcast_mul(&self.scale)?.broadcast_add(&self.shift)
    }
}

/// The parameters of an `nn.Conv2d` with a square kernel: `weight [out, in, k, k]`, and
/// `bias [out]` when it has one.
pub(crate) fn conv2d_parameters(
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    bias: bool,
    vb: &VarBuilder,
) -> Result<(Tensor, Option<Tensor>)> {
    let weight = vb.get_with_hints(
        (out_channels, in_channels, kernel, kernel),
        "weight",
        DEFAULT_KAIMING_NORMAL,
    )?;
    let bias = if bias {
        Some(vb.get_with_hints(out_channels, "bias", Init::Const(0.0))?)
    } else {
        None
    };
    Ok((weight, bias))
}

/// An `nn.Conv2d` with a square kernel (`weight [out, in, k, k]`, optional `bias [out]`).
pub(crate) fn conv2d(
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    bias: bool,
    vb: VarBuilder,
) -> Result<Conv2d> {
    let (weight, bias) = conv2d_parameters(in_channels, out_channels, kernel, bias, &vb)?;
    let config = Conv2dConfig {
        padding,
        stride,
        ..Default::default()
    };
    Ok(Conv2d::new(candle_nn::Conv2d::new(weight, bias, config)))
}

/// An `nn.Linear` (`weight [out, in]`, optional `bias [out]`).
pub(crate) fn linear(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder) -> Result<Linear> {
    let weight = vb.get_with_hints((out_dim, in_dim), "weight", DEFAULT_KAIMING_NORMAL)?;
    let bias = if bias {
        Some(vb.get_with_hints(out_dim, "bias", Init::Const(0.0))?)
    } else {
        None
    };
    Ok(Linear::new(weight, bias))
}

/// `F.interpolate(x, size=(h, w), mode='bilinear', align_corners=True)`: `x [B, C, H, W]` →
/// `[B, C, h, w]` (no antialiasing when shrinking, as PyTorch).
pub(crate) fn resize(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (_, _, xh, xw) = x.dims4()?;
    if (xh, xw) == (h, w) {
        return Ok(x.clone());
    }
    x.upsample_bilinear2d(h, w, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use std::collections::HashMap;

    #[test]
    fn batch_norm_is_the_eval_formula() {
        let dev = Device::Cpu;
        let t = |v: [f32; 2]| Tensor::new(&v, &dev).unwrap();
        let tensors = HashMap::from([
            ("bn.weight".to_string(), t([2.0, 0.5])),
            ("bn.bias".to_string(), t([1.0, -1.0])),
            ("bn.running_mean".to_string(), t([3.0, 0.0])),
            ("bn.running_var".to_string(), t([4.0, 0.25])),
        ]);
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &dev);
        let bn = BatchNorm::load(2, vb.pp("bn")).unwrap();
        let x = t([5.0, 2.0]).reshape((1, 2, 1, 1)).unwrap();
        let y: Vec<f32> = bn
            .forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let want = [
            (5.0 - 3.0) / (4.0f32 + 1e-5).sqrt() * 2.0 + 1.0,
            2.0 / (0.25f32 + 1e-5).sqrt() * 0.5 - 1.0,
        ];
        for (a, b) in y.iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{y:?} {want:?}");
        }
    }
}
