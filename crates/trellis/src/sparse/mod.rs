//! Sparse voxel tensors and the ops TRELLIS runs on them (the semantics of TRELLIS'
//! `trellis/modules/sparse`, which uses spconv and flash-attn on the GPU).

mod tensor;
pub mod window;

pub use tensor::SparseTensor;
