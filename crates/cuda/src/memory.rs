//! Device addresses of tensors and buffers, device allocation, buffers as
//! tensors: all of the workspace's unsafe pointer code (see the crate docs
//! for why each use is sound).

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr,
};
use candle_core::cuda_backend::CudaDType;
use candle_core::op::BackpropOp;
use candle_core::{CudaDevice, CudaStorage, Layout, Storage, Tensor};

use crate::runtime::{driver_error, CudaError};

/// Plain numeric element types: every bit pattern is a value, so
/// uninitialised device memory of them can be handed out safely.
pub trait Plain: DeviceRepr + private::Sealed {}

mod private {
    pub trait Sealed {}
}

macro_rules! plain {
    ($($t:ty),*) => {$(
        impl private::Sealed for $t {}
        impl Plain for $t {}
    )*};
}
plain!(u8, u32, i32, u64, i64, f32, f64, half::f16, half::bf16);

/// Device address of the first element of a contiguous CUDA tensor of
/// element type `T` (its layout's start offset included).
pub fn tensor_address<T: CudaDType>(
    t: &Tensor,
    stream: &Arc<CudaStream>,
) -> Result<u64, CudaError> {
    let (storage, layout) = t.storage_and_layout();
    if !layout.is_contiguous() {
        return Err(CudaError::Tensor(format!(
            "a non-contiguous tensor {:?}",
            t.shape()
        )));
    }
    let cuda = match &*storage {
        Storage::Cuda(cuda) => cuda,
        _ => {
            return Err(CudaError::Tensor(format!(
                "a tensor on {:?}, expected CUDA",
                t.device().location()
            )))
        }
    };
    let slice = cuda
        .as_cuda_slice::<T>()
        .map_err(|e| CudaError::Tensor(e.to_string()))?;
    Ok(slice_address(slice, stream) + byte_offset::<T>(layout))
}

/// Device address of the first element of `layout` in a custom op's CUDA
/// storage of element type `T`, on the storage's own stream.
pub fn storage_address<T: CudaDType>(
    storage: &CudaStorage,
    layout: &Layout,
) -> candle_core::Result<u64> {
    let slice = storage.as_cuda_slice::<T>()?;
    Ok(layout_address(slice, layout, &storage.device.cuda_stream()))
}

/// Device address of the first element of `layout` in `slice`.
pub fn layout_address<T>(slice: &CudaSlice<T>, layout: &Layout, stream: &Arc<CudaStream>) -> u64 {
    slice_address(slice, stream) + byte_offset::<T>(layout)
}

fn byte_offset<T>(layout: &Layout) -> u64 {
    (layout.start_offset() * std::mem::size_of::<T>()) as u64
}

/// Device address of a buffer that a kernel reads.
pub fn slice_address<T>(slice: &CudaSlice<T>, stream: &Arc<CudaStream>) -> u64 {
    let (address, _guard) = slice.device_ptr(stream);
    address
}

/// Device address of a buffer that a kernel writes.
pub fn slice_address_mut<T>(slice: &mut CudaSlice<T>, stream: &Arc<CudaStream>) -> u64 {
    let (address, _guard) = slice.device_ptr_mut(stream);
    address
}

/// `len` elements of uninitialised device memory on `stream` (stream-ordered).
pub fn alloc<T: Plain>(stream: &Arc<CudaStream>, len: usize) -> Result<CudaSlice<T>, CudaError> {
    // SAFETY: T is Plain, so whatever the memory holds is a valid T (see the
    // crate docs); the allocation itself is cudarc's stream-ordered one.
    unsafe { stream.alloc::<T>(len) }.map_err(|e| driver_error("alloc", e))
}

/// A device buffer handed to candle as a 1-D tensor of its length (no
/// gradient, not a variable).
pub fn wrap_slice<T: CudaDType>(slice: CudaSlice<T>, dev: &CudaDevice) -> Tensor {
    let len = slice.len();
    let storage = Storage::Cuda(CudaStorage::wrap_cuda_slice(slice, dev.clone()));
    Tensor::from_storage(storage, len, BackpropOp::none(), false)
}

/// A grow-only device scratch buffer (contents undefined between uses).
#[derive(Default)]
pub struct Scratch {
    buf: Option<CudaSlice<u8>>,
}

impl Scratch {
    /// Device address of at least `bytes` bytes. Grows to the next power of
    /// two (at least 1.25 × `bytes`, at least 256 bytes) so that slowly
    /// growing scenes do not reallocate at every call.
    pub fn ensure(&mut self, stream: &Arc<CudaStream>, bytes: usize) -> Result<u64, CudaError> {
        let bytes = bytes.max(256);
        if self.buf.as_ref().is_none_or(|b| b.len() < bytes) {
            let capacity = bytes.next_power_of_two().max(bytes + bytes / 4);
            // Free first: the old contents are not needed.
            self.buf = None;
            self.buf = Some(alloc::<u8>(stream, capacity)?);
        }
        Ok(self.buf.as_ref().map_or(0, |b| slice_address(b, stream)))
    }
}
