"""torchvision's deform_conv2d against ours on the same tensors (issue 13).

Reads DIR/deform_k<K>_s<S>.safetensors written by `matte_parity ops DIR` (inputs x, offset,
mask, weight; our outputs ours_cpu, ours_f32, ours_bf16), runs torchvision.ops.deform_conv2d
on the GPU in f32 (TF32 off) as the reference, prints each of ours' relative error
(‖ours − ref‖₂ / ‖ref‖₂; bounds f32 1e-3, bf16 2e-2) and torchvision's time per call in f32,
f16 and bf16 (median of 10 after 2 warm-ups; BiRefNet's official half-precision run calls it
with half tensors), and writes DIR/deform_parity.json. Exit status 1 when a case is off.

    python3 crates/matte/scripts/deform_parity.py DIR
"""

import glob
import json
import os
import sys
import time

import torch
from safetensors.torch import load_file
from torchvision.ops import deform_conv2d


def rel(a, b):
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


def timed(fn):
    times = []
    for _ in range(12):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t) * 1e3)
    times = sorted(times[2:])
    return times[len(times) // 2]


def main():
    d = sys.argv[1]
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    rows, ok = [], True
    for path in sorted(glob.glob(os.path.join(d, "deform_k*_s*.safetensors"))):
        t = {k: v.cuda() for k, v in load_file(path).items()}
        k = t["weight"].shape[-1]
        pad = k // 2

        def run(dtype):
            return deform_conv2d(
                t["x"].to(dtype), t["offset"].to(dtype), t["weight"].to(dtype),
                padding=pad, mask=t["mask"].to(dtype))

        ref = run(torch.float32).float()
        row = {"case": os.path.basename(path)[len("deform_"):-len(".safetensors")],
               "shape": list(t["x"].shape), "kernel": k}
        for name, bound in [("ours_cpu", 1e-3), ("ours_f32", 1e-3), ("ours_bf16", 2e-2)]:
            err = rel(t[name], ref)
            row[name] = err
            ok &= err <= bound
        for dtype in (torch.float32, torch.float16):
            row[f"torchvision_ms_{str(dtype)[6:]}"] = timed(lambda: run(dtype))
        rows.append(row)
        print(f"{row['case']}: ours cpu {row['ours_cpu']:.2e}, gpu f32 {row['ours_f32']:.2e}, "
              f"bf16 {row['ours_bf16']:.2e} vs torchvision f32; torchvision ms "
              f"f32 {row['torchvision_ms_float32']:.3f}, f16 {row['torchvision_ms_float16']:.3f}", flush=True)
    with open(os.path.join(d, "deform_parity.json"), "w") as f:
        json.dump(rows, f, indent=1)
    print("PASS" if ok and rows else "FAIL")
    sys.exit(0 if ok and rows else 1)


if __name__ == "__main__":
    main()
