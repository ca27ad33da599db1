//! The `matte` stage: which pixels are the object, before TRELLIS' crop. TRELLIS'
//! `preprocess_image` keeps an image's alpha when it has one and runs `rembg` otherwise;
//! here an opaque picture gets the profile's matte: BiRefNet (Swin-L or the lite Swin-T,
//! [`splatforge_matte`]) on the pipeline's device, or, chosen explicitly, the
//! plain-background threshold ([`plain_background_alpha`]).

use image::RgbaImage;
use splatforge_matte::Matte;

use crate::preprocess::{has_alpha, plain_background_alpha};
use crate::stage1::PLAIN_BACKGROUND_TOLERANCE;
use crate::Result;

/// The folder inside a TRELLIS folder where `matte: birefnet` looks for its weights
/// (`model.safetensors`, the Hugging Face layout; [`crate::pipeline::write_random_trellis`]
/// writes one).
pub const BIREFNET_FOLDER: &str = "birefnet";
/// The same for `matte: birefnet-lite`.
pub const BIREFNET_LITE_FOLDER: &str = "birefnet_lite";

/// How an opaque picture's foreground is found.
#[derive(Debug, Clone)]
pub enum ForegroundMatte {
    /// The plain-background threshold: no network.
    Threshold,
    /// A BiRefNet; `name` says which (`birefnet`, `birefnet-lite`), for reports.
    Network {
        matte: Box<Matte>,
        name: &'static str,
    },
}

/// What [`ForegroundMatte::apply`] used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlphaSource {
    /// The image's own alpha (a pixel is not opaque).
    Image,
    /// The plain-background threshold.
    Threshold,
    /// The matte network.
    Network,
}

impl ForegroundMatte {
    /// `threshold`, or the network's name.
    pub fn name(&self) -> &'static str {
        match self {
            ForegroundMatte::Threshold => "threshold",
            ForegroundMatte::Network { name, .. } => name,
        }
    }

    /// `image` with the alpha TRELLIS' crop reads: its own when any pixel is not opaque,
    /// else this matte's, at the image's resolution (`round(255·α)` for the network's).
    pub fn apply(&self, image: &RgbaImage) -> Result<(RgbaImage, AlphaSource)> {
        if has_alpha(image) {
            return Ok((image.clone(), AlphaSource::Image));
        }
        match self {
            ForegroundMatte::Threshold => Ok((
                plain_background_alpha(image, PLAIN_BACKGROUND_TOLERANCE),
                AlphaSource::Threshold,
            )),
            ForegroundMatte::Network { matte, .. } => {
                let rgb = image::DynamicImage::ImageRgba8(image.clone()).to_rgb8();
                let alpha = matte.alpha(&rgb)?;
                let mut out = image.clone();
                for (p, a) in out.pixels_mut().zip(alpha) {
                    p.0[3] = (a.clamp(0.0, 1.0) * 255.0).round() as u8;
                }
                Ok((out, AlphaSource::Network))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use image::Rgba;
    use splatforge_matte::{BiRefNet, BiRefNetConfig};
    use splatforge_nn::weights::SeededInit;

    fn disc_on_white() -> RgbaImage {
        RgbaImage::from_fn(40, 30, |x, y| {
            let (dx, dy) = (x as f32 - 20.0, y as f32 - 15.0);
            Rgba(if dx * dx + dy * dy < 64.0 {
                [200, 30, 30, 255]
            } else {
                [250, 250, 250, 255]
            })
        })
    }

    #[test]
    fn real_alpha_is_kept_and_opaque_pictures_get_the_matte() {
        let tiny =
            BiRefNet::load(&BiRefNetConfig::tiny(), SeededInit::new(3).var_builder()).unwrap();
        let network = ForegroundMatte::Network {
            matte: Box::new(Matte::new(tiny, DType::F32, &Device::Cpu)),
            name: "birefnet",
        };
        let mut cutout = disc_on_white();
        cutout.put_pixel(0, 0, Rgba([250, 250, 250, 0]));
        for matte in [&ForegroundMatte::Threshold, &network] {
            let (kept, source) = matte.apply(&cutout).unwrap();
            assert_eq!((kept, source), (cutout.clone(), AlphaSource::Image));
        }
        let (thresholded, source) = ForegroundMatte::Threshold.apply(&disc_on_white()).unwrap();
        assert_eq!(source, AlphaSource::Threshold);
        assert_eq!(thresholded.get_pixel(20, 15).0[3], 255);
        assert_eq!(thresholded.get_pixel(1, 1).0[3], 0);
        let (matted, source) = network.apply(&disc_on_white()).unwrap();
        assert_eq!(source, AlphaSource::Network);
        assert_eq!(matted.dimensions(), (40, 30), "the input's resolution");
        let alphas: std::collections::BTreeSet<u8> = matted.pixels().map(|p| p.0[3]).collect();
        assert!(alphas.len() > 1, "a constant matte");
        assert_eq!(
            matted.get_pixel(20, 15).0[..3],
            [200, 30, 30],
            "colour unchanged"
        );
        assert_eq!(network.name(), "birefnet");
    }
}
