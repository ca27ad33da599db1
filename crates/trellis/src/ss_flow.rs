//! `SparseStructureFlowModel` (`trellis/models/sparse_structure_flow.py`): the stage-1
//! transformer predicting the flow velocity of the dense `[B, C, R, R, R]` structure latent,
//! cross-attending to the image tokens.
//!
//! Precision as the official model: the timestep embedder, the input and output layers and
//! the position embedding in f32; the blocks in the model dtype (`use_fp16`: f16 there, on
//! our GPU path bf16 or f16; on the CPU f32).

use candle_core::{DType, Device, Tensor};
use candle_nn::{Linear, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::blocks::{
    linear, linear_forward, AbsolutePositionEmbedder, AdaLnModulation, BlockConfig,
    ModulatedTransformerCrossBlock, TimestepEmbedder,
};
use crate::sampler::FlowModel;
use crate::{Result, TrellisError};

/// The official class name in `ckpts/<name>.json`.
pub const CLASS: &str = "SparseStructureFlowModel";

fn default_head_channels() -> Option<usize> {
    Some(64)
}
fn default_mlp_ratio() -> f64 {
    4.0
}
fn default_patch_size() -> usize {
    2
}
fn default_pe_mode() -> String {
    "ape".into()
}

/// The constructor arguments (`args` of `ckpts/ss_flow_*.json`), defaults as the official.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SparseStructureFlowConfig {
    pub resolution: usize,
    pub in_channels: usize,
    pub model_channels: usize,
    pub cond_channels: usize,
    pub out_channels: usize,
    pub num_blocks: usize,
    #[serde(default)]
    pub num_heads: Option<usize>,
    #[serde(default = "default_head_channels")]
    pub num_head_channels: Option<usize>,
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    #[serde(default = "default_patch_size")]
    pub patch_size: usize,
    /// Only `"ape"` (absolute position embedding) is implemented, as TRELLIS-image-large uses.
    #[serde(default = "default_pe_mode")]
    pub pe_mode: String,
    #[serde(default)]
    pub use_fp16: bool,
    #[serde(default)]
    pub use_checkpoint: bool,
    #[serde(default)]
    pub share_mod: bool,
    #[serde(default)]
    pub qk_rms_norm: bool,
    #[serde(default)]
    pub qk_rms_norm_cross: bool,
}

impl SparseStructureFlowConfig {
    /// `ckpts/ss_flow_img_dit_L_16l8_fp16.json` of TRELLIS-image-large, as published at
    /// <https://huggingface.co/JeffreyXiang/TRELLIS-image-large/blob/main/ckpts/ss_flow_img_dit_L_16l8_fp16.json>
    /// (the same arguments as the official `configs/generation/ss_flow_img_dit_L_16l8_fp16.json`),
    /// unset arguments at the constructor's defaults.
    pub fn image_large() -> Self {
        Self {
            resolution: 16,
            in_channels: 8,
            model_channels: 1024,
            cond_channels: 1024,
            out_channels: 8,
            num_blocks: 24,
            num_heads: Some(16),
            num_head_channels: Some(64),
            mlp_ratio: 4.0,
            patch_size: 1,
            pe_mode: "ape".into(),
            use_fp16: true,
            use_checkpoint: false,
            share_mod: false,
            qk_rms_norm: true,
            qk_rms_norm_cross: false,
        }
    }

    /// A small model of the same structure for tests: 8³ latent, patch 2, two blocks.
    pub fn tiny() -> Self {
        Self {
            resolution: 8,
            in_channels: 4,
            model_channels: 24,
            cond_channels: 16,
            out_channels: 4,
            num_blocks: 2,
            num_heads: Some(2),
            patch_size: 2,
            use_fp16: false,
            ..Self::image_large()
        }
    }

    /// Heads: `num_heads`, else `model_channels / num_head_channels`.
    pub fn heads(&self) -> Result<usize> {
        match (self.num_heads, self.num_head_channels) {
            (Some(h), _) => Ok(h),
            (None, Some(d)) if d > 0 => Ok(self.model_channels / d),
            _ => Err(TrellisError::Config(
                "SparseStructureFlowModel needs num_heads or num_head_channels".into(),
            )),
        }
    }

    fn validate(&self) -> Result<()> {
        if self.pe_mode != "ape" {
            return Err(TrellisError::Config(format!(
                "SparseStructureFlowModel: pe_mode `{}` is not implemented (only `ape`)",
                self.pe_mode
            )));
        }
        if self.patch_size == 0 || self.resolution % self.patch_size != 0 {
            return Err(TrellisError::Config(format!(
                "resolution {} is not a multiple of patch size {}",
                self.resolution, self.patch_size
            )));
        }
        Ok(())
    }
}

/// `x [B, C, R, R, R]` → `[B, C·p³, R/p, R/p, R/p]`, channel-major then the in-patch offsets
/// (the official `patchify`).
pub fn patchify(x: &Tensor, p: usize) -> Result<Tensor> {
    let (b, c, d, h, w) = x.dims5()?;
    if p == 0 || d % p != 0 || h % p != 0 || w % p != 0 {
        return Err(TrellisError::InvalidArgument(format!(
            "{:?} is not divisible into patches of {p}",
            x.dims()
        )));
    }
    let x = x
        .reshape(vec![b, c, d / p, p, h / p, p, w / p, p])?
        .permute([0, 1, 3, 5, 7, 2, 4, 6])?;
    Ok(x.contiguous()?
        .reshape((b, c * p * p * p, d / p, h / p, w / p))?)
}

/// The inverse of [`patchify`] (the official `unpatchify`).
pub fn unpatchify(x: &Tensor, p: usize) -> Result<Tensor> {
    let (b, cp, d, h, w) = x.dims5()?;
    if p == 0 || cp % (p * p * p) != 0 {
        return Err(TrellisError::InvalidArgument(format!(
            "{cp} channels are not a multiple of {}",
            p * p * p
        )));
    }
    let c = cp / (p * p * p);
    let x = x
        .reshape(vec![b, c, p, p, p, d, h, w])?
        .permute([0, 1, 5, 2, 6, 3, 7, 4])?;
    Ok(x.contiguous()?.reshape((b, c, d * p, h * p, w * p))?)
}

/// The stage-1 flow transformer.
#[derive(Debug, Clone)]
pub struct SparseStructureFlowModel {
    config: SparseStructureFlowConfig,
    t_embedder: TimestepEmbedder,
    shared_modulation: Option<AdaLnModulation>,
    /// `[N, C]` f32, N = (R/p)³ tokens in x-major order.
    pos_emb: Tensor,
    input_layer: Linear,
    blocks: Vec<ModulatedTransformerCrossBlock>,
    out_layer: Linear,
    /// The blocks' dtype (the dtype of `vb` at load).
    dtype: DType,
}

impl SparseStructureFlowModel {
    /// The absolute position embedding of the `(resolution / patch_size)³` tokens in x-major
    /// order, `[tokens, model_channels]` f32: the official model's `pos_emb` buffer. It is a
    /// function of the configuration, so we compute it instead of reading the checkpoint's
    /// copy (which the official loader requires, so our random checkpoints carry it too).
    pub fn position_embedding(
        config: &SparseStructureFlowConfig,
        device: &Device,
    ) -> Result<Tensor> {
        let grid = config.resolution / config.patch_size;
        let coords: Vec<u32> = (0..grid * grid * grid)
            .flat_map(|i| {
                [
                    (i / (grid * grid)) as u32,
                    ((i / grid) % grid) as u32,
                    (i % grid) as u32,
                ]
            })
            .collect();
        AbsolutePositionEmbedder::new(config.model_channels, 3)?.embed(&coords, device)
    }

    /// Builds the model from weights under the official names; `vb`'s dtype is the blocks'
    /// dtype, the rest loads in f32.
    pub fn load(config: &SparseStructureFlowConfig, vb: VarBuilder) -> Result<Self> {
        config.validate()?;
        let c = config.model_channels;
        let p = config.patch_size;
        let heads = config.heads()?;
        let f32_vb = vb.to_dtype(DType::F32);
        let pos_emb = Self::position_embedding(config, vb.device())?;
        let block = BlockConfig {
            channels: c,
            heads,
            mlp_ratio: config.mlp_ratio,
            qkv_bias: true,
            qk_rms_norm: config.qk_rms_norm,
        };
        let blocks = (0..config.num_blocks)
            .map(|i| {
                ModulatedTransformerCrossBlock::load(
                    block,
                    config.cond_channels,
                    config.qk_rms_norm_cross,
                    config.share_mod,
                    vb.pp("blocks").pp(i),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            t_embedder: TimestepEmbedder::load(c, f32_vb.pp("t_embedder"))?,
            shared_modulation: if config.share_mod {
                Some(AdaLnModulation::load(c, f32_vb.clone())?)
            } else {
                None
            },
            pos_emb,
            input_layer: linear(
                config.in_channels * p * p * p,
                c,
                true,
                f32_vb.pp("input_layer"),
            )?,
            blocks,
            out_layer: linear(
                c,
                config.out_channels * p * p * p,
                true,
                f32_vb.pp("out_layer"),
            )?,
            dtype: vb.dtype(),
            config: config.clone(),
        })
    }

    pub fn config(&self) -> &SparseStructureFlowConfig {
        &self.config
    }

    /// The velocity for `x [B, C_in, R, R, R]` (f32), timesteps `t [B]` (the sampler's
    /// `1000·t`) and image tokens `cond [B, L, C_cond]` → `[B, C_out, R, R, R]` f32.
    pub fn forward(&self, x: &Tensor, t: &Tensor, cond: &Tensor) -> Result<Tensor> {
        let cfg = &self.config;
        let (b, c_in, r0, r1, r2) = x.dims5()?;
        if c_in != cfg.in_channels || [r0, r1, r2] != [cfg.resolution; 3] {
            return Err(TrellisError::InvalidArgument(format!(
                "sparse structure flow: input {:?}, expected [B, {}, {r}, {r}, {r}]",
                x.dims(),
                cfg.in_channels,
                r = cfg.resolution
            )));
        }
        let p = cfg.patch_size;
        let grid = cfg.resolution / p;
        let tokens = grid * grid * grid;
        // Contiguous before the product: candle's batched matmul mixes batch items of a
        // transposed [B, N, K] input.
        let h = patchify(&x.to_dtype(DType::F32)?, p)?
            .reshape((b, c_in * p * p * p, tokens))?
            .transpose(1, 2)?
            .contiguous()?;
        let h = linear_forward(&self.input_layer, &h)?.broadcast_add(&self.pos_emb)?;
        let mut emb = self.t_embedder.forward(t)?;
        if let Some(m) = &self.shared_modulation {
            emb = m.forward(&emb)?;
        }
        let emb = emb.to_dtype(self.dtype)?;
        let cond = cond.to_dtype(self.dtype)?;
        let mut h = h.to_dtype(self.dtype)?;
        for block in &self.blocks {
            h = block.forward(&h, &emb, &cond)?;
        }
        // F.layer_norm without affine, default eps, in f32.
        let h = h.to_dtype(DType::F32)?.contiguous()?;
        let ones = Tensor::ones(cfg.model_channels, DType::F32, h.device())?;
        let zeros = Tensor::zeros(cfg.model_channels, DType::F32, h.device())?;
        let h = candle_nn::ops::layer_norm(&h, &ones, &zeros, 1e-5)?;
        let h = linear_forward(&self.out_layer, &h)?
            .transpose(1, 2)?
            .contiguous()?;
        unpatchify(
            &h.reshape((b, cfg.out_channels * p * p * p, grid, grid, grid))?,
            p,
        )
    }
}

impl FlowModel for SparseStructureFlowModel {
    fn velocity(&self, x_t: &Tensor, timestep: f64, cond: &Tensor) -> Result<Tensor> {
        let b = x_t.dim(0)?;
        let t = Tensor::full(timestep as f32, b, x_t.device())?;
        self.forward(x_t, &t, cond)
    }

    /// Both passes as one batch of `2B`.
    fn guided_velocities(
        &self,
        x_t: &Tensor,
        timestep: f64,
        cond: &Tensor,
        neg_cond: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let b = x_t.dim(0)?;
        let x = Tensor::cat(&[x_t, x_t], 0)?;
        let c = Tensor::cat(&[cond, neg_cond], 0)?;
        let v = self.velocity(&x, timestep, &c)?;
        Ok((v.narrow(0, 0, b)?, v.narrow(0, b, b)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blocks::tests::{layer_norm, lin, max_diff, Mat};
    use candle_core::Device;
    use candle_core::Module;
    use splatforge_nn::weights::SeededInit;

    fn randn(dims: &[usize], seed: u64) -> Tensor {
        let init = SeededInit::new(seed);
        init.var_builder()
            .get_with_hints(
                dims,
                "x",
                candle_nn::Init::Randn {
                    mean: 0.0,
                    stdev: 1.0,
                },
            )
            .unwrap()
    }

    #[test]
    fn patchify_matches_the_index_formula_and_inverts() {
        let x = Tensor::arange(0f32, 2.0 * 3.0 * 64.0, &Device::Cpu)
            .unwrap()
            .reshape((2, 3, 4, 4, 4))
            .unwrap();
        assert!(patchify(&x, 0).is_err() && patchify(&x, 3).is_err());
        let y = patchify(&x, 2).unwrap();
        assert_eq!(y.dims(), &[2, 24, 2, 2, 2]);
        let yv = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let xv = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // y[b, c·8 + (i·4 + j·2 + k), D, H, W] = x[b, c, 2D + i, 2H + j, 2W + k]
        for (b, c, i, j, k, d, h, w) in [
            (1, 2, 1, 0, 1, 1, 0, 1),
            (0, 0, 0, 1, 1, 0, 1, 0),
            (1, 1, 1, 1, 0, 1, 1, 1),
        ] {
            let yi = (((b * 24 + c * 8 + i * 4 + j * 2 + k) * 2 + d) * 2 + h) * 2 + w;
            let xi = (((b * 3 + c) * 4 + 2 * d + i) * 4 + 2 * h + j) * 4 + 2 * w + k;
            assert_eq!(yv[yi], xv[xi]);
        }
        let back = unpatchify(&y, 2)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(back, xv);
    }

    #[test]
    fn tiny_model_follows_its_equations_and_loads_official_names() {
        let config = SparseStructureFlowConfig::tiny();
        let init = SeededInit::new(21);
        let model = SparseStructureFlowModel::load(&config, init.var_builder()).unwrap();
        let w = init.tensors();
        for name in [
            "t_embedder.mlp.0.weight",
            "input_layer.weight",
            "out_layer.bias",
            "blocks.1.self_attn.q_rms_norm.gamma",
            "blocks.0.cross_attn.to_kv.weight",
            "blocks.1.adaLN_modulation.1.weight",
        ] {
            assert!(w.contains_key(name), "{name}");
        }
        assert_eq!(w["input_layer.weight"].dims(), &[24, 32]);
        assert!(
            !w.contains_key("blocks.0.cross_attn.q_rms_norm.gamma"),
            "no QK norm in cross-attention"
        );

        let x = randn(&[2, 4, 8, 8, 8], 1);
        let t = Tensor::new(&[1000f32, 250.0], &Device::Cpu).unwrap();
        let cond = randn(&[2, 5, 16], 2);
        let y = model.forward(&x, &t, &cond).unwrap();
        assert_eq!(y.dims(), &[2, 4, 8, 8, 8]);

        // The same computation from the parts: tokens, blocks (checked in blocks.rs), the
        // final norm and projection written out.
        let tokens = patchify(&x, 2)
            .unwrap()
            .reshape((2, 32, 64))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap();
        let h = (model
            .input_layer
            .forward(&tokens)
            .unwrap()
            .broadcast_add(&model.pos_emb))
        .unwrap();
        let emb = model.t_embedder.forward(&t).unwrap();
        let mut h = h;
        for block in &model.blocks {
            h = block.forward(&h, &emb, &cond).unwrap();
        }
        for i in 0..2 {
            let hi = Mat::of(&h.get(i).unwrap());
            let out = lin(&w, "out_layer", &layer_norm(&hi, 1e-5, None));
            let want = unpatchify(
                &Tensor::new(
                    out.v.iter().map(|v| *v as f32).collect::<Vec<_>>(),
                    &Device::Cpu,
                )
                .unwrap()
                .reshape((1, 64, 32))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .reshape((1, 32, 4, 4, 4))
                .unwrap(),
                2,
            )
            .unwrap();
            let diff = max_diff(&y.get(i).unwrap().unsqueeze(0).unwrap(), &Mat::of(&want));
            assert!(diff < 1e-4, "item {i}: max |Δ| {diff}");
        }

        // Position embedding of token (x, y, z) = (1, 2, 3) on the 4³ grid.
        let pe = AbsolutePositionEmbedder::new(24, 3)
            .unwrap()
            .embed(&[1, 2, 3], &Device::Cpu)
            .unwrap();
        let row = model
            .pos_emb
            .get(16 + 2 * 4 + 3)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        assert_eq!(Mat::of(&row).v, Mat::of(&pe).v);
    }

    #[test]
    fn the_preset_is_the_published_checkpoint_json() {
        let published = r#"{"name": "SparseStructureFlowModel", "args": {"resolution": 16, "in_channels": 8,
            "out_channels": 8, "model_channels": 1024, "cond_channels": 1024, "num_blocks": 24, "num_heads": 16,
            "mlp_ratio": 4, "patch_size": 1, "pe_mode": "ape", "qk_rms_norm": true, "use_fp16": true}}"#;
        let ckpt: crate::config::Checkpoint<SparseStructureFlowConfig> =
            serde_json::from_str(published).unwrap();
        assert_eq!(ckpt.name, CLASS);
        assert_eq!(ckpt.args, SparseStructureFlowConfig::image_large());
        assert_eq!(ckpt.args.heads().unwrap(), 16);
    }

    #[test]
    fn batched_guidance_equals_two_passes() {
        let config = SparseStructureFlowConfig::tiny();
        let model =
            SparseStructureFlowModel::load(&config, SeededInit::new(4).var_builder()).unwrap();
        let x = randn(&[1, 4, 8, 8, 8], 5);
        let cond = randn(&[1, 5, 16], 6);
        let neg = Tensor::zeros((1, 5, 16), DType::F32, &Device::Cpu).unwrap();
        let (a, b) = model.guided_velocities(&x, 640.0, &cond, &neg).unwrap();
        let a1 = model.velocity(&x, 640.0, &cond).unwrap();
        let b1 = model.velocity(&x, 640.0, &neg).unwrap();
        for (p, q) in [(a, a1), (b, b1)] {
            let d = (p - q)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(d < 1e-5, "{d}");
        }
        assert!(model
            .forward(
                &randn(&[1, 3, 8, 8, 8], 1),
                &Tensor::new(&[1f32], &Device::Cpu).unwrap(),
                &cond
            )
            .is_err());
        assert!(SparseStructureFlowModel::load(
            &SparseStructureFlowConfig {
                pe_mode: "rope".into(),
                ..config
            },
            SeededInit::new(4).var_builder()
        )
        .is_err());
    }
}
