//! One module per subcommand.

pub mod convert;
pub mod fit;
pub mod generate;
pub mod inspect;
pub mod models;
pub mod normalize;
pub mod pipeline_generator;
pub mod render;
pub mod serve;
pub mod validate;

use std::path::Path;

use anyhow::{bail, Result};
use splatforge_splat::validate::{validate, ValidationConfig};
use splatforge_splat::Gaussians;

/// Reads a splat file; errors name the file.
pub fn read(path: &Path) -> Result<Gaussians> {
    Ok(splatforge_splat::read_splat_file(path)?)
}

/// Refuses to pass on a splat with NaN or Inf values.
pub fn require_finite(g: &Gaussians, path: &Path) -> Result<()> {
    let report = validate(g, &ValidationConfig { min_gaussians: 0, ..Default::default() });
    if let Some(c) = report.checks.iter().find(|c| c.name == "finite" && !c.passed) {
        bail!("{}: {}", path.display(), c.detail);
    }
    Ok(())
}
