//! Deadlines for the TRELLIS generators (`X-Deadline-Ms`, `serve --deadline-ms`): estimate
//! how long a run takes from the stage times this server measured, and when the time left
//! cannot fit the profile, degrade in steps until the estimate fits.
//!
//! **Estimate.** Every run (the warm-up, every request) records its stage times: sampling
//! stages per sampler step (`sparse_structure`, `slat`, `flux`), the matte per kind
//! (`birefnet`, `birefnet-lite`, `threshold`; nothing when the image had its own alpha),
//! every other stage whole. A new time above the kept one replaces it at once, a lower one pulls it down by
//! 30 % (slow to trust a fast run). A run's estimate is the sum over its stages times a
//! margin: 1.5 until [`TRUSTED_RUNS`] requests have been measured, then 1.2. Before the
//! first request the warm-up's times stand in; they include first-use costs (kernel
//! loading, memory pools), so they overestimate, and the warm-up's picture is small, so
//! the voxel-dependent stages (`slat`, `gs_decoder`) may underestimate: the larger start-up
//! margin covers that. The budget is the time left when the job starts (after queueing)
//! less [`reserve`] for decoding, encoding and sending the answer.
//!
//! **Degrading**, in this order, the first plan whose estimate fits wins: TRELLIS' sampler
//! steps in both stages scaled by [`STEP_FRACTIONS`] (at least one step each); then the
//! profile's fallback matte (`matte.fallback: birefnet-lite`, loaded beside the full
//! network), then the threshold; then FLUX's steps halved down to one. When nothing fits,
//! the last plan runs (the answer may be late, but it comes). Each change is reported as
//! a [`Degradation`]: `trellis_steps=25+25->12+12`, `matte=birefnet->birefnet-lite`,
//! `flux_steps=4->2`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use splatforge_server::Degradation;
use splatforge_trellis::foreground::AlphaSource;

use super::trellis_generator::{MatteStep, RunOverrides};

/// Requests measured before the smaller margin applies.
pub const TRUSTED_RUNS: usize = 3;
/// The estimate's margin before [`TRUSTED_RUNS`] requests, and after.
const START_MARGIN: f64 = 1.5;
const TRUSTED_MARGIN: f64 = 1.2;
/// How far a faster measurement pulls an estimate down.
const DECAY: f64 = 0.3;

/// The fractions of the profile's TRELLIS steps tried, in order.
pub const STEP_FRACTIONS: [f64; 7] = [1.0, 0.8, 0.6, 0.5, 0.4, 0.3, 0.2];

/// Stage names whose time is per sampler step.
const SPARSE_STRUCTURE: &str = "sparse_structure";
const SLAT: &str = "slat";
const FLUX: &str = "flux";
const MATTE: &str = "matte";
/// The threshold matte's name (`ForegroundMatte::Threshold`).
pub const THRESHOLD: &str = "threshold";

/// The key a matte's time is kept under (the stage is `matte` whichever ran).
fn matte_key(name: &str) -> String {
    format!("{MATTE}:{name}")
}

/// Time set aside from a budget for what follows generation (encoding, sending) and
/// precedes it (decoding the image): 5 % of the time left, at least 100 ms.
pub fn reserve(remaining: Duration) -> Duration {
    (remaining / 20).max(Duration::from_millis(100))
}

/// What a run of the profile does, in the units the estimates count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunShape {
    pub sparse_structure_steps: usize,
    pub slat_steps: usize,
    /// The matte that runs on a picture without alpha (`birefnet`, `birefnet-lite`,
    /// [`THRESHOLD`]).
    pub matte: &'static str,
    /// FLUX's steps (text via an image), else none.
    pub flux_steps: Option<usize>,
}

/// A degraded (or not) run: what to change, what the changes were, the estimate.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub overrides: RunOverrides,
    pub degradations: Vec<Degradation>,
    pub estimate: Duration,
}

/// The measured stage times of one generator (see the module docs).
#[derive(Debug, Default)]
pub struct StageEstimates {
    inner: Mutex<Estimates>,
}

#[derive(Debug, Default)]
struct Estimates {
    /// Seconds per unit (a sampler step, or the whole stage), by key.
    seconds: HashMap<String, f64>,
    /// Requests measured (the warm-up is not one).
    requests: usize,
}

impl StageEstimates {
    /// Records one run's stage `timings`, which ran `shape` (`alpha` tells which matte
    /// ran); `request` is false for the warm-up.
    pub fn record(
        &self,
        timings: &[(&'static str, Duration)],
        shape: &RunShape,
        alpha: AlphaSource,
        request: bool,
    ) {
        let mut e = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for (stage, d) in timings {
            let (key, units) = match *stage {
                SPARSE_STRUCTURE | SLAT | FLUX => {
                    let steps = match *stage {
                        SPARSE_STRUCTURE => shape.sparse_structure_steps,
                        SLAT => shape.slat_steps,
                        _ => shape.flux_steps.unwrap_or(1),
                    };
                    (stage.to_string(), steps)
                }
                MATTE if alpha == AlphaSource::Image => continue,
                MATTE => (matte_key(shape.matte), 1),
                other => (other.to_string(), 1),
            };
            e.observe(&key, d.as_secs_f64() / units.max(1) as f64);
        }
        if request {
            e.requests += 1;
        }
    }

    /// Records the matte `name` alone (the warm-up runs each on an opaque picture).
    pub fn record_matte(&self, name: &str, elapsed: Duration) {
        let mut e = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        e.observe(&matte_key(name), elapsed.as_secs_f64());
    }

    /// [`Self::plan`] for a run that starts now and must end by `deadline`.
    pub fn plan_by(
        &self,
        full: &RunShape,
        fallback_matte: Option<&'static str>,
        deadline: Instant,
    ) -> Plan {
        let remaining = deadline.saturating_duration_since(Instant::now());
        self.plan(full, fallback_matte, remaining)
    }

    /// The first plan from `full` down whose estimate fits `remaining` less [`reserve`]
    /// (see the module docs); `fallback_matte` is the lighter network loaded beside the
    /// profile's, if any.
    pub fn plan(
        &self,
        full: &RunShape,
        fallback_matte: Option<&'static str>,
        remaining: Duration,
    ) -> Plan {
        let budget = remaining.saturating_sub(reserve(remaining));
        let e = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let candidates = ladder(full, fallback_matte);
        let mut chosen = None;
        for shape in &candidates {
            let estimate = e.estimate(shape);
            if estimate <= budget {
                chosen = Some((*shape, estimate));
                break;
            }
        }
        let (shape, estimate) = chosen.unwrap_or_else(|| {
            let last = *candidates
                .last()
                .expect("the ladder starts with the full run");
            (last, e.estimate(&last))
        });
        Plan {
            overrides: overrides(full, &shape),
            degradations: degradations(full, &shape),
            estimate,
        }
    }
}

impl Estimates {
    fn observe(&mut self, key: &str, seconds: f64) {
        let kept = self.seconds.entry(key.to_string()).or_insert(seconds);
        *kept = if seconds >= *kept {
            seconds
        } else {
            *kept + DECAY * (seconds - *kept)
        };
    }

    fn estimate(&self, shape: &RunShape) -> Duration {
        let mut total = 0.0;
        for (key, seconds) in &self.seconds {
            let units = match key.as_str() {
                SPARSE_STRUCTURE => shape.sparse_structure_steps,
                SLAT => shape.slat_steps,
                FLUX => shape.flux_steps.unwrap_or(0),
                // flux_text and flux_decode run only with FLUX.
                k if k.starts_with("flux_") => usize::from(shape.flux_steps.is_some()),
                k if k.starts_with(MATTE) => usize::from(*k == matte_key(shape.matte)),
                _ => 1,
            };
            total += seconds * units as f64;
        }
        let margin = if self.requests < TRUSTED_RUNS {
            START_MARGIN
        } else {
            TRUSTED_MARGIN
        };
        Duration::from_secs_f64(total * margin)
    }
}

/// `steps` scaled by `fraction`, rounded, at least one.
fn scaled(steps: usize, fraction: f64) -> usize {
    ((steps as f64 * fraction).round() as usize).clamp(1, steps.max(1))
}

/// The plans tried, from the full run down (see the module docs).
fn ladder(full: &RunShape, fallback_matte: Option<&'static str>) -> Vec<RunShape> {
    let mut plans: Vec<RunShape> = Vec::new();
    let mut push = |shape: RunShape| {
        if plans.last() != Some(&shape) {
            plans.push(shape);
        }
    };
    let mut shape = *full;
    for fraction in STEP_FRACTIONS {
        shape = RunShape {
            sparse_structure_steps: scaled(full.sparse_structure_steps, fraction),
            slat_steps: scaled(full.slat_steps, fraction),
            ..*full
        };
        push(shape);
    }
    for matte in fallback_matte.into_iter().chain([THRESHOLD]) {
        if shape.matte != THRESHOLD {
            shape.matte = matte;
            push(shape);
        }
    }
    while let Some(steps) = shape.flux_steps.filter(|&s| s > 1) {
        shape.flux_steps = Some(steps / 2);
        push(shape);
    }
    plans
}

fn overrides(full: &RunShape, shape: &RunShape) -> RunOverrides {
    let changed = |a: usize, b: usize| (a != b).then_some(b);
    RunOverrides {
        sparse_structure_steps: changed(full.sparse_structure_steps, shape.sparse_structure_steps),
        slat_steps: changed(full.slat_steps, shape.slat_steps),
        matte: match shape.matte {
            m if m == full.matte => None,
            THRESHOLD => Some(MatteStep::Threshold),
            _ => Some(MatteStep::Fallback),
        },
        flux_steps: match (full.flux_steps, shape.flux_steps) {
            (Some(a), Some(b)) => changed(a, b),
            _ => None,
        },
    }
}

fn degradations(full: &RunShape, shape: &RunShape) -> Vec<Degradation> {
    let mut out = Vec::new();
    if (full.sparse_structure_steps, full.slat_steps)
        != (shape.sparse_structure_steps, shape.slat_steps)
    {
        out.push(Degradation {
            change: "trellis_steps",
            detail: format!(
                "{}+{}->{}+{}",
                full.sparse_structure_steps,
                full.slat_steps,
                shape.sparse_structure_steps,
                shape.slat_steps
            ),
        });
    }
    if full.matte != shape.matte {
        out.push(Degradation {
            change: "matte",
            detail: format!("{}->{}", full.matte, shape.matte),
        });
    }
    if let (Some(a), Some(b)) = (full.flux_steps, shape.flux_steps) {
        if a != b {
            out.push(Degradation {
                change: "flux_steps",
                detail: format!("{a}->{b}"),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    impl StageEstimates {
        fn estimate(&self, shape: &RunShape) -> Duration {
            self.inner.lock().unwrap().estimate(shape)
        }
    }

    fn full() -> RunShape {
        RunShape {
            sparse_structure_steps: 25,
            slat_steps: 25,
            matte: "birefnet",
            flux_steps: Some(4),
        }
    }

    /// 10 ms a TRELLIS step, 100 ms a FLUX step, BiRefNet 50 ms, the lite 20 ms, the
    /// threshold 1 ms, 100 ms fixed.
    fn measured(requests: usize) -> StageEstimates {
        let e = StageEstimates::default();
        let timings = [
            ("flux_text", 40 * MS),
            ("flux", 400 * MS),
            ("flux_decode", 30 * MS),
            ("matte", 50 * MS),
            ("preprocess", 10 * MS),
            ("dinov2", 20 * MS),
            ("sparse_structure", 250 * MS),
            ("slat", 250 * MS),
        ];
        e.record(&timings, &full(), AlphaSource::Network, false);
        e.record_matte("birefnet-lite", 20 * MS);
        e.record_matte(THRESHOLD, MS);
        for _ in 0..requests {
            e.record(&timings, &full(), AlphaSource::Network, true);
        }
        e
    }

    #[test]
    fn estimates_scale_with_steps_and_trust_grows_with_requests() {
        let e = measured(0);
        // 40 + 400 + 30 + 50 + 10 + 20 + 250 + 250 = 1050 ms, × 1.5.
        let full_estimate = e.estimate(&full());
        assert!(
            (full_estimate.as_secs_f64() - 1.575).abs() < 1e-9,
            "{full_estimate:?}"
        );
        let half = RunShape {
            sparse_structure_steps: 12,
            slat_steps: 12,
            matte: THRESHOLD,
            flux_steps: None,
        };
        // 1 + 10 + 20 + 120 + 120 = 271 ms (no FLUX stages), × 1.5.
        assert!((e.estimate(&half).as_secs_f64() - 0.4065).abs() < 1e-9);
        let trusted = measured(TRUSTED_RUNS);
        assert!((trusted.estimate(&full()).as_secs_f64() - 1.26).abs() < 1e-9);
        // A slower run replaces the estimate at once; a faster one pulls it down by 30 %.
        let e = StageEstimates::default();
        e.record(&[("dinov2", 100 * MS)], &full(), AlphaSource::Image, true);
        e.record(&[("dinov2", 200 * MS)], &full(), AlphaSource::Image, true);
        e.record(&[("dinov2", 100 * MS)], &full(), AlphaSource::Image, true);
        let shape = RunShape {
            flux_steps: None,
            matte: THRESHOLD,
            ..full()
        };
        assert!((e.estimate(&shape).as_secs_f64() - 0.17 * 1.2).abs() < 1e-9);
    }

    #[test]
    fn a_short_budget_degrades_in_order_and_a_long_one_does_not() {
        let e = measured(TRUSTED_RUNS);
        let lite = Some("birefnet-lite");
        let plan = e.plan(&full(), lite, Duration::from_secs(10));
        assert_eq!(plan.overrides, RunOverrides::default());
        assert!(plan.degradations.is_empty());
        // 1.26 s at full, 1.14 s at 20+20 steps; 1.02 s at 15+15 fits 1.15 s less 100 ms.
        let plan = e.plan(&full(), lite, Duration::from_millis(1150));
        assert_eq!(plan.overrides.sparse_structure_steps, Some(15));
        assert_eq!(plan.overrides.slat_steps, Some(15));
        assert!(plan.overrides.matte.is_none() && plan.overrides.flux_steps.is_none());
        assert_eq!(
            plan.degradations,
            [Degradation {
                change: "trellis_steps",
                detail: "25+25->15+15".into()
            }]
        );
        assert!(plan.estimate <= Duration::from_millis(1050));
        // At 5+5 steps 650 ms × 1.2 = 780 ms, with the lite matte 620 × 1.2 = 744 ms: it
        // fits 860 ms less 100.
        let plan = e.plan(&full(), lite, Duration::from_millis(860));
        assert_eq!(plan.overrides.matte, Some(MatteStep::Fallback), "{plan:?}");
        assert_eq!(plan.degradations[1].detail, "birefnet->birefnet-lite");
        // Nothing fits: every step of the ladder, the answer still comes.
        let plan = e.plan(&full(), lite, Duration::from_millis(1));
        assert_eq!(
            plan.overrides,
            RunOverrides {
                sparse_structure_steps: Some(5),
                slat_steps: Some(5),
                matte: Some(MatteStep::Threshold),
                flux_steps: Some(1),
            }
        );
        let changes: Vec<&str> = plan.degradations.iter().map(|d| d.change).collect();
        assert_eq!(changes, ["trellis_steps", "matte", "flux_steps"]);
        assert_eq!(plan.degradations[1].detail, "birefnet->threshold");
        // Two steps a stage (the development profile) go down to one.
        let tiny = RunShape {
            sparse_structure_steps: 2,
            slat_steps: 2,
            matte: THRESHOLD,
            flux_steps: None,
        };
        let plan = e.plan(&tiny, None, Duration::ZERO);
        assert_eq!(plan.degradations[0].detail, "2+2->1+1");
        assert_eq!(plan.degradations.len(), 1, "no matte or FLUX to degrade");
    }

    #[test]
    fn the_reserve_is_five_percent_or_100_ms() {
        assert_eq!(
            reserve(Duration::from_secs(30)),
            Duration::from_millis(1500)
        );
        assert_eq!(reserve(Duration::from_secs(1)), Duration::from_millis(100));
    }
}
