//! Stage 1 of `TrellisImageTo3DPipeline`, image → occupied voxels: `preprocess_image`,
//! `get_cond` (DINOv2 tokens, zeros as the negative condition), `sample_sparse_structure`
//! (flow-Euler sampling of the 16³ structure latent, the decoder, `logits > 0`).
//!
//! # Files
//! A TRELLIS folder as published (`pipeline.json`, `ckpts/<name>.json` +
//! `ckpts/<name>.safetensors`) and a DINOv2 checkpoint (torch hub `.pth` / its safetensors
//! conversion, or Hugging Face `model.safetensors`, see [`crate::dinov2`]). A JSON
//! [`Dinov2Config`] next to the DINOv2 file (`<stem>.json`) overrides the ViT-L/14-reg
//! shape (our random-weight models use it; the published checkpoints have none).
//! [`write_random_stage1`] writes such a folder with random weights under the real names.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use image::{RgbImage, RgbaImage};
use serde::{Deserialize, Serialize};
use splatforge_nn::weights::{RandomRecorder, RandomTensor};

use crate::config::{
    bad_file, checkpoint_weights, with_suffix, write_atomically, write_checkpoint, Checkpoint,
    PipelineConfig,
};
use crate::dinov2::{Dinov2, Dinov2Config, DINOV2_HUB_CHECKPOINT};
use crate::preprocess::{cutout, dinov2_pixels, has_alpha, on_black, plain_background_alpha};
use crate::sampler::SamplerParams;
use crate::ss_decoder::{
    self, occupied_coords, SparseStructureDecoder, SparseStructureDecoderConfig,
};
use crate::ss_flow::{self, SparseStructureFlowConfig, SparseStructureFlowModel};
use crate::{Result, TrellisError};

/// Colour difference (0–255) above which a pixel of an opaque picture counts as foreground
/// in [`plain_background_alpha`].
pub const PLAIN_BACKGROUND_TOLERANCE: u8 = 24;

/// The image tokens of one picture and the negative condition (`get_cond`).
#[derive(Debug, Clone)]
pub struct Conditioning {
    /// `[1, tokens, C]` f32: DINOv2's normalised tokens.
    pub cond: Tensor,
    /// Zeros of the same shape.
    pub neg_cond: Tensor,
}

/// The stage-1 models on one device.
#[derive(Debug, Clone)]
pub struct Stage1 {
    pipeline: PipelineConfig,
    dinov2: Dinov2,
    flow: SparseStructureFlowModel,
    decoder: SparseStructureDecoder,
    device: Device,
}

impl Stage1 {
    /// Loads `pipeline.json`, the flow model and the decoder from the TRELLIS folder `dir`
    /// and DINOv2 from `dinov2`; transformer and convolution blocks in `dtype`.
    pub fn load(dir: &Path, dinov2: &Path, dtype: DType, device: &Device) -> Result<Self> {
        splatforge_nn::configure_device(device)?;
        let pipeline = PipelineConfig::read(&dir.join("pipeline.json"))?;
        let flow_stem = pipeline.checkpoint_stem(dir, "sparse_structure_flow_model")?;
        let flow_config =
            Checkpoint::<SparseStructureFlowConfig>::read(&flow_stem, ss_flow::CLASS)?.args;
        let flow = SparseStructureFlowModel::load(
            &flow_config,
            checkpoint_weights(&flow_stem, dtype, device)?,
        )?;
        let dec_stem = pipeline.checkpoint_stem(dir, "sparse_structure_decoder")?;
        let dec_config =
            Checkpoint::<SparseStructureDecoderConfig>::read(&dec_stem, ss_decoder::CLASS)?.args;
        let decoder = SparseStructureDecoder::load(
            &dec_config,
            checkpoint_weights(&dec_stem, dtype, device)?,
        )?;
        let dinov2_config = read_dinov2_config(dinov2)?;
        if dinov2_config.embed_dim != flow_config.cond_channels {
            return Err(TrellisError::Config(format!(
                "DINOv2 gives {}-wide tokens, the flow model cross-attends to {}",
                dinov2_config.embed_dim, flow_config.cond_channels
            )));
        }
        let dinov2 = Dinov2::load_file(&dinov2_config, dinov2, DType::F32, device)?;
        Ok(Self {
            pipeline,
            dinov2,
            flow,
            decoder,
            device: device.clone(),
        })
    }

    pub fn pipeline(&self) -> &PipelineConfig {
        &self.pipeline
    }

    pub fn dinov2(&self) -> &Dinov2 {
        &self.dinov2
    }

    pub fn flow(&self) -> &SparseStructureFlowModel {
        &self.flow
    }

    pub fn decoder(&self) -> &SparseStructureDecoder {
        &self.decoder
    }

    /// `preprocess_image` + `get_cond`: the image's alpha (or, for an opaque picture, the
    /// plain-background matte), the 518² crop, DINOv2 tokens.
    pub fn condition(&self, image: &RgbaImage) -> Result<Conditioning> {
        self.encode(&prepare(image)?)
    }

    /// `get_cond` of a prepared 518² picture (see [`prepare`]): DINOv2 tokens, zeros as
    /// the negative condition.
    pub fn encode(&self, prepared: &RgbImage) -> Result<Conditioning> {
        let pixels = dinov2_pixels(prepared, &self.device)?;
        let cond = self.dinov2.encode(&pixels)?;
        let neg_cond = cond.zeros_like()?;
        Ok(Conditioning { cond, neg_cond })
    }

    /// `sample_sparse_structure` for one sample: noise from `seed`, the sampler with
    /// `params` (the pipeline's by default, see [`Self::pipeline`]), the decoder → the
    /// occupied voxels `(0, x, y, z)` in row-major order.
    pub fn sample_structure(
        &self,
        conditioning: &Conditioning,
        seed: u64,
        params: &SamplerParams,
        progress: impl FnMut(usize, usize) -> ControlFlow<()>,
    ) -> Result<Vec<[u32; 4]>> {
        let latent = self.sample_latent(conditioning, &self.noise(seed)?, params, progress)?;
        self.decode_structure(&latent)
    }

    /// The shape of the structure latent (and of its noise): `[1, C, R, R, R]`.
    pub fn latent_shape(&self) -> [usize; 5] {
        let c = self.flow.config();
        let r = c.resolution;
        [1, c.in_channels, r, r, r]
    }

    /// The structure latent's noise drawn from `seed`: [`Self::latent_shape`], f32, the
    /// first values of `seed`'s stream (see [`crate::pipeline::slat_noise_seed`]).
    pub fn noise(&self, seed: u64) -> Result<Tensor> {
        Ok(splatforge_nn::rng::randn(
            seed,
            &self.latent_shape(),
            DType::F32,
            &self.device,
        )?)
    }

    /// The sampling half of [`Self::sample_structure`]: from `noise` (f32 of
    /// [`Self::latent_shape`], e.g. [`Self::noise`]), flow-Euler → the structure latent
    /// `[1, C, R, R, R]`.
    pub fn sample_latent(
        &self,
        conditioning: &Conditioning,
        noise: &Tensor,
        params: &SamplerParams,
        progress: impl FnMut(usize, usize) -> ControlFlow<()>,
    ) -> Result<Tensor> {
        let sampler = &self.pipeline.args.sparse_structure_sampler.args;
        sampler.sample(
            &self.flow,
            noise,
            &conditioning.cond,
            &conditioning.neg_cond,
            params,
            progress,
        )
    }

    /// The decoding half of [`Self::sample_structure`]: the latent `[1, C, R, R, R]` →
    /// the occupied voxels `(0, x, y, z)` (`logits > 0`) in row-major order.
    pub fn decode_structure(&self, latent: &Tensor) -> Result<Vec<[u32; 4]>> {
        occupied_coords(&self.decoder.forward(latent)?)
    }

    /// The side of the occupancy grid the decoder gives: the latent's side doubled by each
    /// upsampling level.
    pub fn occupancy_resolution(&self) -> usize {
        self.flow.config().resolution << self.decoder.upsampling_levels()
    }

    /// Image → occupied voxels with the pipeline's sampler parameters.
    pub fn run(
        &self,
        image: &RgbaImage,
        seed: u64,
        progress: impl FnMut(usize, usize) -> ControlFlow<()>,
    ) -> Result<Vec<[u32; 4]>> {
        let conditioning = self.condition(image)?;
        let params = self.pipeline.args.sparse_structure_sampler.params;
        self.sample_structure(&conditioning, seed, &params, progress)
    }
}

/// `preprocess_image` of a picture: its alpha (or, for an opaque picture, the
/// plain-background matte), the crop around the object, 518² Lanczos, premultiplied on black.
pub fn prepare(image: &RgbaImage) -> Result<RgbImage> {
    Ok(on_black(&prepare_cutout(image)?))
}

/// [`prepare`] before the colour goes on black: the 518² RGBA cut-out.
pub fn prepare_cutout(image: &RgbaImage) -> Result<RgbaImage> {
    if has_alpha(image) {
        cutout(image)
    } else {
        cutout(&plain_background_alpha(image, PLAIN_BACKGROUND_TOLERANCE))
    }
}

/// The DINOv2 shape for the weights at `weights`: `<stem>.json` (a [`Dinov2Config`]), else
/// a Hugging Face `config.json` beside the weights, else ViT-L/14 with registers.
pub(crate) fn read_dinov2_config(weights: &Path) -> Result<Dinov2Config> {
    let ours = weights.with_extension("json");
    if ours.is_file() {
        let text = std::fs::read_to_string(&ours).map_err(|e| bad_file(&ours, e))?;
        return serde_json::from_str(&text)
            .map_err(|e| bad_file(&ours, format!("not a DINOv2 shape: {e}")));
    }
    let hf = weights.with_file_name("config.json");
    if hf.is_file() {
        let text = std::fs::read_to_string(&hf).map_err(|e| bad_file(&hf, e))?;
        return Dinov2Config::from_hugging_face(&text).map_err(|e| bad_file(&hf, e));
    }
    Ok(Dinov2Config::vitl14_reg())
}

/// The sizes of random-weight stage-1 models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ModelSize {
    /// Small enough for CPU tests: 8³ latent, tiny widths, DINOv2 32 wide at 518².
    Tiny,
    /// The published shapes (timing runs).
    Full,
}

/// The shapes [`write_random_stage1`] writes at `size`.
pub fn stage1_configs(
    size: ModelSize,
) -> (
    Dinov2Config,
    SparseStructureFlowConfig,
    SparseStructureDecoderConfig,
) {
    match size {
        ModelSize::Full => (
            Dinov2Config::vitl14_reg(),
            SparseStructureFlowConfig::image_large(),
            SparseStructureDecoderConfig::image_large(),
        ),
        ModelSize::Tiny => {
            let dinov2 = Dinov2Config {
                patch_size: 14,
                image_size: 518,
                ..Dinov2Config::tiny()
            };
            let flow = SparseStructureFlowConfig {
                cond_channels: dinov2.embed_dim,
                ..SparseStructureFlowConfig::tiny()
            };
            (dinov2, flow, SparseStructureDecoderConfig::tiny())
        }
    }
}

/// Writes a stage-1 TRELLIS folder with random weights under the real names and layout:
/// the published `pipeline.json`, `ckpts/ss_flow_img_dit_L_16l8_fp16.{json,safetensors}`,
/// `ckpts/ss_dec_conv3d_16l8_fp16.{json,safetensors}` (stored as `dtype`), and DINOv2 as
/// `dinov2_vitl14_reg4_pretrain.safetensors` (torch-hub names, f32) with its shape in
/// `dinov2_vitl14_reg4_pretrain.json`. Returns the DINOv2 path.
pub fn write_random_stage1(
    dir: &Path,
    size: ModelSize,
    dtype: DType,
    seed: u64,
) -> Result<PathBuf> {
    let (dinov2, flow, decoder) = stage1_configs(size);
    let pipeline = PipelineConfig::image_large();
    std::fs::create_dir_all(dir).map_err(|e| bad_file(dir, e))?;
    let json =
        serde_json::to_string_pretty(&pipeline).map_err(|e| TrellisError::Config(e.to_string()))?;
    write_atomically(&dir.join("pipeline.json"), json.as_bytes())?;

    let recorder = RandomRecorder::new(seed);
    SparseStructureFlowModel::load(&flow, recorder.var_builder())?;
    let mut tensors = recorder.recipes();
    let pos_emb = SparseStructureFlowModel::position_embedding(&flow, &Device::Cpu)?;
    let values = pos_emb.flatten_all()?.to_vec1::<f32>()?;
    tensors.insert(
        "pos_emb".to_string(),
        RandomTensor::given(pos_emb.dims(), values)
            .map_err(|e| TrellisError::InvalidArgument(e.to_string()))?,
    );
    write_checkpoint(
        &pipeline.checkpoint_stem(dir, "sparse_structure_flow_model")?,
        ss_flow::CLASS,
        &flow,
        &tensors,
        dtype,
    )?;

    let recorder = RandomRecorder::new(seed.wrapping_add(1));
    SparseStructureDecoder::load(&decoder, recorder.var_builder())?;
    write_checkpoint(
        &pipeline.checkpoint_stem(dir, "sparse_structure_decoder")?,
        ss_decoder::CLASS,
        &decoder,
        &recorder.recipes(),
        dtype,
    )?;

    let recorder = RandomRecorder::new(seed.wrapping_add(2));
    Dinov2::load(&dinov2, recorder.var_builder())?;
    let stem = dir.join(Path::new(DINOV2_HUB_CHECKPOINT).with_extension(""));
    let weights = with_suffix(&stem, "safetensors");
    splatforge_nn::weights::save_random(&recorder.recipes(), DType::F32, &weights)
        .map_err(|e| bad_file(&weights, e))?;
    let shape =
        serde_json::to_string_pretty(&dinov2).map_err(|e| TrellisError::Config(e.to_string()))?;
    write_atomically(&with_suffix(&stem, "json"), shape.as_bytes())?;
    Ok(weights)
}

/// The structure decoder's output bias (`out_layer.2`, the conv that gives the logits).
const DECODER_OUTPUT_BIAS: &str = "out_layer.2.bias";

/// What [`calibrate_random_occupancy`] did.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct OccupancyCalibration {
    /// Occupied voxels before: random weights put about half of the grid above 0.
    pub voxels_before: usize,
    /// Occupied voxels after, decoded again from the rewritten (rounded) weights.
    pub voxels_after: usize,
    /// The logit subtracted from the decoder's output bias.
    pub shift: f32,
}

/// Shifts the structure decoder's output bias in a folder written by
/// [`write_random_stage1`] (same `size`, `dtype` and weights `seed`) so that `image`, sampled
/// with `sample_seed` and the pipeline's sampler, decodes to about `voxels` occupied voxels.
///
/// Why: random weights occupy about half of the 64³ grid (~130k voxels), while the assets
/// TRELLIS-image-large makes occupy a few percent of it (around 20k voxels). The cost of
/// stage 2 and of the Gaussian decoder grows with the voxel count (attention over the
/// voxels), so timings on uncalibrated random weights would measure far more work than a
/// real image costs. The bias adds to every logit, so moving it by the logit between the
/// `voxels`-th and the next largest value sets the count exactly (up to the stored
/// precision's rounding); nothing else in the weights changes, and other seeds and images
/// land near the same count. `device`/`run_dtype`: where and in which precision stage 1 runs.
#[allow(clippy::too_many_arguments)]
pub fn calibrate_random_occupancy(
    dir: &Path,
    dinov2: &Path,
    size: ModelSize,
    dtype: DType,
    seed: u64,
    image: &RgbaImage,
    sample_seed: u64,
    voxels: usize,
    device: &Device,
    run_dtype: DType,
) -> Result<OccupancyCalibration> {
    let decode_logits = || -> Result<Vec<f32>> {
        let stage1 = Stage1::load(dir, dinov2, run_dtype, device)?;
        let conditioning = stage1.condition(image)?;
        let params = stage1.pipeline().args.sparse_structure_sampler.params;
        let noise = stage1.noise(sample_seed)?;
        let latent = stage1.sample_latent(&conditioning, &noise, &params, |_, _| {
            ControlFlow::Continue(())
        })?;
        Ok(stage1
            .decoder()
            .forward(&latent)?
            .narrow(1, 0, 1)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?)
    };
    let mut logits = decode_logits()?;
    if voxels == 0 || voxels >= logits.len() {
        return Err(TrellisError::InvalidArgument(format!(
            "voxels must be between 1 and {} (the grid), not {voxels}",
            logits.len() - 1
        )));
    }
    let voxels_before = logits.iter().filter(|v| **v > 0.0).count();
    let descending = |a: &f32, b: &f32| b.total_cmp(a);
    let (_, kth, rest) = logits.select_nth_unstable_by(voxels - 1, descending);
    let kth = *kth;
    let next = rest
        .iter()
        .copied()
        .max_by(|a, b| a.total_cmp(b))
        .unwrap_or(kth);
    let shift = 0.5 * (kth + next);

    let (_, _, decoder) = stage1_configs(size);
    let pipeline = PipelineConfig::read(&dir.join("pipeline.json"))?;
    let recorder = RandomRecorder::new(seed.wrapping_add(1));
    SparseStructureDecoder::load(&decoder, recorder.var_builder())?;
    let mut tensors = recorder.recipes();
    let bias = tensors.get(DECODER_OUTPUT_BIAS).ok_or_else(|| {
        TrellisError::Config(format!(
            "the structure decoder has no {DECODER_OUTPUT_BIAS}"
        ))
    })?;
    let shifted = bias.values().into_iter().map(|b| b - shift).collect();
    let shifted = RandomTensor::given(bias.dims(), shifted)
        .map_err(|e| TrellisError::InvalidArgument(e.to_string()))?;
    tensors.insert(DECODER_OUTPUT_BIAS.to_string(), shifted);
    write_checkpoint(
        &pipeline.checkpoint_stem(dir, "sparse_structure_decoder")?,
        ss_decoder::CLASS,
        &decoder,
        &tensors,
        dtype,
    )?;
    logits = decode_logits()?;
    Ok(OccupancyCalibration {
        voxels_before,
        voxels_after: logits.iter().filter(|v| **v > 0.0).count(),
        shift,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgba;

    fn ghost_like() -> RgbaImage {
        RgbaImage::from_fn(64, 48, |x, y| {
            let (dx, dy) = (x as f32 - 30.0, y as f32 - 24.0);
            if dx * dx + dy * dy < 300.0 {
                Rgba([240, 240, 250, 255])
            } else {
                Rgba([0, 0, 0, 0])
            }
        })
    }

    #[test]
    fn calibration_sets_the_occupied_voxel_count() {
        let dir = tempfile::tempdir().unwrap();
        let dinov2 = write_random_stage1(dir.path(), ModelSize::Tiny, DType::F32, 9).unwrap();
        let calibrate = |voxels| {
            calibrate_random_occupancy(
                dir.path(),
                &dinov2,
                ModelSize::Tiny,
                DType::F32,
                9,
                &ghost_like(),
                42,
                voxels,
                &Device::Cpu,
                DType::F32,
            )
        };
        assert!(calibrate(0).is_err());
        assert!(calibrate(16 * 16 * 16).is_err());
        let c = calibrate(300).unwrap();
        assert!(c.voxels_before > 1000, "{c:?}");
        assert_eq!(c.voxels_after, 300, "{c:?}");
        // The folder itself now decodes to that count, and another seed lands near it.
        let stage1 = Stage1::load(dir.path(), &dinov2, DType::F32, &Device::Cpu).unwrap();
        let run = |seed| {
            stage1
                .run(&ghost_like(), seed, |_, _| ControlFlow::Continue(()))
                .unwrap()
                .len()
        };
        assert_eq!(run(42), 300);
        let other = run(7);
        assert!((150..=600).contains(&other), "seed 7: {other} voxels");
    }

    #[test]
    fn tiny_stage1_runs_image_to_voxels_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let dinov2 = write_random_stage1(dir.path(), ModelSize::Tiny, DType::F16, 5).unwrap();
        for f in [
            "pipeline.json",
            "ckpts/ss_flow_img_dit_L_16l8_fp16.json",
            "ckpts/ss_flow_img_dit_L_16l8_fp16.safetensors",
            "ckpts/ss_dec_conv3d_16l8_fp16.json",
            "ckpts/ss_dec_conv3d_16l8_fp16.safetensors",
        ] {
            assert!(dir.path().join(f).is_file(), "{f}");
        }
        let stage1 = Stage1::load(dir.path(), &dinov2, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(
            stage1.pipeline().args.sparse_structure_sampler.params.steps,
            25
        );
        // The official loader is strict: the flow checkpoint carries the `pos_emb` buffer,
        // equal (to f16 rounding) to the embedding we compute.
        let flow = candle_core::safetensors::load(
            dir.path()
                .join("ckpts/ss_flow_img_dit_L_16l8_fp16.safetensors"),
            &Device::Cpu,
        )
        .unwrap();
        let stored = flow["pos_emb"].to_dtype(DType::F32).unwrap();
        let (_, flow_config, _) = stage1_configs(ModelSize::Tiny);
        let computed =
            SparseStructureFlowModel::position_embedding(&flow_config, &Device::Cpu).unwrap();
        assert_eq!(stored.dims(), computed.dims());
        let diff = (stored - computed)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-3, "max |Δ| {diff}");

        let image = ghost_like();
        let conditioning = stage1.condition(&image).unwrap();
        assert_eq!(conditioning.cond.dims(), &[1, 1 + 4 + 37 * 37, 32]);
        let params = SamplerParams {
            steps: 3,
            ..stage1.pipeline().args.sparse_structure_sampler.params
        };
        let mut steps = Vec::new();
        let coords = stage1
            .sample_structure(&conditioning, 7, &params, |i, n| {
                steps.push((i, n));
                ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!(steps, vec![(1, 3), (2, 3), (3, 3)]);
        // 8³ latent → 16³ occupancy: coordinates in range, sorted, batch 0.
        assert!(coords
            .iter()
            .all(|c| c[0] == 0 && c[1..].iter().all(|v| *v < 16)));
        assert!(coords.windows(2).all(|w| w[0] < w[1]));
        let again = stage1
            .sample_structure(&conditioning, 7, &params, |_, _| ControlFlow::Continue(()))
            .unwrap();
        assert_eq!(coords, again, "same seed, same voxels");

        let cancelled = stage1.run(&image, 7, |_, _| ControlFlow::Break(()));
        assert!(matches!(cancelled, Err(TrellisError::Cancelled)));
        // An opaque picture on a plain background goes through the matte.
        let opaque = RgbaImage::from_fn(32, 32, |x, y| {
            if (8..24).contains(&x) && (8..24).contains(&y) {
                Rgba([10, 20, 30, 255])
            } else {
                Rgba([255, 255, 255, 255])
            }
        });
        assert!(stage1.condition(&opaque).is_ok());
    }

    #[test]
    fn full_size_models_have_the_published_shapes() {
        let (dinov2, flow, decoder) = stage1_configs(ModelSize::Full);
        let shapes = |build: &dyn Fn(&RandomRecorder)| {
            let recorder = RandomRecorder::new(0);
            build(&recorder);
            recorder
                .recipes()
                .into_iter()
                .map(|(k, v)| (k, v.dims().to_vec()))
                .collect::<std::collections::BTreeMap<_, _>>()
        };
        let f = shapes(&|r| {
            SparseStructureFlowModel::load(&flow, r.var_builder()).unwrap();
        });
        assert_eq!(f["input_layer.weight"], [1024, 8]);
        assert_eq!(f["blocks.23.cross_attn.to_kv.weight"], [2048, 1024]);
        assert_eq!(f["blocks.23.self_attn.k_rms_norm.gamma"], [16, 64]);
        assert_eq!(f["blocks.0.mlp.mlp.0.weight"], [4096, 1024]);
        assert_eq!(f["blocks.0.norm2.weight"], [1024]);
        assert_eq!(f["out_layer.weight"], [8, 1024]);
        assert!(!f.contains_key("blocks.24.norm2.weight"));
        let d = shapes(&|r| {
            SparseStructureDecoder::load(&decoder, r.var_builder()).unwrap();
        });
        assert_eq!(d["input_layer.weight"], [512, 8, 3, 3, 3]);
        assert_eq!(d["middle_block.1.conv2.weight"], [512, 512, 3, 3, 3]);
        assert_eq!(d["blocks.2.conv.weight"], [1024, 512, 3, 3, 3]);
        assert_eq!(d["blocks.5.conv.weight"], [256, 128, 3, 3, 3]);
        assert_eq!(d["blocks.7.norm2.weight"], [32]);
        assert_eq!(d["out_layer.2.weight"], [1, 32, 3, 3, 3]);
        let v = shapes(&|r| {
            Dinov2::load(&dinov2, r.var_builder()).unwrap();
        });
        assert_eq!(v["pos_embed"], [1, 1370, 1024]);
        assert_eq!(v["register_tokens"], [1, 4, 1024]);
        assert_eq!(v["patch_embed.proj.weight"], [1024, 3, 14, 14]);
        assert_eq!(v["blocks.23.attn.qkv.weight"], [3072, 1024]);
        assert_eq!(v["blocks.23.ls2.gamma"], [1024]);
    }

    #[test]
    fn mismatched_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let dinov2 = write_random_stage1(dir.path(), ModelSize::Tiny, DType::F32, 1).unwrap();
        // A DINOv2 shape that does not fit the flow model's conditioning width.
        let wide = Dinov2Config {
            embed_dim: 64,
            ..stage1_configs(ModelSize::Tiny).0
        };
        std::fs::write(
            dinov2.with_extension("json"),
            serde_json::to_string(&wide).unwrap(),
        )
        .unwrap();
        assert!(matches!(
            Stage1::load(dir.path(), &dinov2, DType::F32, &Device::Cpu),
            Err(TrellisError::Config(_))
        ));
        std::fs::remove_file(dir.path().join("ckpts/ss_dec_conv3d_16l8_fp16.safetensors")).unwrap();
        assert!(Stage1::load(dir.path(), &dinov2, DType::F32, &Device::Cpu).is_err());
    }
}
