//! Convolutions (2-D and 3-D) through cuDNN's graph API (see [`super`]);
//! [`crate::ops::Conv2d`] and [`crate::ops::conv3d`] call them.
//!
//! Per shape, pass and thread a plan is made once and cached: a one-node
//! operation graph (forward, or backward-data for the input gradient) and the
//! plan of [`super::make_plan`]. The legacy API (`cudnnConvolutionForward`
//! with `Find`'s algorithm) ran the VAE's 4×128×256² bf16 convolution in
//! 1.7 ms on an H100, torch's graph-API plan in 0.28 ms; the legacy API does
//! not reach the newer engines.
//!
//! Numerics: accumulation in f32; no engine that reduces in lower precision
//! or is nondeterministic (the pipeline's outputs depend only on the seed).
//! f32 convolutions may use TF32 tensor cores, as torch's cuDNN convolutions
//! do by default (`torch.backends.cudnn.allow_tf32`), unless
//! `NVIDIA_TF32_OVERRIDE=0` (then, as in every CUDA library, they don't; the
//! parity runs set it). Without TF32 the SDS step of the `quality` profile,
//! whose VAE encoder runs in f32, took 2.3× longer (34 s against 15 s).

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::c_void;
use std::rc::Rc;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::cudnn::{sys, CudnnDataType};
use candle_core::cuda_backend::cudarc::driver::CudaSlice;
use candle_core::cuda_backend::{CudaDType, CudaStorageSlice, DeviceId};
use candle_core::{
    CudaDevice, CudaStorage, CustomOp2, CustomOp3, DType, Error as E, Layout, Result, Shape,
    Tensor, WithDType,
};
use candle_nn::Conv2dConfig;

use splatforge_cuda::{layout_address, slice_address_mut, Plain};

use super::super::cuda::{
    aligned, alloc, check, sf_channel_bias, sf_dtype, storage_address, SfChannelBiasArgs,
};
use super::super::fusable;
use super::{
    execute_with_workspace, handle, make_plan, numerical_notes, operation_graph, packed_strides,
    tensor, Binding, Desc, Handle, Plan, Variant,
};

use sys::cudnnBackendAttributeName_t as A;
use sys::cudnnBackendAttributeType_t as T;
use sys::cudnnBackendDescriptorType_t as K;

/// Tensor ids in the graphs and variant packs.
const UID_IN: i64 = 1;
const UID_FILTER: i64 = 2;
const UID_OUT: i64 = 3;

/// Which operation a plan is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Pass {
    Forward,
    BackwardData,
}

/// (pass, input dims, filter dims, padding, stride, dilation, dtype, device); dims are
/// `[n, c, spatial…]` (NCHW or NCDHW).
type Key = (
    Pass,
    Vec<usize>,
    Vec<usize>,
    usize,
    usize,
    usize,
    DType,
    DeviceId,
);

thread_local! {
    static PLANS: RefCell<HashMap<Key, Rc<Plan>>> = RefCell::new(HashMap::new());
}

/// One line per plan this thread has made: shape, pass, engine, workspace,
/// and the measured time when it was picked by timing (benchmark reports).
pub(super) fn plan_summary() -> Vec<String> {
    PLANS.with(|m| {
        let mut lines: Vec<String> = m
            .borrow()
            .iter()
            .map(|((pass, x, w, pad, stride, _, dt, _), pl)| {
                let timed = pl.measured_ms.map_or(String::new(), |ms| format!(", {ms:.3} ms measured"));
                format!(
                    "{pass:?} x {x:?} w {w:?} pad {pad} stride {stride} {dt:?}: engine {}, workspace {} B{timed}",
                    pl.engine, pl.workspace
                )
            })
            .collect();
        lines.sort();
        lines
    })
}

/// Whether the engine of `cfg` has numerics we accept (module docs).
fn acceptable(cfg: &Desc, dtype: DType) -> Result<bool> {
    let notes = numerical_notes(cfg)?;
    use sys::cudnnBackendNumericalNote_t as N;
    let has = |note: N| notes.contains(&(note as u32));
    let tf32_ok =
        dtype != DType::F32 || std::env::var("NVIDIA_TF32_OVERRIDE").map_or(true, |v| v != "0");
    Ok(!has(N::CUDNN_NUMERICAL_NOTE_REDUCED_PRECISION_REDUCTION)
        && !has(N::CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC)
        && (tf32_ok
            || !(has(N::CUDNN_NUMERICAL_NOTE_TENSOR_CORE)
                || has(N::CUDNN_NUMERICAL_NOTE_DOWN_CONVERT_INPUTS))))
}

/// Tensor ids of one call's buffers, in the order of [`Pointers`].
const UIDS: [i64; 3] = [UID_IN, UID_FILTER, UID_OUT];
/// Device pointers of one call, in the order of [`UID_IN`], [`UID_FILTER`],
/// [`UID_OUT`].
type Pointers = [*mut c_void; 3];

/// The cached plan of `key`, made on first use (module docs). `ptrs` are the
/// call's buffers: benchmark mode times the candidates on them.
fn plan<V: CudnnDataType + WithDType>(
    h: &Handle,
    dev: &CudaDevice,
    key: Key,
    p: Params,
    y: &[usize],
    ptrs: &Pointers,
) -> Result<Rc<Plan>> {
    if let Some(pl) = PLANS.with(|m| m.borrow().get(&key).cloned()) {
        return Ok(pl);
    }
    let (pass, x, w) = (key.0, &key.1, &key.2);
    let dt = V::DATA_TYPE;
    let conv = Desc::new(K::CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR)?;
    let spatial = x.len() - 2;
    let two = |v: usize| vec![v as i64; spatial];
    conv.set(
        A::CUDNN_ATTR_CONVOLUTION_COMP_TYPE,
        T::CUDNN_TYPE_DATA_TYPE,
        &[sys::cudnnDataType_t::CUDNN_DATA_FLOAT],
    )?;
    conv.set(
        A::CUDNN_ATTR_CONVOLUTION_CONV_MODE,
        T::CUDNN_TYPE_CONVOLUTION_MODE,
        &[sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION],
    )?;
    conv.set(
        A::CUDNN_ATTR_CONVOLUTION_SPATIAL_DIMS,
        T::CUDNN_TYPE_INT64,
        &[spatial as i64],
    )?;
    conv.set(
        A::CUDNN_ATTR_CONVOLUTION_DILATIONS,
        T::CUDNN_TYPE_INT64,
        &two(p.dilation),
    )?;
    conv.set(
        A::CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES,
        T::CUDNN_TYPE_INT64,
        &two(p.stride),
    )?;
    conv.set(
        A::CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS,
        T::CUDNN_TYPE_INT64,
        &two(p.padding),
    )?;
    conv.set(
        A::CUDNN_ATTR_CONVOLUTION_POST_PADDINGS,
        T::CUDNN_TYPE_INT64,
        &two(p.padding),
    )?;
    let conv = conv.finalize()?;
    // UID_IN is x (forward) or dy (backward-data); UID_OUT is y or dx.
    let (in_dims, out_dims) = match pass {
        Pass::Forward => (x.as_slice(), y),
        Pass::BackwardData => (y, x.as_slice()),
    };
    let t_in = tensor(
        UID_IN,
        in_dims,
        &packed_strides(in_dims),
        dt,
        Binding::Memory,
    )?;
    let t_w = tensor(UID_FILTER, w, &packed_strides(w), dt, Binding::Memory)?;
    let t_out = tensor(
        UID_OUT,
        out_dims,
        &packed_strides(out_dims),
        dt,
        Binding::Memory,
    )?;
    let (alpha, beta) = (1f32, 0f32);
    let op = match pass {
        Pass::Forward => {
            let op = Desc::new(K::CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR)?;
            let d = T::CUDNN_TYPE_BACKEND_DESCRIPTOR;
            op.set(A::CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_X, d, &[t_in.0])?;
            op.set(A::CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_W, d, &[t_w.0])?;
            op.set(A::CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_Y, d, &[t_out.0])?;
            op.set(
                A::CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_CONV_DESC,
                d,
                &[conv.0],
            )?;
            op.set(
                A::CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA,
                T::CUDNN_TYPE_FLOAT,
                &[alpha],
            )?;
            op.set(
                A::CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA,
                T::CUDNN_TYPE_FLOAT,
                &[beta],
            )?;
            op
        }
        Pass::BackwardData => {
            let op = Desc::new(K::CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_DATA_DESCRIPTOR)?;
            let d = T::CUDNN_TYPE_BACKEND_DESCRIPTOR;
            op.set(
                A::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DY,
                d,
                &[t_in.0],
            )?;
            op.set(A::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_W, d, &[t_w.0])?;
            op.set(
                A::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DX,
                d,
                &[t_out.0],
            )?;
            op.set(
                A::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_CONV_DESC,
                d,
                &[conv.0],
            )?;
            op.set(
                A::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_ALPHA,
                T::CUDNN_TYPE_FLOAT,
                &[alpha],
            )?;
            op.set(
                A::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_BETA,
                T::CUDNN_TYPE_FLOAT,
                &[beta],
            )?;
            op
        }
    };
    let graph = operation_graph(h, &[op.finalize()?])?;
    let variant = Variant {
        uids: &UIDS,
        pointers: ptrs,
    };
    let chosen = make_plan(h, dev, &graph, |cfg| acceptable(cfg, V::DTYPE), &variant)?;
    let pl = Rc::new(chosen.ok_or_else(|| {
        E::Msg(format!(
            "cuDNN has no {pass:?} plan for x {x:?}, w {w:?} ({:?})",
            V::DTYPE
        ))
    })?);
    PLANS.with(|m| m.borrow_mut().insert(key.clone(), pl.clone()));
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
    convolve(x, weight, bias, params).map(Some)
}

/// The cuDNN 3-D convolution when it applies (CUDA, f32/f16/bf16, `x [N, C, D, H, W]`,
/// `weight [K, C, T, R, S]` without gradient, same padding and stride on every axis);
/// `None` sends the caller to its composite path.
pub(in crate::ops) fn conv3d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    padding: usize,
    stride: usize,
) -> Result<Option<Tensor>> {
    let applies = matches!(x.device(), candle_core::Device::Cuda(_))
        && !weight.track_op()
        && bias.is_none_or(|b| !b.track_op())
        && x.rank() == 5
        && weight.rank() == 5
        && weight.dtype() == x.dtype()
        && matches!(x.dtype(), DType::F32 | DType::F16 | DType::BF16)
        && x.dim(1)? == weight.dim(1)?;
    if !applies {
        return Ok(None);
    }
    let params = Params {
        padding,
        stride,
        dilation: 1,
    };
    convolve(x, weight, bias, params).map(Some)
}

/// `conv(x, weight) + bias` through cuDNN, with the backward for `x` when it tracks a gradient.
fn convolve(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, params: Params) -> Result<Tensor> {
    let (x, w) = (aligned(x)?, aligned(weight)?);
    let op = CudnnConv2d(params);
    // The bias is added in place by our kernel right after cuDNN's run.
    match bias {
        Some(b) => {
            let b = aligned(&b.to_dtype(x.dtype())?.flatten_all()?)?;
            if fusable(&x) {
                x.apply_op3_no_bwd(&w, &b, &op)
            } else {
                x.apply_op3(&w, &b, op)
            }
        }
        None if fusable(&x) => x.apply_op2_no_bwd(&w, &op),
        None => x.apply_op2(&w, op),
    }
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
            candle_core::bail!(
                "convolution: kernel {kernel} (dilation {}) larger than the padded input {padded}",
                self.dilation
            );
        }
        Ok((padded - span) / self.stride + 1)
    }
}

/// Runs one pass: `a` is x (forward) or dy (backward-data), `w` the filter,
/// `bias` (forward only) the address of `[k]` values of the same dtype;
/// returns y or dx.
fn run<V>(
    pass: Pass,
    p: Params,
    x_dims: Vec<usize>,
    (a, la): (&CudaSlice<V>, &Layout),
    (w, lw): (&CudaSlice<V>, &Layout),
    bias: Option<u64>,
    dev: &CudaDevice,
) -> Result<(CudaStorage, Shape)>
where
    V: CudnnDataType + Plain + CudaDType + WithDType,
{
    let w_dims = lw.shape().dims().to_vec();
    if x_dims.len() < 3 || w_dims.len() != x_dims.len() || w_dims[1] != x_dims[1] {
        candle_core::bail!("convolution: input {x_dims:?}, filter {w_dims:?}");
    }
    let (n, k) = (x_dims[0], w_dims[0]);
    let mut y_dims = vec![n, k];
    for (&input, &kernel) in x_dims[2..].iter().zip(&w_dims[2..]) {
        y_dims.push(p.out_size(input, kernel)?);
    }
    let (a_dims, out_dims) = match pass {
        Pass::Forward => (&x_dims, &y_dims),
        Pass::BackwardData => (&y_dims, &x_dims),
    };
    if la.shape().dims() != a_dims.as_slice() {
        candle_core::bail!(
            "convolution: input {:?}, expected {a_dims:?}",
            la.shape().dims()
        );
    }
    let hd = handle(dev)?;
    let stream = dev.cuda_stream();
    let mut out = alloc::<V>(dev, out_dims.iter().product())?;
    let ptrs: Pointers = [
        layout_address(a, la, &stream) as *mut c_void,
        layout_address(w, lw, &stream) as *mut c_void,
        slice_address_mut(&mut out, &stream) as *mut c_void,
    ];
    let key: Key = (
        pass,
        x_dims.clone(),
        w_dims,
        p.padding,
        p.stride,
        p.dilation,
        V::DTYPE,
        dev.id(),
    );
    let pl = plan::<V>(&hd, dev, key, p, &y_dims, &ptrs)?;
    let variant = Variant {
        uids: &UIDS,
        pointers: &ptrs,
    };
    execute_with_workspace(&hd, dev, &pl, &variant)?;
    if let Some(bias) = bias {
        let args = SfChannelBiasArgs {
            y: ptrs[2] as u64,
            bias,
            planes: (n * k) as i64,
            channels: k as i32,
            plane: y_dims[2..].iter().product::<usize>() as i64,
            dtype: sf_dtype(V::DTYPE)?,
        };
        // SAFETY: `y` is the plan's output buffer of `planes × plane` values and `bias`
        // holds `channels` values (checked in `dispatch`), on candle's stream.
        check("conv2d bias", unsafe {
            sf_channel_bias(&args, stream.cu_stream() as *mut c_void)
        })?;
    }
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev.clone()),
        Shape::from(out_dims.to_vec()),
    ))
}

fn dispatch(
    pass: Pass,
    p: Params,
    x_dims: Option<Vec<usize>>,
    (a, la): (&CudaStorage, &Layout),
    (w, lw): (&CudaStorage, &Layout),
    bias: Option<(&CudaStorage, &Layout)>,
) -> Result<(CudaStorage, Shape)> {
    if !(la.is_contiguous() && lw.is_contiguous() && bias.is_none_or(|(_, l)| l.is_contiguous())) {
        candle_core::bail!("the cuDNN convolution needs contiguous tensors");
    }
    let bias = match bias {
        Some((b, lb))
            if b.dtype() == a.dtype() && lb.shape().elem_count() == lw.shape().dims()[0] =>
        {
            Some(storage_address(b, lb)?)
        }
        Some(_) => candle_core::bail!(
            "conv2d: the bias must hold one value per output channel, in the input's dtype"
        ),
        None => None,
    };
    let x_dims = x_dims.unwrap_or_else(|| la.shape().dims().to_vec());
    let dev = a.device();
    use CudaStorageSlice as S;
    match (&a.slice, &w.slice) {
        (S::F32(a), S::F32(w)) => run(pass, p, x_dims, (a, la), (w, lw), bias, dev),
        (S::F16(a), S::F16(w)) => run(pass, p, x_dims, (a, la), (w, lw), bias, dev),
        (S::BF16(a), S::BF16(w)) => run(pass, p, x_dims, (a, la), (w, lw), bias, dev),
        _ => {
            candle_core::bail!("the cuDNN convolution takes f32, f16 or bf16 tensors of one dtype")
        }
    }
}

/// `y = conv(x, w)`; the backward gives `dx` (the weights take none).
struct CudnnConv2d(Params);

impl CustomOp2 for CudnnConv2d {
    fn name(&self) -> &'static str {
        "splatforge-cudnn-conv2d"
    }

    cuda_only!("the cuDNN convolution is CUDA-only (CPU tensors take candle's conv2d)"; (_x, _lx), (_w, _lw));

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        lx: &Layout,
        w: &CudaStorage,
        lw: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        dispatch(Pass::Forward, self.0, None, (x, lx), (w, lw), None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(self.input_gradient(x, w, dy)?), None))
    }
}

/// `y = conv(x, w) + bias` (bias `[k]`); the backward gives `dx` only.
impl CustomOp3 for CudnnConv2d {
    fn name(&self) -> &'static str {
        "splatforge-cudnn-conv2d-bias"
    }

    cuda_only!("the cuDNN convolution is CUDA-only (CPU tensors take candle's conv2d)"; (_a, _la), (_b, _lb), (_c, _lc));

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        lx: &Layout,
        w: &CudaStorage,
        lw: &Layout,
        b: &CudaStorage,
        lb: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        dispatch(Pass::Forward, self.0, None, (x, lx), (w, lw), Some((b, lb)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        Ok((Some(self.input_gradient(x, w, dy)?), None, None))
    }
}

impl CudnnConv2d {
    fn input_gradient(&self, x: &Tensor, w: &Tensor, dy: &Tensor) -> Result<Tensor> {
        let op = CudnnConv2dBackwardData {
            params: self.0,
            x: x.dims().to_vec(),
        };
        aligned(&dy.to_dtype(x.dtype())?)?.apply_op2_no_bwd(&aligned(w)?, &op)
    }
}

/// `dx` of [`CudnnConv2d`] from `dy` and the filter (backward-data).
struct CudnnConv2dBackwardData {
    params: Params,
    /// The forward input's dims `[n, c, spatial…]`.
    x: Vec<usize>,
}

impl CustomOp2 for CudnnConv2dBackwardData {
    fn name(&self) -> &'static str {
        "splatforge-cudnn-conv2d-backward-data"
    }

    cuda_only!("the cuDNN convolution is CUDA-only"; (_x, _lx), (_w, _lw));

    fn cuda_fwd(
        &self,
        dy: &CudaStorage,
        ly: &Layout,
        w: &CudaStorage,
        lw: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        dispatch(
            Pass::BackwardData,
            self.params,
            Some(self.x.clone()),
            (dy, ly),
            (w, lw),
            None,
        )
    }
}
