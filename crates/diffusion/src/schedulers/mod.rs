//! Deterministic samplers of the denoising loops.
//!
//! | module | what |
//! |---|---|
//! | [`ddim`] | DDIM (SD 2.1-base schedule; MVDream, SD 2.1), and the β schedule configuration every scheduler reads |
//! | [`euler`] | Euler discrete (SD-Turbo) |
//!
//! FLUX's flow-matching schedule is [`crate::flux::FlowMatchConfig`].

pub mod ddim;
pub mod euler;
