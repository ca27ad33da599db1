"""BiRefNet parity: the official model, built from a checkout of ZhengPeng7/BiRefNet, against
ours (crates/matte/examples/matte_parity.rs) on the same random weights and picture.

    # here (or on the GPU machine with a CUDA build):
    matte_parity write DIR --model swin-t          # or swin-l
    matte_parity run DIR --dtype f32 --size 1024   # ours_fp32.safetensors
    matte_parity run DIR --dtype bf16 --size 1024  # ours_bf16.safetensors (CUDA build)
    # where PyTorch is:
    python3 crates/matte/scripts/birefnet_parity.py --src BIREFNET_CHECKOUT --dir DIR \
        --backbone swin_v1_t --size 1024

What it checks (exit status 1 when a check fails):
* the official `load_state_dict(strict=False)` of DIR/model.safetensors finds nothing unexpected and
  misses only the buffers our file leaves out (`relative_position_index`, `num_batches_tracked`);
* our network input (f32 run) equals the official preprocessing's (`transforms.Resize((S, S))` of the PIL
  image, `ToTensor`, `Normalize` with ImageNet's statistics) to 1e-5;
* logits on our input, relative error max|ours - official| / max|official|: f32 <= 1e-3 (TF32
  off), bf16 <= 2e-2 (official under `torch.autocast(dtype=torch.bfloat16)`, as inference.py);
* the matte (sigmoid, bilinear align_corners=True to the picture's size): max abs difference,
  reported.

The official code imports modules that only training uses (cv2, kornia's laplacian) and timm for
DropPath / to_2tuple / trunc_normal_; where they are missing, stand-ins that fail if called (or,
for timm, do what those three do in eval mode) are installed. einops must be the real package:
the decoder's patch split is part of what is checked.
"""
import argparse
import sys
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

LATERAL = {'swin_v1_l': [1536, 768, 384, 192], 'swin_v1_t': [768, 384, 192, 96]}
LIMITS = {'fp32': 1e-3, 'bf16': 2e-2}


def _training_only(name):
    def f(*a, **k):
        raise RuntimeError(f'{name} is a stand-in: only training calls it')
    return f


def install_stand_ins():
    def stub(name, **attrs):
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        sys.modules[name] = m
        return m

    try:
        import cv2  # noqa: F401
    except ImportError:
        stub('cv2')
    try:
        import kornia.filters  # noqa: F401
    except ImportError:
        k = stub('kornia')
        k.filters = stub('kornia.filters', laplacian=_training_only('kornia.filters.laplacian'))
    try:
        import timm.layers  # noqa: F401
    except ImportError:
        class DropPath(torch.nn.Module):
            def __init__(self, p=0.0):
                super().__init__()

            def forward(self, x):
                if self.training:
                    raise RuntimeError('DropPath stand-in: eval mode only')
                return x

        t = stub('timm')
        t.layers = stub('timm.layers', DropPath=DropPath,
                        to_2tuple=lambda x: x if isinstance(x, tuple) else (x, x),
                        trunc_normal_=torch.nn.init.trunc_normal_)
    import einops  # noqa: F401  (the real one)


def official_model(src, backbone):
    sys.path.insert(0, str(src))
    import config as cfgmod
    original = cfgmod.Config.__init__

    def patched(self):
        original(self)
        # config.py picks swin_v1_l; the lite model is the same Config with swin_v1_t.
        self.bb = backbone
        self.lateral_channels_in_collection = [c * 2 for c in LATERAL[backbone]]  # mul_scl_ipt == 'cat'
        self.cxt = self.lateral_channels_in_collection[1:][::-1][-self.cxt_num:]

    cfgmod.Config.__init__ = patched
    from models.birefnet import BiRefNet
    return BiRefNet(bb_pretrained=False)


def rel(ours, ref):
    return float((ours - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--src', required=True, type=Path, help='checkout of ZhengPeng7/BiRefNet')
    ap.add_argument('--dir', required=True, type=Path, help='matte_parity write/run folder')
    ap.add_argument('--backbone', default='swin_v1_l', choices=sorted(LATERAL))
    ap.add_argument('--size', type=int, default=1024)
    args = ap.parse_args()

    install_stand_ins()
    from PIL import Image
    from safetensors.torch import load_file
    from torchvision import transforms

    dev = 'cuda' if torch.cuda.is_available() else 'cpu'
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = official_model(args.src, args.backbone)
    missing, unexpected = model.load_state_dict(load_file(args.dir / 'model.safetensors'), strict=False)
    ok = True
    bad_missing = [k for k in missing if not k.endswith(('relative_position_index', 'num_batches_tracked'))]
    print(f'state dict: {len(missing)} buffers recomputed, unexpected {unexpected}, other missing {bad_missing}')
    ok &= not unexpected and not bad_missing
    model = model.eval().to(dev)

    image = Image.open(args.dir / 'input.png').convert('RGB')
    official_input = transforms.Compose([
        transforms.Resize((args.size, args.size)),
        transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])(image).unsqueeze(0)
    for tag, limit in LIMITS.items():
        path = args.dir / f'ours_{tag}.safetensors'
        if not path.exists():
            print(f'{tag}: no {path.name}, skipped')
            continue
        ours = load_file(path)
        d_in = float((ours['input'] - official_input).abs().max())
        x = ours['input'].to(dev)
        with torch.no_grad():
            if tag == 'bf16':
                with torch.autocast(device_type=dev, dtype=torch.bfloat16):
                    logits = model(x)[-1].float()
            else:
                logits = model(x)[-1].float()
            alpha = F.interpolate(logits.sigmoid(), size=image.size[::-1], mode='bilinear', align_corners=True)[0, 0]
        r = rel(ours['logits'].to(dev), logits)
        d_alpha = float((ours['alpha'].to(dev) - alpha).abs().max())
        # Our bf16 input is rounded to bf16; the input check is the f32 run's.
        passed = (tag != 'fp32' or d_in <= 1e-5) and r <= limit
        ok &= passed
        print(f'{tag}: input max|diff| {d_in:.2e}; logits relative {r:.3e} (limit {limit:g}); '
              f'matte max|diff| {d_alpha:.3e}; {"PASS" if passed else "FAIL"}')
    sys.exit(0 if ok else 1)


if __name__ == '__main__':
    main()
