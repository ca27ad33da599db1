//! Gaussian splats as our users exchange them: the [`Gaussians`] data model,
//! the 3DGS PLY and SPZ file formats, the 404-GEN validator's data checks,
//! summaries for `inspect`, and normalisation. Also what the crates above
//! share: the spherical-harmonics basis ([`sh`]) and the seeded generator
//! ([`rng::SplitMix64`]).
//!
//! Data flows one way here: bytes → [`Gaussians`] → bytes. Every reader
//! bounds its allocations by the input's length, never by a count field.

pub mod error;
pub mod gaussians;
pub mod io;
pub mod normalize;
pub mod ply;
pub mod rng;
pub mod sh;
pub mod spz;
pub mod summary;
pub mod validate;

pub use error::SplatError;
pub use gaussians::{logit, sh_coeffs_per_channel, sigmoid, Gaussians, SH_C0};
pub use io::{
    encode_splat, read_splat_bytes, read_splat_file, write_atomic, write_splat_file, EncodeOptions,
    SplatFormat,
};
