//! cuDNN's graph (backend) API on cudarc's raw bindings: descriptors, the
//! per-thread handle, and turning a finalized operation graph into an
//! execution plan. Two users: convolutions ([`conv`]) and fused attention
//! ([`attention`]); candle's own `cudnn` feature stays off.
//!
//! A plan is made once per shape and cached by its user: the engine
//! configurations cuDNN's heuristics rank for the graph, filtered by the
//! user's numerics policy, and the first that finalizes (or, with
//! `SPLATFORGE_CUDNN_BENCHMARK=1`, the fastest of the first
//! [`BENCHMARK_CANDIDATES`], as torch's `cudnn.benchmark` does). A call is
//! then one `cudnnBackendExecute`.

pub(super) mod attention;
pub(super) mod conv;

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::c_void;
use std::rc::Rc;
use std::time::Instant;

use candle_core::cuda_backend::cudarc::cudnn::sys;
use candle_core::cuda_backend::DeviceId;
use candle_core::{CudaDevice, Error as E, Result};

use splatforge_cuda::slice_address_mut;

use super::cuda::alloc;

use sys::cudnnBackendAttributeName_t as A;
use sys::cudnnBackendAttributeType_t as T;
use sys::cudnnBackendDescriptorType_t as K;

/// Engine configurations timed per shape when `SPLATFORGE_CUDNN_BENCHMARK=1`.
const BENCHMARK_CANDIDATES: usize = 8;

fn ok(what: &str, status: sys::cudnnStatus_t) -> Result<()> {
    if status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS {
        Ok(())
    } else {
        candle_core::bail!("cuDNN {what}: {status:?}")
    }
}

/// A backend descriptor, destroyed on drop.
struct Desc(sys::cudnnBackendDescriptor_t);

impl Desc {
    fn new(kind: K) -> Result<Self> {
        let mut raw = std::ptr::null_mut();
        // SAFETY: cuDNN writes one descriptor handle to `raw`.
        ok("create descriptor", unsafe {
            sys::cudnnBackendCreateDescriptor(kind, &mut raw)
        })?;
        Ok(Self(raw))
    }

    /// Sets attribute `name` to `values`, which must be of the C type `ty` names
    /// (every call here passes the matching Rust type).
    fn set<V>(&self, name: A, ty: T, values: &[V]) -> Result<()> {
        // SAFETY: `values` is a live slice of `values.len()` elements of type `ty`;
        // cuDNN copies them before returning.
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

    /// Sets one descriptor-valued attribute.
    fn set_desc(&self, name: A, value: &Desc) -> Result<()> {
        self.set(name, T::CUDNN_TYPE_BACKEND_DESCRIPTOR, &[value.0])
    }

    /// Reads up to `out.len()` values; returns how many there were.
    /// `out` must hold elements of the C type `ty` names.
    fn get<V>(&self, name: A, ty: T, out: &mut [V]) -> Result<usize> {
        let mut count = 0i64;
        // SAFETY: cuDNN writes at most `out.len()` elements of type `ty` to `out`
        // and the count to `count`.
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
        // SAFETY: `self.0` is a live descriptor (created in `new`).
        ok("finalize", unsafe { sys::cudnnBackendFinalize(self.0) })?;
        Ok(self)
    }
}

impl Drop for Desc {
    fn drop(&mut self) {
        // SAFETY: `self.0` was created in `new` and is destroyed once, here.
        unsafe {
            sys::cudnnBackendDestroyDescriptor(self.0);
        }
    }
}

/// How a tensor of a graph is bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Binding {
    /// A device buffer of the variant pack.
    Memory,
    /// An intermediate that lives only inside the fused kernel.
    Virtual,
    /// A scalar passed by value (host pointer in the variant pack).
    ByValue,
}

/// A tensor of a graph: `dims` with element `strides`, `uid` unique in the graph.
fn tensor(
    uid: i64,
    dims: &[usize],
    strides: &[usize],
    dtype: sys::cudnnDataType_t,
    binding: Binding,
) -> Result<Desc> {
    let d: Vec<i64> = dims.iter().map(|&v| v as i64).collect();
    let s: Vec<i64> = strides.iter().map(|&v| v as i64).collect();
    let t = Desc::new(K::CUDNN_BACKEND_TENSOR_DESCRIPTOR)?;
    t.set(
        A::CUDNN_ATTR_TENSOR_DATA_TYPE,
        T::CUDNN_TYPE_DATA_TYPE,
        &[dtype],
    )?;
    t.set(A::CUDNN_ATTR_TENSOR_DIMENSIONS, T::CUDNN_TYPE_INT64, &d)?;
    t.set(A::CUDNN_ATTR_TENSOR_STRIDES, T::CUDNN_TYPE_INT64, &s)?;
    t.set(A::CUDNN_ATTR_TENSOR_UNIQUE_ID, T::CUDNN_TYPE_INT64, &[uid])?;
    // Callers hand cuDNN 16-byte aligned device pointers only.
    t.set(
        A::CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT,
        T::CUDNN_TYPE_INT64,
        &[16i64],
    )?;
    match binding {
        Binding::Memory => {}
        Binding::Virtual => t.set(
            A::CUDNN_ATTR_TENSOR_IS_VIRTUAL,
            T::CUDNN_TYPE_BOOLEAN,
            &[true],
        )?,
        Binding::ByValue => t.set(
            A::CUDNN_ATTR_TENSOR_IS_BY_VALUE,
            T::CUDNN_TYPE_BOOLEAN,
            &[true],
        )?,
    }
    t.finalize()
}

/// Row-major (packed) strides of `dims`.
fn packed_strides(dims: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * dims[i + 1];
    }
    strides
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
        // SAFETY: the handle was created in `handle` and is destroyed once, here.
        unsafe {
            sys::cudnnDestroy(self.0);
        }
    }
}

thread_local! {
    // cuDNN handles are not thread-safe: one per thread and device, on the
    // device's (candle's) stream.
    static HANDLES: RefCell<HashMap<DeviceId, Rc<Handle>>> = RefCell::new(HashMap::new());
}

fn handle(dev: &CudaDevice) -> Result<Rc<Handle>> {
    let id = dev.id();
    if let Some(h) = HANDLES.with(|m| m.borrow().get(&id).cloned()) {
        return Ok(h);
    }
    let stream = dev.cuda_stream();
    stream.context().bind_to_thread().map_err(E::wrap)?;
    let mut raw = std::ptr::null_mut();
    // SAFETY: cuDNN writes one handle to `raw`, with the device's context current.
    ok("create", unsafe { sys::cudnnCreate(&mut raw) })?;
    let h = Rc::new(Handle(raw));
    // SAFETY: a live handle and the device's stream, which outlives it (candle keeps it).
    ok("set stream", unsafe {
        sys::cudnnSetStream(raw, stream.cu_stream() as _)
    })?;
    HANDLES.with(|m| m.borrow_mut().insert(id, h.clone()));
    Ok(h)
}

fn benchmark_mode() -> bool {
    std::env::var("SPLATFORGE_CUDNN_BENCHMARK").is_ok_and(|v| v == "1")
}

/// The engine of an engine configuration.
fn engine_of(cfg: &Desc) -> Result<Desc> {
    let engine = Desc::new(K::CUDNN_BACKEND_ENGINE_DESCRIPTOR)?;
    let mut raw = [engine.0];
    cfg.get(
        A::CUDNN_ATTR_ENGINECFG_ENGINE,
        T::CUDNN_TYPE_BACKEND_DESCRIPTOR,
        &mut raw,
    )?;
    Ok(engine)
}

/// The numerical notes of the engine of `cfg`, read as `u32` (cuDNN may
/// report notes newer than these bindings).
fn numerical_notes(cfg: &Desc) -> Result<Vec<u32>> {
    let engine = engine_of(cfg)?;
    let mut notes = [0u32; 16];
    let n = engine.get(
        A::CUDNN_ATTR_ENGINE_NUMERICAL_NOTE,
        T::CUDNN_TYPE_NUMERICAL_NOTE,
        &mut notes,
    )?;
    Ok(notes[..n.min(notes.len())].to_vec())
}

fn engine_index(cfg: &Desc) -> Result<i64> {
    let engine = engine_of(cfg)?;
    let mut index = [-1i64];
    engine.get(
        A::CUDNN_ATTR_ENGINE_GLOBAL_INDEX,
        T::CUDNN_TYPE_INT64,
        &mut index,
    )?;
    Ok(index[0])
}

/// The buffers of one execution: tensor uids and their pointers (device
/// addresses, or host addresses of by-value scalars), in the same order.
struct Variant<'a> {
    uids: &'a [i64],
    pointers: &'a [*mut c_void],
}

fn execute(h: &Handle, plan: &Desc, variant: &Variant, workspace: u64) -> Result<()> {
    let pack = Desc::new(K::CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR)?;
    pack.set(
        A::CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS,
        T::CUDNN_TYPE_INT64,
        variant.uids,
    )?;
    pack.set(
        A::CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS,
        T::CUDNN_TYPE_VOID_PTR,
        variant.pointers,
    )?;
    pack.set(
        A::CUDNN_ATTR_VARIANT_PACK_WORKSPACE,
        T::CUDNN_TYPE_VOID_PTR,
        &[workspace as *mut c_void],
    )?;
    let pack = pack.finalize()?;
    // SAFETY: the pack's pointers are the caller's live buffers (device memory of the
    // sizes the graph describes, host scalars for by-value tensors) and a workspace of
    // the plan's size; cuDNN enqueues on the handle's stream (candle's).
    ok("execute", unsafe {
        sys::cudnnBackendExecute(h.0, plan.0, pack.0)
    })
}

/// Runs `plan` with a workspace of its size (none when it needs none: cuDNN
/// takes null then).
fn execute_with_workspace(
    h: &Handle,
    dev: &CudaDevice,
    plan: &Plan,
    variant: &Variant,
) -> Result<()> {
    let stream = dev.cuda_stream();
    let mut workspace = (plan.workspace > 0)
        .then(|| alloc::<u8>(dev, plan.workspace))
        .transpose()?;
    let ws_ptr = workspace
        .as_mut()
        .map_or(0, |w| slice_address_mut(w, &stream));
    execute(h, &plan.plan, variant, ws_ptr)
}

/// A finalized operation graph of `ops` (in topological order).
fn operation_graph(h: &Handle, ops: &[Desc]) -> Result<Desc> {
    let graph = Desc::new(K::CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR)?;
    let raw: Vec<_> = ops.iter().map(|o| o.0).collect();
    graph.set(
        A::CUDNN_ATTR_OPERATIONGRAPH_OPS,
        T::CUDNN_TYPE_BACKEND_DESCRIPTOR,
        &raw,
    )?;
    graph.set(
        A::CUDNN_ATTR_OPERATIONGRAPH_HANDLE,
        T::CUDNN_TYPE_HANDLE,
        &[h.0],
    )?;
    graph.finalize()
}

/// The plan for `graph` (module docs): `accept` is the caller's numerics
/// policy on an engine configuration; `variant` holds the call's buffers,
/// which benchmark mode times the candidates on. `None` when no engine
/// takes the graph.
fn make_plan(
    h: &Handle,
    dev: &CudaDevice,
    graph: &Desc,
    accept: impl Fn(&Desc) -> Result<bool>,
    variant: &Variant,
) -> Result<Option<Plan>> {
    // Heuristics rank the engine configurations; the fallback list covers
    // shapes the ranked engines refuse.
    let mut configs = Vec::new();
    for mode in [
        sys::cudnnBackendHeurMode_t::CUDNN_HEUR_MODE_A,
        sys::cudnnBackendHeurMode_t::CUDNN_HEUR_MODE_FALLBACK,
    ] {
        let heur = Desc::new(K::CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR)?;
        heur.set_desc(A::CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, graph)?;
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
        // A graph no engine supports has no results (or fails here).
        let Ok(n) = heur.get(
            A::CUDNN_ATTR_ENGINEHEUR_RESULTS,
            T::CUDNN_TYPE_BACKEND_DESCRIPTOR,
            &mut raw,
        ) else {
            continue;
        };
        configs.extend(cfgs.into_iter().take(n));
    }

    let benchmark = benchmark_mode();
    // The fastest convolution engines transpose to NHWC in their workspace,
    // which grows with the tensors (1 GiB for a 256-channel 1024² bf16
    // convolution, where the fallback engine takes 20× longer): allow up to
    // half the free memory.
    let (free, _) =
        candle_core::cuda_backend::cudarc::driver::result::mem_get_info().map_err(E::wrap)?;
    let max_workspace = (free / 2) as i64;
    let mut candidates = Vec::new();
    for cfg in &configs {
        if !accept(cfg)? {
            continue;
        }
        let ex = Desc::new(K::CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR)?;
        ex.set(
            A::CUDNN_ATTR_EXECUTION_PLAN_HANDLE,
            T::CUDNN_TYPE_HANDLE,
            &[h.0],
        )?;
        ex.set_desc(A::CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, cfg)?;
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
    if !(benchmark && candidates.len() > 1) {
        return Ok(candidates.into_iter().next());
    }
    let stream = dev.cuda_stream();
    let mut best: Option<Plan> = None;
    for mut c in candidates {
        // The first run pays lazy initialisation; time the next three.
        if execute_with_workspace(h, dev, &c, variant).is_err() {
            continue;
        }
        stream.synchronize().map_err(E::wrap)?;
        let t0 = Instant::now();
        for _ in 0..3 {
            execute_with_workspace(h, dev, &c, variant)?;
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
    Ok(best)
}

/// The cuDNN plans this thread has made, a line each (convolutions, then
/// attention; for benchmark reports).
pub(super) fn plan_summary() -> Vec<String> {
    let mut lines = conv::plan_summary();
    lines.extend(attention::plan_summary());
    lines
}
