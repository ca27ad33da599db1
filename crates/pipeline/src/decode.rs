//! VAE decoding of the generated latents, with diffusers-style memory
//! savers: *slicing* here (the views decoded one at a time), *tiling* in the
//! diffusion crate's VAE (overlapping tiles blended with cosine ramps; set
//! from `diffusion.vae_tiling` when the pipeline loads, and only for views
//! larger than a tile, so it changes nothing at 256² with 256-pixel tiles).

use candle_core::Tensor;
use splatforge_diffusion::{DiffusionError, MvDreamPipeline};

use crate::config::DiffusionConfig;

/// Decodes scaled latents `[B, C, h, w]` to images `[B, 3, H, W]` in [0, 1],
/// f32 on the CPU, one view at a time with `vae_slicing`.
pub fn decode(
    pipe: &MvDreamPipeline,
    latents: &Tensor,
    cfg: &DiffusionConfig,
) -> Result<Tensor, DiffusionError> {
    let b = latents.dim(0)?;
    if !cfg.vae_slicing || b < 2 {
        return pipe.decode_latents(latents);
    }
    let views = (0..b)
        .map(|i| pipe.decode_latents(&latents.narrow(0, i, 1)?))
        .collect::<Result<Vec<_>, DiffusionError>>()?;
    Ok(Tensor::cat(&views, 0)?)
}
