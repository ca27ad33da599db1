//! Convolutions (2-D and 3-D) through cuDNN's graph (backend) API, on
//! cudarc's raw bindings; candle's own `cudnn` feature stays off (see
//! [`crate::ops::Conv2d`] and [`crate::ops::conv3d`]).
//!
//! Per shape, pass and thread a plan is made once and cached: a one-node
//! operation graph (forward, or backward-data for the input gradient), the
//! engine configurations cuDNN's heuristics rank for it, and the execution
//! plan of the first one that finalizes and whose numerics we accept. With
//! `SPLATFORGE_CUDNN_BENCHMARK=1` the first [`BENCHMARK_CANDIDATES`] such
//! plans are run and the fastest is kept instead, as torch's
//! `cudnn.benchmark` does. A call is then one cuDNN execution. The legacy
//! API (`cudnnConvolutionForward` with `Find`'s algorithm) ran the VAE's
//! 4×128×256² bf16 convolution in 1.7 ms on an H100, torch's graph-API plan
//! in 0.28 ms; the legacy API does not reach the newer engines.
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
use std::time::Instant;

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

use super::cuda::{
    aligned, alloc, check, sf_channel_bias, sf_dtype, storage_address, SfChannelBiasArgs,
};
use super::fusable;

use sys::cudnnBackendAttributeName_t as A;
use sys::cudnnBackendAttributeType_t as T;
use sys::cudnnBackendDescriptorType_t as K;

/// Engine configurations timed per shape when `SPLATFORGE_CUDNN_BENCHMARK=1`.
const BENCHMARK_CANDIDATES: usize = 8;
/// Tensor ids in the graphs and variant packs.
const UID_IN: i64 = 1;
const UID_FILTER: i64 = 2;
const UID_OUT: i64 = 3;

fn ok(what: &str, status: sys::cudnnStatus_t) -> Result<()> {
    if status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS {
        Ok(())
    } else {
        candle_core::bail!("cuDNN {what}: {status:?}")
    }
}

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

/// A backend descriptor, destroyed on drop.
struct Desc(sys::cudnnBackendDescriptor_t);

impl Desc {
    fn new(kind: K) -> Result<Self> {
        let mut raw = std::ptr::null_mut();
        ok("create descriptor", unsafe {
            sys::cudnnBackendCreateDescriptor(kind, &mut raw)
        })?;
        Ok(Self(raw))
    }

    fn set<V>(&self, name: A, ty: T, values: &[V]) -> Result<()> {
        let status = unsafe {
            sys::cudnnBackendSetAttribute(
                self.0,
                name,
                ty,
                values.len() as i64,
                values.as_ptr() as *const c_void,
            )
        };
        ok(&format!("set {name:?}"), status)
    }

    /// Reads up to `out.len()` values; returns how many there were.
    fn get<V>(&self, name: A, ty: T, out: &mut [V]) -> Result<usize> {
        let mut count = 0i64;
        let status = unsafe {
            sys::cudnnBackendGetAttribute(
                self.0,
                name,
                ty,
                out.len() as i64,
                &mut count,
                out.as_mut_ptr() as *mut c_void,
            )
        };
        ok(&format!("get {name:?}"), status)?;
        Ok(count.max(0) as usize)
    }

    fn finalize(self) -> Result<Self> {
        ok("finalize", unsafe { sys::cudnnBackendFinalize(self.0) })?;
        Ok(self)
    }
}

impl Drop for Desc {
    fn drop(&mut self) {
        unsafe {
            sys::cudnnBackendDestroyDescriptor(self.0);
        }
    }
}

/// A packed (row-major) NCHW or NCDHW tensor of the graph.
fn tensor(uid: i64, dims: &[usize], dtype: sys::cudnnDataType_t) -> Result<Desc> {
    let d: Vec<i64> = dims.iter().map(|&v| v as i64).collect();
    let mut strides = vec![1i64; d.len()];
    for i in (0..d.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * d[i + 1];
    }
    let t = Desc::new(K::CUDNN_BACKEND_TENSOR_DESCRIPTOR)?;
    t.set(
        A::CUDNN_ATTR_TENSOR_DATA_TYPE,
        T::CUDNN_TYPE_DATA_TYPE,
        &[dtype],
    )?;
    t.set(A::CUDNN_ATTR_TENSOR_DIMENSIONS, T::CUDNN_TYPE_INT64, &d)?;
    t.set(A::CUDNN_ATTR_TENSOR_STRIDES, T::CUDNN_TYPE_INT64, &strides)?;
    t.set(A::CUDNN_ATTR_TENSOR_UNIQUE_ID, T::CUDNN_TYPE_INT64, &[uid])?;
    // run() hands cuDNN 16-byte aligned pointers only.
    t.set(
        A::CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT,
        T::CUDNN_TYPE_INT64,
        &[16i64],
    )?;
    t.finalize()
}

/// A finalized execution plan and what running it needs.
struct Plan {
    plan: Desc,
    workspace: usize,
    /// The engine's global index (for reports).
    engine: i64,
    /// Milliseconds per run when the plan was picked by timing.
    measured_ms: Option<f64>,
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
    // cuDNN handles are not thread-safe: one per thread and device, on the
    // device's (candle's) stream.
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
    ok("set stream", unsafe {
        sys::cudnnSetStream(raw, stream.cu_stream() as _)
    })?;
    HANDLES.with(|m| m.borrow_mut().insert(id, h.clone()));
    Ok(h)
}

/// One line per plan this thread has made: shape, pass, engine, workspace,
/// and the measured time when it was picked by timing (benchmark reports).
pub fn plan_summary() -> Vec<String> {
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

fn benchmark_mode() -> bool {
    std::env::var("SPLATFORGE_CUDNN_BENCHMARK").is_ok_and(|v| v == "1")
}

/// Whether the engine of `cfg` has numerics we accept (module docs).
fn acceptable(cfg: &Desc, dtype: DType) -> Result<bool> {
    let engine = Desc::new(K::CUDNN_BACKEND_ENGINE_DESCRIPTOR)?;
    let mut raw = [engine.0];
    cfg.get(
        A::CUDNN_ATTR_ENGINECFG_ENGINE,
        T::CUDNN_TYPE_BACKEND_DESCRIPTOR,
        &mut raw,
    )?;
    // Read as u32: cuDNN may report notes newer than these bindings.
    let mut notes = [0u32; 16];
    let n = engine.get(
        A::CUDNN_ATTR_ENGINE_NUMERICAL_NOTE,
        T::CUDNN_TYPE_NUMERICAL_NOTE,
        &mut notes,
    )?;
    use sys::cudnnBackendNumericalNote_t as N;
    let has = |note: N| notes[..n.min(notes.len())].contains(&(note as u32));
    let tf32_ok =
        dtype != DType::F32 || std::env::var("NVIDIA_TF32_OVERRIDE").map_or(true, |v| v != "0");
    Ok(!has(N::CUDNN_NUMERICAL_NOTE_REDUCED_PRECISION_REDUCTION)
        && !has(N::CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC)
        && (tf32_ok
            || !(has(N::CUDNN_NUMERICAL_NOTE_TENSOR_CORE)
                || has(N::CUDNN_NUMERICAL_NOTE_DOWN_CONVERT_INPUTS))))
}

fn engine_index(cfg: &Desc) -> Result<i64> {
    let engine = Desc::new(K::CUDNN_BACKEND_ENGINE_DESCRIPTOR)?;
    let mut raw = [engine.0];
    cfg.get(
        A::CUDNN_ATTR_ENGINECFG_ENGINE,
        T::CUDNN_TYPE_BACKEND_DESCRIPTOR,
        &mut raw,
    )?;
    let mut index = [-1i64];
    engine.get(
        A::CUDNN_ATTR_ENGINE_GLOBAL_INDEX,
        T::CUDNN_TYPE_INT64,
        &mut index,
    )?;
    Ok(index[0])
}

/// Device pointers of one call, in the order of [`UID_IN`], [`UID_FILTER`],
/// [`UID_OUT`].
type Pointers = [u64; 3];

fn execute(h: &Handle, plan: &Desc, ptrs: &Pointers, workspace: u64) -> Result<()> {
    let pack = Desc::new(K::CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR)?;
    let data: [*mut c_void; 3] = ptrs.map(|p| p as *mut c_void);
    pack.set(
        A::CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS,
        T::CUDNN_TYPE_INT64,
        &[UID_IN, UID_FILTER, UID_OUT],
    )?;
    pack.set(
        A::CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS,
        T::CUDNN_TYPE_VOID_PTR,
        &data,
    )?;
    pack.set(
        A::CUDNN_ATTR_VARIANT_PACK_WORKSPACE,
        T::CUDNN_TYPE_VOID_PTR,
        &[workspace as *mut c_void],
    )?;
    let pack = pack.finalize()?;
    ok("execute", unsafe {
        sys::cudnnBackendExecute(h.0, plan.0, pack.0)
    })
}

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
    let t_in = tensor(UID_IN, in_dims, dt)?;
    let t_w = tensor(UID_FILTER, w, dt)?;
    let t_out = tensor(UID_OUT, out_dims, dt)?;
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
    let op = op.finalize()?;
    let graph = Desc::new(K::CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR)?;
    graph.set(
        A::CUDNN_ATTR_OPERATIONGRAPH_OPS,
        T::CUDNN_TYPE_BACKEND_DESCRIPTOR,
        &[op.0],
    )?;
    graph.set(
        A::CUDNN_ATTR_OPERATIONGRAPH_HANDLE,
        T::CUDNN_TYPE_HANDLE,
        &[h.0],
    )?;
    let graph = graph.finalize()?;

    // Heuristics rank the engine configurations; the fallback list covers
    // shapes the ranked engines refuse.
    let mut configs = Vec::new();
    for mode in [
        sys::cudnnBackendHeurMode_t::CUDNN_HEUR_MODE_A,
        sys::cudnnBackendHeurMode_t::CUDNN_HEUR_MODE_FALLBACK,
    ] {
        let heur = Desc::new(K::CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR)?;
        heur.set(
            A::CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH,
            T::CUDNN_TYPE_BACKEND_DESCRIPTOR,
            &[graph.0],
        )?;
        heur.set(
            A::CUDNN_ATTR_ENGINEHEUR_MODE,
            T::CUDNN_TYPE_HEUR_MODE,
            &[mode],
        )?;
        let Ok(heur) = heur.finalize() else { continue };
        let cfgs = (0..32)
            .map(|_| Desc::new(K::CUDNN_BACKEND_ENGINECFG_DESCRIPTOR))
            .collect::<Result<Vec<_>>>()?;
        let mut raw: Vec<_> = cfgs.iter().map(|c| c.0).collect();
        let n = heur.get(
            A::CUDNN_ATTR_ENGINEHEUR_RESULTS,
            T::CUDNN_TYPE_BACKEND_DESCRIPTOR,
            &mut raw,
        )?;
        configs.extend(cfgs.into_iter().take(n));
    }

    let benchmark = benchmark_mode();
    // The fastest engines transpose to NHWC in their workspace, which grows
    // with the tensors (1 GiB for a 256-channel 1024² bf16 convolution, where
    // the fallback engine takes 20× longer): allow up to half the free memory.
    let (free, _) =
        candle_core::cuda_backend::cudarc::driver::result::mem_get_info().map_err(E::wrap)?;
    let max_workspace = (free / 2) as i64;
    let mut candidates = Vec::new();
    for cfg in &configs {
        if !acceptable(cfg, V::DTYPE)? {
            continue;
        }
        let ex = Desc::new(K::CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR)?;
        ex.set(
            A::CUDNN_ATTR_EXECUTION_PLAN_HANDLE,
            T::CUDNN_TYPE_HANDLE,
            &[h.0],
        )?;
        ex.set(
            A::CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG,
            T::CUDNN_TYPE_BACKEND_DESCRIPTOR,
            &[cfg.0],
        )?;
        // Engines refuse shapes they do not support here; try the next one.
        let Ok(ex) = ex.finalize() else { continue };
        let mut ws = [0i64];
        ex.get(
            A::CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE,
            T::CUDNN_TYPE_INT64,
            &mut ws,
        )?;
        if ws[0] > max_workspace {
            continue;
        }
        candidates.push(Plan {
            plan: ex,
            workspace: ws[0].max(0) as usize,
            engine: engine_index(cfg)?,
            measured_ms: None,
        });
        if !benchmark || candidates.len() == BENCHMARK_CANDIDATES {
            break;
        }
    }
    let chosen = if benchmark && candidates.len() > 1 {
        let stream = dev.cuda_stream();
        let mut best: Option<Plan> = None;
        for mut c in candidates {
            let mut ws = (c.workspace > 0)
                .then(|| alloc::<u8>(dev, c.workspace))
                .transpose()?;
            let ws_ptr = ws.as_mut().map_or(0, |w| slice_address_mut(w, &stream));
            // The first run pays lazy initialisation; time the next three.
            if execute(h, &c.plan, ptrs, ws_ptr).is_err() {
                continue;
            }
            stream.synchronize().map_err(E::wrap)?;
            let t0 = Instant::now();
            for _ in 0..3 {
                execute(h, &c.plan, ptrs, ws_ptr)?;
            }
            stream.synchronize().map_err(E::wrap)?;
            let ms = t0.elapsed().as_secs_f64() * 1e3 / 3.0;
            c.measured_ms = Some(ms);
            if best
                .as_ref()
                .is_none_or(|b| b.measured_ms.is_some_and(|b| ms < b))
            {
                best = Some(c);
            }
        }
        best
    } else {
        candidates.into_iter().next()
    };
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
pub(super) fn conv2d(
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
pub(super) fn conv3d(
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
        layout_address(a, la, &stream),
        layout_address(w, lw, &stream),
        slice_address_mut(&mut out, &stream),
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
    // No allocation when the plan needs no workspace (cuDNN takes null then).
    let mut workspace = (pl.workspace > 0)
        .then(|| alloc::<u8>(dev, pl.workspace))
        .transpose()?;
    let ws_ptr = workspace
        .as_mut()
        .map_or(0, |w| slice_address_mut(w, &stream));
    execute(&hd, &pl.plan, &ptrs, ws_ptr)?;
    if let Some(bias) = bias {
        let args = SfChannelBiasArgs {
            y: ptrs[2],
            bias,
            planes: (n * k) as i64,
            channels: k as i32,
            plane: y_dims[2..].iter().product::<usize>() as i64,
            dtype: sf_dtype(V::DTYPE)?,
        };
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
