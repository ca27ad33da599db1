use std::path::{Path, PathBuf};

use anyhow::Result;
use base64::Engine;
use splatforge_splat::ply::PlyWriteOptions;
use splatforge_splat::spz::SpzFlavor;
use splatforge_splat::{encode_splat, write_atomic, EncodeOptions, Gaussians, SplatFormat};

use crate::Outcome;

#[derive(clap::Args)]
pub struct Args {
    /// Input .ply or .spz (the format is detected from its content).
    input: PathBuf,
    /// Output file; its extension picks the format: .ply, .spz, or .glb (a mesh, as `splatforge mesh` with its defaults).
    output: PathBuf,
    #[command(flatten)]
    encoding: EncodingArgs,
}

/// Output encoding flags shared by the commands that write splats.
#[derive(clap::Args)]
pub struct EncodingArgs {
    /// SPZ variant to write: Niantic's gzip v2 or v3, or 404-GEN's zstd v2.
    #[arg(long, value_enum, default_value_t = Flavor::Niantic)]
    spz_flavor: Flavor,
    /// PLY: leave out the normals (the validator's 14-float layout for SH 0).
    #[arg(long)]
    no_normals: bool,
    /// Write the encoded file as base64 text (the 404 miner's transport).
    #[arg(long)]
    base64: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Flavor {
    /// Niantic SPZ v2 (gzip).
    Niantic,
    /// Niantic SPZ v3 (gzip, smallest-three rotations).
    NianticV3,
    /// 404-GEN: SPZ v2 compressed with zstd.
    #[value(name = "404")]
    Zstd404,
}

impl EncodingArgs {
    /// Encodes `g` for `output` and writes it atomically; a `.glb` output
    /// is a mesh of `g` (`splatforge mesh` with its defaults).
    pub fn write(&self, g: &Gaussians, output: &Path) -> Result<()> {
        super::mesh::check_output_name(output)?;
        if super::mesh::is_glb(output) {
            return super::mesh::write_default_glb(g, output);
        }
        let options = EncodeOptions {
            format: SplatFormat::from_path(output)?,
            ply: PlyWriteOptions {
                normals: !self.no_normals,
            },
            spz_flavor: match self.spz_flavor {
                Flavor::Niantic => SpzFlavor::NianticV2,
                Flavor::NianticV3 => SpzFlavor::NianticV3,
                Flavor::Zstd404 => SpzFlavor::Zstd404,
            },
        };
        let mut bytes = encode_splat(g, &options)?;
        if self.base64 {
            bytes = base64::engine::general_purpose::STANDARD
                .encode(&bytes)
                .into_bytes();
        }
        Ok(write_atomic(output, &bytes)?)
    }
}

pub fn run(args: Args) -> Result<Outcome> {
    let g = super::read(&args.input)?;
    super::require_finite(&g, &args.input)?;
    args.encoding.write(&g, &args.output)?;
    eprintln!("wrote {} splats to {}", g.len(), args.output.display());
    Ok(Outcome::Success)
}
