//! Tests of the configuration: the built-in profiles, resolution, unknown and
//! aliased keys, `--set` and validation.

use super::*;

fn sources(profile: Option<&str>, sets: &[&str]) -> ConfigSources {
    ConfigSources {
        profile: profile.map(str::to_string),
        config_file: None,
        sets: sets.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn every_builtin_profile_parses_and_validates() {
    for (name, _) in PROFILES {
        let c = PipelineConfig::profile(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        // Round trip through YAML.
        assert_eq!(
            PipelineConfig::from_yaml_str(&c.to_yaml()).unwrap(),
            c,
            "{name}"
        );
    }
    let speed = PipelineConfig::profile("speed").unwrap();
    let quality = PipelineConfig::profile("quality").unwrap();
    assert_eq!(speed.sds.sds_iters, 0);
    assert!(quality.sds.sds_iters > 0);
    assert!(quality.diffusion.num_inference_steps > speed.diffusion.num_inference_steps);
    let memory = PipelineConfig::profile("memory").unwrap();
    assert!(memory.diffusion.vae_slicing && memory.diffusion.vae_tiling);
    let dev = PipelineConfig::profile("development").unwrap();
    assert!(dev.diffusion.resolution <= 64 && dev.fit.iters <= 20);
    assert_eq!(dev.pipeline, PipelineKind::Mvdream);
    // The image profiles: pipeline.json's samplers, fewer steps, tiny sizes.
    let image = |name| PipelineConfig::profile(name).unwrap();
    let (quality, speed, dev) = (
        image("image-quality"),
        image("image-speed"),
        image("image-development"),
    );
    for c in [&quality, &speed, &dev] {
        assert_eq!(c.pipeline, PipelineKind::Trellis);
        assert!(!c.output.normalize && c.output.min_gaussians == 0);
    }
    assert_eq!(quality.trellis, TrellisConfig::default());
    assert_eq!(
        (
            speed.trellis.sparse_structure_steps,
            speed.trellis.slat_steps
        ),
        (Some(12), Some(12))
    );
    assert_eq!(dev.trellis.slat_steps, Some(2));
    assert_eq!(dev.trellis.precision, Precision::F32);
    let yaml = speed.to_yaml();
    assert!(yaml.contains("pipeline: trellis") && yaml.contains("slat_steps: 12"));
    assert!(
        !yaml.contains("diffusion:") && !yaml.contains("sds:"),
        "{yaml}"
    );
    let e = sources(Some("image-speed"), &["trellis.slat_steps=0"])
        .resolve()
        .unwrap_err()
        .0;
    assert!(e.contains("trellis.slat_steps"), "{e}");
    let e = sources(Some("image-speed"), &["trellis.slat_stepz=3"])
        .resolve()
        .unwrap_err()
        .0;
    assert!(e.contains("trellis") && e.contains("slat_stepz"), "{e}");
}

#[test]
fn default_profile_is_balanced_and_unknown_profiles_are_named() {
    let (name, c) = sources(None, &[]).resolve().unwrap();
    assert_eq!(name, "balanced");
    assert_eq!(c, PipelineConfig::profile("balanced").unwrap());
    let e = sources(Some("fastest"), &[]).resolve().unwrap_err().0;
    assert!(e.contains("fastest") && e.contains("speed"), "{e}");
}

#[test]
fn unknown_keys_are_errors_naming_them() {
    for (yaml, key) in [
        ("sds:\n  sds_iter: 3\n", "sds_iter"),
        (
            "diffusion:\n  num_inference_step: 3\n",
            "num_inference_step",
        ),
        (
            "fit:\n  densify_grad_treshold: 0.1\n",
            "densify_grad_treshold",
        ),
        ("bogus: 1\n", "bogus"),
        ("model:\n  rescale_factor: 0.5\n", "model"),
    ] {
        let e = PipelineConfig::from_yaml_str(yaml).unwrap_err().0;
        assert!(e.contains(key), "{yaml}: {e}");
    }
    let e = PipelineConfig::from_yaml_str("sds:\n  sds_iter: 3\n")
        .unwrap_err()
        .0;
    assert!(e.starts_with("sds: "), "{e}");
    let e = sources(Some("speed"), &["sds.sds_iter=3"])
        .resolve()
        .unwrap_err()
        .0;
    assert!(e.contains("sds") && e.contains("sds_iter"), "{e}");
    let e = sources(Some("speed"), &["nosuch.key=3"])
        .resolve()
        .unwrap_err()
        .0;
    assert!(e.contains("nosuch"), "{e}");
}

#[test]
fn image_profiles_choose_their_matte_and_bad_matte_keys_are_named() {
    let matte = |name| PipelineConfig::profile(name).unwrap().matte;
    let quality = matte("image-quality");
    assert_eq!(
        (quality.method, quality.fallback, quality.precision),
        (
            MatteMethod::Birefnet,
            Some(MatteMethod::BirefnetLite),
            Precision::Bf16
        )
    );
    assert_eq!(matte("image-speed").method, MatteMethod::BirefnetLite);
    assert_eq!(matte("image-development").precision, Precision::F32);
    assert_eq!(matte("text-image-quality").method, MatteMethod::Birefnet);
    let yaml = PipelineConfig::profile("image-speed").unwrap().to_yaml();
    assert!(yaml.contains("method: birefnet-lite"), "{yaml}");
    let mvdream = PipelineConfig::profile("speed").unwrap().to_yaml();
    assert!(!mvdream.contains("matte:"), "{mvdream}");
    let e = sources(Some("image-quality"), &["matte.fallback=threshold"])
        .resolve()
        .unwrap_err()
        .to_string();
    assert!(e.contains("matte.fallback"), "{e}");
    let e = sources(Some("image-speed"), &["matte.method=rembg"])
        .resolve()
        .unwrap_err()
        .to_string();
    assert!(e.contains("matte") && e.contains("rembg"), "{e}");
    let (_, c) = sources(Some("image-quality"), &["matte.method=threshold"])
        .resolve()
        .unwrap();
    assert_eq!(c.matte.method, MatteMethod::Threshold);
}

#[test]
fn flux_trellis_profiles_show_their_flux_section_and_check_it() {
    let quality = PipelineConfig::profile("text-image-quality").unwrap();
    assert_eq!(quality.pipeline, PipelineKind::FluxTrellis);
    assert_eq!(
        (quality.flux.steps, quality.flux.width, quality.flux.height),
        (4, 512, 512)
    );
    assert_eq!(quality.trellis, TrellisConfig::default());
    let prompt = quality.flux.prompt("a red chair");
    assert!(
        prompt.contains("a red chair") && prompt.contains("white background"),
        "{prompt}"
    );
    let yaml = quality.to_yaml();
    assert!(
        yaml.contains("pipeline: flux-trellis")
            && yaml.contains("prompt_template:")
            && yaml.contains("trellis:")
            && !yaml.contains("diffusion:"),
        "{yaml}"
    );
    assert!(!PipelineConfig::profile("image-quality")
        .unwrap()
        .to_yaml()
        .contains("flux:"));
    assert!(!PipelineConfig::profile("balanced")
        .unwrap()
        .to_yaml()
        .contains("flux:"));
    let dev = PipelineConfig::profile("text-image-development").unwrap();
    assert_eq!(dev.flux.precision, Precision::F32);
    assert!(dev.flux.width <= 64 && dev.trellis.slat_steps == Some(2));
    for (set, needle) in [
        ("flux.steps=0", "flux.steps"),
        ("flux.width=100", "flux.width"),
        (
            "flux.prompt_template=no placeholder",
            "flux.prompt_template",
        ),
        (
            "flux.prompt_template='{prompt} and {prompt}'",
            "exactly once",
        ),
        ("flux.guidance=-1", "flux.guidance"),
        ("flux.stepz=3", "stepz"),
    ] {
        let e = sources(Some("text-image-development"), &[set])
            .resolve()
            .unwrap_err()
            .0;
        assert!(e.contains(needle), "{set}: {e}");
    }
}

#[test]
fn sets_override_with_dotted_paths_and_yaml_values() {
    let (_, c) = sources(
        Some("speed"),
        &[
            "fit.iters=123",
            "sds.sds_iters=7",
            "diffusion.precision=bf16",
            "diffusion.guidance_scale=3.5",
            "fit.render_sizes=[64, 128]",
            "fit.render_size_milestones=[0.5]",
            "seed=9",
            "diffusion.ref_size=128",
            "diffusion.negative_prompt=",
        ],
    )
    .resolve()
    .unwrap();
    assert_eq!(c.fit.iters, 123);
    assert_eq!(c.sds.sds_iters, 7);
    assert_eq!(c.diffusion.precision, Precision::Bf16);
    assert_eq!(c.diffusion.guidance_scale, 3.5);
    assert_eq!(c.fit.render_sizes, vec![64, 128]);
    assert_eq!(c.seed, 9);
    assert_eq!(c.diffusion.resolution, 128);
    assert_eq!(c.diffusion.negative_prompt, "");
    // The rest of the profile is kept.
    let speed = PipelineConfig::profile("speed").unwrap();
    assert_eq!(c.fit.num_pts, speed.fit.num_pts);
    assert_eq!(c.alpha, speed.alpha);

    for (set, needle) in [
        ("fit.iters", "KEY=VALUE"),
        ("fit.iters=lots", "iters"),
        ("fit.iters=0", "fit.iters"),
        ("seed.x=1", "`seed` is a value"),
        (".x=1", "key path"),
        ("diffusion.precision=fp8", "precision"),
    ] {
        let e = sources(Some("speed"), &[set]).resolve().unwrap_err().0;
        assert!(e.contains(needle), "{set}: {e}");
    }
}

#[test]
fn config_file_merges_over_the_profile_and_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("mine.yaml");
    std::fs::write(&p, "fit:\n  iters: 77\nsds:\n  sds_iters: 5\n").unwrap();
    let s = ConfigSources {
        profile: Some("quality".into()),
        config_file: Some(p.clone()),
        sets: vec!["fit.iters=78".into()],
    };
    let (name, c) = s.resolve().unwrap();
    assert_eq!(name, "quality");
    assert_eq!((c.fit.iters, c.sds.sds_iters), (78, 5));
    let q = PipelineConfig::profile("quality").unwrap();
    assert_eq!(c.fit.num_pts, q.fit.num_pts);
    assert_eq!(c.diffusion, q.diffusion);

    std::fs::write(&p, "diffusion:\n  ref_size: 64\n").unwrap();
    let c = ConfigSources {
        config_file: Some(p.clone()),
        ..Default::default()
    }
    .resolve()
    .unwrap()
    .1;
    assert_eq!(c.diffusion.resolution, 64);
    std::fs::write(&p, "diffusion:\n  ref_size: 64\n  resolution: 64\n").unwrap();
    let e = ConfigSources {
        config_file: Some(p.clone()),
        ..Default::default()
    }
    .resolve()
    .unwrap_err()
    .0;
    assert!(e.contains("same key"), "{e}");
    std::fs::write(&p, "sds:\n  lambda_sdss: 1\n").unwrap();
    let e = ConfigSources {
        config_file: Some(p.clone()),
        ..Default::default()
    }
    .resolve()
    .unwrap_err()
    .0;
    assert!(e.contains("mine.yaml") && e.contains("lambda_sdss"), "{e}");
    let e = ConfigSources {
        config_file: Some(dir.path().join("none.yaml")),
        ..Default::default()
    }
    .resolve()
    .unwrap_err()
    .0;
    assert!(e.contains("none.yaml"), "{e}");
}

#[test]
fn bad_values_name_the_key() {
    for (yaml, key) in [
        ("diffusion:\n  resolution: 100\n", "diffusion.resolution"),
        ("diffusion:\n  n_views: 0\n", "diffusion.n_views"),
        ("alpha:\n  low: 0.5\n  high: 0.2\n", "alpha.low"),
        ("sds:\n  min_step: 0.9\n  max_step: 0.1\n", "sds.min_step"),
        ("sds:\n  sds_iters: 3\n  resolution: 12\n", "sds.resolution"),
        ("init:\n  grid: 1\n", "init.grid"),
        ("fit:\n  iters: 0\n", "fit.iters"),
        (
            "diffusion:\n  vae_tile_overlap: 256\n",
            "diffusion.vae_tile_overlap",
        ),
    ] {
        let e = PipelineConfig::from_yaml_str(yaml).unwrap_err().0;
        assert!(e.contains(key), "{yaml}: {e}");
    }
}

#[test]
fn reference_profiles_mirror_the_404_miner() {
    let shipped = PipelineConfig::profile("reference-text-mv").unwrap();
    let fast = PipelineConfig::profile("reference-fast").unwrap();
    for c in [&shipped, &fast] {
        assert!(c.sds.from_scratch && c.sds.lambda_views == 0.0);
        assert_eq!(c.init.method, InitMethod::Random);
        assert_eq!(c.diffusion.precision, Precision::F32);
        assert_eq!(c.diffusion.vae_precision, Some(Precision::F32));
        assert_eq!(c.diffusion.prompt_suffix, "");
        assert_eq!(c.sds.resolution, 256);
        assert_eq!(c.fit.position_lr_max_steps, 300);
    }
    assert_eq!(
        (
            shipped.sds.sds_iters,
            shipped.sds.batch_size,
            shipped.fit.num_pts
        ),
        (1000, 1, 5000)
    );
    assert_eq!(shipped.sds.guidance_scale, 100.0);
    assert_eq!(
        (fast.sds.sds_iters, fast.sds.batch_size, fast.fit.num_pts),
        (250, 4, 4000)
    );
    assert_eq!(fast.sds.guidance_scale, 50.0);
}

#[test]
fn sds_batch_and_from_scratch_are_checked() {
    let c = PipelineConfig::default();
    assert_eq!((c.sds.batch_size, c.sds.from_scratch), (1, false));
    for (yaml, key, why) in [
        ("sds:\n  batch_size: 0\n", "sds.batch_size", "1 to 16"),
        ("sds:\n  batch_size: 17\n", "sds.batch_size", "1 to 16"),
        (
            "sds:\n  from_scratch: true\n  lambda_views: 0\n",
            "sds.from_scratch",
            "sds_iters",
        ),
        (
            "sds:\n  from_scratch: true\n  sds_iters: 5\n",
            "sds.from_scratch",
            "lambda_views",
        ),
        (
            "init:\n  method: carve\nsds:\n  from_scratch: true\n  sds_iters: 5\n  lambda_views: 0\n",
            "sds.from_scratch",
            "init.method",
        ),
    ] {
        let e = PipelineConfig::from_yaml_str(yaml).unwrap_err().0;
        assert!(e.contains(key) && e.contains(why), "{yaml}: {e}");
    }
    let ok = PipelineConfig::from_yaml_str(
        "sds:\n  from_scratch: true\n  sds_iters: 5\n  lambda_views: 0\n  batch_size: 4\n",
    )
    .unwrap();
    assert_eq!((ok.sds.batch_size, ok.sds.sds_iters), (4, 5));
    // --set reaches both keys.
    let (_, c) = sources(
        Some("reference-fast"),
        &["sds.batch_size=2", "sds.sds_iters=3"],
    )
    .resolve()
    .unwrap();
    assert_eq!((c.sds.batch_size, c.sds.sds_iters), (2, 3));
}

#[test]
fn text_image_speed_is_text_image_quality_flux_with_image_speed_trellis_and_matte() {
    let fast = PipelineConfig::profile("text-image-speed").unwrap();
    let quality = PipelineConfig::profile("text-image-quality").unwrap();
    let image_speed = PipelineConfig::profile("image-speed").unwrap();
    assert_eq!(fast.pipeline, PipelineKind::FluxTrellis);
    assert_eq!(fast.flux, quality.flux);
    assert_eq!(fast.trellis, image_speed.trellis);
    assert_eq!(fast.matte.method, MatteMethod::BirefnetLite);
    assert_eq!(fast.matte.precision, Precision::Bf16);
}
