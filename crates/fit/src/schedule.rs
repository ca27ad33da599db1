//! Schedules: the exponential position learning rate with delay (3DGS's
//! `get_expon_lr_func`), the SH degree warm-up, and the render-size schedule
//! (DreamGaussian's 128 → 256 → 512).
//!
//! Steps are 1-based as in DreamGaussian's and 3DGS's loops: step `i` is
//! the `i`-th optimisation step, and its learning rate is `lr(i)`.

use crate::config::FitConfig;

/// `lr(step) = delay(step) · exp(lerp(ln lr_init, ln lr_final, clamp(step / max_steps, 0, 1)))`
/// with `delay(step) = lr_delay_mult + (1 − lr_delay_mult) · sin(π/2 · clamp(step / lr_delay_steps, 0, 1))`
/// when `lr_delay_steps > 0` and 1 otherwise; `lr_init` when `lr_init == lr_final`;
/// 0 for a negative step or when both rates are 0.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExponLr {
    pub lr_init: f64,
    pub lr_final: f64,
    pub lr_delay_steps: u32,
    pub lr_delay_mult: f64,
    pub max_steps: u32,
}

impl ExponLr {
    /// The position schedule of `config`, scaled by `spatial_lr_scale`.
    pub fn position(config: &FitConfig) -> ExponLr {
        let s = config.spatial_lr_scale as f64;
        ExponLr {
            lr_init: config.position_lr_init as f64 * s,
            lr_final: config.position_lr_final as f64 * s,
            lr_delay_steps: config.position_lr_delay_steps,
            lr_delay_mult: config.position_lr_delay_mult as f64,
            max_steps: config.position_lr_max_steps,
        }
    }

    pub fn at(&self, step: i64) -> f64 {
        if self.lr_init == self.lr_final {
            return self.lr_init;
        }
        if step < 0 || (self.lr_init == 0.0 && self.lr_final == 0.0) {
            return 0.0;
        }
        let step = step as f64;
        let delay = if self.lr_delay_steps > 0 {
            let r = (step / self.lr_delay_steps as f64).clamp(0.0, 1.0);
            self.lr_delay_mult + (1.0 - self.lr_delay_mult) * (0.5 * std::f64::consts::PI * r).sin()
        } else {
            1.0
        };
        let t = (step / self.max_steps.max(1) as f64).clamp(0.0, 1.0);
        delay * (self.lr_init.ln() * (1.0 - t) + self.lr_final.ln() * t).exp()
    }
}

/// Learning rates of the six parameter groups at one step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LearningRates {
    pub xyz: f32,
    pub f_dc: f32,
    pub f_rest: f32,
    pub opacity: f32,
    pub scaling: f32,
    pub rotation: f32,
}

impl LearningRates {
    /// DreamGaussian's `training_setup` + `update_learning_rate(step)`.
    pub fn at(config: &FitConfig, position: &ExponLr, step: u32) -> LearningRates {
        LearningRates {
            xyz: position.at(step as i64) as f32,
            f_dc: config.feature_lr,
            f_rest: config.feature_lr / 20.0,
            opacity: config.opacity_lr,
            scaling: config.scaling_lr,
            rotation: config.rotation_lr,
        }
    }
}

/// Active SH degree at `step`: 3DGS raises it by one every `interval` steps
/// (at steps `interval`, `2·interval`, …) up to `max`; `interval == 0` means
/// the full degree from the start.
pub fn active_sh_degree(step: u32, max: u8, interval: u32) -> u8 {
    if interval == 0 {
        return max;
    }
    (step / interval).min(max as u32) as u8
}

/// Longest image side to render at `step` of `iters`, or `None` for the
/// views' own sizes. With DreamGaussian's `[128, 256, 512]` and milestones
/// `[0.3, 0.6]`: 128 while `step / iters < 0.3`, 256 below 0.6, then 512.
pub fn render_size(config: &FitConfig, step: u32) -> Option<u32> {
    if config.render_sizes.is_empty() {
        return None;
    }
    let ratio = (step as f32 / config.iters as f32).min(1.0);
    let stage = config
        .render_size_milestones
        .iter()
        .take_while(|&&m| ratio >= m)
        .count();
    Some(config.render_sizes[stage.min(config.render_sizes.len() - 1)])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 3DGS formula written out independently.
    fn reference(
        lr_init: f64,
        lr_final: f64,
        delay_steps: f64,
        delay_mult: f64,
        max_steps: f64,
        step: f64,
    ) -> f64 {
        let delay = if delay_steps > 0.0 {
            delay_mult
                + (1.0 - delay_mult)
                    * (0.5 * std::f64::consts::PI * (step / delay_steps).clamp(0.0, 1.0)).sin()
        } else {
            1.0
        };
        let t = (step / max_steps).clamp(0.0, 1.0);
        delay * lr_init.powf(1.0 - t) * lr_final.powf(t)
    }

    #[test]
    fn expon_lr_matches_3dgs_formula() {
        let s = ExponLr {
            lr_init: 0.01,
            lr_final: 0.0002,
            lr_delay_steps: 0,
            lr_delay_mult: 0.02,
            max_steps: 300,
        };
        assert!((s.at(0) - 0.01).abs() < 1e-12);
        assert!((s.at(300) - 0.0002).abs() < 1e-12);
        assert!((s.at(1000) - 0.0002).abs() < 1e-12);
        // Geometric midpoint at half way: sqrt(0.01 · 0.0002).
        assert!((s.at(150) - (0.01f64 * 0.0002).sqrt()).abs() < 1e-12);
        for step in [1, 17, 99, 250] {
            let r = reference(0.01, 0.0002, 0.0, 0.02, 300.0, step as f64);
            assert!((s.at(step) - r).abs() < 1e-12 * r.max(1.0), "step {step}");
        }
        assert_eq!(s.at(-1), 0.0);

        // With a delay ramp (3DGS's lr_delay_steps).
        let d = ExponLr {
            lr_delay_steps: 100,
            ..s
        };
        assert!((d.at(0) - 0.01 * 0.02).abs() < 1e-12);
        for step in [0, 10, 50, 100, 200] {
            let r = reference(0.01, 0.0002, 100.0, 0.02, 300.0, step as f64);
            assert!((d.at(step) - r).abs() < 1e-12, "step {step}");
        }
        // Constant when init == final, whatever the step.
        let c = ExponLr {
            lr_init: 0.5,
            lr_final: 0.5,
            ..s
        };
        assert_eq!(c.at(12345), 0.5);
    }

    #[test]
    fn position_schedule_uses_spatial_scale() {
        let config = FitConfig {
            spatial_lr_scale: 10.0,
            position_lr_init: 0.001,
            position_lr_final: 0.00002,
            position_lr_max_steps: 300,
            ..Default::default()
        };
        let p = ExponLr::position(&config);
        let lrs = LearningRates::at(&config, &p, 0);
        assert!((lrs.xyz - 0.01).abs() < 1e-9);
        assert!((LearningRates::at(&config, &p, 300).xyz - 0.0002).abs() < 1e-9);
        assert!((lrs.f_rest - config.feature_lr / 20.0).abs() < 1e-12);
    }

    #[test]
    fn sh_warm_up() {
        assert_eq!(active_sh_degree(1, 3, 1000), 0);
        assert_eq!(active_sh_degree(999, 3, 1000), 0);
        assert_eq!(active_sh_degree(1000, 3, 1000), 1);
        assert_eq!(active_sh_degree(2500, 3, 1000), 2);
        assert_eq!(active_sh_degree(9000, 3, 1000), 3);
        assert_eq!(active_sh_degree(9000, 1, 1000), 1);
        assert_eq!(active_sh_degree(1, 2, 0), 2);
    }

    #[test]
    fn render_size_schedule_as_dreamgaussian() {
        let config = FitConfig {
            iters: 1000,
            render_sizes: vec![128, 256, 512],
            render_size_milestones: vec![0.3, 0.6],
            ..Default::default()
        };
        assert_eq!(render_size(&config, 1), Some(128));
        assert_eq!(render_size(&config, 299), Some(128));
        assert_eq!(render_size(&config, 300), Some(256));
        assert_eq!(render_size(&config, 599), Some(256));
        assert_eq!(render_size(&config, 600), Some(512));
        assert_eq!(render_size(&config, 1000), Some(512));
        assert_eq!(render_size(&FitConfig::default(), 10), None);
    }
}
