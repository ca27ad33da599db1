//! Helpers shared by the unit tests of this crate and of the model crates (feature
//! `test-util`).

use candle_core::{DType, Device, Tensor};

/// max |a − b| over all elements, as f32.
pub fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// ‖ours − reference‖₂ / ‖reference‖₂ in f64 on the host: the measure the GPU parity checks
/// (the crates' `examples/*parity*`) hold against their bounds.
pub fn relative_error(ours: &Tensor, reference: &Tensor) -> candle_core::Result<f64> {
    let host = |t: &Tensor| t.to_dtype(DType::F64)?.to_device(&Device::Cpu);
    let (ours, reference) = (host(ours)?, host(reference)?);
    let norm = |t: &Tensor| -> candle_core::Result<f64> {
        Ok(t.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt())
    };
    Ok(norm(&(ours - &reference)?)? / norm(&reference)?)
}

/// The median wall time of `f` on `device` over 10 calls after 2 warm-ups, in ms, each call
/// between two synchronisations: the GPU checks' time per call.
pub fn median_ms<E: From<candle_core::Error>>(
    device: &Device,
    mut f: impl FnMut() -> std::result::Result<(), E>,
) -> std::result::Result<f64, E> {
    let mut times = Vec::with_capacity(12);
    for _ in 0..12 {
        device.synchronize()?;
        let t0 = std::time::Instant::now();
        f()?;
        device.synchronize()?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    times.drain(..2);
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}
