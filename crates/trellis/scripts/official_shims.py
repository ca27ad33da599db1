"""Plain-torch stand-ins for what the official TRELLIS and DINOv2 code imports but the GPU machine
lacks (no spconv, flash-attn, xformers, rembg, kaolin, network), shared by the scripts next to
this file: slat_flow_parity.py, gs_decoder_parity.py, parity_stage1.py and
tools/trellis_reference.py. Nothing here is official code: the official files are imported at run
time from a checkout on disk.

* spconv: `SparseConvTensor` (the attributes TRELLIS' SparseTensor touches) and `SubMConv3d`
  (kernel 3, spconv 2's KRSC weight [out, 3, 3, 3, in], cross-correlation over the occupied
  neighbours: a gather of the 27 neighbour rows and one GEMM). TRELLIS' image pipeline only builds
  submanifold convolutions (its down/upsampling is plain torch), so nothing else is shimmed.
* flash_attn: the three varlen functions (one SDPA call per batch item) and the non-varlen
  `flash_attn_qkvpacked_func` that windowed attention takes when every window is full (one SDPA
  call). A real flash_attn, when importable, still serves half precision; it has no f32 kernels.
* `check_shims` compares both against dense equivalents (torch conv3d on the zero-filled grid;
  attention with a block-diagonal mask) and raises when they differ.
* The time spent inside the shims is added to SHIM_SECONDS[0] while TIME_SHIMS[0] is true
  (synchronising the GPU around each call, which perturbs the timing of the whole run: callers
  that time a pipeline turn it on only on request).
"""
import json
import os
import sys
import time
import types
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SHIM_SECONDS = [0.0]
SHIM_SECONDS_BY_NAME = {}  # the same time split by shim function (conv vs attention)
TIME_SHIMS = [True]


def _sync():
    # On the CPU the shims run synchronously; on CUDA the kernels they queue must finish inside
    # the measured interval.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed(f):
    """f, adding its time to SHIM_SECONDS while TIME_SHIMS is on (synchronising around each call)."""
    def wrapper(*a, **k):
        if not TIME_SHIMS[0]:
            return f(*a, **k)
        _sync()
        start = time.perf_counter()
        out = f(*a, **k)
        _sync()
        elapsed = time.perf_counter() - start
        SHIM_SECONDS[0] += elapsed
        SHIM_SECONDS_BY_NAME[f.__qualname__] = SHIM_SECONDS_BY_NAME.get(f.__qualname__, 0.0) + elapsed
        return out
    return wrapper


class ShimSparseConvTensor:
    """The parts of spconv.pytorch.SparseConvTensor that TRELLIS' SparseTensor touches."""

    def __init__(self, features, indices, spatial_shape, batch_size, grid=None, voxel_num=None,
                 indice_dict=None):
        self._features = features
        self.indices = indices
        self.spatial_shape = spatial_shape
        self.batch_size = batch_size
        self.grid = grid
        self.voxel_num = voxel_num
        self.indice_dict = {} if indice_dict is None else indice_dict
        self.benchmark = False
        self.benchmark_record = {}
        self.thrust_allocator = None
        self._timer = None
        self.force_algo = None
        self.int8_scale = None

    @property
    def features(self):
        return self._features

    @features.setter
    def features(self, value):
        self._features = value

    def replace_feature(self, feature):
        out = ShimSparseConvTensor(feature, self.indices, self.spatial_shape, self.batch_size,
                                   self.grid, self.voxel_num, self.indice_dict)
        return out


def neighbour_rows(coords):
    """[N, 27] row of the voxel at coords + (i-1, j-1, l-1) (k = 9i + 3j + l), or N."""
    c = coords.long()
    shape = (c.max(0).values + 3).tolist()
    grid = torch.full(shape, -1, dtype=torch.long, device=c.device)
    shifted = c.clone()
    shifted[:, 1:] += 1
    grid[tuple(shifted.t())] = torch.arange(c.shape[0], device=c.device)
    rows = []
    for i in range(3):
        for j in range(3):
            for l in range(3):
                at = shifted.clone()
                at[:, 1] += i - 1
                at[:, 2] += j - 1
                at[:, 3] += l - 1
                rows.append(grid[tuple(at.t())])
    rows = torch.stack(rows, 1)
    rows[rows < 0] = c.shape[0]
    return rows


class ShimSubMConv3d(torch.nn.Module):
    """spconv.SubMConv3d, kernel 3: weight [out, 3, 3, 3, in] (KRSC), bias [out]."""

    def __init__(self, in_channels, out_channels, kernel_size, dilation=1, bias=True,
                 indice_key=None, algo=None):
        super().__init__()
        assert kernel_size == 3 and dilation == 1
        self.in_channels, self.out_channels = in_channels, out_channels
        self.weight = torch.nn.Parameter(torch.zeros(out_channels, 3, 3, 3, in_channels))
        self.bias = torch.nn.Parameter(torch.zeros(out_channels)) if bias else None

    @timed
    def forward(self, x):
        feats = x.features
        rows = neighbour_rows(x.indices)
        padded = torch.cat([feats, feats.new_zeros(1, feats.shape[1])], 0)
        gathered = padded[rows].reshape(feats.shape[0], -1)
        out = gathered @ self.weight.reshape(self.out_channels, -1).t().to(feats.dtype)
        if self.bias is not None:
            out = out + self.bias.to(feats.dtype)
        return x.replace_feature(out)


@timed
def shim_varlen(q, k, v, cu_q, cu_k):
    outs = []
    for i in range(cu_q.shape[0] - 1):
        qi = q[cu_q[i]:cu_q[i + 1]].transpose(0, 1)[None]
        ki = k[cu_k[i]:cu_k[i + 1]].transpose(0, 1)[None]
        vi = v[cu_k[i]:cu_k[i + 1]].transpose(0, 1)[None]
        outs.append(F.scaled_dot_product_attention(qi, ki, vi)[0].transpose(0, 1))
    return torch.cat(outs, 0)


@timed
def shim_qkvpacked(qkv):
    """[B, N, 3, H, C] → [B, N, H, C], softmax(q·kᵀ/√C)·v per batch item."""
    q, k, v = (t.transpose(1, 2) for t in qkv.unbind(dim=2))
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2)


def install_shims(report):
    """spconv and flash_attn as importable modules (the real ones where present); `report` gets
    which backend serves each."""
    try:
        import spconv.pytorch  # noqa: F401
        report["conv"] = "spconv " + __import__("spconv").__version__
    except ImportError:
        spconv = types.ModuleType("spconv")
        pytorch = types.ModuleType("spconv.pytorch")
        pytorch.SparseConvTensor = ShimSparseConvTensor
        pytorch.SubMConv3d = ShimSubMConv3d
        pytorch.ConvAlgo = types.SimpleNamespace(Native="native", MaskImplicitGemm="implicit_gemm")
        spconv.pytorch = pytorch
        sys.modules["spconv"], sys.modules["spconv.pytorch"] = spconv, pytorch
        report["conv"] = "plain-torch SubMConv3d shim"
    try:
        import flash_attn as real
        report["attention"] = f"flash_attn {real.__version__} (half), plain-torch varlen shim (f32)"
    except ImportError:
        real = None
        report["attention"] = "plain-torch varlen shim (SDPA per item)"
    half = (torch.float16, torch.bfloat16)
    fa = types.ModuleType("flash_attn")

    def qkvpacked(qkv, cu, m):
        if real is not None and qkv.dtype in half:
            return real.flash_attn_varlen_qkvpacked_func(qkv, cu, m)
        return shim_varlen(qkv[:, 0], qkv[:, 1], qkv[:, 2], cu, cu)

    def kvpacked(q, kv, cq, ck, mq, mk):
        if real is not None and q.dtype in half:
            return real.flash_attn_varlen_kvpacked_func(q, kv, cq, ck, mq, mk)
        return shim_varlen(q, kv[:, 0], kv[:, 1], cq, ck)

    def separate(q, k, v, cq, ck, mq, mk):
        if real is not None and q.dtype in half:
            return real.flash_attn_varlen_func(q, k, v, cq, ck, mq, mk)
        return shim_varlen(q, k, v, cq, ck)

    def dense_qkvpacked(qkv):
        if real is not None and qkv.dtype in half:
            return real.flash_attn_qkvpacked_func(qkv)
        return shim_qkvpacked(qkv)

    fa.flash_attn_varlen_qkvpacked_func = qkvpacked
    fa.flash_attn_varlen_kvpacked_func = kvpacked
    fa.flash_attn_varlen_func = separate
    fa.flash_attn_qkvpacked_func = dense_qkvpacked
    sys.modules["flash_attn"] = fa


def check_shims(device="cuda"):
    """The shims against dense equivalents; raises on disagreement. Not counted in SHIM_SECONDS."""
    timing, TIME_SHIMS[0] = TIME_SHIMS[0], False
    # The dense references run in full f32: with TF32 on (torch's default for cuDNN
    # convolutions) conv3d alone is off by ~1e-2 on these values.
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    g = torch.Generator(device=device).manual_seed(1)
    occupancy = torch.rand(2, 9, 9, 9, generator=g, device=device) < 0.4
    coords = occupancy.nonzero().int()
    cin, cout = 5, 7
    conv = ShimSubMConv3d(cin, cout, 3).to(device)
    torch.nn.init.normal_(conv.weight, generator=g)
    torch.nn.init.normal_(conv.bias, generator=g)
    feats = torch.randn(coords.shape[0], cin, generator=g, device=device)
    got = conv(ShimSparseConvTensor(feats, coords, [9, 9, 9], 2)).features
    dense = torch.zeros(2, cin, 9, 9, 9, device=device)
    c = coords.long()
    dense[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]] = feats
    ref = F.conv3d(dense, conv.weight.permute(0, 4, 1, 2, 3), conv.bias, padding=1)
    ref = ref[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]]
    err = (got - ref).abs().max().item()
    assert err < 1e-4, f"SubMConv3d shim differs from conv3d by {err}"

    lens_q, lens_k = [5, 9], [7, 3]
    q = torch.randn(sum(lens_q), 2, 16, generator=g, device=device)
    k = torch.randn(sum(lens_k), 2, 16, generator=g, device=device)
    v = torch.randn(sum(lens_k), 2, 16, generator=g, device=device)
    cu = lambda lens: torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), device=device)
    got = shim_varlen(q, k, v, cu(lens_q), cu(lens_k))
    mask = torch.zeros(sum(lens_q), sum(lens_k), dtype=torch.bool, device=device)
    mask[:5, :7] = True
    mask[5:, 7:] = True
    ref = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None],
                                         v.transpose(0, 1)[None], attn_mask=mask)[0].transpose(0, 1)
    err = (got - ref).abs().max().item()
    assert err < 1e-4, f"varlen attention shim differs from masked attention by {err}"
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    TIME_SHIMS[0] = timing


def install_plyfile_standin(report):
    """plyfile when importable; otherwise a stand-in that keeps the structured array save_ply
    builds as PATH.npy (the values are the same, only the container differs)."""
    try:
        import plyfile  # noqa: F401
        report["ply"] = "plyfile"
        return
    except ImportError:
        pass
    plyfile = types.ModuleType("plyfile")

    class PlyElement:
        @staticmethod
        def describe(data, name):
            return data

    class PlyData:
        def __init__(self, elements):
            self.elements = elements

        def write(self, path):
            np.save(path + ".npy", self.elements[0])

    plyfile.PlyElement, plyfile.PlyData = PlyElement, PlyData
    sys.modules["plyfile"] = plyfile
    report["ply"] = "save_ply's structured array (.npy), plyfile absent"


def install_rembg_stub():
    """An empty `rembg` (imported by trellis_image_to_3d.py at import time; only the no-alpha path
    of `preprocess_image` calls it, and the inputs here carry alpha)."""
    sys.modules.setdefault("rembg", types.ModuleType("rembg"))


def skip_package_inits(source_root, packages):
    """Register each dotted package as an empty module whose submodules load from
    source_root/<package path>: the official `__init__`s import every renderer, pipeline and
    representation with their heavy dependencies, the submodules we use do not."""
    for package in packages:
        module = types.ModuleType(package)
        module.__path__ = [os.path.join(str(source_root), *package.split("."))]
        sys.modules[package] = module


def build_dinov2(model_dir, dinov2_src):
    """The official DinoVisionTransformer (from the facebookresearch/dinov2 checkout dinov2_src)
    with the weights of model_dir/dinov2_vitl14_reg4_pretrain.safetensors (torch-hub names). Its
    shape is ViT-L/14 with 4 registers at 518², as torch.hub's `dinov2_vitl14_reg` builds it,
    unless model_dir/dinov2_vitl14_reg4_pretrain.json (written for tiny test models) says
    otherwise. Attention is dinov2's plain softmax path unless xformers is importable and
    XFORMERS_DISABLED is unset."""
    from safetensors.torch import load_file

    if str(dinov2_src) not in sys.path:
        sys.path.insert(0, str(dinov2_src))
    from dinov2.layers import MemEffAttention, NestedTensorBlock
    from dinov2.models.vision_transformer import DinoVisionTransformer

    model_dir = Path(model_dir)
    shape = dict(embed_dim=1024, depth=24, heads=16, mlp_ratio=4.0, patch_size=14, image_size=518,
                 register_tokens=4)
    spec = model_dir / "dinov2_vitl14_reg4_pretrain.json"
    if spec.exists():
        shape.update(json.loads(spec.read_text()))
    vit = DinoVisionTransformer(
        img_size=shape["image_size"], patch_size=shape["patch_size"], embed_dim=shape["embed_dim"],
        depth=shape["depth"], num_heads=shape["heads"], mlp_ratio=shape["mlp_ratio"],
        block_fn=partial(NestedTensorBlock, attn_class=MemEffAttention), init_values=1.0,
        ffn_layer="mlp", block_chunks=0, num_register_tokens=shape["register_tokens"],
        interpolate_antialias=True, interpolate_offset=0.0,
    )
    weights = load_file(str(model_dir / "dinov2_vitl14_reg4_pretrain.safetensors"))
    missing, unexpected = vit.load_state_dict(weights, strict=False)
    # TRELLIS uses neither the mask token nor the final norm; our file leaves them out.
    assert set(missing) <= {"mask_token", "norm.weight", "norm.bias"} and not unexpected, (missing, unexpected)
    return vit
