//! TRELLIS' structured-latent Gaussian decoder, `SLatGaussianDecoder`
//! (`trellis/models/structured_latent_vae/decoder_gs.py` on `SparseTransformerBase` of
//! `base.py`): a sparse transformer over the occupied voxels, then 32 Gaussians per voxel.
//!
//! Forward, as the official module: `input_layer` (latent → width) plus the absolute sin-cos
//! position embedding of the voxel coordinates, in f32; the blocks in the model dtype
//! (`use_fp16`: f16 there; the layer norms inside compute in f32), each a pre-norm
//! `SparseTransformerBlock` whose self-attention is windowed ("swin": windows of
//! `window_size`³ voxels, the grid shifted by `window_size / 2` in odd blocks); back to f32, a
//! layer norm without affine (eps 1e-5, `F.layer_norm`'s default) and `out_layer` to the
//! Gaussian channels, which [`GaussianRepresentation`] turns into Gaussians.
//!
//! Tensor names are the official module paths: `input_layer.{weight,bias}`,
//! `blocks.{i}.attn.to_qkv.*`, `blocks.{i}.attn.to_out.*`, `blocks.{i}.mlp.mlp.{0,2}.*`,
//! `out_layer.*` and the buffer `offset_perturbation` (`[num_gaussians, 3]`).

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{Init, Linear, VarBuilder};
use serde::{Deserialize, Serialize};
use splatforge_splat::Gaussians;

use crate::blocks::{
    linear, linear_forward, AbsolutePositionEmbedder, BlockConfig, LayerNorm32, TransformerBlock,
};
use crate::config::{checkpoint_weights, Checkpoint};
use crate::gaussians::{GaussianRepresentation, RepresentationConfig};
use crate::sparse::window::{windowed_self_attention, WindowPartition};
use crate::sparse::SparseTensor;
use crate::{Result, TrellisError};

/// The checkpoint class of the decoder (`ckpts/<name>.json`'s `name`).
pub const CHECKPOINT_CLASS: &str = "SLatGaussianDecoder";
/// The training variant's class: the same network and weights (its mixin only manages memory
/// during training), accepted too.
pub const ELASTIC_CHECKPOINT_CLASS: &str = "ElasticSLatGaussianDecoder";

/// eps of the layer norm before `out_layer` (`F.layer_norm`'s default).
const OUTPUT_NORM_EPS: f64 = 1e-5;

fn default_num_head_channels() -> usize {
    64
}
fn default_mlp_ratio() -> f64 {
    4.0
}
fn default_attn_mode() -> String {
    "swin".into()
}
fn default_window_size() -> u32 {
    8
}
fn default_pe_mode() -> String {
    "ape".into()
}

/// The `args` of the decoder's checkpoint JSON (`SLatGaussianDecoder.__init__`), absent
/// fields taking the constructor's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GaussianDecoderConfig {
    /// Voxel grid resolution of the latent's coordinates.
    pub resolution: u32,
    /// Transformer width.
    pub model_channels: usize,
    /// Latent channels per voxel.
    pub latent_channels: usize,
    pub num_blocks: usize,
    /// Heads; when absent, `model_channels / num_head_channels`.
    #[serde(default)]
    pub num_heads: Option<usize>,
    #[serde(default = "default_num_head_channels")]
    pub num_head_channels: usize,
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    /// Only "swin" (shifted windows) is supported: the mode of every released decoder.
    #[serde(default = "default_attn_mode")]
    pub attn_mode: String,
    #[serde(default = "default_window_size")]
    pub window_size: u32,
    /// Only "ape" (absolute position embedding) is supported.
    #[serde(default = "default_pe_mode")]
    pub pe_mode: String,
    /// Blocks in f16 in the official code; we run them in the dtype the caller loads.
    #[serde(default)]
    pub use_fp16: bool,
    #[serde(default)]
    pub use_checkpoint: bool,
    #[serde(default)]
    pub qk_rms_norm: bool,
    pub representation_config: RepresentationConfig,
}

impl GaussianDecoderConfig {
    /// TRELLIS-image-large's `ckpts/slat_dec_gs_swin8_B_64l8gs32_fp16`: the decoder of
    /// `configs/vae/slat_vae_enc_dec_gs_swin8_B_64l8_fp16.json` (`models.decoder.args`).
    pub fn trellis_image_large() -> Self {
        Self {
            resolution: 64,
            model_channels: 768,
            latent_channels: 8,
            num_blocks: 12,
            num_heads: Some(12),
            num_head_channels: 64,
            mlp_ratio: 4.0,
            attn_mode: "swin".into(),
            window_size: 8,
            pe_mode: "ape".into(),
            use_fp16: true,
            use_checkpoint: false,
            qk_rms_norm: false,
            representation_config: RepresentationConfig::trellis_image_large(),
        }
    }

    /// A small decoder of the same structure for tests: 16³ grid, width 32, 2 heads, 2
    /// blocks (one plain, one shifted), window 4, 4 Gaussians per voxel.
    pub fn tiny() -> Self {
        let mut representation_config = RepresentationConfig::trellis_image_large();
        representation_config.num_gaussians = 4;
        Self {
            resolution: 16,
            model_channels: 32,
            latent_channels: 8,
            num_blocks: 2,
            num_heads: Some(2),
            window_size: 4,
            use_fp16: false,
            representation_config,
            ..Self::trellis_image_large()
        }
    }

    /// Attention heads per block.
    pub fn heads(&self) -> usize {
        self.num_heads
            .unwrap_or(self.model_channels / self.num_head_channels.max(1))
    }

    /// Refuses modes we do not implement and inconsistent sizes.
    pub fn check(&self) -> Result<()> {
        let bad = |what: String| Err(TrellisError::Config(format!("Gaussian decoder: {what}")));
        if self.attn_mode != "swin" {
            return bad(format!(
                "attn_mode '{}' (only 'swin' is supported)",
                self.attn_mode
            ));
        }
        if self.pe_mode != "ape" {
            return bad(format!(
                "pe_mode '{}' (only 'ape' is supported)",
                self.pe_mode
            ));
        }
        if self.window_size == 0 || self.resolution == 0 || self.latent_channels == 0 {
            return bad("window_size, resolution and latent_channels must be positive".into());
        }
        let heads = self.heads();
        if heads == 0 || self.model_channels % heads != 0 {
            return bad(format!("{} channels in {heads} heads", self.model_channels));
        }
        self.representation_config.check()
    }
}

/// `SLatGaussianDecoder` with its weights.
#[derive(Debug, Clone)]
pub struct GaussianDecoder {
    config: GaussianDecoderConfig,
    /// f32, as the official module keeps it in f32 under `use_fp16`.
    input_layer: Linear,
    position: AbsolutePositionEmbedder,
    blocks: Vec<TransformerBlock>,
    /// The blocks' dtype.
    dtype: DType,
    output_norm: LayerNorm32,
    /// f32.
    out_layer: Linear,
    representation: GaussianRepresentation,
}

impl GaussianDecoder {
    /// Loads the decoder from `vb` (the checkpoint's names, see the module docs): the
    /// blocks in `dtype` (f32 on the CPU; f16 or bf16 on the GPU), the input and output
    /// layers and the perturbation in f32.
    pub fn load(config: GaussianDecoderConfig, dtype: DType, vb: VarBuilder) -> Result<Self> {
        config.check()?;
        let width = config.model_channels;
        let vb32 = vb.to_dtype(DType::F32);
        let block = BlockConfig {
            channels: width,
            heads: config.heads(),
            mlp_ratio: config.mlp_ratio,
            qkv_bias: true,
            qk_rms_norm: config.qk_rms_norm,
        };
        let blocks = (0..config.num_blocks)
            .map(|i| TransformerBlock::load(block, false, vb.to_dtype(dtype).pp("blocks").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let rep = &config.representation_config;
        let perturbation: Vec<Vec<f32>> = vb32
            .get_with_hints(
                (rep.num_gaussians, 3),
                "offset_perturbation",
                Init::Const(0.0),
            )?
            .to_device(&Device::Cpu)?
            .to_vec2()?;
        let perturbation = perturbation
            .into_iter()
            .map(|r| [r[0], r[1], r[2]])
            .collect();
        Ok(Self {
            input_layer: linear(config.latent_channels, width, true, vb32.pp("input_layer"))?,
            position: AbsolutePositionEmbedder::new(width, 3)?,
            blocks,
            dtype,
            output_norm: LayerNorm32::load(width, OUTPUT_NORM_EPS, false, vb32.clone())?,
            out_layer: linear(width, rep.channels(), true, vb32.pp("out_layer"))?,
            representation: GaussianRepresentation::new(
                rep.clone(),
                config.resolution,
                perturbation,
            )?,
            config,
        })
    }

    /// Loads the checkpoint `<stem>.json` + `<stem>.safetensors` (e.g.
    /// `ckpts/slat_dec_gs_swin8_B_64l8gs32_fp16` of a TRELLIS folder), blocks in `dtype`.
    pub fn from_checkpoint(stem: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let ckpt: Checkpoint<GaussianDecoderConfig> = match Checkpoint::read(stem, CHECKPOINT_CLASS)
        {
            Ok(ckpt) => ckpt,
            Err(first) => Checkpoint::read(stem, ELASTIC_CHECKPOINT_CLASS).map_err(|_| first)?,
        };
        Self::load(ckpt.args, dtype, checkpoint_weights(stem, dtype, device)?)
    }

    pub fn config(&self) -> &GaussianDecoderConfig {
        &self.config
    }

    /// How the network's output channels become Gaussians.
    pub fn representation(&self) -> &GaussianRepresentation {
        &self.representation
    }

    /// The network: `latent` (`[N, latent_channels]` at voxel coordinates of the decoder's
    /// resolution) → `[N, 14·num_gaussians]` f32 Gaussian channels at the same coordinates.
    pub fn forward(&self, latent: &SparseTensor) -> Result<SparseTensor> {
        let cfg = &self.config;
        if latent.channels() != cfg.latent_channels {
            return Err(TrellisError::InvalidArgument(format!(
                "Gaussian decoder: latent has {} channels, want {}",
                latent.channels(),
                cfg.latent_channels
            )));
        }
        let device = latent.device();
        if latent.is_empty() {
            let channels = cfg.representation_config.channels();
            return latent.with_feats(Tensor::zeros((0, channels), DType::F32, device)?);
        }
        let xyz: Vec<u32> = latent
            .coords
            .iter()
            .flat_map(|c| [c[1], c[2], c[3]])
            .collect();
        let feats = latent.feats.to_dtype(DType::F32)?;
        let h =
            (linear_forward(&self.input_layer, &feats)? + self.position.embed(&xyz, device)?)?;
        // The two window layouts of the Swin blocks (TRELLIS caches them on the tensor too).
        let partition =
            |shift| WindowPartition::new(&latent.coords, cfg.window_size, shift, device);
        let (plain, shifted) = (partition(0)?, partition(cfg.window_size / 2)?);
        let mut h = h.to_dtype(self.dtype)?.unsqueeze(0)?;
        for (i, block) in self.blocks.iter().enumerate() {
            let partition = if i % 2 == 0 { &plain } else { &shifted };
            let attend = |q: &Tensor, k: &Tensor, v: &Tensor, heads: usize| {
                windowed_self_attention(
                    &q.squeeze(0)?,
                    &k.squeeze(0)?,
                    &v.squeeze(0)?,
                    heads,
                    partition,
                )
                .and_then(|out| Ok(out.unsqueeze(0)?))
                .map_err(candle_core::Error::wrap)
            };
            h = block.forward_with(&h, &attend)?;
        }
        let h = self
            .output_norm
            .forward(&h.squeeze(0)?.to_dtype(DType::F32)?)?;
        latent.with_feats(linear_forward(&self.out_layer, &h)?)
    }

    /// The Gaussians of each batch item of `latent`, with the values TRELLIS' `save_ply`
    /// writes (see [`GaussianRepresentation::to_gaussians`]).
    pub fn decode(&self, latent: &SparseTensor) -> Result<Vec<Gaussians>> {
        self.representation.to_gaussians(&self.forward(latent)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blocks::tests::{layer_norm, lin, max_diff, Mat};
    use crate::config::{with_suffix, write_checkpoint};
    use candle_core::Device;
    use splatforge_nn::weights::{RandomRecorder, SeededInit, TensorFile};
    use splatforge_splat::rng::SplitMix64;
    use std::collections::BTreeMap;

    /// Distinct random voxels of a `res`³ grid, `n` per batch item.
    fn random_latent(seed: u64, batches: u32, n: usize, res: u32, channels: usize) -> SparseTensor {
        let mut rng = SplitMix64::new(seed);
        let mut coords = Vec::new();
        for b in 0..batches {
            let mut seen = std::collections::HashSet::new();
            while seen.len() < n {
                let c = [0; 3].map(|_| rng.below(res as usize) as u32);
                if seen.insert(c) {
                    coords.push([b, c[0], c[1], c[2]]);
                }
            }
        }
        let feats: Vec<f32> = (0..coords.len() * channels)
            .map(|_| rng.normal() as f32)
            .collect();
        let rows = coords.len();
        SparseTensor::new(
            coords,
            Tensor::from_vec(feats, (rows, channels), &Device::Cpu).unwrap(),
        )
        .unwrap()
    }

    fn official_names(blocks: usize) -> Vec<String> {
        let mut names = vec![
            "input_layer.weight",
            "input_layer.bias",
            "out_layer.weight",
            "out_layer.bias",
            "offset_perturbation",
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        for i in 0..blocks {
            for layer in ["attn.to_qkv", "attn.to_out", "mlp.mlp.0", "mlp.mlp.2"] {
                for p in ["weight", "bias"] {
                    names.push(format!("blocks.{i}.{layer}.{p}"));
                }
            }
        }
        names.sort();
        names
    }

    #[test]
    fn config_parses_the_official_json() {
        // `models.decoder.args` of configs/vae/slat_vae_enc_dec_gs_swin8_B_64l8_fp16.json.
        let json = r#"{
            "resolution": 64, "model_channels": 768, "latent_channels": 8, "num_blocks": 12,
            "num_heads": 12, "mlp_ratio": 4, "attn_mode": "swin", "window_size": 8, "use_fp16": true,
            "representation_config": {
                "lr": {"_xyz": 1.0, "_features_dc": 1.0, "_opacity": 1.0, "_scaling": 1.0, "_rotation": 0.1},
                "perturb_offset": true, "voxel_size": 1.5, "num_gaussians": 32,
                "2d_filter_kernel_size": 0.1, "3d_filter_kernel_size": 9e-4,
                "scaling_bias": 4e-3, "opacity_bias": 0.1, "scaling_activation": "softplus"
            }
        }"#;
        let parsed: GaussianDecoderConfig = serde_json::from_str(json).unwrap();
        assert_eq!(parsed, GaussianDecoderConfig::trellis_image_large());
        assert_eq!(parsed.heads(), 12);
    }

    #[test]
    fn refuses_unsupported_modes() {
        let mut config = GaussianDecoderConfig::tiny();
        config.attn_mode = "shift_window".into();
        assert!(config.check().is_err());
        let mut config = GaussianDecoderConfig::tiny();
        config.pe_mode = "rope".into();
        assert!(config.check().is_err());
        let mut config = GaussianDecoderConfig::tiny();
        config.num_heads = Some(3);
        assert!(config.check().is_err());
    }

    #[test]
    fn full_size_has_the_official_names_and_shapes() {
        let recorder = RandomRecorder::new(1);
        GaussianDecoder::load(
            GaussianDecoderConfig::trellis_image_large(),
            DType::F32,
            recorder.var_builder(),
        )
        .unwrap();
        let recipes = recorder.recipes();
        assert_eq!(
            recipes.keys().cloned().collect::<Vec<_>>(),
            official_names(12)
        );
        assert_eq!(recipes["input_layer.weight"].dims(), [768, 8]);
        assert_eq!(recipes["blocks.11.attn.to_qkv.weight"].dims(), [2304, 768]);
        assert_eq!(recipes["blocks.0.mlp.mlp.0.weight"].dims(), [3072, 768]);
        assert_eq!(recipes["out_layer.weight"].dims(), [448, 768]);
        assert_eq!(recipes["offset_perturbation"].dims(), [32, 3]);
    }

    #[test]
    fn loads_a_random_checkpoint_by_the_official_names() {
        let config = GaussianDecoderConfig::tiny();
        let recorder = RandomRecorder::new(4);
        GaussianDecoder::load(config.clone(), DType::F32, recorder.var_builder()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let stem = dir.path().join("ckpts/slat_dec_gs_tiny");
        write_checkpoint(
            &stem,
            CHECKPOINT_CLASS,
            &config,
            &recorder.recipes(),
            DType::F32,
        )
        .unwrap();
        let file = TensorFile::open(&with_suffix(&stem, "safetensors")).unwrap();
        assert_eq!(file.names(), official_names(config.num_blocks).as_slice());

        let from_file = GaussianDecoder::from_checkpoint(&stem, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(from_file.config(), &config);
        let seeded =
            GaussianDecoder::load(config, DType::F32, SeededInit::new(4).var_builder()).unwrap();
        let latent = random_latent(3, 1, 40, 16, 8);
        let a = from_file.forward(&latent).unwrap().feats;
        let b = seeded.forward(&latent).unwrap().feats;
        let diff = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(diff, 0.0);
    }

    #[test]
    fn checkpoint_of_another_class_is_refused() {
        let config = GaussianDecoderConfig::tiny();
        let recorder = RandomRecorder::new(4);
        GaussianDecoder::load(config.clone(), DType::F32, recorder.var_builder()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let stem = dir.path().join("decoder");
        write_checkpoint(
            &stem,
            ELASTIC_CHECKPOINT_CLASS,
            &config,
            &recorder.recipes(),
            DType::F16,
        )
        .unwrap();
        assert!(GaussianDecoder::from_checkpoint(&stem, DType::F32, &Device::Cpu).is_ok());
        write_checkpoint(
            &stem,
            "SLatMeshDecoder",
            &config,
            &recorder.recipes(),
            DType::F16,
        )
        .unwrap();
        let err = GaussianDecoder::from_checkpoint(&stem, DType::F32, &Device::Cpu).unwrap_err();
        assert!(err.to_string().contains("SLatMeshDecoder"), "{err}");
    }

    fn gelu_tanh(v: f64) -> f64 {
        0.5 * v * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v.powi(3))).tanh())
    }

    /// The decoder written out in f64: input layer + APE, blocks with brute-force windowed
    /// attention (voxels of one batch item in one shifted window cube), output norm and layer.
    fn reference(
        w: &BTreeMap<String, Tensor>,
        cfg: &GaussianDecoderConfig,
        latent: &SparseTensor,
    ) -> Mat {
        let c = cfg.model_channels;
        let heads = cfg.heads();
        let d = c / heads;
        let freq_dim = c / 3 / 2;
        let ape = Mat {
            rows: latent.len(),
            cols: c,
            v: latent
                .coords
                .iter()
                .flat_map(|p| {
                    let mut row = vec![0.0; c];
                    for axis in 0..3 {
                        for j in 0..freq_dim {
                            let arg =
                                p[axis + 1] as f64 * 10000f64.powf(-(j as f64) / freq_dim as f64);
                            row[axis * 2 * freq_dim + j] = arg.sin();
                            row[axis * 2 * freq_dim + freq_dim + j] = arg.cos();
                        }
                    }
                    row
                })
                .collect(),
        };
        let mut x = lin(w, "input_layer", &Mat::of(&latent.feats)).add(&ape);
        for i in 0..cfg.num_blocks {
            let shift = if i % 2 == 1 { cfg.window_size / 2 } else { 0 };
            let cell = |p: &[u32; 4]| {
                [
                    p[0],
                    (p[1] + shift) / cfg.window_size,
                    (p[2] + shift) / cfg.window_size,
                    (p[3] + shift) / cfg.window_size,
                ]
            };
            let qkv = lin(
                w,
                &format!("blocks.{i}.attn.to_qkv"),
                &layer_norm(&x, 1e-6, None),
            );
            let mut attn = vec![0.0; latent.len() * c];
            for r in 0..latent.len() {
                let mates: Vec<usize> = (0..latent.len())
                    .filter(|&s| cell(&latent.coords[s]) == cell(&latent.coords[r]))
                    .collect();
                for h in 0..heads {
                    let q = &qkv.row(r)[h * d..(h + 1) * d];
                    let scores: Vec<f64> = mates
                        .iter()
                        .map(|&s| {
                            q.iter()
                                .zip(&qkv.row(s)[c + h * d..c + (h + 1) * d])
                                .map(|(a, b)| a * b)
                                .sum::<f64>()
                                / (d as f64).sqrt()
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let total: f64 = e.iter().sum();
                    for k in 0..d {
                        attn[r * c + h * d + k] = mates
                            .iter()
                            .zip(&e)
                            .map(|(&s, p)| p * qkv.row(s)[2 * c + h * d + k])
                            .sum::<f64>()
                            / total;
                    }
                }
            }
            let attn = Mat {
                rows: latent.len(),
                cols: c,
                v: attn,
            };
            x = x.add(&lin(w, &format!("blocks.{i}.attn.to_out"), &attn));
            let hidden = lin(
                w,
                &format!("blocks.{i}.mlp.mlp.0"),
                &layer_norm(&x, 1e-6, None),
            )
            .map_rows(|r| r.iter().map(|v| gelu_tanh(*v)).collect());
            x = x.add(&lin(w, &format!("blocks.{i}.mlp.mlp.2"), &hidden));
        }
        lin(w, "out_layer", &layer_norm(&x, 1e-5, None))
    }

    #[test]
    fn forward_follows_its_equations() {
        let config = GaussianDecoderConfig::tiny();
        let init = SeededInit::new(8);
        let decoder =
            GaussianDecoder::load(config.clone(), DType::F32, init.var_builder()).unwrap();
        // Two batch items in a 16³ grid with window 4: many windows of many lengths, both shifts.
        let latent = random_latent(21, 2, 90, 16, 8);
        let ours = decoder.forward(&latent).unwrap();
        assert_eq!(ours.coords, latent.coords);
        let want = reference(&init.tensors(), &config, &latent);
        let diff = max_diff(&ours.feats, &want);
        assert!(diff < 1e-4, "max |Δ| {diff}");
    }

    #[test]
    fn decodes_num_gaussians_per_voxel_per_item() {
        let config = GaussianDecoderConfig::tiny();
        let decoder =
            GaussianDecoder::load(config, DType::F32, SeededInit::new(2).var_builder()).unwrap();
        let latent = random_latent(5, 2, 30, 16, 8);
        let items = decoder.decode(&latent).unwrap();
        assert_eq!(
            items.iter().map(Gaussians::len).collect::<Vec<_>>(),
            [120, 120]
        );
        assert!(items.iter().all(|g| g.check_consistent().is_ok()));
        let wrong = random_latent(5, 1, 4, 16, 7);
        assert!(decoder.forward(&wrong).is_err());
        let empty = SparseTensor::new(
            Vec::new(),
            Tensor::zeros((0, 8), DType::F32, &Device::Cpu).unwrap(),
        )
        .unwrap();
        assert!(decoder.decode(&empty).unwrap().is_empty());
    }
}
