"""GPU parity and speed of our Gaussian decoder against the official SLatGaussianDecoder
(issue 12), the Python half of crates/trellis/examples/gs_decoder_parity.rs.

Needs on the GPU machine: torch (CUDA), numpy, safetensors; the official sources as plain
folders on disk (no install): microsoft/TRELLIS (`--trellis`, the folder holding `trellis/`)
and EasternJournalist/utils3d at the commit TRELLIS' setup.sh pins, 9a4eb15e
(`--utils3d`, the folder holding `utils3d/`). plyfile is used when importable; otherwise a
stand-in keeps the structured array save_ply builds (`.npy`) instead of writing the PLY.

Shims (plain torch, same semantics; nothing else of TRELLIS is replaced):
- flash_attn: `flash_attn_qkvpacked_func` and `flash_attn_varlen_qkvpacked_func`, the two
  calls of `sparse_windowed_scaled_dot_product_self_attention`, as torch SDPA over each
  sequence (sequences of equal length batched); their time is reported alone (`shim_ms`).
- spconv.pytorch.SparseConvTensor: a holder of features/indices; the decoder runs no sparse
  convolution, SparseTensor only stores its data there.
- the `trellis`, `trellis.models`, `trellis.models.structured_latent_vae` and
  `trellis.representations` package __init__ files are skipped (they import the pipelines,
  renderers and mesh extraction and their dependencies); the modules the decoder uses are the
  official files, imported by path.

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
import importlib.util
import json
import os
import sys
import time
import types

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

SHIM_SECONDS = [0.0]


def _sdpa_by_length(q, k, v, seq_lens):
    """q, k, v [M, H, C] holding sequences of `seq_lens` back to back → [M, H, C]."""
    out = torch.empty_like(q)
    starts = np.concatenate([[0], np.cumsum(seq_lens)[:-1]])
    lens = np.asarray(seq_lens)
    for length in np.unique(lens):
        idx = torch.as_tensor(
            (starts[lens == length][:, None] + np.arange(length)[None, :]).reshape(-1), device=q.device
        )
        n = idx.numel() // int(length)
        take = lambda t: t[idx].reshape(n, int(length), t.shape[1], t.shape[2]).transpose(1, 2)
        o = F.scaled_dot_product_attention(take(q), take(k), take(v))
        out[idx] = o.transpose(1, 2).reshape(-1, q.shape[1], q.shape[2])
    return out


def _timed(fn):
    def wrapper(*args, **kwargs):
        torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        torch.cuda.synchronize()
        SHIM_SECONDS[0] += time.perf_counter() - t
        return out

    return wrapper


@_timed
def flash_attn_qkvpacked_func(qkv):
    """[B, N, 3, H, C] → [B, N, H, C], softmax(q·kᵀ/√C)·v per batch item."""
    q, k, v = (t.transpose(1, 2) for t in qkv.unbind(dim=2))
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2)


@_timed
def flash_attn_varlen_qkvpacked_func(qkv, cu_seqlens, max_seqlen):
    """[M, 3, H, C] with sequence boundaries `cu_seqlens` → [M, H, C]."""
    seq_lens = (cu_seqlens[1:] - cu_seqlens[:-1]).cpu().numpy()
    q, k, v = qkv.unbind(dim=1)
    return _sdpa_by_length(q, k, v, seq_lens)


class SparseConvTensor:
    """The fields of spconv's SparseConvTensor that TRELLIS' SparseTensor reads and writes."""

    def __init__(self, features, indices, spatial_shape, batch_size, grid=None, voxel_num=None, indice_dict=None):
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


def install_shims(trellis_src, utils3d_src):
    flash_attn = types.ModuleType("flash_attn")
    flash_attn.flash_attn_qkvpacked_func = flash_attn_qkvpacked_func
    flash_attn.flash_attn_varlen_qkvpacked_func = flash_attn_varlen_qkvpacked_func
    sys.modules["flash_attn"] = flash_attn
    spconv = types.ModuleType("spconv")
    spconv_pytorch = types.ModuleType("spconv.pytorch")
    spconv_pytorch.SparseConvTensor = SparseConvTensor
    spconv.pytorch = spconv_pytorch
    sys.modules["spconv"] = spconv
    sys.modules["spconv.pytorch"] = spconv_pytorch
    try:
        import plyfile  # noqa: F401
    except ImportError:
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
    sys.path.insert(0, utils3d_src)
    sys.path.insert(0, trellis_src)
    for package in ["trellis", "trellis.models", "trellis.models.structured_latent_vae", "trellis.representations"]:
        module = types.ModuleType(package)
        module.__path__ = [os.path.join(trellis_src, *package.split("."))]
        sys.modules[package] = module
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
    SLatGaussianDecoder = install_shims(os.path.abspath(args.trellis), os.path.abspath(args.utils3d))
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
    timings = []
    with torch.no_grad():
        for _ in range(args.repeat + 1):
            SHIM_SECONDS[0] = 0.0
            torch.cuda.synchronize()
            t = time.perf_counter()
            reps = model(x)
            torch.cuda.synchronize()
            network = time.perf_counter() - t
            t = time.perf_counter()
            ply_path = os.path.join(args.dir, f"official_{args.dtype}.ply")
            reps[0].save_ply(ply_path)
            timings.append((network, time.perf_counter() - t, SHIM_SECONDS[0]))
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
                      voxels=int(x.feats.shape[0]), shim_ms=shim))
    lines.append(dict(kind="time", what="official save_ply", dtype=args.dtype, ms=save))
    for line in lines:
        print(json.dumps(line))
    print("\n| check | dtype | rel L2 | rel max | bound | pass |\n|---|---|---|---|---|---|")
    for line in lines:
        if line["kind"] == "parity":
            print(f"| {line['what']} | {line['dtype']} | {line['rel_l2']:.2e} | {line['rel_max']:.2e} | {line['bound']:.0e} | {line['passed']} |")


if __name__ == "__main__":
    main()
