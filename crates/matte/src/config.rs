//! BiRefNet's configuration: the settings of upstream `config.py` (ZhengPeng7/BiRefNet at
//! commit 25cb930, class `Config`) that shape the published inference models, and the Swin v1
//! backbones of `models/backbones/swin_v1.py`.
//!
//! Where each published value comes from (`config.py` unless named otherwise):
//!
//! | setting | value | source |
//! |---|---|---|
//! | `bb` | `swin_v1_l` (BiRefNet), `swin_v1_t` (BiRefNet_lite) | `self.bb = [...][3]`; the lite model card |
//! | `mul_scl_ipt` | `'cat'` | `['', 'add', 'cat'][2]` |
//! | `cxt_num` | 3 | `[0, 3][1]` |
//! | `dec_ipt`, `dec_ipt_split` | `True`, `True` | `self.dec_ipt = True`, `self.dec_ipt_split = True` |
//! | `dec_att` | `'ASPPDeformable'` | `['', 'ASPP', 'ASPPDeformable'][2]` |
//! | `squeeze_block` | `'BasicDecBlk_x1'` | `[..][1]` |
//! | `dec_blk`, `lat_blk` | `'BasicDecBlk'`, `'BasicLatBlk'` | `[..][0]` each |
//! | `dec_channels_inter` | `'fixed'` (64 channels inside a decoder block) | `['fixed', 'adap'][0]`; `decoder_blocks.py` |
//! | `ms_supervision`, `out_ref` | `True`, `True` | `self.ms_supervision = True`, `self.out_ref = self.ms_supervision and True` |
//! | BatchNorm in the decoder | present (`batch_size = 8 > 1`) | `decoder_blocks.py`, `aspp.py`, `birefnet.py`: `nn.BatchNorm2d(..) if config.batch_size > 1 else nn.Identity()` |
//! | `size` | 1024 × 1024 | `self.size = (1024, 1024)` (task not `General-2K`) |
//! | ASPP branch channels | 256 | `aspp.py`: `self.in_channelster = 256 // self.down_scale` (1) |
//! | decoder-input convolutions | 64 inner channels, `channels[i] // 8` out | `birefnet.py`: `ic = 64`, `ipt_cha_opt = 1` |
//! | gradient branch | 16 channels | `birefnet.py`: `_N = 16` |
//! | Swin-L | embed 192, depths 2-2-18-2, heads 6-12-24-48, window 12 | `swin_v1.py::swin_v1_l` |
//! | Swin-T | embed 96, depths 2-2-6-2, heads 3-6-12-24, window 7 | `swin_v1.py::swin_v1_t` |
//!
//! `ms_supervision` adds `conv_ms_spvn_*` and `out_ref` adds `gdt_convs_pred_*`, which only
//! training reads; `out_ref`'s `gdt_convs_*` and `gdt_convs_attn_*` also gate the decoder at
//! inference and are used here.

use crate::{MatteError, Result};

/// A Swin Transformer v1 backbone (`swin_v1.py::SwinTransformer`; patch size 4, MLP ratio 4,
/// LayerNorm eps 1e-5, patch norm on, no absolute position embedding, all four stages out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwinConfig {
    /// Channels of stage 1; stage `i` has `embed_dim · 2^i`.
    pub embed_dim: usize,
    /// Swin blocks per stage.
    pub depths: [usize; 4],
    /// Attention heads per stage.
    pub num_heads: [usize; 4],
    /// Window side in tokens; shifted blocks shift by `window_size / 2`.
    pub window_size: usize,
}

/// Patch side of the patch embedding (pixels per token side).
pub const PATCH_SIZE: usize = 4;

impl SwinConfig {
    /// `swin_v1_l`: BiRefNet's default backbone.
    pub fn swin_v1_l() -> Self {
        Self {
            embed_dim: 192,
            depths: [2, 2, 18, 2],
            num_heads: [6, 12, 24, 48],
            window_size: 12,
        }
    }

    /// `swin_v1_t`: BiRefNet_lite's backbone.
    pub fn swin_v1_t() -> Self {
        Self {
            embed_dim: 96,
            depths: [2, 2, 6, 2],
            num_heads: [3, 6, 12, 24],
            window_size: 7,
        }
    }

    /// Channels of each stage's output.
    pub fn stage_channels(&self) -> [usize; 4] {
        [0, 1, 2, 3].map(|i| self.embed_dim << i)
    }
}

/// The BiRefNet settings of the published models (see the module documentation for the
/// upstream source of each). Only the published decoder design is implemented; `validate`
/// refuses other combinations rather than computing something else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BiRefNetConfig {
    pub backbone: SwinConfig,
    /// Side of the square network input in pixels (`config.size`); a multiple of 32.
    pub size: usize,
    /// `mul_scl_ipt == 'cat'`: the backbone also sees the half-size image and its features,
    /// upsampled, are concatenated to the full-size ones (doubling every lateral channel).
    pub mul_scl_ipt_cat: bool,
    /// `cxt_num`: how many of the shallower stages (x3, x2, x1, deepest first) are resized and
    /// concatenated before the deepest one.
    pub cxt_num: usize,
    /// `dec_ipt` with `dec_ipt_split`: image patches stacked into channels enter each decoder level.
    pub dec_ipt_split: bool,
    /// `out_ref`: the gradient-attention gates after decoder blocks 4, 3 and 2.
    pub out_ref: bool,
    /// `ms_supervision`: the training-only side outputs exist in the state dict.
    pub ms_supervision: bool,
    /// Number of `BasicDecBlk`s squeezing the concatenated context (`squeeze_block = 'BasicDecBlk_x1'`).
    pub squeeze_blocks: usize,
    /// Channels inside a `BasicDecBlk` (`dec_channels_inter = 'fixed'`: 64).
    pub dec_inter_channels: usize,
    /// Channels of each ASPPDeformable branch (256).
    pub aspp_channels: usize,
    /// Inner channels of the decoder-input convolutions (`SimpleConvs`, `ic = 64`).
    pub ipt_inter_channels: usize,
    /// Channels of the gradient branch (`_N = 16`).
    pub gdt_channels: usize,
}

impl BiRefNetConfig {
    /// `ZhengPeng7/BiRefNet`: Swin-L at 1024².
    pub fn birefnet() -> Self {
        Self::published(SwinConfig::swin_v1_l())
    }

    /// `ZhengPeng7/BiRefNet_lite`: Swin-T at 1024².
    pub fn birefnet_lite() -> Self {
        Self::published(SwinConfig::swin_v1_t())
    }

    /// The published decoder settings on `backbone`.
    pub fn published(backbone: SwinConfig) -> Self {
        Self {
            backbone,
            size: 1024,
            mul_scl_ipt_cat: true,
            cxt_num: 3,
            dec_ipt_split: true,
            out_ref: true,
            ms_supervision: true,
            squeeze_blocks: 1,
            dec_inter_channels: 64,
            aspp_channels: 256,
            ipt_inter_channels: 64,
            gdt_channels: 16,
        }
    }

    /// A tiny model of the same design for CPU tests (64² input; window 3 so that padding,
    /// shifts and masks all occur at every stage).
    pub fn tiny() -> Self {
        Self {
            backbone: SwinConfig {
                embed_dim: 8,
                depths: [2, 2, 2, 2],
                num_heads: [1, 2, 2, 4],
                window_size: 3,
            },
            size: 64,
            dec_inter_channels: 8,
            aspp_channels: 8,
            ipt_inter_channels: 8,
            gdt_channels: 4,
            ..Self::birefnet()
        }
    }

    /// `lateral_channels_in_collection`: channels of x4, x3, x2, x1 (deepest first), doubled by
    /// `mul_scl_ipt = 'cat'`.
    pub fn lateral_channels(&self) -> [usize; 4] {
        let s = self.backbone.stage_channels();
        let k = if self.mul_scl_ipt_cat { 2 } else { 1 };
        [s[3] * k, s[2] * k, s[1] * k, s[0] * k]
    }

    /// `cxt`: channels of the context features concatenated before x4 (x1, x2, x3 order, the
    /// last `cxt_num` of them).
    pub fn context_channels(&self) -> Vec<usize> {
        let l = self.lateral_channels();
        let shallow = [l[3], l[2], l[1]];
        shallow[3 - self.cxt_num..].to_vec()
    }

    /// Checks what this implementation supports.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(MatteError::Config(m));
        let b = &self.backbone;
        if b.embed_dim == 0 || b.window_size < 2 || b.depths.contains(&0) {
            return bad(format!("degenerate Swin backbone {b:?}"));
        }
        for (i, &h) in b.num_heads.iter().enumerate() {
            if h == 0 || (b.embed_dim << i) % h != 0 {
                return bad(format!(
                    "stage {i}: {} channels do not split into {h} heads",
                    b.embed_dim << i
                ));
            }
        }
        if self.size == 0 || self.size % 32 != 0 {
            return bad(format!(
                "input size {} must be a positive multiple of 32 (the deepest stage is 1/32 of it and the image splits into 32×32 patches there)",
                self.size
            ));
        }
        if self.cxt_num > 3 {
            return bad(format!("cxt_num {} > 3", self.cxt_num));
        }
        // The published models use these; the other upstream choices ('add'/'' multi-scale
        // input, unsplit decoder input) are not implemented (issue 13).
        if !self.mul_scl_ipt_cat || !self.dec_ipt_split {
            return bad(
                "only mul_scl_ipt = 'cat' with dec_ipt_split = True (the published models) is implemented".into(),
            );
        }
        if [
            self.dec_inter_channels,
            self.aspp_channels,
            self.ipt_inter_channels,
            self.gdt_channels,
        ]
        .contains(&0)
        {
            return bad("zero decoder channels".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_channels() {
        let l = BiRefNetConfig::birefnet();
        assert_eq!(l.lateral_channels(), [3072, 1536, 768, 384]);
        assert_eq!(l.context_channels(), vec![384, 768, 1536]);
        let t = BiRefNetConfig::birefnet_lite();
        assert_eq!(t.lateral_channels(), [1536, 768, 384, 192]);
        l.validate().unwrap();
        t.validate().unwrap();
        BiRefNetConfig::tiny().validate().unwrap();
    }

    #[test]
    fn refuses_unsupported() {
        let mut c = BiRefNetConfig::tiny();
        c.size = 48;
        assert!(c.validate().unwrap_err().to_string().contains("32"));
        let mut c = BiRefNetConfig::tiny();
        c.mul_scl_ipt_cat = false;
        assert!(c.validate().unwrap_err().to_string().contains("'cat'"));
        let mut c = BiRefNetConfig::tiny();
        c.backbone.num_heads[1] = 3;
        assert!(c.validate().unwrap_err().to_string().contains("heads"));
    }
}
