//! Range and consistency checks of a whole configuration.

use super::{ConfigError, InitMethod, MatteMethod, PipelineConfig, PROMPT_PLACEHOLDER};

impl PipelineConfig {
    /// Checks ranges and consistency; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: String| Err(ConfigError(format!("{key}: {why}")));
        let t = &self.trellis;
        for (key, steps) in [
            ("trellis.sparse_structure_steps", t.sparse_structure_steps),
            ("trellis.slat_steps", t.slat_steps),
        ] {
            if let Some(n) = steps.filter(|n| !(1..=1000).contains(n)) {
                return bad(key, format!("must be 1 to 1000, got {n}"));
            }
        }
        for (key, cfg) in [
            ("trellis.sparse_structure_cfg", t.sparse_structure_cfg),
            ("trellis.slat_cfg", t.slat_cfg),
        ] {
            if let Some(c) = cfg.filter(|c| !(c.is_finite() && *c >= 0.0)) {
                return bad(key, format!("must be finite and ≥ 0, got {c}"));
            }
        }
        let m = &self.matte;
        if let Some(fallback) = m.fallback.filter(|f| *f != MatteMethod::BirefnetLite) {
            return bad(
                "matte.fallback",
                format!(
                    "only birefnet-lite (or null) is a fallback, got {}",
                    fallback.name()
                ),
            );
        }
        let f = &self.flux;
        if !(1..=100).contains(&f.steps) {
            return bad("flux.steps", format!("must be 1 to 100, got {}", f.steps));
        }
        for (key, side) in [("flux.width", f.width), ("flux.height", f.height)] {
            if side == 0 || side % 16 != 0 || side > 2048 {
                return bad(
                    key,
                    format!("must be a multiple of 16 from 16 to 2048, got {side}"),
                );
            }
        }
        if !(1..=512).contains(&f.max_sequence_length) {
            return bad(
                "flux.max_sequence_length",
                format!("must be 1 to 512, got {}", f.max_sequence_length),
            );
        }
        if !(f.guidance.is_finite() && f.guidance >= 0.0) {
            return bad(
                "flux.guidance",
                format!("must be finite and ≥ 0, got {}", f.guidance),
            );
        }
        if f.prompt_template.matches(PROMPT_PLACEHOLDER).count() != 1 {
            return bad(
                "flux.prompt_template",
                format!(
                    "must contain {PROMPT_PLACEHOLDER} exactly once, got {:?}",
                    f.prompt_template
                ),
            );
        }
        let d = &self.diffusion;
        if d.num_inference_steps == 0 || d.num_inference_steps > 1000 {
            return bad(
                "diffusion.num_inference_steps",
                format!("must be 1 to 1000, got {}", d.num_inference_steps),
            );
        }
        if !d.guidance_scale.is_finite() || d.guidance_scale < 0.0 {
            return bad(
                "diffusion.guidance_scale",
                format!("must be finite and ≥ 0, got {}", d.guidance_scale),
            );
        }
        if d.n_views == 0 || d.n_views > 16 {
            return bad(
                "diffusion.n_views",
                format!("must be 1 to 16, got {}", d.n_views),
            );
        }
        if d.resolution == 0 || d.resolution % 8 != 0 || d.resolution > 2048 {
            return bad(
                "diffusion.resolution",
                format!(
                    "must be a multiple of 8 from 8 to 2048, got {}",
                    d.resolution
                ),
            );
        }
        if !(d.camera_radius.is_finite() && d.camera_radius > 0.0) {
            return bad(
                "diffusion.camera_radius",
                format!("must be positive, got {}", d.camera_radius),
            );
        }
        if !(d.fovy.is_finite() && d.fovy > 1.0 && d.fovy < 170.0) {
            return bad(
                "diffusion.fovy",
                format!("must be between 1 and 170 degrees, got {}", d.fovy),
            );
        }
        if !d.elevation.is_finite() || d.elevation.abs() > 89.0 {
            return bad(
                "diffusion.elevation",
                format!("must be within ±89 degrees, got {}", d.elevation),
            );
        }
        if !d.azimuth_start.is_finite() {
            return bad("diffusion.azimuth_start", "must be finite".into());
        }
        if d.vae_tile_size < 16 || d.vae_tile_size % 8 != 0 {
            return bad(
                "diffusion.vae_tile_size",
                format!(
                    "must be a multiple of 8, at least 16, got {}",
                    d.vae_tile_size
                ),
            );
        }
        if d.vae_tile_overlap % 8 != 0 || d.vae_tile_overlap >= d.vae_tile_size {
            return bad(
                "diffusion.vae_tile_overlap",
                format!(
                    "must be a multiple of 8 below vae_tile_size, got {}",
                    d.vae_tile_overlap
                ),
            );
        }
        let a = &self.alpha;
        if !(a.low.is_finite()
            && a.high.is_finite()
            && 0.0 <= a.low
            && a.low < a.high
            && a.high <= 1.0)
        {
            return bad(
                "alpha.low",
                format!("need 0 ≤ low < high ≤ 1, got low {} high {}", a.low, a.high),
            );
        }
        if a.open_radius > 16 {
            return bad(
                "alpha.open_radius",
                format!("must be at most 16, got {}", a.open_radius),
            );
        }
        if !(a.min_component.is_finite() && (0.0..1.0).contains(&a.min_component)) {
            return bad(
                "alpha.min_component",
                format!("must be in [0, 1), got {}", a.min_component),
            );
        }
        let i = &self.init;
        if i.grid < 2 || i.grid > 512 {
            return bad("init.grid", format!("must be 2 to 512, got {}", i.grid));
        }
        if !(i.bound.is_finite() && i.bound > 0.0) {
            return bad("init.bound", format!("must be positive, got {}", i.bound));
        }
        if !(i.mask_threshold > 0.0 && i.mask_threshold < 1.0) {
            return bad(
                "init.mask_threshold",
                format!("must be in (0, 1), got {}", i.mask_threshold),
            );
        }
        if !(i.opacity > 0.0 && i.opacity < 1.0) {
            return bad(
                "init.opacity",
                format!("must be in (0, 1), got {}", i.opacity),
            );
        }
        if i.mask_dilation > 32 {
            return bad(
                "init.mask_dilation",
                format!("must be at most 32, got {}", i.mask_dilation),
            );
        }
        self.fit
            .validate()
            .map_err(|e| ConfigError(format!("fit.{e}")))?;
        if self.fit.num_pts == 0 {
            return bad("fit.num_pts", "must be at least 1".into());
        }
        let s = &self.sds;
        if s.sds_iters > 0 && (s.resolution == 0 || s.resolution % 8 != 0 || s.resolution > 2048) {
            return bad(
                "sds.resolution",
                format!(
                    "must be a multiple of 8 from 8 to 2048, got {}",
                    s.resolution
                ),
            );
        }
        if !(0.0 <= s.min_step && s.min_step <= s.max_step && s.max_step < 1.0) {
            return bad(
                "sds.min_step",
                format!(
                    "need 0 ≤ min_step ≤ max_step < 1, got {} and {}",
                    s.min_step, s.max_step
                ),
            );
        }
        if !(s.annealing_eta.is_finite() && s.annealing_eta > 0.0) {
            return bad(
                "sds.annealing_eta",
                format!("must be positive, got {}", s.annealing_eta),
            );
        }
        if !s.guidance_scale.is_finite() || s.guidance_scale < 0.0 {
            return bad(
                "sds.guidance_scale",
                format!("must be finite and ≥ 0, got {}", s.guidance_scale),
            );
        }
        for (key, v) in [
            ("sds.lambda_sds", s.lambda_sds),
            ("sds.lambda_views", s.lambda_views),
            ("sds.lr_scale", s.lr_scale),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(key, format!("must be finite and ≥ 0, got {v}"));
            }
        }
        if !(1..=16).contains(&s.batch_size) {
            return bad(
                "sds.batch_size",
                format!("must be 1 to 16, got {}", s.batch_size),
            );
        }
        if s.from_scratch {
            if s.sds_iters == 0 {
                return bad(
                    "sds.from_scratch",
                    "needs sds.sds_iters > 0 (nothing else trains the Gaussians)".into(),
                );
            }
            if s.lambda_views != 0.0 {
                return bad(
                    "sds.from_scratch",
                    format!(
                        "needs sds.lambda_views: 0 (no views are generated), got {}",
                        s.lambda_views
                    ),
                );
            }
            if self.init.method != InitMethod::Random {
                return bad(
                    "sds.from_scratch",
                    "needs init.method: random (carving needs the views)".into(),
                );
            }
        }
        let [lo, hi] = s.elevation_range;
        if !(lo.is_finite() && hi.is_finite() && lo <= hi && lo >= -89.0 && hi <= 89.0) {
            return bad(
                "sds.elevation_range",
                format!("need -89 ≤ low ≤ high ≤ 89, got [{lo}, {hi}]"),
            );
        }
        if !(self.output.box_size.is_finite() && self.output.box_size > 0.0) {
            return bad(
                "output.box_size",
                format!("must be positive, got {}", self.output.box_size),
            );
        }
        Ok(())
    }
}
