//! `ASPPDeformable` (`models/modules/aspp.py`): parallel deformable convolutions of kernel
//! 1 (`aspp1`) and 1, 3, 7 (`aspp_deforms`), each followed by BatchNorm and ReLU, and a global
//! average-pooling branch (1×1 convolution, BatchNorm, ReLU, broadcast back over the map),
//! concatenated and fused by a 1×1 convolution, BatchNorm and ReLU. Dropout is the identity
//! at inference.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use splatforge_nn::ops::Conv2d;

use crate::deform::{spatial_mean, DeformableConv2d};
use crate::layers::{conv2d, BatchNorm};

/// Kernel sides of the `aspp_deforms` branches (`parallel_block_sizes`).
const PARALLEL_KERNELS: [usize; 3] = [1, 3, 7];

/// `_ASPPModuleDeformable`: deformable convolution (no bias, padding `k / 2`), BatchNorm, ReLU.
#[derive(Debug, Clone)]
struct Branch {
    conv: DeformableConv2d,
    bn: BatchNorm,
}

impl Branch {
    fn load(in_channels: usize, planes: usize, kernel: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv: DeformableConv2d::load(
                in_channels,
                planes,
                kernel,
                kernel / 2,
                vb.pp("atrous_conv"),
            )?,
            bn: BatchNorm::load(planes, vb.pp("bn"))?,
        })
    }

    /// `x [B, C, H, W]` → `[B, planes, H, W]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.bn.forward(&self.conv.forward(x)?)?.relu()
    }
}

/// `ASPPDeformable(in_channels)` with `out_channels = in_channels`.
#[derive(Debug, Clone)]
pub struct AsppDeformable {
    aspp1: Branch,
    deforms: Vec<Branch>,
    pool_conv: Conv2d,
    pool_bn: BatchNorm,
    conv1: Conv2d,
    bn1: BatchNorm,
}

impl AsppDeformable {
    /// `planes`: channels of each branch (256 in the published models).
    pub fn load(in_channels: usize, planes: usize, vb: VarBuilder) -> Result<Self> {
        let deforms = PARALLEL_KERNELS
            .iter()
            .enumerate()
            .map(|(i, &k)| Branch::load(in_channels, planes, k, vb.pp(format!("aspp_deforms.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            aspp1: Branch::load(in_channels, planes, 1, vb.pp("aspp1"))?,
            deforms,
            pool_conv: conv2d(
                in_channels,
                planes,
                1,
                1,
                0,
                false,
                vb.pp("global_avg_pool.1"),
            )?,
            pool_bn: BatchNorm::load(planes, vb.pp("global_avg_pool.2"))?,
            conv1: conv2d(
                planes * (2 + PARALLEL_KERNELS.len()),
                in_channels,
                1,
                1,
                0,
                false,
                vb.pp("conv1"),
            )?,
            bn1: BatchNorm::load(in_channels, vb.pp("bn1"))?,
        })
    }

    /// `x [B, C, H, W]` → `[B, C, H, W]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let mut parts = vec![self.aspp1.forward(x)?];
        for d in &self.deforms {
            parts.push(d.forward(x)?);
        }
        let pooled = self
            .pool_bn
            .forward(&self.pool_conv.forward(&spatial_mean(x)?)?)?
            .relu()?;
        // Bilinear resizing of a 1×1 map with align_corners=True is a broadcast.
        let (b, p, _, _) = pooled.dims4()?;
        parts.push(pooled.broadcast_as((b, p, h, w))?.contiguous()?);
        let cat = Tensor::cat(&parts, 1)?;
        self.bn1.forward(&self.conv1.forward(&cat)?)?.relu()
    }
}
