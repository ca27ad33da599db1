//! Seeded, platform-independent random numbers for initial latents and
//! random test weights.
//!
//! The generator is SplitMix64 and normals come from the Box–Muller
//! transform, both written here so that a seed gives the same numbers on every
//! machine, every device and every version of this crate (candle's CPU RNG
//! cannot be seeded, and `rand`'s `StdRng` algorithm may change).

use candle_core::{DType, Device, Tensor};

/// SplitMix64's increment (the golden ratio in 64-bit fixed point).
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64 (Steele, Lea & Flood 2014).
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GAMMA);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in the open interval (0, 1).
    pub fn next_open01(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64)
    }

    /// `n` standard normal samples (Box–Muller, both outputs used).
    pub fn normals(&mut self, n: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(n + 1);
        while out.len() < n {
            let u1 = self.next_open01();
            let u2 = self.next_open01();
            let r = (-2.0 * u1.ln()).sqrt();
            let a = std::f64::consts::TAU * u2;
            out.push((r * a.cos()) as f32);
            out.push((r * a.sin()) as f32);
        }
        out.truncate(n);
        out
    }
}

/// Elements per parallel chunk of [`fill_normals`] (even, so that no
/// Box–Muller pair straddles two chunks).
const FILL_CHUNK: usize = 1 << 16;

/// Fills `out` with exactly what `SplitMix64::new(seed).normals(out.len())`
/// returns, on all cores (rayon). SplitMix64's state after `k` draws is
/// `seed + k·γ`, and element `i` comes from draws `i` and `i + 1` rounded
/// down to a pair, so each chunk starts its own generator at its offset.
pub fn fill_normals(seed: u64, out: &mut [f32]) {
    use rayon::prelude::*;
    out.par_chunks_mut(FILL_CHUNK)
        .enumerate()
        .for_each(|(c, chunk)| {
            let start = (c * FILL_CHUNK) as u64;
            let mut rng = SplitMix64::new(seed.wrapping_add(start.wrapping_mul(GAMMA)));
            for pair in chunk.chunks_mut(2) {
                let u1 = rng.next_open01();
                let u2 = rng.next_open01();
                let r = (-2.0 * u1.ln()).sqrt();
                let a = std::f64::consts::TAU * u2;
                pair[0] = (r * a.cos()) as f32;
                if let Some(second) = pair.get_mut(1) {
                    *second = (r * a.sin()) as f32;
                }
            }
        });
}

/// FNV-1a hash of a string, used to derive per-tensor seeds from names so that
/// a tensor's random values do not depend on the order tensors are created in.
pub fn hash_name(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A standard normal tensor of `shape` from `seed`, created on the host in
/// f32 and then moved to `device` and converted to `dtype`. The values depend
/// only on `seed` and the element count.
pub fn randn(
    seed: u64,
    shape: &[usize],
    dtype: DType,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let n: usize = shape.iter().product();
    let data = SplitMix64::new(seed).normals(n);
    Tensor::from_vec(data, shape, &Device::Cpu)?
        .to_device(device)?
        .to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_known_values() {
        // Reference values of SplitMix64 with seed 0 (from the published C code).
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn parallel_fill_is_the_serial_sequence() {
        for n in [0, 1, 2, 7, FILL_CHUNK - 1, FILL_CHUNK, 2 * FILL_CHUNK + 3] {
            let mut par = vec![f32::NAN; n];
            fill_normals(42, &mut par);
            let serial = SplitMix64::new(42).normals(n);
            assert!(
                par.iter()
                    .zip(&serial)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "n = {n}"
            );
        }
    }

    #[test]
    fn normals_have_unit_moments() {
        let v = SplitMix64::new(7).normals(200_001);
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.01, "var {var}");
        assert!(v.iter().all(|x| x.is_finite()));
    }
}
