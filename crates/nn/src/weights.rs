//! Weight files and the candle `VarBuilder` backends that read them.
//!
//! * [`TensorFile`]: one safetensors file (memory-mapped) or one PyTorch
//!   zip checkpoint (`.pt`, `.ckpt`, `.bin`, `.pth`, read with
//!   `candle_core::pickle`), tensors read lazily and in their stored dtype.
//! * [`MappedBackend`]: a `VarBuilder` backend that asks a name-mapping
//!   function where each module tensor lives in the file (an LDM key, or a
//!   chunk of a fused `in_proj` tensor), converts it to the requested dtype
//!   and device, and accepts `[o, i, 1, 1]` ↔ `[o, i]` (1×1 convolution ↔
//!   linear) reshapes. Errors name the module tensor, the key and the file.
//! * [`SeededInit`]: a backend that invents deterministic random weights for
//!   every tensor asked for and records them (tiny test models).
//! * [`RandomRecorder`]: the same backend ([`RandomWeights`]) recording only the recipe
//!   ([`RandomTensor`]) of every tensor asked for, so that a full-size model
//!   costs no memory to describe; [`save_random`] then streams the values
//!   into a safetensors file one tensor at a time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{safetensors::MmapedSafetensors, DType, Device, Shape, Tensor};
use candle_nn::{var_builder::SimpleBackend, Init, VarBuilder};

use crate::error::{NnError, Result};
use crate::rng::{fill_normals, hash_name};

/// The one-line Python command that converts a PyTorch checkpoint to safetensors.
pub fn convert_to_safetensors_command(input: &Path) -> String {
    let out = input.with_extension("safetensors");
    format!(
        "python -c \"import torch, safetensors.torch as st; sd = torch.load('{}', map_location='cpu', weights_only=False); sd = sd.get('state_dict', sd); st.save_file({{k: v.clone().contiguous() for k, v in sd.items() if isinstance(v, torch.Tensor)}}, '{}')\"",
        input.display(),
        out.display()
    )
}

enum Inner {
    Safetensors(MmapedSafetensors),
    Pickle(candle_core::pickle::PthTensors),
    /// Shards of one checkpoint (a `*.safetensors.index.json`): the files and,
    /// per tensor name, the index of the shard holding it.
    Sharded(Vec<TensorFile>, std::collections::HashMap<String, usize>),
}

/// One weight file, read lazily.
pub struct TensorFile {
    path: PathBuf,
    inner: Inner,
    names: Vec<String>,
}

impl std::fmt::Debug for TensorFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TensorFile")
            .field("path", &self.path)
            .field("tensors", &self.names.len())
            .finish()
    }
}

impl TensorFile {
    /// Opens a `.safetensors` file, or a PyTorch zip checkpoint (`.pt`,
    /// `.ckpt`, `.bin`, `.pth`; a top-level `state_dict` entry is used when
    /// present). Anything else is an error.
    pub fn open(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(NnError::MissingFile {
                file: path.to_path_buf(),
                hint: "no such file".into(),
            });
        }
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        match ext.as_str() {
            "safetensors" => {
                // SAFETY: memory-mapping a file we only read; the usual caveat
                // (the file must not be truncated while mapped) applies.
                let st = unsafe { MmapedSafetensors::new(path) }
                    .map_err(|e| NnError::bad_file(path, format!("not a readable safetensors file: {e}")))?;
                let mut names: Vec<String> = st.tensors().into_iter().map(|(n, _)| n).collect();
                names.sort();
                Ok(Self { path: path.to_path_buf(), inner: Inner::Safetensors(st), names })
            }
            "pt" | "ckpt" | "bin" | "pth" => Self::open_pickle(path),
            _ => Err(NnError::bad_file(
                path,
                "unknown weight file type: expected .safetensors, or a PyTorch checkpoint (.pt, .ckpt, .bin, .pth)",
            )),
        }
    }

    /// Opens a sharded checkpoint from its index (`….safetensors.index.json`,
    /// `{"weight_map": {tensor: shard file}}`), the shards being `shards`
    /// (paths of the files the index names, in any order; usually next to it).
    pub fn open_sharded(index: &Path, shards: &[PathBuf]) -> Result<Self> {
        let text = std::fs::read_to_string(index).map_err(|e| NnError::io(index, e))?;
        let map = parse_weight_map(index, &text)?;
        let mut files = Vec::with_capacity(shards.len());
        let mut by_name = std::collections::HashMap::new();
        for (i, shard) in shards.iter().enumerate() {
            let f = TensorFile::open(shard)?;
            for n in f.names() {
                by_name.insert(n.clone(), i);
            }
            files.push(f);
        }
        for (tensor, file) in &map {
            if !by_name.contains_key(tensor) {
                return Err(NnError::bad_file(
                    index,
                    format!("tensor `{tensor}` is listed in shard {file} but not found in it"),
                ));
            }
        }
        let mut names: Vec<String> = by_name.keys().cloned().collect();
        names.sort();
        Ok(Self {
            path: index.to_path_buf(),
            inner: Inner::Sharded(files, by_name),
            names,
        })
    }

    fn open_pickle(path: &Path) -> Result<Self> {
        let fail = |e: String| {
            NnError::bad_file(
                path,
                format!(
                    "cannot read this PyTorch checkpoint ({e}). Convert it to safetensors and load that instead:\n  {}",
                    convert_to_safetensors_command(path)
                ),
            )
        };
        let mut pth =
            candle_core::pickle::PthTensors::new(path, None).map_err(|e| fail(e.to_string()))?;
        if pth.tensor_infos().is_empty() {
            pth = candle_core::pickle::PthTensors::new(path, Some("state_dict"))
                .map_err(|e| fail(e.to_string()))?;
        }
        if pth.tensor_infos().is_empty() {
            return Err(fail(
                "no tensors found at the top level or under `state_dict`".into(),
            ));
        }
        let mut names: Vec<String> = pth.tensor_infos().keys().cloned().collect();
        names.sort();
        Ok(Self {
            path: path.to_path_buf(),
            inner: Inner::Pickle(pth),
            names,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn contains(&self, name: &str) -> bool {
        self.names
            .binary_search_by(|n| n.as_str().cmp(name))
            .is_ok()
    }

    /// Loads a tensor on the CPU in its stored dtype; `None` if absent.
    pub fn load(&self, name: &str) -> candle_core::Result<Option<Tensor>> {
        if !self.contains(name) {
            return Ok(None);
        }
        match &self.inner {
            Inner::Safetensors(st) => st.load(name, &Device::Cpu).map(Some),
            Inner::Pickle(p) => p.get(name),
            Inner::Sharded(files, by_name) => match by_name.get(name) {
                Some(&i) => files[i].load(name),
                None => Ok(None),
            },
        }
    }

    /// The stored dtype of the first tensor (used to report file precision).
    pub fn first_dtype(&self) -> Option<DType> {
        let name = self.names.first()?;
        match &self.inner {
            Inner::Safetensors(st) => st
                .get(name)
                .ok()
                .and_then(|v| DType::try_from(v.dtype()).ok()),
            Inner::Pickle(p) => p.tensor_infos().get(name).map(|i| i.dtype),
            Inner::Sharded(files, _) => files.first().and_then(|f| f.first_dtype()),
        }
    }
}

/// The shard file names of a `*.safetensors.index.json` (`weight_map`
/// values), sorted and deduplicated.
pub fn shard_files(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).map_err(|e| NnError::io(index, e))?;
    let map = parse_weight_map(index, &text)?;
    let mut files: Vec<String> = map.into_values().collect();
    files.sort();
    files.dedup();
    Ok(files)
}

fn parse_weight_map(index: &Path, text: &str) -> Result<BTreeMap<String, String>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: BTreeMap<String, String>,
    }
    let idx: Index = serde_json::from_str(text).map_err(|e| {
        NnError::bad_file(index, format!("not a safetensors index (weight_map): {e}"))
    })?;
    if idx
        .weight_map
        .values()
        .any(|f| f.contains("..") || f.starts_with('/'))
    {
        return Err(NnError::bad_file(
            index,
            "shard names must be plain file names",
        ));
    }
    Ok(idx.weight_map)
}

/// Where a module tensor comes from in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The tensor stored under this key.
    Key(String),
    /// Chunk `index` of `chunks` equal chunks along dim 0 of the tensor under
    /// `key` (e.g. q, k, v of an OpenCLIP `in_proj_weight`).
    Chunk {
        key: String,
        index: usize,
        chunks: usize,
    },
    /// The tensors under these keys concatenated along dim 0 (e.g. FLUX's
    /// fused `qkv` from diffusers' separate `to_q`, `to_k`, `to_v`).
    Concat(Vec<String>),
    /// The tensor under this key with the two halves of dim 0 swapped
    /// (diffusers' `(scale, shift)` ↔ the original `(shift, scale)` order).
    SwapHalves(String),
}

impl Source {
    /// The (first) stored key.
    pub fn key(&self) -> &str {
        match self {
            Source::Key(k) | Source::Chunk { key: k, .. } | Source::SwapHalves(k) => k,
            Source::Concat(keys) => keys.first().map(String::as_str).unwrap_or(""),
        }
    }

    /// Every stored key this source reads.
    pub fn keys(&self) -> Vec<&str> {
        match self {
            Source::Concat(keys) => keys.iter().map(String::as_str).collect(),
            other => vec![other.key()],
        }
    }
}

/// Maps a module tensor name to its place in the file, or `None` when the
/// module tensor has no counterpart.
pub type NameMap = Arc<dyn Fn(&str) -> Option<Source> + Send + Sync>;

/// A `VarBuilder` backend reading a [`TensorFile`] through a [`NameMap`].
pub struct MappedBackend {
    file: Arc<TensorFile>,
    map: NameMap,
    /// What is being loaded ("unet", "vae", ...), for error messages.
    what: String,
}

impl MappedBackend {
    pub fn new(file: Arc<TensorFile>, map: NameMap, what: impl Into<String>) -> Self {
        Self {
            file,
            map,
            what: what.into(),
        }
    }

    /// A `VarBuilder` over this backend.
    pub fn into_var_builder(self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self), dtype, device.clone())
    }

    fn fetch(&self, name: &str) -> candle_core::Result<Tensor> {
        let src = (self.map)(name).ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "{}: no checkpoint tensor corresponds to `{name}` (in {})",
                self.what,
                self.file.path().display()
            ))
        })?;
        let load = |key: &str| -> candle_core::Result<Tensor> {
            self.file.load(key)?.ok_or_else(|| {
                candle_core::Error::Msg(format!(
                    "{}: tensor `{key}` (for `{name}`) is missing from {}",
                    self.what,
                    self.file.path().display()
                ))
            })
        };
        if let Source::Concat(keys) = &src {
            let parts = keys
                .iter()
                .map(|k| load(k))
                .collect::<candle_core::Result<Vec<_>>>()?;
            return Tensor::cat(&parts, 0);
        }
        let stored = load(src.key())?;
        match src {
            Source::Key(_) => Ok(stored),
            Source::Concat(_) => unreachable!("handled above"),
            Source::SwapHalves(key) => {
                let rows = stored.dim(0)?;
                if rows % 2 != 0 {
                    candle_core::bail!(
                        "{}: tensor `{key}` in {} has an odd number of rows ({rows})",
                        self.what,
                        self.file.path().display()
                    )
                }
                let h = rows / 2;
                Tensor::cat(&[stored.narrow(0, h, h)?, stored.narrow(0, 0, h)?], 0)
            }
            Source::Chunk { key, index, chunks } => {
                let rows = stored.dim(0)?;
                if rows % chunks != 0 {
                    candle_core::bail!(
                        "{}: tensor `{key}` in {} has {rows} rows, not divisible into {chunks} chunks",
                        self.what,
                        self.file.path().display()
                    )
                }
                let n = rows / chunks;
                stored.narrow(0, index * n, n)?.contiguous()
            }
        }
    }
}

/// Whether `a` and `b` differ only by trailing unit dimensions.
fn same_up_to_trailing_ones(a: &[usize], b: &[usize]) -> bool {
    let trim = |s: &[usize]| {
        let mut v = s.to_vec();
        while v.len() > 1 && *v.last().unwrap() == 1 {
            v.pop();
        }
        v
    };
    trim(a) == trim(b)
}

impl SimpleBackend for MappedBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.fetch(name)?;
        let t = if t.shape() == &s {
            t
        } else if same_up_to_trailing_ones(t.dims(), s.dims()) {
            t.reshape(s)?
        } else {
            let key = (self.map)(name)
                .map(|s| s.key().to_string())
                .unwrap_or_default();
            candle_core::bail!(
                "{}: tensor `{key}` (for `{name}`) in {} has shape {:?}, the model expects {:?}: the configuration does not match these weights",
                self.what,
                self.file.path().display(),
                t.dims(),
                s.dims()
            )
        };
        t.to_device(dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.fetch(name)?.to_device(dev)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        (self.map)(name).is_some_and(|s| s.keys().iter().all(|k| self.file.contains(k)))
    }
}

/// The recipe of one seeded random tensor. Its values depend only on the
/// seed, the tensor's name, its shape and its initialisation hint (candle's
/// `Init`, which each layer passes): normalisation weights (`Const`) are
/// `c + 0.1·n`, biases and other 1-D tensors `0.1·n`, matrices and
/// convolution kernels (`Kaiming`/`Uniform`) `n / sqrt(fan_in)` (fan-in: the
/// product of all dimensions but the first), embeddings (`Randn`)
/// `mean + stdev·n`, with `n` standard normal. That keeps every layer's
/// output at about unit scale, so the activations of a deep random model stay
/// finite in bf16 and f16.
#[derive(Debug, Clone)]
pub struct RandomTensor {
    /// The tensor's own seed (the model's seed mixed with its name).
    seed: u64,
    dims: Vec<usize>,
    /// The values are `offset + scale · n`.
    offset: f32,
    scale: f32,
    /// Values given instead of drawn: a buffer the official model derives
    /// from its configuration and saves with its weights (TRELLIS'
    /// `pos_emb`), which our loaders compute rather than read.
    given: Option<Arc<[f32]>>,
}

impl RandomTensor {
    /// The recipe of tensor `name` of shape `dims` with hint `init`, in a
    /// model seeded with `seed`.
    pub fn new(seed: u64, name: &str, dims: &[usize], init: Init) -> Self {
        let fan_in: usize = dims.iter().skip(1).product::<usize>().max(1);
        let (offset, scale) = match init {
            Init::Const(c) => (c as f32, 0.1),
            Init::Randn { mean, stdev } => (mean as f32, stdev as f32),
            Init::Uniform { .. } | Init::Kaiming { .. } => {
                if dims.len() <= 1 {
                    (0.0, 0.1)
                } else {
                    (0.0, 1.0 / (fan_in as f32).sqrt())
                }
            }
        };
        Self {
            seed: seed ^ hash_name(name).rotate_left(17),
            dims: dims.to_vec(),
            offset,
            scale,
            given: None,
        }
    }

    /// A tensor of shape `dims` with the given row-major `values`.
    pub fn given(dims: &[usize], values: Vec<f32>) -> Result<Self> {
        if dims.iter().product::<usize>() != values.len() {
            return Err(NnError::InvalidArgument(format!(
                "{} values for a tensor of shape {dims:?}",
                values.len()
            )));
        }
        Ok(Self {
            seed: 0,
            dims: dims.to_vec(),
            offset: 0.0,
            scale: 1.0,
            given: Some(values.into()),
        })
    }

    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    /// The two halves of dim 0 swapped (diffusers' `(scale, shift)` ↔ the
    /// original `(shift, scale)`): given values are reordered; drawn ones are
    /// kept, every row being drawn alike, so the swap changes no statistic.
    pub fn swap_halves(&self) -> Result<Self> {
        let rows = self.dims.first().copied().unwrap_or(0);
        if rows % 2 != 0 {
            return Err(NnError::InvalidArgument(format!(
                "cannot swap the halves of a tensor of shape {:?}",
                self.dims
            )));
        }
        let Some(v) = &self.given else {
            return Ok(self.clone());
        };
        let half = v.len() / 2;
        Ok(Self {
            given: Some(v[half..].iter().chain(&v[..half]).copied().collect()),
            ..self.clone()
        })
    }

    /// Rows `start..start + len` (along dim 0) as the recipe of the tensor
    /// `name`: given values are sliced; drawn ones are drawn afresh (seeded
    /// from this tensor's seed and `name`) at this tensor's scale, which
    /// depends only on the other dimensions. Splitting a fused weight (FLUX's
    /// `qkv` into diffusers' `to_q`, `to_k`, `to_v`) so keeps its
    /// initialisation, whatever the fused tensor's size.
    pub fn narrow_rows(&self, name: &str, start: usize, len: usize) -> Result<Self> {
        let rows = self.dims.first().copied().unwrap_or(0);
        if start + len > rows {
            return Err(NnError::InvalidArgument(format!(
                "rows {start}..{} of a tensor of shape {:?}",
                start + len,
                self.dims
            )));
        }
        let mut dims = self.dims.clone();
        dims[0] = len;
        let row: usize = self.dims[1..].iter().product();
        Ok(Self {
            seed: self.seed ^ hash_name(name),
            dims,
            offset: self.offset,
            scale: self.scale,
            given: self
                .given
                .as_ref()
                .map(|v| v[start * row..(start + len) * row].into()),
        })
    }

    pub fn elem_count(&self) -> usize {
        self.dims.iter().product()
    }

    /// The values, row-major, made on all cores.
    pub fn values(&self) -> Vec<f32> {
        if let Some(v) = &self.given {
            return v.to_vec();
        }
        let mut v = vec![0f32; self.elem_count()];
        fill_normals(self.seed, &mut v);
        let (offset, scale) = (self.offset, self.scale);
        use rayon::prelude::*;
        v.par_iter_mut().for_each(|x| *x = offset + scale * *x);
        v
    }

    /// The values as an f32 CPU tensor.
    pub fn tensor(&self) -> candle_core::Result<Tensor> {
        Tensor::from_vec(self.values(), self.dims.as_slice(), &Device::Cpu)
    }

    /// The values in `dtype` as little-endian bytes, as safetensors stores
    /// them (rounded to nearest, as `Tensor::to_dtype`). `None` for a dtype
    /// other than f32, f16 and bf16.
    pub fn bytes(&self, dtype: DType) -> Option<Vec<u8>> {
        use rayon::prelude::*;
        let v = self.values();
        Some(match dtype {
            DType::F32 => v.par_iter().flat_map_iter(|x| x.to_le_bytes()).collect(),
            DType::F16 => v
                .par_iter()
                .flat_map_iter(|&x| half::f16::from_f32(x).to_le_bytes())
                .collect(),
            DType::BF16 => v
                .par_iter()
                .flat_map_iter(|&x| half::bf16::from_f32(x).to_le_bytes())
                .collect(),
            _ => return None,
        })
    }
}

/// What a [`RandomWeights`] backend keeps of each tensor it hands out: the
/// values ([`Tensor`], for [`SeededInit`]) or only the recipe
/// ([`RandomTensor`], for [`RandomRecorder`]).
pub trait KeptTensor: Clone + Send + Sync + 'static {
    /// The backend's name, for errors.
    const BACKEND: &'static str;

    /// What is kept of a tensor asked for the first time.
    fn from_recipe(recipe: RandomTensor) -> candle_core::Result<Self>;

    /// The tensor handed out for what was kept.
    fn hand_out(&self, dtype: DType, dev: &Device) -> candle_core::Result<Tensor>;
}

impl KeptTensor for Tensor {
    const BACKEND: &'static str = "SeededInit";

    fn from_recipe(recipe: RandomTensor) -> candle_core::Result<Self> {
        recipe.tensor()
    }

    fn hand_out(&self, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.to_device(dev)?.to_dtype(dtype)
    }
}

impl KeptTensor for RandomTensor {
    const BACKEND: &'static str = "RandomRecorder";

    fn from_recipe(recipe: RandomTensor) -> candle_core::Result<Self> {
        Ok(recipe)
    }

    /// A zero-stride view of a single zero: nothing is allocated, whatever the size.
    fn hand_out(&self, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        Tensor::zeros((), dtype, dev)?.broadcast_as(self.dims())
    }
}

/// A `VarBuilder` backend that makes up deterministic random weights
/// ([`RandomTensor`]) and keeps, per full tensor name, what it made of each
/// tensor the first time it was asked for (see [`KeptTensor`]).
#[derive(Clone)]
pub struct RandomWeights<K> {
    seed: u64,
    kept: Arc<Mutex<BTreeMap<String, K>>>,
}

/// A `VarBuilder` backend that makes up deterministic random weights
/// ([`RandomTensor`]) and records every tensor handed out (keyed by full name).
pub type SeededInit = RandomWeights<Tensor>;

/// A `VarBuilder` backend that records the [`RandomTensor`] recipe of every
/// tensor a model asks for, keyed by full name, and hands out zero-stride
/// views of a single zero: building a model through it allocates nothing,
/// whatever its size. The model built is only good for learning its tensors'
/// names and shapes. [`SeededInit`] makes the same values.
pub type RandomRecorder = RandomWeights<RandomTensor>;

impl<K: KeptTensor> RandomWeights<K> {
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            kept: Arc::new(Mutex::new(BTreeMap::new())),
        }
    }

    /// A `VarBuilder` (f32, CPU) over this backend.
    pub fn var_builder(&self) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), DType::F32, Device::Cpu)
    }
}

impl SeededInit {
    /// Every tensor created so far.
    pub fn tensors(&self) -> BTreeMap<String, Tensor> {
        self.kept.lock().expect("poisoned").clone()
    }
}

impl RandomRecorder {
    /// Every recipe recorded so far.
    pub fn recipes(&self) -> BTreeMap<String, RandomTensor> {
        self.kept.lock().expect("poisoned").clone()
    }
}

impl<K: KeptTensor> SimpleBackend for RandomWeights<K> {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut kept = self.kept.lock().expect("poisoned");
        let k = match kept.get(name) {
            Some(k) => k.clone(),
            None => {
                let k = K::from_recipe(RandomTensor::new(self.seed, name, s.dims(), h))?;
                kept.insert(name.to_string(), k.clone());
                k
            }
        };
        drop(kept);
        k.hand_out(dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let k = self.kept.lock().expect("poisoned").get(name).cloned();
        match k {
            Some(k) => k.hand_out(dtype, dev),
            None => candle_core::bail!("{}: `{name}` was never created", K::BACKEND),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.kept.lock().expect("poisoned").contains_key(name)
    }
}

/// A recipe as a safetensors view whose bytes are made when the writer asks.
struct LazyView<'a> {
    recipe: &'a RandomTensor,
    dtype: DType,
}

impl safetensors::View for LazyView<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype.into()
    }

    fn shape(&self) -> &[usize] {
        self.recipe.dims()
    }

    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        // `save_random` admits only the dtypes `bytes` handles.
        std::borrow::Cow::Owned(self.recipe.bytes(self.dtype).expect("checked dtype"))
    }

    fn data_len(&self) -> usize {
        self.recipe.elem_count() * self.dtype.size_in_bytes()
    }
}

/// Writes the values of `recipes` as a safetensors file at `path`, stored as
/// `dtype` (f32, f16 or bf16). Tensors are made one at a time (each on all
/// cores) and streamed to the file, so memory peaks at the largest tensor
/// (in f32 plus `dtype`), not the file. The file is written to a temporary
/// sibling and renamed, so `path` is never half-written.
pub fn save_random(
    recipes: &BTreeMap<String, RandomTensor>,
    dtype: DType,
    path: &Path,
) -> Result<()> {
    if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
        return Err(NnError::InvalidArgument(format!(
            "random weights are stored as f32, f16 or bf16, not {dtype:?}"
        )));
    }
    let views = recipes
        .iter()
        .map(|(name, recipe)| (name.as_str(), LazyView { recipe, dtype }));
    safetensors::serialize_to_file(views, None, path)
        .map_err(|e| NnError::bad_file(path, format!("cannot write: {e}")))
}

/// Bytes of `recipe` stored as `dtype`.
fn stored_bytes(recipe: &RandomTensor, dtype: DType) -> u64 {
    recipe.elem_count() as u64 * dtype.size_in_bytes() as u64
}

/// Writes `{stem}.safetensors.index.json` in `dir`, as transformers and
/// diffusers do for a sharded checkpoint: `weight_map` (tensor → shard file)
/// and `metadata.total_size` (bytes of all tensors).
pub fn write_shard_index(
    dir: &Path,
    stem: &str,
    weight_map: &BTreeMap<String, String>,
    total_size: u64,
) -> Result<PathBuf> {
    let path = dir.join(format!("{stem}.safetensors.index.json"));
    let json = serde_json::json!({
        "metadata": { "total_size": total_size },
        "weight_map": weight_map,
    });
    let text = serde_json::to_string_pretty(&json).expect("a JSON value serialises");
    std::fs::write(&path, text).map_err(|e| NnError::io(&path, e))?;
    Ok(path)
}

/// How [`save_random_sharded`] splits `recipes` stored as `dtype`: shards of
/// at most `max_shard_bytes` filled in name order, a larger tensor alone.
pub fn plan_shards(
    recipes: &BTreeMap<String, RandomTensor>,
    dtype: DType,
    max_shard_bytes: u64,
) -> Vec<BTreeMap<String, RandomTensor>> {
    let mut plan: Vec<BTreeMap<String, RandomTensor>> = vec![];
    let mut current_bytes = 0u64;
    for (name, recipe) in recipes {
        let bytes = stored_bytes(recipe, dtype);
        if plan.is_empty() || current_bytes + bytes > max_shard_bytes {
            plan.push(BTreeMap::new());
            current_bytes = 0;
        }
        current_bytes += bytes;
        plan.last_mut()
            .expect("a shard was pushed")
            .insert(name.clone(), recipe.clone());
    }
    plan
}

/// What [`save_random_sharded`] wrote.
#[derive(Debug, Clone)]
pub struct Shards {
    /// The shard files, in order.
    pub files: Vec<PathBuf>,
    /// The index (`{stem}.safetensors.index.json`).
    pub index: PathBuf,
    /// Bytes of all tensors (the index's `total_size`).
    pub total_size: u64,
}

/// Writes the values of `recipes` as the sharded checkpoint `stem` in `dir`:
/// `{stem}-0000i-of-0000n.safetensors` files of at most `max_shard_bytes`
/// of tensors each (filled in name order; a tensor larger than that gets a
/// shard of its own, as transformers' `max_shard_size` does), then
/// `{stem}.safetensors.index.json` ([`write_shard_index`]) naming each tensor's shard.
///
/// The plan (which tensor goes where, hence `n`) is computed from the shapes
/// alone, and each shard is written by [`save_random`]: one tensor at a time,
/// so memory peaks at the largest tensor whatever the checkpoint's size, and
/// no shard is ever half-written. The index comes last: a folder with an
/// index has all its shards.
pub fn save_random_sharded(
    recipes: &BTreeMap<String, RandomTensor>,
    dtype: DType,
    dir: &Path,
    stem: &str,
    max_shard_bytes: u64,
) -> Result<Shards> {
    let plan = plan_shards(recipes, dtype, max_shard_bytes);
    let n = plan.len();
    let mut files = Vec::with_capacity(n);
    let mut weight_map = BTreeMap::new();
    for (i, shard) in plan.iter().enumerate() {
        let file = format!("{stem}-{:05}-of-{n:05}.safetensors", i + 1);
        save_random(shard, dtype, &dir.join(&file))?;
        for name in shard.keys() {
            weight_map.insert(name.clone(), file.clone());
        }
        files.push(dir.join(file));
    }
    let total_size = recipes.values().map(|r| stored_bytes(r, dtype)).sum();
    let index = write_shard_index(dir, stem, &weight_map, total_size)?;
    Ok(Shards {
        files,
        index,
        total_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailing_ones() {
        assert!(same_up_to_trailing_ones(&[4, 4, 1, 1], &[4, 4]));
        assert!(same_up_to_trailing_ones(&[4, 4], &[4, 4, 1]));
        assert!(!same_up_to_trailing_ones(&[4, 1, 4], &[4, 4]));
        assert!(!same_up_to_trailing_ones(&[16], &[4, 4]));
    }

    #[test]
    fn seeded_init_depends_on_name_not_order() {
        let a = SeededInit::new(3);
        let b = SeededInit::new(3);
        let va = a.var_builder();
        let vb = b.var_builder();
        let x1 = va.get((3, 2), "x").unwrap();
        let _ = va.get((5,), "y").unwrap();
        let _ = vb.get((5,), "y").unwrap();
        let x2 = vb.get((3, 2), "x").unwrap();
        let d = (x1 - x2)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(d, 0.0);
    }

    #[test]
    fn recorded_recipes_save_the_seeded_init_values() {
        let init = SeededInit::new(9);
        let rec = RandomRecorder::new(9);
        for vb in [init.var_builder(), rec.var_builder()] {
            candle_nn::linear(3, 4, vb.pp("lin")).unwrap();
            candle_nn::layer_norm(4, 1e-5, vb.pp("norm")).unwrap();
            candle_nn::embedding(5, 4, vb.pp("emb")).unwrap();
        }
        let recipes = rec.recipes();
        let dir = tempfile::tempdir().unwrap();
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let path = dir.path().join("w.safetensors");
            save_random(&recipes, dtype, &path).unwrap();
            let file = TensorFile::open(&path).unwrap();
            assert_eq!(file.names().len(), 5);
            for (name, t) in init.tensors() {
                let saved = file.load(&name).unwrap().unwrap();
                assert_eq!(saved.dtype(), dtype);
                let want = t.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap();
                let got = saved.to_dtype(DType::F32).unwrap();
                let d = (want - got).unwrap().abs().unwrap().sum_all().unwrap();
                assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0, "{name} {dtype:?}");
            }
        }
        let e = save_random(&recipes, DType::U8, &dir.path().join("x.safetensors")).unwrap_err();
        assert!(e.to_string().contains("bf16"), "{e}");
    }

    #[test]
    fn sharded_random_weights_list_each_tensor_once_and_load() {
        let rec = RandomRecorder::new(5);
        let vb = rec.var_builder();
        for i in 0..5 {
            candle_nn::linear(8, 16, vb.pp(format!("l{i}"))).unwrap();
        }
        let recipes = rec.recipes();
        let dir = tempfile::tempdir().unwrap();
        // 16 × 8 f32 weights are 512 bytes: two (with their 64-byte biases) per 1200-byte shard.
        let shards = save_random_sharded(&recipes, DType::F32, dir.path(), "m", 1200).unwrap();
        assert_eq!(shards.files.len(), 3);
        assert_eq!(shards.total_size, 5 * (512 + 64));
        let text = std::fs::read_to_string(&shards.index).unwrap();
        for name in recipes.keys() {
            assert_eq!(text.matches(&format!("\"{name}\":")).count(), 1, "{name}");
        }
        let mut in_files = 0;
        for f in &shards.files {
            let shard = TensorFile::open(f).unwrap();
            let bytes: usize = shard
                .names()
                .iter()
                .map(|n| shard.load(n).unwrap().unwrap().elem_count() * 4)
                .sum();
            assert!(bytes > 0 && bytes <= 1200, "{f:?}: {bytes}");
            in_files += shard.names().len();
        }
        assert_eq!(in_files, recipes.len());
        let file = TensorFile::open_sharded(&shards.index, &shards.files).unwrap();
        assert_eq!(file.names().len(), recipes.len());
        for (name, r) in &recipes {
            let d = (file.load(name).unwrap().unwrap() - r.tensor().unwrap())
                .unwrap()
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert_eq!(d, 0.0, "{name}");
        }
        // A tensor larger than a shard gets one of its own.
        let one = save_random_sharded(&recipes, DType::F32, dir.path(), "big", 100).unwrap();
        assert_eq!(one.files.len(), recipes.len());
    }

    #[test]
    fn narrow_rows_keeps_the_scale_or_slices_given_values() {
        let w = RandomTensor::new(1, "qkv", &[300, 400], Init::Const(0.0));
        let w = RandomTensor {
            offset: 0.0,
            scale: 0.05,
            ..w
        };
        let q = w.narrow_rows("to_q", 0, 100).unwrap();
        assert_eq!(q.dims(), &[100, 400]);
        let v = q.values();
        let std = (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt();
        assert!((std - 0.05).abs() < 0.002, "{std}");
        assert_ne!(
            q.values(),
            w.narrow_rows("to_k", 100, 100).unwrap().values()
        );
        assert!(w.narrow_rows("x", 250, 100).is_err());
        let g = RandomTensor::given(&[3, 2], vec![0., 1., 2., 3., 4., 5.]).unwrap();
        assert_eq!(
            g.narrow_rows("g", 1, 2).unwrap().values(),
            vec![2., 3., 4., 5.]
        );
        let g = RandomTensor::given(&[2, 2], vec![0., 1., 2., 3.]).unwrap();
        assert_eq!(g.swap_halves().unwrap().values(), vec![2., 3., 0., 1.]);
        assert!(g.narrow_rows("odd", 0, 1).unwrap().swap_halves().is_err());
    }
}
