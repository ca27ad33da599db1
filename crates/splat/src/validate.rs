//! The 404-GEN validator's data checks on a splat.

use serde::Serialize;

use crate::{sigmoid, Gaussians};

/// Thresholds of the checks; the defaults are the validators'.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ValidationConfig {
    /// Fewest Gaussians accepted.
    pub min_gaussians: usize,
    /// Opacity (after the sigmoid) under which a Gaussian counts as transparent.
    pub transparent_opacity: f32,
    /// Largest accepted fraction of transparent Gaussians.
    pub max_transparent_fraction: f32,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        ValidationConfig {
            min_gaussians: 7000,
            transparent_opacity: 1e-3,
            max_transparent_fraction: 0.8,
        }
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub passed: bool,
    pub detail: String,
}

/// The outcome of all checks.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ValidationReport {
    pub passed: bool,
    pub gaussians: usize,
    pub checks: Vec<Check>,
}

/// Runs every check on `g`.
pub fn validate(g: &Gaussians, config: &ValidationConfig) -> ValidationReport {
    let n = g.len();
    let mut checks = Vec::new();
    let mut check = |name, passed, detail: String| {
        checks.push(Check {
            name,
            passed,
            detail,
        })
    };

    check(
        "count",
        n >= config.min_gaussians,
        format!("{n} Gaussians (minimum {})", config.min_gaussians),
    );

    let non_finite = (0..n)
        .filter(|&i| {
            let scalars = g.means[i]
                .iter()
                .chain(&g.log_scales[i])
                .chain(&g.rotations[i])
                .chain(&g.sh_dc[i])
                .chain(g.sh_rest_of(i))
                .chain(std::iter::once(&g.opacity_logits[i]));
            scalars.into_iter().any(|v| !v.is_finite())
        })
        .count();
    check(
        "finite",
        non_finite == 0,
        format!("{non_finite} Gaussians with NaN or Inf values"),
    );

    let transparent = g
        .opacity_logits
        .iter()
        .filter(|&&o| sigmoid(o) < config.transparent_opacity)
        .count();
    let fraction = if n == 0 {
        0.0
    } else {
        transparent as f32 / n as f32
    };
    check(
        "opacity",
        fraction <= config.max_transparent_fraction,
        format!(
            "{:.1} % have opacity < {} (maximum {:.0} %)",
            100.0 * fraction,
            config.transparent_opacity,
            100.0 * config.max_transparent_fraction
        ),
    );

    let identity = g.rotations.iter().filter(|q| is_identity(q)).count();
    check(
        "rotations",
        n == 0 || identity < n,
        format!("{identity} of {n} rotations are the identity"),
    );

    let degenerate = g
        .log_scales
        .iter()
        .filter(|s| s.iter().any(|&l| !l.is_finite() || l.exp() <= 0.0))
        .count();
    check(
        "scales",
        degenerate == 0,
        format!("{degenerate} Gaussians with a zero or non-finite scale"),
    );

    ValidationReport {
        passed: checks.iter().all(|c| c.passed),
        gaussians: n,
        checks,
    }
}

/// True for a quaternion that, normalised, is (±1, 0, 0, 0).
fn is_identity(q: &[f32; 4]) -> bool {
    let norm = q.iter().map(|v| v * v).sum::<f32>().sqrt();
    norm > 0.0 && q[1..].iter().all(|v| (v / norm).abs() < 1e-6)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gaussians::sample;

    fn failing(report: &ValidationReport) -> Vec<&str> {
        report
            .checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| c.name)
            .collect()
    }

    #[test]
    fn a_good_splat_passes_and_each_defect_fails_its_check() {
        let cfg = ValidationConfig {
            min_gaussians: 10,
            ..Default::default()
        };
        let g = sample(20, 1);
        assert!(validate(&g, &cfg).passed);

        assert_eq!(failing(&validate(&sample(9, 0), &cfg)), ["count"]);

        let mut nan = g.clone();
        nan.sh_rest[5] = f32::NAN;
        assert_eq!(failing(&validate(&nan, &cfg)), ["finite"]);

        let mut clear = g.clone();
        clear
            .opacity_logits
            .iter_mut()
            .take(17)
            .for_each(|o| *o = -10.0);
        assert_eq!(failing(&validate(&clear, &cfg)), ["opacity"]);
        clear.opacity_logits[16] = 0.0;
        assert!(validate(&clear, &cfg).passed, "80 % exactly is accepted");

        let mut ident = g.clone();
        ident
            .rotations
            .iter_mut()
            .for_each(|q| *q = [2.0, 0.0, 0.0, 0.0]);
        assert_eq!(failing(&validate(&ident, &cfg)), ["rotations"]);

        let mut zero = g.clone();
        zero.log_scales[3][1] = -200.0;
        assert_eq!(failing(&validate(&zero, &cfg)), ["scales"]);
        zero.log_scales[3][1] = f32::NEG_INFINITY;
        assert_eq!(failing(&validate(&zero, &cfg)), ["finite", "scales"]);
    }
}
