//! Seeded, platform-independent random numbers for initial latents and
//! random test weights.
//!
//! The generator is the workspace's SplitMix64 (`splatforge_splat::rng`) and
//! normals come from the Box–Muller transform here, so that a seed gives the
//! same numbers on every machine, every device and every version (candle's CPU
//! RNG cannot be seeded, and `rand`'s `StdRng` algorithm may change).

use candle_core::{DType, Device, Tensor};

pub use splatforge_splat::rng::{SplitMix64, GAMMA};

/// Uniform in the open interval (0, 1) (Box–Muller takes its logarithm).
pub fn open_unit(rng: &mut SplitMix64) -> f64 {
    ((rng.next_u64() >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64)
}

/// `n` standard normal samples (Box–Muller, both outputs used).
pub fn normals(rng: &mut SplitMix64, n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let (a, b) = box_muller(rng);
        out.push(a);
        out.push(b);
    }
    out.truncate(n);
    out
}

/// Two standard normal samples from two open-unit draws.
fn box_muller(rng: &mut SplitMix64) -> (f32, f32) {
    let u1 = open_unit(rng);
    let u2 = open_unit(rng);
    let r = (-2.0 * u1.ln()).sqrt();
    let a = std::f64::consts::TAU * u2;
    ((r * a.cos()) as f32, (r * a.sin()) as f32)
}

/// Elements per parallel chunk of [`fill_normals`] (even, so that no
/// Box–Muller pair straddles two chunks).
const FILL_CHUNK: usize = 1 << 16;

/// Fills `out` with exactly what `normals(&mut SplitMix64::new(seed), out.len())`
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
                let (a, b) = box_muller(&mut rng);
                pair[0] = a;
                if let Some(second) = pair.get_mut(1) {
                    *second = b;
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
    let data = normals(&mut SplitMix64::new(seed), n);
    Tensor::from_vec(data, shape, &Device::Cpu)?
        .to_device(device)?
        .to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_fill_is_the_serial_sequence() {
        for n in [0, 1, 2, 7, FILL_CHUNK - 1, FILL_CHUNK, 2 * FILL_CHUNK + 3] {
            let mut par = vec![f32::NAN; n];
            fill_normals(42, &mut par);
            let serial = normals(&mut SplitMix64::new(42), n);
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
        let v = normals(&mut SplitMix64::new(7), 200_001);
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.01, "var {var}");
        assert!(v.iter().all(|x| x.is_finite()));
    }
}
