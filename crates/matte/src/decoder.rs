//! BiRefNet's `Decoder` (`models/birefnet.py`) as it runs at inference with the published
//! settings: from the deepest level up, each level concatenates the image cut into patches
//! stacked as channels (`dec_ipt_split`), runs a `BasicDecBlk`, gates it with the gradient
//! attention (`out_ref`), upsamples and adds the lateral projection of the next shallower
//! backbone level; the last level runs at the input resolution and a 1×1 convolution gives the
//! logits. Training-only side outputs (`conv_ms_spvn_*`, `gdt_convs_pred_*`) are not computed.

use candle_core::{Result, Tensor};
use candle_nn::{Init, VarBuilder};
use splatforge_nn::ops::Conv2d;

use crate::blocks::{BasicDecBlk, BasicLatBlk, SimpleConvs};
use crate::config::BiRefNetConfig;
use crate::layers::{conv2d, resize, BatchNorm};

/// Patch grid sides of the decoder inputs, deepest first (`ipt_blk5` … `ipt_blk1`): the image
/// is cut into `g × g` patches so that each patch matches one level's map (1/32 … 1/1 of the
/// input side). Their input channels are `3·g²` (`[2**i*3 for i in (10, 8, 6, 4, 0)]`).
const PATCH_GRIDS: [usize; 5] = [32, 16, 8, 4, 1];

/// `image2patches(x, patch_ref=ref, transformation='b c (hg h) (wg w) -> b (c hg wg) h w')`:
/// `x [B, C, g·h, g·w]` → `[B, C·g·g, h, w]`, channel `(c·g + row)·g + column` holding patch
/// (row, column) of channel `c`. Errors when the sides are not multiples of `grid`.
pub fn image_to_patches(x: &Tensor, grid: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if grid == 0 || h % grid != 0 || w % grid != 0 {
        candle_core::bail!("image2patches: a {h}×{w} map does not split into {grid}×{grid} patches")
    }
    let (ph, pw) = (h / grid, w / grid);
    x.reshape((b, c, grid, ph, grid, pw))?
        .permute((0, 1, 2, 4, 3, 5))?
        .reshape((b, c * grid * grid, ph, pw))
}

/// `gdt_convs_N` (3×3 convolution, BatchNorm, ReLU) then `gdt_convs_attn_N` (1×1 convolution)
/// and a sigmoid: the gate multiplying the decoder block's output.
#[derive(Debug, Clone)]
struct GradientGate {
    conv: Conv2d,
    bn: BatchNorm,
    attn: Conv2d,
}

impl GradientGate {
    fn load(channels: usize, inner: usize, level: usize, vb: &VarBuilder) -> Result<Self> {
        Ok(Self {
            conv: conv2d(
                channels,
                inner,
                3,
                1,
                1,
                true,
                vb.pp(format!("gdt_convs_{level}.0")),
            )?,
            bn: BatchNorm::load(inner, vb.pp(format!("gdt_convs_{level}.1")))?,
            attn: conv2d(
                inner,
                1,
                1,
                1,
                0,
                true,
                vb.pp(format!("gdt_convs_attn_{level}.0")),
            )?,
        })
    }

    /// `p [B, C, H, W]` → `p · sigmoid(attn(relu(bn(conv(p)))))`, same shape.
    fn forward(&self, p: &Tensor) -> Result<Tensor> {
        let g = self.bn.forward(&self.conv.forward(p)?)?.relu()?;
        let a = candle_nn::ops::sigmoid(&self.attn.forward(&g)?)?;
        p.broadcast_mul(&a)
    }
}

/// The decoder.
#[derive(Debug, Clone)]
pub struct Decoder {
    /// `ipt_blk5` … `ipt_blk1`.
    ipt: Vec<SimpleConvs>,
    /// `decoder_block4` … `decoder_block1`.
    blocks: Vec<BasicDecBlk>,
    /// `lateral_block4` … `lateral_block2`.
    laterals: Vec<BasicLatBlk>,
    /// `gdt_convs_*` for levels 4, 3, 2 when `out_ref`.
    gates: Vec<GradientGate>,
    conv_out1: Conv2d,
}

/// The decoder's channel plan for `config`: (decoder-input block out channels (ipt_blk5 …
/// ipt_blk1), decoder block in channels, decoder block out channels), deepest first.
fn channel_plan(config: &BiRefNetConfig) -> ([usize; 5], [usize; 4], [usize; 4]) {
    let ch = config.lateral_channels();
    let o = [ch[0] / 8, ch[1] / 8, ch[2] / 8, ch[3] / 8];
    let ipt_out = [o[0], o[0], o[1], o[2], o[3]];
    let dec_in = [ch[0] + o[0], ch[1] + o[0], ch[2] + o[1], ch[3] + o[2]];
    let dec_out = [ch[1], ch[2], ch[3], ch[3] / 2];
    (ipt_out, dec_in, dec_out)
}

impl Decoder {
    /// Loads from `vb` (the model's `decoder.` prefix).
    pub fn load(config: &BiRefNetConfig, vb: VarBuilder) -> Result<Self> {
        let ch = config.lateral_channels();
        let (ipt_out, dec_in, dec_out) = channel_plan(config);
        let ipt = PATCH_GRIDS
            .iter()
            .zip(ipt_out)
            .enumerate()
            .map(|(i, (&g, out))| {
                SimpleConvs::load(
                    3 * g * g,
                    out,
                    config.ipt_inter_channels,
                    vb.pp(format!("ipt_blk{}", 5 - i)),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let blocks = (0..4)
            .map(|i| {
                BasicDecBlk::load(
                    dec_in[i],
                    dec_out[i],
                    config.dec_inter_channels,
                    config.aspp_channels,
                    vb.pp(format!("decoder_block{}", 4 - i)),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let laterals = (0..3)
            .map(|i| {
                BasicLatBlk::load(
                    ch[i + 1],
                    dec_out[i],
                    vb.pp(format!("lateral_block{}", 4 - i)),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let gates = if config.out_ref {
            (0..3)
                .map(|i| GradientGate::load(dec_out[i], config.gdt_channels, 4 - i, &vb))
                .collect::<Result<Vec<_>>>()?
        } else {
            Vec::new()
        };
        Ok(Self {
            ipt,
            blocks,
            laterals,
            gates,
            conv_out1: conv2d(
                dec_out[3] + ipt_out[4],
                1,
                1,
                1,
                0,
                true,
                vb.pp("conv_out1.0"),
            )?,
        })
    }

    /// Asks `vb` (the `decoder.` prefix) for the tensors only training reads
    /// (`conv_ms_spvn_{4,3,2}` with `ms_supervision`, `gdt_convs_pred_{4,3,2}` with `out_ref`), so
    /// that a random-weight file holds the official model's whole state dict.
    pub(crate) fn record_training_only(config: &BiRefNetConfig, vb: VarBuilder) -> Result<()> {
        let (_, _, dec_out) = channel_plan(config);
        for (i, level) in [4, 3, 2].into_iter().enumerate() {
            let mut heads = Vec::new();
            if config.ms_supervision {
                heads.push((format!("conv_ms_spvn_{level}"), dec_out[i]));
            }
            if config.out_ref {
                heads.push((format!("gdt_convs_pred_{level}.0"), config.gdt_channels));
            }
            for (name, inp) in heads {
                let v = vb.pp(name);
                v.get_with_hints(
                    (1, inp, 1, 1),
                    "weight",
                    candle_nn::init::DEFAULT_KAIMING_NORMAL,
                )?;
                v.get_with_hints(1, "bias", Init::Const(0.0))?;
            }
        }
        Ok(())
    }

    /// `x [B, 3, S, S]` (the normalised input) and the backbone levels `x1 … x4`
    /// (`[B, C_i, S/2^(i+1), …]`, x4 after the squeeze) → logits `[B, 1, S, S]`.
    pub fn forward(&self, x: &Tensor, levels: [&Tensor; 4]) -> Result<Tensor> {
        let [x1, x2, x3, x4] = levels;
        let with_patches = |p: &Tensor, i: usize| -> Result<Tensor> {
            let (_, _, h, w) = p.dims4()?;
            let patches = resize(&image_to_patches(x, PATCH_GRIDS[i])?, h, w)?;
            Tensor::cat(&[p, &self.ipt[i].forward(&patches)?], 1)
        };
        let gate = |p: Tensor, i: usize| -> Result<Tensor> {
            match self.gates.get(i) {
                Some(g) => g.forward(&p),
                None => Ok(p),
            }
        };
        let mut p = with_patches(x4, 0)?;
        for (i, next) in [x3, x2, x1].into_iter().enumerate() {
            let d = gate(self.blocks[i].forward(&p)?, i)?;
            let (_, _, h, w) = next.dims4()?;
            let up = (resize(&d, h, w)? + self.laterals[i].forward(next)?)?;
            p = with_patches(&up, i + 1)?;
        }
        let (_, _, h, w) = x.dims4()?;
        let d = resize(&self.blocks[3].forward(&p)?, h, w)?;
        self.conv_out1.forward(&with_patches(&d, 4)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn patches_follow_the_einops_pattern() {
        // b=1, c=2, 4×4 map, grid 2: value = 100·c + 10·row + column.
        let vals: Vec<f32> = (0..2)
            .flat_map(|c| {
                (0..4).flat_map(move |r| (0..4).map(move |col| (100 * c + 10 * r + col) as f32))
            })
            .collect();
        let x = Tensor::from_vec(vals, (1, 2, 4, 4), &Device::Cpu).unwrap();
        let p = image_to_patches(&x, 2).unwrap();
        assert_eq!(p.dims(), [1, 8, 2, 2]);
        let got = p.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // Channel (c·2 + hg)·2 + wg holds rows hg·2.., columns wg·2.. of channel c.
        let mut want = Vec::new();
        for c in 0..2 {
            for hg in 0..2 {
                for wg in 0..2 {
                    for h in 0..2 {
                        for w in 0..2 {
                            want.push((100 * c + 10 * (hg * 2 + h) + wg * 2 + w) as f32);
                        }
                    }
                }
            }
        }
        assert_eq!(got, want);
        assert!(image_to_patches(&x, 3).is_err());
    }

    #[test]
    fn published_channel_plan() {
        let (ipt_out, dec_in, dec_out) = channel_plan(&BiRefNetConfig::birefnet());
        assert_eq!(ipt_out, [384, 384, 192, 96, 48]);
        assert_eq!(dec_in, [3456, 1920, 960, 480]);
        assert_eq!(dec_out, [1536, 768, 384, 192]);
    }
}
