//! DDIM sampling (Song et al. 2020), deterministic (η = 0), with the
//! configuration fields of diffusers' `DDIMScheduler`.
//!
//! SD 2.1-base / MVDream: `scaled_linear` betas from 0.00085 to 0.012 over
//! 1000 steps (LDM's `linear` schedule: `linspace(√β₀, √β₁, T)²`), ε
//! prediction, `set_alpha_to_one = false`, `steps_offset = 1`, "leading"
//! spacing. With these settings the timesteps and alphas are exactly those
//! of LDM's `DDIMSampler` that MVDream ships: timesteps `1, 1+T/n, …`, and the
//! last step goes to `ᾱ₀` instead of 1.

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    /// `linspace(β₀, β₁, T)`.
    Linear,
    /// `linspace(√β₀, √β₁, T)²` (Stable Diffusion; LDM calls it "linear").
    ScaledLinear,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionType {
    Epsilon,
    VPrediction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSpacing {
    /// `t_i = i·(T/n) + offset`, i = n−1 … 0.
    Leading,
    /// `t_i = round(T − i·T/n) − 1`.
    Trailing,
}

/// `scheduler/scheduler_config.json` (diffusers `DDIMScheduler`), the fields we use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DdimConfig {
    #[serde(default = "t1000")]
    pub num_train_timesteps: usize,
    #[serde(default = "b0")]
    pub beta_start: f64,
    #[serde(default = "b1")]
    pub beta_end: f64,
    #[serde(default = "sl")]
    pub beta_schedule: BetaSchedule,
    #[serde(default)]
    pub set_alpha_to_one: bool,
    #[serde(default = "one")]
    pub steps_offset: usize,
    #[serde(default = "eps")]
    pub prediction_type: PredictionType,
    #[serde(default = "leading")]
    pub timestep_spacing: TimestepSpacing,
}

fn t1000() -> usize {
    1000
}
fn b0() -> f64 {
    0.00085
}
fn b1() -> f64 {
    0.012
}
fn sl() -> BetaSchedule {
    BetaSchedule::ScaledLinear
}
fn one() -> usize {
    1
}
fn eps() -> PredictionType {
    PredictionType::Epsilon
}
fn leading() -> TimestepSpacing {
    TimestepSpacing::Leading
}

impl Default for DdimConfig {
    /// SD 2.1-base / MVDream.
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: BetaSchedule::ScaledLinear,
            set_alpha_to_one: false,
            steps_offset: 1,
            prediction_type: PredictionType::Epsilon,
            timestep_spacing: TimestepSpacing::Leading,
        }
    }
}

impl DdimConfig {
    /// `ᾱ_t` for t = 0 … T−1 (f64).
    pub fn alphas_cumprod(&self) -> Vec<f64> {
        let n = self.num_train_timesteps;
        let lin = |a: f64, b: f64, i: usize| {
            if n == 1 {
                a
            } else {
                a + (b - a) * i as f64 / (n - 1) as f64
            }
        };
        let mut acc = 1.0;
        (0..n)
            .map(|i| {
                let beta = match self.beta_schedule {
                    BetaSchedule::Linear => lin(self.beta_start, self.beta_end, i),
                    BetaSchedule::ScaledLinear => {
                        lin(self.beta_start.sqrt(), self.beta_end.sqrt(), i).powi(2)
                    }
                };
                acc *= 1.0 - beta;
                acc
            })
            .collect()
    }
}

/// A DDIM schedule for a given number of inference steps.
#[derive(Debug, Clone)]
pub struct DdimScheduler {
    config: DdimConfig,
    alphas_cumprod: Vec<f64>,
    final_alpha_cumprod: f64,
    timesteps: Vec<usize>,
}

impl DdimScheduler {
    pub fn new(
        config: &DdimConfig,
        num_inference_steps: usize,
    ) -> std::result::Result<Self, String> {
        let t = config.num_train_timesteps;
        if num_inference_steps == 0 || num_inference_steps > t {
            return Err(format!(
                "num_inference_steps must be 1 to {t}, got {num_inference_steps}"
            ));
        }
        let alphas_cumprod = config.alphas_cumprod();
        let final_alpha_cumprod = if config.set_alpha_to_one {
            1.0
        } else {
            alphas_cumprod[0]
        };
        let timesteps: Vec<usize> = match config.timestep_spacing {
            TimestepSpacing::Leading => {
                let ratio = t / num_inference_steps;
                (0..num_inference_steps)
                    .rev()
                    .map(|i| (i * ratio + config.steps_offset).min(t - 1))
                    .collect()
            }
            TimestepSpacing::Trailing => {
                let ratio = t as f64 / num_inference_steps as f64;
                (0..num_inference_steps)
                    .map(|i| ((t as f64 - i as f64 * ratio).round() as usize).saturating_sub(1))
                    .collect()
            }
        };
        Ok(Self {
            config: config.clone(),
            alphas_cumprod,
            final_alpha_cumprod,
            timesteps,
        })
    }

    pub fn config(&self) -> &DdimConfig {
        &self.config
    }

    /// Timesteps to visit, from noisiest to cleanest.
    pub fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    /// `ᾱ_t`, the cumulative product of `1 − β` up to `t` (training schedule).
    pub fn alpha_cumprod(&self, t: usize) -> f64 {
        self.alphas_cumprod[t]
    }

    pub fn alphas_cumprod(&self) -> &[f64] {
        &self.alphas_cumprod
    }

    /// The timestep after `t` (or `None` at the end).
    fn prev_alpha(&self, t: usize) -> f64 {
        let ratio = self.config.num_train_timesteps / self.timesteps.len();
        if t >= ratio {
            self.alphas_cumprod[t - ratio]
        } else {
            self.final_alpha_cumprod
        }
    }

    /// Coefficients `(c_x, c_ε)` with `x_prev = c_x·x_t + c_ε·ε̂` for ε
    /// prediction: `x̂₀ = (x_t − √(1−ᾱ_t)·ε̂)/√ᾱ_t`,
    /// `x_prev = √ᾱ_prev·x̂₀ + √(1−ᾱ_prev)·ε̂`.
    pub fn step_coefficients(&self, t: usize) -> (f64, f64) {
        let a_t = self.alphas_cumprod[t];
        let a_prev = self.prev_alpha(t);
        let cx = (a_prev / a_t).sqrt();
        let ce = (1.0 - a_prev).sqrt() - (a_prev * (1.0 - a_t) / a_t).sqrt();
        (cx, ce)
    }

    /// One DDIM step (η = 0) from `sample` (x_t) at timestep `t` given the
    /// model output (ε̂, or v for v-prediction). Returns x_{t_prev}.
    pub fn step(&self, model_output: &Tensor, t: usize, sample: &Tensor) -> Result<Tensor> {
        let a_t = self.alphas_cumprod[t];
        let a_prev = self.prev_alpha(t);
        let (pred_x0, pred_eps) = match self.config.prediction_type {
            PredictionType::Epsilon => {
                let x0 = ((sample - (model_output * (1.0 - a_t).sqrt())?)? / a_t.sqrt())?;
                (x0, model_output.clone())
            }
            PredictionType::VPrediction => {
                let x0 = ((sample * a_t.sqrt())? - (model_output * (1.0 - a_t).sqrt())?)?;
                let e = ((model_output * a_t.sqrt())? + (sample * (1.0 - a_t).sqrt())?)?;
                (x0, e)
            }
        };
        (pred_x0 * a_prev.sqrt())? + (pred_eps * (1.0 - a_prev).sqrt())?
    }

    /// Forward diffusion `x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε` (SDS noising).
    pub fn add_noise(&self, x0: &Tensor, noise: &Tensor, t: usize) -> Result<Tensor> {
        let a = self.alphas_cumprod[t];
        (x0 * a.sqrt())? + (noise * (1.0 - a).sqrt())?
    }

    /// The initial noise scale (1 for DDIM).
    pub fn init_noise_sigma(&self) -> f64 {
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn close(a: f64, b: f64, tol: f64) {
        assert!((a - b).abs() <= tol, "{a} vs {b}");
    }

    #[test]
    fn sd21_schedule() {
        let s = DdimScheduler::new(&DdimConfig::default(), 50).unwrap();
        // LDM's DDIMSampler: range(0, 1000, 20) + 1, reversed.
        assert_eq!(s.timesteps().len(), 50);
        assert_eq!(s.timesteps()[0], 981);
        assert_eq!(s.timesteps()[1], 961);
        assert_eq!(*s.timesteps().last().unwrap(), 1);
        // ᾱ from betas = linspace(√0.00085, √0.012, 1000)², values from a
        // direct Python evaluation of the same formula.
        close(s.alpha_cumprod(0), 0.99915, 1e-15);
        close(s.alpha_cumprod(1), 0.998_296_027_838_451_4, 1e-13);
        close(s.alpha_cumprod(961), 0.007_281_727_140_942_975, 1e-13);
        close(s.alpha_cumprod(981), 0.005_775_500_139_495_742_5, 1e-13);
        close(s.alpha_cumprod(999), 0.004_660_098_513_077_234, 1e-13);
    }

    #[test]
    fn step_matches_hand_computation() {
        let s = DdimScheduler::new(&DdimConfig::default(), 50).unwrap();
        let x = Tensor::new(&[1.0f32, 1.0], &Device::Cpu).unwrap();
        let e = Tensor::new(&[0.5f32, 0.5], &Device::Cpu).unwrap();
        // t = 981 → 961: x0 = (1 − √(1−ᾱ981)·0.5)/√ᾱ981, x' = √ᾱ961·x0 + √(1−ᾱ961)·0.5.
        let out = s.step(&e, 981, &x).unwrap().to_vec1::<f32>().unwrap();
        close(out[0] as f64, 1.061_225_697_819_786_7, 1e-5);
        // Last step t = 1 goes to ᾱ₀ (set_alpha_to_one = false), not 1.
        let out = s.step(&e, 1, &x).unwrap().to_vec1::<f32>().unwrap();
        close(out[0] as f64, 0.994_356_578_381_803_5, 1e-6);
        // The closed-form coefficients agree.
        let (cx, ce) = s.step_coefficients(981);
        close(cx + 0.5 * ce, 1.061_225_697_819_786_7, 1e-12);
        // With set_alpha_to_one the last step returns x̂₀ itself.
        let one = DdimScheduler::new(
            &DdimConfig {
                set_alpha_to_one: true,
                ..Default::default()
            },
            50,
        )
        .unwrap();
        let out = one.step(&e, 1, &x).unwrap().to_vec1::<f32>().unwrap();
        let a1 = one.alpha_cumprod(1);
        close(
            out[0] as f64,
            (1.0 - (1.0 - a1).sqrt() * 0.5) / a1.sqrt(),
            1e-6,
        );
    }

    #[test]
    fn noising_then_exact_eps_recovers_x0_at_the_end() {
        // With the true ε, one DDIM step to ᾱ_prev lands on the forward-noised x0.
        let s = DdimScheduler::new(&DdimConfig::default(), 10).unwrap();
        let x0 = Tensor::new(&[0.3f32, -0.7, 1.2], &Device::Cpu).unwrap();
        let eps = Tensor::new(&[1.0f32, 0.2, -0.4], &Device::Cpu).unwrap();
        let t = s.timesteps()[0];
        let xt = s.add_noise(&x0, &eps, t).unwrap();
        let prev = s.step(&eps, t, &xt).unwrap();
        let expect = s.add_noise(&x0, &eps, t - 100).unwrap();
        let d = (prev - expect)
            .unwrap()
            .abs()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-5, "{d}");
    }

    #[test]
    fn bad_step_counts() {
        assert!(DdimScheduler::new(&DdimConfig::default(), 0).is_err());
        assert!(DdimScheduler::new(&DdimConfig::default(), 1001).is_err());
        let s = DdimScheduler::new(&DdimConfig::default(), 1).unwrap();
        assert_eq!(s.timesteps(), &[1]);
    }

    #[test]
    fn diffusers_scheduler_config_parses() {
        let c: DdimConfig = serde_json::from_str(
            r#"{"_class_name": "DDIMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
                "clip_sample": false, "num_train_timesteps": 1000, "prediction_type": "epsilon", "set_alpha_to_one": false,
                "steps_offset": 1, "trained_betas": null}"#,
        )
        .unwrap();
        assert_eq!(c, DdimConfig::default());
    }
}
