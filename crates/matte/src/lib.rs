//! Background removal on candle: BiRefNet (ZhengPeng7/BiRefNet, MIT) → an alpha matte at the
//! input's resolution.
//!
//! Both published models load: `ZhengPeng7/BiRefNet` (Swin-L backbone, 1024²) and
//! `ZhengPeng7/BiRefNet_lite` (Swin-T), from the Hugging Face layout (`model.safetensors`)
//! or the repository's `.pth` releases; the model's shapes are read from the weights.
//!
//! ```no_run
//! use candle_core::{DType, Device};
//! use splatforge_matte::Matte;
//!
//! # fn main() -> splatforge_matte::Result<()> {
//! let matte = Matte::load("hf:ZhengPeng7/BiRefNet_lite", DType::F32, &Device::Cpu)?;
//! let photo = image::open("photo.png").expect("an image").to_rgb8();
//! let alpha: Vec<f32> = matte.alpha(&photo)?; // photo.height() × photo.width(), 0–1
//! let gray = matte.alpha_image(&photo)?; // the same as an 8-bit image
//! # let _ = (alpha, gray);
//! # Ok(())
//! # }
//! ```
//!
//! | module | what (upstream file) |
//! |---|---|
//! | [`config`] | the published settings (`config.py`) and Swin-L / Swin-T (`swin_v1.py`) |
//! | [`swin`] | the Swin v1 backbone: window attention with shift mask and relative position bias, patch merging |
//! | [`deform`] | `DeformableConv2d` (`deform_conv.py`) around the runtime's `deform_conv2d` |
//! | [`aspp`] | `ASPPDeformable` (`aspp.py`) |
//! | [`blocks`] | `BasicDecBlk`, `BasicLatBlk`, `SimpleConvs` |
//! | [`decoder`] | the decoder with image patches as input and gradient gates (`birefnet.py`) |
//! | [`birefnet`] | the network: multi-scale input, context, squeeze, decoder |
//! | [`preprocess`] | Pillow's bilinear resize to 1024², ImageNet normalisation; logits → matte |
//! | [`loading`] | local files and folders, `hf:` specs, name prefixes, shapes from the weights |
//! | [`random`] | random-weight checkpoints under the published names |

pub mod aspp;
pub mod birefnet;
pub mod blocks;
pub mod config;
pub mod decoder;
pub mod deform;
mod error;
mod layers;
pub mod loading;
pub mod preprocess;
pub mod random;
pub mod swin;

use candle_core::{DType, Device};
use image::{GrayImage, RgbImage};
use splatforge_nn::hub::HubConfig;

pub use birefnet::BiRefNet;
pub use config::{BiRefNetConfig, SwinConfig};
pub use error::{MatteError, Result};

use crate::error::bad_file;
use crate::loading::Checkpoint;

/// A loaded BiRefNet on one device, ready to matte images.
#[derive(Debug, Clone)]
pub struct Matte {
    model: BiRefNet,
    dtype: DType,
    device: Device,
}

impl Matte {
    /// Loads BiRefNet from `spec` (a `.safetensors` / `.pth` file, a folder holding
    /// `model.safetensors`, or `hf:ORG/NAME[@REVISION][:FILE]`) in `dtype` on `device`, for
    /// the published 1024² input.
    pub fn load(spec: &str, dtype: DType, device: &Device) -> Result<Self> {
        Self::load_sized(spec, BiRefNetConfig::birefnet().size, dtype, device)
    }

    /// [`Matte::load`] with another network input side (a multiple of 32; tiny test models
    /// use [`BiRefNetConfig::tiny`]'s).
    pub fn load_sized(spec: &str, size: usize, dtype: DType, device: &Device) -> Result<Self> {
        Self::load_with(spec, |_| size, dtype, device)
    }

    /// [`Matte::load`] at the input side the weights were made for: the published 1024² for
    /// a published backbone (Swin-T's 96 channels or wider), [`BiRefNetConfig::tiny`]'s for
    /// the narrower random test models (`splatforge models make-random --family birefnet
    /// --size tiny`), which would spend seconds on the CPU at 1024².
    pub fn load_native(spec: &str, dtype: DType, device: &Device) -> Result<Self> {
        let native = |backbone: &SwinConfig| {
            if backbone.embed_dim < SwinConfig::swin_v1_t().embed_dim {
                BiRefNetConfig::tiny().size
            } else {
                BiRefNetConfig::birefnet().size
            }
        };
        Self::load_with(spec, native, dtype, device)
    }

    /// Loads `spec` at the input side `size` picks for the weights' backbone.
    fn load_with(
        spec: &str,
        size: impl Fn(&SwinConfig) -> usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let path = loading::resolve(spec, &HubConfig::from_env())?;
        let checkpoint = Checkpoint::open(&path)?;
        let backbone = checkpoint.config(BiRefNetConfig::birefnet().size)?.backbone;
        let config = checkpoint.config(size(&backbone))?;
        let model = BiRefNet::load(&config, checkpoint.var_builder(dtype, device)).map_err(
            |e| match e {
                MatteError::Candle(e) => bad_file(&path, e),
                other => other,
            },
        )?;
        Ok(Self::new(model, dtype, device))
    }

    /// Wraps a model built by hand (for instance on random weights).
    pub fn new(model: BiRefNet, dtype: DType, device: &Device) -> Self {
        Self {
            model,
            dtype,
            device: device.clone(),
        }
    }

    pub fn model(&self) -> &BiRefNet {
        &self.model
    }

    /// The alpha matte of `image`: `height × width` values in 0–1, row-major.
    pub fn alpha(&self, image: &RgbImage) -> Result<Vec<f32>> {
        let size = self.model.config().size;
        let x = preprocess::network_input(image, size, self.dtype, &self.device)?;
        let logits = self.model.forward(&x)?;
        preprocess::alpha_from_logits(&logits, image.width(), image.height())
    }

    /// [`Matte::alpha`] as an 8-bit image (`round(255·α)`).
    pub fn alpha_image(&self, image: &RgbImage) -> Result<GrayImage> {
        let alpha = self.alpha(image)?;
        let bytes = alpha
            .iter()
            .map(|a| (a.clamp(0.0, 1.0) * 255.0).round() as u8)
            .collect();
        GrayImage::from_raw(image.width(), image.height(), bytes).ok_or_else(|| {
            MatteError::InvalidArgument("matte size differs from the image's".into())
        })
    }
}
