use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use image::codecs::gif::{GifEncoder, Repeat};
use image::{Delay, Frame, RgbImage, RgbaImage};
use splatforge_render::{
    render, Camera, GaussianBuffers, RenderMode, RenderOptions, RenderedImage,
};
use splatforge_splat::normalize::{fit_to_box, validator_transform, VALIDATOR_BOX};
use splatforge_splat::write_atomic;

use crate::Outcome;

#[derive(clap::Args)]
pub struct Args {
    /// A .ply or .spz file.
    file: PathBuf,
    /// Output: a .png for one view or the contact sheet, a .gif for a
    /// turntable (another extension is refused).
    #[arg(short, long)]
    output: PathBuf,
    /// Render the 404 validator's 16 views (elevation −15°, radius 2.5,
    /// fov 49.1°, 518²) as a 4×4 contact sheet.
    #[arg(long, conflicts_with = "turntable")]
    validator_views: bool,
    /// Render a turntable of this many frames (an animated GIF).
    #[arg(long, value_name = "FRAMES")]
    turntable: Option<u32>,
    /// Camera elevation in degrees; negative looks from above (DreamGaussian's convention).
    #[arg(long, default_value_t = -15.0, allow_negative_numbers = true)]
    elevation: f32,
    /// Camera azimuth in degrees (the turntable's first frame).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    azimuth: f32,
    /// Camera distance from the origin, in scene units.
    #[arg(long, default_value_t = 2.5)]
    radius: f32,
    /// Vertical field of view in degrees.
    #[arg(long, default_value_t = 49.1)]
    fovy: f32,
    /// Image width and height in pixels.
    #[arg(long, default_value_t = 518)]
    size: u32,
    /// Background colour as R,G,B in [0, 1].
    #[arg(long, default_value = "1,1,1", value_parser = parse_rgb)]
    background: [f32; 3],
    /// Render the splat as stored, without the validators' transform.
    #[arg(long)]
    no_normalize: bool,
    /// Fit the means' bounding box into the 1.5 box (centred on the origin,
    /// opacities kept) instead of the validators' transform (recentring on
    /// the mean coordinate, opacity divided by the scale factor).
    #[arg(long = "box", conflicts_with = "no_normalize")]
    bounding_box: bool,
    /// Use only the DC colour, as the validators do.
    #[arg(long)]
    dc_only: bool,
    /// gsplat's antialiased mode (opacity compensation for small splats).
    #[arg(long)]
    antialiased: bool,
}

fn parse_rgb(s: &str) -> Result<[f32; 3], String> {
    let v: Vec<f32> = s
        .split(',')
        .map(|p| p.trim().parse::<f32>())
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    match v.as_slice() {
        &[r, g, b] if v.iter().all(|c| (0.0..=1.0).contains(c)) => Ok([r, g, b]),
        _ => Err(format!("expected R,G,B with each in [0, 1], got '{s}'")),
    }
}

/// Refuses an output whose extension names another format than the one
/// the render makes: a GIF for a turntable, a PNG otherwise.
fn check_output_extension(args: &Args) -> Result<()> {
    let (expected, what) = if args.turntable.is_some() {
        ("gif", "a turntable is an animated GIF")
    } else {
        ("png", "a still is a PNG")
    };
    let ext = args
        .output
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    if ext.as_deref() != Some(expected) {
        bail!(
            "{}: {what}; name the output .{expected}",
            args.output.display()
        );
    }
    Ok(())
}

pub fn run(args: Args) -> Result<Outcome> {
    check_output_extension(&args)?;
    let mut g = super::read(&args.file)?;
    super::require_finite(&g, &args.file)?;
    if args.bounding_box {
        fit_to_box(&mut g, VALIDATOR_BOX)?;
    } else if !args.no_normalize {
        validator_transform(&mut g, VALIDATOR_BOX)?;
    }
    let buffers = GaussianBuffers::from(&g);
    let options = RenderOptions {
        background: args.background,
        mode: if args.antialiased {
            RenderMode::Antialiased
        } else {
            RenderMode::Classic
        },
        sh_degree: args.dc_only.then_some(0),
        ..Default::default()
    };
    let view = |azimuth: f32| {
        Camera::orbit(
            args.elevation,
            azimuth,
            args.radius,
            args.fovy,
            args.size,
            args.size,
        )
    };
    let draw = |cameras: &[Camera]| -> Result<Vec<RgbImage>> {
        let images = render(&buffers.params(), cameras, &options)?;
        Ok(images.iter().map(to_rgb_image).collect())
    };

    let bytes = if let Some(frames) = args.turntable {
        if frames == 0 || frames > 3600 {
            bail!("--turntable takes 1 to 3600 frames, got {frames}");
        }
        let cameras: Vec<Camera> = (0..frames)
            .map(|i| view(args.azimuth + 360.0 * i as f32 / frames as f32))
            .collect();
        encode_gif(draw(&cameras)?)?
    } else if args.validator_views {
        super::encode_png(contact_sheet(&draw(&Camera::validator_views())?, 4))?
    } else {
        super::encode_png(draw(&[view(args.azimuth)])?.remove(0))?
    };
    write_atomic(&args.output, &bytes)?;
    eprintln!("wrote {}", args.output.display());
    Ok(Outcome::Success)
}

fn to_rgb_image(img: &RenderedImage) -> RgbImage {
    RgbImage::from_raw(img.width, img.height, img.rgb8())
        .expect("rgb8 holds width × height × 3 bytes")
}

/// Tiles equally sized images row by row, `columns` per row.
fn contact_sheet(images: &[RgbImage], columns: u32) -> RgbImage {
    let (w, h) = images[0].dimensions();
    let rows = (images.len() as u32).div_ceil(columns);
    let mut sheet = RgbImage::new(w * columns, h * rows);
    for (i, img) in images.iter().enumerate() {
        let (col, row) = (i as u32 % columns, i as u32 / columns);
        image::imageops::replace(&mut sheet, img, (col * w) as i64, (row * h) as i64);
    }
    sheet
}

fn encode_gif(frames: Vec<RgbImage>) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    {
        let mut encoder = GifEncoder::new_with_speed(&mut out, 10);
        encoder.set_repeat(Repeat::Infinite)?;
        let delay = Delay::from_numer_denom_ms(1000, 25);
        for f in frames {
            let rgba: RgbaImage = image::DynamicImage::ImageRgb8(f).into_rgba8();
            encoder
                .encode_frame(Frame::from_parts(rgba, 0, 0, delay))
                .context("encoding GIF")?;
        }
    }
    Ok(out)
}
