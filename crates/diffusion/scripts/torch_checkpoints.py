"""Writes PyTorch checkpoints (torch.save) for splatforge-diffusion's loader tests.

Usage: python torch_checkpoints.py TINY_LDM_DIR OUT_DIR

* From the tiny LDM checkpoint that `splatforge models make-tiny` writes
  (TINY_LDM_DIR/sd-v2.1-base-4view-tiny.safetensors): the same state dict as
  `tiny.pt` (flat, as MVDream's sd-v2.1-base-4view.pt), `tiny.ckpt`
  ({"state_dict": ..., "global_step": ...}, as Stable Diffusion .ckpt files)
  and `tiny-fp16.pt`.
* `small.pt`, `small.ckpt`, `small-legacy.pt`: a handful of tensors covering
  dtypes, a transposed (non-contiguous) tensor and a storage offset; the test
  `tests/torch_checkpoints.rs` checks their values (committed as fixtures).
"""
import collections
import os
import sys

import torch
from safetensors.torch import load_file

inp, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)

sd = load_file(os.path.join(inp, "sd-v2.1-base-4view-tiny.safetensors"))
torch.save(sd, os.path.join(out, "tiny.pt"))
torch.save({"state_dict": sd, "global_step": 3}, os.path.join(out, "tiny.ckpt"))
torch.save({k: v.half() if v.is_floating_point() else v for k, v in sd.items()}, os.path.join(out, "tiny-fp16.pt"))

small = collections.OrderedDict()
small["a.f32"] = torch.arange(12, dtype=torch.float32).reshape(3, 4)
small["b.f16"] = (torch.arange(6, dtype=torch.float32) / 8).half().reshape(2, 3)
small["c.bf16"] = (torch.arange(4, dtype=torch.float32) - 1.5).bfloat16()
small["d.transposed"] = torch.arange(6, dtype=torch.float32).reshape(2, 3).t()
small["e.slice"] = torch.arange(10, dtype=torch.float32)[2:6]
small["f.i64"] = torch.tensor([1, 2, 3], dtype=torch.int64)
small["g.scalar"] = torch.tensor(4.5)
torch.save(small, os.path.join(out, "small.pt"))
torch.save({"state_dict": small, "epoch": 1}, os.path.join(out, "small.ckpt"))
torch.save(small, os.path.join(out, "small-legacy.pt"), _use_new_zipfile_serialization=False)
print("torch", torch.__version__)
for f in sorted(os.listdir(out)):
    print(f, os.path.getsize(os.path.join(out, f)))
