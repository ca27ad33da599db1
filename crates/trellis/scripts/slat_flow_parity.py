"""GPU parity and speed of splatforge-trellis' stage-2 flow (SLatFlowModel) and its sparse
ops against the official TRELLIS code (issue 12).

Usage (on the GPU machine, torch and safetensors importable):
    python3 crates/trellis/scripts/slat_flow_parity.py TRELLIS_DIR WORKDIR [tiny|full]

TRELLIS_DIR is a checkout of microsoft/TRELLIS (only its `trellis/` folder is imported, without
its package `__init__`, so the renderers' CUDA extensions are not needed), e.g.
    git -C /work/.mirror/microsoft+TRELLIS/repo archive HEAD trellis | tar -x -C /tmp/TRELLIS

1. spconv and flash-attn: used when importable. Otherwise plain-torch shims with the same
   semantics (official_shims.py, next to this script) are installed as `spconv.pytorch` (SubMConv3d with spconv 2's KRSC weight
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
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# The spconv / flash-attn shims, shared with the other reference scripts.
from official_shims import SHIM_SECONDS, check_shims, install_shims  # noqa: E402

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
    check_shims(DEV)
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
