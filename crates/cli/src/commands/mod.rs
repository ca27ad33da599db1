//! One module per subcommand.

pub mod bench;
pub mod convert;
pub mod deadline;
pub mod fit;
pub mod fleet;
pub mod flux_trellis;
pub mod generate;
pub mod generate_image;
pub mod inspect;
pub mod mesh;
pub mod models;
pub mod normalize;
pub mod pipeline_generator;
pub mod render;
pub mod serve;
pub mod trellis_generator;
pub mod validate;

use std::path::Path;

use anyhow::{bail, Context, Result};
use image::DynamicImage;
use splatforge_splat::validate::{validate, ValidationConfig};
use splatforge_splat::{write_atomic, Gaussians};

/// Reads a splat file; errors name the file.
pub fn read(path: &Path) -> Result<Gaussians> {
    Ok(splatforge_splat::read_splat_file(path)?)
}

/// Refuses to pass on a splat with NaN or Inf values.
pub fn require_finite(g: &Gaussians, path: &Path) -> Result<()> {
    let report = validate(
        g,
        &ValidationConfig {
            min_gaussians: 0,
            ..Default::default()
        },
    );
    if let Some(c) = report
        .checks
        .iter()
        .find(|c| c.name == "finite" && !c.passed)
    {
        bail!("{}: {}", path.display(), c.detail);
    }
    Ok(())
}

/// Encodes an image as PNG in memory.
pub fn encode_png(img: impl Into<DynamicImage>) -> Result<Vec<u8>> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.into()
        .write_to(&mut out, image::ImageFormat::Png)
        .context("encoding PNG")?;
    Ok(out.into_inner())
}

/// Writes an image as PNG atomically (temporary file, then rename), so a
/// failure never leaves a half-written file.
pub fn write_png(path: &Path, img: impl Into<DynamicImage>) -> Result<()> {
    Ok(write_atomic(path, &encode_png(img)?)?)
}
