//! Summaries of a splat for `inspect`.

use serde::Serialize;

use crate::{sigmoid, Gaussians};

/// Order statistics of one quantity.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stats {
    pub min: f32,
    pub median: f32,
    pub mean: f32,
    pub max: f32,
}

impl Stats {
    /// Statistics of the finite values; `None` if there are none.
    pub fn of(values: impl Iterator<Item = f32>) -> Option<Stats> {
        let mut v: Vec<f32> = values.filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_unstable_by(f32::total_cmp);
        let mean = (v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64) as f32;
        Some(Stats {
            min: v[0],
            median: v[v.len() / 2],
            mean,
            max: v[v.len() - 1],
        })
    }
}

/// What `inspect` reports about a splat.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub gaussians: usize,
    pub sh_degree: u8,
    /// Bounds of the means: (min, max) per axis.
    pub bounds: Option<([f32; 3], [f32; 3])>,
    /// Opacity after the sigmoid.
    pub opacity: Option<Stats>,
    /// Scales after the exponential, all three axes pooled, in scene units.
    pub scale: Option<Stats>,
}

/// Summarises `g`.
pub fn summarize(g: &Gaussians) -> Summary {
    Summary {
        gaussians: g.len(),
        sh_degree: g.sh_degree,
        bounds: g.bounds(),
        opacity: Stats::of(g.opacity_logits.iter().map(|&o| sigmoid(o))),
        scale: Stats::of(g.log_scales.iter().flatten().map(|&s| s.exp())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gaussians::sample;

    #[test]
    fn stats_ignore_non_finite_and_order() {
        let s = Stats::of([3.0, f32::NAN, 1.0, 2.0, f32::INFINITY].into_iter()).unwrap();
        assert_eq!((s.min, s.median, s.mean, s.max), (1.0, 2.0, 2.0, 3.0));
        assert!(Stats::of(std::iter::empty()).is_none());
    }

    #[test]
    fn summary_of_sample() {
        let g = sample(100, 2);
        let s = summarize(&g);
        assert_eq!((s.gaussians, s.sh_degree), (100, 2));
        let o = s.opacity.unwrap();
        assert!(0.0 < o.min && o.max < 1.0);
        let (lo, hi) = s.bounds.unwrap();
        assert!(lo
            .iter()
            .zip(hi)
            .all(|(l, h)| -1.0 <= *l && *l < h && h <= 1.0));
        assert!(summarize(&Gaussians::default()).opacity.is_none());
    }
}
