//! BiRefNet's `DeformableConv2d` module (`models/modules/deform_conv.py`): an offset
//! convolution and a modulator convolution (`2·sigmoid`) of the input steer a regular
//! convolution's taps through torchvision's `deform_conv2d` ([`splatforge_nn::ops::deform_conv2d`],
//! where the sampling rules are written down).

use candle_core::{DType, Result, Tensor, D};
use candle_nn::VarBuilder;
use splatforge_nn::ops::{deform_conv2d, Conv2d};

use crate::layers::conv2d_parameters;

/// `DeformableConv2d` (`bias=False` as ASPPDeformable builds it; stride 1).
#[derive(Debug, Clone)]
pub struct DeformableConv2d {
    /// `offset_conv` and `modulator_conv` as one convolution (they read the same input):
    /// `2K²` offset channels, then `K²` modulator channels.
    steer_conv: Conv2d,
    taps: usize,
    /// `[O, C, K, K]`: `regular_conv.weight`.
    weight: Tensor,
    padding: usize,
}

impl DeformableConv2d {
    pub fn load(
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        padding: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let taps = kernel * kernel;
        let mut weights = Vec::with_capacity(2);
        let mut biases = Vec::with_capacity(2);
        for (name, channels) in [("offset_conv", 2 * taps), ("modulator_conv", taps)] {
            let (weight, bias) =
                conv2d_parameters(in_channels, channels, kernel, true, &vb.pp(name))?;
            weights.push(weight);
            biases.extend(bias);
        }
        let config = candle_nn::Conv2dConfig {
            padding,
            ..Default::default()
        };
        Ok(Self {
            steer_conv: Conv2d::new(candle_nn::Conv2d::new(
                Tensor::cat(&weights, 0)?,
                Some(Tensor::cat(&biases, 0)?),
                config,
            )),
            taps,
            weight: conv2d_parameters(
                in_channels,
                out_channels,
                kernel,
                false,
                &vb.pp("regular_conv"),
            )?
            .0,
            padding,
        })
    }

    /// `x [B, C, H, W]` → `[B, O, H', W']`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let steer = self.steer_conv.forward(x)?;
        let offset = steer.narrow(1, 0, 2 * self.taps)?;
        let modulator =
            (candle_nn::ops::sigmoid(&steer.narrow(1, 2 * self.taps, self.taps)?)? * 2.0)?;
        deform_conv2d(x, &offset, &modulator, &self.weight, None, 1, self.padding)
    }
}

/// The mean over the spatial dimensions in f32: `x [B, C, H, W]` → `[B, C, 1, 1]` in `x`'s dtype.
pub(crate) fn spatial_mean(x: &Tensor) -> Result<Tensor> {
    x.to_dtype(DType::F32)?
        .mean_keepdim(D::Minus1)?
        .mean_keepdim(D::Minus2)?
        .to_dtype(x.dtype())
}
