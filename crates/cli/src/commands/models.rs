//! `splatforge models …`: model utilities (tiny test models, full-size
//! random MVDream, FLUX.1-schnell and TRELLIS for timing, MVDream views).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use splatforge_diffusion::{
    self as diffusion, LoadOptions, ModelSize, ModelSource, MvDreamRequest, TinyOptions,
};
use splatforge_nn::Precision;

use crate::Outcome;
use splatforge_matte::random::{write_random_birefnet_with_contrast, RANDOM_MATTE_CONTRAST};
use splatforge_matte::BiRefNetConfig;
use splatforge_trellis::foreground::{BIREFNET_FOLDER, BIREFNET_LITE_FOLDER};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Write tiny random-weight models with the real tensor names: MVDream (diffusers layout and LDM checkpoint), SD-Turbo, FLUX.1-schnell.
    MakeTiny(MakeTinyArgs),
    /// Write a model with seeded random weights and the real tensor names, at the real size for timing runs, or tiny: MVDream (diffusers layout, sd-v2.1-base-4view ~1.3 B parameters), FLUX.1-schnell (diffusers layout, ~16.9 B parameters, 33.7 GB in bf16, streamed with bounded memory), TRELLIS-image-large (its folder layout, with DINOv2 and both BiRefNets inside) or BiRefNet (model.safetensors, the Hugging Face layout).
    MakeRandom(MakeRandomArgs),
    /// Text → 4 MVDream views (PNG) and their cameras (JSON).
    Mvdream(MvdreamArgs),
    /// Text → image with SD-Turbo / SD 2.1 (PNG).
    Sd(SdArgs),
    /// Text → image with FLUX.1-schnell (PNG).
    Flux(FluxArgs),
}

#[derive(clap::Args)]
struct SdArgs {
    /// Model: a diffusers folder or hf:ORG/NAME[@REV].
    #[arg(
        long = "models",
        alias = "model",
        value_name = "DIR",
        default_value = "hf:stabilityai/sd-turbo"
    )]
    models: String,
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value = "")]
    negative_prompt: String,
    /// Output PNG.
    #[arg(short, long = "output", alias = "out")]
    output: PathBuf,
    /// Denoising steps (SD-Turbo: 1–4; SD 2.1: 25–50).
    #[arg(long, default_value_t = 1)]
    steps: usize,
    /// CFG scale (≤ 1: off, as SD-Turbo wants).
    #[arg(long, default_value_t = 0.0)]
    guidance: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 512)]
    width: usize,
    #[arg(long, default_value_t = 512)]
    height: usize,
    /// Precision of the UNet and text encoder on a GPU (default f32); the CPU runs f32.
    #[arg(long)]
    dtype: Option<Precision>,
    /// Precision of the VAE on a GPU (default: --dtype); the CPU runs f32.
    #[arg(long)]
    vae_dtype: Option<Precision>,
}

#[derive(clap::Args)]
struct FluxArgs {
    /// Model: a diffusers folder or hf:ORG/NAME[@REV].
    #[arg(
        long = "models",
        alias = "model",
        value_name = "DIR",
        default_value = "hf:black-forest-labs/FLUX.1-schnell"
    )]
    models: String,
    #[arg(long)]
    prompt: String,
    /// Output PNG.
    #[arg(short, long = "output", alias = "out")]
    output: PathBuf,
    #[arg(long, default_value_t = 4)]
    steps: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 1024)]
    width: usize,
    #[arg(long, default_value_t = 1024)]
    height: usize,
    /// T5 tokens.
    #[arg(long, default_value_t = 256)]
    max_sequence_length: usize,
    /// Precision of the transformer and text encoders on a GPU (default bf16); the CPU runs f32.
    #[arg(long)]
    dtype: Option<Precision>,
    /// Precision of the VAE on a GPU (default: --dtype); the CPU runs f32.
    #[arg(long)]
    vae_dtype: Option<Precision>,
}

#[derive(clap::Args)]
struct MakeTinyArgs {
    /// Output folder (created).
    dir: PathBuf,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stored precision of the weights.
    #[arg(long, default_value_t = Precision::F32)]
    dtype: Precision,
}

#[derive(clap::Args)]
struct MakeRandomArgs {
    /// Output folder: the model's own layout (`generate --models DIR` loads it). Must not exist or be empty.
    dir: PathBuf,
    /// mvdream: text → views (diffusers layout); flux: FLUX.1-schnell text → image (black-forest-labs/FLUX.1-schnell's diffusers layout: sharded transformer/ and T5 text_encoder_2/, CLIP-L text_encoder/, 16-channel vae/; `generate --flux DIR` loads it); trellis: image → 3D (pipeline.json, ckpts/, DINOv2 as dinov2_vitl14_reg4_pretrain.safetensors, the mattes as birefnet/ and birefnet_lite/); birefnet: background removal (model.safetensors).
    #[arg(long, value_enum, default_value_t = Family::Mvdream)]
    family: Family,
    /// With --family birefnet: full (Swin-L, ZhengPeng7/BiRefNet) or lite (Swin-T, ZhengPeng7/BiRefNet_lite); tiny sizes are one tiny model either way.
    #[arg(long, value_enum, default_value_t = BirefnetVariant::Full)]
    variant: BirefnetVariant,
    /// full: the published architecture (MVDream sd-v2.1-base-4view: UNet 868 M, VAE 84 M, OpenCLIP ViT-H text tower 340 M parameters; FLUX.1-schnell: transformer 11.9 B, T5 v1.1 XXL encoder 4.76 B, CLIP-L 123 M, VAE 84 M; TRELLIS-image-large: both flows 24 blocks 1024 wide, DINOv2 ViT-L/14); tiny: CPU test sizes (MVDream and FLUX: make-tiny's; TRELLIS: 16³ occupancy, 32-wide).
    #[arg(long, value_enum, default_value_t = Size::Full)]
    size: Size,
    /// Stored precision of the weights (default: bf16 for MVDream, full size 2.6 GB, 5.2 GB in f32; bf16 for FLUX, as published, full size 33.7 GB; fp16 for TRELLIS, as published, its DINOv2 in fp32 and its BiRefNets in fp16; fp32 for BiRefNet alone, as published).
    #[arg(long)]
    dtype: Option<Precision>,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// TRELLIS: shift the random structure decoder's output bias so that
    /// --calibration-image (seed 42, the profiles' seed) decodes to this many occupied
    /// voxels. Random weights occupy about half of the 64³ grid; real assets a few percent
    /// (about 20000), and stage 2's cost follows the count: calibrate before timing.
    #[arg(long, requires = "calibration_image")]
    voxels: Option<usize>,
    /// The image --voxels calibrates on.
    #[arg(long, requires = "voxels")]
    calibration_image: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Size {
    Tiny,
    Full,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Family {
    Mvdream,
    Flux,
    Trellis,
    Birefnet,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BirefnetVariant {
    Full,
    Lite,
}

#[derive(clap::Args)]
struct MvdreamArgs {
    /// Model: a diffusers folder, an LDM checkpoint (.safetensors/.pt), or hf:ORG/NAME[@REV][:FILE].
    #[arg(
        long = "models",
        alias = "model",
        value_name = "DIR",
        default_value = "hf:ashawkey/mvdream-sd2.1-diffusers"
    )]
    models: String,
    /// The text prompt.
    #[arg(long)]
    prompt: String,
    /// Negative prompt for classifier-free guidance.
    #[arg(long, default_value = "")]
    negative_prompt: String,
    /// Appended to the prompt.
    #[arg(long, default_value = ", 3d asset")]
    suffix: String,
    /// Output folder for view_0.png … and cameras.json.
    #[arg(short, long = "output", alias = "out")]
    output: PathBuf,
    #[arg(long, default_value_t = 50)]
    steps: usize,
    #[arg(long, default_value_t = 10.0)]
    guidance: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Image side in pixels.
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Camera elevation in degrees (positive = above, MVDream's sign).
    #[arg(long, default_value_t = 15.0)]
    elevation: f64,
    /// Precision of the UNet and text encoder on a GPU (default f32); the CPU runs f32.
    #[arg(long)]
    dtype: Option<Precision>,
}

pub fn run(args: Args) -> Result<Outcome> {
    match args.command {
        Command::MakeTiny(a) => make_tiny(a),
        Command::MakeRandom(a) => make_random(a),
        Command::Mvdream(a) => mvdream(a),
        Command::Sd(a) => sd(a),
        Command::Flux(a) => flux(a),
    }
}

fn make_tiny(a: MakeTinyArgs) -> Result<Outcome> {
    let m = diffusion::make_tiny(
        &a.dir,
        &TinyOptions {
            seed: a.seed,
            dtype: a.dtype.dtype(),
        },
    )
    .with_context(|| format!("writing tiny models to {}", a.dir.display()))?;
    println!("diffusers layout: {}", m.diffusers_dir.display());
    println!(
        "LDM checkpoint:   {} (config {})",
        m.ldm_checkpoint.display(),
        m.ldm_config.display()
    );
    println!(
        "parameters: unet {}, vae {}, text encoder {}",
        m.unet_params, m.vae_params, m.text_params
    );
    println!("SD-Turbo (diffusers layout): {}", m.sd_dir.display());
    println!(
        "FLUX.1-schnell (diffusers layout): {}",
        m.flux_dir.display()
    );
    println!(
        "FLUX transformer (original names): {}",
        m.flux_bfl_checkpoint.display()
    );
    Ok(Outcome::Success)
}

fn make_random(a: MakeRandomArgs) -> Result<Outcome> {
    match a.family {
        Family::Trellis => return make_random_trellis(a),
        Family::Birefnet => return make_random_birefnet(a),
        Family::Mvdream | Family::Flux => {}
    }
    if a.voxels.is_some() {
        bail!("--voxels is for --family trellis");
    }
    let size = match a.size {
        Size::Tiny => ModelSize::Tiny,
        Size::Full => ModelSize::Full,
    };
    if let Family::Flux = a.family {
        return make_random_flux(&a, size);
    }
    let t0 = Instant::now();
    let m = diffusion::make_random_mvdream(
        &a.dir,
        &size.config(),
        &TinyOptions {
            seed: a.seed,
            dtype: a.dtype.unwrap_or(Precision::Bf16).dtype(),
        },
    )
    .with_context(|| format!("writing random MVDream to {}", a.dir.display()))?;
    println!("diffusers layout: {}", m.dir.display());
    println!(
        "parameters: unet {}, vae {}, text encoder {} ({:.3} B in all)",
        m.unet_params,
        m.vae_params,
        m.text_params,
        (m.unet_params + m.vae_params + m.text_params) as f64 * 1e-9
    );
    println!(
        "weights: {:.2} GB in {:.1} s",
        m.weight_bytes as f64 * 1e-9,
        t0.elapsed().as_secs_f64()
    );
    Ok(Outcome::Success)
}

/// FLUX.1-schnell with random weights (`make-random --family flux`), streamed to disk.
fn make_random_flux(a: &MakeRandomArgs, size: ModelSize) -> Result<Outcome> {
    let t0 = Instant::now();
    let m = diffusion::make_random_flux(
        &a.dir,
        size,
        &TinyOptions {
            seed: a.seed,
            dtype: a.dtype.unwrap_or(Precision::Bf16).dtype(),
        },
    )
    .with_context(|| format!("writing random FLUX.1-schnell to {}", a.dir.display()))?;
    println!("diffusers layout: {}", m.dir.display());
    println!(
        "parameters: transformer {}, T5 {}, CLIP {}, vae {} ({:.3} B in all)",
        m.transformer_params,
        m.t5_params,
        m.clip_params,
        m.vae_params,
        (m.transformer_params + m.t5_params + m.clip_params + m.vae_params) as f64 * 1e-9
    );
    println!(
        "weights: {:.2} GB in {:.1} s",
        m.weight_bytes as f64 * 1e-9,
        t0.elapsed().as_secs_f64()
    );
    Ok(Outcome::Success)
}

/// A TRELLIS-image-large folder with random weights (`make-random --family trellis`).
fn make_random_trellis(a: MakeRandomArgs) -> Result<Outcome> {
    use splatforge_trellis::stage1::ModelSize as TrellisSize;
    let non_empty = std::fs::read_dir(&a.dir).is_ok_and(|mut d| d.next().is_some());
    if non_empty {
        bail!(
            "{} is not empty; give a new or empty folder",
            a.dir.display()
        );
    }
    let size = match a.size {
        Size::Tiny => TrellisSize::Tiny,
        Size::Full => TrellisSize::Full,
    };
    let t0 = Instant::now();
    let dtype = a.dtype.unwrap_or(Precision::F16).dtype();
    let dinov2 = splatforge_trellis::pipeline::write_random_trellis(&a.dir, size, dtype, a.seed)
        .with_context(|| format!("writing random TRELLIS to {}", a.dir.display()))?;
    println!("TRELLIS folder: {}", a.dir.display());
    println!("DINOv2: {}", dinov2.display());
    for folder in [BIREFNET_FOLDER, BIREFNET_LITE_FOLDER] {
        println!("BiRefNet: {}", a.dir.join(folder).display());
    }
    println!("written in {:.1} s", t0.elapsed().as_secs_f64());
    if let (Some(voxels), Some(path)) = (a.voxels, &a.calibration_image) {
        let t0 = Instant::now();
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let image = splatforge_trellis::preprocess::decode_image(&bytes)
            .with_context(|| format!("decoding {}", path.display()))?;
        let device = splatforge_nn::best_device(0);
        let run_dtype = if device.is_cpu() {
            Precision::F32
        } else {
            Precision::F16
        };
        let c = splatforge_trellis::stage1::calibrate_random_occupancy(
            &a.dir,
            &dinov2,
            size,
            dtype,
            a.seed,
            &image,
            42,
            voxels,
            &device,
            run_dtype.dtype(),
        )
        .context("calibrating the structure decoder")?;
        println!(
            "occupancy: {} → {} voxels (logit shift {:.3}) in {:.1} s",
            c.voxels_before,
            c.voxels_after,
            c.shift,
            t0.elapsed().as_secs_f64()
        );
    }
    Ok(Outcome::Success)
}

/// A BiRefNet with random weights (`make-random --family birefnet`): `DIR/model.safetensors`.
fn make_random_birefnet(a: MakeRandomArgs) -> Result<Outcome> {
    let non_empty = std::fs::read_dir(&a.dir).is_ok_and(|mut d| d.next().is_some());
    if non_empty {
        bail!(
            "{} is not empty; give a new or empty folder",
            a.dir.display()
        );
    }
    let t0 = Instant::now();
    let dtype = a.dtype.unwrap_or(Precision::F32).dtype();
    let path = write_birefnet(&a.dir, a.variant, a.size, dtype, a.seed)?;
    println!(
        "BiRefNet ({}): {} in {:.1} s",
        match a.size {
            Size::Tiny => "tiny",
            Size::Full => match a.variant {
                BirefnetVariant::Full => "Swin-L",
                BirefnetVariant::Lite => "Swin-T",
            },
        },
        path.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(Outcome::Success)
}

/// Writes `dir/model.safetensors`: the published shapes of `variant`, or the tiny test
/// model, with the random matte made decisive ([`RANDOM_MATTE_CONTRAST`]).
fn write_birefnet(
    dir: &std::path::Path,
    variant: BirefnetVariant,
    size: Size,
    dtype: splatforge_diffusion::DType,
    seed: u64,
) -> Result<PathBuf> {
    let config = match (size, variant) {
        (Size::Tiny, _) => BiRefNetConfig::tiny(),
        (Size::Full, BirefnetVariant::Full) => BiRefNetConfig::birefnet(),
        (Size::Full, BirefnetVariant::Lite) => BiRefNetConfig::birefnet_lite(),
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("model.safetensors");
    write_random_birefnet_with_contrast(&config, seed, dtype, &path, RANDOM_MATTE_CONTRAST)
        .with_context(|| format!("writing random BiRefNet to {}", path.display()))?;
    Ok(path)
}

/// Writes the first of `images` (text-to-image models make one) as PNG.
fn save_png(images: Vec<image::RgbImage>, out: &std::path::Path) -> Result<()> {
    if let Some(d) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let first = images
        .into_iter()
        .next()
        .context("the model returned no image")?;
    super::write_png(out, first)?;
    println!("{}", out.display());
    Ok(())
}

/// Loading options on the best device: on a GPU the requested precisions
/// (`dtype`, else `default`); on the CPU f32 for every model, as `generate`
/// does, since candle's CPU backend has no bf16 or f16 matmul. A lower
/// precision asked for on the CPU is noted, not refused.
fn load_options(
    dtype: Option<Precision>,
    default: Precision,
    vae_dtype: Option<Precision>,
) -> LoadOptions {
    let device = splatforge_nn::best_device(0);
    if device.is_cpu() {
        if let Some(p) = dtype
            .into_iter()
            .chain(vae_dtype)
            .find(|p| !matches!(p, Precision::F32))
        {
            eprintln!(
                "note: running in f32 on the CPU ({:?} is for a GPU)",
                p.dtype()
            );
        }
        return LoadOptions {
            device,
            dtype: diffusion::DType::F32,
            vae_dtype: Some(diffusion::DType::F32),
            ..Default::default()
        };
    }
    LoadOptions {
        device,
        dtype: dtype.unwrap_or(default).dtype(),
        vae_dtype: vae_dtype.map(Precision::dtype),
        ..Default::default()
    }
}

fn sd(a: SdArgs) -> Result<Outcome> {
    let opts = load_options(a.dtype, Precision::F32, a.vae_dtype);
    let t0 = Instant::now();
    let pipe = diffusion::load_sd(&ModelSource::parse(&a.models), &opts)?;
    eprintln!(
        "loaded {} in {:.1} s",
        pipe.source,
        t0.elapsed().as_secs_f64()
    );
    let t0 = Instant::now();
    let out = pipe.generate(&diffusion::SdRequest {
        prompt: a.prompt,
        negative_prompt: a.negative_prompt,
        steps: a.steps,
        guidance_scale: a.guidance,
        seed: a.seed,
        width: a.width,
        height: a.height,
    })?;
    eprintln!("generated in {:.1} s", t0.elapsed().as_secs_f64());
    save_png(out.to_rgb_images()?, &a.output)?;
    Ok(Outcome::Success)
}

fn flux(a: FluxArgs) -> Result<Outcome> {
    let opts = load_options(a.dtype, Precision::Bf16, a.vae_dtype);
    let t0 = Instant::now();
    let pipe = diffusion::load_flux(&ModelSource::parse(&a.models), &opts)?;
    eprintln!(
        "loaded {} in {:.1} s",
        pipe.source,
        t0.elapsed().as_secs_f64()
    );
    let t0 = Instant::now();
    let out = pipe.generate(&diffusion::FluxRequest {
        prompt: a.prompt,
        steps: a.steps,
        seed: a.seed,
        width: a.width,
        height: a.height,
        max_sequence_length: a.max_sequence_length,
        ..Default::default()
    })?;
    eprintln!("generated in {:.1} s", t0.elapsed().as_secs_f64());
    save_png(out.to_rgb_images()?, &a.output)?;
    Ok(Outcome::Success)
}

fn mvdream(a: MvdreamArgs) -> Result<Outcome> {
    if a.size == 0 {
        bail!("--size must be positive");
    }
    let opts = load_options(a.dtype, Precision::F32, None);
    let t0 = Instant::now();
    let pipe = diffusion::load_mvdream(&ModelSource::parse(&a.models), &opts)?;
    eprintln!(
        "loaded {} in {:.1} s on {:?}",
        pipe.source,
        t0.elapsed().as_secs_f64(),
        opts.device
    );
    let req = MvDreamRequest {
        prompt: a.prompt,
        prompt_suffix: a.suffix,
        negative_prompt: a.negative_prompt,
        steps: a.steps,
        guidance_scale: a.guidance,
        seed: a.seed,
        image_size: a.size,
        elevation_deg: a.elevation,
        ..Default::default()
    };
    let t0 = Instant::now();
    let out = pipe.generate(&req)?;
    eprintln!(
        "generated {} views in {:.1} s",
        req.num_frames,
        t0.elapsed().as_secs_f64()
    );
    std::fs::create_dir_all(&a.output)
        .with_context(|| format!("creating {}", a.output.display()))?;
    for (i, img) in out.to_rgb_images()?.into_iter().enumerate() {
        let p = a.output.join(format!("view_{i}.png"));
        super::write_png(&p, img)?;
    }
    let cameras = splatforge_pipeline::cameras::render_cameras(
        req.num_frames,
        req.elevation_deg,
        req.azimuth_start_deg,
        req.azimuth_span_deg,
        splatforge_pipeline::cameras::DEFAULT_RADIUS,
        splatforge_pipeline::cameras::DEFAULT_FOVY_DEG,
        req.image_size as u32,
    );
    let cams: Vec<serde_json::Value> = cameras
        .iter()
        .zip(&out.camera_embeddings)
        .map(|(c, e)| {
            serde_json::json!({
                "width": c.width, "height": c.height, "fx": c.fx, "fy": c.fy, "cx": c.cx, "cy": c.cy,
                "world_to_camera": c.world_to_camera, "mvdream_camera": e.to_vec()
            })
        })
        .collect();
    let p = a.output.join("cameras.json");
    splatforge_splat::write_atomic(&p, (serde_json::to_string_pretty(&cams)? + "\n").as_bytes())?;
    println!("{}", a.output.display());
    Ok(Outcome::Success)
}
