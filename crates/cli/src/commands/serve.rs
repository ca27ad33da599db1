//! `splatforge serve`: the 404-GEN compatible generation service.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use splatforge_diffusion::ModelSource;
use splatforge_pipeline::{resolve_models, ConfigSources, HubConfig, Pipeline, PipelineKind};
use splatforge_server::{
    GenerationError, Generator, RequestInput, ServerConfig, DEFAULT_HOST, IMAGE_MAX_BODY_BYTES,
};

use super::fleet::FleetArgs;
use super::flux_trellis::{flux_source, FluxTrellisGenerator, FluxTrellisRunner};
use super::generate::ConfigArgs;
use super::pipeline_generator::{generation_error, PipelineGenerator};
use super::trellis_generator::{matte_weights_set, TrellisGenerator, TrellisModels, TrellisRunner};
use crate::Outcome;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Address to listen on. Loopback by default: the 404 miner calls the
    /// service on its own machine; `0.0.0.0` serves every interface (the
    /// service has no authentication: firewall it).
    #[arg(long, default_value = DEFAULT_HOST)]
    host: String,
    /// Port to listen on (the 404 miner's generation endpoint; 0 picks a free one).
    #[arg(long, default_value_t = 10006)]
    port: u16,
    /// Devices to generate on, comma-separated; models load once per device.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    devices: Vec<u32>,
    /// Worker threads per device, sharing its models (on a GPU they take turns for the generation and overlap the rest).
    #[arg(long, default_value_t = 1)]
    workers_per_device: usize,
    /// Requests that may wait per device; beyond that: 503 with Retry-After.
    #[arg(long, default_value_t = 8)]
    queue_size: usize,
    /// Per-request limit in seconds (504 after it; the job is cancelled).
    #[arg(long, default_value_t = 300.0, value_name = "SECONDS")]
    timeout: f64,
    /// On SIGINT/SIGTERM, how long running and queued jobs may still take.
    #[arg(long, default_value_t = 300.0, value_name = "SECONDS")]
    shutdown_timeout: f64,
    /// Largest accepted turntable resolution; a larger `video_res` gets 400.
    #[arg(long, default_value_t = 1088)]
    max_video_res: u32,
    /// How long a client may take to send a request's headers (also how
    /// long an idle connection stays open); then the connection is closed.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    header_timeout: f64,
    /// How long a client may take to send a request's body once its headers
    /// are in; then it gets 408.
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    body_timeout: f64,
    /// Most client connections open at once; more wait to be accepted.
    #[arg(long, default_value_t = 256)]
    max_connections: usize,
    /// Model directory (e.g. from `splatforge models make-tiny DIR`), an LDM
    /// checkpoint, or hf:ORG/NAME; default: MVDream from the Hugging Face cache.
    /// With an image profile (`pipeline: trellis`): a TRELLIS folder (DINOv2
    /// inside it, as `models make-random --family trellis` writes) or
    /// hf:ORG/NAME; default hf:microsoft/TRELLIS-image-large.
    #[arg(long)]
    models: Option<PathBuf>,
    /// With a text-via-image profile (`pipeline: flux-trellis`): FLUX.1-schnell, a
    /// diffusers-layout folder or hf:ORG/NAME; default hf:black-forest-labs/FLUX.1-schnell
    /// (TRELLIS comes from --models).
    #[arg(long, value_name = "DIR")]
    flux: Option<String>,
    /// With an image or text-via-image profile: the matte network's weights (sets matte.weights): a .safetensors/.pth file, a folder with model.safetensors, or hf:ORG/NAME (e.g. hf:ZhengPeng7/BiRefNet_lite). Default: birefnet/ (birefnet_lite/) in the TRELLIS folder, else hf:ZhengPeng7/BiRefNet (_lite).
    #[arg(long, value_name = "SPEC")]
    matte: Option<String>,
    /// Time budget in milliseconds of a competition request (`POST /generate` on an image server) that carries no `X-Deadline-Ms` header: the server degrades the run (fewer sampler steps, the threshold matte) to answer within it; e.g. 30000 for 404's competition 0.
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
    deadline_ms: Option<u64>,
    /// Generation profile and overrides (as for `generate`).
    #[command(flatten)]
    config: ConfigArgs,
    /// The fleet (with --redis: a front end that enqueues to workers).
    #[command(flatten)]
    fleet: FleetArgs,
    /// With --redis: requests that wait on the fleet at once (--queue-size more may queue here).
    #[arg(long, default_value_t = 64)]
    fleet_in_flight: usize,
}

/// The models a served profile runs on: MVDream's (text profiles) or a
/// TRELLIS folder with DINOv2 (image profiles), see
/// [`super::trellis_generator`].
pub enum ServedModels {
    Mvdream(ModelSource),
    Trellis(TrellisModels),
    /// FLUX, then TRELLIS (text-via-image profiles, see [`super::flux_trellis`]).
    FluxTrellis(ModelSource, TrellisModels),
}

impl ServedModels {
    /// Finds the models `pipeline` runs (`--models`, `--flux`), before
    /// anything loads, so that a bad path fails at once (`serve`, `worker`).
    pub fn resolve(
        pipeline: PipelineKind,
        models: Option<&std::path::Path>,
        flux: Option<&str>,
    ) -> Result<Self> {
        let models_arg = models.map(|p| p.to_string_lossy());
        let trellis =
            || TrellisModels::resolve(models_arg.as_deref(), None, &HubConfig::from_env());
        Ok(match pipeline {
            PipelineKind::Trellis => ServedModels::Trellis(trellis()?),
            PipelineKind::FluxTrellis => ServedModels::FluxTrellis(flux_source(flux)?, trellis()?),
            PipelineKind::Mvdream => ServedModels::Mvdream(resolve_models(models_arg.as_deref())?),
        })
    }
}

/// What requests to a profile of `pipeline` carry: images for TRELLIS
/// profiles, text for the others.
pub fn request_input(pipeline: PipelineKind) -> RequestInput {
    match pipeline {
        PipelineKind::Trellis => RequestInput::Image,
        PipelineKind::Mvdream | PipelineKind::FluxTrellis => RequestInput::Text,
    }
}

/// A CUDA build serves on the GPUs only: falling back to the CPU would turn
/// seconds into minutes per request.
fn serving_device(device: u32) -> Result<splatforge_diffusion::Device, GenerationError> {
    if cfg!(feature = "cuda") {
        splatforge_diffusion::Device::new_cuda(device as usize)
            .map_err(|e| GenerationError::Failed(format!("CUDA device {device}: {e}")))
    } else {
        Ok(splatforge_diffusion::Device::Cpu)
    }
}

/// Builds the generator of one device. Called once per device at startup,
/// on that device's loader thread: loads the models on CUDA device `device`
/// (the CPU in a build without the `cuda` feature) with the resolved
/// configuration.
pub fn build_generator(
    device: u32,
    models: &ServedModels,
    sources: &ConfigSources,
) -> Result<Box<dyn Generator>, GenerationError> {
    let failed = |e: &dyn std::fmt::Display| GenerationError::Failed(e.to_string());
    let (profile, config) = sources.resolve().map_err(|e| failed(&e))?;
    let dev = serving_device(device)?;
    match models {
        ServedModels::Mvdream(models) => {
            let pipe = Pipeline::load(models, &dev, HubConfig::from_env(), &profile, config)
                .map_err(generation_error)?;
            eprintln!(
                "splatforge serve: device {device}: {} on {dev:?}, profile {profile}",
                pipe.models()
            );
            Ok(Box::new(PipelineGenerator::new(pipe)))
        }
        ServedModels::Trellis(models) => {
            let runner = TrellisRunner::load(models.clone(), &dev, &profile, config)
                .map_err(|e| failed(&format!("{e:#}")))?;
            eprintln!(
                "splatforge serve: device {device}: TRELLIS {} on {dev:?}, profile {profile} (image input)",
                models.dir.display()
            );
            Ok(Box::new(TrellisGenerator::new(runner)))
        }
        ServedModels::FluxTrellis(flux, models) => {
            let runner = FluxTrellisRunner::load(
                flux,
                models.clone(),
                &dev,
                &profile,
                config,
                HubConfig::from_env(),
            )
            .map_err(|e| failed(&format!("{e:#}")))?;
            eprintln!(
                "splatforge serve: device {device}: FLUX {} and TRELLIS {} on {dev:?}, profile {profile} (text via an image)",
                runner.flux_source(),
                models.dir.display()
            );
            Ok(Box::new(FluxTrellisGenerator::new(runner)))
        }
    }
}

fn seconds(name: &str, s: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(s)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| format!("--{name} must be a positive number of seconds, got {s}"))
}

fn config(args: &Args) -> Result<ServerConfig> {
    let config = ServerConfig {
        host: args.host.clone(),
        port: args.port,
        devices: args.devices.clone(),
        workers_per_device: args.workers_per_device,
        queue_size: args.queue_size,
        timeout: seconds("timeout", args.timeout)?,
        shutdown_timeout: seconds("shutdown-timeout", args.shutdown_timeout)?,
        max_video_res: args.max_video_res,
        header_read_timeout: seconds("header-timeout", args.header_timeout)?,
        body_read_timeout: seconds("body-timeout", args.body_timeout)?,
        max_connections: args.max_connections,
        default_deadline: args.deadline_ms.map(Duration::from_millis),
        ..ServerConfig::default()
    };
    config.validate()?;
    Ok(config)
}

pub fn run(args: Args) -> Result<Outcome> {
    let mut config = config(&args)?;
    // Check the generation config and find the models before binding, so
    // that a typo fails before the port opens.
    let mut sources = args.config.sources();
    if let Some(spec) = &args.matte {
        sources.sets.push(matte_weights_set(spec));
    }
    let (profile, resolved) = sources.resolve()?;
    if args.matte.is_some() && !resolved.pipeline.runs_trellis() {
        bail!(
            "--matte is for image and text-via-image profiles; profile {profile} runs {}",
            resolved.pipeline.name()
        );
    }
    if args.flux.is_some() && resolved.pipeline != PipelineKind::FluxTrellis {
        bail!(
            "--flux is for text-via-image profiles (pipeline: flux-trellis, e.g. text-image-quality); profile {profile} runs {}",
            resolved.pipeline.name()
        );
    }
    config.input = request_input(resolved.pipeline);
    if config.input == RequestInput::Image {
        config.max_body_bytes = config.max_body_bytes.max(IMAGE_MAX_BODY_BYTES);
    }
    if let Some(fleet) = args.fleet.config()? {
        return super::fleet::serve_front_end(config, fleet, &profile, args.fleet_in_flight);
    }
    let models = ServedModels::resolve(
        resolved.pipeline,
        args.models.as_deref(),
        args.flux.as_deref(),
    )?;
    // Tiny test models without --profile serve `development`, as `generate` does: the default
    // profile would spend minutes a request on them.
    let sources = match &models {
        ServedModels::Mvdream(m) => super::generate::profile_for_models(sources, m),
        _ => sources,
    };
    let factory = move |device: u32| build_generator(device, &models, &sources);
    splatforge_server::run(config, factory)?;
    Ok(Outcome::Success)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(argv: &[&str]) -> Result<Args, clap::Error> {
        Cli::try_parse_from(std::iter::once("serve").chain(argv.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn parses_the_flags_and_defaults() {
        let a = parse(&[]).unwrap();
        let c = config(&a).unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.devices.as_slice()),
            ("127.0.0.1", 10006, &[0][..])
        );
        assert_eq!(c.timeout, Duration::from_secs(300));
        assert_eq!(
            (c.header_read_timeout, c.body_read_timeout),
            (Duration::from_secs(10), Duration::from_secs(30))
        );
        assert_eq!((c.max_connections, c.max_video_res), (256, 1088));
        let a = parse(&[
            "--port",
            "8093",
            "--devices",
            "0,1",
            "--workers-per-device",
            "2",
            "--queue-size",
            "3",
            "--timeout",
            "2.5",
            "--models",
            "/m",
            "--profile",
            "speed",
            "--config",
            "/c.yaml",
            "--set",
            "fit.iters=5",
            "--set",
            "seed=2",
        ])
        .unwrap();
        let c = config(&a).unwrap();
        assert_eq!(
            (
                c.port,
                c.devices.clone(),
                c.workers_per_device,
                c.queue_size
            ),
            (8093, vec![0, 1], 2, 3)
        );
        assert_eq!(c.timeout, Duration::from_millis(2500));
        assert_eq!(
            (a.models.as_deref(), a.config.profile.as_deref()),
            (Some(Path::new("/m")), Some("speed"))
        );
        assert_eq!(a.config.config.as_deref(), Some(Path::new("/c.yaml")));
        assert_eq!(a.config.sets, ["fit.iters=5", "seed=2"]);
        assert!(parse(&["--devices", "zero"]).is_err());
        assert!(config(&parse(&["--queue-size", "0"]).unwrap()).is_err());
        assert!(config(&parse(&["--timeout", "0"]).unwrap()).is_err());
        assert!(config(&parse(&["--devices", "1,1"]).unwrap()).is_err());
        let a = parse(&[
            "--host",
            "0.0.0.0",
            "--header-timeout",
            "0.5",
            "--body-timeout",
            "2",
            "--max-connections",
            "9",
        ]);
        let c = config(&a.unwrap()).unwrap();
        assert_eq!(c.host, "0.0.0.0");
        assert_eq!(
            (c.header_read_timeout, c.body_read_timeout),
            (Duration::from_millis(500), Duration::from_secs(2))
        );
        assert_eq!(c.max_connections, 9);
        assert!(config(&parse(&["--header-timeout", "0"]).unwrap()).is_err());
        assert!(config(&parse(&["--max-connections", "0"]).unwrap()).is_err());
    }

    #[test]
    fn bad_configs_and_missing_models_fail_cleanly() {
        let a = parse(&[
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--profile",
            "development",
            "--set",
            "fit.iterz=3",
        ])
        .unwrap();
        let msg = format!("{:#}", run(a).err().expect("unknown key"));
        assert!(msg.contains("iterz"), "{msg}");
        let a = parse(&["--host", "127.0.0.1", "--port", "0", "--profile", "nope"]).unwrap();
        let msg = format!("{:#}", run(a).err().expect("unknown profile"));
        assert!(msg.contains("nope"), "{msg}");
    }

    /// Issue 17, item 8: the README's `serve` section documents every option.
    #[test]
    fn the_readme_documents_every_option() {
        use clap::CommandFactory;
        let readme = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"));
        let start = readme
            .find("### `splatforge serve")
            .expect("a serve section");
        let section = &readme[start..];
        let section = &section[..section.find("\n## ").unwrap_or(section.len())];
        let command = Cli::command();
        let options: Vec<&str> = command
            .get_arguments()
            .filter_map(|a| a.get_long())
            .collect();
        assert!(options.len() >= 15, "{options:?}");
        let missing: Vec<&&str> = options
            .iter()
            .filter(|o| !section.contains(&format!("`--{o}")))
            .collect();
        assert!(
            missing.is_empty(),
            "serve options missing from the README: {missing:?}"
        );
    }

    /// Issue 17, item 7: a bad `--models` fails before the port opens. The
    /// port is taken, so an error about the models (not about binding) shows
    /// that they were checked first.
    #[test]
    fn a_bad_models_path_fails_before_the_port_opens() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port().to_string();
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-models");
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        for (models, needle) in [
            (&missing, "no such model folder"),
            (&empty, "no MVDream model here"),
        ] {
            let args = [
                "--port",
                &port,
                "--profile",
                "development",
                "--models",
                models.to_str().unwrap(),
            ];
            let msg = format!(
                "{:#}",
                run(parse(&args).unwrap()).err().expect("bad models")
            );
            assert!(msg.contains(needle) && !msg.contains("binding"), "{msg}");
        }
    }
}
