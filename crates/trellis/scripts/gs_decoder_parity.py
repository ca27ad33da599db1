"""GPU parity and speed of our Gaussian decoder against the official SLatGaussianDecoder
(issue 12), the Python half of crates/trellis/examples/gs_decoder_parity.rs.

Needs on the GPU machine: torch (CUDA), numpy, safetensors; the official sources as plain
folders on disk (no install): microsoft/TRELLIS (`--trellis`, the folder holding `trellis/`)
and EasternJournalist/utils3d at the commit TRELLIS' setup.sh pins, 9a4eb15e
(`--utils3d`, the folder holding `utils3d/`). plyfile is used when importable; otherwise a
stand-in keeps the structured array save_ply builds (`.npy`) instead of writing the PLY.

Shims: spconv and flash-attn are used when importable (flash-attn for half precision only: it has
no f32 kernels); otherwise the plain-torch shims of official_shims.py (next to this script) stand
in, checked against dense equivalents first, including the non-varlen
`flash_attn_qkvpacked_func` that `sparse_windowed_scaled_dot_product_self_attention` calls when
every window holds exactly `window_size` voxels (SDPA). The time spent in shims is reported alone
(`shim_ms`). The `trellis`, `trellis.models.structured_latent_vae` and `trellis.representations`
package __init__ files are skipped (they import the pipelines, renderers and mesh extraction and
their dependencies); every module the decoder uses is the official file, imported by path.

Steps, for DIR written by `gs_decoder_parity write DIR [--full]`:
  gs_decoder_parity run DIR --dtype f32   (ours; also --dtype f16)
  python3 gs_decoder_parity.py --trellis SRC --utils3d SRC DIR --dtype f32   (also f16)
It loads DIR/decoder.json's args into SLatGaussianDecoder (use_fp16 = dtype is f16),
`load_state_dict(load_file(DIR/decoder.safetensors))` (strict: every official name must be in
our file and nothing else), runs DIR/latent.safetensors, and compares
1. the network output (out_layer, f32) with DIR/ours_<dtype>.safetensors,
2. `representation.save_ply` of batch item 0 with DIR/ours_<dtype>.ply, property by property,
and times the official forward + save_ply. Bounds: relative ‖Δ‖₂/‖ref‖₂ ≤ 1e-3 (f32),
≤ 2e-2 (f16). One JSON line per result, then a Markdown table.
"""
import argparse
import importlib
import json
import os
import sys
import time

import numpy as np
import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import official_shims as shared  # noqa: E402  (the shared spconv / flash-attn / plyfile shims)


def install_shims(trellis_src, utils3d_src, report):
    os.environ.setdefault("ATTN_BACKEND", "sdpa")
    shared.install_shims(report)
    shared.check_shims("cuda")
    shared.install_plyfile_standin(report)
    sys.path.insert(0, utils3d_src)
    sys.path.insert(0, trellis_src)
    shared.skip_package_inits(trellis_src, ["trellis", "trellis.models.structured_latent_vae", "trellis.representations"])
    gaussian_model = importlib.import_module("trellis.representations.gaussian.gaussian_model")
    sys.modules["trellis.representations"].Gaussian = gaussian_model.Gaussian
    return importlib.import_module("trellis.models.structured_latent_vae.decoder_gs").SLatGaussianDecoder


def read_ply_rows(path):
    """The 17 float properties of save_ply's vertex rows (a PLY, or the stand-in's .npy)."""
    if os.path.exists(path + ".npy"):
        data = np.load(path + ".npy")
        return data.dtype.names, np.stack([data[n] for n in data.dtype.names], axis=1).astype(np.float32)
    raw = open(path, "rb").read()
    end = raw.index(b"end_header\n") + len(b"end_header\n")
    names = [l.split()[-1].decode() for l in raw[:end].splitlines() if l.startswith(b"property")]
    return tuple(names), np.frombuffer(raw[end:], dtype="<f4").reshape(-1, len(names))


def relative(ours, ref):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    diff = ours - ref
    return float(np.linalg.norm(diff) / max(np.linalg.norm(ref), 1e-30)), float(np.abs(diff).max() / max(np.abs(ref).max(), 1e-30))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("dir")
    parser.add_argument("--trellis", required=True)
    parser.add_argument("--utils3d", required=True)
    parser.add_argument("--dtype", choices=["f32", "f16"], default="f32")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    report = {}
    SLatGaussianDecoder = install_shims(os.path.abspath(args.trellis), os.path.abspath(args.utils3d), report)
    import trellis.modules.sparse as sp

    ckpt = json.load(open(os.path.join(args.dir, "decoder.json")))
    model_args = dict(ckpt["args"], use_fp16=args.dtype == "f16")
    model = SLatGaussianDecoder(**model_args)
    model.load_state_dict(load_file(os.path.join(args.dir, "decoder.safetensors")))
    model = model.cuda().eval()
    latent = load_file(os.path.join(args.dir, "latent.safetensors"))
    x = sp.SparseTensor(feats=latent["feats"].cuda(), coords=latent["coords"].int().cuda())

    captured = {}
    model.out_layer.register_forward_hook(lambda m, i, o: captured.__setitem__("out", o.feats.float().cpu()))
    ply_path = os.path.join(args.dir, f"official_{args.dtype}.ply")
    for stale in (ply_path, ply_path + ".npy"):
        if os.path.exists(stale):
            os.remove(stale)
    timings = []
    with torch.no_grad():
        for _ in range(args.repeat + 1):
            shared.SHIM_SECONDS[0] = 0.0
            torch.cuda.synchronize()
            t = time.perf_counter()
            reps = model(x)
            torch.cuda.synchronize()
            network = time.perf_counter() - t
            t = time.perf_counter()
            reps[0].save_ply(ply_path)
            timings.append((network, time.perf_counter() - t, shared.SHIM_SECONDS[0]))
    network, save, shim = (float(np.median([t[i] for t in timings[1:]])) * 1e3 for i in range(3))

    bound = 1e-3 if args.dtype == "f32" else 2e-2
    lines = []
    ours_out = load_file(os.path.join(args.dir, f"ours_{args.dtype}.safetensors"))["feats"]
    l2, mx = relative(ours_out.numpy(), captured["out"].numpy())
    lines.append(dict(kind="parity", what="network output", dtype=args.dtype, rel_l2=l2, rel_max=mx, bound=bound, passed=l2 <= bound))
    names, theirs = read_ply_rows(ply_path)
    our_names, ours = read_ply_rows(os.path.join(args.dir, f"ours_{args.dtype}.ply"))
    assert tuple(names) == tuple(our_names), (names, our_names)
    assert theirs.shape == ours.shape, (theirs.shape, ours.shape)
    groups = {"xyz": ["x", "y", "z"], "f_dc": ["f_dc_0", "f_dc_1", "f_dc_2"], "opacity": ["opacity"],
              "scale": ["scale_0", "scale_1", "scale_2"], "rot": ["rot_0", "rot_1", "rot_2", "rot_3"]}
    for group, cols in groups.items():
        idx = [names.index(c) for c in cols]
        l2, mx = relative(ours[:, idx], theirs[:, idx])
        lines.append(dict(kind="parity", what=f"ply {group}", dtype=args.dtype, rel_l2=l2, rel_max=mx, bound=bound, passed=l2 <= bound))
    lines.append(dict(kind="time", what="official forward (incl. shim)", dtype=args.dtype, ms=network,
                      voxels=int(x.feats.shape[0]), shim_ms=shim,
                      peak_memory_mib=torch.cuda.max_memory_allocated() / 2**20))
    lines.append(dict(kind="time", what="official save_ply", dtype=args.dtype, ms=save))
    lines.append(dict(kind="backends", **report))
    for line in lines:
        print(json.dumps(line))
    print("\n| check | dtype | rel L2 | rel max | bound | pass |\n|---|---|---|---|---|---|")
    for line in lines:
        if line["kind"] == "parity":
            print(f"| {line['what']} | {line['dtype']} | {line['rel_l2']:.2e} | {line['rel_max']:.2e} | {line['bound']:.0e} | {line['passed']} |")


if __name__ == "__main__":
    main()
