"""GPU parity and speed of splatforge-trellis' stage-2 flow (SLatFlowModel) and its sparse
ops against the official TRELLIS code (issue 12).

Usage (on the GPU machine, torch and safetensors importable):
    python3 crates/trellis/scripts/slat_flow_parity.py TRELLIS_DIR WORKDIR [tiny|full]

TRELLIS_DIR is a checkout of microsoft/TRELLIS (only its `trellis/` folder is imported, without
its package `__init__`, so the renderers' CUDA extensions are not needed), e.g.
    git -C /work/.mirror/microsoft+TRELLIS/repo archive HEAD trellis | tar -x -C /tmp/TRELLIS

1. spconv and flash-attn: used when importable. Otherwise plain-torch shims with the same
   semantics are installed as `spconv.pytorch` (SubMConv3d with spconv 2's KRSC weight
   [out, 3, 3, 3, in], cross-correlation over occupied neighbours) and `flash_attn` (the varlen
   functions, one SDPA call per batch item); each shim is first checked against a dense
   equivalent (torch conv3d on the zero-filled grid; attention with a block-diagonal mask) and the
   script stops if it disagrees. flash-attn has no f32 kernels, so f32 attention always takes the
   shim. Which backend ran is written to WORKDIR/reference.json.
2. Builds `ElasticSLatFlowModel` with the official args (`configs/generation/
   slat_flow_img_dit_L_64l8p2_fp16.json`, or a tiny variant), fills every parameter with seeded
   random values (the official init zeroes the adaLN, conv2 and output layers, which would hide
   errors) and saves the state dict by its official names as WORKDIR/slat_flow.safetensors (f32).
3. Two cases, each written to WORKDIR/io.safetensors: `equal` (two batch items with the same
   voxels: a sphere shell of the 64³ grid, as the CFG sampler's two passes) and `varlen` (two
   items with different voxel sets). Inputs x [N, 8], t [2] (×1000 as the sampler passes it),
   cond [2, 1374, 1024]; outputs in f32 (TF32 off) and with the fp16 torso (`use_fp16`).
4. Times the fp16 forward of the `equal` case (mean of 10 after 3 warm-ups); the time spent
   inside the shims during those forwards is measured on its own and reported.
5. The Rust side: `cargo run --release --features cuda -p splatforge-trellis --example
   slat_flow_parity -- WORKDIR` loads the same files, runs the same cases in f32 and bf16/f16 and
   prints relative errors (‖ours − ref‖₂ / ‖ref‖₂; goal f32 ≤ 1e-3, half ≤ 2e-2) and its times.
"""
import json
import math
import os
import sys
import time
import types

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
DEV = "cuda"

FULL_ARGS = dict(
    resolution=64, in_channels=8, out_channels=8, model_channels=1024, cond_channels=1024,
    num_blocks=24, num_heads=16, mlp_ratio=4, patch_size=2, num_io_res_blocks=2,
    io_block_channels=[128], pe_mode="ape", qk_rms_norm=True,
)
TINY_ARGS = dict(FULL_ARGS, model_channels=128, cond_channels=64, num_blocks=2, num_heads=2,
                 mlp_ratio=2, io_block_channels=[32])
COND_TOKENS = 1374  # DINOv2 ViT-L/14 with 4 registers at 518²: 1 + 4 + 37²


# ---- shims ---------------------------------------------------------------------------------

SHIM_SECONDS = [0.0]


def timed(f):
    """f, adding its GPU time to SHIM_SECONDS (synchronising around each call)."""
    def wrapper(*a, **k):
        torch.cuda.synchronize()
        start = time.perf_counter()
        out = f(*a, **k)
        torch.cuda.synchronize()
        SHIM_SECONDS[0] += time.perf_counter() - start
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


def install_shims(report):
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

    fa.flash_attn_varlen_qkvpacked_func = qkvpacked
    fa.flash_attn_varlen_kvpacked_func = kvpacked
    fa.flash_attn_varlen_func = separate
    sys.modules["flash_attn"] = fa


def check_shims():
    """The shims against dense equivalents; raises on disagreement."""
    g = torch.Generator(device=DEV).manual_seed(1)
    occupancy = torch.rand(2, 9, 9, 9, generator=g, device=DEV) < 0.4
    coords = occupancy.nonzero().int()
    cin, cout = 5, 7
    conv = ShimSubMConv3d(cin, cout, 3).to(DEV)
    torch.nn.init.normal_(conv.weight, generator=g)
    torch.nn.init.normal_(conv.bias, generator=g)
    feats = torch.randn(coords.shape[0], cin, generator=g, device=DEV)
    got = conv(ShimSparseConvTensor(feats, coords, [9, 9, 9], 2)).features
    dense = torch.zeros(2, cin, 9, 9, 9, device=DEV)
    c = coords.long()
    dense[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]] = feats
    ref = F.conv3d(dense, conv.weight.permute(0, 4, 1, 2, 3), conv.bias, padding=1)
    ref = ref[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]]
    err = (got - ref).abs().max().item()
    assert err < 1e-4, f"SubMConv3d shim differs from conv3d by {err}"

    lens_q, lens_k = [5, 9], [7, 3]
    q = torch.randn(sum(lens_q), 2, 16, generator=g, device=DEV)
    k = torch.randn(sum(lens_k), 2, 16, generator=g, device=DEV)
    v = torch.randn(sum(lens_k), 2, 16, generator=g, device=DEV)
    cu = lambda lens: torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), device=DEV)
    got = shim_varlen(q, k, v, cu(lens_q), cu(lens_k))
    mask = torch.zeros(sum(lens_q), sum(lens_k), dtype=torch.bool, device=DEV)
    mask[:5, :7] = True
    mask[5:, 7:] = True
    ref = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None],
                                         v.transpose(0, 1)[None], attn_mask=mask)[0].transpose(0, 1)
    err = (got - ref).abs().max().item()
    assert err < 1e-4, f"varlen attention shim differs from masked attention by {err}"


# ---- inputs ---------------------------------------------------------------------------------

def shell(batch, radius, centre, resolution=64):
    r = torch.arange(resolution, device=DEV)
    x, y, z = torch.meshgrid(r, r, r, indexing="ij")
    d = ((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2).float().sqrt()
    xyz = ((d - radius).abs() < 0.9).nonzero()
    return torch.cat([torch.full((xyz.shape[0], 1), batch, device=DEV), xyz], 1).int()


def randomise(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
            elif name.endswith(("norm1.weight", "norm2.weight", "gamma")):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def main():
    trellis_dir, workdir = sys.argv[1], sys.argv[2]
    size = sys.argv[3] if len(sys.argv) > 3 else "full"
    os.makedirs(workdir, exist_ok=True)
    os.environ.setdefault("ATTN_BACKEND", "sdpa")
    report = {"size": size}
    install_shims(report)
    check_shims()
    pkg = types.ModuleType("trellis")
    pkg.__path__ = [os.path.join(trellis_dir, "trellis")]
    sys.modules["trellis"] = pkg
    from trellis.models.structured_latent_flow import ElasticSLatFlowModel
    from trellis.modules import sparse as sp

    args = FULL_ARGS if size == "full" else TINY_ARGS
    model32 = ElasticSLatFlowModel(**args, use_fp16=False).to(DEV).eval()
    randomise(model32, 0)
    state = {k: v.detach().float().cpu().contiguous() for k, v in model32.state_dict().items()}
    save_file(state, os.path.join(workdir, "slat_flow.safetensors"))
    model16 = ElasticSLatFlowModel(**args, use_fp16=True).to(DEV).eval()
    model16.load_state_dict(state)
    report["args"] = args

    equal = torch.cat([shell(0, 20, (31, 32, 33)), shell(1, 20, (31, 32, 33))])
    varlen = torch.cat([shell(0, 20, (31, 32, 33)), shell(1, 13, (30, 36, 28))])
    g = torch.Generator(device=DEV).manual_seed(2)
    io = {}
    for case, coords in [("equal", equal), ("varlen", varlen)]:
        x = torch.randn(coords.shape[0], args["in_channels"], generator=g, device=DEV)
        t = torch.tensor([812.0, 305.0], device=DEV)
        cond = torch.randn(2, COND_TOKENS, args["cond_channels"], generator=g, device=DEV)
        with torch.no_grad():
            out32 = model32(sp.SparseTensor(x, coords), t, cond).feats
            out16 = model16(sp.SparseTensor(x, coords), t, cond).feats
        io.update({f"{case}.coords": coords.long().cpu(), f"{case}.x": x.cpu(), f"{case}.t": t.cpu(),
                   f"{case}.cond": cond.cpu(), f"{case}.out_f32": out32.float().cpu(),
                   f"{case}.out_f16": out16.float().cpu()})
        rel = ((out16.float() - out32).norm() / out32.norm()).item()
        report[f"{case}.voxels"] = coords.shape[0]
        report[f"{case}.official_f16_vs_f32_rel"] = rel
        print(f"{case}: {coords.shape[0]} voxels, official fp16 vs f32 relative error {rel:.3e}")
    save_file(io, os.path.join(workdir, "io.safetensors"))

    x = io["equal.x"].to(DEV)
    st = sp.SparseTensor(x, equal)
    t, cond = io["equal.t"].to(DEV), io["equal.cond"].to(DEV)
    with torch.no_grad():
        for _ in range(3):
            model16(st, t, cond)
        torch.cuda.synchronize()
        SHIM_SECONDS[0] = 0.0
        start = time.perf_counter()
        for _ in range(10):
            model16(st, t, cond)
        torch.cuda.synchronize()
    report["official_f16_forward_ms"] = (time.perf_counter() - start) / 10 * 1e3
    report["of_which_in_shims_ms"] = SHIM_SECONDS[0] / 10 * 1e3
    report["peak_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(report, indent=1))
    with open(os.path.join(workdir, "reference.json"), "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
