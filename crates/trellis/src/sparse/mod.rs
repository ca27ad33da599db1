//! Sparse voxel tensors and the ops TRELLIS runs on them (the semantics of TRELLIS'
//! `trellis/modules/sparse`, which uses spconv and flash-attn on the GPU).
//!
//! | module | what |
//! |---|---|
//! | [`conv`] | submanifold 3×3×3 convolution (spconv's `SubMConv3d`), neighbour maps |
//! | [`spatial`] | down/upsampling by a factor (average pooling / nearest copy) |
//! | [`attention`] | full attention over variable-length batch items |
//! | [`window`] | self-attention within (shifted) windows of voxels, TRELLIS' Swin attention |

pub mod attention;
pub mod conv;
pub mod spatial;
mod tensor;
pub mod window;

pub use attention::varlen_attention;
pub use conv::{NeighbourMap, SparseConv3d};
pub use spatial::SparseDownsample;
pub use tensor::SparseTensor;
