//! candle custom ops around the kernels of `crates/nn/cuda/` (built by
//! `build.rs` into `libsplatforge_nn_cuda.a`), run on candle's stream.

use std::ffi::{c_int, c_void};

use candle_core::cuda_backend::cudarc::driver::CudaSlice;
use candle_core::cuda_backend::{CudaDType, CudaStorageSlice};
use candle_core::{
    CudaDevice, CudaStorage, CustomOp1, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType,
};

use splatforge_cuda::{layout_address, Plain};

use super::deform::DeformIm2col;
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
    variant: c_int,
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

#[repr(C)]
// Used by the cuDNN convolution only.
#[cfg_attr(not(feature = "cudnn"), allow(dead_code))]
pub(super) struct SfChannelBiasArgs {
    pub y: u64,
    pub bias: u64,
    pub planes: i64,
    pub channels: c_int,
    pub plane: i64,
    pub dtype: c_int,
}

#[repr(C)]
struct SfUpsampleArgs {
    x: u64,
    y: u64,
    planes: i64,
    h: c_int,
    w: c_int,
    dtype: c_int,
}

#[repr(C)]
struct SfLinearEpilogueArgs {
    y: u64,
    out: u64,
    bias: u64,
    extra: u64,
    gate: u64,
    residual: u64,
    rows: i64,
    cols: c_int,
    rows_per_gate: i64,
    gelu: c_int,
    dtype: c_int,
}

#[repr(C)]
struct SfRmsNormRopeArgs {
    x: u64,
    bias: u64,
    scale: u64,
    cos: u64,
    sin: u64,
    out: u64,
    tokens: i64,
    heads: c_int,
    head_dim: c_int,
    scale_per_head: c_int,
    eps: f32,
    dtype: c_int,
}

#[repr(C)]
struct SfLayerNormModulateArgs {
    x: u64,
    weight: u64,
    bias: u64,
    shift: u64,
    scale: u64,
    out: u64,
    rows: i64,
    channels: c_int,
    rows_per_item: i64,
    eps: f32,
    dtype: c_int,
}

#[repr(C)]
struct SfDeformIm2colArgs {
    x: u64,
    offset: u64,
    mask: u64,
    cols: u64,
    batch: c_int,
    channels: c_int,
    height: c_int,
    width: c_int,
    kernel: c_int,
    stride: c_int,
    padding: c_int,
    out_height: c_int,
    out_width: c_int,
    row0: c_int,
    rows: c_int,
    dtype: c_int,
}

#[repr(C)]
struct SfChannelLayerNormArgs {
    x: u64,
    weight: u64,
    bias: u64,
    out: u64,
    n: c_int,
    channels: c_int,
    spatial: i64,
    eps: f32,
    silu: c_int,
    dtype: c_int,
}

extern "C" {
    fn sf_channel_layer_norm(args: *const SfChannelLayerNormArgs, stream: *mut c_void) -> c_int;
    fn sf_deform_im2col(args: *const SfDeformIm2colArgs, stream: *mut c_void) -> c_int;
    fn sf_layer_norm_modulate(args: *const SfLayerNormModulateArgs, stream: *mut c_void) -> c_int;
    fn sf_rms_norm_rope(args: *const SfRmsNormRopeArgs, stream: *mut c_void) -> c_int;
    fn sf_linear_epilogue(args: *const SfLinearEpilogueArgs, stream: *mut c_void) -> c_int;
    #[cfg_attr(not(feature = "cudnn"), allow(dead_code))]
    pub(super) fn sf_channel_bias(args: *const SfChannelBiasArgs, stream: *mut c_void) -> c_int;
    fn sf_upsample_nearest2x(args: *const SfUpsampleArgs, stream: *mut c_void) -> c_int;
    fn sf_attention(args: *const SfAttentionArgs, stream: *mut c_void) -> c_int;
    fn sf_group_norm_scratch_floats(n: c_int, groups: c_int, group_size: i64) -> usize;
    fn sf_group_norm(args: *const SfGroupNormArgs, stream: *mut c_void) -> c_int;
    fn sf_group_norm_backward(args: *const SfGroupNormBwdArgs, stream: *mut c_void) -> c_int;
}

/// The kernels' code for a dtype (`SF_DTYPE_*` in `cuda/api.h`).
pub(super) fn sf_dtype(dt: DType) -> Result<c_int> {
    match dt {
        DType::F32 => Ok(SF_DTYPE_F32),
        DType::F16 => Ok(SF_DTYPE_F16),
        DType::BF16 => Ok(SF_DTYPE_BF16),
        d => candle_core::bail!("no CUDA kernel for {d:?}"),
    }
}

/// `Ok` for a kernel launcher's `cudaSuccess`, else the CUDA runtime's message.
pub(super) fn check(what: &str, code: c_int) -> Result<()> {
    splatforge_cuda::check(what, code).map_err(candle_core::Error::wrap)
}

/// `len` elements of uninitialised device memory on `dev`'s stream.
pub(super) fn alloc<T: Plain>(dev: &CudaDevice, len: usize) -> Result<CudaSlice<T>> {
    splatforge_cuda::alloc(&dev.cuda_stream(), len).map_err(candle_core::Error::wrap)
}

fn small(what: &str, n: usize) -> Result<c_int> {
    c_int::try_from(n).map_err(|_| candle_core::Error::Msg(format!("{what} {n} is too large")))
}

/// Device address of the first element of `l` in `s`.
fn address<T>(s: &CudaSlice<T>, l: &Layout, dev: &CudaDevice) -> u64 {
    layout_address(s, l, &dev.cuda_stream())
}

/// Device address of the first element of `l` in `s` (f32, f16 or bf16).
pub(super) fn storage_address(s: &CudaStorage, l: &Layout) -> Result<u64> {
    use CudaStorageSlice as S;
    Ok(match &s.slice {
        S::F32(v) => address(v, l, &s.device),
        S::F16(v) => address(v, l, &s.device),
        S::BF16(v) => address(v, l, &s.device),
        _ => candle_core::bail!("the CUDA kernels take f32, f16 or bf16 tensors"),
    })
}

/// `t` contiguous and starting on a 16-byte boundary, for kernels that load
/// 16-byte vectors (buffers are 256-byte aligned; a view's offset may not
/// be): `t` itself when it already is, else a copy.
pub(super) fn aligned(t: &Tensor) -> Result<Tensor> {
    let t = t.contiguous()?;
    if (t.layout().start_offset() * t.dtype().size_in_bytes()) % 16 == 0 {
        Ok(t)
    } else {
        t.copy()
    }
}

/// The fused attention when it applies (CUDA, f16/bf16, head dim 64 or 128,
/// no autograd); `None` sends the caller to the composite path. `variant`
/// picks the kernel's block shape (`SfAttentionArgs` in `cuda/api.h`; 0 is
/// the tuned default).
pub(super) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    variant: u32,
) -> Result<Option<Tensor>> {
    let (b, _, inner) = q.dims3()?;
    let (bk, nk, inner_k) = k.dims3()?;
    if heads == 0 || inner % heads != 0 || bk != b || inner_k != inner || v.dims() != k.dims() {
        return Ok(None);
    }
    let d = inner / heads;
    let ok = [q, k, v]
        .iter()
        .all(|t| fusable(t) && t.dtype() == q.dtype())
        && matches!(q.dtype(), DType::F16 | DType::BF16)
        && matches!(d, 64 | 128)
        && nk > 0;
    if !ok {
        return Ok(None);
    }
    // 16-byte vector loads: rows must start on 16-byte boundaries.
    let (q, k, v) = (aligned(q)?, aligned(k)?, aligned(v)?);
    Ok(Some(q.apply_op3_no_bwd(
        &k,
        &v,
        &FusedAttention { heads, variant },
    )?))
}

struct FusedAttention {
    heads: usize,
    variant: u32,
}

impl TernaryKernel for FusedAttention {
    const WHAT: &'static str = "fused attention";
    const F32: bool = false;

    fn launch<T: CudaDType + Plain + WithDType>(
        &self,
        (q, lq): (&CudaSlice<T>, &Layout),
        (k, lk): (&CudaSlice<T>, &Layout),
        (v, lv): (&CudaSlice<T>, &Layout),
        dev: &CudaDevice,
    ) -> Result<CudaStorage> {
        let (b, nq, inner) = lq.shape().dims3()?;
        let nk = lk.shape().dims3()?.1;
        let out = alloc::<T>(dev, b * nq * inner)?;
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
            dtype: sf_dtype(T::DTYPE)?,
            variant: small("attention variant", self.variant as usize)?,
        };
        // SAFETY: the args hold device addresses of live buffers of the shapes the kernel
        // reads and writes (checked above), and the launch is on candle's stream of them.
        check("attention", unsafe {
            sf_attention(&args, stream.cu_stream() as *mut c_void)
        })?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }
}

/// A kernel with three inputs of one dtype (contiguous) and one new output
/// of the first input's shape: both attentions (q, k, v) and GroupNorm's
/// passes; [`ternary_op!`] writes its `CustomOp3`.
pub(super) trait TernaryKernel {
    /// The kernel's name in errors.
    const WHAT: &'static str;
    /// Whether it takes f32 (else only f16 and bf16).
    const F32: bool;

    /// Runs on the three slices; returns `[a's shape]`.
    fn launch<T: CudaDType + Plain + WithDType>(
        &self,
        a: (&CudaSlice<T>, &Layout),
        b: (&CudaSlice<T>, &Layout),
        c: (&CudaSlice<T>, &Layout),
        dev: &CudaDevice,
    ) -> Result<CudaStorage>;
}

/// The `cuda_fwd` of a [`TernaryKernel`]: checks the layouts and dtypes, then
/// launches on the slices.
pub(super) fn ternary_fwd<K: TernaryKernel>(
    op: &K,
    (a, la): (&CudaStorage, &Layout),
    (b, lb): (&CudaStorage, &Layout),
    (c, lc): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    if !(la.is_contiguous() && lb.is_contiguous() && lc.is_contiguous()) {
        candle_core::bail!("the {} kernel needs contiguous inputs", K::WHAT);
    }
    let dev = &a.device;
    use CudaStorageSlice as S;
    let out = match (&a.slice, &b.slice, &c.slice) {
        (S::F32(a), S::F32(b), S::F32(c)) if K::F32 => op.launch((a, la), (b, lb), (c, lc), dev)?,
        (S::F16(a), S::F16(b), S::F16(c)) => op.launch((a, la), (b, lb), (c, lc), dev)?,
        (S::BF16(a), S::BF16(b), S::BF16(c)) => op.launch((a, la), (b, lb), (c, lc), dev)?,
        _ => candle_core::bail!(
            "the {} kernel takes {}f16 or bf16 inputs of one dtype",
            K::WHAT,
            if K::F32 { "f32, " } else { "" }
        ),
    };
    Ok((out, la.shape().clone()))
}

/// The candle op (`CustomOp3`) of a [`TernaryKernel`]: CUDA-only, its
/// `cuda_fwd` through [`ternary_fwd`]; more items (a `bwd`) may follow.
macro_rules! ternary_op {
    ($op:ty, $name:literal, $cpu_error:literal $(, $extra:item)*) => {
        impl CustomOp3 for $op {
            fn name(&self) -> &'static str {
                $name
            }

            cuda_only!($cpu_error; (_a, _la), (_b, _lb), (_c, _lc));

            fn cuda_fwd(
                &self,
                a: &CudaStorage,
                la: &Layout,
                b: &CudaStorage,
                lb: &Layout,
                c: &CudaStorage,
                lc: &Layout,
            ) -> Result<(CudaStorage, Shape)> {
                ternary_fwd(self, (a, la), (b, lb), (c, lc))
            }

            $($extra)*
        }
    };
}
#[cfg_attr(not(feature = "cudnn"), allow(unused_imports))] // cuDNN's attention uses it too
pub(super) use ternary_op;

ternary_op!(
    FusedAttention,
    "splatforge-fused-attention",
    "fused attention is CUDA-only (CPU tensors take ops::attention_reference)"
);

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
        let (n, channels, groups) = (
            small("batch", n)?,
            small("channels", c)?,
            small("groups", groups)?,
        );
        let group_size = ((c / groups as usize) * spatial) as i64;
        Ok(Self {
            n,
            channels,
            groups,
            spatial: spatial as i64,
            // SAFETY: a pure function of its integer arguments.
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

impl TernaryKernel for FusedGroupNormBackward {
    const WHAT: &'static str = "fused GroupNorm backward";
    const F32: bool = true;

    fn launch<T: CudaDType + Plain + WithDType>(
        &self,
        (x, lx): (&CudaSlice<T>, &Layout),
        (dy, ly): (&CudaSlice<T>, &Layout),
        (gb, lgb): (&CudaSlice<T>, &Layout),
        dev: &CudaDevice,
    ) -> Result<CudaStorage> {
        let geo = GroupNormGeometry::of(lx, self.0.groups)?;
        if ly.shape() != lx.shape() || lgb.shape().elem_count() != 2 * geo.channels as usize {
            candle_core::bail!(
                "GroupNorm backward: x {:?}, dy {:?}, gamma+beta {:?}",
                lx.shape(),
                ly.shape(),
                lgb.shape()
            );
        }
        let c = geo.channels as usize;
        let scratch_len = 2 * geo.scratch_floats;
        let scratch = alloc::<f32>(dev, scratch_len)?;
        let dx = alloc::<T>(dev, lx.shape().elem_count())?;
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
            dtype: sf_dtype(T::DTYPE)?,
        };
        // SAFETY: the args hold device addresses of live buffers of the shapes the kernel
        // reads and writes (checked above), and the launch is on candle's stream of them.
        check("group_norm_backward", unsafe {
            sf_group_norm_backward(&args, stream.cu_stream() as *mut c_void)
        })?;
        Ok(CudaStorage::wrap_cuda_slice(dx, dev.clone()))
    }
}

ternary_op!(
    FusedGroupNormBackward,
    "splatforge-fused-group-norm-backward",
    "fused GroupNorm backward is CUDA-only"
);

impl TernaryKernel for FusedGroupNorm {
    const WHAT: &'static str = "fused GroupNorm";
    const F32: bool = true;

    fn launch<T: CudaDType + Plain + WithDType>(
        &self,
        (x, lx): (&CudaSlice<T>, &Layout),
        (g, lg): (&CudaSlice<T>, &Layout),
        (b, lb): (&CudaSlice<T>, &Layout),
        dev: &CudaDevice,
    ) -> Result<CudaStorage> {
        let geo = GroupNormGeometry::of(lx, self.groups)?;
        let scratch_len = geo.scratch_floats;
        let scratch = alloc::<f32>(dev, scratch_len)?;
        let y = alloc::<T>(dev, lx.shape().elem_count())?;
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
            dtype: sf_dtype(T::DTYPE)?,
        };
        // SAFETY: the args hold device addresses of live buffers of the shapes the kernel
        // reads and writes (checked above), and the launch is on candle's stream of them.
        check("group_norm", unsafe {
            sf_group_norm(&args, stream.cu_stream() as *mut c_void)
        })?;
        Ok(CudaStorage::wrap_cuda_slice(y, dev.clone()))
    }
}

ternary_op!(
    FusedGroupNorm,
    "splatforge-fused-group-norm",
    "fused GroupNorm is CUDA-only (CPU tensors take GroupNorm::reference)",
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
);

/// A kernel with one input (f32, f16 or bf16, contiguous) and one new output
/// tensor; [`unary_op!`] writes its `CustomOp1`.
trait UnaryKernel {
    /// The kernel's name in errors.
    const WHAT: &'static str;

    /// The output's shape for an input of shape `x` (the input's by default).
    fn out_shape(&self, x: &Shape) -> Result<Shape> {
        Ok(x.clone())
    }

    /// Runs on the input's slice; returns the output (`out_shape` elements).
    fn launch<T: CudaDType + Plain + WithDType>(
        &self,
        x: &CudaSlice<T>,
        lx: &Layout,
        out_shape: &Shape,
        dev: &CudaDevice,
    ) -> Result<CudaStorage>;
}

/// The `cuda_fwd` of a [`UnaryKernel`]: checks the layout, then launches on
/// the input's f32, f16 or bf16 slice.
fn unary_fwd<K: UnaryKernel>(op: &K, x: &CudaStorage, lx: &Layout) -> Result<(CudaStorage, Shape)> {
    if !lx.is_contiguous() {
        candle_core::bail!("the {} kernel needs a contiguous input", K::WHAT);
    }
    let out_shape = op.out_shape(lx.shape())?;
    use CudaStorageSlice as S;
    let out = match &x.slice {
        S::F32(v) => op.launch(v, lx, &out_shape, &x.device)?,
        S::F16(v) => op.launch(v, lx, &out_shape, &x.device)?,
        S::BF16(v) => op.launch(v, lx, &out_shape, &x.device)?,
        _ => candle_core::bail!("the {} kernel takes f32, f16 or bf16", K::WHAT),
    };
    Ok((out, out_shape))
}

/// The candle op (`CustomOp1`) of a [`UnaryKernel`]: CUDA-only, its
/// `cuda_fwd` through [`unary_fwd`].
macro_rules! unary_op {
    ($op:ty, $name:literal, $cpu_error:literal) => {
        impl CustomOp1 for $op {
            fn name(&self) -> &'static str {
                $name
            }

            cuda_only!($cpu_error; (_x, _lx));

            fn cuda_fwd(&self, x: &CudaStorage, lx: &Layout) -> Result<(CudaStorage, Shape)> {
                unary_fwd(self, x, lx)
            }
        }
    };
}

/// Nearest-neighbour 2× upsampling of `[N, C, H, W]` when the kernel applies
/// (CUDA, f32/f16/bf16, no autograd); `None` sends the caller to candle's.
pub(super) fn upsample_nearest2x(x: &Tensor) -> Result<Option<Tensor>> {
    if !(fusable(x) && x.rank() == 4 && matches!(x.dtype(), DType::F32 | DType::F16 | DType::BF16))
    {
        return Ok(None);
    }
    Ok(Some(x.contiguous()?.apply_op1_no_bwd(&Upsample2x)?))
}

struct Upsample2x;

unary_op!(
    Upsample2x,
    "splatforge-upsample-nearest2x",
    "the upsampling kernel is CUDA-only (CPU tensors take candle's upsample_nearest2d)"
);

impl UnaryKernel for Upsample2x {
    const WHAT: &'static str = "upsampling";

    fn out_shape(&self, x: &Shape) -> Result<Shape> {
        let (n, c, h, w) = x.dims4()?;
        Ok(Shape::from((n, c, 2 * h, 2 * w)))
    }

    fn launch<T: CudaDType + Plain + WithDType>(
        &self,
        x: &CudaSlice<T>,
        lx: &Layout,
        out_shape: &Shape,
        dev: &CudaDevice,
    ) -> Result<CudaStorage> {
        let (n, c, h, w) = lx.shape().dims4()?;
        let out = alloc::<T>(dev, out_shape.elem_count())?;
        let args = SfUpsampleArgs {
            x: address(x, lx, dev),
            y: address(&out, &Layout::contiguous(out_shape), dev),
            planes: (n * c) as i64,
            h: small("height", h)?,
            w: small("width", w)?,
            dtype: sf_dtype(T::DTYPE)?,
        };
        let stream = dev.cuda_stream();
        // SAFETY: the args hold device addresses of live buffers of the shapes the kernel
        // reads and writes (checked above), and the launch is on candle's stream of them.
        check("upsample", unsafe {
            sf_upsample_nearest2x(&args, stream.cu_stream() as *mut c_void)
        })?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }
}

/// The terms of [`super::LinearEpilogue`] as contiguous device tensors.
pub(super) struct EpilogueTerms {
    pub bias: Option<Tensor>,
    pub extra: Option<Tensor>,
    /// Gates `[B, cols]` and the rows each covers.
    pub gate: Option<(Tensor, usize)>,
    pub residual: Option<Tensor>,
    pub gelu: bool,
}

/// `y [rows, cols]` through the fused epilogue kernel.
pub(super) fn linear_epilogue(y: &Tensor, terms: EpilogueTerms) -> Result<Tensor> {
    y.apply_op1_no_bwd(&terms)
}

/// Device address of a CUDA tensor's first element (0 when absent), for the
/// optional inputs the kernels take beside their main one.
fn tensor_address(t: Option<&Tensor>) -> Result<u64> {
    let Some(t) = t else { return Ok(0) };
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cuda(s) = &*storage else {
        candle_core::bail!("a CUDA kernel's inputs must all be on the GPU")
    };
    if !layout.is_contiguous() {
        candle_core::bail!("a CUDA kernel's inputs must be contiguous");
    }
    storage_address(s, layout)
}

unary_op!(
    EpilogueTerms,
    "splatforge-linear-epilogue",
    "the linear epilogue kernel is CUDA-only (CPU tensors take the composite path)"
);

impl UnaryKernel for EpilogueTerms {
    const WHAT: &'static str = "linear epilogue";

    fn launch<T: CudaDType + Plain + WithDType>(
        &self,
        y: &CudaSlice<T>,
        ly: &Layout,
        _out_shape: &Shape,
        dev: &CudaDevice,
    ) -> Result<CudaStorage> {
        let (rows, cols) = ly.shape().dims2()?;
        let terms = [
            self.bias.as_ref(),
            self.extra.as_ref(),
            self.residual.as_ref(),
            self.gate.as_ref().map(|g| &g.0),
        ];
        if terms.iter().flatten().any(|t| t.dtype() != T::DTYPE) {
            candle_core::bail!("the linear epilogue's terms must have the product's dtype");
        }
        let out = alloc::<T>(dev, rows * cols)?;
        let args = SfLinearEpilogueArgs {
            y: address(y, ly, dev),
            out: address(&out, &Layout::contiguous((rows, cols)), dev),
            bias: tensor_address(self.bias.as_ref())?,
            extra: tensor_address(self.extra.as_ref())?,
            gate: tensor_address(self.gate.as_ref().map(|g| &g.0))?,
            residual: tensor_address(self.residual.as_ref())?,
            rows: rows as i64,
            cols: small("columns", cols)?,
            rows_per_gate: self.gate.as_ref().map_or(0, |g| g.1 as i64),
            gelu: self.gelu as c_int,
            dtype: sf_dtype(T::DTYPE)?,
        };
        let stream = dev.cuda_stream();
        // SAFETY: the args hold device addresses of live buffers of the shapes the kernel
        // reads and writes (checked above), and the launch is on candle's stream of them.
        check("linear epilogue", unsafe {
            sf_linear_epilogue(&args, stream.cu_stream() as *mut c_void)
        })?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }
}

/// The per-head RMSNorm kernel (`SfRmsNormRopeArgs`): x `[T, H, D]`, FLUX's bias `[H·D]`
/// (optional), the f32 scale `[D]` (or `[H·D]`, per head), FLUX's rotation cos and sin
/// `[T, D/2]` (optional); all contiguous, on the GPU, in x's dtype but the scale.
pub(super) struct RmsNormRope {
    /// `[H·D]`, added before the norm.
    pub bias: Option<Tensor>,
    /// f32, `[D]`, or `[H·D]` with `scale_per_head`.
    pub scale: Tensor,
    pub scale_per_head: bool,
    /// `(cos, sin)`.
    pub rope: Option<(Tensor, Tensor)>,
    pub eps: f32,
}

unary_op!(
    RmsNormRope,
    "splatforge-rms-norm-rope",
    "the RMSNorm + RoPE kernel is CUDA-only (CPU tensors take the composite path)"
);

impl UnaryKernel for RmsNormRope {
    const WHAT: &'static str = "RMSNorm + RoPE";

    fn launch<T: CudaDType + Plain + WithDType>(
        &self,
        x: &CudaSlice<T>,
        lx: &Layout,
        _out_shape: &Shape,
        dev: &CudaDevice,
    ) -> Result<CudaStorage> {
        let (tokens, heads, d) = lx.shape().dims3()?;
        let scale_len = if self.scale_per_head { heads * d } else { d };
        let rope_ok = self.rope.as_ref().is_none_or(|(cos, sin)| {
            [cos, sin]
                .iter()
                .all(|t| t.dtype() == T::DTYPE && t.dims() == [tokens, d / 2])
        });
        let bias_ok = self
            .bias
            .as_ref()
            .is_none_or(|b| b.dtype() == T::DTYPE && b.elem_count() == heads * d);
        if !rope_ok
            || !bias_ok
            || self.scale.dtype() != DType::F32
            || self.scale.elem_count() != scale_len
        {
            candle_core::bail!("RMSNorm + RoPE: bias [{}] and cos, sin [{tokens}, {}] in the input's dtype, f32 scale [{scale_len}] expected", heads * d, d / 2);
        }
        let out = alloc::<T>(dev, lx.shape().elem_count())?;
        let (cos, sin) = match &self.rope {
            Some((cos, sin)) => (Some(cos), Some(sin)),
            None => (None, None),
        };
        let args = SfRmsNormRopeArgs {
            x: address(x, lx, dev),
            bias: tensor_address(self.bias.as_ref())?,
            scale: tensor_address(Some(&self.scale))?,
            cos: tensor_address(cos)?,
            sin: tensor_address(sin)?,
            out: address(&out, &Layout::contiguous(lx.shape()), dev),
            tokens: tokens as i64,
            heads: small("heads", heads)?,
            head_dim: small("head dim", d)?,
            scale_per_head: self.scale_per_head as c_int,
            eps: self.eps,
            dtype: sf_dtype(T::DTYPE)?,
        };
        let stream = dev.cuda_stream();
        // SAFETY: the args hold device addresses of live buffers of the shapes the kernel
        // reads and writes (checked above), and the launch is on candle's stream of them.
        check("RMSNorm + RoPE", unsafe {
            sf_rms_norm_rope(&args, stream.cu_stream() as *mut c_void)
        })?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }
}

/// LayerNorm with an f32 affine and the optional adaLN modulation in one pass
/// (`SfLayerNormModulateArgs`): x `[rows, C]`, weight and bias `[C]` f32, shift and scale
/// `[items, C]` in x's dtype (rows a multiple of items), all contiguous, on the GPU.
pub(super) struct LayerNormModulate {
    pub weight: Tensor,
    pub bias: Tensor,
    /// `(shift, scale)`.
    pub modulation: Option<(Tensor, Tensor)>,
    pub eps: f32,
}

unary_op!(
    LayerNormModulate,
    "splatforge-layer-norm-modulate",
    "the LayerNorm + modulation kernel is CUDA-only (CPU tensors take the composite path)"
);

impl UnaryKernel for LayerNormModulate {
    const WHAT: &'static str = "LayerNorm + modulation";

    fn launch<T: CudaDType + Plain + WithDType>(
        &self,
        x: &CudaSlice<T>,
        lx: &Layout,
        _out_shape: &Shape,
        dev: &CudaDevice,
    ) -> Result<CudaStorage> {
        let (rows, c) = lx.shape().dims2()?;
        let affine_ok = [&self.weight, &self.bias]
            .iter()
            .all(|t| t.dtype() == DType::F32 && t.dims() == [c]);
        let items = match &self.modulation {
            Some((shift, scale)) => {
                let (items, width) = shift.dims2()?;
                if scale.dims() != shift.dims()
                    || width != c
                    || items == 0
                    || rows % items != 0
                    || shift.dtype() != T::DTYPE
                    || scale.dtype() != T::DTYPE
                {
                    candle_core::bail!(
                        "LayerNorm + modulation: shift and scale [items, {c}] in the input's dtype, items dividing {rows}, expected"
                    );
                }
                items
            }
            None => rows,
        };
        if !affine_ok || c > 2048 {
            candle_core::bail!(
                "LayerNorm + modulation: f32 weight and bias [{c}] (C ≤ 2048) expected"
            );
        }
        let out = alloc::<T>(dev, lx.shape().elem_count())?;
        let (shift, scale) = match &self.modulation {
            Some((shift, scale)) => (Some(shift), Some(scale)),
            None => (None, None),
        };
        let args = SfLayerNormModulateArgs {
            x: address(x, lx, dev),
            weight: tensor_address(Some(&self.weight))?,
            bias: tensor_address(Some(&self.bias))?,
            shift: tensor_address(shift)?,
            scale: tensor_address(scale)?,
            out: address(&out, &Layout::contiguous(lx.shape()), dev),
            rows: rows as i64,
            channels: small("channels", c)?,
            rows_per_item: (rows / items) as i64,
            eps: self.eps,
            dtype: sf_dtype(T::DTYPE)?,
        };
        let stream = dev.cuda_stream();
        // SAFETY: the args hold device addresses of live buffers of the shapes the kernel
        // reads and writes (checked above), and the launch is on candle's stream of them.
        check("LayerNorm + modulation", unsafe {
            sf_layer_norm_modulate(&args, stream.cu_stream() as *mut c_void)
        })?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }
}

/// LayerNorm over the channels of `x [N, C, spatial…]` with the f32 affine `weight`, `bias`
/// `[C]` (contiguous, on the GPU), then SiLU when `silu` (`SfChannelLayerNormArgs`).
pub(super) struct ChannelLayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f32,
    pub silu: bool,
}

unary_op!(
    ChannelLayerNorm,
    "splatforge-channel-layer-norm",
    "the channel LayerNorm kernel is CUDA-only (CPU tensors take the composite path)"
);

impl UnaryKernel for ChannelLayerNorm {
    const WHAT: &'static str = "channel LayerNorm";

    fn launch<T: CudaDType + Plain + WithDType>(
        &self,
        x: &CudaSlice<T>,
        lx: &Layout,
        _out_shape: &Shape,
        dev: &CudaDevice,
    ) -> Result<CudaStorage> {
        let dims = lx.shape().dims();
        if dims.len() < 2
            || [&self.weight, &self.bias]
                .iter()
                .any(|t| t.dtype() != DType::F32 || t.dims() != [dims[1]])
        {
            candle_core::bail!(
                "channel LayerNorm: x [N, C, …] and f32 weight, bias [C] expected, got x {dims:?}"
            );
        }
        let out = alloc::<T>(dev, lx.shape().elem_count())?;
        let args = SfChannelLayerNormArgs {
            x: address(x, lx, dev),
            weight: tensor_address(Some(&self.weight))?,
            bias: tensor_address(Some(&self.bias))?,
            out: address(&out, &Layout::contiguous(lx.shape()), dev),
            n: small("batch", dims[0])?,
            channels: small("channels", dims[1])?,
            spatial: dims[2..].iter().product::<usize>() as i64,
            eps: self.eps,
            silu: self.silu as c_int,
            dtype: sf_dtype(T::DTYPE)?,
        };
        let stream = dev.cuda_stream();
        // SAFETY: the args hold device addresses of live buffers of the shapes the kernel
        // reads and writes (checked above), and the launch is on candle's stream of them.
        check("channel LayerNorm", unsafe {
            sf_channel_layer_norm(&args, stream.cu_stream() as *mut c_void)
        })?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }
}

/// The `cuda_fwd` of [`DeformIm2col`]: `cuda/deform.cu` on `(x, offset, mask)` of one dtype.
pub(super) fn deform_im2col(
    op: &DeformIm2col,
    (x, lx): (&CudaStorage, &Layout),
    (offset, lo): (&CudaStorage, &Layout),
    (mask, lm): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    let g = op.geometry(lx, lo, lm)?;
    let out_shape = op.out_shape(&g);
    let dev = &x.device;
    use CudaStorageSlice as S;
    let (dtype, cols) = match (&x.slice, &offset.slice, &mask.slice) {
        (S::F32(_), S::F32(_), S::F32(_)) => {
            (DType::F32, S::F32(alloc(dev, out_shape.elem_count())?))
        }
        (S::F16(_), S::F16(_), S::F16(_)) => {
            (DType::F16, S::F16(alloc(dev, out_shape.elem_count())?))
        }
        (S::BF16(_), S::BF16(_), S::BF16(_)) => {
            (DType::BF16, S::BF16(alloc(dev, out_shape.elem_count())?))
        }
        _ => candle_core::bail!(
            "deformable im2col takes x, offset and mask of one dtype (f32, f16 or bf16)"
        ),
    };
    let cols = CudaStorage {
        slice: cols,
        device: dev.clone(),
    };
    let args = SfDeformIm2colArgs {
        x: storage_address(x, lx)?,
        offset: storage_address(offset, lo)?,
        mask: storage_address(mask, lm)?,
        cols: storage_address(&cols, &Layout::contiguous(&out_shape))?,
        batch: small("batch", g.batch)?,
        channels: small("channels", g.channels)?,
        height: small("height", g.height)?,
        width: small("width", g.width)?,
        kernel: small("kernel", op.kernel)?,
        stride: small("stride", op.stride)?,
        padding: small("padding", op.padding)?,
        out_height: small("output height", g.out_height)?,
        out_width: small("output width", g.out_width)?,
        row0: small("first row", op.row0)?,
        rows: small("rows", op.rows)?,
        dtype: sf_dtype(dtype)?,
    };
    let stream = dev.cuda_stream();
    // SAFETY: the args hold device addresses of live buffers of the shapes the kernel
    // reads and writes (checked by `geometry`), and the launch is on candle's stream of them.
    check("deformable im2col", unsafe {
        sf_deform_im2col(&args, stream.cu_stream() as *mut c_void)
    })?;
    Ok((cols, out_shape))
}
