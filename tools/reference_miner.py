#!/usr/bin/env python3
"""The 404 reference miner's text → 3D (404-Repo/three-gen-subnet `generation/`: DreamGaussian +
MVDream SDS), run with its own code as its serve.py runs it, timed beside ours (issue 18).

Nothing of the miner is in this repository: tools/three-gen-ref.sh extracts it (MIT) into the
git-ignored .gpu-ref/three-gen/generation, and this script imports it from there (--generation).

What runs, as serve.py does: `ModelsPreLoader.preload_model(opt, "cuda")` once (stage `load`:
`MVDream` → mvdream's `build_model("sd-v2.1-base-4view")`: the LDM model from
`configs/sd-v2-base.yaml`, `torch.load` of the checkpoint, `load_state_dict` strict, `.to(cuda)`,
fp32), then per request `GaussianProcessor(opt, prompt)` (stage `init`: the random ball, the
renderer), `.train(models, opt.iters)` (`text_encode`: `get_text_embeds` of the prompt and the
negative prompt inside `_prepare_training_model`, which is otherwise counted in `init`; `train`:
the iteration loop and the last prune) and `get_gs_model().save_ply(BytesIO)` (`export`). `sds`
is text_encode + train (ours encodes the text inside its sds stage), `total` all four.
Configurations (--variant, repeatable; default both):
* `text_mv`: configs/text_mv.yaml as shipped (iters 1000, batch_size 1, num_pts 5000, …);
* `fast`: the seeds' `text_mv_fast.yaml` (../shared/seeds/001_*): text_mv.yaml with iters 250,
  ref_size 128, guidance_scale 50, batch_size 4, num_pts 4000. The miner reads neither
  ref_size (it sizes only the image-prompt camera) nor guidance_scale (train_step's CFG stays 100)
  on the text path; they are set as the seeds set them and cost nothing either way.
--iters N overrides iters in every variant (a short smoke run; step_ratio follows it).

Weights: full-size random (speed does not depend on the values). With --write-checkpoint and no
--checkpoint file yet, the official model is built from its own config with torch's default
initialisation and its state_dict saved there (torch.save, fp32, ~5.2 GB; the layout the
miner's strict load_state_dict takes by construction); ours runs on
`splatforge models make-random` weights (same architecture).

Shims (each recorded under "shims" in the JSON; none but the last two touches the timed loop):
* `hf_hub_download` in mvdream.model_zoo returns --checkpoint instead of downloading
  MVDream/MVDream's sd-v2.1-base-4view.pt (load stage: the same torch.load of a same-size file);
* open_clip's `create_model_and_transforms(..., pretrained="laion2b_s32b_b79k")` gets
  pretrained=None (no download; the text tower's weights come from the checkpoint, as before);
* `DDIMScheduler.from_pretrained("stabilityai/stable-diffusion-2-1-base", subfolder="scheduler")`
  gives `DDIMScheduler.from_config` of that scheduler_config.json's values (unused by
  train_step, which noises with the LDM's own q_sample);
* modules imported at the top but unused on the text path, stubbed only when they do not import
  here: rembg (image prompts), cv2, ImageDream / SD / Zero123 utils (other configs), and
  pkg_resources (mvdream's config lookup; a stand-in with resource_filename);
* xformers (--attention xformers-sdpa, default): the miner's requirements pin xformers 0.0.23,
  and MVDream's attention and VAE attention blocks use `xformers.ops.memory_efficient_attention`
  when it imports; no xformers wheel matches this torch, so a stand-in module routes that call to
  torch's scaled_dot_product_attention (the same fused memory-efficient kernels). Timed path:
  without it (--attention plain) the miner's fallback, einsum + softmax in fp32, is slower;
* batch fix (only for batch_size > 1): in GaussianProcessor._train_step the block from
  `images = torch.cat(images, dim=0)` to the densification is indented inside the
  `for _ in range(batch_size)` loop, so the second pass calls `.append` on a tensor and the
  official code raises AttributeError at every batch_size > 1 (DreamGaussian upstream has the
  block after the loop). The source is compiled with that block dedented one level: 4 orbits are
  rendered, then one SDS step on the 16 renders, one backward, one Adam step, densification as
  upstream. --no-batch-fix runs the shipped code (and fails at batch_size > 1).

The warm-up request runs --warm-up-iters iterations (default 10: every render size of the
128/256/512 schedule, gsplat's kernels, cuDNN's plans), then --repeat full requests are timed.
Reported (--json OUT and stdout), per variant: per-run stages and totals, medians and p90, ms per
iteration, the load time, Gaussians at the end, peak torch.cuda.max_memory_allocated (reset after
the models are loaded). --ours VARIANT=FILE (repeatable): `splatforge generate --prompt …
--profile reference-fast --json --repeat N` lines (the first one taken as its warm-up, as the
other reference scripts do); adds the ours/theirs table per stage where names match and total,
one per file (ours in fp32 and in fp16, say).

Without a GPU, --import-only installs the shims and imports the official code, and --cpu-check
(with --write-checkpoint) also writes the random checkpoint, runs the miner's preload on the CPU,
its text encoder and one SDS train_step with its gradient (needs torch and the wheels there).

Usage (GPU; tools/gpu-suite.sh's `reference-miner` suite runs it, see tools/gpu-reference-miner.sh):
    python3 tools/reference_miner.py --checkpoint /tmp/mvdream-ref/sd-v2.1-base-4view.pt \\
        --write-checkpoint --variant fast --variant text_mv --repeat 2 \\
        --ours fast=fast.jsonl --ours text_mv=text_mv.jsonl --json reference.json
    python3 tools/reference_miner.py --checkpoint … --variant fast --iters 5 --repeat 1   # smoke
"""
import argparse
import importlib
import importlib.machinery
import importlib.util
import io
import json
import os
import platform
import sys
import time
import types
from pathlib import Path

# official_trellis: the shared median / table helpers (it installs no shim by itself).
sys.path.insert(0, str(Path(__file__).resolve().parent))
import official_trellis as ot  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = ot.ROOT
DEFAULT_GENERATION = ROOT / ".gpu-ref" / "three-gen" / "generation"
VARIANTS = {
    "text_mv": {},
    "fast": {"iters": 250, "ref_size": 128, "guidance_scale": 50, "batch_size": 4, "num_pts": 4000},
}
# Our profiles with the same settings (profiles/reference-*.yaml).
OUR_PROFILES = {"text_mv": "reference-text-mv", "fast": "reference-fast"}
STAGES = ["init", "text_encode", "train", "sds", "export"]
# stabilityai/stable-diffusion-2-1-base, scheduler/scheduler_config.json.
SD21_BASE_SCHEDULER = {
    "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
    "num_train_timesteps": 1000, "prediction_type": "epsilon", "set_alpha_to_one": False,
    "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
}
CHECKPOINT_NAME = "sd-v2.1-base-4view.pt"
# The two lines that bound the block the batch fix dedents (GaussianProcessor._train_step).
BATCH_BLOCK_FIRST = " " * 16 + "images = torch.cat(images, dim=0)"
BATCH_BLOCK_END = " " * 8 + "ender.record()"


def shim(report, name, why, timed):
    report.setdefault("shims", []).append({"name": name, "why": why, "timed_path": timed})


def stub_unless_importable(name, report, why, **attrs):
    """Imports `name`; only if that fails, a stand-in module with `attrs` takes its place."""
    try:
        importlib.import_module(name)
        return
    except Exception as e:  # noqa: BLE001 - any import failure: the module is unused here
        failure = f"{type(e).__name__}: {e}"
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module
    shim(report, f"stub {name}", f"{why} (import failed here: {failure})", False)


def unused(what):
    def fail(*args, **kwargs):
        raise RuntimeError(f"{what} is stubbed by tools/reference_miner.py: not on the text path")
    return fail


def install_xformers_sdpa(report):
    """A stand-in `xformers.ops.memory_efficient_attention` on torch SDPA (see the module docs)."""
    try:
        import xformers.ops  # noqa: F401
        report["attention"] = "xformers (installed)"
        return
    except Exception:  # noqa: BLE001
        pass
    import torch.nn.functional as F

    def memory_efficient_attention(q, k, v, attn_bias=None, op=None):
        assert attn_bias is None
        if q.dim() == 4:  # xformers' [B, M, H, K] → SDPA's [B, H, M, K]
            return F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
        return F.scaled_dot_product_attention(q, k, v)  # [B, M, K]: one head per batch item

    xformers = types.ModuleType("xformers")
    ops = types.ModuleType("xformers.ops")
    ops.memory_efficient_attention = memory_efficient_attention
    xformers.ops = ops
    # A spec, for importlib.util.find_spec (availability checks) on a module without one.
    xformers.__spec__ = importlib.machinery.ModuleSpec("xformers", None, is_package=True)
    ops.__spec__ = importlib.machinery.ModuleSpec("xformers.ops", None)
    sys.modules["xformers"], sys.modules["xformers.ops"] = xformers, ops
    report["attention"] = "xformers stand-in: torch scaled_dot_product_attention"
    shim(report, "xformers → SDPA", "the miner pins xformers 0.0.23; none matches this torch", True)


def install_pkg_resources(report):
    try:
        import pkg_resources  # noqa: F401
        return
    except Exception:  # noqa: BLE001
        pass

    def resource_filename(package, resource):
        return os.path.join(os.path.dirname(importlib.import_module(package).__file__), resource)

    stub_unless_importable("pkg_resources", report, "mvdream's config lookup", resource_filename=resource_filename)


def load_processor_module(path, batch_fix, report):
    """DreamGaussianLib.GaussianProcessor from its source, with the batch fix when asked."""
    name = "DreamGaussianLib.GaussianProcessor"
    source = path.read_text()
    if batch_fix:
        lines = source.split("\n")
        first = lines.index(BATCH_BLOCK_FIRST)
        end = lines.index(BATCH_BLOCK_END, first)
        for i in range(first, end):
            if lines[i].strip():
                assert lines[i].startswith(" " * 16), (i + 1, lines[i])
                lines[i] = lines[i][4:]
        source = "\n".join(lines)
        shim(report, "batch fix", f"GaussianProcessor.py lines {first + 1}-{end}: the loss, backward, Adam step "
             "and densification dedented out of the per-orbit loop (the shipped code fails at batch_size > 1)", True)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    exec(compile(source, str(path), "exec"), module.__dict__)  # noqa: S102 - the official source
    return module


def import_official(generation, checkpoint, attention, batch_fix, report):
    """ModelsPreLoader and GaussianProcessor with the shims (module docs) in place."""
    for p in (generation / "extras" / "ImageDream", generation / "extras" / "MVDream", generation):
        sys.path.insert(0, str(p))
    # diffusers and transformers first: their availability checks at import then see the
    # environment as it is, not the xformers stand-in.
    import diffusers  # noqa: F401
    import transformers  # noqa: F401
    if attention == "xformers-sdpa":
        install_xformers_sdpa(report)
    else:
        report["attention"] = "the miner's fallback without xformers (einsum + softmax, fp32)"
    install_pkg_resources(report)
    stub_unless_importable("rembg", report, "image prompts only", new_session=unused("rembg"), remove=unused("rembg"))
    stub_unless_importable("cv2", report, "image prompts only", imread=unused("cv2"))
    utils = "DreamGaussianLib.AIModelsUtils."
    for module, cls in [("imagedream_utils", "ImageDream"), ("sd_utils", "StableDiffusion"),
                        ("zero123_utils", "Zero123")]:
        stub_unless_importable(utils + module, report, "another config's model", **{cls: unused(cls)})

    import open_clip
    create = open_clip.create_model_and_transforms

    def create_without_download(*args, **kwargs):
        kwargs["pretrained"] = None
        return create(*args, **kwargs)

    open_clip.create_model_and_transforms = create_without_download
    shim(report, "open_clip pretrained=None", "no download; the text tower's weights come from the checkpoint", False)

    import mvdream.model_zoo as zoo

    def local_checkpoint(repo_id, filename, cache_dir=None):
        assert (repo_id, filename) == ("MVDream/MVDream", CHECKPOINT_NAME), (repo_id, filename)
        return str(checkpoint)

    zoo.hf_hub_download = local_checkpoint
    shim(report, "hf_hub_download → --checkpoint", "no download of MVDream/MVDream's checkpoint", False)

    mv = importlib.import_module(utils + "mvdream_utils")
    base = mv.DDIMScheduler

    class LocalDDIMScheduler(base):
        @classmethod
        def from_pretrained(cls, key, subfolder=None, **kwargs):
            assert (key, subfolder) == ("stabilityai/stable-diffusion-2-1-base", "scheduler"), (key, subfolder)
            return base.from_config(SD21_BASE_SCHEDULER)

    mv.DDIMScheduler = LocalDDIMScheduler
    shim(report, "DDIMScheduler.from_pretrained → local config", "SD 2.1 base's scheduler_config.json values", False)

    preloader = importlib.import_module("DreamGaussianLib.ModelsPreLoader")
    processor = load_processor_module(generation / "DreamGaussianLib" / "GaussianProcessor.py", batch_fix, report)
    return preloader, processor, mv, zoo


def write_checkpoint(zoo, path, report):
    """The official model with torch's default initialisation, its state_dict saved to path."""
    from omegaconf import OmegaConf
    from mvdream.ldm.util import instantiate_from_config

    start = time.perf_counter()
    config = OmegaConf.load(zoo.get_config_file(zoo.PRETRAINED_MODELS["sd-v2.1-base-4view"]["config"]))
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = instantiate_from_config(config.model)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_suffix(".part")
    torch.save(model.state_dict(), part)
    part.rename(path)
    report["checkpoint_written_s"] = time.perf_counter() - start
    report["checkpoint_parameters"] = sum(p.numel() for p in model.parameters())
    del model
    torch.cuda.empty_cache()


class Timer:
    """Synchronised seconds of wrapped calls, summed per name into `run`."""

    def __init__(self, device):
        self.device, self.run = device, {}

    def wrap(self, owner, method, name):
        inner = getattr(owner, method)

        def timed(*args, **kwargs):
            ot.sync(self.device)
            start = time.perf_counter()
            out = inner(*args, **kwargs)
            ot.sync(self.device)
            self.run[name] = self.run.get(name, 0.0) + time.perf_counter() - start
            return out

        setattr(owner, method, timed)


def one_request(Processor, opt, prompt, models, timer, device):
    """serve.py's /generate/: GaussianProcessor(opt, prompt).train(models, opt.iters), save_ply."""
    timer.run = {}
    ot.sync(device)
    t0 = time.perf_counter()
    gp = Processor(opt, prompt)
    ot.sync(device)
    t1 = time.perf_counter()
    gp.train(models, opt.iters)
    ot.sync(device)
    t2 = time.perf_counter()
    buffer = io.BytesIO()
    gp.get_gs_model().save_ply(buffer)
    buffer.seek(0)
    size = len(buffer.getbuffer())
    t3 = time.perf_counter()
    prepare, text = timer.run.get("prepare", 0.0), timer.run.get("text_encode", 0.0)
    ms = {"init": (t1 - t0 + prepare - text) * 1e3, "text_encode": text * 1e3,
          "train": (t2 - t1 - prepare) * 1e3, "export": (t3 - t2) * 1e3}
    ms["sds"] = ms["text_encode"] + ms["train"]
    return {"total_ms": (t3 - t0) * 1e3, "stages_ms": ms, "ply_bytes": size,
            "gaussians": int(gp.get_gs_model().get_xyz.shape[0])}


def run_variant(name, a, opt_base, Processor, models, timer, device):
    from omegaconf import OmegaConf

    overrides = dict(VARIANTS[name])
    if a.iters is not None:
        overrides["iters"] = a.iters
    opt = OmegaConf.merge(opt_base, OmegaConf.create(overrides))
    rep = {"variant": name, "overrides": overrides, "our_profile": OUR_PROFILES[name],
           "config": {k: opt[k] for k in ("iters", "batch_size", "num_pts", "ref_size", "sh_degree", "radius",
                                          "fovy", "min_ver", "max_ver", "invert_bg_prob", "position_lr_max_steps",
                                          "densification_interval", "opacity_reset_interval")},
           "guidance_scale_used": 100, "stages": STAGES}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    # The warm-up request (gsplat's kernels, cuDNN's plans, the allocator) needs few iterations;
    # with --repeat 0 the one run is the full one.
    warm_opt = OmegaConf.merge(opt, {"iters": min(a.warm_up_iters, opt.iters)}) if a.repeat else opt
    runs = []
    for i in range(a.repeat + 1):
        np.random.seed(a.seed + i)
        torch.manual_seed(a.seed + i)
        run = one_request(Processor, warm_opt if i == 0 else opt, a.prompt, models, timer, device)
        (runs if i > 0 else rep.setdefault("warm_up", [])).append(run)
        print(f"{name} run {i} ({'warm-up' if i == 0 and a.repeat else 'timed'}): {run['total_ms']:.0f} ms "
              f"(train {run['stages_ms']['train']:.0f}), {run['gaussians']} Gaussians", flush=True)
    runs = runs or rep["warm_up"]
    rep["runs"] = runs
    rep["summary"] = ot.summarise(runs, STAGES)
    rep["ms_per_iteration"] = rep["summary"]["train"]["median_ms"] / opt.iters
    rep["gaussians"] = runs[-1]["gaussians"]
    rep.update(ot.memory_figures(device))
    return rep


def compare(name, path, rep):
    ours = ot.read_ours(path)
    last = ours[-1]
    sds_iters = rep["config"]["iters"]
    per_it = ot.ours_median_ms(ours, "sds")
    print(f"\n{name}: ours from {path}: {len(ours)} runs on {last['device']} (profile {last['profile']}), "
          f"{last['gaussians']} Gaussians; theirs {rep['gaussians']}. Per iteration: ours "
          f"{'-' if per_it is None else f'{per_it / sds_iters:.1f}'} ms (sds / {sds_iters}, text encoding included), "
          f"theirs {rep['ms_per_iteration']:.1f} ms (train loop / iters)")
    names = STAGES + [s for s in last["stages_ms"] if s not in STAGES] + ["total"]
    ot.print_stage_table(ours, rep, names, "theirs")
    total = ot.ours_median_ms(ours, "total")
    theirs = rep["summary"]["total"]["median_ms"]
    print(f"\n{name}: ours/theirs total {total / theirs:.3f} ({theirs / total:.1f}× faster; goal ≥ 10×)")


def cpu_check(preloader, mv, opt, report):
    """--cpu-check: the miner's own preload on the CPU (build_model, torch.load, strict
    load_state_dict through the shims), its text encoder, and one MVDream SDS train_step on one
    orbit of 64² renders with its gradient (no gsplat: the renderer needs CUDA)."""
    start = time.perf_counter()
    models = preloader.preload_model(opt, "cpu")
    guidance = models[0]
    guidance.model.cond_stage_model.device = "cpu"  # FrozenOpenCLIPEmbedder's default is "cuda"
    report["cpu_load_s"] = time.perf_counter() - start
    guidance.get_text_embeds(["a red chair"], [opt.negative_prompt])
    x = torch.rand(4, 3, 64, 64, requires_grad=True)
    cameras = torch.eye(4).repeat(4, 1, 1)
    cameras[:, 2, 3] = opt.radius
    loss = guidance.train_step(x, cameras, step_ratio=0.5)
    loss.backward()
    loss = loss.detach()
    report["cpu_check"] = {"scheduler": type(guidance.scheduler).__name__, "embeddings": list(guidance.embeddings["pos"].shape),
                           "loss": float(loss), "loss_finite": bool(torch.isfinite(loss)),
                           "grad_finite": bool(torch.isfinite(x.grad).all())}
    print(json.dumps(report, indent=1))
    if not (report["cpu_check"]["loss_finite"] and report["cpu_check"]["grad_finite"]):
        raise SystemExit("cpu check: non-finite loss or gradient")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--generation", type=Path, default=DEFAULT_GENERATION,
                    help="the miner's generation/ folder (tools/three-gen-ref.sh extracts it)")
    ap.add_argument("--checkpoint", type=Path, default=Path("/tmp/mvdream-ref") / CHECKPOINT_NAME,
                    help="MVDream LDM checkpoint (torch.save state dict) the miner loads")
    ap.add_argument("--write-checkpoint", action="store_true", help="write random weights there if missing")
    ap.add_argument("--variant", action="append", choices=sorted(VARIANTS), help="repeatable; default both")
    ap.add_argument("--iters", type=int, help="override iters (smoke runs)")
    ap.add_argument("--prompt", default="a red chair")
    ap.add_argument("--seed", type=int, default=0, help="numpy / torch seeds of run i: seed + i")
    ap.add_argument("--repeat", type=int, default=2, help="timed runs after one warm-up run (0: the first run only)")
    ap.add_argument("--warm-up-iters", type=int, default=10, help="iterations of the warm-up request")
    ap.add_argument("--attention", choices=["xformers-sdpa", "plain"], default="xformers-sdpa")
    ap.add_argument("--no-batch-fix", action="store_true", help="run the shipped _train_step (fails at batch_size > 1)")
    ap.add_argument("--ours", action="append", default=[], metavar="VARIANT=FILE",
                    help="`splatforge generate --json --repeat N` output to compare with (repeatable)")
    ap.add_argument("--json", type=Path, help="write the report here")
    ap.add_argument("--device", default="cuda", help="the miner hard-codes cuda in places; cpu only imports")
    ap.add_argument("--import-only", action="store_true", help="install the shims and import the official code, then stop")
    ap.add_argument("--cpu-check", action="store_true",
                    help="no GPU: write the checkpoint if asked, preload, encode, one SDS train_step (~5 min, ~16 GB RAM)")
    a = ap.parse_args()
    assert a.repeat >= 0
    variants = a.variant or ["fast", "text_mv"]
    ours = {}
    for item in a.ours:
        name, _, path = item.partition("=")
        if name not in VARIANTS or not path:
            ap.error(f"--ours {item}: expected VARIANT=FILE with VARIANT one of {sorted(VARIANTS)}")
        ours.setdefault(name, []).append(Path(path))
    generation = a.generation.resolve()
    device = torch.device(a.device)
    report = {"generation": str(generation), "commit": (generation.parent / "COMMIT").read_text().strip()
              if (generation.parent / "COMMIT").exists() else None,
              "checkpoint": str(a.checkpoint), "device": a.device, "torch": torch.__version__,
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
              else platform.processor() or platform.machine(), "prompt": a.prompt}
    batch_fix = not a.no_batch_fix and any(
        VARIANTS[v].get("batch_size", 1) > 1 for v in variants)
    preloader, processor, mv, zoo = import_official(generation, a.checkpoint, a.attention, batch_fix, report)
    if a.import_only:
        print(json.dumps(report, indent=1))
        return
    if not a.checkpoint.exists():
        if not a.write_checkpoint:
            ap.error(f"{a.checkpoint}: no such checkpoint (--write-checkpoint writes random weights)")
        write_checkpoint(zoo, a.checkpoint, report)
        print(f"wrote {a.checkpoint} ({report['checkpoint_parameters'] / 1e9:.2f} B parameters) in "
              f"{report['checkpoint_written_s']:.1f} s", flush=True)

    from omegaconf import OmegaConf

    opt_base = OmegaConf.load(generation / "configs" / "text_mv.yaml")
    if a.cpu_check:
        cpu_check(preloader, mv, opt_base, report)
        return
    timer = Timer(device)
    timer.wrap(processor.GaussianProcessor, "_prepare_training_model", "prepare")
    timer.wrap(mv.MVDream, "get_text_embeds", "text_encode")
    ot.sync(device)
    start = time.perf_counter()
    models = preloader.preload_model(opt_base, a.device)
    ot.sync(device)
    report["load_ms"] = (time.perf_counter() - start) * 1e3
    if device.type == "cuda":
        report["loaded_memory_bytes"] = torch.cuda.memory_allocated(device)
    report["variants"] = {}
    for name in variants:
        report["variants"][name] = run_variant(name, a, opt_base, processor.GaussianProcessor, models, timer, device)
        if a.json:
            a.json.write_text(json.dumps(report, indent=1))

    mib = lambda b: "-" if b is None else f"{b / 2**20:.0f} MiB"  # noqa: E731
    print(f"\n404 reference miner ({report['commit'] or generation}) on {report['device_name']} (torch "
          f"{report['torch']}); load {report['load_ms'] / 1e3:.1f} s, models {mib(report.get('loaded_memory_bytes'))}; "
          f"attention: {report['attention']}; shims: {', '.join(s['name'] for s in report['shims'])}")
    for name, rep in report["variants"].items():
        print(f"\n{name} ({rep['overrides'] or 'as shipped'}): {len(rep['runs'])} timed runs, peak "
              f"{mib(rep['peak_memory_bytes'])}, {rep['gaussians']} Gaussians, "
              f"{rep['ms_per_iteration']:.1f} ms per iteration")
        print("| stage | median ms | p90 ms |\n|---|---:|---:|")
        for s, v in rep["summary"].items():
            print(f"| {s} | {v['median_ms']:.1f} | {v['p90_ms']:.1f} |")
        for path in ours.get(name, []):
            compare(name, path, rep)


if __name__ == "__main__":
    main()
