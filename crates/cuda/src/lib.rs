//! CUDA glue shared by `splatforge-render` (the rasterizer),
//! `splatforge-fit` (the fitting backend) and `splatforge-nn` (the neural
//! ops), feature `cuda`; without it only [`DeviceMemory`] is here.
//!
//! | item | what |
//! |---|---|
//! | [`DeviceMemory`], [`device_memory`] | a GPU's memory as its driver reports it |
//! | [`check`], [`driver_error`], [`CudaError`] | a kernel launcher's `cudaError_t`, or a cudarc driver error → an error with the CUDA runtime's message |
//! | [`keep_pool_memory`], [`set_cublas_workspace`] | one-time device settings |
//! | [`tensor_address`], [`storage_address`], [`layout_address`], [`slice_address`], [`slice_address_mut`] | the device address a kernel argument takes |
//! | [`alloc`], [`Scratch`], [`wrap_slice`] | device buffers: fresh, grow-only scratch, handed to candle as tensors |
//!
//! # Soundness
//! Every `unsafe` block that turns candle tensors and cudarc buffers into
//! raw device addresses, or allocates device memory, is in [`memory`]. The
//! kernel launches themselves (`extern "C"` calls of each crate's
//! `cuda/api.h`) stay in the crates that own the kernels; a launch is sound
//! when its argument struct holds addresses obtained here, of buffers at
//! least as large as the element counts it passes (what each launcher
//! checks before the call). What makes the addresses valid at launch time:
//!
//! * **One stream.** Every kernel of the workspace is launched on the
//!   stream of the candle device that owns its buffers (candle's CUDA
//!   device has one stream per device and thread), so the stream orders
//!   each launch after every earlier write to its inputs and before every
//!   later read or write of its outputs; no cross-stream synchronisation is
//!   needed.
//! * **Owned buffers.** The caller holds the `Tensor` or `CudaSlice` whose
//!   address it passes for at least as long as the launch call. Device
//!   memory is freed stream-ordered (`cuMemFreeAsync` on the same stream),
//!   so even a buffer dropped right after the launch call is released only
//!   once the kernel has finished with it.
//! * **Guard lifetime: to the end of the address call.** cudarc's
//!   `device_ptr` guard and candle's storage read guard are dropped before
//!   the launch, deliberately and everywhere alike: with one stream the
//!   guard's event adds no ordering, and holding candle's storage lock
//!   across a kernel that writes through the address would only pretend to
//!   protect the write. Mutation of a tensor's storage from another thread
//!   during a launch is excluded by the callers (the rasterizer and the
//!   fitting backend are used from one thread at a time, the neural ops run
//!   inside candle custom ops on their inputs' storage).
//! * **Layout.** [`tensor_address`] takes only contiguous tensors and adds
//!   the layout's start offset; [`storage_address`] adds the start offset
//!   for the custom ops, which check contiguity (or strides) themselves.
//! * **Uninitialised memory.** [`alloc`] returns uninitialised device
//!   memory only for plain numeric types ([`Plain`]), for which any bit
//!   pattern is a value: reading it before a kernel writes it gives
//!   unspecified numbers, never undefined behaviour.

#[cfg(feature = "cuda")]
pub mod memory;
#[cfg(feature = "cuda")]
pub use runtime::device_memory;

/// Memory of one device as its driver reports it (the whole device, all
/// processes), in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceMemory {
    pub used_bytes: u64,
    pub total_bytes: u64,
}
#[cfg(feature = "cuda")]
mod runtime;

#[cfg(feature = "cuda")]
pub use memory::{
    alloc, layout_address, slice_address, slice_address_mut, storage_address, tensor_address,
    wrap_slice, Plain, Scratch,
};
#[cfg(feature = "cuda")]
pub use runtime::{check, driver_error, keep_pool_memory, set_cublas_workspace, CudaError};
