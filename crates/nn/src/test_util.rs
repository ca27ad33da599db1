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
