//! candle custom ops around the kernels of `crates/diffusion/cuda/` (built by
//! `build.rs` into `libsplatforge_diffusion_cuda.a`), run on candle's stream.

use std::ffi::{c_int, c_void};

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DevicePtr, DeviceRepr};
use candle_core::cuda_backend::{CudaDType, CudaStorageSlice};
use candle_core::{CudaDevice, CudaStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};

use super::fusable;

const SF_DTYPE_F32: c_int = 0;
const SF_DTYPE_F16: c_int = 1;
const SF_DTYPE_BF16: c_int = 2;

#[repr(C)]
struct SfAttentionArgs {
    q: u64,
    k: u64,
    v: u64,
    out: u64,
    batch: c_int,
    heads: c_int,
    head_dim: c_int,
    nq: c_int,
    nk: c_int,
    scale: f32,
    dtype: c_int,
}

#[repr(C)]
struct SfGroupNormArgs {
    x: u64,
    gamma: u64,
    beta: u64,
    y: u64,
    scratch: u64,
    n: c_int,
    channels: c_int,
    groups: c_int,
    spatial: i64,
    eps: f32,
    silu: c_int,
    dtype: c_int,
}

#[repr(C)]
struct SfGroupNormBwdArgs {
    x: u64,
    dy: u64,
    gamma: u64,
    beta: u64,
    dx: u64,
    scratch: u64,
    n: c_int,
    channels: c_int,
    groups: c_int,
    spatial: i64,
    eps: f32,
    silu: c_int,
    dtype: c_int,
}

extern "C" {
    fn sf_attention(args: *const SfAttentionArgs, stream: *mut c_void) -> c_int;
    fn sf_group_norm_scratch_floats(n: c_int, groups: c_int, group_size: i64) -> usize;
    fn sf_group_norm(args: *const SfGroupNormArgs, stream: *mut c_void) -> c_int;
    fn sf_group_norm_backward(args: *const SfGroupNormBwdArgs, stream: *mut c_void) -> c_int;
}

fn check(what: &str, code: c_int) -> Result<()> {
    if code == 0 {
        Ok(())
    } else {
        candle_core::bail!("{what}: CUDA error {code}")
    }
}

fn small(what: &str, n: usize) -> Result<c_int> {
    c_int::try_from(n).map_err(|_| candle_core::Error::Msg(format!("{what} {n} is too large")))
}

/// Device address of the first element of `l` in `s`.
fn address<T: DeviceRepr>(s: &CudaSlice<T>, l: &Layout, dev: &CudaDevice) -> u64 {
    let stream = dev.cuda_stream();
    let (p, _sync) = s.device_ptr(&stream);
    p + (l.start_offset() * std::mem::size_of::<T>()) as u64
}

/// The fused attention when it applies (CUDA, f16/bf16, head dim 64 or 128,
/// no autograd); `None` sends the caller to the composite path.
pub(super) fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Option<Tensor>> {
    let (b, _, inner) = q.dims3()?;
    let (bk, nk, inner_k) = k.dims3()?;
    if heads == 0 || inner % heads != 0 || bk != b || inner_k != inner || v.dims() != k.dims() {
        return Ok(None);
    }
    let d = inner / heads;
    let ok = [q, k, v].iter().all(|t| fusable(t) && t.dtype() == q.dtype())
        && matches!(q.dtype(), DType::F16 | DType::BF16)
        && matches!(d, 64 | 128)
        && nk > 0;
    if !ok {
        return Ok(None);
    }
    // 16-byte vector loads: rows must start on 16-byte boundaries (buffers
    // are 256-byte aligned; a view's offset may not be).
    let aligned = |t: &Tensor| -> Result<Tensor> {
        let t = t.contiguous()?;
        if (t.layout().start_offset() * 2) % 16 == 0 {
            Ok(t)
        } else {
            t.copy()
        }
    };
    let (q, k, v) = (aligned(q)?, aligned(k)?, aligned(v)?);
    Ok(Some(q.apply_op3_no_bwd(&k, &v, &FusedAttention { heads })?))
}

struct FusedAttention {
    heads: usize,
}

impl FusedAttention {
    fn launch<T: CudaDType + DeviceRepr>(
        &self,
        (q, lq): (&CudaSlice<T>, &Layout),
        (k, lk): (&CudaSlice<T>, &Layout),
        (v, lv): (&CudaSlice<T>, &Layout),
        dev: &CudaDevice,
        dtype: c_int,
    ) -> Result<CudaStorage> {
        let (b, nq, inner) = lq.shape().dims3()?;
        let nk = lk.shape().dims3()?.1;
        let out = unsafe { dev.alloc::<T>(b * nq * inner)? };
        let stream = dev.cuda_stream();
        let args = SfAttentionArgs {
            q: address(q, lq, dev),
            k: address(k, lk, dev),
            v: address(v, lv, dev),
            out: address(&out, &Layout::contiguous(lq.shape()), dev),
            batch: small("batch", b)?,
            heads: small("heads", self.heads)?,
            head_dim: small("head dim", inner / self.heads)?,
            nq: small("queries", nq)?,
            nk: small("keys", nk)?,
            scale: ((inner / self.heads) as f32).powf(-0.5),
            dtype,
        };
        check("attention", unsafe { sf_attention(&args, stream.cu_stream() as *mut c_void) })?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }
}

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "splatforge-fused-attention"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> Result<(candle_core::CpuStorage, Shape)> {
        candle_core::bail!("fused attention is CUDA-only (CPU tensors take ops::attention_reference)")
    }

    fn cuda_fwd(
        &self,
        q: &CudaStorage,
        lq: &Layout,
        k: &CudaStorage,
        lk: &Layout,
        v: &CudaStorage,
        lv: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        if !(lq.is_contiguous() && lk.is_contiguous() && lv.is_contiguous()) {
            candle_core::bail!("fused attention needs contiguous q, k, v");
        }
        let dev = &q.device;
        let out = match (&q.slice, &k.slice, &v.slice) {
            (CudaStorageSlice::BF16(q), CudaStorageSlice::BF16(k), CudaStorageSlice::BF16(v)) => {
                self.launch((q, lq), (k, lk), (v, lv), dev, SF_DTYPE_BF16)?
            }
            (CudaStorageSlice::F16(q), CudaStorageSlice::F16(k), CudaStorageSlice::F16(v)) => {
                self.launch((q, lq), (k, lk), (v, lv), dev, SF_DTYPE_F16)?
            }
            _ => candle_core::bail!("fused attention takes f16 or bf16 q, k, v of one dtype"),
        };
        Ok((out, lq.shape().clone()))
    }
}

/// The fused GroupNorm (+ SiLU) when it applies (CUDA, f32/f16/bf16, no
/// autograd); `None` sends the caller to the composite path.
pub(super) fn group_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    groups: usize,
    eps: f64,
    silu: bool,
) -> Result<Option<Tensor>> {
    let dims = x.dims();
    let on_cuda = matches!(x.device(), candle_core::Device::Cuda(_));
    let kernel_dtype = matches!(x.dtype(), DType::F32 | DType::F16 | DType::BF16);
    if !on_cuda || weight.track_op() || bias.track_op() || !kernel_dtype {
        return Ok(None);
    }
    if dims.len() < 2 || dims[1] != weight.dim(0)? || groups == 0 || dims[1] % groups != 0 {
        return Ok(None);
    }
    let x = x.contiguous()?;
    let w = weight.to_dtype(x.dtype())?.contiguous()?;
    let b = bias.to_dtype(x.dtype())?.contiguous()?;
    let op = FusedGroupNorm {
        groups,
        eps: eps as f32,
        silu,
    };
    Ok(Some(if fusable(&x) {
        x.apply_op3_no_bwd(&w, &b, &op)?
    } else {
        x.apply_op3(&w, &b, op)?
    }))
}

/// The sizes the GroupNorm launchers take, from `[N, C, ...]`.
struct GroupNormGeometry {
    n: c_int,
    channels: c_int,
    groups: c_int,
    spatial: i64,
    /// Scratch of one forward pass (the backward takes twice as much).
    scratch_floats: usize,
}

impl GroupNormGeometry {
    fn of(lx: &Layout, groups: usize) -> Result<Self> {
        let dims = lx.shape().dims();
        let (n, c) = (dims[0], dims[1]);
        let spatial: usize = dims[2..].iter().product();
        let (n, channels, groups) = (small("batch", n)?, small("channels", c)?, small("groups", groups)?);
        let group_size = ((c / groups as usize) * spatial) as i64;
        Ok(Self {
            n,
            channels,
            groups,
            spatial: spatial as i64,
            scratch_floats: unsafe { sf_group_norm_scratch_floats(n, groups, group_size) },
        })
    }
}

#[derive(Debug, Clone)]
struct FusedGroupNorm {
    groups: usize,
    eps: f32,
    silu: bool,
}

/// `dx` of [`FusedGroupNorm`] from `(x, dy, [gamma; beta])`.
struct FusedGroupNormBackward(FusedGroupNorm);

impl FusedGroupNormBackward {
    fn launch<T: CudaDType + DeviceRepr>(
        &self,
        (x, lx): (&CudaSlice<T>, &Layout),
        (dy, ly): (&CudaSlice<T>, &Layout),
        (gb, lgb): (&CudaSlice<T>, &Layout),
        dev: &CudaDevice,
        dtype: c_int,
    ) -> Result<CudaStorage> {
        let geo = GroupNormGeometry::of(lx, self.0.groups)?;
        if ly.shape() != lx.shape() || lgb.shape().elem_count() != 2 * geo.channels as usize {
            candle_core::bail!("GroupNorm backward: x {:?}, dy {:?}, gamma+beta {:?}", lx.shape(), ly.shape(), lgb.shape());
        }
        let c = geo.channels as usize;
        let scratch_len = 2 * geo.scratch_floats;
        let scratch = unsafe { dev.alloc::<f32>(scratch_len)? };
        let dx = unsafe { dev.alloc::<T>(lx.shape().elem_count())? };
        let stream = dev.cuda_stream();
        let gamma = address(gb, lgb, dev);
        let args = SfGroupNormBwdArgs {
            x: address(x, lx, dev),
            dy: address(dy, ly, dev),
            gamma,
            beta: gamma + (c * std::mem::size_of::<T>()) as u64,
            dx: address(&dx, &Layout::contiguous(lx.shape()), dev),
            scratch: address(&scratch, &Layout::contiguous(scratch_len), dev),
            n: geo.n,
            channels: geo.channels,
            groups: geo.groups,
            spatial: geo.spatial,
            eps: self.0.eps,
            silu: self.0.silu as c_int,
            dtype,
        };
        check("group_norm_backward", unsafe { sf_group_norm_backward(&args, stream.cu_stream() as *mut c_void) })?;
        Ok(CudaStorage::wrap_cuda_slice(dx, dev.clone()))
    }
}

impl CustomOp3 for FusedGroupNormBackward {
    fn name(&self) -> &'static str {
        "splatforge-fused-group-norm-backward"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> Result<(candle_core::CpuStorage, Shape)> {
        candle_core::bail!("fused GroupNorm backward is CUDA-only")
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        lx: &Layout,
        dy: &CudaStorage,
        ly: &Layout,
        gb: &CudaStorage,
        lgb: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        if !(lx.is_contiguous() && ly.is_contiguous() && lgb.is_contiguous()) {
            candle_core::bail!("fused GroupNorm backward needs contiguous tensors");
        }
        let dev = &x.device;
        use CudaStorageSlice as S;
        let dx = match (&x.slice, &dy.slice, &gb.slice) {
            (S::F32(x), S::F32(d), S::F32(g)) => self.launch((x, lx), (d, ly), (g, lgb), dev, SF_DTYPE_F32)?,
            (S::F16(x), S::F16(d), S::F16(g)) => self.launch((x, lx), (d, ly), (g, lgb), dev, SF_DTYPE_F16)?,
            (S::BF16(x), S::BF16(d), S::BF16(g)) => self.launch((x, lx), (d, ly), (g, lgb), dev, SF_DTYPE_BF16)?,
            _ => candle_core::bail!("fused GroupNorm backward takes f32, f16 or bf16 tensors of one dtype"),
        };
        Ok((dx, lx.shape().clone()))
    }
}

impl FusedGroupNorm {
    fn launch<T: CudaDType + DeviceRepr>(
        &self,
        (x, lx): (&CudaSlice<T>, &Layout),
        (g, lg): (&CudaSlice<T>, &Layout),
        (b, lb): (&CudaSlice<T>, &Layout),
        dev: &CudaDevice,
        dtype: c_int,
    ) -> Result<CudaStorage> {
        let geo = GroupNormGeometry::of(lx, self.groups)?;
        let scratch_len = geo.scratch_floats;
        let scratch = unsafe { dev.alloc::<f32>(scratch_len)? };
        let y = unsafe { dev.alloc::<T>(lx.shape().elem_count())? };
        let stream = dev.cuda_stream();
        let args = SfGroupNormArgs {
            x: address(x, lx, dev),
            gamma: address(g, lg, dev),
            beta: address(b, lb, dev),
            y: address(&y, &Layout::contiguous(lx.shape()), dev),
            scratch: address(&scratch, &Layout::contiguous(scratch_len), dev),
            n: geo.n,
            channels: geo.channels,
            groups: geo.groups,
            spatial: geo.spatial,
            eps: self.eps,
            silu: self.silu as c_int,
            dtype,
        };
        check("group_norm", unsafe { sf_group_norm(&args, stream.cu_stream() as *mut c_void) })?;
        Ok(CudaStorage::wrap_cuda_slice(y, dev.clone()))
    }
}

impl CustomOp3 for FusedGroupNorm {
    fn name(&self) -> &'static str {
        "splatforge-fused-group-norm"
    }

    /// The gradient of `x` only: the pipeline never trains the affine.
    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let gb = Tensor::cat(&[gamma, beta], 0)?;
        let dy = dy.to_dtype(x.dtype())?.contiguous()?;
        let dx = x.apply_op3_no_bwd(&dy, &gb, &FusedGroupNormBackward(self.clone()))?;
        Ok((Some(dx), None, None))
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> Result<(candle_core::CpuStorage, Shape)> {
        candle_core::bail!("fused GroupNorm is CUDA-only (CPU tensors take GroupNorm::reference)")
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        lx: &Layout,
        g: &CudaStorage,
        lg: &Layout,
        b: &CudaStorage,
        lb: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        if !(lx.is_contiguous() && lg.is_contiguous() && lb.is_contiguous()) {
            candle_core::bail!("fused GroupNorm needs contiguous tensors");
        }
        let dev = &x.device;
        use CudaStorageSlice as S;
        let y = match (&x.slice, &g.slice, &b.slice) {
            (S::F32(x), S::F32(g), S::F32(b)) => self.launch((x, lx), (g, lg), (b, lb), dev, SF_DTYPE_F32)?,
            (S::F16(x), S::F16(g), S::F16(b)) => self.launch((x, lx), (g, lg), (b, lb), dev, SF_DTYPE_F16)?,
            (S::BF16(x), S::BF16(g), S::BF16(b)) => {
                self.launch((x, lx), (g, lg), (b, lb), dev, SF_DTYPE_BF16)?
            }
            _ => candle_core::bail!("fused GroupNorm takes f32, f16 or bf16 tensors of one dtype"),
        };
        Ok((y, lx.shape().clone()))
    }
}

/// Bytes of the cuBLAS workspace [`configure_device`] gives each device.
const CUBLAS_WORKSPACE_BYTES: usize = 32 << 20;

/// Once per device: gives candle's cuBLAS handle a 32 MiB workspace (kept for
/// the life of the process; without one, cuBLAS picks among fewer GEMM
/// kernels on Hopper, and torch gives it the same amount), and keeps freed
/// memory in the device's pool (cuDNN's workspaces and every candle tensor
/// are stream-ordered allocations; the rasterizer does the same).
pub(super) fn configure_device(dev: &CudaDevice) -> Result<()> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    static WORKSPACES: Mutex<Option<HashMap<candle_core::cuda_backend::DeviceId, CudaSlice<u8>>>> = Mutex::new(None);
    let mut guard = WORKSPACES.lock().unwrap_or_else(|e| e.into_inner());
    let map = guard.get_or_insert_with(HashMap::new);
    if map.contains_key(&dev.id()) {
        return Ok(());
    }
    splatforge_render::cuda::keep_pool_memory(dev).map_err(candle_core::Error::wrap)?;
    let ws = dev.alloc_zeros::<u8>(CUBLAS_WORKSPACE_BYTES)?;
    let blas = dev.cublas_handle();
    let stream = dev.cuda_stream();
    let ptr = ws.device_ptr(&stream).0;
    let status = unsafe {
        candle_core::cuda_backend::cudarc::cublas::sys::cublasSetWorkspace_v2(
            *blas.handle(),
            ptr as *mut c_void,
            CUBLAS_WORKSPACE_BYTES,
        )
    };
    if status != candle_core::cuda_backend::cudarc::cublas::sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        candle_core::bail!("cublasSetWorkspace: {status:?}");
    }
    map.insert(dev.id(), ws);
    Ok(())
}

#[cfg(feature = "cudnn")]
pub(super) use cudnn_conv::conv2d;

/// Convolutions through cuDNN (cudarc's raw bindings; candle's own `cudnn`
/// feature stays off, see [`crate::ops::Conv2d`]) with tensor-op math for
/// f16/bf16 (f32 keeps cuDNN's default math, which allows TF32 unless
/// `NVIDIA_TF32_OVERRIDE=0`, as torch's default does).
///
/// Per shape and thread a plan is made once and cached: the descriptors, and
/// the algorithm cuDNN's `Find` measured fastest (it runs each candidate, as
/// torch's `cudnn.benchmark` does; cuDNN's heuristics chose algorithms up to
/// 5× slower than torch's on the VAE's 256² convolutions) with its workspace
/// size. A call is then one cuDNN launch. The forward has a backward for the
/// input (backward-data), so the SDS path's VAE encoder, differentiated with
/// respect to the images, runs on cuDNN too; the weights take no gradient.
#[cfg(feature = "cudnn")]
mod cudnn_conv {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::ffi::c_void;
    use std::rc::Rc;

    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::cudnn::{sys, CudnnDataType};
    use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, DeviceRepr};
    use candle_core::cuda_backend::{CudaDType, CudaStorageSlice, DeviceId};
    use candle_core::{CudaDevice, CudaStorage, CustomOp2, DType, Error as E, Layout, Result, Shape, Tensor, WithDType};
    use candle_nn::Conv2dConfig;

    use super::fusable;

    fn ok(what: &str, status: sys::cudnnStatus_t) -> Result<()> {
        if status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS {
            Ok(())
        } else {
            candle_core::bail!("cuDNN {what}: {status:?}")
        }
    }

    /// Which cuDNN call a plan is for.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    enum Pass {
        Forward,
        BackwardData,
    }

    /// (pass, input dims, filter dims, padding, stride, dilation, dtype, device)
    type Key = (Pass, [usize; 4], [usize; 4], usize, usize, usize, DType, DeviceId);

    /// Descriptors of one convolution (x `[n,c,h,w]`, filter `[k,c,r,s]`, y
    /// `[n,k,ho,wo]`, f32 compute) and the algorithm picked for its pass.
    struct Plan {
        conv: sys::cudnnConvolutionDescriptor_t,
        x: sys::cudnnTensorDescriptor_t,
        w: sys::cudnnFilterDescriptor_t,
        y: sys::cudnnTensorDescriptor_t,
        /// `cudnnConvolutionFwdAlgo_t` or `cudnnConvolutionBwdDataAlgo_t` as u32.
        algo: u32,
        workspace: usize,
    }

    impl Drop for Plan {
        fn drop(&mut self) {
            unsafe {
                sys::cudnnDestroyConvolutionDescriptor(self.conv);
                sys::cudnnDestroyTensorDescriptor(self.x);
                sys::cudnnDestroyFilterDescriptor(self.w);
                sys::cudnnDestroyTensorDescriptor(self.y);
            }
        }
    }

    struct Handle(sys::cudnnHandle_t);

    impl Drop for Handle {
        fn drop(&mut self) {
            unsafe {
                sys::cudnnDestroy(self.0);
            }
        }
    }

    thread_local! {
        // cuDNN handles are not thread-safe: one per thread and device, on
        // the device's (candle's) stream.
        static HANDLES: RefCell<HashMap<DeviceId, Rc<Handle>>> = RefCell::new(HashMap::new());
        static PLANS: RefCell<HashMap<Key, Rc<Plan>>> = RefCell::new(HashMap::new());
    }

    fn handle(dev: &CudaDevice) -> Result<Rc<Handle>> {
        let id = dev.id();
        if let Some(h) = HANDLES.with(|m| m.borrow().get(&id).cloned()) {
            return Ok(h);
        }
        let stream = dev.cuda_stream();
        stream.context().bind_to_thread().map_err(E::wrap)?;
        let mut raw = std::ptr::null_mut();
        ok("create", unsafe { sys::cudnnCreate(&mut raw) })?;
        let h = Rc::new(Handle(raw));
        ok("set stream", unsafe { sys::cudnnSetStream(raw, stream.cu_stream() as _) })?;
        HANDLES.with(|m| m.borrow_mut().insert(id, h.clone()));
        Ok(h)
    }

    fn int(v: usize) -> Result<i32> {
        i32::try_from(v).map_err(|_| E::Msg(format!("conv2d: size {v} too large for cuDNN")))
    }

    /// The cached plan of `key`, made (descriptors, then `Find`) on first use.
    fn plan<T: CudnnDataType + WithDType>(h: &Handle, key: Key, p: Params, y: [usize; 4]) -> Result<Rc<Plan>> {
        if let Some(pl) = PLANS.with(|m| m.borrow().get(&key).cloned()) {
            return Ok(pl);
        }
        let (pass, x, w) = (key.0, key.1, key.2);
        let mut pl = Plan {
            conv: std::ptr::null_mut(),
            x: std::ptr::null_mut(),
            w: std::ptr::null_mut(),
            y: std::ptr::null_mut(),
            algo: 0,
            workspace: 0,
        };
        let nchw = sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
        unsafe {
            ok("descriptor", sys::cudnnCreateConvolutionDescriptor(&mut pl.conv))?;
            ok("descriptor", sys::cudnnCreateTensorDescriptor(&mut pl.x))?;
            ok("descriptor", sys::cudnnCreateFilterDescriptor(&mut pl.w))?;
            ok("descriptor", sys::cudnnCreateTensorDescriptor(&mut pl.y))?;
            ok(
                "convolution descriptor",
                sys::cudnnSetConvolution2dDescriptor(
                    pl.conv,
                    int(p.padding)?,
                    int(p.padding)?,
                    int(p.stride)?,
                    int(p.stride)?,
                    int(p.dilation)?,
                    int(p.dilation)?,
                    sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
                    sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
                ),
            )?;
            let math = if T::DTYPE == DType::F32 {
                sys::cudnnMathType_t::CUDNN_DEFAULT_MATH
            } else {
                sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH
            };
            ok("math type", sys::cudnnSetConvolutionMathType(pl.conv, math))?;
            let dt = T::DATA_TYPE;
            ok("x descriptor", sys::cudnnSetTensor4dDescriptor(pl.x, nchw, dt, int(x[0])?, int(x[1])?, int(x[2])?, int(x[3])?))?;
            ok("w descriptor", sys::cudnnSetFilter4dDescriptor(pl.w, dt, nchw, int(w[0])?, int(w[1])?, int(w[2])?, int(w[3])?))?;
            ok("y descriptor", sys::cudnnSetTensor4dDescriptor(pl.y, nchw, dt, int(y[0])?, int(y[1])?, int(y[2])?, int(y[3])?))?;
            let mut found = 0;
            match pass {
                Pass::Forward => {
                    let mut perf = [std::mem::zeroed::<sys::cudnnConvolutionFwdAlgoPerf_t>(); 8];
                    ok("find forward", sys::cudnnFindConvolutionForwardAlgorithm(h.0, pl.x, pl.w, pl.conv, pl.y, 8, &mut found, perf.as_mut_ptr()))?;
                    let best = perf[..found.max(0) as usize]
                        .iter()
                        .find(|r| r.status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS)
                        .ok_or_else(|| E::Msg(format!("cuDNN has no forward algorithm for x {x:?}, w {w:?}")))?;
                    (pl.algo, pl.workspace) = (best.algo as u32, best.memory);
                    // Find tries each math type; run with the one it measured.
                    ok("math type", sys::cudnnSetConvolutionMathType(pl.conv, best.mathType))?;
                }
                Pass::BackwardData => {
                    let mut perf = [std::mem::zeroed::<sys::cudnnConvolutionBwdDataAlgoPerf_t>(); 8];
                    ok("find backward data", sys::cudnnFindConvolutionBackwardDataAlgorithm(h.0, pl.w, pl.y, pl.conv, pl.x, 8, &mut found, perf.as_mut_ptr()))?;
                    let best = perf[..found.max(0) as usize]
                        .iter()
                        .find(|r| r.status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS)
                        .ok_or_else(|| E::Msg(format!("cuDNN has no backward-data algorithm for x {x:?}, w {w:?}")))?;
                    (pl.algo, pl.workspace) = (best.algo as u32, best.memory);
                    ok("math type", sys::cudnnSetConvolutionMathType(pl.conv, best.mathType))?;
                }
            }
        }
        let pl = Rc::new(pl);
        PLANS.with(|m| m.borrow_mut().insert(key, pl.clone()));
        Ok(pl)
    }

    /// The cuDNN convolution when it applies (CUDA, f32/f16/bf16, one group,
    /// weights without gradient); `None` sends the caller to candle's `conv2d`.
    pub(in crate::ops) fn conv2d(
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        cfg: &Conv2dConfig,
    ) -> Result<Option<Tensor>> {
        let applies = matches!(x.device(), candle_core::Device::Cuda(_))
            && !weight.track_op()
            && bias.is_none_or(|b| !b.track_op())
            && cfg.groups == 1
            && x.rank() == 4
            && weight.rank() == 4
            && weight.dtype() == x.dtype()
            && matches!(x.dtype(), DType::F32 | DType::F16 | DType::BF16)
            && x.dim(1)? == weight.dim(1)?;
        if !applies {
            return Ok(None);
        }
        let params = Params {
            padding: cfg.padding,
            stride: cfg.stride,
            dilation: cfg.dilation,
        };
        let (x, w) = (x.contiguous()?, weight.contiguous()?);
        let y = if fusable(&x) {
            x.apply_op2_no_bwd(&w, &CudnnConv2d(params))?
        } else {
            x.apply_op2(&w, CudnnConv2d(params))?
        };
        Ok(Some(match bias {
            Some(b) => y.broadcast_add(&b.to_dtype(y.dtype())?.reshape((1, (), 1, 1))?)?,
            None => y,
        }))
    }

    #[derive(Debug, Clone, Copy)]
    struct Params {
        padding: usize,
        stride: usize,
        dilation: usize,
    }

    impl Params {
        fn out_size(&self, input: usize, kernel: usize) -> Result<usize> {
            let span = self.dilation * (kernel - 1) + 1;
            let padded = input + 2 * self.padding;
            if padded < span || self.stride == 0 {
                candle_core::bail!("conv2d: kernel {kernel} (dilation {}) larger than the padded input {padded}", self.dilation);
            }
            Ok((padded - span) / self.stride + 1)
        }
    }

    /// Runs one pass: `a` is x (forward) or dy (backward-data), `w` the
    /// filter; returns y or dx.
    fn run<T>(
        pass: Pass,
        p: Params,
        x_dims: [usize; 4],
        (a, la): (&CudaSlice<T>, &Layout),
        (w, lw): (&CudaSlice<T>, &Layout),
        dev: &CudaDevice,
    ) -> Result<(CudaStorage, Shape)>
    where
        T: CudnnDataType + DeviceRepr + CudaDType + WithDType,
    {
        let [n, c, h, wd] = x_dims;
        let (k, c_w, r, s) = lw.shape().dims4()?;
        if c_w != c {
            candle_core::bail!("conv2d: {c} input channels, filter {:?}", lw.shape().dims());
        }
        let y_dims = [n, k, p.out_size(h, r)?, p.out_size(wd, s)?];
        let (a_dims, out_dims) = match pass {
            Pass::Forward => (x_dims, y_dims),
            Pass::BackwardData => (y_dims, x_dims),
        };
        if la.shape().dims() != a_dims {
            candle_core::bail!("conv2d: input {:?}, expected {a_dims:?}", la.shape().dims());
        }
        let hd = handle(dev)?;
        let key: Key = (pass, x_dims, [k, c, r, s], p.padding, p.stride, p.dilation, T::DTYPE, dev.id());
        let pl = plan::<T>(&hd, key, p, y_dims)?;
        let stream = dev.cuda_stream();
        // No allocation when the plan needs no workspace (cuDNN takes null then).
        let mut workspace = match pl.workspace {
            0 => None,
            bytes => Some(unsafe { dev.alloc::<u8>(bytes)? }),
        };
        let mut out = unsafe { dev.alloc::<T>(out_dims.iter().product())? };
        let elem = std::mem::size_of::<T>() as u64;
        let a_ptr = a.device_ptr(&stream).0 + la.start_offset() as u64 * elem;
        let w_ptr = w.device_ptr(&stream).0 + lw.start_offset() as u64 * elem;
        let ws_ptr = workspace.as_mut().map_or(0, |w| w.device_ptr_mut(&stream).0);
        let out_ptr = out.device_ptr_mut(&stream).0;
        let (alpha, beta) = (1f32, 0f32);
        let (alpha, beta) = (&alpha as *const f32 as *const c_void, &beta as *const f32 as *const c_void);
        unsafe {
            match pass {
                Pass::Forward => ok(
                    "forward",
                    sys::cudnnConvolutionForward(
                        hd.0, alpha, pl.x, a_ptr as *const c_void, pl.w, w_ptr as *const c_void, pl.conv,
                        std::mem::transmute::<u32, sys::cudnnConvolutionFwdAlgo_t>(pl.algo),
                        ws_ptr as *mut c_void, pl.workspace, beta, pl.y, out_ptr as *mut c_void,
                    ),
                )?,
                Pass::BackwardData => ok(
                    "backward data",
                    sys::cudnnConvolutionBackwardData(
                        hd.0, alpha, pl.w, w_ptr as *const c_void, pl.y, a_ptr as *const c_void, pl.conv,
                        std::mem::transmute::<u32, sys::cudnnConvolutionBwdDataAlgo_t>(pl.algo),
                        ws_ptr as *mut c_void, pl.workspace, beta, pl.x, out_ptr as *mut c_void,
                    ),
                )?,
            }
        }
        Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), Shape::from(out_dims.to_vec())))
    }

    fn dispatch(
        pass: Pass,
        p: Params,
        x_dims: Option<[usize; 4]>,
        (a, la): (&CudaStorage, &Layout),
        (w, lw): (&CudaStorage, &Layout),
    ) -> Result<(CudaStorage, Shape)> {
        if !(la.is_contiguous() && lw.is_contiguous()) {
            candle_core::bail!("the cuDNN convolution needs contiguous tensors");
        }
        let x_dims = match x_dims {
            Some(d) => d,
            None => {
                let (n, c, h, w) = la.shape().dims4()?;
                [n, c, h, w]
            }
        };
        let dev = a.device();
        use CudaStorageSlice as S;
        match (&a.slice, &w.slice) {
            (S::F32(a), S::F32(w)) => run(pass, p, x_dims, (a, la), (w, lw), dev),
            (S::F16(a), S::F16(w)) => run(pass, p, x_dims, (a, la), (w, lw), dev),
            (S::BF16(a), S::BF16(w)) => run(pass, p, x_dims, (a, la), (w, lw), dev),
            _ => candle_core::bail!("the cuDNN convolution takes f32, f16 or bf16 tensors of one dtype"),
        }
    }

    /// `y = conv(x, w)`; the backward gives `dx` (the weights take none).
    struct CudnnConv2d(Params);

    impl CustomOp2 for CudnnConv2d {
        fn name(&self) -> &'static str {
            "splatforge-cudnn-conv2d"
        }

        fn cpu_fwd(
            &self,
            _: &candle_core::CpuStorage,
            _: &Layout,
            _: &candle_core::CpuStorage,
            _: &Layout,
        ) -> Result<(candle_core::CpuStorage, Shape)> {
            candle_core::bail!("the cuDNN convolution is CUDA-only (CPU tensors take candle's conv2d)")
        }

        fn cuda_fwd(&self, x: &CudaStorage, lx: &Layout, w: &CudaStorage, lw: &Layout) -> Result<(CudaStorage, Shape)> {
            dispatch(Pass::Forward, self.0, None, (x, lx), (w, lw))
        }

        fn bwd(&self, x: &Tensor, w: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
            let (n, c, h, wd) = x.dims4()?;
            let op = CudnnConv2dBackwardData { params: self.0, x: [n, c, h, wd] };
            let dx = dy.to_dtype(x.dtype())?.contiguous()?.apply_op2_no_bwd(&w.contiguous()?, &op)?;
            Ok((Some(dx), None))
        }
    }

    /// `dx` of [`CudnnConv2d`] from `dy` and the filter (cuDNN's backward-data).
    struct CudnnConv2dBackwardData {
        params: Params,
        /// The forward input's dims `[n, c, h, w]`.
        x: [usize; 4],
    }

    impl CustomOp2 for CudnnConv2dBackwardData {
        fn name(&self) -> &'static str {
            "splatforge-cudnn-conv2d-backward-data"
        }

        fn cpu_fwd(
            &self,
            _: &candle_core::CpuStorage,
            _: &Layout,
            _: &candle_core::CpuStorage,
            _: &Layout,
        ) -> Result<(candle_core::CpuStorage, Shape)> {
            candle_core::bail!("the cuDNN convolution is CUDA-only")
        }

        fn cuda_fwd(&self, dy: &CudaStorage, ly: &Layout, w: &CudaStorage, lw: &Layout) -> Result<(CudaStorage, Shape)> {
            dispatch(Pass::BackwardData, self.params, Some(self.x), (dy, ly), (w, lw))
        }
    }
}
