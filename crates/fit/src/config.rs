//! The fitting configuration: a YAML file whose keys carry DreamGaussian's
//! (and 3DGS's) names, so that users' configs map over key for key.
//!
//! Every key is optional; missing keys take the defaults below. An unknown
//! key is an error that names it (`#[serde(deny_unknown_fields)]`), so a
//! typo never silently falls back to a default.
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `iters` | 500 | optimisation steps |
//! | `seed` | 0 | seeds every random choice (init, view order, splits) |
//! | `batch_size` | 1 | training views per step (loss = mean over them; DreamGaussian: 1) |
//! | `num_pts` | 5000 | random-init points (DreamGaussian) |
//! | `init_radius` | 0.5 | radius of the random-init ball (scene units) |
//! | `sh_degree` | 0 | SH degree of the result (0–3) |
//! | `sh_degree_interval` | 1000 | raise the active SH degree every N steps (3DGS); 0 = full degree from the start (DreamGaussian) |
//! | `position_lr_init` | 0.001 | position LR at step 0, times `spatial_lr_scale` |
//! | `position_lr_final` | 0.00002 | position LR from `position_lr_max_steps` on, times `spatial_lr_scale` |
//! | `position_lr_delay_mult` | 0.02 | LR multiplier at step 0 of the delay ramp (only with `position_lr_delay_steps` > 0, as in 3DGS) |
//! | `position_lr_delay_steps` | 0 | length of the delay ramp (3DGS and DreamGaussian pass 0) |
//! | `position_lr_max_steps` | 500 | steps of the exponential decay |
//! | `spatial_lr_scale` | 10 | scene scale for the position LR (DreamGaussian: 10 for random init) |
//! | `feature_lr` | 0.01 | SH DC LR (higher SH bands: `feature_lr / 20`) |
//! | `opacity_lr` | 0.05 | opacity-logit LR |
//! | `scaling_lr` | 0.005 | log-scale LR |
//! | `rotation_lr` | 0.005 | quaternion LR |
//! | `percent_dense` | 0.01 | clone if max scale ≤ `percent_dense · extent`, else split |
//! | `density_start_iter` | 0 | first step whose gradients count for densification |
//! | `density_end_iter` | 3000 | last step of densification (and opacity resets) |
//! | `densification_interval` | 50 | densify and prune every N steps |
//! | `opacity_reset_interval` | 700 | clamp opacities to ≤ 0.01 every N steps (0 = never) |
//! | `densify_grad_threshold` | 0.0002 | average view-space gradient norm (NDC units, 3DGS semantics) above which a Gaussian is cloned/split |
//! | `min_opacity` | 0.01 | prune below this opacity |
//! | `max_screen_size` | null | also prune Gaussians whose screen radius exceeded this many pixels since the last densification, and those larger than `0.1 · extent` in the world (3DGS); null = off |
//! | `extent` | null | scene extent for `percent_dense` and the world-size prune; null = 3DGS's camera extent (1.1 × the largest camera distance from the cameras' centroid) |
//! | `lambda_ssim` | 0.2 | loss = (1 − λ)·L1 + λ·(1 − SSIM) (3DGS's `lambda_dssim`) |
//! | `lambda_alpha` | 0.1 | weight of the mean absolute alpha error for views that have alpha |
//! | `white_background` | true | background colour (white, else black) for training and evaluation |
//! | `random_background` | false | views with alpha: each step picks white or black at random (DreamGaussian's `invert_bg_prob` 0.5); evaluation uses `white_background` |
//! | `render_sizes` | [] | render-size schedule, longest image side per stage (DreamGaussian: [128, 256, 512]); [] = the views' own sizes. Never upsamples |
//! | `render_size_milestones` | [] | fraction of `iters` at which each next stage starts (DreamGaussian: [0.3, 0.6]) |
//! | `antialiased` | false | render in gsplat's antialiased mode |

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{FitError, Result};

/// See the module docs for each key's meaning and default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FitConfig {
    pub iters: u32,
    pub seed: u64,
    pub batch_size: usize,

    pub num_pts: usize,
    pub init_radius: f32,
    pub sh_degree: u8,
    pub sh_degree_interval: u32,

    pub position_lr_init: f32,
    pub position_lr_final: f32,
    pub position_lr_delay_mult: f32,
    pub position_lr_delay_steps: u32,
    pub position_lr_max_steps: u32,
    pub spatial_lr_scale: f32,
    pub feature_lr: f32,
    pub opacity_lr: f32,
    pub scaling_lr: f32,
    pub rotation_lr: f32,

    pub percent_dense: f32,
    pub density_start_iter: u32,
    pub density_end_iter: u32,
    pub densification_interval: u32,
    pub opacity_reset_interval: u32,
    pub densify_grad_threshold: f32,
    pub min_opacity: f32,
    pub max_screen_size: Option<f32>,
    pub extent: Option<f32>,

    pub lambda_ssim: f32,
    pub lambda_alpha: f32,

    pub white_background: bool,
    pub random_background: bool,
    pub render_sizes: Vec<u32>,
    pub render_size_milestones: Vec<f32>,
    pub antialiased: bool,
}

impl Default for FitConfig {
    fn default() -> Self {
        FitConfig {
            iters: 500,
            seed: 0,
            batch_size: 1,
            num_pts: 5000,
            init_radius: 0.5,
            sh_degree: 0,
            sh_degree_interval: 1000,
            position_lr_init: 0.001,
            position_lr_final: 0.00002,
            position_lr_delay_mult: 0.02,
            position_lr_delay_steps: 0,
            position_lr_max_steps: 500,
            spatial_lr_scale: 10.0,
            feature_lr: 0.01,
            opacity_lr: 0.05,
            scaling_lr: 0.005,
            rotation_lr: 0.005,
            percent_dense: 0.01,
            density_start_iter: 0,
            density_end_iter: 3000,
            densification_interval: 50,
            opacity_reset_interval: 700,
            densify_grad_threshold: 0.0002,
            min_opacity: 0.01,
            max_screen_size: None,
            extent: None,
            lambda_ssim: 0.2,
            lambda_alpha: 0.1,
            white_background: true,
            random_background: false,
            render_sizes: Vec::new(),
            render_size_milestones: Vec::new(),
            antialiased: false,
        }
    }
}

impl FitConfig {
    /// Parses YAML (an empty document gives the defaults) and validates it.
    pub fn from_yaml_str(text: &str) -> Result<FitConfig> {
        let config: FitConfig = if text.trim().is_empty() {
            FitConfig::default()
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| FitError::Config(e.to_string()))?
        };
        config.validate()?;
        Ok(config)
    }

    /// Reads and parses a YAML file; errors name the file.
    pub fn load(path: &Path) -> Result<FitConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| FitError::io(path.display(), e))?;
        FitConfig::from_yaml_str(&text).map_err(|e| match e {
            FitError::Config(m) => FitError::Config(format!("{}: {m}", path.display())),
            e => e,
        })
    }

    /// The configuration as YAML (every key, with its value).
    pub fn to_yaml(&self) -> String {
        serde_yaml_ng::to_string(self).expect("config serialises")
    }

    /// Checks ranges and consistency; the error names the key.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, why: String| Err(FitError::Config(format!("{key}: {why}")));
        if self.iters == 0 {
            return bad("iters", "must be at least 1".into());
        }
        if self.batch_size == 0 {
            return bad("batch_size", "must be at least 1".into());
        }
        if self.sh_degree > 3 {
            return bad(
                "sh_degree",
                format!("{} is not supported (0 to 3)", self.sh_degree),
            );
        }
        let non_negative = [
            ("init_radius", self.init_radius),
            ("position_lr_init", self.position_lr_init),
            ("position_lr_final", self.position_lr_final),
            ("position_lr_delay_mult", self.position_lr_delay_mult),
            ("spatial_lr_scale", self.spatial_lr_scale),
            ("feature_lr", self.feature_lr),
            ("opacity_lr", self.opacity_lr),
            ("scaling_lr", self.scaling_lr),
            ("rotation_lr", self.rotation_lr),
            ("percent_dense", self.percent_dense),
            ("densify_grad_threshold", self.densify_grad_threshold),
            ("min_opacity", self.min_opacity),
            ("lambda_alpha", self.lambda_alpha),
        ];
        for (key, v) in non_negative {
            if !(v.is_finite() && v >= 0.0) {
                return bad(key, format!("must be finite and ≥ 0, got {v}"));
            }
        }
        if !(0.0..=1.0).contains(&self.lambda_ssim) {
            return bad(
                "lambda_ssim",
                format!("must be in [0, 1], got {}", self.lambda_ssim),
            );
        }
        if self.position_lr_max_steps == 0 {
            return bad("position_lr_max_steps", "must be at least 1".into());
        }
        if (self.position_lr_init == 0.0) != (self.position_lr_final == 0.0) {
            return bad(
                "position_lr_final",
                "position_lr_init and position_lr_final must both be > 0 (or both 0 to freeze positions)".into(),
            );
        }
        if self.min_opacity >= 1.0 {
            return bad(
                "min_opacity",
                format!("must be < 1, got {}", self.min_opacity),
            );
        }
        for (key, v) in [
            ("max_screen_size", self.max_screen_size),
            ("extent", self.extent),
        ] {
            if let Some(v) = v {
                if !(v.is_finite() && v > 0.0) {
                    return bad(key, format!("must be finite and > 0 (or null), got {v}"));
                }
            }
        }
        if self.densification_interval == 0 {
            return bad("densification_interval", "must be at least 1".into());
        }
        if self
            .render_sizes
            .iter()
            .any(|&s| s == 0 || s > splatforge_render::MAX_IMAGE_SIDE)
        {
            return bad(
                "render_sizes",
                format!("sizes must be 1 to {}", splatforge_render::MAX_IMAGE_SIDE),
            );
        }
        let stages = self.render_sizes.len();
        if stages > 0 && self.render_size_milestones.len() + 1 != stages {
            return bad(
                "render_size_milestones",
                format!(
                    "{} render_sizes need {} milestones, got {}",
                    stages,
                    stages - 1,
                    self.render_size_milestones.len()
                ),
            );
        }
        if stages == 0 && !self.render_size_milestones.is_empty() {
            return bad(
                "render_size_milestones",
                "given without render_sizes".into(),
            );
        }
        let mut last = 0.0f32;
        for &m in &self.render_size_milestones {
            if !(m.is_finite() && m >= last && m <= 1.0) {
                return bad(
                    "render_size_milestones",
                    "must be increasing fractions in [0, 1]".into(),
                );
            }
            last = m;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_and_validate() {
        let c = FitConfig::default();
        c.validate().unwrap();
        assert_eq!(FitConfig::from_yaml_str(&c.to_yaml()).unwrap(), c);
        assert_eq!(FitConfig::from_yaml_str("").unwrap(), c);
    }

    #[test]
    fn dreamgaussian_keys_parse() {
        let yaml = "
iters: 500
num_pts: 5000
sh_degree: 0
position_lr_init: 0.001
position_lr_final: 0.00002
position_lr_delay_mult: 0.02
position_lr_max_steps: 300
feature_lr: 0.01
opacity_lr: 0.05
scaling_lr: 0.005
rotation_lr: 0.005
percent_dense: 0.01
density_start_iter: 0
density_end_iter: 3000
densification_interval: 50
opacity_reset_interval: 700
densify_grad_threshold: 0.01
batch_size: 1
render_sizes: [128, 256, 512]
render_size_milestones: [0.3, 0.6]
max_screen_size: null
extent: 0.5
";
        let c = FitConfig::from_yaml_str(yaml).unwrap();
        assert_eq!(c.position_lr_max_steps, 300);
        assert_eq!(c.densify_grad_threshold, 0.01);
        assert_eq!(c.extent, Some(0.5));
        assert_eq!(c.render_sizes, vec![128, 256, 512]);
        assert_eq!(c.lambda_ssim, FitConfig::default().lambda_ssim);
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let e = FitConfig::from_yaml_str("iters: 10\ndensify_grad_treshold: 0.01\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("densify_grad_treshold"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        for (yaml, key) in [
            ("iters: 0", "iters"),
            ("sh_degree: 4", "sh_degree"),
            ("lambda_ssim: 1.5", "lambda_ssim"),
            ("feature_lr: -1", "feature_lr"),
            ("render_sizes: [128, 256]", "render_size_milestones"),
            ("batch_size: 0", "batch_size"),
        ] {
            let e = FitConfig::from_yaml_str(yaml).unwrap_err().to_string();
            assert!(e.contains(key), "{yaml}: {e}");
        }
        let e = FitConfig::from_yaml_str("iters: many")
            .unwrap_err()
            .to_string();
        assert!(e.contains("iters"), "{e}");
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fit.yaml");
        std::fs::write(&p, "bogus_key: 1\n").unwrap();
        let e = FitConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("fit.yaml") && e.contains("bogus_key"), "{e}");
    }
}
