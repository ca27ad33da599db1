#!/usr/bin/env python3
"""The Python chain 404's base miner and TRELLIS' users run, timed stage by stage beside ours
(issue 13: text → PLY and image → PLY on the same H100, same steps, as a ratio ours/chain).

The chain, per run (models loaded once; one warm-up run, then --repeat timed runs):
1. text → picture (skipped with --image FILE, which is read and decoded instead: stage
   `decode`): diffusers' `FluxPipeline.from_pretrained(--flux, torch_dtype=bfloat16)` on the
   device, called as FLUX.1-schnell's model card does: `pipe(prompt, height=side, width=side,
   guidance_scale=0.0, num_inference_steps=steps, max_sequence_length=256,
   generator=torch.Generator("cpu").manual_seed(seed)).images[0]` (a PIL image). Stages:
   `flux_text` (the call up to the end of `encode_prompt`: CLIP + T5), `flux` (from there to the
   last denoising step's `callback_on_step_end`: latents, timesteps, the transformer steps),
   `flux_decode` (the rest: unpack, VAE decode, to PIL). Times are read with
   torch.cuda.synchronize around `encode_prompt` (wrapped on the instance) and in the step
   callback; the call itself is diffusers' own.
2. matte: the official BiRefNet (ZhengPeng7/BiRefNet sources from --birefnet-src, built as
   crates/matte/scripts/birefnet_parity.py builds it: Swin-L for `--matte birefnet`, Swin-T for
   `birefnet_lite`) with the weights of `<--trellis>/<matte>/model.safetensors` (the folder
   `splatforge models make-random --family trellis --size full` writes; strict names, only the
   recomputed buffers may be missing), as 404's base miner runs it: `.eval().half()` (fp16; or
   --matte-dtype bf16, the precision of our profiles), input `ToTensor` + ImageNet `Normalize`
   after `Resize((S, S))` with S = --matte-side (1024, ours; 0: the picture's own size, as the
   base miner's BiRefNet_dynamic is fed), `model(x)[-1].sigmoid()`, `ToPILImage`, PIL `resize`
   back to the picture's size, `putalpha`. The base miner's second remover (BEN2) and its VLM
   pick between the two are not run.
3. TRELLIS: the official `TrellisImageTo3DPipeline.run(rgba, seed=seed, formats=['gaussian'],
   preprocess_image=True)` (loaded as tools/trellis_reference.py loads it, through
   tools/official_trellis.py: shims for spconv / flash-attn, SDPA attention, DINOv2 from local
   sources; same stage names: preprocess (its crop by the matte's alpha, 518²), dinov2,
   sparse_structure, ss_decoder, slat, gs_decoder), then `Gaussian.save_ply` to a temporary
   file (`write`). One seed drives FLUX's generator and TRELLIS' `torch.manual_seed`, as ours.
   The base miner's extra rotation of the Gaussians before save_ply is not run.

Imports are ordered on purpose: diffusers and the FLUX models load before the TRELLIS shims are
installed (the shims put module objects without a spec under `flash_attn`, which
`importlib.util.find_spec`, used by diffusers' and transformers' availability checks, rejects),
and BiRefNet's top-level modules (`config`, `models`, …) are taken out of sys.modules again once
it is built.

--ours FILE (repeatable): `splatforge generate --prompt … --json --repeat N` (or `--image`) JSON
lines; the first line is taken as its warm-up (as trellis_reference.py does). Adds a table per
file: ours and chain medians per stage where names match, the total, and ours/chain. Without
--ss-steps / --slat-steps, the first file's TRELLIS steps are run; the text FLUX sees is that
file's `flux_prompt` (our profile's template filled in) when its `prompt` is --prompt (the cost
does not depend on the text: both encoders run on padded sequences).

Reported (--json OUT and stdout): per-run stages and totals, medians and p90, load times,
voxels and Gaussians per run, the matte's coverage, peak torch.cuda.max_memory_allocated
(reset after every model is loaded) and the memory allocated by the loaded models.

Usage (GPU; tools/gpu-suite.sh's `python-chain` suite runs it, see tools/gpu-python-chain.sh):
    python3 tools/python_chain_reference.py --flux /tmp/flux-full --trellis /tmp/trellis-text-1024 \\
        --prompt "a red chair" --side 1024 --steps 4 --seed 42 --repeat 2 --matte birefnet \\
        --ours text-1024.jsonl --json chain-text-1024.json
    python3 tools/python_chain_reference.py --image /tmp/photo_1024.png --trellis /tmp/trellis-photo \\
        --repeat 2 --ours image-quality.jsonl --json chain-image.json
The folders must be full size (the official BiRefNet has no tiny configuration).
"""
import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

# official_trellis sets ATTN_BACKEND / XFORMERS_DISABLED before anything official is imported;
# it installs no shim by itself.
sys.path.insert(0, str(Path(__file__).resolve().parent))
import official_trellis as ot  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = ot.ROOT
FLUX_STAGES = ["flux_text", "flux", "flux_decode"]
BACKBONES = {"birefnet": "swin_v1_l", "birefnet_lite": "swin_v1_t"}
# BiRefNet's top-level modules (its checkout is a flat source tree, not a package).
BIREFNET_MODULES = ("config", "dataset", "image_proc", "utils", "models")


class Flux:
    """diffusers' FluxPipeline, called as FLUX.1-schnell's model card does, with its three stages
    timed (see the module docs)."""

    def __init__(self, path, device, report):
        from diffusers import FluxPipeline
        import diffusers
        import transformers

        report["diffusers"] = diffusers.__version__
        report["transformers"] = transformers.__version__
        self.device = device
        ot.sync(device)
        start = time.perf_counter()
        self.pipe = FluxPipeline.from_pretrained(str(path), torch_dtype=torch.bfloat16)
        self.pipe.to(device)
        ot.sync(device)
        report["flux_load_ms"] = (time.perf_counter() - start) * 1e3
        report["flux_precision"] = "bf16 (torch_dtype=torch.bfloat16: transformer, T5, CLIP, VAE)"
        self.pipe.set_progress_bar_config(disable=True)
        self.marks = {}
        inner = self.pipe.encode_prompt

        def encode_prompt(*args, **kwargs):
            out = inner(*args, **kwargs)
            ot.sync(device)
            self.marks["text_end"] = time.perf_counter()
            return out

        # An instance attribute (not in the pipeline's config, so DiffusionPipeline.__setattr__
        # stores it plainly): __call__'s `self.encode_prompt(...)` finds it first.
        self.pipe.encode_prompt = encode_prompt

    def step_end(self, pipe, i, t, callback_kwargs):
        ot.sync(self.device)
        self.marks["last_step"] = time.perf_counter()
        self.marks["steps"] = i + 1
        return callback_kwargs

    def __call__(self, prompt, side, steps, seed, max_sequence_length):
        """(PIL image, {stage: ms})."""
        self.marks = {}
        generator = torch.Generator("cpu").manual_seed(seed)
        ot.sync(self.device)
        start = time.perf_counter()
        image = self.pipe(prompt=prompt, height=side, width=side, guidance_scale=0.0,
                          num_inference_steps=steps, max_sequence_length=max_sequence_length,
                          generator=generator, callback_on_step_end=self.step_end).images[0]
        # A PIL image: the device work is done.
        end = time.perf_counter()
        assert self.marks.get("steps") == steps, f"ran {self.marks.get('steps')} steps, asked {steps}"
        text_end, last = self.marks["text_end"], self.marks["last_step"]
        return image, {"flux_text": (text_end - start) * 1e3, "flux": (last - text_end) * 1e3,
                       "flux_decode": (end - last) * 1e3}


class BiRefNetMatte:
    """The official BiRefNet with our random weights, run as 404's base miner runs it."""

    def __init__(self, trellis_dir, which, src, device, dtype, side, report):
        from safetensors.torch import load_file
        from torchvision import transforms

        sys.path.insert(0, str(ROOT / "crates" / "matte" / "scripts"))
        import birefnet_parity

        birefnet_parity.install_stand_ins()
        weights = trellis_dir / which / "model.safetensors"
        ot.sync(device)
        start = time.perf_counter()
        model = birefnet_parity.official_model(src, BACKBONES[which])
        missing, unexpected = model.load_state_dict(load_file(str(weights)), strict=False)
        bad = [k for k in missing if not k.endswith(("relative_position_index", "num_batches_tracked"))]
        if unexpected or bad:
            raise SystemExit(f"{weights}: unexpected {unexpected[:5]}, missing {bad[:5]} (not BiRefNet {BACKBONES[which]}?)")
        self.dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
        self.model = model.eval().to(device).to(self.dtype)
        ot.sync(device)
        report["matte_load_ms"] = (time.perf_counter() - start) * 1e3
        # Built: BiRefNet's flat top-level modules leave sys.modules (the model holds what it
        # uses) and its checkout leaves sys.path, so that nothing imported later finds them.
        for name in list(sys.modules):
            if name.split(".")[0] in BIREFNET_MODULES and str(src) in str(getattr(sys.modules[name], "__file__", "") or ""):
                del sys.modules[name]
        sys.path[:] = [p for p in sys.path if Path(p).resolve() != Path(src).resolve()]
        report["matte_model"] = f"{which} ({BACKBONES[which]}), {dtype} (model.{'half' if dtype == 'fp16' else 'to(bfloat16)'}())"
        report["matte_input"] = f"Resize(({side}, {side}))" if side else "the picture's own size"
        self.device = device
        self.to_pil = transforms.ToPILImage()
        steps = [transforms.Resize((side, side))] if side else []
        self.transform = transforms.Compose(steps + [
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ])

    def __call__(self, image):
        """(RGBA image, {coverage, finite})."""
        rgb = image.convert("RGB")
        x = self.transform(rgb).unsqueeze(0).to(self.device).to(self.dtype)
        with torch.no_grad():
            pred = self.model(x)[-1].sigmoid().float().cpu()
        pred = pred[0].squeeze()
        mask = self.to_pil(pred).resize(rgb.size)
        rgb.putalpha(mask)
        alpha = np.asarray(mask)
        return rgb, {"finite": bool(torch.isfinite(pred).all()), "foreground": float((alpha > 0.8 * 255).mean()),
                     "opaque": bool((alpha == 255).all())}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--flux", type=Path, help="diffusers-layout FLUX.1-schnell folder (model_index.json)")
    ap.add_argument("--trellis", type=Path, required=True,
                    help="TRELLIS folder in the official layout, with birefnet/ and birefnet_lite/ inside")
    ap.add_argument("--prompt", default="a red chair")
    ap.add_argument("--side", type=int, default=1024, choices=[512, 1024], help="FLUX's picture side")
    ap.add_argument("--steps", type=int, default=4, help="FLUX steps")
    ap.add_argument("--max-sequence-length", type=int, default=256, help="T5 tokens")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--repeat", type=int, default=2, help="timed runs after one warm-up run (0: the first run only)")
    ap.add_argument("--matte", default="birefnet", choices=sorted(BACKBONES))
    ap.add_argument("--matte-dtype", default="fp16", choices=["fp16", "bf16"], help="fp16: the base miner's .half()")
    ap.add_argument("--matte-side", type=int, default=1024, help="BiRefNet's input side (0: the picture's own)")
    ap.add_argument("--image", type=Path, help="start from this picture (image → PLY): no FLUX")
    ap.add_argument("--ss-steps", type=int, help="stage-1 sampler steps (default: the first --ours file's, else pipeline.json)")
    ap.add_argument("--slat-steps", type=int, help="stage-2 sampler steps (default: as --ss-steps)")
    ap.add_argument("--json", type=Path, help="write the report here")
    ap.add_argument("--ours", type=Path, action="append", default=[],
                    help="`splatforge generate --json --repeat N` output to compare with (repeatable)")
    ap.add_argument("--save-views", type=Path, help="write the last run's FLUX picture and RGBA cut-out here")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--trellis-src", type=Path, default=ROOT / ".gpu-ref" / "trellis-ref", help="folder holding the official trellis/")
    ap.add_argument("--dinov2-src", type=Path, default=ROOT / ".gpu-ref" / "dinov2-ref", help="folder holding dinov2/")
    ap.add_argument("--utils3d-src", type=Path, default=ROOT / ".gpu-ref" / "utils3d", help="folder holding utils3d/")
    ap.add_argument("--birefnet-src", type=Path, default=ROOT / ".gpu-ref" / "birefnet-ref", help="ZhengPeng7/BiRefNet checkout")
    a = ap.parse_args()
    assert a.repeat >= 0
    if (a.flux is None) == (a.image is None):
        ap.error("give --flux (text → PLY) or --image (image → PLY)")
    device = torch.device(a.device)
    ours_runs = [(path, ot.read_ours(path)) for path in a.ours]
    if ours_runs:
        first = ours_runs[0][1][-1]
        a.ss_steps = a.ss_steps or first["sparse_structure_sampler"]["steps"]
        a.slat_steps = a.slat_steps or first["slat_sampler"]["steps"]
    flux_prompt = a.prompt
    for _, runs in ours_runs:
        if runs[-1].get("prompt") == a.prompt and runs[-1].get("flux_prompt"):
            flux_prompt = runs[-1]["flux_prompt"]
            break
    model_dir = a.trellis.resolve()
    stages = (FLUX_STAGES if a.image is None else ["decode"]) + ["matte"] + ot.STAGES
    report = {"chain": "text" if a.image is None else "image", "trellis_models": str(model_dir),
              "flux_models": None if a.flux is None else str(a.flux.resolve()),
              "image": None if a.image is None else str(a.image), "device": a.device,
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
              "torch": torch.__version__, "seed": a.seed, "stages": stages}
    if a.image is None:
        report.update(prompt=a.prompt, flux_prompt=flux_prompt, side=a.side, flux_steps=a.steps,
                      guidance_scale=0.0, max_sequence_length=a.max_sequence_length,
                      generator="torch.Generator('cpu').manual_seed(seed)")

    # 1. FLUX first: diffusers must be imported before the TRELLIS shims (see the module docs).
    flux = Flux(a.flux, device, report) if a.image is None else None
    # 2. BiRefNet.
    matte = BiRefNetMatte(model_dir, a.matte, a.birefnet_src.resolve(), device, a.matte_dtype, a.matte_side, report)
    # 3. TRELLIS.
    ot.official_shims.TIME_SHIMS[0] = False
    Pipeline = ot.import_official(a.trellis_src.resolve(), a.utils3d_src.resolve(), report)
    ot.official_shims.check_shims(a.device)
    report["attention_dense"] = "torch SDPA (ATTN_BACKEND=sdpa)"
    report["attention_dinov2"] = "dinov2 plain softmax attention (no xformers)"

    with tempfile.TemporaryDirectory() as tmp:
        view = Path(tmp) / "model"
        view.mkdir()
        pipeline, _ = ot.load_pipeline(Pipeline, model_dir, view, device, a.dinov2_src.resolve(), report)
        report["trellis_load_ms"] = report.pop("load_ms")
        report["load_ms"] = sum(report.get(k, 0.0) for k in ("flux_load_ms", "matte_load_ms", "trellis_load_ms"))
        if device.type == "cuda":
            report["loaded_memory_bytes"] = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
        timer = ot.time_stages(pipeline, device)
        ss_params = {} if a.ss_steps is None else {"steps": a.ss_steps}
        slat_params = {} if a.slat_steps is None else {"steps": a.slat_steps}
        report["sparse_structure_sampler"] = {**pipeline.sparse_structure_sampler_params, **ss_params}
        report["slat_sampler"] = {**pipeline.slat_sampler_params, **slat_params}

        runs = []
        for i in range(a.repeat + 1):
            seed = a.seed + max(i - 1, 0)
            ms = {}
            ot.sync(device)
            start = time.perf_counter()
            if flux is not None:
                picture, flux_ms = flux(flux_prompt, a.side, a.steps, seed, a.max_sequence_length)
                ms.update(flux_ms)
            else:
                picture = Image.open(a.image)
                picture.load()
                ms["decode"] = (time.perf_counter() - start) * 1e3
            t = time.perf_counter()
            rgba, matte_info = matte(picture)
            ms["matte"] = (time.perf_counter() - t) * 1e3
            if not matte_info["finite"] or matte_info["foreground"] == 0.0 or matte_info["opaque"]:
                raise SystemExit(f"run {i}: the matte leaves TRELLIS' crop nothing to work with ({matte_info}; "
                                 "non-finite: try --matte-dtype bf16); the official preprocess_image would fail")
            timer.run = {}
            out = pipeline.run(rgba, seed=seed, formats=["gaussian"], preprocess_image=True,
                               sparse_structure_sampler_params=ss_params, slat_sampler_params=slat_params)
            gaussian = out["gaussian"][0]
            t = time.perf_counter()
            gaussian.save_ply(str(Path(tmp) / "out.ply"))
            ot.sync(device)
            end = time.perf_counter()
            ms.update(ot.stage_ms(timer.run, end - t))
            run = {"seed": seed, "total_ms": (end - start) * 1e3, "stages_ms": {s: ms[s] for s in stages},
                   "matte": matte_info, "voxels": int(timer.returned["stage1_total"].shape[0]),
                   "gaussians": int(gaussian.get_xyz.shape[0])}
            (runs if i > 0 else report.setdefault("warm_up", [])).append(run)
            print(f"run {i} ({'warm-up' if i == 0 and a.repeat else 'timed'}), seed {seed}: {run['total_ms']:.0f} ms, "
                  f"{run['voxels']} voxels, matte foreground {matte_info['foreground']:.3f}", flush=True)
        if a.save_views is not None:
            a.save_views.mkdir(parents=True, exist_ok=True)
            if flux is not None:
                picture.save(a.save_views / "flux.png")
            rgba.save(a.save_views / "rgba.png")

    runs = runs or report["warm_up"]
    report["runs"] = runs
    report["summary"] = ot.summarise(runs, stages)
    report["voxels"] = [r["voxels"] for r in runs]
    report["gaussians"] = runs[-1]["gaussians"]
    report.update(ot.memory_figures(device))
    if a.json:
        a.json.write_text(json.dumps(report, indent=1))

    mib = lambda b: "-" if b is None else f"{b / 2**20:.0f} MiB"  # noqa: E731
    what = (f"text → PLY: FLUX {a.side}², {a.steps} steps" if flux is not None else f"image → PLY: {a.image}")
    runs_said = f"{a.repeat} runs after a warm-up" if a.repeat else "1 run (no warm-up)"
    print(f"\nPython chain ({what}; {report['matte_model']}; official TRELLIS) on {report['device_name']} "
          f"(torch {report['torch']}), {runs_said}; load {report['load_ms'] / 1e3:.1f} s "
          f"(FLUX {report.get('flux_load_ms', 0) / 1e3:.1f}, matte {report['matte_load_ms'] / 1e3:.1f}, "
          f"TRELLIS {report['trellis_load_ms'] / 1e3:.1f}); models {mib(report.get('loaded_memory_bytes'))}, "
          f"peak {mib(report['peak_memory_bytes'])}; voxels {report['voxels']}")
    print(f"TRELLIS backends: conv {report['conv']}; sparse attention {report['attention']}; "
          f"{report['attention_dense']}; precision {report['precision']}; samplers "
          f"{report['sparse_structure_sampler'].get('steps')} + {report['slat_sampler'].get('steps')} steps")
    print("\n| stage | median ms | p90 ms |\n|---|---:|---:|")
    for s, v in report["summary"].items():
        print(f"| {s} | {v['median_ms']:.1f} | {v['p90_ms']:.1f} |")
    for path, ours in ours_runs:
        compare(path, ours, report, stages)


def compare(path, ours, report, stages):
    """ours/chain per stage (medians), from our --json lines and this run's report."""
    last = ours[-1]
    print(f"\nours from {path}: {len(ours)} runs on {last['device']} (profile {last['profile']}, matte {last.get('matte')}), "
          f"voxels {[r['voxels'] for r in ours]}; chain voxels {report['voxels']} "
          "(random weights, different pictures or noise: counts differ, and stage 2 follows them)")
    names = stages + [s for s in last["stages_ms"] if s not in stages] + ["total"]
    ot.print_stage_table(ours, report, names, "chain")


if __name__ == "__main__":
    main()
