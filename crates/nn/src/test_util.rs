//! Helpers shared by the unit tests of this crate and of the model crates (feature
//! `test-util`).

use candle_core::Tensor;

/// max |a − b| over all elements, as f32.
pub fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_dtype(candle_core::DType::F32)
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}
