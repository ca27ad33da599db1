"""Helpers shared by the scripts that run the official microsoft/TRELLIS image → 3D pipeline
(tools/trellis_reference.py, tools/python_chain_reference.py): importing it with the plain-torch
shims of crates/trellis/scripts/official_shims.py, loading a TRELLIS folder in the official
layout (Gaussian path only, DINOv2 from local sources), and timing its stages by wrapping the
pipeline's own methods. See tools/trellis_reference.py's docs for what is shimmed and why.

Importing this module sets ATTN_BACKEND=sdpa and XFORMERS_DISABLED=1 (unless set): the official
attention modules and dinov2 read them at import time. It installs no shim by itself:
`import_official` does.
"""
import contextlib
import json
import os
import sys
import time
from pathlib import Path

# Read by the official attention modules and by dinov2 at import time.
os.environ.setdefault("ATTN_BACKEND", "sdpa")
os.environ.setdefault("XFORMERS_DISABLED", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "crates" / "trellis" / "scripts"))
import official_shims  # noqa: E402

# Stage names as `splatforge generate --image --json` writes them.
STAGES = ["preprocess", "dinov2", "sparse_structure", "ss_decoder", "slat", "gs_decoder", "write"]
GAUSSIAN_PATH = ["sparse_structure_flow_model", "sparse_structure_decoder", "slat_flow_model", "slat_decoder_gs"]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def import_official(trellis_src, utils3d_src, report):
    """The official TrellisImageTo3DPipeline with the shims in place."""
    import importlib

    official_shims.install_shims(report)
    official_shims.install_plyfile_standin(report)
    official_shims.install_rembg_stub()
    sys.path.insert(0, str(utils3d_src))
    sys.path.insert(0, str(trellis_src))
    official_shims.skip_package_inits(trellis_src, [
        "trellis", "trellis.pipelines", "trellis.models.structured_latent_vae", "trellis.representations"])
    # What the skipped __init__s would have exported and the Gaussian path looks up by name:
    # decoder_gs imports `Gaussian` from trellis.representations, trellis.models.from_pretrained
    # resolves SLatGaussianDecoder through trellis.models.structured_latent_vae.
    gaussian = importlib.import_module("trellis.representations.gaussian.gaussian_model")
    sys.modules["trellis.representations"].Gaussian = gaussian.Gaussian
    decoder_gs = importlib.import_module("trellis.models.structured_latent_vae.decoder_gs")
    sys.modules["trellis.models.structured_latent_vae"].SLatGaussianDecoder = decoder_gs.SLatGaussianDecoder
    return importlib.import_module("trellis.pipelines.trellis_image_to_3d").TrellisImageTo3DPipeline


def gaussian_view(model_dir, view_dir, report):
    """view_dir: model_dir's pipeline.json without the models `formats=['gaussian']` never calls,
    the other files linked. Returns the pipeline args."""
    config = json.loads((model_dir / "pipeline.json").read_text())
    models = config["args"]["models"]
    report["models_skipped"] = sorted(k for k in models if k not in GAUSSIAN_PATH)
    config["args"]["models"] = {k: v for k, v in models.items() if k in GAUSSIAN_PATH}
    (view_dir / "pipeline.json").write_text(json.dumps(config, indent=2))
    for entry in model_dir.iterdir():
        if entry.name != "pipeline.json":
            (view_dir / entry.name).symlink_to(entry.resolve())
    return config["args"]


@contextlib.contextmanager
def constructor_buffers_for_missing(filled):
    """load_state_dict, taking persistent buffers a file lacks from the module itself (the stage-1
    flow's `pos_emb`, which its constructor computes from the config); parameters and unexpected
    names still fail as in the official strict load."""
    original = torch.nn.Module.load_state_dict

    def load(self, state_dict, *args, **kwargs):
        buffers = dict(self.named_buffers())
        missing = [k for k in self.state_dict() if k not in state_dict and k in buffers]
        if missing:
            filled.extend(f"{type(self).__name__}.{k}" for k in missing)
            state_dict = {**state_dict, **{k: buffers[k] for k in missing}}
        return original(self, state_dict, *args, **kwargs)

    torch.nn.Module.load_state_dict = load
    try:
        yield
    finally:
        torch.nn.Module.load_state_dict = original


@contextlib.contextmanager
def local_dinov2(model_dir, dinov2_src):
    """torch.hub.load for the pipeline's DINOv2, built from local sources and DIR's weights."""
    original = torch.hub.load

    def load(repo, name, *args, **kwargs):
        assert repo == "facebookresearch/dinov2" and name == "dinov2_vitl14_reg", (repo, name)
        return official_shims.build_dinov2(model_dir, dinov2_src)

    torch.hub.load = load
    try:
        yield
    finally:
        torch.hub.load = original


class StageTimer:
    """Wraps pipeline methods so each call's synchronised wall time lands in `self.run[stage]`."""

    def __init__(self, device):
        self.device = device
        self.run = {}
        self.returned = {}

    def wrap(self, owner, method, stage):
        inner = getattr(owner, method)

        def timed(*args, **kwargs):
            sync(self.device)
            start = time.perf_counter()
            out = inner(*args, **kwargs)
            sync(self.device)
            self.run[stage] = self.run.get(stage, 0.0) + time.perf_counter() - start
            self.returned[stage] = out
            return out

        # An instance attribute: the pipeline's own `self.method(...)` calls find it first.
        setattr(owner, method, timed)

def load_pipeline(Pipeline, model_dir, view_dir, device, dinov2_src, report):
    """`Pipeline.from_pretrained` of model_dir's Gaussian path (through `gaussian_view` in
    view_dir, which must stay until the run ends), moved to device. Adds to report: load_ms,
    buffers_from_constructor, precision (per model), models_skipped. Returns the pipeline and
    pipeline.json's args."""
    args = gaussian_view(model_dir, view_dir, report)
    filled = []
    sync(device)
    start = time.perf_counter()
    with constructor_buffers_for_missing(filled), local_dinov2(model_dir, dinov2_src):
        pipeline = Pipeline.from_pretrained(str(view_dir))
    pipeline.to(device)
    sync(device)
    report["load_ms"] = (time.perf_counter() - start) * 1e3
    report["buffers_from_constructor"] = filled
    report["precision"] = {k: "fp16 torso (use_fp16)" if json.loads((model_dir / f"{v}.json").read_text())["args"].get("use_fp16") else "f32"
                           for k, v in args["models"].items()}
    report["precision"]["image_cond_model"] = "f32"
    return pipeline, args


def time_stages(pipeline, device):
    """A StageTimer on the pipeline's methods: run[...] holds preprocess, dinov2, stage1_total
    (sample_sparse_structure), sparse_structure (its sampler), slat, gs_decoder per run (reset
    `timer.run = {}` before each); `stage_ms` turns it into the STAGES."""
    timer = StageTimer(device)
    for method, stage in [("preprocess_image", "preprocess"), ("get_cond", "dinov2"),
                          ("sample_sparse_structure", "stage1_total"), ("sample_slat", "slat"),
                          ("decode_slat", "gs_decoder")]:
        timer.wrap(pipeline, method, stage)
    timer.wrap(pipeline.sparse_structure_sampler, "sample", "sparse_structure")
    return timer


def stage_ms(timer_run, write_s):
    """One run's STAGES in ms from a StageTimer's `run` (seconds) and save_ply's seconds:
    ss_decoder is sample_sparse_structure less its sampler (neither when the run was given its
    structure)."""
    stages = dict(timer_run)
    stages["write"] = write_s
    if "stage1_total" in stages:
        stages["ss_decoder"] = stages.pop("stage1_total") - stages["sparse_structure"]
    return {s: stages[s] * 1e3 for s in STAGES if s in stages}


def percentile(values, q):
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def summarise(runs, stages):
    """{stage: {median_ms, p90_ms}} over runs' stages_ms, and of total_ms."""
    summary = {}
    for s in stages + ["total"]:
        if s != "total" and any(s not in r["stages_ms"] for r in runs):
            continue
        values = [r["total_ms"] if s == "total" else r["stages_ms"][s] for r in runs]
        summary[s] = {"median_ms": float(np.median(values)), "p90_ms": percentile(values, 90)}
    return summary


def read_ours(path):
    """Our `generate --json --repeat N` lines from path: the runs after the first (taken as its
    warm-up; all of them when there is one)."""
    runs = [json.loads(l) for l in path.read_text().splitlines() if l.startswith("{")]
    return runs[1:] or runs


def ours_median_ms(ours, stage):
    """The median of our runs' stage (None where no run has it). Ours writes the file on its last
    run only: its total is the median of the runs without the write, plus that one write (the
    official total includes save_ply on every run)."""
    if stage == "total":
        unwritten = [r["total_ms"] - r["stages_ms"].get("write", 0.0) for r in ours]
        return float(np.median(unwritten)) + (ours_median_ms(ours, "write") or 0.0)
    values = [r["stages_ms"][stage] for r in ours if stage in r["stages_ms"]]
    return float(np.median(values)) if values else None


def print_stage_table(ours, report, names, theirs):
    """The markdown table ours / `theirs` per stage in `names` (medians, ms; "-" where a side has
    no such stage), then the two memory figures."""
    print(f"\n| stage | ours ms | {theirs} ms | ours/{theirs} |\n|---|---:|---:|---:|")
    fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    for stage in names:
        mine = ours_median_ms(ours, stage)
        other = report["summary"][stage]["median_ms"] if stage in report["summary"] else None
        ratio = f"{mine / other:.2f}" if mine is not None and other else "-"
        print(f"| {stage} | {fmt(mine)} | {fmt(other)} | {ratio} |")
    used = ours[-1].get("device_memory_used_bytes")
    if used is not None and report.get("device_memory_used_bytes") is not None:
        theirs_used = report["device_memory_used_bytes"]
        print(f"\nmemory in use on the device after the last run (driver view, cuMemGetInfo; both sides keep "
              f"freed memory cached, so this is peak pool + context): ours {used / 2**20:.0f} MiB, "
              f"{theirs} {theirs_used / 2**20:.0f} MiB, ours/{theirs} {used / theirs_used:.2f}")
    if report["peak_memory_bytes"] is not None:
        print(f"{theirs} peak torch.cuda.max_memory_allocated {report['peak_memory_bytes'] / 2**20:.0f} MiB "
              "(allocator view, without context and cache)")


def memory_figures(device):
    """A reference run's memory after its runs, for its report (None off the GPU):
    `peak_memory_bytes`, torch's allocator peak (`max_memory_allocated`), and
    `device_memory_used_bytes`, what the driver says is in use (total − free of
    `cudaMemGetInfo`), the measure ours reports under that name: torch's caching allocator
    holds its peak reservation, as our memory pool does."""
    if device.type != "cuda":
        return {"peak_memory_bytes": None, "device_memory_used_bytes": None}
    free, total = torch.cuda.mem_get_info(device)
    return {"peak_memory_bytes": torch.cuda.max_memory_allocated(device),
            "device_memory_used_bytes": total - free}
