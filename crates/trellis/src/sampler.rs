//! TRELLIS' `FlowEulerGuidanceIntervalSampler` (`trellis/pipelines/samplers`): Euler steps
//! of a rectified-flow velocity model from noise (`t = 1`) to data (`t = 0`) on a rescaled
//! time grid, with classifier-free guidance inside a time interval.
//!
//! Exactly as the official sampler:
//! * times: `tᵢ = 1 − i/steps` (`np.linspace(1, 0, steps + 1)`), then
//!   `t ← r·t / (1 + (r − 1)·t)` with `r = rescale_t`; step `i` goes from `tᵢ` to `tᵢ₊₁`;
//! * the model sees `1000·t` (f32) as its timestep;
//! * inside `cfg_interval[0] ≤ t ≤ cfg_interval[1]` the velocity is
//!   `(1 + s)·v(cond) − s·v(neg_cond)` with `s = cfg_strength`, outside it `v(cond)`;
//! * `x ← x − (t − t_prev)·v`.
//!
//! `sigma_min` only enters the official sampler's x₀ / ε predictions, which do not change
//! the samples; [`FlowEulerSampler::predicted_x0`] gives x₀ for callers that want it.

use std::ops::ControlFlow;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::{Result, TrellisError};

/// A velocity model the sampler can drive: the flow transformers of both stages (the
/// sparse one over the features of fixed voxels).
pub trait FlowModel {
    /// The velocity at `x_t` for model timestep `timestep` (the sampler's `1000·t`),
    /// conditioned on `cond`.
    fn velocity(&self, x_t: &Tensor, timestep: f64, cond: &Tensor) -> Result<Tensor>;

    /// The conditional and the negative-conditional velocity at `x_t`. Two calls by
    /// default; models override it to run both as one batch.
    fn guided_velocities(
        &self,
        x_t: &Tensor,
        timestep: f64,
        cond: &Tensor,
        neg_cond: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        Ok((
            self.velocity(x_t, timestep, cond)?,
            self.velocity(x_t, timestep, neg_cond)?,
        ))
    }
}

/// The sampler's constructor arguments (`args` of a sampler in `pipeline.json`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FlowEulerSampler {
    pub sigma_min: f64,
}

/// One run's parameters (`params` of a sampler in `pipeline.json`, or a user's override).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SamplerParams {
    pub steps: usize,
    pub cfg_strength: f64,
    /// Guidance applies for `t` in `[cfg_interval.0, cfg_interval.1]` (closed).
    pub cfg_interval: (f64, f64),
    pub rescale_t: f64,
}

impl SamplerParams {
    fn validate(&self) -> Result<()> {
        if self.steps == 0 {
            return Err(TrellisError::InvalidArgument(
                "the sampler needs at least one step".into(),
            ));
        }
        if !(self.rescale_t.is_finite() && self.rescale_t > 0.0) {
            return Err(TrellisError::InvalidArgument(format!(
                "rescale_t must be positive, not {}",
                self.rescale_t
            )));
        }
        if !self.cfg_strength.is_finite() {
            return Err(TrellisError::InvalidArgument(format!(
                "cfg_strength {} is not finite",
                self.cfg_strength
            )));
        }
        Ok(())
    }
}

/// The `(t, t_prev)` pairs of a run, in f64 as numpy computes them.
pub fn time_pairs(steps: usize, rescale_t: f64) -> Vec<(f64, f64)> {
    let delta = -1.0 / steps as f64;
    let times: Vec<f64> = (0..=steps)
        .map(|i| {
            // np.linspace: i·delta + start, the last value exactly `stop`.
            let t = if i == steps {
                0.0
            } else {
                i as f64 * delta + 1.0
            };
            rescale_t * t / (1.0 + (rescale_t - 1.0) * t)
        })
        .collect();
    times.windows(2).map(|w| (w[0], w[1])).collect()
}

impl FlowEulerSampler {
    /// Samples from `noise` with guidance towards `cond` away from `neg_cond`. After each
    /// step `progress(step, steps)` runs (step counted from 1); `Break` stops the run with
    /// [`TrellisError::Cancelled`].
    pub fn sample(
        &self,
        model: &impl FlowModel,
        noise: &Tensor,
        cond: &Tensor,
        neg_cond: &Tensor,
        params: &SamplerParams,
        mut progress: impl FnMut(usize, usize) -> ControlFlow<()>,
    ) -> Result<Tensor> {
        params.validate()?;
        let s = params.cfg_strength;
        let mut x = noise.clone();
        for (i, (t, t_prev)) in time_pairs(params.steps, params.rescale_t)
            .into_iter()
            .enumerate()
        {
            let timestep = 1000.0 * t;
            let guided = params.cfg_interval.0 <= t && t <= params.cfg_interval.1;
            // With s = 0 the guided velocity is v(cond) exactly: skip the negative pass.
            let v = if guided && s != 0.0 {
                let (v_cond, v_neg) = model.guided_velocities(&x, timestep, cond, neg_cond)?;
                ((v_cond * (1.0 + s))? - (v_neg * s)?)?
            } else {
                model.velocity(&x, timestep, cond)?
            };
            x = (x - (v * (t - t_prev))?)?;
            if progress(i + 1, params.steps).is_break() {
                return Err(TrellisError::Cancelled);
            }
        }
        Ok(x)
    }

    /// The official `_v_to_xstart_eps` x₀: `(1 − σ_min)·x_t − (σ_min + (1 − σ_min)·t)·v`.
    pub fn predicted_x0(&self, x_t: &Tensor, t: f64, v: &Tensor) -> Result<Tensor> {
        let s = self.sigma_min;
        Ok(((x_t * (1.0 - s))? - (v * (s + (1.0 - s) * t))?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use std::cell::RefCell;

    /// v(x, t, c) = 0.5·x + c + t/1000, recording the calls' timesteps.
    struct Linear {
        calls: RefCell<Vec<(f64, f32)>>,
    }

    impl FlowModel for Linear {
        fn velocity(&self, x: &Tensor, timestep: f64, cond: &Tensor) -> Result<Tensor> {
            let c = cond.flatten_all()?.to_vec1::<f32>()?[0];
            self.calls.borrow_mut().push((timestep, c));
            Ok(((x * 0.5)? + (c as f64 + timestep / 1000.0))?)
        }
    }

    #[test]
    fn time_grid_is_numpys_rescaled_linspace() {
        let pairs = time_pairs(4, 3.0);
        let want: Vec<f64> = [1.0, 0.75, 0.5, 0.25, 0.0]
            .iter()
            .map(|t| 3.0 * t / (1.0 + 2.0 * t))
            .collect();
        assert_eq!(pairs.len(), 4);
        for (i, (t, t_prev)) in pairs.iter().enumerate() {
            assert!((t - want[i]).abs() < 1e-15 && (t_prev - want[i + 1]).abs() < 1e-15);
        }
        assert_eq!(pairs[0].0, 1.0);
        assert_eq!(pairs[3].1, 0.0);
        assert_eq!(
            time_pairs(3, 1.0)[1],
            (1.0 + -1.0 / 3.0, 1.0 + 2.0 * (-1.0 / 3.0))
        );
    }

    #[test]
    fn euler_steps_with_guidance_inside_the_interval_only() {
        let dev = Device::Cpu;
        let model = Linear {
            calls: RefCell::new(Vec::new()),
        };
        let noise = Tensor::new(&[1.0f32, -2.0], &dev).unwrap();
        let cond = Tensor::new(&[0.3f32], &dev).unwrap();
        let neg = Tensor::new(&[-0.1f32], &dev).unwrap();
        let params = SamplerParams {
            steps: 5,
            cfg_strength: 2.0,
            cfg_interval: (0.5, 1.0),
            rescale_t: 3.0,
        };
        let sampler = FlowEulerSampler { sigma_min: 1e-5 };
        let mut seen = Vec::new();
        let out = sampler
            .sample(&model, &noise, &cond, &neg, &params, |i, n| {
                seen.push((i, n));
                ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!(seen, (1..=5).map(|i| (i, 5)).collect::<Vec<_>>());

        // The same run written out in f64.
        let mut x = [1.0f64, -2.0];
        let mut calls = Vec::new();
        for (t, t_prev) in time_pairs(5, 3.0) {
            let v = |c: f64, x: f64| 0.5 * x + c + t;
            let guided = (0.5..=1.0).contains(&t);
            for xi in x.iter_mut() {
                let vel = if guided {
                    3.0 * v(0.3, *xi) - 2.0 * v(-0.1, *xi)
                } else {
                    v(0.3, *xi)
                };
                *xi -= (t - t_prev) * vel;
            }
            calls.push((1000.0 * t, 0.3f32));
            if guided {
                calls.push((1000.0 * t, -0.1f32));
            }
        }
        let got = out.to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
        assert!(
            (got[0] - x[0]).abs() < 1e-5 && (got[1] - x[1]).abs() < 1e-5,
            "{got:?} vs {x:?}"
        );
        let recorded: Vec<(f64, f32)> = model.calls.borrow().clone();
        assert_eq!(recorded.len(), calls.len());
        for (a, b) in recorded.iter().zip(&calls) {
            assert!(
                (a.0 - b.0).abs() < 1e-9 && (a.1 - b.1).abs() < 1e-7,
                "{a:?} vs {b:?}"
            );
        }
    }

    #[test]
    fn a_break_cancels_and_bad_params_are_refused() {
        let dev = Device::Cpu;
        let model = Linear {
            calls: RefCell::new(Vec::new()),
        };
        let x = Tensor::new(&[1.0f32], &dev).unwrap();
        let sampler = FlowEulerSampler { sigma_min: 1e-5 };
        let params = SamplerParams {
            steps: 10,
            cfg_strength: 0.0,
            cfg_interval: (0.0, 1.0),
            rescale_t: 1.0,
        };
        let r = sampler.sample(&model, &x, &x, &x, &params, |i, _| {
            if i == 3 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        assert!(matches!(r, Err(TrellisError::Cancelled)));
        assert_eq!(
            model.calls.borrow().len(),
            3,
            "cfg_strength 0 runs one pass a step; stops after step 3"
        );
        for bad in [
            SamplerParams { steps: 0, ..params },
            SamplerParams {
                rescale_t: 0.0,
                ..params
            },
            SamplerParams {
                cfg_strength: f64::NAN,
                ..params
            },
        ] {
            assert!(matches!(
                sampler.sample(&model, &x, &x, &x, &bad, |_, _| ControlFlow::Continue(())),
                Err(TrellisError::InvalidArgument(_))
            ));
        }
    }

    #[test]
    fn predicted_x0_follows_the_official_formula() {
        let dev = Device::Cpu;
        let sampler = FlowEulerSampler { sigma_min: 0.01 };
        let x = Tensor::new(&[2.0f32], &dev).unwrap();
        let v = Tensor::new(&[0.5f32], &dev).unwrap();
        let x0 = sampler
            .predicted_x0(&x, 0.4, &v)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()[0];
        assert!((x0 as f64 - (0.99 * 2.0 - (0.01 + 0.99 * 0.4) * 0.5)).abs() < 1e-6);
    }
}
