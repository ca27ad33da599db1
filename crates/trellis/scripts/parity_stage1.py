"""Stage-1 parity of splatforge-trellis against the official TRELLIS and DINOv2 modules.

Input: the folder written by `cargo run --release -p splatforge-trellis --example stage1_parity
-- OUT ...` (random weights in the published layout under OUT/model, the inputs and our
outputs in OUT/stage1_io.safetensors, the input picture in OUT/input.png). This script builds
the official modules with the same arguments, loads the same weight files by their names and
runs each part on our inputs:

| part | official code | compared |
|---|---|---|
| preprocess | `TrellisImageTo3DPipeline.preprocess_image` (alpha path) | the 518² RGB, exact |
| DINOv2 | `DinoVisionTransformer(...)(pixels, is_training=True)["x_prenorm"]` + `F.layer_norm` | `dinov2.cond` |
| flow | `SparseStructureFlowModel(**args)(x, t, cond)` | `flow.v` |
| sampler | `FlowEulerGuidanceIntervalSampler(sigma_min).sample(...)` on our noise | `sampler.latent` |
| decoder | `SparseStructureDecoder(**args)(latent)` | `decoder.logits`, then `argwhere(> 0)` vs `coords` |

Tolerances (issue 12): max |a - b| / max |b| <= 1e-3 for f32 runs, 2e-2 for bf16/f16 runs.

Shims, each with the official semantics, so that only torch, numpy, pillow, safetensors,
torchvision, easydict and tqdm are needed (no spconv, flash-attn, xformers, rembg, kaolin):
* the `trellis` and `trellis.pipelines` package `__init__`s are skipped (they import every
  renderer and the pipelines' heavy dependencies); submodules load from the official files;
* `trellis.modules.utils` is replaced by the same helpers over the dense module types (the
  official file lists `sp.SparseConv3d` in FP16_MODULES, which imports spconv; stage 1 has no
  sparse module, so the conversion it does is unchanged);
* `rembg` is an empty module (only the no-alpha path of `preprocess_image` uses it);
* attention: `ATTN_BACKEND=sdpa` for TRELLIS, `XFORMERS_DISABLED=1` for DINOv2 (plain
  softmax attention).

Usage: python parity_stage1.py OUT --trellis PATH/TRELLIS --dinov2 PATH/dinov2 [--device cuda]
[--fp16]  (--fp16: the official models in their published `use_fp16` mode, for comparing our
f16/bf16 run; default f32 everywhere.) Exit status 0 when every part is within tolerance.

On the GPU machine (no network there: the two official checkouts travel in shared/):
    git -C <mirror of microsoft/TRELLIS> archive HEAD | tar -x -C shared/trellis-ref
    git -C <mirror of facebookresearch/dinov2> archive HEAD | tar -x -C shared/dinov2-ref
    cargo run --release -p splatforge-trellis --features cudnn --example stage1_parity -- /tmp/s1-f32 --size full --dtype f32
    python3 crates/trellis/scripts/parity_stage1.py /tmp/s1-f32 --trellis shared/trellis-ref --dinov2 shared/dinov2-ref
    cargo run --release -p splatforge-trellis --features cudnn --example stage1_parity -- /tmp/s1-bf16 --size full --dtype bf16
    python3 crates/trellis/scripts/parity_stage1.py /tmp/s1-bf16 --trellis shared/trellis-ref --dinov2 shared/dinov2-ref --fp16
"""

import argparse
import json
import os
import sys
import types
from pathlib import Path

os.environ.setdefault("ATTN_BACKEND", "sdpa")
os.environ.setdefault("XFORMERS_DISABLED", "1")

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import official_shims  # noqa: E402  (package skipping and the DINOv2 builder, shared)


def install_shims(trellis_root: Path) -> None:
    official_shims.skip_package_inits(trellis_root, ["trellis", "trellis.pipelines"])
    utils = types.ModuleType("trellis.modules.utils")
    dense = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)

    def convert_module_to_f16(module):
        if isinstance(module, dense):
            for p in module.parameters():
                p.data = p.data.half()

    def convert_module_to_f32(module):
        if isinstance(module, dense):
            for p in module.parameters():
                p.data = p.data.float()

    def zero_module(module):
        for p in module.parameters():
            p.detach().zero_()
        return module

    def scale_module(module, scale):
        for p in module.parameters():
            p.detach().mul_(scale)
        return module

    def modulate(x, shift, scale):
        return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)

    utils.FP16_MODULES = dense
    for f in (convert_module_to_f16, convert_module_to_f32, zero_module, scale_module, modulate):
        setattr(utils, f.__name__, f)
    sys.modules["trellis.modules.utils"] = utils
    official_shims.install_rembg_stub()


def relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    ours, ref = ours.double().cpu(), ref.double().cpu()
    return ((ours - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()


def load_checkpoint(cls, stem: Path, fp16: bool, device):
    spec = json.loads(stem.with_suffix(".json").read_text())
    assert spec["name"] == cls.__name__, spec["name"]
    args = dict(spec["args"], use_fp16=fp16 and spec["args"].get("use_fp16", False))
    model = cls(**args)
    missing, unexpected = model.load_state_dict(load_file(str(stem.with_suffix(".safetensors"))), strict=False)
    # pos_emb is a buffer the constructor computes; our files hold parameters only.
    assert set(missing) <= {"pos_emb"} and not unexpected, (missing, unexpected)
    return model.to(device).eval()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--trellis", type=Path, required=True, help="checkout of microsoft/TRELLIS")
    ap.add_argument("--dinov2", type=Path, required=True, help="checkout of facebookresearch/dinov2")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--fp16", action="store_true")
    a = ap.parse_args()
    install_shims(a.trellis)
    sys.path.insert(0, str(a.trellis))
    sys.path.insert(0, str(a.dinov2))
    from trellis.models.sparse_structure_flow import SparseStructureFlowModel
    from trellis.models.sparse_structure_vae import SparseStructureDecoder
    from trellis.pipelines.samplers import FlowEulerGuidanceIntervalSampler
    from trellis.pipelines.trellis_image_to_3d import TrellisImageTo3DPipeline

    dev = torch.device(a.device)
    io = load_file(str(a.out / "stage1_io.safetensors"))
    meta = json.loads((a.out / "stage1_io.json").read_text())
    tolerance = 2e-2 if meta["dtype"] in ("BF16", "F16") else 1e-3
    model_dir = a.out / "model"
    pipeline = json.loads((model_dir / "pipeline.json").read_text())["args"]
    report = {}

    with torch.no_grad():
        # preprocess_image on the same RGBA picture (exact: Pillow integer arithmetic).
        pipe = object.__new__(TrellisImageTo3DPipeline)
        ref_rgb = np.asarray(pipe.preprocess_image(Image.open(a.out / "input.png")), dtype=np.float32)
        ours_rgb = io["preprocess.rgb"].numpy()
        report["preprocess"] = {"max_abs": float(np.abs(ref_rgb - ours_rgb).max()), "differing_values": int((ref_rgb != ours_rgb).sum())}

        # DINOv2 with the shape our file describes (ViT-L/14-reg at full size).
        vit = official_shims.build_dinov2(model_dir, a.dinov2)
        vit = vit.to(dev).eval()
        feats = vit(io["dinov2.pixels"].to(dev), is_training=True)["x_prenorm"]
        cond = F.layer_norm(feats, feats.shape[-1:])
        report["dinov2"] = relative_error(io["dinov2.cond"], cond)

        flow = load_checkpoint(SparseStructureFlowModel, model_dir / pipeline["models"]["sparse_structure_flow_model"], a.fp16, dev)
        v = flow(io["flow.x"].to(dev), io["flow.t"].to(dev), io["flow.cond"].to(dev))
        report["flow"] = relative_error(io["flow.v"], v)

        s = meta["sampler"]
        sampler = FlowEulerGuidanceIntervalSampler(s["sigma_min"])
        our_cond = io["dinov2.cond"].to(dev)
        latent = sampler.sample(
            flow, io["sampler.noise"].to(dev), cond=our_cond, neg_cond=torch.zeros_like(our_cond),
            steps=s["steps"], rescale_t=s["rescale_t"], cfg_strength=s["cfg_strength"],
            cfg_interval=tuple(s["cfg_interval"]), verbose=False,
        ).samples
        report["sampler"] = relative_error(io["sampler.latent"], latent)

        decoder = load_checkpoint(SparseStructureDecoder, model_dir / pipeline["models"]["sparse_structure_decoder"], a.fp16, dev)
        logits = decoder(io["sampler.latent"].to(dev))
        report["decoder"] = relative_error(io["decoder.logits"], logits)
        ref_coords = torch.argwhere(logits > 0)[:, [0, 2, 3, 4]].cpu()
        ours = {tuple(r) for r in io["coords"].long().tolist()}
        ref = {tuple(r) for r in ref_coords.tolist()}
        report["coords"] = {"ours": len(ours), "official": len(ref), "only_ours": len(ours - ref), "only_official": len(ref - ours)}

    ok = all(report[k] <= tolerance for k in ("dinov2", "flow", "sampler", "decoder")) and report["preprocess"]["differing_values"] == 0
    report["tolerance"] = tolerance
    report["pass"] = bool(ok)
    print(json.dumps(report, indent=2))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
