//! The whole network (`BiRefNet.forward` at inference): the backbone on the image and on its
//! half-size copy (`mul_scl_ipt = 'cat'`), the context concatenation (`cxt_num`), the squeeze
//! block and the decoder.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use crate::blocks::BasicDecBlk;
use crate::config::BiRefNetConfig;
use crate::decoder::Decoder;
use crate::layers::resize;
use crate::swin::Swin;

/// BiRefNet with the published settings.
#[derive(Debug, Clone)]
pub struct BiRefNet {
    config: BiRefNetConfig,
    bb: Swin,
    squeeze: Vec<BasicDecBlk>,
    decoder: Decoder,
}

impl BiRefNet {
    /// Loads every tensor inference reads from `vb` (the state dict's root: `bb.`,
    /// `squeeze_module.`, `decoder.`).
    pub fn load(config: &BiRefNetConfig, vb: VarBuilder) -> crate::Result<Self> {
        config.validate()?;
        let ch = config.lateral_channels();
        let squeeze_in = ch[0] + config.context_channels().iter().sum::<usize>();
        let squeeze = (0..config.squeeze_blocks)
            .map(|i| {
                let inp = if i == 0 { squeeze_in } else { ch[0] };
                BasicDecBlk::load(
                    inp,
                    ch[0],
                    config.dec_inter_channels,
                    config.aspp_channels,
                    vb.pp(format!("squeeze_module.{i}")),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            config: config.clone(),
            bb: Swin::load(&config.backbone, vb.pp("bb"))?,
            squeeze,
            decoder: Decoder::load(config, vb.pp("decoder"))?,
        })
    }

    pub fn config(&self) -> &BiRefNetConfig {
        &self.config
    }

    /// `forward_enc` + squeeze: `x [B, 3, S, S]` → `x1 … x4`, each the full-size level
    /// concatenated with the upsampled half-size one, x4 also with the context and squeezed.
    fn encode(&self, x: &Tensor) -> Result<[Tensor; 4]> {
        let (_, _, h, w) = x.dims4()?;
        let full = self.bb.forward(x)?;
        let half = self.bb.forward(&resize(x, h / 2, w / 2)?)?;
        let mut levels = Vec::with_capacity(4);
        for (f, s) in full.iter().zip(&half) {
            let (_, _, lh, lw) = f.dims4()?;
            levels.push(Tensor::cat(&[f, &resize(s, lh, lw)?], 1)?);
        }
        let (_, _, h4, w4) = levels[3].dims4()?;
        let mut x4_parts = levels[3 - self.config.cxt_num..3]
            .iter()
            .map(|l| resize(l, h4, w4))
            .collect::<Result<Vec<_>>>()?;
        x4_parts.push(levels[3].clone());
        let mut x4 = Tensor::cat(&x4_parts, 1)?;
        for s in &self.squeeze {
            x4 = s.forward(&x4)?;
        }
        let [x1, x2, x3, _]: [Tensor; 4] = levels.try_into().expect("four levels");
        Ok([x1, x2, x3, x4])
    }

    /// `x [B, 3, S, S]` (ImageNet-normalised, `S = config.size`) → the last prediction's
    /// logits `[B, 1, S, S]` (`model(x)[-1]`).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let [x1, x2, x3, x4] = self.encode(x)?;
        self.decoder.forward(x, [&x1, &x2, &x3, &x4])
    }
}
