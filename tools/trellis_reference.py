#!/usr/bin/env python3
"""The official TRELLIS image → 3D Gaussians pipeline, timed stage by stage: the reference of
issue 12's speed goal (ours ≤ 0.4× its time, peak GPU memory ≤ its peak).

What runs: `TrellisImageTo3DPipeline.from_pretrained(DIR)` and `pipeline.run(image, seed=…,
formats=['gaussian'], …)` from the official microsoft/TRELLIS sources (imported at run time
from --trellis, default .gpu-ref/trellis-ref; nothing of them is in this repository), DINOv2
from the facebookresearch/dinov2 sources (--dinov2), then `Gaussian.save_ply` to a temporary
file (utils3d from --utils3d). DIR is a TRELLIS folder in the official layout (pipeline.json,
ckpts/<name>.json + .safetensors, dinov2_vitl14_reg4_pretrain.safetensors with torch-hub names
and, for tiny models, dinov2_vitl14_reg4_pretrain.json with its shape), e.g. one written by
`splatforge models make-random --family trellis --size full|tiny DIR`.

Deviations from a stock install, each needed because the GPU machine has no network, spconv,
flash-attn or xformers, and each keeping the official semantics:
* `torch.hub.load('facebookresearch/dinov2', 'dinov2_vitl14_reg', pretrained=True)` builds the
  same ViT from the local dinov2 sources and loads DIR's DINOv2 file instead of downloading.
* Only the models of the Gaussian path are loaded: the pipeline reads a copy of pipeline.json
  without slat_decoder_mesh / slat_decoder_rf (`formats=['gaussian']` never calls them; loading
  them would only add load time and memory, and random-weight folders lack them).
* Persistent buffers that the constructor computes and DIR's file lacks (the stage-1 flow's
  `pos_emb`) are taken from the constructor; every name in the files must still match.
* spconv and flash_attn are plain-torch shims (crates/trellis/scripts/official_shims.py: spconv
  2's SubMConv3d as gather + GEMM, flash-attn's varlen functions as one SDPA call per sequence),
  checked against dense equivalents before the run; real ones are used where importable.
  `ATTN_BACKEND=sdpa` for TRELLIS' dense attention; DINOv2 runs its plain softmax attention
  (`XFORMERS_DISABLED=1`; xformers is absent anyway). `rembg` is an empty module: inputs with
  alpha never reach it. The package `__init__`s of trellis, trellis.pipelines,
  trellis.models.structured_latent_vae and trellis.representations are skipped (they import
  renderers, mesh extraction and their CUDA extensions); every module used is the official file.
* Precision is the official one: each model runs its torso in fp16 where its ckpt JSON says
  `use_fp16` (reported per model), DINOv2 in f32, TF32 left at torch's defaults.

Timing (per stage, torch.cuda.synchronize around each; stage names as `splatforge generate
--image --json` writes them): preprocess (`preprocess_image`), dinov2 (`get_cond`),
sparse_structure (the stage-1 sampler's `sample`), ss_decoder (the rest of
`sample_sparse_structure`: noise, `SparseStructureDecoder`, argwhere), slat (`sample_slat`),
gs_decoder (`decode_slat`), write (`save_ply`). The stages are timed by wrapping the pipeline's
own methods, so `pipeline.run` follows the official code path unchanged. One warm-up run, then
--repeat timed runs (seeds seed, seed+1, …): median and p90 per stage and of the total (model
load excluded; reported apart), the Gaussian count, peak `torch.cuda.max_memory_allocated`
(reset after load), device, torch version. --time-shims also adds up the time inside the shims
(synchronising around each shim call, which slows the run: use it in a separate invocation).
--repeat 0 makes the first run the only one (no warm-up; its times are a cold run's).

End-to-end parity (issue 12: same noise → same voxels, Gaussians within tolerance): --dump-noise
FILE.safetensors records, for the first run (seed --seed), the tensors `torch.randn` returned
inside the official `sample_sparse_structure` (`ss_noise` [1, 8, 16, 16, 16]) and `sample_slat`
(`slat_noise` [N, 8], row i for voxel i), by swapping torch.randn for a recording wrapper while
those two methods run (each draws exactly once; asserted), and writes them with the voxels
`coords` (int32 [N, 4], `argwhere(decoder(z_s) > 0)[:, [0, 2, 3, 4]]`: lexicographic (batch, x,
y, z)), the sampled structure latent `ss_latent` and the de-normalised structured latent `slat`
(f32, contiguous; the names `splatforge generate --noise` reads and `--save-latents` writes).
--structure FILE.safetensors (`coords` int [N, 4] `(0, x, y, z)`, e.g. from
tools/voxelize_splat.py) runs the official `run_detail_variation`'s steps instead of `run`
(`get_cond`, the seed, the voxels in `preprocess_voxel`'s lexicographic order, `sample_slat`,
`decode_slat`; the method itself is missing from older checkouts): stage 2 and the decoder on
those voxels, stage 1 skipped, as `splatforge generate --image … --structure FILE` does (not
with --dump-noise).
--dump-ply FILE.ply writes that run's `save_ply` there (FILE.ply.npy when plyfile is absent, see
official_shims.install_plyfile_standin). tools/trellis_e2e_parity.py compares the two sides.

Usage:
    python3 tools/trellis_reference.py DIR [--device cuda|cpu] [--image ../shared/fixtures/ghost_rgba.png]
        [--seed 0] [--ss-steps N] [--slat-steps N] [--repeat 3] [--time-shims] [--json OUT]
        [--dump-noise NOISE.safetensors] [--dump-ply OFFICIAL.ply]
        [--ours OURS.jsonl]   (`splatforge generate --image … --json --repeat N` output: adds an
        ours/official table per stage and runs our steps unless --ss-steps/--slat-steps say otherwise)
CPU test (tiny models; the official Gaussian hard-codes CUDA, so on the CPU only its device is
redirected, reported as cpu_only_patch):
    splatforge models make-random --family trellis --size tiny /tmp/trellis-tiny
    python3 tools/trellis_reference.py /tmp/trellis-tiny --device cpu --repeat 2 --json /tmp/ref.json
On the GPU machine it runs from tools/gpu-suite.sh's `trellis-e2e` case (device call from
/work/main with carry [".gpu-bin", ".whl", ".gpu-ref"]), which times `splatforge generate
--image` on the same random-weight folder first and prints ours/theirs per stage.
"""
import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

# official_trellis sets ATTN_BACKEND / XFORMERS_DISABLED before anything official is imported.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from official_trellis import (  # noqa: E402
    ROOT, STAGES, import_official, load_pipeline, memory_figures, official_shims, percentile,
    print_stage_table, read_ours, stage_ms, summarise, sync, time_stages)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402


class NoiseRecorder:
    """Wraps pipeline methods so that, while `active`, the tensor the one `torch.randn` call inside
    each returns lands in `self.drawn[name]` (torch.randn is swapped for a recording wrapper for
    the call's duration; the official module looks `torch.randn` up at call time)."""

    def __init__(self):
        self.active = False
        self.drawn = {}

    def wrap(self, owner, method, name):
        inner = getattr(owner, method)

        def recorded(*args, **kwargs):
            if not self.active:
                return inner(*args, **kwargs)
            calls = []
            randn = torch.randn

            def recording_randn(*a, **k):
                out = randn(*a, **k)
                calls.append(out)
                return out

            torch.randn = recording_randn
            try:
                out = inner(*args, **kwargs)
            finally:
                torch.randn = randn
            assert len(calls) == 1, f"{method} called torch.randn {len(calls)} times, expected once"
            self.drawn[name] = calls[0]
            return out

        setattr(owner, method, recorded)


def save_dump(path, drawn, returned):
    """The noise file of one run (see the module docs) from the recorder's draws and the stage
    timer's return values; returns the shapes written."""
    from safetensors.torch import save_file

    coords = returned["stage1_total"]
    slat = returned["slat"]
    # sample_slat builds its noise SparseTensor on `coords` and every op after keeps them, so the
    # rows of slat_noise and slat are voxel i's in coords' order; checked, not assumed.
    assert torch.equal(slat.coords.cpu(), coords.cpu()), "sample_slat returned its voxels in another order"
    tensors = {
        "ss_noise": drawn["ss_noise"].float(),
        "slat_noise": drawn["slat_noise"].float(),
        "coords": coords.to(torch.int32),
        "ss_latent": returned["sparse_structure"].samples.float(),
        "slat": slat.feats.float(),
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    save_file(tensors, str(path))
    return {k: list(v.shape) for k, v in tensors.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", type=Path, help="TRELLIS folder (official layout)")
    ap.add_argument("--image", type=Path, default=ROOT.parent / "shared" / "fixtures" / "ghost_rgba.png")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ss-steps", type=int, help="stage-1 sampler steps (default: pipeline.json)")
    ap.add_argument("--slat-steps", type=int, help="stage-2 sampler steps (default: pipeline.json)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs after one warm-up run (0: the first run only)")
    ap.add_argument("--time-shims", action="store_true", help="add up the time inside the spconv / flash-attn shims (perturbs the stage times)")
    ap.add_argument("--json", type=Path, help="write the report here")
    ap.add_argument("--dump-noise", type=Path, help="write the first run's noise, voxels and latents here (safetensors)")
    ap.add_argument("--dump-ply", type=Path, help="write the first run's save_ply here")
    ap.add_argument("--structure", type=Path, help="run_detail_variation on these voxels (safetensors `coords` [N, 4])")
    ap.add_argument("--ours", type=Path, action="append", default=[],
                    help="`splatforge generate --image --json --repeat N` output (one JSON line a run; the first is "
                    "taken as its warm-up): print ours/theirs per stage, and run the first file's steps unless given; "
                    "repeatable (e.g. one file per attention kernel), a table each")
    ap.add_argument("--trellis", type=Path, default=ROOT / ".gpu-ref" / "trellis-ref", help="folder holding the official trellis/")
    ap.add_argument("--dinov2", type=Path, default=ROOT / ".gpu-ref" / "dinov2-ref", help="folder holding dinov2/")
    ap.add_argument("--utils3d", type=Path, default=ROOT / ".gpu-ref" / "utils3d", help="folder holding utils3d/")
    a = ap.parse_args()
    assert a.repeat >= 0
    assert a.structure is None or a.dump_noise is None, "--dump-noise records stage 1, which --structure skips"
    device = torch.device(a.device)
    ours_runs = []
    for path in a.ours:
        ours_runs.append((path, read_ours(path)))
    if ours_runs:
        first = ours_runs[0][1]
        a.ss_steps = a.ss_steps or first[-1]["sparse_structure_sampler"]["steps"]
        a.slat_steps = a.slat_steps or first[-1]["slat_sampler"]["steps"]
    model_dir = a.models.resolve()
    report = {"models": str(model_dir), "image": str(a.image), "device": a.device,
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
              "torch": torch.__version__}

    official_shims.TIME_SHIMS[0] = False
    Pipeline = import_official(a.trellis.resolve(), a.utils3d.resolve(), report)
    if device.type != "cuda":
        # The official Gaussian assumes CUDA: device='cuda' by default (decoder_gs passes none) and
        # `.cuda()` on its biases in setup_functions. For the CPU test run only, its constructor
        # gets the run's device and `.cuda()` means `.to(device)` while it runs.
        Gaussian = sys.modules["trellis.representations"].Gaussian
        cuda_init = Gaussian.__init__

        def cpu_init(self, *args, **kwargs):
            tensor_cuda = torch.Tensor.cuda
            torch.Tensor.cuda = lambda t, *_, **__: t.to(device)
            try:
                cuda_init(self, *args, **{**kwargs, "device": a.device})
            finally:
                torch.Tensor.cuda = tensor_cuda

        Gaussian.__init__ = cpu_init
        report["cpu_only_patch"] = "Gaussian built on the run's device (the official one hard-codes CUDA)"
    official_shims.check_shims(a.device)
    report["attention_dense"] = "torch SDPA (ATTN_BACKEND=sdpa)"
    report["attention_dinov2"] = "dinov2 plain softmax attention (no xformers)"

    with tempfile.TemporaryDirectory() as tmp:
        view = Path(tmp) / "model"
        view.mkdir()
        pipeline, args = load_pipeline(Pipeline, model_dir, view, device, a.dinov2.resolve(), report)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

        timer = time_stages(pipeline, device)
        recorder = NoiseRecorder()
        recorder.wrap(pipeline, "sample_sparse_structure", "ss_noise")
        recorder.wrap(pipeline, "sample_slat", "slat_noise")
        ss_params = {} if a.ss_steps is None else {"steps": a.ss_steps}
        slat_params = {} if a.slat_steps is None else {"steps": a.slat_steps}
        report["sparse_structure_sampler"] = {**pipeline.sparse_structure_sampler_params, **ss_params}
        report["slat_sampler"] = {**pipeline.slat_sampler_params, **slat_params}
        voxels = None
        if a.structure is not None:
            from safetensors.numpy import load_file
            xyz = load_file(str(a.structure))["coords"][:, -3:]
            reso = pipeline.models["slat_flow_model"].resolution
            assert ((xyz >= 0) & (xyz < reso)).all(), f"{a.structure}: voxels outside the {reso}³ grid"
            # (0, x, y, z) rows, each voxel once, lexicographic: preprocess_voxel's order.
            xyz = np.unique(xyz, axis=0)
            voxels = np.concatenate([np.zeros((len(xyz), 1), np.int64), xyz], axis=1).astype(np.int32)
            report["structure"] = {"file": str(a.structure), "voxels": len(voxels)}
        image = Image.open(a.image)
        image.load()
        assert image.mode == "RGBA", f"{a.image}: {image.mode}; give an RGBA image (rembg is not available)"

        runs = []
        for i in range(a.repeat + 1):
            timer.run = {}
            official_shims.TIME_SHIMS[0] = a.time_shims and i > 0
            official_shims.SHIM_SECONDS[0] = 0.0
            official_shims.SHIM_SECONDS_BY_NAME.clear()
            recorder.active = a.dump_noise is not None and i == 0
            sync(device)
            start = time.perf_counter()
            seed = a.seed + max(i - 1, 0)
            if voxels is None:
                out = pipeline.run(image, seed=seed, formats=["gaussian"],
                                   sparse_structure_sampler_params=ss_params, slat_sampler_params=slat_params)
            else:
                # run_detail_variation's body (the official method; older checkouts lack it):
                # the image's condition, the seed, the given voxels, stage 2, the decoder.
                cond = pipeline.get_cond([pipeline.preprocess_image(image)])
                torch.manual_seed(seed)
                # Uploaded in the run, as preprocess_voxel does.
                coords = torch.from_numpy(voxels).to(device)
                out = pipeline.decode_slat(pipeline.sample_slat(cond, coords, slat_params), ["gaussian"])
            gaussian = out["gaussian"][0]
            t = time.perf_counter()
            gaussian.save_ply(str(a.dump_ply if a.dump_ply is not None and i == 0 else Path(tmp) / "out.ply"))
            sync(device)
            end = time.perf_counter()
            if recorder.active:
                shapes = save_dump(a.dump_noise, recorder.drawn, timer.returned)
                report["dump"] = {"seed": a.seed, "noise": str(a.dump_noise), "shapes": shapes,
                                  "ply": None if a.dump_ply is None else str(a.dump_ply)}
                print(f"dumped seed {a.seed}'s noise, voxels and latents {shapes} to {a.dump_noise}"
                      + ("" if a.dump_ply is None else f"; its save_ply to {a.dump_ply}"))
            run = {"seed": a.seed + max(i - 1, 0), "total_ms": (end - start) * 1e3,
                   "stages_ms": stage_ms(timer.run, end - t),
                   "voxels": len(voxels) if voxels is not None else int(timer.returned["stage1_total"].shape[0]),
                   "gaussians": int(gaussian.get_xyz.shape[0])}
            if a.time_shims and i > 0:
                run["shim_ms"] = official_shims.SHIM_SECONDS[0] * 1e3
                run["shim_ms_by_call"] = {k: v * 1e3 for k, v in official_shims.SHIM_SECONDS_BY_NAME.items()}
            (runs if i > 0 else report.setdefault("warm_up", [])).append(run)
        official_shims.TIME_SHIMS[0] = False

    # --repeat 0: the first run is the only one.
    runs = runs or report["warm_up"]
    report["runs"] = runs
    summary = summarise(runs, STAGES)
    if a.time_shims:
        values = [r["shim_ms"] for r in runs]
        summary["in_shims"] = {"median_ms": float(np.median(values)), "p90_ms": percentile(values, 90)}
    report["summary"] = summary
    report["gaussians"] = runs[-1]["gaussians"]
    report["voxels"] = runs[-1]["voxels"]
    report.update(memory_figures(device))
    if a.json:
        a.json.write_text(json.dumps(report, indent=1))

    runs_said = f"{a.repeat} runs after a warm-up" if a.repeat else "1 run (no warm-up)"
    print(f"\nofficial TRELLIS on {report['device_name']} (torch {report['torch']}), {runs_said}, "
          f"load {report['load_ms']:.0f} ms, {report['gaussians']} Gaussians, "
          f"peak {report['peak_memory_bytes'] / 2**20:.0f} MiB" if report["peak_memory_bytes"] is not None else
          f"\nofficial TRELLIS on {report['device_name']} (torch {report['torch']}), {runs_said}, "
          f"load {report['load_ms']:.0f} ms, {report['gaussians']} Gaussians")
    print(f"backends: conv {report['conv']}; sparse attention {report['attention']}; {report['attention_dense']}; "
          f"{report['attention_dinov2']}; precision {report['precision']}; skipped {report['models_skipped']}")
    print("\n| stage | median ms | p90 ms |\n|---|---:|---:|")
    for s, v in summary.items():
        print(f"| {s} | {v['median_ms']:.1f} | {v['p90_ms']:.1f} |")
    for path, ours in ours_runs:
        print(f"\nours from {path}:")
        compare(ours, report)


def compare(ours, report):
    """ours/theirs per stage (medians), from our --json lines and this run's report."""
    print(f"\nours: {len(ours)} runs on {ours[-1]['device']} (profile {ours[-1]['profile']}), {ours[-1]['voxels']} voxels, "
          f"{ours[-1]['gaussians']} Gaussians; official: {report['voxels']} voxels, {report['gaussians']} Gaussians "
          f"(random weights, different noise: counts differ)")
    print_stage_table(ours, report, STAGES + ["total"], "official")


if __name__ == "__main__":
    main()
