use std::path::PathBuf;

use anyhow::Result;
use splatforge_splat::normalize::{
    convert_up_axis, fit_to_box, validator_transform, UpAxis, VALIDATOR_BOX,
};

use super::convert::EncodingArgs;
use crate::Outcome;

#[derive(clap::Args)]
pub struct Args {
    /// Input .ply or .spz.
    input: PathBuf,
    /// Output file (.ply or .spz).
    output: PathBuf,
    /// Reference box size: the longest side of the means' bounding box after
    /// the transform (validators use 1.5).
    #[arg(long, value_name = "SIZE", default_value_t = VALIDATOR_BOX)]
    box_size: f32,
    /// Fit the bounding box (centred on the origin, opacities kept) instead
    /// of the validators' transform (recentring on the mean coordinate,
    /// opacity divided by the scale factor).
    #[arg(long = "box", conflicts_with = "no_fit")]
    bounding_box: bool,
    /// Only change the up axis; keep position and size.
    #[arg(long)]
    no_fit: bool,
    /// Convert the up axis before fitting, e.g. `--up z-to-y`.
    #[arg(long, value_enum)]
    up: Option<UpConversion>,
    #[command(flatten)]
    encoding: EncodingArgs,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum UpConversion {
    /// Z-up (Blender) to Y-up (3DGS, the validators).
    ZToY,
    /// Y-up to Z-up.
    YToZ,
}

pub fn run(args: Args) -> Result<Outcome> {
    let mut g = super::read(&args.input)?;
    super::require_finite(&g, &args.input)?;
    match args.up {
        Some(UpConversion::ZToY) => convert_up_axis(&mut g, UpAxis::Z, UpAxis::Y),
        Some(UpConversion::YToZ) => convert_up_axis(&mut g, UpAxis::Y, UpAxis::Z),
        None => {}
    }
    if args.bounding_box {
        fit_to_box(&mut g, args.box_size)?;
    } else if !args.no_fit {
        validator_transform(&mut g, args.box_size)?;
    }
    args.encoding.write(&g, &args.output)?;
    eprintln!("wrote {} splats to {}", g.len(), args.output.display());
    Ok(Outcome::Success)
}
