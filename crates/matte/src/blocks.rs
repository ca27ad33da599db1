//! The decoder's building blocks (`models/modules/decoder_blocks.py`,
//! `models/modules/lateral_blocks.py`, `SimpleConvs` of `models/birefnet.py`).

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use splatforge_nn::ops::Conv2d;

use crate::aspp::AsppDeformable;
use crate::layers::{conv2d, BatchNorm};

/// `BasicDecBlk` with `dec_att = 'ASPPDeformable'`: 3×3 convolution to `inter` channels,
/// BatchNorm, ReLU, ASPPDeformable, 3×3 convolution to `out` channels, BatchNorm (no final
/// activation).
#[derive(Debug, Clone)]
pub struct BasicDecBlk {
    conv_in: Conv2d,
    bn_in: BatchNorm,
    att: AsppDeformable,
    conv_out: Conv2d,
    bn_out: BatchNorm,
}

impl BasicDecBlk {
    pub fn load(
        in_channels: usize,
        out_channels: usize,
        inter: usize,
        aspp_planes: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            conv_in: conv2d(in_channels, inter, 3, 1, 1, true, vb.pp("conv_in"))?,
            bn_in: BatchNorm::load(inter, vb.pp("bn_in"))?,
            att: AsppDeformable::load(inter, aspp_planes, vb.pp("dec_att"))?,
            conv_out: conv2d(inter, out_channels, 3, 1, 1, true, vb.pp("conv_out"))?,
            bn_out: BatchNorm::load(out_channels, vb.pp("bn_out"))?,
        })
    }

    /// `x [B, in, H, W]` → `[B, out, H, W]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.bn_in.forward(&self.conv_in.forward(x)?)?.relu()?;
        let x = self.att.forward(&x)?;
        self.bn_out.forward(&self.conv_out.forward(&x)?)
    }
}

/// `BasicLatBlk`: a 1×1 convolution with bias.
#[derive(Debug, Clone)]
pub struct BasicLatBlk {
    conv: Conv2d,
}

impl BasicLatBlk {
    pub fn load(in_channels: usize, out_channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv: conv2d(in_channels, out_channels, 1, 1, 0, true, vb.pp("conv"))?,
        })
    }

    /// `x [B, in, H, W]` → `[B, out, H, W]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.conv.forward(x)
    }
}

/// `SimpleConvs`: two 3×3 convolutions with bias and nothing between them.
#[derive(Debug, Clone)]
pub struct SimpleConvs {
    conv1: Conv2d,
    conv_out: Conv2d,
}

impl SimpleConvs {
    pub fn load(
        in_channels: usize,
        out_channels: usize,
        inter: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            conv1: conv2d(in_channels, inter, 3, 1, 1, true, vb.pp("conv1"))?,
            conv_out: conv2d(inter, out_channels, 3, 1, 1, true, vb.pp("conv_out"))?,
        })
    }

    /// `x [B, in, H, W]` → `[B, out, H, W]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.conv_out.forward(&self.conv1.forward(x)?)
    }
}
