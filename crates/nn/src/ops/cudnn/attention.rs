//! Fused multi-head attention through cuDNN's graph API: the operation
//! graph cuDNN's fused flash-attention engines recognise (the one
//! cudnn-frontend's `sdpa` node lowers to for cuDNN 9 before 9.21, inference
//! without masks), built on raw descriptors as [`super::conv`] does:
//!
//! ```text
//! S = Q·Kᵀ (f32) → S·scale → m = max_k S → e = exp(S − m) → l = Σ_k e
//!   → (stats = m + log l, virtual) → P = e / l → O = P·V
//! ```
//!
//! Every intermediate is virtual (f32), so nothing of size `Nq × Nk` reaches
//! memory; the engine is a flash-attention kernel of cuDNN's own (Hopper:
//! `wgmma` and TMA, which our `mma.sync` kernel does not use). Q, K, V and O
//! stay in our token-major `[B, N, H·D]` layout, described to cuDNN by
//! strides as `[B, H, N, D]`. Plans are made once per shape and thread;
//! a shape no engine takes is remembered, and the caller falls back to our
//! kernel, and the reason is kept for [`plan_summary`]. Numerics: f32
//! accumulation and softmax, P in the input dtype before `P·V` (the backend
//! requires `P·V`'s A operand in the I/O type, as cudnn-frontend notes; our
//! kernel and flash-attention round P the same way); no nondeterministic
//! engine.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::c_void;
use std::rc::Rc;

use candle_core::cuda_backend::cudarc::cudnn::sys;
use candle_core::cuda_backend::cudarc::driver::CudaSlice;
use candle_core::cuda_backend::{CudaDType, DeviceId};
use candle_core::{
    CudaDevice, CudaStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType,
};

use splatforge_cuda::{layout_address, slice_address_mut, Plain};

use super::super::cuda::{aligned, alloc, ternary_fwd, ternary_op, TernaryKernel};
use super::{
    execute_with_workspace, handle, make_plan, numerical_notes, operation_graph, packed_strides,
    tensor, Binding, Desc, Plan, Variant,
};

use sys::cudnnBackendAttributeName_t as A;
use sys::cudnnBackendAttributeType_t as T;
use sys::cudnnBackendDescriptorType_t as K;

const UID_Q: i64 = 1;
const UID_K: i64 = 2;
const UID_V: i64 = 3;
const UID_O: i64 = 4;
const UID_SCALE: i64 = 5;
/// Virtual tensors take ids from here on.
const UID_VIRTUAL: i64 = 100;
const UIDS: [i64; 5] = [UID_Q, UID_K, UID_V, UID_O, UID_SCALE];

/// (batch, heads, query rows, key rows, head dim, dtype, device).
type Key = (usize, usize, usize, usize, usize, DType, DeviceId);

/// A plan, or why cuDNN refused the shape (our kernel runs it).
type Planned = std::result::Result<Rc<Plan>, String>;

thread_local! {
    static PLANS: RefCell<HashMap<Key, Planned>> = RefCell::new(HashMap::new());
}

fn refused(key: &Key) -> bool {
    PLANS.with(|m| matches!(m.borrow().get(key), Some(Err(_))))
}

/// One line per attention shape this thread has planned (benchmark reports).
pub(super) fn plan_summary() -> Vec<String> {
    PLANS.with(|m| {
        let mut lines: Vec<String> = m
            .borrow()
            .iter()
            .map(|((b, h, nq, nk, d, dt, _), pl)| match pl {
                Ok(pl) => format!(
                    "attention [{b}, {h} × {d}] {nq} × {nk} {dt:?}: engine {}, workspace {} B",
                    pl.engine, pl.workspace
                ),
                Err(why) => format!("attention [{b}, {h} × {d}] {nq} × {nk} {dt:?}: {why}"),
            })
            .collect();
        lines.sort();
        lines
    })
}

/// cuDNN's fused attention for `q [B, Nq, H·D]`, `k, v [B, Nk, H·D]` (CUDA,
/// f16/bf16, no autograd, `D` a multiple of 8 up to 128), scale `D^−½`.
/// `Ok(None)`: the inputs don't qualify, or no cuDNN engine takes the shape.
pub(in crate::ops) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
) -> Result<Option<Tensor>> {
    let (b, nq, inner) = q.dims3()?;
    let (bk, nk, inner_k) = k.dims3()?;
    if heads == 0 || inner % heads != 0 || bk != b || inner_k != inner || v.dims() != k.dims() {
        return Ok(None);
    }
    let d = inner / heads;
    let qualifies = [q, k, v]
        .iter()
        .all(|t| super::super::fusable(t) && t.dtype() == q.dtype())
        && matches!(q.dtype(), DType::F16 | DType::BF16)
        && d % 8 == 0
        && d <= 128
        && nq > 0
        && nk > 0;
    if !qualifies {
        return Ok(None);
    }
    let candle_core::Device::Cuda(dev) = q.device() else {
        return Ok(None);
    };
    let key: Key = (b, heads, nq, nk, d, q.dtype(), dev.id());
    if refused(&key) {
        return Ok(None);
    }
    let (q, k, v) = (aligned(q)?, aligned(k)?, aligned(v)?);
    let op = CudnnAttention { heads };
    match q.apply_op3_no_bwd(&k, &v, &op) {
        Ok(out) => Ok(Some(out)),
        // The op fails only where planning found no engine (remembered in
        // PLANS); the caller's kernel takes the shape.
        Err(_) if refused(&key) => Ok(None),
        Err(e) => Err(e),
    }
}

struct CudnnAttention {
    heads: usize,
}

/// The graph's tensors of the call's shape, with their descriptors kept alive
/// until the graph is finalized.
struct Graph {
    ops: Vec<Desc>,
    _tensors: Vec<Desc>,
}

/// A pointwise operation `y = mode(x[, b])` in f32.
fn pointwise(
    mode: sys::cudnnPointwiseMode_t,
    x: &Desc,
    b: Option<&Desc>,
    y: &Desc,
) -> Result<Desc> {
    let pw = Desc::new(K::CUDNN_BACKEND_POINTWISE_DESCRIPTOR)?;
    pw.set(
        A::CUDNN_ATTR_POINTWISE_MODE,
        T::CUDNN_TYPE_POINTWISE_MODE,
        &[mode],
    )?;
    pw.set(
        A::CUDNN_ATTR_POINTWISE_MATH_PREC,
        T::CUDNN_TYPE_DATA_TYPE,
        &[sys::cudnnDataType_t::CUDNN_DATA_FLOAT],
    )?;
    let pw = pw.finalize()?;
    let op = Desc::new(K::CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR)?;
    op.set_desc(A::CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, &pw)?;
    op.set_desc(A::CUDNN_ATTR_OPERATION_POINTWISE_XDESC, x)?;
    if let Some(b) = b {
        op.set_desc(A::CUDNN_ATTR_OPERATION_POINTWISE_BDESC, b)?;
    }
    op.set_desc(A::CUDNN_ATTR_OPERATION_POINTWISE_YDESC, y)?;
    op.finalize()
}

/// A reduction `y = mode(x)` over the axes where `y` has extent 1, in f32.
fn reduction(mode: sys::cudnnReduceTensorOp_t, x: &Desc, y: &Desc) -> Result<Desc> {
    let red = Desc::new(K::CUDNN_BACKEND_REDUCTION_DESCRIPTOR)?;
    red.set(
        A::CUDNN_ATTR_REDUCTION_OPERATOR,
        T::CUDNN_TYPE_REDUCTION_OPERATOR_TYPE,
        &[mode],
    )?;
    red.set(
        A::CUDNN_ATTR_REDUCTION_COMP_TYPE,
        T::CUDNN_TYPE_DATA_TYPE,
        &[sys::cudnnDataType_t::CUDNN_DATA_FLOAT],
    )?;
    let red = red.finalize()?;
    let op = Desc::new(K::CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR)?;
    op.set_desc(A::CUDNN_ATTR_OPERATION_REDUCTION_XDESC, x)?;
    op.set_desc(A::CUDNN_ATTR_OPERATION_REDUCTION_YDESC, y)?;
    op.set_desc(A::CUDNN_ATTR_OPERATION_REDUCTION_DESC, &red)?;
    op.finalize()
}

/// A batched product `c = a·b` accumulated in f32.
fn matmul(a: &Desc, b: &Desc, c: &Desc) -> Result<Desc> {
    let mm = Desc::new(K::CUDNN_BACKEND_MATMUL_DESCRIPTOR)?;
    mm.set(
        A::CUDNN_ATTR_MATMUL_COMP_TYPE,
        T::CUDNN_TYPE_DATA_TYPE,
        &[sys::cudnnDataType_t::CUDNN_DATA_FLOAT],
    )?;
    let mm = mm.finalize()?;
    let op = Desc::new(K::CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR)?;
    op.set_desc(A::CUDNN_ATTR_OPERATION_MATMUL_ADESC, a)?;
    op.set_desc(A::CUDNN_ATTR_OPERATION_MATMUL_BDESC, b)?;
    op.set_desc(A::CUDNN_ATTR_OPERATION_MATMUL_CDESC, c)?;
    op.set_desc(A::CUDNN_ATTR_OPERATION_MATMUL_DESC, &mm)?;
    op.finalize()
}

/// The module docs' graph for `[b, h]` heads of `nq` queries and `nk` keys of
/// width `d`, in `io` (f16/bf16), token-major (`[B, N, H·D]`) in memory.
fn graph(
    b: usize,
    h: usize,
    nq: usize,
    nk: usize,
    d: usize,
    io: sys::cudnnDataType_t,
) -> Result<Graph> {
    use sys::cudnnPointwiseMode_t as P;
    use Binding::{ByValue, Memory, Virtual};
    let f32 = sys::cudnnDataType_t::CUDNN_DATA_FLOAT;
    // [B, H, N, D] over [B, N, H, D] memory.
    let rows = |n: usize| ([b, h, n, d], [n * h * d, d, h * d, 1]);
    let (q_dims, q_strides) = rows(nq);
    let (v_dims, v_strides) = rows(nk);
    // Kᵀ: [B, H, D, Nk].
    let kt_dims = [b, h, d, nk];
    let kt_strides = [nk * h * d, d, 1, h * d];
    let q = tensor(UID_Q, &q_dims, &q_strides, io, Memory)?;
    let kt = tensor(UID_K, &kt_dims, &kt_strides, io, Memory)?;
    let v = tensor(UID_V, &v_dims, &v_strides, io, Memory)?;
    let o = tensor(UID_O, &q_dims, &q_strides, io, Memory)?;
    let scale = tensor(UID_SCALE, &[1, 1, 1, 1], &[1, 1, 1, 1], f32, ByValue)?;
    let mut next = UID_VIRTUAL;
    let mut virtual_tensor = |dims: &[usize], dtype| {
        next += 1;
        tensor(next, dims, &packed_strides(dims), dtype, Virtual)
    };
    let scores = [b, h, nq, nk];
    let per_row = [b, h, nq, 1];
    let s = virtual_tensor(&scores, f32)?;
    let s_scaled = virtual_tensor(&scores, f32)?;
    let row_max = virtual_tensor(&per_row, f32)?;
    let shifted = virtual_tensor(&scores, f32)?;
    let e = virtual_tensor(&scores, f32)?;
    let row_sum = virtual_tensor(&per_row, f32)?;
    let log_sum = virtual_tensor(&per_row, f32)?;
    let stats = virtual_tensor(&per_row, f32)?;
    let p = virtual_tensor(&scores, io)?;
    use sys::cudnnReduceTensorOp_t as R;
    let ops = vec![
        matmul(&q, &kt, &s)?,
        pointwise(P::CUDNN_POINTWISE_MUL, &s, Some(&scale), &s_scaled)?,
        reduction(R::CUDNN_REDUCE_TENSOR_MAX, &s_scaled, &row_max)?,
        pointwise(P::CUDNN_POINTWISE_SUB, &s_scaled, Some(&row_max), &shifted)?,
        pointwise(P::CUDNN_POINTWISE_EXP, &shifted, None, &e)?,
        reduction(R::CUDNN_REDUCE_TENSOR_ADD, &e, &row_sum)?,
        pointwise(P::CUDNN_POINTWISE_LOG, &row_sum, None, &log_sum)?,
        pointwise(P::CUDNN_POINTWISE_ADD, &row_max, Some(&log_sum), &stats)?,
        pointwise(P::CUDNN_POINTWISE_DIV, &e, Some(&row_sum), &p)?,
        matmul(&p, &v, &o)?,
    ];
    Ok(Graph {
        ops,
        _tensors: vec![
            q, kt, v, o, scale, s, s_scaled, row_max, shifted, e, row_sum, log_sum, stats, p,
        ],
    })
}

/// The numerics we accept: any deterministic engine (its reductions are the
/// kernel's own f32 softmax; the parity checks bound the result).
fn acceptable(cfg: &Desc) -> Result<bool> {
    use sys::cudnnBackendNumericalNote_t as N;
    Ok(!numerical_notes(cfg)?.contains(&(N::CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC as u32)))
}

impl TernaryKernel for CudnnAttention {
    const WHAT: &'static str = "cuDNN attention";
    const F32: bool = false;

    fn launch<V: Plain + CudaDType + WithDType>(
        &self,
        (q, lq): (&CudaSlice<V>, &Layout),
        (k, lk): (&CudaSlice<V>, &Layout),
        (v, lv): (&CudaSlice<V>, &Layout),
        dev: &CudaDevice,
    ) -> Result<CudaStorage> {
        let dtype = V::DTYPE;
        let io = match dtype {
            DType::F16 => sys::cudnnDataType_t::CUDNN_DATA_HALF,
            _ => sys::cudnnDataType_t::CUDNN_DATA_BFLOAT16,
        };
        let (b, nq, inner) = lq.shape().dims3()?;
        let nk = lk.shape().dims3()?.1;
        let (h, d) = (self.heads, inner / self.heads);
        let hd = handle(dev)?;
        let stream = dev.cuda_stream();
        let mut out = alloc::<V>(dev, b * nq * inner)?;
        // By value: cuDNN reads the scalar from host memory when the call is
        // enqueued.
        let mut scale = (d as f32).powf(-0.5);
        let pointers: [*mut c_void; 5] = [
            layout_address(q, lq, &stream) as *mut c_void,
            layout_address(k, lk, &stream) as *mut c_void,
            layout_address(v, lv, &stream) as *mut c_void,
            slice_address_mut(&mut out, &stream) as *mut c_void,
            &mut scale as *mut f32 as *mut c_void,
        ];
        let variant = Variant {
            uids: &UIDS,
            pointers: &pointers,
        };
        let key: Key = (b, h, nq, nk, d, dtype, dev.id());
        let cached = PLANS.with(|m| m.borrow().get(&key).cloned());
        let plan = match cached {
            Some(plan) => plan,
            None => {
                // A graph cuDNN rejects while building is a shape it doesn't
                // take, like one with no engine.
                let plan: Planned = match graph(b, h, nq, nk, d, io).and_then(|g| {
                    let graph = operation_graph(&hd, &g.ops)?;
                    make_plan(&hd, dev, &graph, acceptable, &variant)
                }) {
                    Ok(Some(plan)) => Ok(Rc::new(plan)),
                    Ok(None) => Err("no cuDNN engine takes the graph".into()),
                    Err(e) => Err(format!("cuDNN refused the graph: {e}")),
                };
                PLANS.with(|m| m.borrow_mut().insert(key, plan.clone()));
                plan
            }
        };
        let plan =
            plan.map_err(|why| candle_core::Error::Msg(format!("cuDNN attention: {why}")))?;
        execute_with_workspace(&hd, dev, &plan, &variant)?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }
}

ternary_op!(
    CudnnAttention,
    "splatforge-cudnn-attention",
    "cuDNN attention is CUDA-only (CPU tensors take ops::attention_reference)"
);
