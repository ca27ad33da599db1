//! Euler sampling (diffusers `EulerDiscreteScheduler`, deterministic:
//! `s_churn = 0`, no Karras sigmas), the scheduler of SD-Turbo
//! (`timestep_spacing: "trailing"`), using the same β schedule fields as
//! [`crate::schedulers::ddim::DdimConfig`].
//!
//! `σ_t = √((1 − ᾱ_t)/ᾱ_t)`; timesteps "trailing" `round(T − i·T/n) − 1`,
//! "leading" `i·(T/n) + offset` (descending); the model sees
//! `x / √(σ² + 1)`; a step is `x ← x + (x − x̂₀)/σ · (σ_next − σ)` with
//! `x̂₀ = x − σ·ε̂` (ε) or `x̂₀ = x/(σ²+1) − σ/√(σ²+1)·v` (v-prediction), and
//! `σ_next = 0` after the last step. The initial noise is scaled by `σ_max`
//! for "trailing"/"linspace" spacing, else by `√(σ_max² + 1)`.

use candle_core::{Result, Tensor};

use crate::schedulers::ddim::{DdimConfig, PredictionType, TimestepSpacing};

/// An Euler schedule for a given number of steps.
#[derive(Debug, Clone)]
pub struct EulerScheduler {
    config: DdimConfig,
    timesteps: Vec<usize>,
    /// One per timestep, then 0.
    sigmas: Vec<f64>,
}

impl EulerScheduler {
    pub fn new(config: &DdimConfig, steps: usize) -> std::result::Result<Self, String> {
        let t = config.num_train_timesteps;
        if steps == 0 || steps > t {
            return Err(format!("steps must be in 1..={t}, got {steps}"));
        }
        let timesteps: Vec<usize> = match config.timestep_spacing {
            TimestepSpacing::Trailing => {
                let ratio = t as f64 / steps as f64;
                (0..steps)
                    .map(|i| ((t as f64 - i as f64 * ratio).round() as usize).saturating_sub(1))
                    .collect()
            }
            TimestepSpacing::Leading => {
                let ratio = t / steps;
                (0..steps)
                    .rev()
                    .map(|i| (i * ratio + config.steps_offset).min(t - 1))
                    .collect()
            }
        };
        let ac = config.alphas_cumprod();
        let mut sigmas: Vec<f64> = timesteps
            .iter()
            .map(|&k| ((1.0 - ac[k]) / ac[k]).sqrt())
            .collect();
        sigmas.push(0.0);
        Ok(Self {
            config: config.clone(),
            timesteps,
            sigmas,
        })
    }

    /// Descending timesteps (what the UNet is given).
    pub fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    pub fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }

    /// The factor applied to unit-variance initial noise.
    pub fn init_noise_sigma(&self) -> f64 {
        let max = self.sigmas.iter().cloned().fold(0.0, f64::max);
        match self.config.timestep_spacing {
            TimestepSpacing::Trailing => max,
            TimestepSpacing::Leading => (max * max + 1.0).sqrt(),
        }
    }

    /// The model input at step `i`: `x / √(σ_i² + 1)`.
    pub fn scale_model_input(&self, x: &Tensor, i: usize) -> Result<Tensor> {
        let s = self.sigmas[i];
        x / (s * s + 1.0).sqrt()
    }

    /// One Euler step from `x` at step `i` given the model output.
    pub fn step(&self, model_output: &Tensor, i: usize, x: &Tensor) -> Result<Tensor> {
        let s = self.sigmas[i];
        let s_next = self.sigmas[i + 1];
        let x0 = match self.config.prediction_type {
            PredictionType::Epsilon => (x - (model_output * s)?)?,
            PredictionType::VPrediction => {
                ((x / (s * s + 1.0))? - (model_output * (s / (s * s + 1.0).sqrt()))?)?
            }
        };
        let d = ((x - x0)? / s)?;
        x + (d * (s_next - s))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turbo() -> DdimConfig {
        DdimConfig {
            timestep_spacing: TimestepSpacing::Trailing,
            ..Default::default()
        }
    }

    #[test]
    fn trailing_timesteps_and_sigmas() {
        let s = EulerScheduler::new(&turbo(), 1).unwrap();
        assert_eq!(s.timesteps(), &[999]);
        let s4 = EulerScheduler::new(&turbo(), 4).unwrap();
        assert_eq!(s4.timesteps(), &[999, 749, 499, 249]);
        // σ_999 of the SD schedule ≈ 14.6146 (diffusers' sd-turbo init_noise_sigma).
        assert!(
            (s.init_noise_sigma() - 14.6146).abs() < 1e-3,
            "{}",
            s.init_noise_sigma()
        );
        assert_eq!(*s4.sigmas().last().unwrap(), 0.0);
        let lead = EulerScheduler::new(&DdimConfig::default(), 4).unwrap();
        assert_eq!(lead.timesteps(), &[751, 501, 251, 1]);
    }

    #[test]
    fn one_step_with_the_true_noise_recovers_x0() {
        let dev = candle_core::Device::Cpu;
        let s = EulerScheduler::new(&turbo(), 1).unwrap();
        let x0 = Tensor::new(&[0.3f32, -0.2, 0.5], &dev).unwrap();
        let eps = Tensor::new(&[1.0f32, -0.5, 0.25], &dev).unwrap();
        let sigma = s.sigmas()[0];
        let x = (&x0 + (&eps * sigma).unwrap()).unwrap();
        let out = s.step(&eps, 0, &x).unwrap().to_vec1::<f32>().unwrap();
        for (a, b) in out.iter().zip([0.3f32, -0.2, 0.5]) {
            assert!((a - b).abs() < 1e-5);
        }
    }
}
